"""Local blur and motion smear: texture washed out or dragged along one direction inside a soft patch."""

from __future__ import annotations

import math

import numpy as np
from scipy import ndimage

from instruct_data.synthesis.base import ANOMALIES, SynthResult, describe
from instruct_data.synthesis.drawing import blend, rough_blob, soften


@ANOMALIES.register("blur")
def blur(image: np.ndarray, rng: np.random.Generator) -> SynthResult:
    """A locally blurred (out-of-focus, hazy) area with soft edges."""
    h, w = image.shape[:2]
    blob = rough_blob((h, w), rng, area=(0.02, 0.08), roughness=0.3)
    sigma = rng.uniform(2.0, 5.0) * max(1.0, min(h, w) / 256)
    blurred = np.stack(
        [ndimage.gaussian_filter(image[..., c].astype(np.float64), sigma) for c in range(3)], -1
    )
    haze = rng.uniform(0.0, 0.15)
    blurred = blurred * (1 - haze) + 200.0 * haze
    alpha = soften(blob, 1.5)
    out = blend(image, blurred, alpha)
    mask = alpha >= 0.5
    if not mask.any():
        mask = blob
    return SynthResult(out, mask, describe("blur", "blur", mask, "blurred hazy patch, texture washed out"))


def _line_kernel(length: int, angle: float) -> np.ndarray:
    size = length | 1
    k = np.zeros((size, size))
    c = size // 2
    for t in np.linspace(-c, c, size * 2):
        k[int(round(c + t * math.sin(angle))), int(round(c + t * math.cos(angle)))] = 1.0
    return k / k.sum()


@ANOMALIES.register("smear")
def smear(image: np.ndarray, rng: np.random.Generator) -> SynthResult:
    """A motion smear: texture dragged along one direction inside an elongated patch, slightly darker."""
    h, w = image.shape[:2]
    angle = rng.uniform(0, math.pi)
    blob = rough_blob((h, w), rng, area=(0.02, 0.07), roughness=0.25, aspect=(2.5, 4.0), theta=angle)
    length = int(rng.integers(9, 21) * max(1.0, min(h, w) / 256))
    kernel = _line_kernel(length, angle)
    smeared = np.stack(
        [ndimage.convolve(image[..., c].astype(np.float64), kernel, mode="reflect") for c in range(3)], -1
    )
    # drag marks: noise stretched along the smear direction, so the patch is streaky, not flat
    streaks = ndimage.convolve(rng.normal(0.0, 1.0, (h, w)), _line_kernel(3 * length, angle), mode="wrap")
    streaks /= streaks.std() + 1e-9
    smeared *= rng.uniform(0.88, 0.97) * (1.0 + 0.06 * streaks[..., None])
    alpha = soften(blob, 1.5)
    out = blend(image, smeared, alpha)
    mask = alpha >= 0.5
    if not mask.any():
        mask = blob
    words = "streaky smeared patch, texture dragged in one direction, slightly darker"
    return SynthResult(
        out, mask, describe("smear", "blur", mask, words, direction_deg=round(math.degrees(angle)))
    )
