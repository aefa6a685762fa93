"""Anomalies of the whole image: the part is wrong everywhere, not in one place (a denser weave, a
colour off, a surface out of focus or rougher than it should be). No single patch stands out in such
an image, which is why they are validated on their own (issue: whole-image anomalies).

Each kind takes an RGB uint8 image and a generator and returns a `SynthResult` whose mask is the whole
image. Kinds are kept in `GLOBAL_CHANGES`, apart from `ANOMALIES` (local defects), so instruction data
and the learned head are not changed by them.
"""

from __future__ import annotations

import numpy as np
from PIL import Image
from scipy import ndimage

from instruct_data.synthesis.base import SynthResult
from tools.registry import Registry

#: name -> whole-image change (image, rng) -> SynthResult
GLOBAL_CHANGES: Registry[SynthResult] = Registry("global change")


def _whole(image: np.ndarray, out: np.ndarray, kind: str, words: str) -> SynthResult:
    h, w = image.shape[:2]
    mask = np.ones((h, w), dtype=bool)
    return SynthResult(np.clip(np.rint(out), 0, 255).astype(np.uint8), mask,
                       {"type": kind, "defect_type": kind, "area_fraction": 1.0, "location": "whole image", "appearance": words})


@GLOBAL_CHANGES.register("colour")
def colour(image: np.ndarray, rng: np.random.Generator) -> SynthResult:
    """A colour cast: the channels scaled apart (a wrong material or coating)."""
    gains = 1.0 + rng.choice([-1, 1], 3) * rng.uniform(0.06, 0.15, 3)
    return _whole(image, image.astype(np.float64) * gains, "colour", "the whole part has a colour cast")


@GLOBAL_CHANGES.register("density")
def density(image: np.ndarray, rng: np.random.Generator) -> SynthResult:
    """The texture denser or coarser: the image's centre enlarged, or the image shrunk and mirrored
    out to its size (a wrong weave or grain density)."""
    h, w = image.shape[:2]
    factor = rng.uniform(1.15, 1.35)
    pil = Image.fromarray(image)
    if rng.random() < 0.5:  # coarser: zoom in
        cw, ch = round(w / factor), round(h / factor)
        x0, y0 = (w - cw) // 2, (h - ch) // 2
        out = np.asarray(pil.crop((x0, y0, x0 + cw, y0 + ch)).resize((w, h), Image.BICUBIC))
        words = "the texture is coarser than normal"
    else:  # denser: zoom out, mirror-padded back to size
        small = np.asarray(pil.resize((round(w / factor), round(h / factor)), Image.BICUBIC))
        py, px = h - small.shape[0], w - small.shape[1]
        out = np.pad(small, ((py // 2, py - py // 2), (px // 2, px - px // 2), (0, 0)), mode="reflect")
        words = "the texture is denser than normal"
    return _whole(image, out.astype(np.float64), "density", words)


@GLOBAL_CHANGES.register("defocus")
def defocus(image: np.ndarray, rng: np.random.Generator) -> SynthResult:
    """The whole surface soft: out of focus, or a finish without its fine structure."""
    sigma = rng.uniform(1.2, 2.5) * max(1.0, min(image.shape[:2]) / 256)
    out = np.stack([ndimage.gaussian_filter(image[..., c].astype(np.float64), sigma) for c in range(3)], -1)
    return _whole(image, out, "defocus", "the whole surface is soft, its fine structure gone")


@GLOBAL_CHANGES.register("grain")
def grain(image: np.ndarray, rng: np.random.Generator) -> SynthResult:
    """A rougher surface: fine grain added everywhere."""
    h, w = image.shape[:2]
    noise = ndimage.gaussian_filter(rng.normal(0, 1, (h, w)), 0.8)
    noise = noise / (noise.std() + 1e-9) * rng.uniform(8, 16)
    return _whole(image, image.astype(np.float64) + noise[..., None], "grain", "the whole surface is grainier than normal")


def change(image: np.ndarray, kind: str, rng: np.random.Generator) -> SynthResult:
    """`image` (RGB uint8) with the whole-image change `kind`."""
    return GLOBAL_CHANGES.get(kind)(image, rng)


__all__ = ["GLOBAL_CHANGES", "change"]
