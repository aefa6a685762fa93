"""Pixel building blocks of the anomaly families: Perlin noise, rough blobs, soft edges, blending, luma,
colour jitter and a roundness test.

Every function draws its randomness from the `numpy.random.Generator` it is given, so the same seed gives
byte-identical output.
"""

from __future__ import annotations

import math

import numpy as np
from scipy import ndimage


def perlin_noise(shape: tuple[int, int], res: tuple[int, int], rng: np.random.Generator) -> np.ndarray:
    """2-D gradient (Perlin) noise of `shape`, with `res` = (cells down, cells across); about [-1, 1]."""
    h, w = shape
    ry, rx = max(1, int(res[0])), max(1, int(res[1]))
    angles = rng.uniform(0.0, 2.0 * math.pi, (ry + 1, rx + 1))
    gy, gx = np.sin(angles), np.cos(angles)
    ys = np.arange(h) * (ry / h)
    xs = np.arange(w) * (rx / w)
    yi, xi = np.floor(ys).astype(int), np.floor(xs).astype(int)
    yf, xf = (ys - yi)[:, None], (xs - xi)[None, :]
    yi, xi = yi[:, None], xi[None, :]

    def corner(dy: int, dx: int) -> np.ndarray:
        return gy[yi + dy, xi + dx] * (yf - dy) + gx[yi + dy, xi + dx] * (xf - dx)

    def fade(t: np.ndarray) -> np.ndarray:
        return t * t * t * (t * (t * 6 - 15) + 10)

    u, v = fade(xf), fade(yf)
    top = corner(0, 0) * (1 - u) + corner(0, 1) * u
    bottom = corner(1, 0) * (1 - u) + corner(1, 1) * u
    return (top * (1 - v) + bottom * v) * math.sqrt(2.0)


def fractal_noise(
    shape: tuple[int, int], rng: np.random.Generator, base: int = 4, octaves: int = 3
) -> np.ndarray:
    """Sum of Perlin octaves (each twice as fine, half as strong), scaled to about [-1, 1]."""
    h, w = shape
    aspect = w / h
    total = np.zeros(shape)
    amp, norm = 1.0, 0.0
    for o in range(octaves):
        cells = base * 2**o
        total += amp * perlin_noise(shape, (cells, max(1, round(cells * aspect))), rng)
        norm += amp
        amp *= 0.5
    return total / norm


def rough_blob(
    shape: tuple[int, int],
    rng: np.random.Generator,
    area: tuple[float, float] = (0.01, 0.05),
    roughness: float = 0.35,
    centre: tuple[float, float] | None = None,
    aspect: tuple[float, float] = (0.5, 2.0),
    theta: float | None = None,
) -> np.ndarray:
    """A boolean blob: an ellipse of random size and angle whose edge is roughened by Perlin noise."""
    h, w = shape
    frac = rng.uniform(*area)
    r = math.sqrt(frac * h * w / math.pi)
    ratio = rng.uniform(*aspect)
    a, b = max(1.5, r * math.sqrt(ratio)), max(1.5, r / math.sqrt(ratio))
    if centre is None:
        cy = rng.uniform(min(a, b, h / 2), max(h - min(a, b, h / 2), h / 2))
        cx = rng.uniform(min(a, b, w / 2), max(w - min(a, b, w / 2), w / 2))
    else:
        cy, cx = centre
    theta = rng.uniform(0, math.pi) if theta is None else theta
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)
    dy, dx = yy - cy, xx - cx
    u = (dx * math.cos(theta) + dy * math.sin(theta)) / a
    v = (-dx * math.sin(theta) + dy * math.cos(theta)) / b
    dist = np.sqrt(u * u + v * v)
    noise = perlin_noise(shape, (max(2, round(h / max(a, b) * 1.5)), max(2, round(w / max(a, b) * 1.5))), rng)
    mask = dist + roughness * noise < 1.0
    iy, ix = min(h - 1, max(0, int(round(cy)))), min(w - 1, max(0, int(round(cx))))
    mask[iy, ix] = True
    labels, _ = ndimage.label(mask)
    return labels == labels[iy, ix]  # one piece: the part holding the centre


def soften(mask: np.ndarray, sigma: float = 1.2) -> np.ndarray:
    """Float alpha in [0, 1]: the mask with Gaussian-softened edges."""
    return np.clip(ndimage.gaussian_filter(mask.astype(np.float64), sigma), 0.0, 1.0)


def blend(image: np.ndarray, other: np.ndarray, alpha: np.ndarray) -> np.ndarray:
    """uint8 mix of `image` and `other` (float or uint8, 0..255) with per-pixel `alpha` (HxW)."""
    a = alpha[..., None]
    out = image.astype(np.float64) * (1 - a) + np.asarray(other, dtype=np.float64) * a
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


def luminance(image: np.ndarray) -> np.ndarray:
    return image.astype(np.float64) @ np.array([0.299, 0.587, 0.114])


def roundish(mask: np.ndarray) -> bool:
    ys, xs = np.nonzero(mask)
    if len(ys) < 3:
        return True
    ev = np.linalg.eigvalsh(np.cov(np.stack([ys, xs]).astype(np.float64)) + np.eye(2) / 12)
    return float(ev[-1] / max(ev[0], 1e-9)) < 2.0


def jitter(patch: np.ndarray, rng: np.random.Generator, strength: float) -> tuple[np.ndarray, str]:
    """Brightness/contrast/colour jitter of a float patch; returns it and a word for what changed."""
    gain = 1.0 + rng.uniform(-strength, strength)
    offset = rng.uniform(-40, 40) * strength
    tint = 1.0 + rng.uniform(-0.15, 0.15, 3) * strength
    mean = patch.mean(axis=(0, 1), keepdims=True)
    out = ((patch - mean) * rng.uniform(1 - strength / 2, 1 + strength / 2) + mean) * gain * tint + offset
    change = (gain - 1) * float(mean.mean()) + offset
    word = "brighter" if change > 8 else "darker" if change < -8 else ""
    return out, word
