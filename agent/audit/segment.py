"""SAM automatic masks as the audit's candidate blobs (the `segmenter: sam` path).

Why a partition: SAM returns overlapping masks (a bottle *and* its label, a tray *and* each pin), while
the audit counts and measures disjoint parts, as colour segmentation gives them. So the masks are laid
out smallest first: each pixel belongs to the smallest mask that covers it (the label keeps its pixels,
the bottle keeps the rest), background pixels are dropped from every mask, and what is left of each mask
is split into 8-connected pieces. A mask that is mostly background (the table, a shadow) is dropped
before that. The blobs carry the same fields as `tools.components.find_parts` gives, so every rule
works on them unchanged.

`masks_to_blobs` is pure numpy; `SamMaskGenerator` adapts `tools.sam.SamTool.automatic_masks` (torch
and transformers are imported there, only when it runs).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
from PIL import Image
from scipy import ndimage

from agent.audit.spec import SamSettings
from tools.components import EIGHT, Part, foreground

MaskGenerator = Callable[[Image.Image], Sequence[np.ndarray]]  # image -> HxW bool masks, best first


def _at_size(mask: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """A mask at `shape` (H, W): nearest-neighbour resize when the generator worked at another size."""
    m = np.asarray(mask).astype(bool)
    if m.shape == shape:
        return m
    img = Image.fromarray(m.astype(np.uint8) * 255).resize((shape[1], shape[0]), Image.NEAREST)
    return np.asarray(img) > 0


def blob_from_mask(mask: np.ndarray, px: np.ndarray) -> Part:
    """A Part (area fraction, normalized centroid, mean colour) of one HxW bool mask of `px`."""
    h, w = mask.shape
    ys, xs = np.nonzero(mask)
    rgb = px[mask].mean(0)
    return Part(
        mask,
        float(len(ys) / (h * w)),
        (float((xs.mean() + 0.5) / w), float((ys.mean() + 0.5) / h)),
        (float(rgb[0]), float(rgb[1]), float(rgb[2])),
    )


def masks_to_blobs(
    masks: Sequence[np.ndarray],
    px: np.ndarray,
    background: Sequence[float],
    tolerance: float,
    min_area: float,
    max_background: float = 0.5,
) -> list[Part]:
    """Disjoint foreground blobs (largest first) from overlapping SAM masks of the work image `px`.

    A mask with more than `max_background` of its pixels within `tolerance` of the background colour is
    dropped; the rest are partitioned smallest first, trimmed to the foreground, split into connected
    pieces, and pieces below `min_area` (fraction of the image) dropped.
    """
    h, w = px.shape[:2]
    fg = foreground(px, background, tolerance)
    kept = []
    for m in masks:
        m = _at_size(m, (h, w))
        n = int(m.sum())
        if n and (m & fg).sum() / n >= 1.0 - max_background:
            kept.append(m)
    kept.sort(key=lambda m: int(m.sum()))
    taken = ~fg
    blobs: list[Part] = []
    for m in kept:
        piece = m & ~taken
        taken |= m
        labels, n = ndimage.label(piece, structure=EIGHT)
        for i in range(1, n + 1):
            part = labels == i
            if part.sum() / (h * w) >= min_area:
                blobs.append(blob_from_mask(part, px))
    blobs.sort(key=lambda b: -b.area)
    return blobs


class SamMaskGenerator:
    """`MaskGenerator` over a loaded `tools.sam.SamTool`: automatic masks with the spec's settings."""

    def __init__(self, tool: Any, settings: SamSettings | None = None) -> None:
        self.tool = tool
        self.settings = settings or SamSettings()

    def __call__(self, image: Image.Image) -> list[np.ndarray]:
        s = self.settings
        found = self.tool.automatic_masks(
            image,
            points_per_side=s.points_per_side,
            min_score=s.min_score,
            min_stability=s.min_stability,
            nms_iou=s.nms_iou,
        )
        return [f["mask"] for f in found]


def work_image(px: np.ndarray) -> Image.Image:
    """The (white-balanced) work pixels as an RGB image, what SAM segments."""
    return Image.fromarray(np.clip(np.round(px * 255.0), 0, 255).astype(np.uint8), "RGB")


__all__ = ["MaskGenerator", "SamMaskGenerator", "blob_from_mask", "masks_to_blobs", "work_image"]
