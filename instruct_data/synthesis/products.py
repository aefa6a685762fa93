"""Procedural products for validation sets: a free texture and an aligned, oriented object.

Settings of the detectors must be chosen on data the test split never sees, and on more than one
kind of product (a choice that helps only magnetic tile is not a gain). With no data set to download,
two kinds are drawn here, each different in every sample like real parts are:

- `weave`: a woven fabric (warp and weft threads with jittered width and tone, fibre noise, a soft
  light gradient). Its look does not change under flips and 90-degree turns: a free texture.
- `bracket`: a brushed metal bracket on a dark belt, photographed in (nearly) the same pose every time:
  an L-shaped part with two holes and a stamped mark, shifted by a few pixels and turned by a degree
  or two. Upside down it is a different part: an oriented, aligned object.

Both return float32 HxWx3 in [0, 1]; the same generator state gives the same pixels.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from scipy import ndimage

ProductFn = Callable[[np.random.Generator, int], np.ndarray]


def weave(rng: np.random.Generator, size: int = 256) -> np.ndarray:
    """A woven fabric: alternating over/under warp and weft threads with fibre noise."""
    period = rng.uniform(13.0, 15.0)
    phase_x, phase_y = rng.uniform(0, period, 2)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float64)
    u, v = (xx + phase_x) / period, (yy + phase_y) / period
    # Thread profiles: bright in the middle of a thread, dark in the gaps.
    warp = np.cos(np.pi * (u - np.floor(u) - 0.5)) ** 2
    weft = np.cos(np.pi * (v - np.floor(v) - 0.5)) ** 2
    over = (np.floor(u) + np.floor(v)) % 2 == 0  # plain weave: warp on top in a checkerboard
    # Along-thread shading: a thread rises and falls over the crossing threads.
    warp_shade = 0.75 + 0.25 * np.sin(np.pi * (v - np.floor(v)))
    weft_shade = 0.75 + 0.25 * np.sin(np.pi * (u - np.floor(u)))
    grey = np.where(over, warp * warp_shade, weft * weft_shade)
    fibres = ndimage.gaussian_filter(rng.normal(0.0, 1.0, (size, size)), 0.8)
    grey = 0.32 + 0.38 * grey + 0.035 * fibres / (fibres.std() + 1e-6)
    light = rng.uniform(-0.04, 0.04) * (xx / size - 0.5) + rng.uniform(-0.04, 0.04) * (yy / size - 0.5)
    grey = grey * rng.uniform(0.92, 1.08) + light
    tint = np.array([0.86, 0.92, 1.0]) * rng.uniform(0.97, 1.03, 3)
    return np.clip(grey[..., None] * tint[None, None, :] + 0.06, 0, 1).astype(np.float32)


def bracket(rng: np.random.Generator, size: int = 256) -> np.ndarray:
    """A brushed L-shaped bracket with two holes and a stamped mark, in a jittered pose."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float64) / size
    angle = np.deg2rad(rng.uniform(-2.0, 2.0))
    dx, dy = rng.uniform(-0.03, 0.03, 2)
    # Part coordinates: undo the pose (rotation about the centre, then shift).
    cx, cy = xx - 0.5 - dx, yy - 0.5 - dy
    px = np.cos(angle) * cx + np.sin(angle) * cy + 0.5
    py = -np.sin(angle) * cx + np.cos(angle) * cy + 0.5
    vertical = (px > 0.18) & (px < 0.42) & (py > 0.12) & (py < 0.88)
    horizontal = (px > 0.18) & (px < 0.84) & (py > 0.64) & (py < 0.88)
    part = vertical | horizontal
    holes = (np.hypot(px - 0.30, py - 0.27) < 0.055) | (np.hypot(px - 0.70, py - 0.76) < 0.05)
    mark = (px > 0.23) & (px < 0.37) & (py > 0.43) & (py < 0.50)
    streaks = ndimage.gaussian_filter1d(rng.normal(0, 1, (size, size)), sigma=size / 8, axis=1)
    streaks = streaks / (streaks.std() + 1e-6) * 0.03
    metal = 0.62 + streaks + 0.05 * (px - 0.5) * rng.uniform(-1, 1) + 0.04 * (py - 0.5)
    belt = 0.14 + ndimage.gaussian_filter(rng.normal(0, 0.02, (size, size)), 1.0)
    grey = np.where(part & ~holes, metal, belt)
    grey = np.where(mark & part, grey - 0.16, grey)
    # A soft rim: metal parts have bevelled edges that catch the light.
    edge = ndimage.gaussian_filter((part & ~holes).astype(np.float64), 1.2)
    grey = grey + 0.08 * (edge * (1 - edge)) * 4
    grey = grey * rng.uniform(0.94, 1.06) + rng.normal(0, 0.01, (size, size))
    rgb = np.stack([grey * 0.99, grey, grey * 1.02], axis=-1)
    return np.clip(rgb, 0, 1).astype(np.float32)


PRODUCTS: dict[str, ProductFn] = {"weave": weave, "bracket": bracket}

__all__ = ["PRODUCTS", "bracket", "weave"]
