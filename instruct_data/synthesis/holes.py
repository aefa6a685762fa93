"""Holes and missing material: dark blobs with a shaded wall and a bright rim, and chipped-off pieces at an
edge with the background showing."""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from instruct_data.synthesis.base import ANOMALIES, SynthResult, describe
from instruct_data.synthesis.drawing import rough_blob, roundish


@ANOMALIES.register("hole")
def hole(image: np.ndarray, rng: np.random.Generator) -> SynthResult:
    """A dark hole with a shaded inner wall and a bright rim (a puncture or a pit)."""
    h, w = image.shape[:2]
    blob = rough_blob((h, w), rng, area=(0.002, 0.02), roughness=0.2, aspect=(0.7, 1.4))
    depth = ndimage.distance_transform_edt(blob)
    depth = depth / max(1.0, float(depth.max()))
    base = image.astype(np.float64)
    floor = rng.uniform(10, 45)
    inside = floor + (base.mean(axis=2, keepdims=True) - floor) * 0.35 * (1 - depth[..., None]) ** 2
    out = np.where(blob[..., None], inside, base)
    rim = blob & ~ndimage.binary_erosion(blob, iterations=max(1, round(min(h, w) / 128)))
    out = np.where(rim[..., None], base + (255 - base) * 0.35, out)
    out = np.clip(np.rint(out), 0, 255).astype(np.uint8)
    words = f"dark {'round' if roundish(blob) else 'irregular'} hole with a bright rim"
    return SynthResult(out, blob, describe("hole", "hole", blob, words))


@ANOMALIES.register("missing")
def missing(image: np.ndarray, rng: np.random.Generator) -> SynthResult:
    """Missing material: a chipped-off piece at an edge of the image, background showing, dark rim."""
    h, w = image.shape[:2]
    edge = int(rng.integers(4))
    along = rng.uniform(0.2, 0.8)
    centre = [(0.0, along * w), (h - 1.0, along * w), (along * h, 0.0), (along * h, w - 1.0)][edge]
    blob = rough_blob((h, w), rng, area=(0.01, 0.04), roughness=0.4, centre=centre)
    bg_name = ["black", "white", "dark grey"][int(rng.integers(3))]
    bg = {"black": 8.0, "white": 245.0, "dark grey": 60.0}[bg_name] + rng.uniform(-5, 5)
    base = image.astype(np.float64)
    out = np.where(blob[..., None], bg, base)
    rim = blob & ~ndimage.binary_erosion(blob, iterations=max(1, round(min(h, w) / 128)), border_value=1)
    rim_t = base * 0.45  # the broken edge, in shadow
    out = np.where(rim[..., None], rim_t, out)
    out = np.clip(np.rint(out), 0, 255).astype(np.uint8)
    side = ["top", "bottom", "left", "right"][edge]
    words = f"missing piece at the {side} edge, {bg_name} background showing, broken dark rim"
    return SynthResult(out, blob, describe("missing", "hole", blob, words, background=bg_name))
