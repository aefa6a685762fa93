"""Stains and spots: soft-edged colour shifts with a rim, and clusters of small round spots."""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from instruct_data.synthesis.base import ANOMALIES, SynthResult, describe, tone_of
from instruct_data.synthesis.drawing import blend, luminance, rough_blob, soften

_STAIN_TINTS: dict[str, tuple[float, float, float]] = {
    "brown": (120, 80, 40),
    "rust-coloured": (150, 70, 30),
    "dark oily": (35, 35, 30),
    "whitish": (235, 235, 225),
    "yellowish": (200, 180, 90),
    "bluish": (70, 90, 150),
}


@ANOMALIES.register("stain")
def stain(image: np.ndarray, rng: np.random.Generator) -> SynthResult:
    """A soft-edged colour stain with a slightly darker rim (a dried ring)."""
    h, w = image.shape[:2]
    blob = rough_blob((h, w), rng, area=(0.01, 0.06), roughness=0.45)
    alpha = soften(blob, sigma=max(1.0, min(2.0, min(h, w) / 100)))
    names = sorted(_STAIN_TINTS)
    name = names[int(rng.integers(len(names)))]
    tint = np.array(_STAIN_TINTS[name]) * rng.uniform(0.92, 1.08, 3)
    opacity = rng.uniform(0.35, 0.65)
    base = image.astype(np.float64)
    luma = luminance(image)[..., None] / 255.0  # keep the texture showing through the stain
    target = tint * (0.6 + 0.8 * luma)
    inner = ndimage.binary_erosion(blob, iterations=2)
    rim = (blob & ~inner).astype(np.float64) * 0.25
    a = np.clip(alpha * opacity + rim * alpha, 0, 1)
    out = np.clip(np.rint(base * (1 - a[..., None]) + target * a[..., None]), 0, 255).astype(np.uint8)
    mask = alpha >= 0.5
    if not mask.any():
        mask = blob
    words = f"{name} soft-edged stain, {tone_of(image, out, mask)}".replace(", similar brightness", "")
    return SynthResult(out, mask, describe("stain", "stain", mask, words, colour=name))


@ANOMALIES.register("spots")
def spots(image: np.ndarray, rng: np.random.Generator) -> SynthResult:
    """A cluster of small round dark or bright spots (contamination, pitting, splashes)."""
    h, w = image.shape[:2]
    side = min(h, w)
    n = int(rng.integers(3, 9))
    cy, cx = rng.uniform(0.2, 0.8) * h, rng.uniform(0.2, 0.8) * w
    spread = rng.uniform(0.04, 0.12) * side
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)
    alpha = np.zeros((h, w))
    for _ in range(n):
        sy = float(np.clip(cy + rng.normal(0, spread), 0, h - 1))
        sx = float(np.clip(cx + rng.normal(0, spread), 0, w - 1))
        r = rng.uniform(1.5, 4.5) * max(1.0, side / 256)
        alpha = np.maximum(alpha, np.clip(1.5 - np.hypot(yy - sy, xx - sx) / r, 0.0, 1.0))
    dark = rng.random() < 0.65
    base = image.astype(np.float64)
    target = base * rng.uniform(0.2, 0.5) if dark else base + (255 - base) * rng.uniform(0.5, 0.8)
    out = blend(image, target, alpha)
    mask = alpha >= 0.5
    words = f"{n} small {'dark' if dark else 'bright'} round spots in a cluster"
    return SynthResult(out, mask, describe("spots", "stain", mask, words, count=n))
