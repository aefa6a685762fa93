"""Evaluation of detection, localization and reasoning quality (DESIGN.md section 7)."""
