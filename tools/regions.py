"""Anomaly map -> regions measured in words a person (and the RuleBrain) can use.

Why a module of its own: every brain, report and audit describes defects by the same few numbers
(where, how big, what shape, darker or brighter than the surroundings), so they are computed once,
here, from the map and the mask, and travel in `InspectionRecord.regions`.

Decisions, and why:

- Components are 8-connected: a diagonal scratch drawn on a pixel grid touches only at corners and
  must stay one region, not a chain of single pixels.
- Pixels are treated as unit squares when measuring shape: each coordinate variance gets the 1/12 of
  a uniform pixel added. A single pixel then has elongation 1, a 1-pixel-wide line of length L has
  elongation L, and no division by zero is possible.
- Regions are ordered by their peak score (most suspicious first); ties by area, then position, so the
  order is deterministic. They are numbered 1, 2, ... in that order (`number_regions`); a caller that
  orders them otherwise numbers them again, and that number is the one every picture and text shows.
- The ring for `intensity_contrast` (what the region is compared with) excludes every pixel of the
  predicted mask, not only the region itself: a neighbouring defect is not "the surroundings". Only
  when that leaves nothing is the ring taken as "dilated region minus region".
- Everything is vectorized over components (`ndimage.label`, `bincount`, `ufunc.at` for extrema and
  boxes, which is faster than `ndimage.maximum`/`find_objects` on maps with many components); per-region
  work is limited to the `max_regions` reported ones and to a window around each. A 1000 x 1000 map
  with 47,000 components takes about 0.1 s on one CPU core.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from tools.image_io import unit_pixels
from tools.record import Region

#: 8-connectivity for `ndimage.label`.
EIGHT_CONNECTED = np.ones((3, 3), dtype=bool)
_CROSS4 = ndimage.generate_binary_structure(2, 1)

#: elongation (major / minor axis length) from which a region is a line: a scratch or crack. Maps of
#: patch-based detectors are coarse (stride 8) and smoothed, so a thin scratch comes out as an ellipse
#: of aspect 2-3, hence 2 rather than a stricter value.
ELONGATED_MIN = 2.0
#: area fraction of the image from which a non-elongated region is "diffuse" rather than a spot.
DIFFUSE_MIN_AREA_FRACTION = 0.05

_LOCATION_GRID = (
    ("upper-left", "top", "upper-right"),
    ("left", "center", "right"),
    ("lower-left", "bottom", "lower-right"),
)
LOCATION_WORDS: tuple[str, ...] = tuple(w for row in _LOCATION_GRID for w in row)

_LUMA = np.array([0.299, 0.587, 0.114])


def mask_from_map(anomaly_map: np.ndarray, threshold: float, min_area_fraction: float = 0.0005) -> np.ndarray:
    """Binary mask of `anomaly_map > threshold`, without specks smaller than `min_area_fraction`.

    Single hot pixels are noise of the detector, not defects a person could act on; dropping the
    components below 0.05% of the image (default) keeps reports and region lists readable.
    Non-finite map values are never in the mask.
    """
    amap = np.asarray(anomaly_map)
    if amap.ndim != 2:
        raise ValueError(f"anomaly_map must be 2-D (HxW), got shape {amap.shape}")
    with np.errstate(invalid="ignore"):
        mask = np.isfinite(amap) & (amap > threshold)
    if min_area_fraction <= 0 or not mask.any():
        return mask
    labels, n = ndimage.label(mask, structure=EIGHT_CONNECTED)
    areas = np.bincount(labels.ravel(), minlength=n + 1)
    keep = areas >= min_area_fraction * amap.size
    keep[0] = False
    return keep[labels]


def peak_relative_mask(raw_map: np.ndarray, boundary: float, fraction: float = 0.5) -> np.ndarray:
    """Mask of pixels above `boundary` that also reach `fraction` of the way from the boundary to the
    peak of their own connected area.

    Smoothing spreads a strong defect's score into a halo that a fixed threshold would outline too;
    keeping only the upper part of each peak outlines the defect itself (a scratch stays a line), while
    faint defects, whose peak barely passes the boundary, keep their whole area.
    """
    raw = np.asarray(raw_map, dtype=np.float32)
    above = np.isfinite(raw) & (raw > boundary)
    if not above.any():
        return above
    labels, n = ndimage.label(above, structure=EIGHT_CONNECTED)
    peaks = np.asarray(ndimage.maximum(raw, labels, index=np.arange(1, n + 1)), dtype=np.float32)
    cut = np.concatenate([[np.inf], boundary + fraction * (peaks - boundary)]).astype(np.float32)
    return above & (raw >= cut[labels])


def location_words(cx: float, cy: float, width: int, height: int) -> str:
    """Which cell of a 3x3 grid over the image holds the point (pixel coordinates, pixel centres at ints).

    Nine words are what people use on a shop floor ("upper-left", "center", ...); finer positions are
    in the bbox and centroid.
    """
    if width <= 0 or height <= 0:
        raise ValueError(f"image size must be positive, got {width} x {height}")
    fx = (cx + 0.5) / width
    fy = (cy + 0.5) / height
    col = min(2, max(0, int(math.floor(fx * 3))))
    row = min(2, max(0, int(math.floor(fy * 3))))
    return _LOCATION_GRID[row][col]


def classify_shape(elongation: float, area_fraction: float) -> str:
    """'elongated' (scratch/crack-like), 'diffuse' (large and blob-like) or 'compact' (spot/hole-like)."""
    if elongation >= ELONGATED_MIN:
        return "elongated"
    if area_fraction >= DIFFUSE_MIN_AREA_FRACTION:
        return "diffuse"
    return "compact"


def to_grey(image: np.ndarray) -> np.ndarray:
    """HxW float64 grey level in [0, 1] from an HxW or HxWxC (C = 1, 3, 4) uint8/uint16/float image.

    Floats with a maximum above 1 are taken as 0..255; other floats as 0..1.
    """
    arr = np.asarray(image)
    if arr.ndim == 3:
        if arr.shape[2] == 1:
            arr = arr[..., 0]
        elif arr.shape[2] in (3, 4):
            arr = arr[..., :3]
        else:
            raise ValueError(f"image must have 1, 3 or 4 channels, got shape {arr.shape}")
    elif arr.ndim != 2:
        raise ValueError(f"image must be HxW or HxWxC, got shape {arr.shape}")
    scaled = unit_pixels(arr, np.float64, inf=0.0)
    if scaled.ndim == 3:
        scaled = scaled @ _LUMA
    return np.clip(scaled, 0.0, 1.0)


def _ring_measures(
    grey: np.ndarray, labels: np.ndarray, label: int, sl: tuple[slice, slice], area: int, mask: np.ndarray
) -> tuple[float, float]:
    """(tone, texture) of the region against a ring around it (see the module docstring): mean grey
    inside minus the ring's, and the grey spread (standard deviation) inside minus the ring's."""
    h, w = labels.shape
    radius = max(3.0, 0.5 * math.sqrt(area))
    pad = int(math.ceil(radius))
    y0, y1 = max(0, sl[0].start - pad), min(h, sl[0].stop + pad)
    x0, x1 = max(0, sl[1].start - pad), min(w, sl[1].stop + pad)
    region = labels[y0:y1, x0:x1] == label
    grey_win = grey[y0:y1, x0:x1]
    near = ndimage.distance_transform_edt(~region) <= radius
    ring = near & ~mask[y0:y1, x0:x1]
    if not ring.any():
        ring = near & ~region
    if not ring.any():
        return 0.0, 0.0
    inside, around = grey_win[region], grey_win[ring]
    return float(inside.mean() - around.mean()), float(inside.std() - around.std())


def _border_contact(labels: np.ndarray, label: int, sl: tuple[slice, slice]) -> float:
    """The share of the region's outline that lies on the image's edge: 0 for a region inside the
    image, small for one that only grazes the edge, a quarter or more for one cut by it."""
    h, w = labels.shape
    region = labels[sl] == label
    outline = region & ~ndimage.binary_erosion(region, structure=_CROSS4, border_value=0)
    ys, xs = np.nonzero(outline)
    ys, xs = ys + sl[0].start, xs + sl[1].start
    on_edge = (ys == 0) | (ys == h - 1) | (xs == 0) | (xs == w - 1)
    return float(on_edge.sum()) / max(1, int(outline.sum()))


def _reduce_at(ufunc: np.ufunc, initial: float, lab: np.ndarray, values: np.ndarray, size: int) -> np.ndarray:
    """Per-label reduction (max or min) of `values`, labels 1..size-1, in one unbuffered pass."""
    out = np.full(size, initial, dtype=np.float64)
    ufunc.at(out, lab, values)
    return out[1:]


def measure_regions(
    anomaly_map: np.ndarray,
    pred_mask: np.ndarray,
    image: np.ndarray | None = None,
    max_regions: int = 10,
) -> list[Region]:
    """Measure the connected components of `pred_mask`, most suspicious first, at most `max_regions`.

    `image` (HxW or HxWxC, same size as the map) gives `intensity_contrast`; without it that is 0.0.
    """
    amap = np.asarray(anomaly_map, dtype=np.float64)
    mask = np.asarray(pred_mask).astype(bool, copy=False)
    if amap.ndim != 2:
        raise ValueError(f"anomaly_map must be 2-D (HxW), got shape {amap.shape}")
    if mask.shape != amap.shape:
        raise ValueError(f"pred_mask shape {mask.shape} differs from anomaly_map shape {amap.shape}")
    grey = None
    if image is not None:
        grey = to_grey(image)
        if grey.shape != amap.shape:
            raise ValueError(f"image size {grey.shape} differs from anomaly_map shape {amap.shape}")
    if max_regions <= 0 or not mask.any():
        return []
    amap = np.nan_to_num(amap, nan=0.0, posinf=np.finfo(np.float64).max, neginf=np.finfo(np.float64).min)

    h, w = amap.shape
    labels, n = ndimage.label(mask, structure=EIGHT_CONNECTED)
    ys, xs = np.nonzero(labels)
    lab = labels[ys, xs]
    vals = amap[ys, xs]
    xs_f = xs.astype(np.float64)
    ys_f = ys.astype(np.float64)
    size = n + 1
    area = np.bincount(lab, minlength=size)[1:].astype(np.float64)
    sx = np.bincount(lab, xs_f, size)[1:]
    sy = np.bincount(lab, ys_f, size)[1:]
    mx, my = sx / area, sy / area
    # Central moments around each region's own mean (two passes: exact for far-from-origin regions).
    dx = xs_f - mx[lab - 1]
    dy = ys_f - my[lab - 1]
    vxx = np.bincount(lab, dx * dx, size)[1:] / area + 1.0 / 12.0
    vyy = np.bincount(lab, dy * dy, size)[1:] / area + 1.0 / 12.0
    vxy = np.bincount(lab, dx * dy, size)[1:] / area
    half_trace = (vxx + vyy) / 2.0
    root = np.sqrt(((vxx - vyy) / 2.0) ** 2 + vxy**2)
    lam_major = half_trace + root
    lam_minor = np.maximum(half_trace - root, 1e-12)
    elongation = np.maximum(np.sqrt(lam_major / lam_minor), 1.0)
    mean_score = np.bincount(lab, vals, size)[1:] / area
    max_score = _reduce_at(np.maximum, -np.inf, lab, vals, size)
    bx0 = _reduce_at(np.minimum, np.inf, lab, xs_f, size).astype(np.int64)
    by0 = _reduce_at(np.minimum, np.inf, lab, ys_f, size).astype(np.int64)
    bx1 = _reduce_at(np.maximum, -np.inf, lab, xs_f, size).astype(np.int64) + 1
    by1 = _reduce_at(np.maximum, -np.inf, lab, ys_f, size).astype(np.int64) + 1

    order = np.lexsort((my, mx, -area, -max_score))[:max_regions]  # last key is the primary one
    total = float(h * w)
    regions: list[Region] = []
    for i in order:
        sl = (slice(int(by0[i]), int(by1[i])), slice(int(bx0[i]), int(bx1[i])))
        a = int(area[i])
        frac = a / total
        contrast, texture = (0.0, 0.0) if grey is None else _ring_measures(grey, labels, int(i) + 1, sl, a, mask)
        elong = float(elongation[i])
        border = int(bx0[i]) <= 1 or int(by0[i]) <= 1 or int(bx1[i]) >= w - 1 or int(by1[i]) >= h - 1
        region = Region(
            bbox=(int(sl[1].start), int(sl[0].start), int(sl[1].stop), int(sl[0].stop)),
            area_px=a,
            area_fraction=frac,
            centroid=(float(mx[i]), float(my[i])),
            elongation=elong,
            mean_score=float(mean_score[i]),
            max_score=float(max_score[i]),
            intensity_contrast=contrast,
            location=location_words(float(mx[i]), float(my[i]), w, h),
            shape=classify_shape(elong, frac),
            touches_border=border,
            texture_contrast=texture,
            border_contact=_border_contact(labels, int(i) + 1, sl) if border else 0.0,
        )
        region.kind = defect_word(region) if grey is not None else ""
        regions.append(region)
    return number_regions(regions)


#: |intensity contrast| (0..1 grey) below which a region counts as "similar in tone"
TONE_THRESHOLD = 0.05
#: |grey difference to the references at the same place| below which it is not a tone of its own
REFERENCE_TONE_THRESHOLD = 0.02
#: Thresholds of the defect words, chosen on the validation halves of the real defect folders
#: (magnetic tile, ball screw; `evals.bench_words`, BENCHMARKS.md), the test halves reported after:
#: area fraction below which a compact mark is small enough to be a hole or a spot
SMALL_MARK = 0.04
#: share of a region's outline on the image's edge from which it is cut by the edge (a break, a fray);
#: a region that only grazes the edge (the detector's smoothed halo reaching it) is not
EDGE_CONTACT = 0.4
#: texture contrast (grey spread inside minus the ring's) from which a mark that is not darker is an
#: uneven surface: as rough as its surroundings or rougher, with no dark cavity or line in it
UNEVEN_TEXTURE = 0.0
#: area fraction below which a weak response at the edge is small (`edge_response`)
EDGE_RESPONSE_AREA = 0.01


@dataclass(frozen=True)
class Tone:
    """A region's tone from ONE comparison: darker, brighter or similar, against what, by how much.

    Why one: the ring around a region and the references at the same place can disagree (a mark whose
    ring is as dark as it is, on a plate darker than every reference there); a description that says
    both "similar in tone to its surroundings" and "darker than every reference there" contradicts itself.
    """

    direction: str  # "darker", "brighter" or "similar"
    against: str  # "surroundings" or "references"
    amount: float  # grey difference on the 0..1 scale (negative: darker)


def region_tone(region: Region) -> Tone | None:
    """The one tone a region is described with, or None when no tone was measured.

    The region against its own surroundings when it differs from them (what a person sees at the
    place); otherwise the references at the same place when the region is outside their range (the
    whole place is off, not only the mark); otherwise similar to its surroundings.
    `intensity_contrast == 0.0` exactly means "not measured" (no image was given to the measurer).
    """
    ring = float(region.intensity_contrast)
    ring_known = ring == ring and ring != 0.0
    if ring_known and abs(ring) >= TONE_THRESHOLD:
        return Tone("darker" if ring < 0 else "brighter", "surroundings", ring)
    ref = region.reference_contrast
    if ref is not None and ref == ref and abs(ref) >= REFERENCE_TONE_THRESHOLD:
        return Tone("darker" if ref < 0 else "brighter", "references", float(ref))
    if ring_known:
        return Tone("similar", "surroundings", ring)
    return None


def defect_word(region: Region) -> str:
    """What a measured region looks like, in the words of the shop floor: from its shape, its tone
    (`region_tone`, one comparison), its texture and how much of it the image's edge cuts off.

    cut by the edge and long: fray; cut by the edge, not long, darker: broken area; long and darker:
    crack; long otherwise: scratch; not darker and at least as rough as its surroundings: uneven
    surface; small and darker: hole; small and brighter: spot; larger with little tone: uneven
    surface; otherwise a darker or brighter change: stain. (Words of `prompts/qa_templates.yaml`'s
    defect types, so causes can be looked up.)
    """
    tone = region_tone(region)
    direction = tone.direction if tone is not None else "similar"
    darker, brighter = direction == "darker", direction == "brighter"
    shape = region.shape or classify_shape(region.elongation, region.area_fraction)
    long = shape == "elongated"
    at_edge = region.touches_border and region.border_contact >= EDGE_CONTACT
    if at_edge and long:
        return "fray"
    if at_edge and darker:
        return "broken area"
    if long:
        return "crack" if darker else "scratch"
    if not darker and region.texture_contrast >= UNEVEN_TEXTURE:
        return "uneven surface"
    if shape != "diffuse" and region.area_fraction < SMALL_MARK:
        return "hole" if darker else ("spot" if brighter else "stain")
    if not (darker or brighter):
        return "uneven surface"
    return "stain"


#: every word `defect_word` can give (the report counts them in explanations)
DEFECT_WORDS: tuple[str, ...] = ("crack", "scratch", "hole", "spot", "stain", "uneven surface", "fray", "broken area")


def number_regions(regions: list[Region]) -> list[Region]:
    """Number the regions 1, 2, ... in their final order and settle their defect words with every
    measurement in (the reference contrast is measured after the regions): the number is the one the
    overlay, the explanation, the record and the tables show. Returns the same list."""
    for i, region in enumerate(regions, start=1):
        region.number = i
        if region.kind:  # measured with an image: the word follows the one tone of the region
            region.kind = defect_word(region)
    return regions


def edge_response(region: Region, strongest: Region) -> bool:
    """Whether `region` is a weak response at the image's edge beside a stronger mark: small, touching
    the border and weaker than the strongest region. Patch detectors respond at borders (padding, the
    part's outline), so such a response is not described as a mark of its own; a region at the edge
    that is the strongest or large (a break, a frayed edge) still is."""
    return (
        region is not strongest
        and region.touches_border
        and region.area_fraction < EDGE_RESPONSE_AREA
        and region.max_score < strongest.max_score
    )


def region_masks(pred_mask: np.ndarray, regions: list[Region]) -> list[np.ndarray]:
    """The pixels of each region, as measured by `measure_regions` on `pred_mask` (8-connected
    components): the component with the region's bounding box, else the one covering most of that box."""
    mask = np.asarray(pred_mask).astype(bool, copy=False)
    if not regions:
        return []
    if not mask.any():
        return [np.zeros(mask.shape, bool) for _ in regions]
    labels, n = ndimage.label(mask, structure=EIGHT_CONNECTED)
    boxes = ndimage.find_objects(labels)
    by_box = {(sl[1].start, sl[0].start, sl[1].stop, sl[0].stop): i + 1 for i, sl in enumerate(boxes) if sl is not None}
    out = []
    for r in regions:
        x0, y0, x1, y1 = (int(v) for v in r.bbox)
        label = by_box.get((x0, y0, x1, y1))
        if label is None:
            inside = labels[max(0, y0):max(0, y1), max(0, x0):max(0, x1)]
            counts = np.bincount(inside.ravel(), minlength=n + 1)
            counts[0] = 0
            label = int(counts.argmax()) if counts.any() else 0
        out.append(labels == label if label else np.zeros(mask.shape, bool))
    return out
