"""Detection and localization metrics: exact, numpy only, fast enough for whole benchmarks.

Conventions shared by every function here:

- A label or mask value of True (or 1) means anomalous; a higher score means more anomalous.
- A sample or pixel is called anomalous when ``score >= threshold``.
- Pixel metrics pool the pixels of all images (the MVTec AD protocol). Images may differ in size, but
  each map must have its own mask's shape. A single 2-D array counts as one image.
- Undefined values (a class missing, empty input) come back as NaN instead of raising, so a benchmark
  over many categories keeps going. NaN scores raise ValueError: they would silently skew a curve.

Every curve is exact: each distinct score is a threshold, ties count half (AUROC) or form one
curve point (AUPRO), so results do not depend on a threshold grid. The pixel metrics cost one sort of
the normal pixels plus binary searches of the anomalous ones. Measured on the shared 2-core
development machine (best of 3), 60 million float32 pixels in 229 maps of 512x512 (uniform noise,
+0.5 inside the mask) with 5.5 % anomalous pixels in disc-shaped regions: ``pixel_auroc`` 0.7 s,
``pixel_f1_max`` 0.6 s, ``pixel_aupro`` 1.3 s, ``pixel_metrics`` (all three, one sort) 1.6 s; with
27 % anomalous pixels 1.5 s, 1.0 s, 3.5 s and 5.7 s. Extra memory is about one copy of the maps plus
a few tens of bytes per anomalous pixel (region ids, weights, sort order).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TypeAlias

import numpy as np
from numpy.typing import ArrayLike
from scipy import ndimage

# the ranking core (input checks, the split by label, AUROC) is shared with agent.mllm: tools.ranking
from tools.ranking import CHUNK, auroc_sorted
from tools.ranking import as_labels as _as_labels
from tools.ranking import as_scores as _as_scores
from tools.ranking import raise_on_nan as _raise_on_nan
from tools.ranking import split_scores as _split_scores

Images: TypeAlias = "Sequence[ArrayLike] | np.ndarray"

# Binary searches run over this many keys at a time so index arrays stay small (32 MiB).
_CHUNK = CHUNK


@dataclass(frozen=True)
class _Pixels:
    """Pooled pixel scores split by ground truth, both sorted ascending."""

    pos: np.ndarray
    neg: np.ndarray
    # Per anomalous pixel (aligned with pos): 1 / (number of regions * size of its region), so that
    # summing it over the pixels above a threshold gives the per-region overlap directly.
    weight: np.ndarray | None


# ---------------------------------------------------------------------------------------------------
# Input handling


def _as_image_list(images: Images) -> list[ArrayLike]:
    """A list of per-image arrays from a list, a stacked (N, H, W) array or a single (H, W) array."""
    if isinstance(images, (list, tuple)):
        return list(images)
    if hasattr(images, "__array__"):
        a = np.asarray(images)
        return [a] if a.ndim == 2 else list(a)
    return list(images)


def _join(parts: list[np.ndarray], dtype: np.dtype) -> np.ndarray:
    """Concatenate without the extra copy when there is one part (a fresh boolean-index result)."""
    if not parts:
        return np.empty(0, dtype=dtype)
    return parts[0] if len(parts) == 1 else np.concatenate(parts)


def _collect(masks: Images, maps: Images, regions: bool) -> _Pixels:
    """Pool the pixels of all images; with ``regions`` also weight each anomalous pixel for PRO."""
    mask_list, map_list = _as_image_list(masks), _as_image_list(maps)
    if len(mask_list) != len(map_list):
        raise ValueError(f"{len(mask_list)} masks but {len(map_list)} maps")
    map_arrays = [_as_scores(m) for m in map_list]
    # One common dtype, otherwise searchsorted would silently copy the big sorted array.
    dtype = np.result_type(*map_arrays) if map_arrays else np.dtype(np.float64)
    pos_parts: list[np.ndarray] = []
    neg_parts: list[np.ndarray] = []
    id_parts: list[np.ndarray] = []
    n_regions = 0
    for mask_like, amap in zip(mask_list, map_arrays, strict=True):
        mask = _as_labels(mask_like)
        if mask.shape != amap.shape:
            raise ValueError(f"mask shape {mask.shape} differs from map shape {amap.shape}")
        amap = amap.astype(dtype, copy=False)
        pos_parts.append(amap[mask])
        neg_parts.append(amap[~mask])
        if regions:
            # 8-connectivity in 2-D (a full 3x3 structure), as in the MVTec AD evaluation code.
            lab, count = ndimage.label(mask, structure=np.ones((3,) * mask.ndim, dtype=bool))
            id_parts.append(lab[mask].astype(np.int64) + (n_regions - 1))
            n_regions += count
    pos, neg = _join(pos_parts, dtype), _join(neg_parts, dtype)
    neg.sort()
    weight = None
    if regions:
        ids = _join(id_parts, np.dtype(np.int64))
        sizes = np.bincount(ids, minlength=n_regions).astype(np.float64)
        weight = 1.0 / (n_regions * sizes[ids]) if ids.size else np.empty(0)
        order = np.argsort(pos)  # not stable: tied pixels may go in any order
        pos, weight = pos[order], weight[order]
    else:
        pos.sort()
    _raise_on_nan(pos, neg)
    return _Pixels(pos=pos, neg=neg, weight=weight)


# ---------------------------------------------------------------------------------------------------
# Cores on sorted scores


def _auroc_sorted(pos: np.ndarray, neg: np.ndarray) -> float:
    """Mann-Whitney AUROC (the one of `tools.ranking`, shared with the MLLM's training check)."""
    return auroc_sorted(pos, neg, _CHUNK)


def _f1_max_sorted(pos: np.ndarray, neg: np.ndarray) -> tuple[float, float]:
    """Best F1 over all thresholds; only the distinct anomalous scores can be optimal.

    Between two consecutive anomalous scores, lowering the threshold adds false positives and no
    true positives, so the best threshold is always one of the anomalous scores.
    """
    if pos.size == 0:
        return math.nan, math.nan
    first = np.flatnonzero(np.concatenate(([True], pos[1:] != pos[:-1])))
    thresholds = pos[first]
    tp = pos.size - first
    fp = neg.size - np.searchsorted(neg, thresholds, "left")
    f1 = 2.0 * tp / (tp + fp + pos.size)  # 2 TP / (2 TP + FP + FN)
    best = int(np.argmax(f1))  # the lowest threshold among equal maxima
    return float(f1[best]), float(thresholds[best])


def _trapezoid_until(x: np.ndarray, y: np.ndarray, limit: float) -> float:
    """Trapezoid area of a curve with non-decreasing x, cut at x = limit by linear interpolation."""
    i = int(np.searchsorted(x, limit, "right"))  # points with x <= limit
    area = float(np.sum(np.diff(x[:i]) * (y[1:i] + y[: i - 1])) / 2.0) if i > 1 else 0.0
    if 0 < i < x.size and x[i] > x[i - 1]:
        y_lim = y[i - 1] + (y[i] - y[i - 1]) * (limit - x[i - 1]) / (x[i] - x[i - 1])
        area += (limit - x[i - 1]) * (y[i - 1] + y_lim) / 2.0
    return area


def _aupro_sorted(px: _Pixels, fpr_limit: float, num_thresholds: int | None) -> float:
    """Normalized area under the PRO-vs-FPR curve up to ``fpr_limit`` (see ``pixel_aupro``)."""
    pos, neg, w = px.pos, px.neg, px.weight
    assert w is not None
    if pos.size == 0 or neg.size == 0:
        return math.nan
    n = neg.size
    m = min(n, max(1, math.ceil(fpr_limit * n)))  # top normal pixels needed to reach the limit
    if num_thresholds is not None:
        return _aupro_grid(px, fpr_limit, num_thresholds, m)
    v = neg[n - m]  # the threshold whose curve segment crosses FPR = fpr_limit

    # The exact curve has a point at every distinct score. Only steps in FPR add area: for each
    # distinct normal score u, FPR rises from F(> u) to F(>= u) while PRO rises from PRO(> u) to
    # PRO(>= u), a trapezoid of width c_u / n (c_u normal pixels equal to u). Spreading that width
    # over the c_u pixels, the area of all steps above v is
    #   sum_{normal e above v} (PRO(> s_e) + PRO(>= s_e)) / (2 n)
    #   = sum_{anomalous p above v} w_p * (#{e above v: s_e < s_p} + #{e above v: s_e <= s_p}) / (2 n),
    # which is a weighted Mann-Whitney count: one binary search per anomalous pixel.
    le_v = int(np.searchsorted(neg, v, "right"))  # normal pixels <= v
    lt_v = int(np.searchsorted(neg, v, "left"))  # normal pixels < v
    k_gt = int(np.searchsorted(pos, v, "right"))  # anomalous pixels above v start here
    k_ge = int(np.searchsorted(pos, v, "left"))
    full = 0.0
    for i in range(k_gt, pos.size, _CHUNK):
        keys = pos[i : i + _CHUNK]
        counts = np.searchsorted(neg, keys, "left") + np.searchsorted(neg, keys, "right") - 2 * le_v
        full += float(w[i : i + _CHUNK] @ counts)
    full /= 2.0 * n
    # The step at v itself, cut at fpr_limit with linear interpolation as in the MVTec AD code.
    f_prev, f_at = (n - le_v) / n, (n - lt_v) / n
    pro_gt, pro_ge = min(float(w[k_gt:].sum()), 1.0), min(float(w[k_ge:].sum()), 1.0)
    width = min(max(fpr_limit - f_prev, 0.0), f_at - f_prev)
    y_lim = pro_gt + (pro_ge - pro_gt) * width / (f_at - f_prev)
    return (full + width * (pro_gt + y_lim) / 2.0) / fpr_limit


def _aupro_grid(px: _Pixels, fpr_limit: float, num_thresholds: int, m: int) -> float:
    """AUPRO on thresholds spaced evenly in FPR (normal-score quantiles) instead of all scores.

    Straight lines replace the curve between grid points, so the error is at most half the grid
    spacing in normalized units: about 1 / (2 * num_thresholds), unless one tied normal score
    covers more than a grid step. Exists to compare with grid-based implementations; it is not
    faster than the exact path, whose cost is the sort both share.
    """
    pos, neg, w = px.pos, px.neg, px.weight
    assert w is not None
    n = neg.size
    ranks = np.unique(np.ceil(np.linspace(m / num_thresholds, m, num_thresholds)).astype(np.int64))
    thresholds = neg[n - ranks]  # descending, the last one is the crossing threshold
    suffix = np.concatenate((np.cumsum(w[::-1])[::-1], [0.0]))  # PRO of pos[i:]
    fpr = (n - np.searchsorted(neg, thresholds, "left")) / n
    pro = suffix[np.searchsorted(pos, thresholds, "left")]
    pro_at_zero = suffix[np.searchsorted(pos, neg[-1], "right")]  # threshold just above all normals
    x = np.concatenate(([0.0], fpr))
    y = np.minimum(np.concatenate(([pro_at_zero], pro)), 1.0)
    return _trapezoid_until(x, y, fpr_limit) / fpr_limit


def _check_fpr_limit(fpr_limit: float) -> None:
    if not 0.0 < fpr_limit <= 1.0:
        raise ValueError(f"fpr_limit must be in (0, 1], got {fpr_limit}")


# ---------------------------------------------------------------------------------------------------
# Image-level metrics


def roc_curve(labels: ArrayLike, scores: ArrayLike) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """ROC points (fpr, tpr, thresholds) at every distinct score, highest threshold first.

    The first point is (0, 0) at threshold +inf. Rates are NaN when their class is absent.
    """
    y = _as_labels(labels).ravel()
    s = _as_scores(scores).ravel()
    if y.shape != s.shape:
        raise ValueError(f"{y.size} labels but {s.size} scores")
    if s.dtype.kind == "f" and np.isnan(s).any():
        raise ValueError("scores contain NaN")
    order = np.argsort(s, kind="stable")[::-1]
    s, y = s[order], y[order]
    last = np.flatnonzero(np.concatenate((s[1:] != s[:-1], [True])))  # last index of each value
    tps = np.cumsum(y, dtype=np.int64)[last]
    fps = last + 1 - tps
    n_pos, n_neg = int(y.sum()), int(y.size - y.sum())
    tpr = np.concatenate(([0], tps)) / n_pos if n_pos else np.full(last.size + 1, math.nan)
    fpr = np.concatenate(([0], fps)) / n_neg if n_neg else np.full(last.size + 1, math.nan)
    thresholds = np.concatenate(([np.inf], s[last].astype(np.float64)))
    return fpr, tpr, thresholds


def image_auroc(labels: ArrayLike, scores: ArrayLike) -> float:
    """Area under the ROC curve; ties count half. NaN when either class is missing."""
    return _auroc_sorted(*_split_scores(labels, scores))


def f1_max(labels: ArrayLike, scores: ArrayLike) -> tuple[float, float]:
    """(best F1, threshold reaching it) over all distinct thresholds, ``score >= threshold``.

    Among equal maxima the lowest threshold is returned. (NaN, NaN) without anomalous samples; with
    only anomalous samples F1 is 1 at the lowest score.
    """
    return _f1_max_sorted(*_split_scores(labels, scores))


image_f1_max = f1_max


def binary_scores_at(labels: ArrayLike, preds: ArrayLike) -> dict[str, float]:
    """Scores of hard decisions (True = defective), named as in MMAD and VisA-D&R.

    ``miss_rate`` is the share of anomalous samples called good (1 - recall); ``overkill_rate`` the
    share of normal samples called defective. Precision is 0 when nothing is called defective (as
    scikit-learn does, so a detector that never fires scores F1 = 0, not NaN); recall and miss rate
    are NaN without anomalous samples, overkill rate NaN without normal ones. Counts are included
    so callers can pool classes.
    """
    y = _as_labels(labels).ravel()
    p = _as_labels(preds).ravel()
    if y.shape != p.shape:
        raise ValueError(f"{y.size} labels but {p.size} predictions")
    tp = int(np.count_nonzero(y & p))
    fp = int(np.count_nonzero(~y & p))
    fn = int(np.count_nonzero(y & ~p))
    tn = int(y.size - tp - fp - fn)
    return {**rates_from_counts(tp, fp, fn, tn), "tp": tp, "fp": fp, "tn": tn, "fn": fn}


def rates_from_counts(tp: int, fp: int, fn: int, tn: int) -> dict[str, float]:
    """Accuracy, precision, recall, F1, miss and overkill rate of a confusion matrix, as
    `binary_scores_at` defines them. Plain Python (no numpy): the lmms-eval hooks written by
    `evals.export.lmms_eval` carry this function's own source, so both score alike."""
    n = tp + fp + fn + tn
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else math.nan
    if math.isnan(recall):
        f1 = math.nan
    else:
        f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {
        "accuracy": (tp + tn) / n if n else math.nan,
        "precision": precision,
        "recall": recall,
        "f1": f1,
        "miss_rate": fn / (tp + fn) if tp + fn else math.nan,
        "overkill_rate": fp / (fp + tn) if fp + tn else math.nan,
    }


def decision_scores(labels: ArrayLike, verdicts: Sequence[str], estimated_false_alarm_rate: float) -> dict[str, float]:
    """Scores of three-way decisions: `defective` counts as flagged, `good` and `review` as not.

    Adds to `binary_scores_at`: `false_alarm_rate` (measured on the good images, the same as
    `overkill_rate`), the `estimated_false_alarm_rate` the tool promised without labels,
    `balanced_accuracy` (mean of recall and specificity) and `review_rate` (share of all images sent
    to review).
    """
    v = list(verdicts)
    out = binary_scores_at(labels, np.array([x == "defective" for x in v], dtype=bool))
    out["false_alarm_rate"] = out["overkill_rate"]
    out["estimated_false_alarm_rate"] = float(estimated_false_alarm_rate)
    out["balanced_accuracy"] = (out["recall"] + (1.0 - out["overkill_rate"])) / 2.0
    out["review_rate"] = sum(x == "review" for x in v) / len(v) if v else math.nan
    return out


# ---------------------------------------------------------------------------------------------------
# Pixel-level metrics


def pixel_auroc(masks: Images, maps: Images) -> float:
    """AUROC over the pooled pixels of all images. NaN when no pixel (or every pixel) is anomalous."""
    px = _collect(masks, maps, regions=False)
    return _auroc_sorted(px.pos, px.neg)


def pixel_f1_max(masks: Images, maps: Images) -> tuple[float, float]:
    """(best F1, threshold) over the pooled pixels of all images; see ``f1_max``."""
    px = _collect(masks, maps, regions=False)
    return _f1_max_sorted(px.pos, px.neg)


def pixel_aupro(
    masks: Images, maps: Images, fpr_limit: float = 0.3, num_thresholds: int | None = None
) -> float:
    """Normalized area under the per-region-overlap curve up to ``fpr_limit`` (Bergmann et al. 2021).

    Regions are the 8-connected components of each ground-truth mask. At a threshold, PRO is the
    mean over all regions of all images of the share of the region's pixels scored anomalous, and
    FPR is the share of all normal pixels scored anomalous. The curve starts at (0, 0), is integrated
    with trapezoids up to FPR = ``fpr_limit`` (interpolated there) and divided by ``fpr_limit``, so a
    perfect map scores 1.0. With ``num_thresholds=None`` every distinct score is a threshold (exact);
    an integer uses that many thresholds spaced evenly in FPR (error about 1 / (2 * num_thresholds)).
    NaN when there is no anomalous region or no normal pixel.
    """
    _check_fpr_limit(fpr_limit)
    if num_thresholds is not None and num_thresholds < 1:
        raise ValueError(f"num_thresholds must be positive or None, got {num_thresholds}")
    return _aupro_sorted(_collect(masks, maps, regions=True), fpr_limit, num_thresholds)


def pixel_metrics(masks: Images, maps: Images, fpr_limit: float = 0.3) -> dict[str, float]:
    """Pixel AUROC, AUPRO and F1-max from one pass over the pixels (one sort instead of three)."""
    _check_fpr_limit(fpr_limit)
    px = _collect(masks, maps, regions=True)
    f1, threshold = _f1_max_sorted(px.pos, px.neg)
    return {
        "pixel_auroc": _auroc_sorted(px.pos, px.neg),
        "pixel_aupro": _aupro_sorted(px, fpr_limit, None),
        "pixel_f1_max": f1,
        "pixel_f1_threshold": threshold,
    }


def _mask_pairs(pred_masks: Images, gt_masks: Images) -> list[tuple[np.ndarray, np.ndarray]]:
    preds, gts = _as_image_list(pred_masks), _as_image_list(gt_masks)
    if len(preds) != len(gts):
        raise ValueError(f"{len(preds)} predicted masks but {len(gts)} ground-truth masks")
    pairs = [(_as_labels(p), _as_labels(g)) for p, g in zip(preds, gts, strict=True)]
    for p, g in pairs:
        if p.shape != g.shape:
            raise ValueError(f"predicted mask shape {p.shape} differs from ground truth {g.shape}")
    return pairs


def iou(pred_masks: Images, gt_masks: Images) -> float:
    """Intersection over union pooled over all pixels of the set (not a mean of per-image IoUs).

    Pooling weights images by their defect area, and normal images count only through false
    positives. NaN when both prediction and ground truth are empty everywhere.
    """
    inter = union = 0
    for p, g in _mask_pairs(pred_masks, gt_masks):
        inter += int(np.count_nonzero(p & g))
        union += int(np.count_nonzero(p | g))
    return inter / union if union else math.nan


def per_image_iou(pred_masks: Images, gt_masks: Images) -> np.ndarray:
    """IoU of each image; NaN where prediction and ground truth are both empty."""
    out = []
    for p, g in _mask_pairs(pred_masks, gt_masks):
        union = int(np.count_nonzero(p | g))
        out.append(np.count_nonzero(p & g) / union if union else math.nan)
    return np.asarray(out, dtype=np.float64)
