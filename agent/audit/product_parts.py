"""The parts of one product on real photos (`segmenter: regions`): discovered on the good references,
then found on any image by their look.

Discovery (drafting only): every reference is cut into graph regions; regions of different
references that overlap in the product's frame are matched (`tools.part_segmentation`), and what at
least half of the references agree on becomes a candidate part, with its box in the product frame.
A part's pattern is the mean of its crops on the references, each aligned to the others by
correlation first, so that the pattern is sharp although labels sit a little differently on each.

Finding (every image): the product frame of the image, then each part's pattern searched around its
expected place by normalized cross-correlation over a few angles and sizes (`tools.part_templates`).
The peak tells presence (its value), position, orientation and size; the crop there gives the part's
colour and its look. Thin print, reflections and a neighbour of nearly the same colour do not
split or merge anything here, which is what made colour blobs fail on real photos.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from PIL import Image

from agent.audit.looks import look_vector
from tools.components import border_colour
from tools.part_segmentation import (
    ProductFrame,
    consensus_parts,
    grid_shape,
    product_frame,
    region_masks,
    silhouette_tolerance,
    smooth_regions,
    work_image,
)
from tools.part_templates import crop, edge_angle, half, locate, ncc_map

REGION_SCALES = (1.0, 0.5)  # graph segmentation scales (k) of the discovery step
MIN_IOU = 0.4  # regions of two references overlapping this much are the same part
MIN_SUPPORT = 0.5  # a candidate part is on at least this share of the references (then checked on all)
MIN_AREA = 0.01  # of the product box
MIN_SIDE = 0.06  # of the product's width and height: thinner pieces are edges and glints
MAX_AREA = 0.8  # larger: the product itself
SIDE_BAND = 0.15  # a candidate lying within this share of the product's left or right side is its edge
SAME_BOX = 0.45  # candidates of the two scales whose boxes overlap this much (IoU) are one part
ALIGN = 0.05  # how far (share of the product) a reference's crop may move to align with the others
FINE_ANGLE = 6.0  # the pattern is tried turned by at most this much (a larger tilt: see find_part)
PREFER_SIZE = 0.05  # another size must match this much better than the drafted one
EDGE_MARGIN = 0.12  # share of the part's size added around it to read its tilt (its outline included)
MIN_EDGE_STRENGTH = 0.2  # below: no leading edge direction, the template's angle is the part's


@dataclass
class ProductView:
    """One image at the work size, with its product frame."""

    px: np.ndarray
    frame: ProductFrame
    background: np.ndarray

    @property
    def half(self) -> np.ndarray:
        """The work image at half size (computed once)."""
        if getattr(self, "_half", None) is None:
            self._half = half(self.px)
        return self._half


def border_distances(px: np.ndarray, background: Sequence[float]) -> np.ndarray:
    frame = np.concatenate([px[:2].reshape(-1, 3), px[-2:].reshape(-1, 3), px[:, :2].reshape(-1, 3), px[:, -2:].reshape(-1, 3)])
    return np.sqrt(((frame - np.asarray(background, float)) ** 2).sum(-1))


def product_view(image: Image.Image, background: Sequence[float] | None, work_size: int, tolerance: float | None = None) -> ProductView:
    """The image's work pixels and product frame (`background`: the spec's colour, else the border's)."""
    px = work_image(image, work_size)
    bg = np.asarray(background if background is not None else border_colour(px), dtype=np.float64)
    tol = tolerance if tolerance is not None else silhouette_tolerance(border_distances(px, bg))
    return ProductView(px, product_frame(px, bg, tol), bg)


@dataclass
class Candidate:
    """A part the references agree on: its box in the product frame and who supports it."""

    box: tuple[float, float, float, float]
    cells: int
    support: list[int]


def _box_iou(a: tuple[float, ...], b: tuple[float, ...]) -> float:
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def discover(views: Sequence[ProductView]) -> list[Candidate]:
    """Candidate parts from the references' graph regions (see the module docstring), best supported
    and largest first. Two scales of regions: a label that merges with its surroundings at the coarse
    scale on some photos is its own region at the fine one; the same part found at both is kept once."""
    grid = grid_shape(float(np.median([v.frame.aspect for v in views])))
    gw, gh = grid
    out: list[Candidate] = []
    for k in REGION_SCALES:
        masks = []
        for v in views:
            regions = smooth_regions(v.px, k=k)
            masks.append(region_masks(v.frame.sample(regions, grid), v.frame.sample(v.frame.silhouette, grid), int(0.004 * gw * gh)))
        parts, support = consensus_parts(masks, MIN_IOU, MIN_SUPPORT)
        for p, sup in enumerate(support):
            ys, xs = np.nonzero(parts == p)
            if ys.size == 0:
                continue
            box = tuple(round(float(b), 4) for b in (xs.min() / gw, ys.min() / gh, (xs.max() + 1) / gw, (ys.max() + 1) / gh))
            area = ys.size / (gw * gh)
            if area < MIN_AREA or area > MAX_AREA or box[2] - box[0] < MIN_SIDE or box[3] - box[1] < MIN_SIDE:
                continue
            if box[2] <= SIDE_BAND or box[0] >= 1.0 - SIDE_BAND:
                continue  # a piece along the product's outline (a glass wall, a rim): its edge, not a part
            same = next((c for c in out if _box_iou(c.box, box) > SAME_BOX), None)
            if same is None:
                out.append(Candidate(box, int(ys.size), sup))
            elif len(sup) > len(same.support):
                same.box, same.cells, same.support = box, int(ys.size), sup
    out.sort(key=lambda c: (-len(c.support), -c.cells))
    return out


def box_pixels(frame: ProductFrame, box: tuple[float, float, float, float]) -> tuple[tuple[float, float], tuple[int, int]]:
    """(centre (x, y), size (w, h)) in work pixels of a product-frame box on this image."""
    x0, y0 = frame.to_pixels(box[0], box[1])
    x1, y1 = frame.to_pixels(box[2], box[3])
    return ((x0 + x1) / 2, (y0 + y1) / 2), (max(3, round(x1 - x0)), max(3, round(y1 - y0)))


def aligned_crops(views: Sequence[ProductView], box: tuple[float, float, float, float], rounds: int = 2) -> list[np.ndarray]:
    """Each view's crop of the box at the references' median size, moved (up to `ALIGN` of the product)
    to agree with the mean of the others."""
    size = (
        max(3, round((box[2] - box[0]) * float(np.median([v.frame.width for v in views])))),
        max(3, round((box[3] - box[1]) * float(np.median([v.frame.height for v in views])))),
    )
    centres = [box_pixels(v.frame, box)[0] for v in views]
    crops = [crop(v.px, c, size) for v, c in zip(views, centres, strict=True)]
    for _ in range(rounds):
        total = np.sum(crops, axis=0)
        moved = []
        for i, v in enumerate(views):
            others = (total - crops[i]) / max(1, len(crops) - 1) if len(crops) > 1 else total
            m = locate(v.px, others, centres[i], (ALIGN * v.frame.width + 1, ALIGN * v.frame.height + 1))
            centres[i] = (m.x, m.y)
            moved.append(crop(v.px, (m.x, m.y), size))
        crops = moved
    return crops


@dataclass
class PartFind:
    """Where a part was found on one image (or not)."""

    score: float  # correlation with the part's pattern at the best place
    centre: tuple[float, float]  # product frame
    angle: float
    edge_strength: float  # how clearly one edge direction leads in the found part (0..1)
    scale: float
    crop: np.ndarray  # the part as found (work pixels, at the pattern's angle)
    centre_px: tuple[float, float]
    size_px: tuple[int, int]

    def colour(self) -> np.ndarray:
        """Median colour of the middle of the found part."""
        h, w = self.crop.shape[:2]
        core = self.crop[h // 5 : h - h // 5 or None, w // 5 : w - w // 5 or None]
        return np.median(core.reshape(-1, 3), axis=0)

    def look(self) -> np.ndarray:
        """The look of the part's inner 60 % (its print, not what shows around it)."""
        h, w = self.crop.shape[:2]
        return look_vector(self.crop[int(0.2 * h) : h - int(0.2 * h) or None, int(0.2 * w) : w - int(0.2 * w) or None])


def find_part(
    view: ProductView,
    pattern: np.ndarray,
    box: tuple[float, float, float, float],
    search: float,
    angles: Sequence[float] = (0.0,),
    scales: Sequence[float] = (1.0,),
) -> PartFind:
    """The best match of the part's pattern within `search` (share of the product) of its box: a coarse
    search at half size over the whole window, then small turns and the sizes at full size around its
    place. The reported angle is the found part's own edge direction."""
    centre, size = box_pixels(view.frame, box)
    img = Image.fromarray((np.clip(pattern, 0, 1) * 255).astype(np.uint8)).resize(size, Image.BILINEAR)
    tpl = np.asarray(img, dtype=np.float64) / 255.0
    window = (search * view.frame.width + 1, search * view.frame.height + 1)
    lo, hi = min(angles, default=0.0), max(angles, default=0.0)  # the spec's angles bound the turns
    # the whole window at half size with the upright pattern: a turned pattern loses its corners (and
    # with them its edges), so its scores are not comparable; a tilted part is still found upright,
    # and its tilt is measured on it (edge_angle), finer than any angle step
    rough = locate(view.half, half(tpl), (centre[0] / 2, centre[1] / 2), (window[0] / 2, window[1] / 2))
    near = tuple(a for a in angles if abs(a) <= FINE_ANGLE and lo <= a <= hi) or (0.0,)
    best = locate(view.px, tpl, (rough.x * 2, rough.y * 2), (3.0, 3.0), near)
    if any(sc != 1.0 for sc in scales):
        sized = locate(view.px, tpl, (best.x, best.y), (2.0, 2.0), (best.angle,), tuple(sc for sc in scales if sc != 1.0))
        best = sized if sized.score > best.score + PREFER_SIZE else best
    found_size = (max(3, round(size[0] * best.scale)), max(3, round(size[1] * best.scale)))
    part = crop(view.px, (best.x, best.y), found_size)
    # the tilt of the part with its own outline: the crop grown by EDGE_MARGIN on every side
    outline = crop(view.px, (best.x, best.y), (round(found_size[0] * (1 + 2 * EDGE_MARGIN)), round(found_size[1] * (1 + 2 * EDGE_MARGIN))))
    tilt, strength = edge_angle(outline)
    angle = tilt if strength >= MIN_EDGE_STRENGTH else best.angle
    return PartFind(
        best.score, view.frame.to_frame(best.x, best.y), angle, strength, best.scale, part, (best.x, best.y), found_size
    )


def distinctiveness(view: ProductView, pattern: np.ndarray, found: PartFind, search: float) -> float:
    """How much better the part matches its pattern where it is than anywhere else its search looks
    (within `search` of the product around it; NCC at half size, places farther than the part's size
    from it): a label is unlike the glass and liquid around it; a piece of plain glass wall looks like
    the wall above and below it, and its place cannot be told reliably."""
    f = view.frame
    img = Image.fromarray((np.clip(pattern, 0, 1) * 255).astype(np.uint8)).resize(found.size_px, Image.BILINEAR)
    tpl = half(np.asarray(img, dtype=np.float64) / 255.0)
    th, tw = tpl.shape[:2]
    cx, cy = found.centre_px[0] / 2, found.centre_px[1] / 2
    rx, ry = search * f.width / 2 + tw, search * f.height / 2 + th
    x0, y0 = max(0, int(cx - rx)), max(0, int(cy - ry))
    x1, y1 = min(view.half.shape[1], int(cx + rx) + 1), min(view.half.shape[0], int(cy + ry) + 1)
    win = view.half[y0:y1, x0:x1]
    if win.shape[0] < th or win.shape[1] < tw:
        return 0.0
    scores = ncc_map(win, tpl)
    yy, xx = np.mgrid[0 : scores.shape[0], 0 : scores.shape[1]]
    far = (np.abs(xx + x0 + tw / 2 - cx) > tw / 2) | (np.abs(yy + y0 + th / 2 - cy) > th / 2)
    here = scores[~far].max() if (~far).any() else scores.max()
    elsewhere = scores[far].max() if far.any() else -1.0
    return float(here - elsewhere)


def fill_level(view: ProductView, found: PartFind, column: tuple[float, float]) -> float:
    """How full the product is with the found part's colour: 1 - the frame y of the liquid's surface in
    the product's middle (`column`, frame x range), above the part's centre.

    The surface is the best single change point of the rows' colours between the top of the product
    and the part's centre: the row that splits them into two runs whose mean colours differ most
    (weighted by the runs' lengths, as Otsu splits a histogram). What is above a liquid (glass, air,
    a cap) and the liquid itself each look alike along the column, so the split falls on the surface,
    for any colour of liquid (a recoloured one too); a local step (a label's edge, the light on the
    surface) moves it little."""
    f = view.frame
    x0 = int(round(f.to_pixels(column[0], 0.0)[0]))
    x1 = max(x0 + 1, int(round(f.to_pixels(column[1], 0.0)[0])))
    top = max(0, f.box[1] + int(0.05 * f.height))
    bottom = int(round(found.centre_px[1]))
    rows = np.median(view.px[top:bottom, x0:x1], axis=1)
    n = len(rows)
    if n < 4:
        return 1.0 - f.to_frame(0.0, bottom)[1]
    csum = np.cumsum(rows, axis=0)
    t = np.arange(1, n)
    above = csum[:-1] / t[:, None]
    below = (csum[-1] - csum[:-1]) / (n - t)[:, None]
    gain = ((above - below) ** 2).sum(-1) * t * (n - t) / n
    surface = top + int(t[int(np.argmax(gain))])
    return 1.0 - f.to_frame(0.0, surface)[1]


__all__ = [
    "Candidate",
    "PartFind",
    "ProductView",
    "aligned_crops",
    "box_pixels",
    "discover",
    "distinctiveness",
    "fill_level",
    "find_part",
    "product_view",
]
