"""Parts of one product that hold on real photos: regions in the product's own frame, made consistent
across good references.

Why: colour thresholds split real parts into pieces that differ from photo to photo (reflections,
glass, shading, print), so references look inconsistent with themselves. Here:

1. The product frame: the product's silhouette (the largest piece of foreground, holes filled) and its
   bounding box. Positions and sizes are measured in this frame, (0, 0) its top-left and (1, 1) its
   bottom-right, so a product standing a little to the side changes none of them.
2. Regions: graph-based segmentation (`tools.graph_segmentation`), which keeps gradients and print
   inside one region and separates at sharp edges.
3. Parts by consensus (`consensus_parts`): every reference's regions are resampled onto one grid in
   the product frame; two neighbouring cells belong to the same part when they fall into the same
   region on at least `agreement` of the references. A part is thus what the references agree on, not
   what one photo happens to show.
Finding the parts on a new image is not done by its regions (they still split and merge from photo to
photo) but by each part's look: see agent/audit/product_parts.py.

Everything here is numpy / scipy at a reduced work size (`WORK_SIZE` on the long side).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from PIL import Image
from scipy import ndimage

from tools.components import EIGHT, foreground
from tools.graph_segmentation import graph_regions

WORK_SIZE = 256  # long side of the work image, pixels
GRID_HEIGHT = 96  # rows of the consensus grid (columns follow the product's aspect)


@dataclass
class ProductFrame:
    """Where the product is: its silhouette and the bounding box every measure is relative to."""

    box: tuple[int, int, int, int]  # x0, y0, x1, y1 in work pixels (x1, y1 exclusive)
    silhouette: np.ndarray  # HxW bool
    found: bool  # False: no foreground at all (the box is then the whole image)

    @property
    def width(self) -> int:
        return max(1, self.box[2] - self.box[0])

    @property
    def height(self) -> int:
        return max(1, self.box[3] - self.box[1])

    @property
    def aspect(self) -> float:
        return self.width / self.height

    def to_frame(self, x: float, y: float) -> tuple[float, float]:
        """Work-pixel coordinates (pixel centres at +0.5) -> product frame (0..1 inside the box)."""
        return (x - self.box[0]) / self.width, (y - self.box[1]) / self.height

    def to_pixels(self, fx: float, fy: float) -> tuple[float, float]:
        return self.box[0] + fx * self.width, self.box[1] + fy * self.height

    def cells(self, grid: tuple[int, int]) -> np.ndarray:
        """HxW int: the grid cell (row * columns + column) under each work pixel, -1 outside the box."""
        gw, gh = grid
        h, w = self.silhouette.shape
        x0, y0, x1, y1 = self.box
        cx = np.floor((np.arange(w) + 0.5 - x0) / self.width * gw).astype(np.int64)
        cy = np.floor((np.arange(h) + 0.5 - y0) / self.height * gh).astype(np.int64)
        inside = (cy[:, None] >= 0) & (cy[:, None] < gh) & (cx[None, :] >= 0) & (cx[None, :] < gw)
        out = cy[:, None] * gw + cx[None, :]
        return np.where(inside, out, -1)

    def sample(self, values: np.ndarray, grid: tuple[int, int]) -> np.ndarray:
        """(gh, gw) nearest samples of an HxW array at the centres of the grid's cells."""
        gw, gh = grid
        h, w = values.shape[:2]
        xs = np.clip(np.floor(self.box[0] + (np.arange(gw) + 0.5) / gw * self.width).astype(int), 0, w - 1)
        ys = np.clip(np.floor(self.box[1] + (np.arange(gh) + 0.5) / gh * self.height).astype(int), 0, h - 1)
        return values[np.ix_(ys, xs)]


def silhouette_tolerance(border_distances: np.ndarray) -> float:
    """Colour distance from the background above which a pixel is the product: twice the 99th
    percentile of the border's own distances (its noise, a shelf edge), within 0.08..0.2."""
    d = np.asarray(border_distances, dtype=np.float64).ravel()
    return float(np.clip(2.0 * np.percentile(d, 99) if d.size else 0.1, 0.08, 0.2))


def product_frame(px: np.ndarray, background: np.ndarray, tolerance: float, min_area: float = 0.01) -> ProductFrame:
    """The largest foreground piece (holes filled) as the product; the whole image when there is none."""
    h, w = px.shape[:2]
    fg = foreground(px, background, tolerance)
    fg = ndimage.binary_opening(fg, structure=np.ones((3, 3), bool))
    labels, n = ndimage.label(fg, structure=EIGHT)
    if n:
        sizes = np.bincount(labels.ravel())[1:]
        biggest = int(np.argmax(sizes)) + 1
        if sizes[biggest - 1] >= min_area * h * w:
            sil = ndimage.binary_fill_holes(labels == biggest)
            ys, xs = np.nonzero(sil)
            box = (int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1)
            return ProductFrame(box, sil, True)
    return ProductFrame((0, 0, w, h), np.zeros((h, w), bool), False)


def grid_shape(aspect: float, rows: int = GRID_HEIGHT) -> tuple[int, int]:
    """(columns, rows) of the consensus grid for a product of this width / height."""
    return max(4, round(rows * aspect)), rows


# ---------------------------------------------------------------------------------------------- consensus


def region_masks(regions_grid: np.ndarray, inside: np.ndarray, min_cells: int) -> list[np.ndarray]:
    """The regions of one reference on the grid, holes filled (print inside a label is the label's),
    those of at least `min_cells` cells lying mostly inside the product."""
    out = []
    for r in np.unique(regions_grid):
        m = regions_grid == r
        if m.sum() < min_cells or (m & inside).sum() < 0.5 * m.sum():
            continue
        out.append(ndimage.binary_fill_holes(m))
    return out


def consensus_parts(
    masks: list[list[np.ndarray]], min_iou: float = 0.5, min_support: float = 0.5
) -> tuple[np.ndarray, list[int]]:
    """((gh, gw) int part id per cell, -1 none; references that support each part).

    Regions of different references are matched by overlap in the product frame: clusters grow
    greedily from the most overlapping pair, never holding two regions of one reference, while the
    mean overlap (IoU) between the two clusters joined is at least `min_iou` (average linkage). A
    cluster with regions on at least `min_support` of the references is a part; its footprint is
    the cells that at least half its regions cover. Where footprints overlap, the cell goes to the
    part whose regions cover it more often."""
    flat = [(i, m) for i, ms in enumerate(masks) for m in ms]
    if not flat:
        return np.full(masks[0][0].shape if masks and masks[0] else (1, 1), -1, np.int64), []
    shape = flat[0][1].shape
    owner = np.array([i for i, _ in flat])
    mat = np.stack([m.ravel() for _, m in flat]).astype(np.float32)
    inter = mat @ mat.T
    area = mat.sum(1)
    iou = inter / np.maximum(area[:, None] + area[None] - inter, 1.0)
    n = len(flat)
    members: dict[int, list[int]] = {i: [i] for i in range(n)}
    root = list(range(n))

    def find(x: int) -> int:
        while root[x] != x:
            x = root[x]
        return x

    ii, jj = np.nonzero(np.triu(iou, 1) >= min_iou * 0.6)
    for k in np.argsort(-iou[ii, jj], kind="stable"):
        a, b = find(int(ii[k])), find(int(jj[k]))
        if a == b or set(owner[members[a]]) & set(owner[members[b]]):
            continue
        if iou[np.ix_(members[a], members[b])].mean() < min_iou:
            continue
        root[b] = a
        members[a] += members.pop(b)
    n_refs = len(masks)
    clusters = [m for m in members.values() if len(m) >= max(1, math.ceil(min_support * n_refs))]
    clusters.sort(key=lambda m: (-len(m), -float(area[m].mean())))
    freq = np.stack([mat[c].mean(0) for c in clusters]) if clusters else np.zeros((0, mat.shape[1]))
    out = np.full(mat.shape[1], -1, np.int64)
    if clusters:
        best = freq.argmax(0)
        out = np.where(freq.max(0) >= 0.5, best, -1)
    support = [sorted({int(owner[i]) for i in c}) for c in clusters]
    return out.reshape(shape), support


def work_image(image: Image.Image, size: int = WORK_SIZE) -> np.ndarray:
    """RGB 0..1 with the long side at `size` (area-averaged, so print does not alias)."""
    img = image.convert("RGB")
    scale = size / max(img.size)
    if scale < 1:
        img = img.resize((max(1, round(img.width * scale)), max(1, round(img.height * scale))), Image.BOX)
    return np.asarray(img, dtype=np.float64) / 255.0


def smooth_regions(px: np.ndarray, k: float = 1.0, min_size: int = 20, median: int = 5) -> np.ndarray:
    """Graph regions of a work image cut on a `median`-filtered copy: a median removes thin print
    (text, outlines) but keeps the edges of the parts."""
    smooth = ndimage.median_filter(px, size=(median, median, 1)) if median > 1 else px
    return graph_regions(smooth, k=k, min_size=min_size)


__all__ = [
    "GRID_HEIGHT",
    "WORK_SIZE",
    "ProductFrame",
    "consensus_parts",
    "grid_shape",
    "product_frame",
    "region_masks",
    "silhouette_tolerance",
    "smooth_regions",
    "work_image",
]
