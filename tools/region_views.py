"""Places on an image and how they compare with the references: the measurements that sit between
an anomaly map and the words of an explanation.

- `suspicious_places`: the map's highest peaks as distinct boxes (what to zoom into, what to point at).
- `zoom_box`: a square crop around a place, with context, inside the image.
- `nearest_reference_crop`: the same place on the reference that looks most like it there (what a
  model brain sees beside the zoomed place).
- `ReferenceTones`: how much darker or brighter a region is than every reference at the same place.
- `place_region`: the most suspicious place measured as a region, for a part with no region above
  the boundary (the record still says where to look).
- `order_by_places`: regions reordered by how strongly a later look confirmed the place they cover.

Plain numpy/PIL: no detector, no brain.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from PIL import Image

from tools.record import Region
from tools.regions import measure_regions, to_grey

Box = tuple[int, int, int, int]  # x0, y0, x1, y1 (exclusive), image pixels


def zoom_box(bbox: Sequence[int], size: tuple[int, int], margin: float = 0.5, min_side: int = 32) -> Box:
    """A square crop box around `bbox` (x0, y0, x1, y1, exclusive) with context, shifted to lie inside
    the image; a side longer than the image is cut to the image (so the box can be non-square)."""
    w, h = size
    x0, y0, x1, y1 = (int(v) for v in bbox)
    side = int(max(min_side, max(x1 - x0, y1 - y0) * (1.0 + 2.0 * margin)))
    sw, sh = min(side, w), min(side, h)
    cx, cy = (x0 + x1) / 2.0, (y0 + y1) / 2.0
    bx0 = min(max(0, int(round(cx - sw / 2.0))), w - sw)
    by0 = min(max(0, int(round(cy - sh / 2.0))), h - sh)
    return bx0, by0, bx0 + sw, by0 + sh


def suspicious_places(raw_map: np.ndarray, k: int, min_side: int) -> list[tuple[Box, float]]:
    """Up to `k` (box, peak value) around the map's highest peaks, each peak's surroundings suppressed
    before the next is taken, so the places are distinct. Boxes span the area above half the peak."""
    amap = np.nan_to_num(np.asarray(raw_map, dtype=np.float64), nan=-np.inf).copy()
    h, w = amap.shape
    floor = float(np.median(amap))
    places: list[tuple[Box, float]] = []
    for _ in range(max(0, k)):
        idx = int(np.argmax(amap))
        y, x = divmod(idx, w)
        peak = float(amap[y, x])
        if not np.isfinite(peak) or (places and peak <= floor):
            break
        half = floor + 0.5 * (peak - floor)
        ys, xs = np.nonzero(amap >= half)
        near = (np.abs(ys - y) <= max(h, w) // 4) & (np.abs(xs - x) <= max(h, w) // 4)
        ys, xs = ys[near], xs[near]
        x0, x1 = int(xs.min()) if xs.size else x, int(xs.max()) + 1 if xs.size else x + 1
        y0, y1 = int(ys.min()) if ys.size else y, int(ys.max()) + 1 if ys.size else y + 1
        r = max(min_side // 2, 1)
        x0, y0, x1, y1 = min(x0, x - r), min(y0, y - r), max(x1, x + r), max(y1, y + r)
        places.append(((max(0, x0), max(0, y0), min(w, x1), min(h, y1)), peak))
        amap[max(0, y0) : y1, max(0, x0) : x1] = -np.inf
    return places


def nearest_reference_crop(image: Image.Image, references: Sequence[Image.Image], box: Box) -> Image.Image | None:
    """The crop at `box` of the reference (resized to the image) whose grey values there are closest
    to the image's: the fairest good counterpart of that place; None without references."""
    if not references:
        return None
    w, h = image.size
    grey = np.asarray(image.crop(box).convert("L"), dtype=np.float32)
    crops = [r.resize((w, h), Image.BILINEAR).crop(box) for r in references]
    return min(crops, key=lambda c: float(np.abs(np.asarray(c.convert("L"), dtype=np.float32) - grey).mean()))


class ReferenceTones:
    """Grey levels of the references at an image's size (resized once per size), to say whether a
    region is darker or brighter than every reference at the same place."""

    def __init__(self, references: Sequence[Image.Image]) -> None:
        self.references = list(references)
        self._greys: list[np.ndarray] = []

    def contrast(self, pixels: np.ndarray, bbox: Sequence[int]) -> float | None:
        """Mean grey of the box minus the references' at the same place: negative when it is darker
        than every reference there, positive when brighter than every one, 0 within their range;
        None without references."""
        if not self.references:
            return None
        h, w = pixels.shape[:2]
        if not self._greys or self._greys[0].shape != (h, w):
            self._greys = [to_grey(np.asarray(r.resize((w, h), Image.BILINEAR))) for r in self.references]
        x0, y0, x1, y1 = (int(v) for v in bbox)
        here = float(to_grey(pixels)[y0:y1, x0:x1].mean())
        refs = [float(g[y0:y1, x0:x1].mean()) for g in self._greys]
        if here < min(refs):
            return here - min(refs)
        if here > max(refs):
            return here - max(refs)
        return 0.0


def place_region(anomaly_map: np.ndarray, raw_map: np.ndarray, pixels: np.ndarray, box: Box | None = None) -> Region | None:
    """The most suspicious place as a measured region: `box` (else the raw map's top place), the area
    above half its peak inside it."""
    if box is None:
        places = suspicious_places(np.asarray(raw_map), 1, 16)
        if not places:
            return None
        box = places[0][0]
    x0, y0, x1, y1 = box
    amap = np.asarray(anomaly_map, dtype=np.float64)
    inside = amap[y0:y1, x0:x1]
    if inside.size == 0:
        return None
    floor = float(np.median(amap))
    mask = np.zeros(amap.shape, bool)
    mask[y0:y1, x0:x1] = inside >= floor + 0.5 * (float(inside.max()) - floor)
    found = measure_regions(amap, mask, pixels, max_regions=1)
    return found[0] if found else None


def order_by_places(regions: list[Region], places: Sequence[tuple[Box, float]]) -> list[Region]:
    """Regions overlapping the most strongly confirmed place first (then in the measurer's order);
    `places` are (box, strength) pairs."""
    if not places or len(regions) < 2:
        return regions

    def strength(r: Region) -> float:
        x0, y0, x1, y1 = r.bbox
        best = 0.0
        for (px0, py0, px1, py1), value in places:
            if px0 < x1 and x0 < px1 and py0 < y1 and y0 < py1:
                best = max(best, value)
        return best

    return sorted(regions, key=lambda r: -strength(r))


__all__ = [
    "Box",
    "ReferenceTones",
    "nearest_reference_crop",
    "order_by_places",
    "place_region",
    "suspicious_places",
    "zoom_box",
]
