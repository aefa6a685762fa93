"""Synthetic anomalies for instruction data: each returns the edited image, its mask and a description.

Families (after the survey of industrial anomaly synthesis): CutPaste and CutPaste-scar (a patch of the
same image pasted elsewhere), DRAEM-style Perlin-noise masks blended with a texture source (the image
itself rotated / flipped / tile-shuffled, or a procedural texture: no external texture set is needed),
scratches and cracks (random curves with a width and a depth), stains and spots (soft-edged colour
shifts), holes and missing material (dark or background-coloured blobs with a rim), and local blur and
motion smear.

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

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from PIL import Image
from scipy import ndimage

from tools.regions import location_words
from tools.registry import Registry


@dataclass
class SynthResult:
    """One synthesized anomaly: `image` uint8 HxWx3, `mask` bool HxW (non-empty), `description`."""

    image: np.ndarray
    mask: np.ndarray
    description: dict[str, Any] = field(default_factory=dict)


SynthFn = Callable[[np.ndarray, np.random.Generator], SynthResult]

#: name -> synthesis function (image, rng) -> SynthResult.
ANOMALIES: Registry[SynthResult] = Registry("anomaly")


# ----------------------------------------------------------------------------------------------------
# public entry points


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


# ----------------------------------------------------------------------------------------------------
# noise, shapes and descriptions


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


def _blob(
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


def _soft(mask: np.ndarray, sigma: float = 1.2) -> np.ndarray:
    """Float alpha in [0, 1]: the mask with Gaussian-softened edges."""
    return np.clip(ndimage.gaussian_filter(mask.astype(np.float64), sigma), 0.0, 1.0)


def _blend(image: np.ndarray, other: np.ndarray, alpha: np.ndarray) -> np.ndarray:
    """uint8 mix of `image` and `other` (float or uint8, 0..255) with per-pixel `alpha` (HxW)."""
    a = alpha[..., None]
    out = image.astype(np.float64) * (1 - a) + np.asarray(other, dtype=np.float64) * a
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


def _luma(image: np.ndarray) -> np.ndarray:
    return image.astype(np.float64) @ np.array([0.299, 0.587, 0.114])


def _size_words(fraction: float) -> str:
    if fraction < 0.005:
        return "tiny"
    if fraction < 0.02:
        return "small"
    if fraction < 0.08:
        return "medium"
    return "large"


def _tone(before: np.ndarray, after: np.ndarray, mask: np.ndarray) -> str:
    """'darker', 'brighter' or 'similar brightness' of the masked area after the edit."""
    diff = float(_luma(after)[mask].mean() - _luma(before)[mask].mean())
    if diff < -8:
        return "darker"
    if diff > 8:
        return "brighter"
    return "similar brightness"


def describe(kind: str, family: str, mask: np.ndarray, appearance: str, **extra: Any) -> dict[str, Any]:
    """The structured description of a synthesized anomaly (type, location, size, appearance, box)."""
    h, w = mask.shape
    ys, xs = np.nonzero(mask)
    cy, cx = float(ys.mean()), float(xs.mean())
    fraction = float(mask.sum()) / (h * w)
    desc: dict[str, Any] = {
        "type": kind,
        "family": family,
        "location": location_words(cx, cy, w, h),
        "size": round(fraction, 5),
        "size_words": _size_words(fraction),
        "appearance": appearance,
        "bbox": [int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1],
        "centroid": [round(cx, 1), round(cy, 1)],
    }
    desc.update(extra)
    return desc


# ----------------------------------------------------------------------------------------------------
# CutPaste


def _jitter(patch: np.ndarray, rng: np.random.Generator, strength: float) -> tuple[np.ndarray, str]:
    """Brightness/contrast/colour jitter of a float patch; returns it and a word for what changed."""
    gain = 1.0 + rng.uniform(-strength, strength)
    offset = rng.uniform(-40, 40) * strength
    tint = 1.0 + rng.uniform(-0.15, 0.15, 3) * strength
    mean = patch.mean(axis=(0, 1), keepdims=True)
    out = ((patch - mean) * rng.uniform(1 - strength / 2, 1 + strength / 2) + mean) * gain * tint + offset
    change = (gain - 1) * float(mean.mean()) + offset
    word = "brighter" if change > 8 else "darker" if change < -8 else ""
    return out, word


def _paste_rotated(
    image: np.ndarray, patch: np.ndarray, angle: float, centre: tuple[int, int]
) -> tuple[np.ndarray, np.ndarray]:
    """Paste float `patch` rotated by `angle` degrees with its centre at `centre` (y, x)."""
    h, w = image.shape[:2]
    ph, pw = patch.shape[:2]
    pim = Image.fromarray(np.clip(np.rint(patch), 0, 255).astype(np.uint8))
    mim = Image.new("L", (pw, ph), 255)
    if angle:
        pim = pim.rotate(angle, resample=Image.Resampling.BILINEAR, expand=True)
        mim = mim.rotate(angle, resample=Image.Resampling.NEAREST, expand=True)
    rp = np.asarray(pim)
    rm = np.asarray(mim) > 127
    y0, x0 = centre[0] - rp.shape[0] // 2, centre[1] - rp.shape[1] // 2
    sy0, sx0 = max(0, -y0), max(0, -x0)
    ty0, tx0 = max(0, y0), max(0, x0)
    ty1, tx1 = min(h, y0 + rp.shape[0]), min(w, x0 + rp.shape[1])
    out = image.copy()
    mask = np.zeros((h, w), bool)
    if ty1 > ty0 and tx1 > tx0:
        sub_m = rm[sy0 : sy0 + ty1 - ty0, sx0 : sx0 + tx1 - tx0]
        sub_p = rp[sy0 : sy0 + ty1 - ty0, sx0 : sx0 + tx1 - tx0]
        region = out[ty0:ty1, tx0:tx1]
        region[sub_m] = sub_p[sub_m]
        mask[ty0:ty1, tx0:tx1] = sub_m
    if not mask.any():  # pasted entirely off the image (cannot happen with in-image centres)
        cy, cx = min(h - 1, max(0, centre[0])), min(w - 1, max(0, centre[1]))
        mask[cy, cx] = True
        out[cy, cx] = np.clip(np.rint(patch[ph // 2, pw // 2]), 0, 255).astype(np.uint8)
    return out, mask


def _cutpaste(image: np.ndarray, rng: np.random.Generator, scar: bool) -> SynthResult:
    h, w = image.shape[:2]
    if scar:
        pw = max(2, int(round(rng.uniform(2, 12) * min(h, w) / 256)))
        ph = max(4, int(round(rng.uniform(0.12, 0.3) * min(h, w))))
        angle = float(rng.uniform(-60, 60))
    else:
        area = rng.uniform(0.02, 0.08) * h * w
        ratio = rng.uniform(0.4, 2.5)
        pw = max(2, min(w - 1, int(round(math.sqrt(area * ratio)))))
        ph = max(2, min(h - 1, int(round(math.sqrt(area / ratio)))))
        angle = float(rng.choice([0.0, rng.uniform(-45, 45)]))
    pw, ph = min(pw, w - 1), min(ph, h - 1)
    sy, sx = int(rng.integers(0, h - ph + 1)), int(rng.integers(0, w - pw + 1))
    patch = image[sy : sy + ph, sx : sx + pw].astype(np.float64)
    patch, tone = _jitter(patch, rng, 0.35 if scar else 0.2)
    # the target centre: far enough from the source that the copy is not pasted onto itself
    for _ in range(20):
        ty, tx = int(rng.integers(ph // 2, h - ph // 2)), int(rng.integers(pw // 2, w - pw // 2))
        if abs(ty - (sy + ph // 2)) > ph or abs(tx - (sx + pw // 2)) > pw:
            break
    out, mask = _paste_rotated(image, patch, angle, (ty, tx))
    tone = tone or _tone(image, out, mask)
    if scar:
        kind, words = "cutpaste_scar", f"thin {tone} stripe of displaced texture"
    else:
        shape = "rotated rectangular" if angle else "rectangular"
        kind, words = "cutpaste", f"{shape} patch of displaced texture, {tone}"
    return SynthResult(out, mask, describe(kind, "cutpaste", mask, words.replace(", similar brightness", "")))


@ANOMALIES.register("cutpaste")
def cutpaste(image: np.ndarray, rng: np.random.Generator) -> SynthResult:
    """CutPaste: a rectangle of the image, colour-jittered, pasted elsewhere (sometimes rotated)."""
    return _cutpaste(image, rng, scar=False)


@ANOMALIES.register("cutpaste_scar")
def cutpaste_scar(image: np.ndarray, rng: np.random.Generator) -> SynthResult:
    """CutPaste-scar: a long thin strip of the image, jittered and rotated, pasted elsewhere."""
    return _cutpaste(image, rng, scar=True)


# ----------------------------------------------------------------------------------------------------
# DRAEM-style Perlin masks with a texture source


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
    window = _soft(_blob((h, w), rng, area=(0.04, 0.15), roughness=0.5), sigma=max(1.0, min(h, w) / 40))
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
    source, _ = _jitter(source, rng, 0.25)
    opacity = rng.uniform(0.5, 0.95)
    alpha = _soft(mask, 0.8) * opacity
    out = _blend(image, source, alpha)
    if np.abs(out.astype(np.float64) - image)[mask].mean() < 12:  # a look-alike source: make it show
        source = source + rng.choice([-1.0, 1.0]) * rng.uniform(30, 50)
        out = _blend(image, source, alpha)
    words = f"irregular {_tone(image, out, mask)} patch of foreign {source_name}"
    desc = describe("perlin", "draem", mask, words.replace(" similar brightness", ""), source=source_name)
    return SynthResult(out, mask, desc)


# ----------------------------------------------------------------------------------------------------
# scratches and cracks


def _curve(shape: tuple[int, int], rng: np.random.Generator, length: float, wiggle: float) -> np.ndarray:
    """Points (N x 2, y and x) along a random smooth curve of about `length` px inside the image."""
    h, w = shape
    y0, x0 = rng.uniform(0.1, 0.9) * h, rng.uniform(0.1, 0.9) * w
    heading = rng.uniform(0, 2 * math.pi)
    n = max(8, int(length * 2))
    t = np.linspace(0.0, 1.0, n)
    angles = heading + wiggle * (rng.uniform(-1, 1) * t + rng.uniform(-1, 1) * t * t)
    step = length / n
    ys = y0 + np.cumsum(np.sin(angles)) * step
    xs = x0 + np.cumsum(np.cos(angles)) * step
    pts = np.stack([ys, xs], axis=1)
    inside = (pts[:, 0] >= 0) & (pts[:, 0] <= h - 1) & (pts[:, 1] >= 0) & (pts[:, 1] <= w - 1)
    pts = pts[inside]
    if len(pts) == 0:
        pts = np.array([[min(h - 1, max(0, y0)), min(w - 1, max(0, x0))]])
    return pts


def _jagged(shape: tuple[int, int], rng: np.random.Generator, length: float) -> np.ndarray:
    """A crack: a jagged random walk with one or two short branches (points, y and x)."""
    h, w = shape
    pts_all = []
    y, x = rng.uniform(0.15, 0.85) * h, rng.uniform(0.15, 0.85) * w
    heading = rng.uniform(0, 2 * math.pi)
    seg = max(2.0, length / 14)
    trunk = [(y, x)]
    for _ in range(14):
        heading += rng.normal(0, 0.15)  # a slow drift of the overall direction ...
        step = heading + rng.normal(0, 0.5)  # ... and jagged zig-zags around it
        y, x = y + seg * math.sin(step), x + seg * math.cos(step)
        trunk.append((y, x))
    branches = [trunk]
    for _ in range(int(rng.integers(1, 3))):
        by, bx = trunk[int(rng.integers(3, len(trunk) - 2))]
        bh = heading + rng.choice([-1, 1]) * rng.uniform(0.5, 1.0)
        br = [(by, bx)]
        for _ in range(int(rng.integers(3, 7))):
            bs = bh + rng.normal(0, 0.5)
            by, bx = by + seg * 0.7 * math.sin(bs), bx + seg * 0.7 * math.cos(bs)
            br.append((by, bx))
        branches.append(br)
    for br in branches:
        arr = np.array(br)
        for (ya, xa), (yb, xb) in zip(arr[:-1], arr[1:], strict=True):
            k = max(2, int(math.hypot(yb - ya, xb - xa) * 2))
            t = np.linspace(0, 1, k)[:, None]
            pts_all.append(np.array([ya, xa]) * (1 - t) + np.array([yb, xb]) * t)
    pts = np.concatenate(pts_all)
    inside = (pts[:, 0] >= 0) & (pts[:, 0] <= h - 1) & (pts[:, 1] >= 0) & (pts[:, 1] <= w - 1)
    pts = pts[inside]
    if len(pts) == 0:
        pts = np.array([[h / 2, w / 2]])
    return pts


def _line_profile(
    shape: tuple[int, int], pts: np.ndarray, half_width: float
) -> tuple[np.ndarray, np.ndarray]:
    """(strength in [0, 1] falling off across the line, mask) for a polyline of points."""
    skeleton = np.zeros(shape, bool)
    iy = np.clip(np.rint(pts[:, 0]).astype(int), 0, shape[0] - 1)
    ix = np.clip(np.rint(pts[:, 1]).astype(int), 0, shape[1] - 1)
    skeleton[iy, ix] = True
    dist = ndimage.distance_transform_edt(~skeleton)
    strength = np.clip(1.0 - dist / (half_width + 1.0), 0.0, 1.0) ** 0.7
    return strength, dist <= half_width


def _line_anomaly(image: np.ndarray, rng: np.random.Generator, crack: bool) -> SynthResult:
    h, w = image.shape[:2]
    side = min(h, w)
    if crack:
        pts = _jagged((h, w), rng, rng.uniform(0.3, 0.6) * side)
        half = rng.uniform(0.5, 1.5) * max(1.0, side / 256)
        bright = False
        depth = rng.uniform(0.6, 0.85)
    else:
        curved = rng.random() < 0.6
        pts = _curve((h, w), rng, rng.uniform(0.25, 0.6) * side, wiggle=1.4 if curved else 0.03)
        half = rng.uniform(0.4, 1.6) * max(1.0, side / 256)
        bright = rng.random() < 0.3
        depth = rng.uniform(0.35, 0.7)
    strength, mask = _line_profile((h, w), pts, half)
    base = image.astype(np.float64)
    target = base + (255 - base) * 0.55 if bright else base * (1 - depth)
    out = _blend(image, target, strength * (1.0 if crack else 0.95))
    if not crack and not bright:  # a scratch throws up a faint bright burr along one side
        burr = np.roll(mask, 1 + int(half), axis=0) & ~mask
        burr &= ndimage.binary_dilation(mask, iterations=int(half) + 2)
        out = _blend(out, np.full(3, 255.0), burr * 0.15)
    width = "hairline" if half < 0.8 else "thin" if half < 1.6 else "narrow"
    if crack:
        words = f"dark {width} jagged branching line"
        return SynthResult(out, mask, describe("crack", "line", mask, words, width_px=round(2 * half, 1)))
    shape_word = "curved" if _bends(pts) else "straight"
    words = f"{'bright' if bright else 'dark'} {width} {shape_word} line"
    return SynthResult(out, mask, describe("scratch", "line", mask, words, width_px=round(2 * half, 1)))


def _bends(pts: np.ndarray) -> bool:
    """True when the polyline deviates from its chord by more than 3% of its length."""
    if len(pts) < 3:
        return False
    a, b = pts[0], pts[-1]
    chord = b - a
    length = float(np.hypot(*chord))
    if length < 1:
        return False
    normal = np.array([-chord[1], chord[0]]) / length
    return float(np.abs((pts - a) @ normal).max()) > 0.03 * length + 1.0


@ANOMALIES.register("scratch")
def scratch(image: np.ndarray, rng: np.random.Generator) -> SynthResult:
    """A thin straight or curved scratch, usually darker (a groove), sometimes bright (a reflection)."""
    return _line_anomaly(image, rng, crack=False)


@ANOMALIES.register("crack")
def crack(image: np.ndarray, rng: np.random.Generator) -> SynthResult:
    """A dark jagged crack with one or two branches."""
    return _line_anomaly(image, rng, crack=True)


# ----------------------------------------------------------------------------------------------------
# stains and spots

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
    blob = _blob((h, w), rng, area=(0.01, 0.06), roughness=0.45)
    alpha = _soft(blob, sigma=max(1.0, min(2.0, min(h, w) / 100)))
    names = sorted(_STAIN_TINTS)
    name = names[int(rng.integers(len(names)))]
    tint = np.array(_STAIN_TINTS[name]) * rng.uniform(0.92, 1.08, 3)
    opacity = rng.uniform(0.35, 0.65)
    base = image.astype(np.float64)
    luma = _luma(image)[..., None] / 255.0  # keep the texture showing through the stain
    target = tint * (0.6 + 0.8 * luma)
    inner = ndimage.binary_erosion(blob, iterations=2)
    rim = (blob & ~inner).astype(np.float64) * 0.25
    a = np.clip(alpha * opacity + rim * alpha, 0, 1)
    out = np.clip(np.rint(base * (1 - a[..., None]) + target * a[..., None]), 0, 255).astype(np.uint8)
    mask = alpha >= 0.5
    if not mask.any():
        mask = blob
    words = f"{name} soft-edged stain, {_tone(image, out, mask)}".replace(", similar brightness", "")
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
    out = _blend(image, target, alpha)
    mask = alpha >= 0.5
    words = f"{n} small {'dark' if dark else 'bright'} round spots in a cluster"
    return SynthResult(out, mask, describe("spots", "stain", mask, words, count=n))


# ----------------------------------------------------------------------------------------------------
# holes and missing material


@ANOMALIES.register("hole")
def hole(image: np.ndarray, rng: np.random.Generator) -> SynthResult:
    """A dark hole with a shaded inner wall and a bright rim (a puncture or a pit)."""
    h, w = image.shape[:2]
    blob = _blob((h, w), rng, area=(0.002, 0.02), roughness=0.2, aspect=(0.7, 1.4))
    depth = ndimage.distance_transform_edt(blob)
    depth = depth / max(1.0, float(depth.max()))
    base = image.astype(np.float64)
    floor = rng.uniform(10, 45)
    inside = floor + (base.mean(axis=2, keepdims=True) - floor) * 0.35 * (1 - depth[..., None]) ** 2
    out = np.where(blob[..., None], inside, base)
    rim = blob & ~ndimage.binary_erosion(blob, iterations=max(1, round(min(h, w) / 128)))
    out = np.where(rim[..., None], base + (255 - base) * 0.35, out)
    out = np.clip(np.rint(out), 0, 255).astype(np.uint8)
    words = f"dark {'round' if _roundish(blob) else 'irregular'} hole with a bright rim"
    return SynthResult(out, blob, describe("hole", "hole", blob, words))


def _roundish(mask: np.ndarray) -> bool:
    ys, xs = np.nonzero(mask)
    if len(ys) < 3:
        return True
    ev = np.linalg.eigvalsh(np.cov(np.stack([ys, xs]).astype(np.float64)) + np.eye(2) / 12)
    return float(ev[-1] / max(ev[0], 1e-9)) < 2.0


@ANOMALIES.register("missing")
def missing(image: np.ndarray, rng: np.random.Generator) -> SynthResult:
    """Missing material: a chipped-off piece at an edge of the image, background showing, dark rim."""
    h, w = image.shape[:2]
    edge = int(rng.integers(4))
    along = rng.uniform(0.2, 0.8)
    centre = [(0.0, along * w), (h - 1.0, along * w), (along * h, 0.0), (along * h, w - 1.0)][edge]
    blob = _blob((h, w), rng, area=(0.01, 0.04), roughness=0.4, centre=centre)
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


# ----------------------------------------------------------------------------------------------------
# blur and smear


@ANOMALIES.register("blur")
def blur(image: np.ndarray, rng: np.random.Generator) -> SynthResult:
    """A locally blurred (out-of-focus, hazy) area with soft edges."""
    h, w = image.shape[:2]
    blob = _blob((h, w), rng, area=(0.02, 0.08), roughness=0.3)
    sigma = rng.uniform(2.0, 5.0) * max(1.0, min(h, w) / 256)
    blurred = np.stack(
        [ndimage.gaussian_filter(image[..., c].astype(np.float64), sigma) for c in range(3)], -1
    )
    haze = rng.uniform(0.0, 0.15)
    blurred = blurred * (1 - haze) + 200.0 * haze
    alpha = _soft(blob, 1.5)
    out = _blend(image, blurred, alpha)
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
    blob = _blob((h, w), rng, area=(0.02, 0.07), roughness=0.25, aspect=(2.5, 4.0), theta=angle)
    length = int(rng.integers(9, 21) * max(1.0, min(h, w) / 256))
    kernel = _line_kernel(length, angle)
    smeared = np.stack(
        [ndimage.convolve(image[..., c].astype(np.float64), kernel, mode="reflect") for c in range(3)], -1
    )
    # drag marks: noise stretched along the smear direction, so the patch is streaky, not flat
    streaks = ndimage.convolve(rng.normal(0.0, 1.0, (h, w)), _line_kernel(3 * length, angle), mode="wrap")
    streaks /= streaks.std() + 1e-9
    smeared *= rng.uniform(0.88, 0.97) * (1.0 + 0.06 * streaks[..., None])
    alpha = _soft(blob, 1.5)
    out = _blend(image, smeared, alpha)
    mask = alpha >= 0.5
    if not mask.any():
        mask = blob
    words = "streaky smeared patch, texture dragged in one direction, slightly darker"
    return SynthResult(
        out, mask, describe("smear", "blur", mask, words, direction_deg=round(math.degrees(angle)))
    )


# ----------------------------------------------------------------------------------------------------
# logical anomalies live in their own module (they segment components first); registered lazily here so
# that `kinds()` lists them and the first use imports them

for _name, _help in (
    ("logical_remove", "A component (e.g. a hole or a part) removed and covered with background texture."),
    ("logical_duplicate", "An extra copy of a component, placed where there is only background."),
    ("logical_move", "A component moved out of place: background where it was, the component elsewhere."),
    ("logical_recolour", "A component in the wrong colour (shading kept)."),
):
    ANOMALIES.register_lazy(_name, f"instruct_data.synthesis.logical:{_name}", help=_help)
