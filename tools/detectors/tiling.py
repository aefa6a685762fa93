"""Backbone features of a large image, computed tile by tile so that memory stays bounded.

Why: small defects vanish when a large image is shrunk to a working size of a few hundred pixels, so
large images are analysed near their native resolution (`ReferenceMatchingConfig.resolution`, chosen
by `scale_rule.py`); the backbone's activations for a 20-megapixel image at native size would need
many gigabytes. The network is therefore run on overlapping tiles: each tile is a core of `tile`
pixels with `context` pixels of real image around it (mirrored at the image's own borders, as the
whole image is), and only the core's features are kept. Tiles sit on the backbone's largest stride,
so the stitched feature maps are on the same grid as the whole image's; with enough context they are
the same features, up to the reach of the deepest block (tested).

Plain torch; the network is any module returning a list of feature maps at strides that divide 32.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

#: tile cores and context are multiples of this (the backbone's largest stride)
GRID = 32


def tile_starts(length: int, tile: int) -> list[int]:
    """Starts of tile cores covering [0, length), every one `tile` long except the last."""
    return list(range(0, max(length, 1), tile))


@torch.inference_mode()
def tiled_levels(
    network: Callable[[torch.Tensor], list[torch.Tensor]], x: torch.Tensor, tile: int, context: int,
) -> list[torch.Tensor]:
    """The network's feature levels for (N, 3, H, W) `x` (H, W multiples of 32), computed on tiles of
    `tile` + 2 `context` pixels at most; returns the same list of (N, C, H/s, W/s) maps as
    `network(x)` would."""
    if tile % GRID or context % GRID or tile <= 0 or context < 0:
        raise ValueError(f"tile and context must be multiples of {GRID} (tile > 0), got {tile} and {context}")
    n, _, h, w = x.shape
    if h <= tile + 2 * context and w <= tile + 2 * context:
        return network(x)
    out: list[torch.Tensor] | None = None
    strides: list[int] = []
    for y0 in tile_starts(h, tile):
        for x0 in tile_starts(w, tile):
            y1, x1 = min(h, y0 + tile), min(w, x0 + tile)
            cy0, cx0 = max(0, y0 - context), max(0, x0 - context)
            cy1, cx1 = min(h, y1 + context), min(w, x1 + context)
            levels = network(x[:, :, cy0:cy1, cx0:cx1])
            if out is None:
                strides = [(cy1 - cy0) // f.shape[-2] for f in levels]
                out = [torch.empty(n, f.shape[1], h // s, w // s, dtype=f.dtype, device=f.device) for f, s in zip(levels, strides, strict=True)]
            for f, s, full in zip(levels, strides, out, strict=True):
                full[:, :, y0 // s : y1 // s, x0 // s : x1 // s] = f[:, :, (y0 - cy0) // s : (y1 - cy0) // s, (x0 - cx0) // s : (x1 - cx0) // s]
    assert out is not None
    return out


__all__ = ["GRID", "tile_starts", "tiled_levels"]
