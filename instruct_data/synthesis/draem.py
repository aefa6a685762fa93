"""DRAEM-style anomalies: a Perlin-noise mask through which a texture shows, the image itself (rotated,
mirrored or tile-shuffled) or a procedural one, so no external texture set is needed."""

from __future__ import annotations

import math

import numpy as np
from PIL import Image

from instruct_data.synthesis.base import ANOMALIES, SynthResult, describe, tone_of
from instruct_data.synthesis.drawing import blend, fractal_noise, jitter, rough_blob, soften


def _self_texture(image: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, str]:
    """The image itself, rotated 180 degrees, flipped and shifted, or shuffled in tiles."""
    h, w = image.shape[:2]
    choice = int(rng.integers(3))
    if choice == 0:
        return np.roll(
            image[::-1, ::-1], (int(rng.integers(h)), int(rng.integers(w))), axis=(0, 1)
        ), "rotated copy"
    if choice == 1:
        flipped = image[:, ::-1] if rng.random() < 0.5 else image[::-1]
        return np.roll(flipped, (int(rng.integers(h)), int(rng.integers(w))), axis=(0, 1)), "mirrored copy"
    n = 4
    th, tw = max(1, h // n), max(1, w // n)
    tiles = [image[i * th : (i + 1) * th, j * tw : (j + 1) * tw] for i in range(n) for j in range(n)]
    order = rng.permutation(len(tiles))
    rows = [np.concatenate([tiles[order[i * n + j]] for j in range(n)], axis=1) for i in range(n)]
    grid = np.concatenate(rows, axis=0)
    resized = np.asarray(Image.fromarray(grid).resize((w, h), Image.Resampling.NEAREST))
    return resized, "shuffled tiles"


def _procedural_texture(shape: tuple[int, int], rng: np.random.Generator) -> tuple[np.ndarray, str]:
    """A colourful procedural texture: Perlin marble, stripes or a checker, in two random colours."""
    h, w = shape
    c1, c2 = rng.uniform(0, 255, 3), rng.uniform(0, 255, 3)
    choice = int(rng.integers(3))
    if choice == 0:
        t = (fractal_noise(shape, rng, base=int(rng.integers(3, 9))) + 1) / 2
        name = "mottled texture"
    elif choice == 1:
        theta = rng.uniform(0, math.pi)
        yy, xx = np.mgrid[0:h, 0:w]
        period = rng.uniform(4, 16)
        t = (np.sin((xx * math.cos(theta) + yy * math.sin(theta)) * 2 * math.pi / period) + 1) / 2
        name = "striped texture"
    else:
        cell = int(rng.integers(3, 12))
        yy, xx = np.mgrid[0:h, 0:w]
        t = ((yy // cell + xx // cell) % 2).astype(np.float64)
        name = "checkered texture"
    tex = c1 * (1 - t[..., None]) + c2 * t[..., None]
    return tex, name


@ANOMALIES.register("perlin")
def perlin(image: np.ndarray, rng: np.random.Generator) -> SynthResult:
    """DRAEM-style: a Perlin-noise mask through which a texture (the image itself or procedural) shows."""
    h, w = image.shape[:2]
    noise = fractal_noise((h, w), rng, base=int(rng.integers(2, 7)), octaves=3)
    window = soften(rough_blob((h, w), rng, area=(0.04, 0.15), roughness=0.5), sigma=max(1.0, min(h, w) / 40))
    score = (noise + 1.0) * window
    target = rng.uniform(0.01, 0.06)
    thresh = np.quantile(score, 1.0 - target)
    mask = score >= max(thresh, 1e-9)
    if not mask.any():
        mask = score >= score.max()
    if rng.random() < 0.5:
        source, source_name = _self_texture(image, rng)
        source = source.astype(np.float64)
    else:
        source, source_name = _procedural_texture((h, w), rng)
    source, _ = jitter(source, rng, 0.25)
    opacity = rng.uniform(0.5, 0.95)
    alpha = soften(mask, 0.8) * opacity
    out = blend(image, source, alpha)
    if np.abs(out.astype(np.float64) - image)[mask].mean() < 12:  # a look-alike source: make it show
        source = source + rng.choice([-1.0, 1.0]) * rng.uniform(30, 50)
        out = blend(image, source, alpha)
    words = f"irregular {tone_of(image, out, mask)} patch of foreign {source_name}"
    desc = describe("perlin", "draem", mask, words.replace(" similar brightness", ""), source=source_name)
    return SynthResult(out, mask, desc)
