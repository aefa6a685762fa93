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


def _centroid(mask: np.ndarray) -> tuple[float, float]:
    ys, xs = np.nonzero(mask)
    return float(ys.mean()), float(xs.mean())


def _shifted(mask: np.ndarray, dy: int, dx: int) -> np.ndarray:
    """The mask moved by (dy, dx) cells, what leaves the grid dropped."""
    out = np.zeros_like(mask)
    h, w = mask.shape
    ys, yd = (slice(0, h - dy), slice(dy, h)) if dy >= 0 else (slice(-dy, h), slice(0, h + dy))
    xs, xd = (slice(0, w - dx), slice(dx, w)) if dx >= 0 else (slice(-dx, w), slice(0, w + dx))
    out[yd, xd] = mask[ys, xs]
    return out


def consensus_parts(
    masks: list[list[np.ndarray]], min_iou: float = 0.5, min_support: float = 0.5, max_shift: float = 0.1
) -> tuple[np.ndarray, list[list[int]]]:
    """((gh, gw) int part id per cell, -1 none; references that support each part).

    Regions of different references are the same part when their shapes overlap once their centres
    are lined up (IoU of the aligned masks) and the centres are at most `max_shift` of the grid's
    height apart: a label stuck a little higher on one bottle is still the label. Clusters grow
    greedily from the most similar pair, never holding two regions of one reference, while the mean
    similarity between the two clusters joined is at least `min_iou` (average linkage). A cluster with
    regions on at least `min_support` of the references is a part; its footprint is the cells that at
    least half of its regions cover once lined up, placed at their mean centre. Where footprints
    overlap, the cell goes to the part whose regions cover it more often."""
    flat = [(i, m) for i, ms in enumerate(masks) for m in ms]
    if not flat:
        return np.full((1, 1), -1, np.int64), []
    shape = flat[0][1].shape
    gh = shape[0]
    owner = np.array([i for i, _ in flat])
    cents = np.array([_centroid(m) for _, m in flat])
    area = np.array([float(m.sum()) for _, m in flat])
    n = len(flat)
    sim = np.zeros((n, n))
    for i in range(n):
        for j in range(i + 1, n):
            if owner[i] == owner[j] or np.hypot(*(cents[i] - cents[j])) > max_shift * gh:
                continue
            if not 1 / 2.5 <= area[i] / area[j] <= 2.5:
                continue
            dy, dx = np.round(cents[i] - cents[j]).astype(int)
            moved = _shifted(flat[j][1], int(dy), int(dx))
            inter = float((moved & flat[i][1]).sum())
            sim[i, j] = sim[j, i] = inter / max(area[i] + float(moved.sum()) - inter, 1.0)
    members: dict[int, list[int]] = {i: [i] for i in range(n)}
    root = list(range(n))

    def find(x: int) -> int:
        while root[x] != x:
            x = root[x]
        return x

    ii, jj = np.nonzero(np.triu(sim, 1) >= min_iou * 0.6)
    for k in np.argsort(-sim[ii, jj], kind="stable"):
        a, b = find(int(ii[k])), find(int(jj[k]))
        if a == b or set(owner[members[a]]) & set(owner[members[b]]):
            continue
        if sim[np.ix_(members[a], members[b])].mean() < min_iou:
            continue
        root[b] = a
        members[a] += members.pop(b)
    clusters = [m for m in members.values() if len(m) >= max(1, math.ceil(min_support * len(masks)))]
    clusters.sort(key=lambda m: (-len(m), -float(area[m].mean())))
    freq = []
    for c in clusters:
        mean = cents[c].mean(0)
        aligned = [_shifted(flat[i][1], *np.round(mean - cents[i]).astype(int).tolist()) for i in c]
        freq.append(np.mean(aligned, axis=0).ravel())
    out = np.full(shape[0] * shape[1], -1, np.int64)
    if freq:
        f = np.stack(freq)
        out = np.where(f.max(0) >= 0.5, f.argmax(0), -1)
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
    (text, outlines) but keeps the edges of the parts. Regions of two clearly different colours
    (joined through one weak corner) are split (`split_two_colours`)."""
    smooth = ndimage.median_filter(px, size=(median, median, 1)) if median > 1 else px
    return split_two_colours(graph_regions(smooth, k=k, min_size=min_size), smooth, min_size)


def split_two_colours(
    regions: np.ndarray, px: np.ndarray, min_size: int = 20, apart: float = 0.3, share: float = 0.15
) -> np.ndarray:
    """Regions whose pixels fall into two colour groups at least `apart` apart (RGB 0..1), each at
    least `share` of the region, split into the connected pieces of each group: a label joined to the
    dark glass beside it through one soft corner becomes two regions again."""
    out = regions.copy()
    nxt = int(regions.max()) + 1
    sizes = np.bincount(regions.ravel())
    for r in np.nonzero(sizes >= 2 * min_size)[0]:
        m = regions == r
        cols = px[m]
        a, b = cols[np.argmin(cols.sum(1))], cols[np.argmax(cols.sum(1))]
        for _ in range(6):  # 2-means from the darkest and the brightest pixel
            near_a = ((cols - a) ** 2).sum(1) <= ((cols - b) ** 2).sum(1)
            if near_a.all() or not near_a.any():
                break
            a, b = cols[near_a].mean(0), cols[~near_a].mean(0)
        if np.linalg.norm(a - b) < apart or min(near_a.mean(), 1 - near_a.mean()) < share:
            continue
        group = np.zeros(m.shape, bool)
        group[m] = near_a
        for piece_of in (group, m & ~group):
            labels, n = ndimage.label(piece_of, structure=EIGHT)
            for j in range(1, n + 1):
                piece = labels == j
                if piece.sum() >= min_size:
                    out[piece] = nxt
                    nxt += 1
    _, relabelled = np.unique(out, return_inverse=True)
    return relabelled.reshape(regions.shape)


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
    "split_two_colours",
    "work_image",
]
