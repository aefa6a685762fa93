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


# The detector's own test copies (`tools.detectors.global_statistics`): other changes than the
# validation kinds above, so that validation does not reward the rule for recognising its own test.
@GLOBAL_CHANGES.register("gamma")
def gamma(image: np.ndarray, rng: np.random.Generator) -> SynthResult:
    """A tone curve: midtones darker or brighter (a different finish or exposure of the material)."""
    g = float(np.exp(rng.choice([-1, 1]) * rng.uniform(0.25, 0.45)))
    return _whole(image, 255.0 * (image.astype(np.float64) / 255.0) ** g, "gamma", "the whole part's tones are off")


@GLOBAL_CHANGES.register("sharpen")
def sharpen(image: np.ndarray, rng: np.random.Generator) -> SynthResult:
    """Fine structure exaggerated everywhere (unsharp mask)."""
    base = image.astype(np.float64)
    soft = np.stack([ndimage.gaussian_filter(base[..., c], 1.5) for c in range(3)], -1)
    return _whole(image, base + rng.uniform(1.0, 2.0) * (base - soft), "sharpen", "the whole surface is harsher than normal")


@GLOBAL_CHANGES.register("stretch")
def stretch(image: np.ndarray, rng: np.random.Generator) -> SynthResult:
    """The texture stretched along one axis (its spacing changes one way only)."""
    h, w = image.shape[:2]
    f = rng.uniform(1.15, 1.3)
    pil = Image.fromarray(image)
    if rng.random() < 0.5:
        cw = round(w / f)
        out = np.asarray(pil.crop(((w - cw) // 2, 0, (w - cw) // 2 + cw, h)).resize((w, h), Image.BICUBIC))
    else:
        ch = round(h / f)
        out = np.asarray(pil.crop((0, (h - ch) // 2, w, (h - ch) // 2 + ch)).resize((w, h), Image.BICUBIC))
    return _whole(image, out.astype(np.float64), "stretch", "the texture is stretched one way")


#: whole-image anomalies of the validation sets
VALIDATION_CHANGES = ("colour", "density", "defocus", "grain")
#: the detector's test copies for its global rule (disjoint from VALIDATION_CHANGES)
RULE_CHANGES = ("gamma", "sharpen", "stretch")


def rule_change(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """One of `RULE_CHANGES`, drawn with `rng`, applied to an RGB uint8 image: the test copies the
    global rule of the reference-matching detector scores (passed to it by the agent)."""
    return change(image, RULE_CHANGES[int(rng.integers(len(RULE_CHANGES)))], rng).image


def change(image: np.ndarray, kind: str, rng: np.random.Generator) -> SynthResult:
    """`image` (RGB uint8) with the whole-image change `kind`."""
    return GLOBAL_CHANGES.get(kind)(image, rng)


__all__ = ["GLOBAL_CHANGES", "RULE_CHANGES", "VALIDATION_CHANGES", "change", "rule_change"]
