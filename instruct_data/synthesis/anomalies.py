"""Synthetic anomalies for instruction data: each returns the edited image, its mask and a description.

Families (after the survey of industrial anomaly synthesis): CutPaste and CutPaste-scar (a patch of the
same image pasted elsewhere), DRAEM-style Perlin-noise masks blended with a texture source (the image
itself rotated / flipped / tile-shuffled, or a procedural texture: no external texture set is needed),
scratches and cracks (random curves with a width and a depth), stains and spots (soft-edged colour
shifts), holes and missing material (dark or background-coloured blobs with a rim), local blur and
motion smear, and logical edits of whole components. Each family is a module of this package
(`cutpaste`, `draem`, `lines`, `stains`, `holes`, `blur`, `logical`) that registers its kinds in
`ANOMALIES` (`base`, with the result type and the descriptions); `drawing` holds the pixel building
blocks. This module imports them all and is the way in: `kinds`, `synthesize`, `synthesize_random`.

Decisions, and why:

- Every function takes an RGB uint8 HxWx3 image and a `numpy.random.Generator` and draws all its
  randomness from that generator, so the same seed gives byte-identical output.
- Masks are never empty: shapes are built around a chosen centre pixel that is always in the mask, and
  Perlin masks are thresholded at a quantile of the windowed noise, not at a fixed level.
- Soft edges are drawn with a small Gaussian (sigma <= 2 px) around the mask, and the mask is the part
  where the edit is at least about half strength; pixels farther than a few px outside the mask are
  untouched. Blur and smear change nothing where the image is flat, by nature.
- Descriptions use the words the rest of the agent uses: `tools.regions.location_words` (3x3 grid),
  the area as a fraction of the image, and a short appearance phrase ("dark thin curved line").
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

# every family module registers its kinds in ANOMALIES when imported
from instruct_data.synthesis import blur, cutpaste, draem, holes, lines, logical, stains  # noqa: F401
from instruct_data.synthesis.base import ANOMALIES, SynthResult


def as_rgb_uint8(image: np.ndarray) -> np.ndarray:
    """HxWx3 uint8 from HxW, HxWx1, HxWx3 or HxWx4 uint8 (grey is repeated, alpha dropped)."""
    arr = np.asarray(image)
    if arr.dtype != np.uint8:
        raise ValueError(f"image must be uint8, got {arr.dtype}")
    if arr.ndim == 2:
        arr = arr[..., None]
    if arr.ndim != 3 or arr.shape[2] not in (1, 3, 4):
        raise ValueError(f"image must be HxW or HxWx(1|3|4), got shape {arr.shape}")
    if arr.shape[0] < 4 or arr.shape[1] < 4:
        raise ValueError(f"image must be at least 4x4 pixels, got {arr.shape[1]}x{arr.shape[0]}")
    if arr.shape[2] == 1:
        arr = np.repeat(arr, 3, axis=2)
    return np.ascontiguousarray(arr[..., :3])


def kinds() -> list[str]:
    """The registered anomaly kinds, sorted."""
    return ANOMALIES.names()


def synthesize(image: np.ndarray, kind: str, rng: np.random.Generator) -> SynthResult:
    """Apply the anomaly `kind` to `image` (grey or RGB uint8); the input array is never modified."""
    fn = ANOMALIES.get(kind)
    result = fn(as_rgb_uint8(image), rng)
    if not result.mask.any():  # every function guarantees this; a cheap check against regressions
        raise RuntimeError(f"anomaly {kind!r} produced an empty mask")
    return result


def synthesize_random(
    image: np.ndarray, rng: np.random.Generator, kinds: Sequence[str] | None = None
) -> SynthResult:
    """A random kind (from `kinds`, default all registered) applied to `image`."""
    names = sorted(kinds) if kinds else ANOMALIES.names()
    if not names:
        raise ValueError("no anomaly kinds to choose from")
    return synthesize(image, names[int(rng.integers(len(names)))], rng)
