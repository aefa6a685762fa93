"""One component model: an image split into parts, each with its colour, place and size, and one
Hungarian matcher for pairing parts (of a query and a reference, or of references with each other).

The match step of the inspection loop and the logical audits both reason about parts ("two clamps",
"the label left of the bottle"), so both use what is here:

- `Part`: one connected area of one colour, in normalized image coordinates, with its mask.
- Two ways to find parts, for two kinds of image:
  - `segment_by_palette`: colour classes from a k-means palette of the references, then connected
    areas of each class (any product: the palette is the references' own colours);
  - `find_parts`: parts on a known background colour (audit scenes on a tray or a belt): the
    foreground, split into its main colours so touching parts of different colours stay apart.
- `hungarian`: optimal one-to-one assignment with a cost limit (scipy's `linear_sum_assignment`),
  and `match_parts` on top of it with the part cost (area ratio, centroid distance, colour).
"""

from __future__ import annotations

import colorsys
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from PIL import Image
from scipy import ndimage
from scipy.optimize import linear_sum_assignment

WORK_SIZE = 256  # long side parts are measured at by `work_pixels`
EIGHT = np.ones((3, 3), bool)  # 8-connectivity
SPLIT_COLOUR = 0.2  # foreground colours this far apart (RGB 0..1) are different parts, even touching
NO_MATCH = 1e6  # cost of pairs that must never be matched


@dataclass
class Part:
    """One connected area of one colour."""

    mask: np.ndarray | None  # HxW bool at the work resolution it was found at (None when not kept)
    area: float  # fraction of the image
    centroid: tuple[float, float]  # x, y in 0..1
    rgb: tuple[float, float, float]  # mean colour, 0..1
    colour_class: int = -1  # palette index (segment_by_palette); -1 for parts found on a background
    owner: str | None = None  # the audit component it was assigned to

    @property
    def hsv(self) -> tuple[float, float, float]:
        return colorsys.rgb_to_hsv(*self.rgb)

    @property
    def hue(self) -> float:
        return self.hsv[0]

    def to_dict(self) -> dict[str, Any]:
        return {
            "colour_class": self.colour_class,
            "area_fraction": round(self.area, 5),
            "centroid": [round(v, 4) for v in self.centroid],
            "colour": [round(v, 4) for v in self.rgb],
        }


# ---------------------------------------------------------------------------------------------- pixels


def work_pixels(image: Image.Image, size: int = WORK_SIZE, blur: float = 0.0, nearest: bool = False) -> np.ndarray:
    """RGB 0..1 with the long side at most `size`; optionally slightly blurred (`blur` pixels) so grain
    does not split parts, and resized nearest-neighbour (`nearest`) so a colour sample invents none."""
    img = image.convert("RGB")
    scale = size / max(img.size)
    if scale < 1:
        resample = Image.NEAREST if nearest else Image.BILINEAR
        img = img.resize((max(1, round(img.width * scale)), max(1, round(img.height * scale))), resample)
    px = np.asarray(img, dtype=np.float64) / 255.0
    return ndimage.gaussian_filter(px, (blur, blur, 0)) if blur > 0 else px


def border_colour(px: np.ndarray, width: int = 2) -> np.ndarray:
    """Median colour of the outer frame of `width` pixels."""
    frame = np.concatenate(
        [px[:width].reshape(-1, 3), px[-width:].reshape(-1, 3), px[:, :width].reshape(-1, 3), px[:, -width:].reshape(-1, 3)]
    )
    return np.median(frame, axis=0)


def white_balance(px: np.ndarray, background: Sequence[float]) -> np.ndarray:
    """Colours corrected per channel so that the image's border (assumed background) has the given
    background colour: cancels a global gain and colour cast of the light (gain clipped to 0.7..1.4)."""
    gain = np.clip(np.asarray(background, float) / np.maximum(border_colour(px), 1e-3), 0.7, 1.4)
    return np.clip(px * gain, 0.0, 1.0)


# ---------------------------------------------------------------------------------------------- palettes


def colour_palette(
    references: Sequence[Image.Image],
    k: int = 3,
    size: int = 64,
    iterations: int = 12,
    min_distance: float = 0.15,
    min_share: float = 0.01,
    blur: float = 1.0,
) -> np.ndarray:
    """Up to k RGB cluster centres (n, 3) of the references' pixels, dark to bright.

    k-means with a deterministic farthest-point start (the median pixel, then the pixel farthest from
    the centres so far); clusters holding less than `min_share` of the pixels are dropped, and centres
    closer than `min_distance` (RGB 0..1) merged: a uniform texture is one material, not k shades.
    """
    pixels = np.concatenate([work_pixels(im, size, blur=blur, nearest=True).reshape(-1, 3) for im in references])
    luma_w = np.array([0.299, 0.587, 0.114])
    luma = pixels @ luma_w
    centres = [pixels[np.argsort(luma)[len(luma) // 2]]]
    for _ in range(1, k):
        d = np.min([((pixels - c) ** 2).sum(-1) for c in centres], axis=0)
        centres.append(pixels[int(np.argmax(d))])
    cents = np.stack(centres)
    assign = np.zeros(len(pixels), int)
    for _ in range(iterations):
        assign = ((pixels[:, None, :] - cents[None, :, :]) ** 2).sum(-1).argmin(1)
        for c in range(len(cents)):
            members = pixels[assign == c]
            if len(members):
                cents[c] = members.mean(0)
    share = np.bincount(assign, minlength=len(cents)) / len(pixels)
    cents = cents[share >= min_share] if (share >= min_share).any() else cents
    cents = cents[np.argsort(cents @ luma_w)]
    kept = [cents[0]]
    for c in cents[1:]:
        if min(float(np.linalg.norm(c - q)) for q in kept) >= min_distance:
            kept.append(c)
    return np.stack(kept)


def colour_modes(colours: np.ndarray, tolerance: float = SPLIT_COLOUR, min_pixels: int = 8) -> np.ndarray:
    """The main colours of a set of pixels (N x 3, 0..1): peaks of a coarse colour histogram (8 levels
    per channel), largest first, a peak closer than `tolerance` to a kept one merged into it."""
    if len(colours) == 0:
        return np.zeros((0, 3))
    q = np.clip((colours * 8).astype(np.int64), 0, 7)
    keys = q[:, 0] * 64 + q[:, 1] * 8 + q[:, 2]
    counts = np.bincount(keys, minlength=512)
    centres: list[np.ndarray] = []
    for k in np.argsort(-counts, kind="stable"):
        if counts[k] < min_pixels:
            break
        mean = colours[keys == k].mean(0)
        if all(np.linalg.norm(mean - c) > tolerance for c in centres):
            centres.append(mean)
    return np.array(centres) if centres else colours.mean(0, keepdims=True)


# ---------------------------------------------------------------------------------------------- segmentation


def _parts_of_layer(
    layer: np.ndarray, px: np.ndarray, min_area: float, max_area: float, colour_class: int, keep_masks: bool
) -> list[Part]:
    """Connected areas (8-connected) of one boolean layer between `min_area` and `max_area`."""
    h, w = layer.shape
    total = float(h * w)
    labels, n = ndimage.label(layer, structure=EIGHT)
    if n == 0:
        return []
    idx = np.arange(1, n + 1)
    areas = np.bincount(labels.ravel(), minlength=n + 1)[1:].astype(np.float64) / total
    keep = (areas >= min_area) & (areas <= max_area)
    if not keep.any():
        return []
    cy, cx = (np.asarray(v) for v in zip(*ndimage.center_of_mass(np.ones_like(labels), labels, idx[keep]), strict=True))
    means = np.stack([ndimage.mean(px[..., ch], labels, idx[keep]) for ch in range(3)], axis=-1)
    parts = []
    for lab, a, x, y, col in zip(idx[keep], areas[keep], cx, cy, means, strict=True):
        parts.append(
            Part(
                labels == lab if keep_masks else None,
                float(a),
                (float((x + 0.5) / w), float((y + 0.5) / h)),
                (float(col[0]), float(col[1]), float(col[2])),
                colour_class,
            )
        )
    return parts


def segment_by_palette(
    image: Image.Image,
    palette: np.ndarray,
    size: int = 96,
    min_area: float = 0.002,
    max_area: float = 0.4,
    max_parts: int = 30,
    keep_masks: bool = False,
) -> list[Part]:
    """Parts of each palette colour, larger than `min_area` and smaller than `max_area` (larger ones
    are background), largest first."""
    px = work_pixels(image, size, blur=1.0)
    d = ((px[:, :, None, :] - palette[None, None, :, :]) ** 2).sum(-1)
    classes = d.argmin(-1)
    parts: list[Part] = []
    for c in range(len(palette)):
        parts.extend(_parts_of_layer(classes == c, px, min_area, max_area, c, keep_masks))
    parts.sort(key=lambda p: -p.area)
    return parts[:max_parts]


def foreground(px: np.ndarray, background: Sequence[float], tolerance: float) -> np.ndarray:
    """HxW bool: pixels farther than `tolerance` from the background colour, specks opened away."""
    dist = np.sqrt(((px - np.asarray(background, float)) ** 2).sum(-1))
    return ndimage.binary_opening(dist > tolerance, structure=np.ones((2, 2), bool))


def find_parts(px: np.ndarray, background: Sequence[float], tolerance: float, min_area: float) -> list[Part]:
    """Parts on a known background, largest first: 8-connected pieces of one main foreground colour,
    so parts that touch (a clamp on a cable, a label on a bottle) are still separate parts."""
    h, w = px.shape[:2]
    fg = foreground(px, background, tolerance)
    colours = px[fg]
    centres = colour_modes(colours)
    if len(centres) > 1:
        nearest = np.argmin(((colours[:, None, :] - centres[None]) ** 2).sum(-1), axis=1)
        layers = np.full((h, w), -1)
        layers[fg] = nearest
        masks = [ndimage.binary_opening(layers == i, structure=np.ones((2, 2), bool)) for i in range(len(centres))]
    else:
        masks = [fg]
    parts = [p for layer in masks for p in _parts_of_layer(layer, px, min_area, 1.0, -1, keep_masks=True)]
    parts.sort(key=lambda p: -p.area)
    return parts


# ---------------------------------------------------------------------------------------------- matching


@dataclass
class Assignment:
    """An optimal one-to-one pairing of rows and columns of a cost matrix, pairs above the limit dropped."""

    pairs: list[tuple[int, int, float]]  # (row, column, cost)
    unmatched_rows: list[int]
    unmatched_cols: list[int]

    @property
    def cost(self) -> float:
        """Sum of matched costs + 1 per unmatched row or column."""
        return sum(p[2] for p in self.pairs) + len(self.unmatched_rows) + len(self.unmatched_cols)


def hungarian(cost: np.ndarray, max_cost: float = math.inf) -> Assignment:
    """The Hungarian method (scipy's `linear_sum_assignment`) on an (n, m) cost matrix."""
    cost = np.asarray(cost, dtype=np.float64)
    n, m = cost.shape if cost.ndim == 2 else (0, 0)
    if n == 0 or m == 0:
        return Assignment([], list(range(n)), list(range(m)))
    rows, cols = linear_sum_assignment(cost)
    pairs = [(int(i), int(j), float(cost[i, j])) for i, j in zip(rows, cols, strict=True) if cost[i, j] <= max_cost]
    got_r, got_c = {p[0] for p in pairs}, {p[1] for p in pairs}
    return Assignment(pairs, [i for i in range(n) if i not in got_r], [j for j in range(m) if j not in got_c])


def part_cost(a: Part, b: Part) -> float:
    """|log area ratio| + 2 x centroid distance + colour distance; colour classes must agree."""
    if a.colour_class != b.colour_class:
        return NO_MATCH
    ratio = abs(math.log(max(a.area, 1e-9) / max(b.area, 1e-9)))
    return ratio + 2.0 * math.dist(a.centroid, b.centroid) + math.dist(a.rgb, b.rgb)


@dataclass
class PartMatch:
    """Parts of a query matched to one reference's parts."""

    assignment: Assignment = field(default_factory=lambda: Assignment([], [], []))

    @property
    def pairs(self) -> list[tuple[int, int, float]]:
        return self.assignment.pairs

    @property
    def extra(self) -> list[int]:
        """Query parts with no counterpart."""
        return self.assignment.unmatched_rows

    @property
    def missing(self) -> list[int]:
        """Reference parts with no counterpart."""
        return self.assignment.unmatched_cols

    @property
    def cost(self) -> float:
        return self.assignment.cost

    def to_dict(self) -> dict[str, Any]:
        return {"matched": len(self.pairs), "extra": self.extra, "missing": self.missing, "cost": round(self.cost, 4)}


def match_parts(query: Sequence[Part], reference: Sequence[Part], max_cost: float = 1.5) -> PartMatch:
    """Optimal one-to-one assignment of query parts to reference parts; pairs above `max_cost` unmatched."""
    cost = np.array([[part_cost(q, r) for r in reference] for q in query]).reshape(len(query), len(reference))
    return PartMatch(hungarian(cost, max_cost))


__all__ = [
    "EIGHT",
    "NO_MATCH",
    "SPLIT_COLOUR",
    "WORK_SIZE",
    "Assignment",
    "Part",
    "PartMatch",
    "border_colour",
    "colour_modes",
    "colour_palette",
    "find_parts",
    "foreground",
    "hungarian",
    "match_parts",
    "part_cost",
    "segment_by_palette",
    "white_balance",
    "work_pixels",
]
