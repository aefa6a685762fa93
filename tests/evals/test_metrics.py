"""Each metric against a slow, obviously correct reference or a hand-computed value."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import ndimage

from evals import metrics
from evals.metrics import (
    binary_scores_at,
    f1_max,
    image_auroc,
    image_f1_max,
    iou,
    per_image_iou,
    pixel_aupro,
    pixel_auroc,
    pixel_f1_max,
    pixel_metrics,
    roc_curve,
)

# ---------------------------------------------------------------------------------------------------
# Slow references


def _pairwise_auroc(labels: np.ndarray, scores: np.ndarray) -> float:
    """Mann-Whitney counted over all pairs: P(s_pos > s_neg) + P(tie) / 2."""
    pos, neg = scores[labels.astype(bool)], scores[~labels.astype(bool)]
    diff = pos[:, None] - neg[None, :]
    return float(np.mean(diff > 0) + 0.5 * np.mean(diff == 0))


def _sweep_f1(labels: np.ndarray, scores: np.ndarray) -> float:
    y = labels.astype(bool)
    best = 0.0
    for t in np.concatenate((np.unique(scores), [np.inf])):
        p = scores >= t
        tp, fp, fn = np.sum(p & y), np.sum(p & ~y), np.sum(~p & y)
        best = max(best, 2 * tp / (2 * tp + fp + fn))
    return best


def _slow_aupro(masks: list[np.ndarray], maps: list[np.ndarray], limit: float) -> float:
    """Loop over every distinct threshold and every region, then trapezoids up to the limit."""
    regions = []
    for mask, amap in zip(masks, maps, strict=True):
        lab, count = ndimage.label(mask, structure=np.ones((3, 3)))
        regions += [amap[lab == r] for r in range(1, count + 1)]
    normals = np.concatenate([amap[~mask] for mask, amap in zip(masks, maps, strict=True)])
    thresholds = np.unique(np.concatenate([amap.ravel() for amap in maps]))[::-1]
    xs, ys = [0.0], [0.0]
    for t in thresholds:
        xs.append(float(np.mean(normals >= t)))
        ys.append(float(np.mean([np.mean(r >= t) for r in regions])))
    xs.append(1.0)
    ys.append(1.0)
    area = 0.0
    for x0, x1, y0, y1 in zip(xs[:-1], xs[1:], ys[:-1], ys[1:], strict=True):
        if x1 <= limit:
            area += (x1 - x0) * (y0 + y1) / 2
        else:
            if x0 < limit:
                y_lim = y0 + (y1 - y0) * (limit - x0) / (x1 - x0)
                area += (limit - x0) * (y0 + y_lim) / 2
            break
    return area / limit


# ---------------------------------------------------------------------------------------------------
# Fixtures


def _small_set(seed: int) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Four images of different sizes, 0-3 regions each (one diagonal), coarse scores with ties."""
    rng = np.random.default_rng(seed)
    shapes = [(12, 15), (10, 10), (8, 20), (10, 10)]
    masks = [np.zeros(s, dtype=bool) for s in shapes]
    masks[0][2:5, 3:7] = True
    masks[0][8:11, 10:12] = True
    masks[0][np.arange(5, 8), np.arange(0, 3)] = True  # diagonal line: one 8-connected region
    masks[1][4:6, 4:6] = True
    masks[2][1:3, 2:4] = True
    masks[2][5:8, 14:19] = True
    masks[2][0, 19] = True  # single-pixel region
    maps = [
        np.round(rng.random(m.shape) + 0.6 * m * rng.random(m.shape), 1).astype(np.float32) for m in masks
    ]
    return masks, maps


def _blob_set(seed: int, n: int = 12, size: int = 64) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Realistic-looking data: blob defects and smooth noisy maps with many distinct values."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size]
    masks, maps = [], []
    for i in range(n):
        mask = np.zeros((size, size), dtype=bool)
        for _ in range(i % 3):
            cy, cx, r = rng.integers(8, size - 8, 2).tolist() + [int(rng.integers(2, 7))]
            mask |= (yy - cy) ** 2 + (xx - cx) ** 2 <= r * r
        noisy = mask * rng.uniform(0.1, 0.4) + rng.normal(0, 1.0, mask.shape)
        maps.append(ndimage.gaussian_filter(noisy, 1.5).astype(np.float32))
        masks.append(mask)
    return masks, maps


# ---------------------------------------------------------------------------------------------------
# AUROC


def test_auroc_hand_example() -> None:
    assert image_auroc([0, 0, 1, 1], [0.1, 0.4, 0.35, 0.8]) == pytest.approx(0.75)


@pytest.mark.parametrize("seed", range(5))
def test_auroc_matches_pairwise_with_ties(seed: int) -> None:
    rng = np.random.default_rng(seed)
    labels = rng.random(300) < (0.1 + 0.2 * seed)
    scores = np.round(rng.random(300) + 0.3 * labels, 1)  # coarse: many ties across classes
    assert image_auroc(labels, scores) == pytest.approx(_pairwise_auroc(labels, scores), abs=1e-12)
    fpr, tpr, thr = roc_curve(labels, scores)
    assert thr[0] == np.inf and fpr[0] == 0 and tpr[0] == 0 and fpr[-1] == 1 and tpr[-1] == 1
    trapezoid = float(np.sum(np.diff(fpr) * (tpr[1:] + tpr[:-1]) / 2))
    assert trapezoid == pytest.approx(_pairwise_auroc(labels, scores), abs=1e-12)


def test_auroc_perfect_inverted_constant() -> None:
    labels = np.array([0, 0, 0, 1, 1])
    scores = np.array([0.1, 0.2, 0.3, 0.8, 0.9])
    assert image_auroc(labels, scores) == 1.0
    assert image_auroc(labels, -scores) == 0.0
    assert image_auroc(labels, np.ones(5)) == 0.5


def test_auroc_undefined_is_nan() -> None:
    assert math.isnan(image_auroc([1, 1, 1], [0.1, 0.2, 0.3]))
    assert math.isnan(image_auroc([0, 0], [0.1, 0.2]))
    assert math.isnan(image_auroc([], []))
    assert math.isnan(pixel_auroc([], []))
    assert math.isnan(pixel_auroc([np.zeros((3, 3), bool)], [np.ones((3, 3))]))


def test_nan_scores_and_bad_shapes_raise() -> None:
    with pytest.raises(ValueError, match="NaN"):
        image_auroc([0, 1], [0.5, np.nan])
    with pytest.raises(ValueError):
        image_auroc([0, 1, 1], [0.5, 0.2])
    with pytest.raises(ValueError):
        pixel_auroc([np.zeros((3, 3), bool)], [np.zeros((3, 4))])


def test_pixel_auroc_pools_images_of_different_sizes() -> None:
    masks, maps = _small_set(0)
    flat_labels = np.concatenate([m.ravel() for m in masks])
    flat_scores = np.concatenate([a.ravel() for a in maps])
    expected = _pairwise_auroc(flat_labels, flat_scores)
    assert pixel_auroc(masks, maps) == pytest.approx(expected, abs=1e-12)
    # A stacked array and a single 2-D array are accepted too.
    stacked_masks, stacked_maps = np.stack([masks[1], masks[3]]), np.stack([maps[1], maps[3]])
    lab = np.concatenate([masks[1].ravel(), masks[3].ravel()])
    sco = np.concatenate([maps[1].ravel(), maps[3].ravel()])
    assert pixel_auroc(stacked_masks, stacked_maps) == pytest.approx(_pairwise_auroc(lab, sco), abs=1e-12)
    assert pixel_auroc(masks[0], maps[0]) == pytest.approx(image_auroc(masks[0], maps[0]), abs=1e-12)


def test_chunked_searches_match(monkeypatch: pytest.MonkeyPatch) -> None:
    masks, maps = _small_set(1)
    whole = pixel_metrics(masks, maps)
    monkeypatch.setattr(metrics, "_CHUNK", 7)
    chunked = pixel_metrics(masks, maps)
    for key, value in whole.items():
        assert chunked[key] == pytest.approx(value, abs=1e-12)


# ---------------------------------------------------------------------------------------------------
# F1-max


@pytest.mark.parametrize("seed", range(5))
def test_f1_max_matches_threshold_sweep(seed: int) -> None:
    rng = np.random.default_rng(seed)
    labels = rng.random(200) < 0.3
    scores = np.round(rng.random(200) + 0.4 * labels, 2)
    best, threshold = f1_max(labels, scores)
    assert best == pytest.approx(_sweep_f1(labels, scores), abs=1e-12)
    p = scores >= threshold
    tp, fp, fn = np.sum(p & labels), np.sum(p & ~labels), np.sum(~p & labels)
    assert 2 * tp / (2 * tp + fp + fn) == pytest.approx(best, abs=1e-12)
    assert image_f1_max is f1_max


def test_f1_max_edges() -> None:
    assert f1_max([0, 0, 1, 1], [0.1, 0.2, 0.8, 0.9]) == (1.0, 0.8)
    assert f1_max([1, 1], [0.3, 0.5]) == (1.0, 0.3)
    best, threshold = f1_max([0, 0], [0.3, 0.5])
    assert math.isnan(best) and math.isnan(threshold)
    assert all(math.isnan(v) for v in pixel_f1_max([], []))


def test_pixel_f1_max_on_pooled_pixels() -> None:
    masks, maps = _small_set(2)
    flat_labels = np.concatenate([m.ravel() for m in masks])
    flat_scores = np.concatenate([a.ravel() for a in maps])
    assert pixel_f1_max(masks, maps) == f1_max(flat_labels, flat_scores)
    assert pixel_f1_max(masks, maps)[0] == pytest.approx(_sweep_f1(flat_labels, flat_scores), abs=1e-12)


# ---------------------------------------------------------------------------------------------------
# AUPRO


@pytest.mark.parametrize("seed", range(3))
@pytest.mark.parametrize("limit", [0.3, 0.05, 0.5, 1.0])
def test_aupro_matches_slow_loop(seed: int, limit: float) -> None:
    masks, maps = _small_set(seed)
    expected = _slow_aupro(masks, maps, limit)
    assert pixel_aupro(masks, maps, fpr_limit=limit) == pytest.approx(expected, abs=1e-9)


def test_aupro_limit_exactly_on_a_curve_point() -> None:
    masks, maps = _small_set(4)
    normals = np.sort(np.concatenate([a[~m] for m, a in zip(masks, maps, strict=True)]))[::-1]
    for rank in (3, 10, 57):  # FPR of a threshold equal to the rank-th highest normal score
        limit = float(np.mean(normals >= normals[rank - 1]))
        expected = _slow_aupro(masks, maps, limit)
        assert pixel_aupro(masks, maps, fpr_limit=limit) == pytest.approx(expected, abs=1e-9)


def test_aupro_matches_slow_loop_on_distinct_scores() -> None:
    masks, maps = _blob_set(3, n=4, size=24)
    expected = _slow_aupro(masks, maps, 0.3)
    assert pixel_aupro(masks, maps) == pytest.approx(expected, abs=1e-9)


def test_aupro_hand_example_uses_8_connectivity() -> None:
    mask = np.zeros((4, 4), dtype=bool)
    mask[0, 0] = mask[1, 1] = True  # diagonal neighbours: one region of two pixels
    mask[0, 3] = True  # a second region
    amap = np.zeros((4, 4))
    amap[0, 0] = amap[0, 3] = 1.0
    # Curve (0, 0) -> (0, 0.75) -> (1, 1): PRO at threshold 1 is mean(1/2, 1/1).
    assert pixel_aupro([mask], [amap], fpr_limit=1.0) == pytest.approx(0.875)
    assert pixel_aupro([mask], [amap], fpr_limit=0.3) == pytest.approx(0.3 * (0.75 + 0.825) / 2 / 0.3)


def test_aupro_perfect_inverted_and_undefined() -> None:
    masks, _ = _small_set(0)
    perfect = [m.astype(np.float32) for m in masks]
    assert pixel_aupro(masks, perfect) == pytest.approx(1.0)
    assert pixel_aupro(masks, [-p for p in perfect]) == pytest.approx(0.0)
    assert math.isnan(pixel_aupro([np.zeros((5, 5), bool)], [np.random.default_rng(0).random((5, 5))]))
    assert math.isnan(pixel_aupro([np.ones((5, 5), bool)], [np.zeros((5, 5))]))
    assert math.isnan(pixel_aupro([], []))
    with pytest.raises(ValueError):
        pixel_aupro(masks, perfect, fpr_limit=0.0)


def test_aupro_grid_close_to_exact() -> None:
    masks, maps = _blob_set(7)
    exact = pixel_aupro(masks, maps)
    assert 0.2 < exact < 0.99  # a realistic, non-trivial value
    assert pixel_aupro(masks, maps, num_thresholds=1000) == pytest.approx(exact, abs=1e-3)
    assert pixel_aupro(masks, maps, num_thresholds=50) == pytest.approx(exact, abs=1 / 100)


def test_pixel_metrics_equals_single_metrics() -> None:
    masks, maps = _blob_set(5, n=6, size=32)
    combined = pixel_metrics(masks, maps)
    assert combined["pixel_auroc"] == pixel_auroc(masks, maps)
    assert combined["pixel_aupro"] == pytest.approx(pixel_aupro(masks, maps), abs=1e-12)
    assert (combined["pixel_f1_max"], combined["pixel_f1_threshold"]) == pixel_f1_max(masks, maps)


# ---------------------------------------------------------------------------------------------------
# Hard decisions


def test_iou_hand_example() -> None:
    preds = [np.array([[1, 1], [0, 0]]), np.zeros((2, 2)), np.ones((2, 2))]
    gts = [np.array([[1, 0], [1, 0]]), np.zeros((2, 2)), np.zeros((2, 2))]
    assert iou(preds, gts) == pytest.approx(1 / 7)  # intersection 1, union 3 + 0 + 4
    per = per_image_iou(preds, gts)
    assert per[0] == pytest.approx(1 / 3) and math.isnan(per[1]) and per[2] == 0.0
    assert math.isnan(iou([], []))
    assert math.isnan(iou([np.zeros((2, 2))], [np.zeros((2, 2))]))


def test_binary_scores_hand_example() -> None:
    s = binary_scores_at([1, 1, 1, 0, 0, 0, 0], [1, 0, 1, 1, 0, 0, 0])
    assert (s["tp"], s["fn"], s["fp"], s["tn"]) == (2, 1, 1, 3)
    assert s["accuracy"] == pytest.approx(5 / 7)
    assert s["precision"] == pytest.approx(2 / 3)
    assert s["recall"] == pytest.approx(2 / 3)
    assert s["f1"] == pytest.approx(2 / 3)
    assert s["miss_rate"] == pytest.approx(1 / 3)
    assert s["overkill_rate"] == pytest.approx(1 / 4)


def test_binary_scores_edges() -> None:
    never = binary_scores_at([1, 0, 0], [0, 0, 0])
    assert never["precision"] == 0.0 and never["f1"] == 0.0 and never["miss_rate"] == 1.0
    no_defects = binary_scores_at([0, 0], [0, 1])
    assert math.isnan(no_defects["recall"]) and no_defects["overkill_rate"] == 0.5
