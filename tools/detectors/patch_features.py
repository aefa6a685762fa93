"""Patch features of the embedded backbone, shared by the reference, batch and learned detectors.

One backbone pass gives the stride-8 and stride-16 block outputs of EfficientNet-Lite; each patch is
described by both, the deeper one upsampled to the stride-8 grid. Neighbourhood aggregation (a k x k
average of the feature maps) is optional and may be asked for several sizes at once from the same
pass, as MuSc does with its "multiple degrees": k = 1 keeps fine detail (small pits, thin cracks),
k = 3 adds context (broad stains).

Decisions, and why:
- Images are mirrored around their borders (reflect padding) before the backbone, so border patches
  are not unique merely through the network's zero padding; the padding is cropped off again.
- Working sizes keep the aspect ratio at one pixel scale (`scale`, working pixels per image pixel),
  rounded to the backbone's largest stride, and a huge image is capped (`max_side`).
- Every image gets the same global mean and spread (`standardize`), which absorbs exposure drift.
- A large working image goes through the backbone in overlapping tiles (`tiling.py`), so memory
  stays bounded whatever the resolution.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from tools.backbones.efficientnet_lite import EfficientNetLiteFeatures
from tools.detectors.tiling import tiled_levels
from tools.preprocess import pil_to_tensor, remove_illumination, standardize_contrast

GRID = 32  # working sizes are multiples of the backbone's largest stride
#: working images with a side beyond TILE + 2 TILE_CONTEXT go through the backbone in tiles
TILE = 1024
TILE_CONTEXT = 128


def round_to_grid(v: float) -> int:
    return max(GRID * 2, int(round(v / GRID)) * GRID)


def working_size(width: int, height: int, scale: float, max_side: int) -> tuple[int, int]:
    """(H, W) the backbone sees for an image of this size at `scale` working pixels per pixel."""
    s = min(scale, max_side / max(width, height))
    return round_to_grid(height * s), round_to_grid(width * s)


def working_scale(resolution: int, typical: float, min_scale: float = 0.0) -> float:
    """Working pixels per image pixel: `resolution` over the images' typical side, but never below
    `min_scale` (capped at 1: native size), so that on large images small defects are shrunk by at
    most 1 / `min_scale` (the backbone then works in tiles, `tiling.py`)."""
    return max(resolution / max(typical, 1.0), min(min_scale, 1.0))


def typical_side(images: Sequence[Image.Image]) -> float:
    """Median of sqrt(width * height): the pixel scale a set of images shares."""
    return float(np.median([np.sqrt(im.size[0] * im.size[1]) for im in images]))


#: at most this many working pixels in one batch through the backbone (large images go one at a time)
BATCH_PIXELS = 8 * 512 * 512


def group_by_size(sizes: Sequence[tuple[int, int]], batch_size: int) -> list[list[int]]:
    """Indices grouped into batches of equal working size, in first-seen order; a batch holds at most
    `batch_size` images and `BATCH_PIXELS` working pixels (one image at least), which bounds memory
    when the references are photos of many megapixels."""
    groups: dict[tuple[int, int], list[int]] = {}
    for i, size in enumerate(sizes):
        groups.setdefault(size, []).append(i)
    out = []
    for size, idx in groups.items():
        n = max(1, min(batch_size, BATCH_PIXELS // max(1, size[0] * size[1])))
        out.extend(idx[s : s + n] for s in range(0, len(idx), n))
    return out


VIEWS = ("hflip", "vflip", "rot180", "rot90", "rot270")


def view(x: torch.Tensor, name: str) -> torch.Tensor:
    """One flipped or turned view of a (..., H, W) tensor (rot90 views swap height and width)."""
    if name == "hflip":
        return x.flip(-1)
    if name == "vflip":
        return x.flip(-2)
    if name == "rot180":
        return x.flip(-1).flip(-2)
    if name == "rot90":
        return x.rot90(1, dims=(-2, -1))
    if name == "rot270":
        return x.rot90(-1, dims=(-2, -1))
    raise ValueError(f"unknown view {name!r}; available: {', '.join(VIEWS)}")


def undo_view(x: torch.Tensor, name: str) -> torch.Tensor:
    """The inverse of `view` (maps of a viewed image back onto the original grid)."""
    inverse = {"rot90": "rot270", "rot270": "rot90"}
    return view(x, inverse.get(name, name))


class PatchFeatureExtractor:
    """Images -> patch features (N, h, w, C) on the stride-8 grid, one tensor per neighbourhood size."""

    def __init__(
        self,
        backbone: str = "efficientnet-lite0",
        blocks: Sequence[int] = (4, 10),
        reflect_pad: int = 32,
        standardize: bool = True,
        illumination_sigma: float = 0.0,
        device: str | torch.device = "cpu",
        network: EfficientNetLiteFeatures | None = None,
        tile: int = TILE,
        tile_context: int = TILE_CONTEXT,
    ) -> None:
        if reflect_pad % GRID or reflect_pad < 0:
            raise ValueError(f"reflect_pad must be a non-negative multiple of {GRID}, got {reflect_pad}")
        self.device = torch.device(device)
        self.network = network or EfficientNetLiteFeatures(backbone, blocks).to(self.device)
        self.reflect_pad = reflect_pad
        self.standardize = standardize
        self.illumination_sigma = illumination_sigma
        self.tile, self.tile_context = tile, tile_context
        self.stride = 8  # input pixels per feature cell, confirmed by the first forward pass

    def prepare(self, images: Sequence[Image.Image], size: tuple[int, int]) -> torch.Tensor:
        """RGB PIL images -> (N, 3, H, W) in [0, 1] at `size`, illumination and contrast normalized."""
        x = pil_to_tensor(images, size).to(self.device)
        x = remove_illumination(x, self.illumination_sigma)
        return standardize_contrast(x) if self.standardize else x

    @torch.inference_mode()
    def __call__(self, x: torch.Tensor, pools: Sequence[int] = (1,)) -> list[torch.Tensor]:
        """(N, 3, H, W) prepared images -> one (N, H/8, W/8, C) tensor per pool size in `pools`."""
        pad = self.reflect_pad
        if pad:
            x = F.pad(x, (pad, pad, pad, pad), mode="reflect")
        levels = tiled_levels(self.network, x, self.tile, self.tile_context)
        size = levels[0].shape[-2:]
        self.stride = x.shape[-1] // size[-1]
        out = []
        for k in pools:
            parts = []
            for f in levels:
                if k > 1:
                    f = F.avg_pool2d(f, k, stride=1, padding=k // 2, count_include_pad=False)
                if f.shape[-2:] != size:
                    f = F.interpolate(f, size=size, mode="bilinear", align_corners=False)
                parts.append(f)
            feats = torch.cat(parts, dim=1)
            if pad:
                c = pad // self.stride
                feats = feats[..., c:-c, c:-c]
            out.append(feats.permute(0, 2, 3, 1).contiguous())
        return out


__all__ = [
    "GRID",
    "PatchFeatureExtractor",
    "VIEWS",
    "group_by_size",
    "round_to_grid",
    "typical_side",
    "working_scale",
    "undo_view",
    "view",
    "working_size",
]
