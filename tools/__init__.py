"""Perception tools: image input, detectors, regions, overlays. Pure torch/numpy; no LLM here."""
