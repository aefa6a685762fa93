"""Synthetic images: procedural parts and textures with drawn defects (for the demo and for data)."""
