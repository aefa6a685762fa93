"""Scratches and cracks: random smooth curves or jagged branching walks, with a width and a depth."""

from __future__ import annotations

import math

import numpy as np
from scipy import ndimage

from instruct_data.synthesis.base import ANOMALIES, SynthResult, describe
from instruct_data.synthesis.drawing import blend


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
    out = blend(image, target, strength * (1.0 if crack else 0.95))
    if not crack and not bright:  # a scratch throws up a faint bright burr along one side
        burr = np.roll(mask, 1 + int(half), axis=0) & ~mask
        burr &= ndimage.binary_dilation(mask, iterations=int(half) + 2)
        out = blend(out, np.full(3, 255.0), burr * 0.15)
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
