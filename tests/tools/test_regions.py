"""Region measurement on hand-made maps: every number checked against what the drawing implies."""

from __future__ import annotations

import math

import numpy as np
import pytest

from tools.regions import (
    classify_shape,
    location_words,
    mask_from_map,
    measure_regions,
    to_grey,
)


def _line_map() -> np.ndarray:
    """A 100x100 map with one horizontal line, 1 px thick, x 5..34 at y 10 (upper-left)."""
    amap = np.zeros((100, 100), dtype=np.float32)
    amap[10, 5:35] = 0.9
    return amap


def test_horizontal_line_is_elongated_upper_left_with_exact_bbox():
    amap = _line_map()
    (r,) = measure_regions(amap, amap > 0.5)
    assert r.bbox == (5, 10, 35, 11)
    assert r.area_px == 30
    assert r.area_fraction == pytest.approx(30 / 10_000)
    assert r.centroid == pytest.approx((19.5, 10.0))
    assert r.elongation == pytest.approx(30.0)  # pixels as unit squares: length / width
    assert r.shape == "elongated"
    assert r.location == "upper-left"
    assert r.mean_score == pytest.approx(0.9)
    assert r.max_score == pytest.approx(0.9)
    assert r.intensity_contrast == 0.0  # no image given


def test_diagonal_line_stays_one_elongated_region():
    amap = np.zeros((50, 50), dtype=np.float32)
    idx = np.arange(5, 45)
    amap[idx, idx] = 1.0  # touches only at corners: 8-connectivity keeps it whole
    regions = measure_regions(amap, amap > 0.5)
    assert len(regions) == 1
    assert regions[0].shape == "elongated"
    assert regions[0].elongation > 10
    assert regions[0].location == "center"


def test_square_blob_is_compact_and_round():
    amap = np.zeros((100, 100), dtype=np.float32)
    amap[70:80, 40:50] = 0.8
    (r,) = measure_regions(amap, amap > 0.5)
    assert r.bbox == (40, 70, 50, 80)
    assert r.area_px == 100
    assert r.elongation == pytest.approx(1.0)
    assert r.shape == "compact"
    assert r.location == "bottom"  # centroid (44.5, 74.5): middle column, lower third


def test_large_blob_is_diffuse():
    amap = np.zeros((100, 100), dtype=np.float32)
    amap[20:60, 30:70] = 0.7  # 16% of the image, square
    (r,) = measure_regions(amap, amap > 0.5)
    assert r.shape == "diffuse"
    assert r.area_fraction == pytest.approx(0.16)


def test_single_pixel_has_elongation_one():
    amap = np.zeros((20, 20), dtype=np.float32)
    amap[3, 17] = 1.0
    (r,) = measure_regions(amap, amap > 0.5)
    assert r.elongation == pytest.approx(1.0)
    assert r.bbox == (17, 3, 18, 4)
    assert r.location == "upper-right"


def test_regions_sorted_by_max_score_and_scores_measured_inside():
    amap = np.zeros((100, 100), dtype=np.float32)
    amap[80:90, 80:90] = 0.6  # large, weaker
    amap[5:8, 5:8] = 0.7
    amap[6, 6] = 0.95  # small, strongest peak
    regions = measure_regions(amap, amap > 0.5)
    assert [r.location for r in regions] == ["upper-left", "lower-right"]
    assert regions[0].max_score == pytest.approx(0.95)
    assert regions[0].mean_score == pytest.approx((8 * 0.7 + 0.95) / 9)
    assert regions[1].max_score == pytest.approx(0.6)
    assert regions[1].area_px == 100


def test_max_regions_keeps_the_most_suspicious():
    amap = np.zeros((60, 60), dtype=np.float32)
    for i in range(5):
        amap[5 + 10 * i, 5:10] = 0.6 + 0.05 * i
    regions = measure_regions(amap, amap > 0.5, max_regions=2)
    assert [r.bbox[1] for r in regions] == [45, 35]


def test_darker_region_has_negative_contrast_and_brighter_positive():
    amap = np.zeros((80, 80), dtype=np.float32)
    amap[10:20, 10:20] = 1.0
    amap[50:60, 50:60] = 1.0
    image = np.full((80, 80, 3), 200, dtype=np.uint8)
    image[10:20, 10:20] = 40  # dark spot
    image[50:60, 50:60] = 250  # bright spot
    regions = measure_regions(amap, amap > 0.5, image=image)
    by_loc = {r.location: r for r in regions}
    assert by_loc["upper-left"].intensity_contrast == pytest.approx((40 - 200) / 255, abs=1e-6)
    assert by_loc["lower-right"].intensity_contrast == pytest.approx((250 - 200) / 255, abs=1e-6)


def test_contrast_accepts_grey_float_image():
    amap = np.zeros((40, 40), dtype=np.float32)
    amap[18:22, 18:22] = 1.0
    image = np.full((40, 40), 0.5, dtype=np.float32)
    image[18:22, 18:22] = 0.1
    (r,) = measure_regions(amap, amap > 0.5, image=image)
    assert r.intensity_contrast == pytest.approx(-0.4, abs=1e-6)


def test_ring_ignores_neighbouring_defects():
    amap = np.zeros((60, 60), dtype=np.float32)
    amap[20:30, 20:30] = 1.0
    amap[20:30, 32:40] = 0.9  # a second region 2 px away, inside the first one's ring
    image = np.full((60, 60), 100, dtype=np.uint8)
    image[20:30, 20:30] = 50
    image[20:30, 32:40] = 0  # would drag the ring mean down if counted
    first = measure_regions(amap, amap > 0.5, image=image)[0]
    assert first.bbox == (20, 20, 30, 30)
    assert first.intensity_contrast == pytest.approx((50 - 100) / 255, abs=1e-6)


def test_mask_from_map_drops_small_components_and_nonfinite():
    amap = np.zeros((100, 100), dtype=np.float32)
    amap[10:20, 10:20] = 0.9  # 100 px = 1%: kept
    amap[50, 50] = 0.9  # 1 px = 0.01%: dropped at the default 0.05%
    amap[70:72, 70:72] = 0.9  # 4 px = 0.04%: dropped
    amap[90, 90] = np.nan
    mask = mask_from_map(amap, 0.5)
    assert mask.dtype == bool
    assert mask.sum() == 100
    assert mask[10:20, 10:20].all()
    assert not mask[50, 50] and not mask[70, 70] and not mask[90, 90]
    loose = mask_from_map(amap, 0.5, min_area_fraction=0.0)
    assert loose.sum() == 105


def test_mask_threshold_is_strict():
    amap = np.full((10, 10), 0.5, dtype=np.float32)
    assert not mask_from_map(amap, 0.5, 0.0).any()


def test_empty_mask_gives_no_regions():
    amap = np.zeros((30, 30), dtype=np.float32)
    assert measure_regions(amap, amap > 0.5) == []
    assert measure_regions(amap, np.zeros((30, 30), dtype=bool), image=np.zeros((30, 30), np.uint8)) == []


def test_shape_mismatch_is_an_error():
    amap = np.zeros((30, 30), dtype=np.float32)
    with pytest.raises(ValueError, match="pred_mask shape"):
        measure_regions(amap, np.zeros((30, 31), dtype=bool))
    with pytest.raises(ValueError, match="image size"):
        measure_regions(amap, amap > 0.5, image=np.zeros((31, 30), np.uint8))


@pytest.mark.parametrize(
    ("cx", "cy", "word"),
    [
        (0, 0, "upper-left"),
        (50, 0, "top"),
        (99, 0, "upper-right"),
        (0, 50, "left"),
        (50, 50, "center"),
        (99, 50, "right"),
        (0, 99, "lower-left"),
        (50, 99, "bottom"),
        (99, 99, "lower-right"),
        (32.5, 50, "left"),  # (32.5 + 0.5) / 100 < 1/3
        (33.0, 50, "center"),
    ],
)
def test_location_words_grid(cx, cy, word):
    assert location_words(cx, cy, 100, 100) == word


def test_classify_shape_thresholds():
    assert classify_shape(2.0, 0.5) == "elongated"
    assert classify_shape(1.9, 0.05) == "diffuse"
    assert classify_shape(1.9, 0.049) == "compact"


def test_to_grey_scales_dtypes():
    assert to_grey(np.array([[255]], np.uint8))[0, 0] == pytest.approx(1.0)
    assert to_grey(np.array([[65535]], np.uint16))[0, 0] == pytest.approx(1.0)
    assert to_grey(np.array([[127.5]], np.float32))[0, 0] == pytest.approx(0.5)
    rgb = np.zeros((1, 1, 3), np.uint8)
    rgb[0, 0] = (255, 0, 0)
    assert to_grey(rgb)[0, 0] == pytest.approx(0.299)


def test_many_components_on_a_large_map_are_fast():
    import time

    rng = np.random.default_rng(0)
    amap = rng.random((1000, 1000)).astype(np.float32)
    mask = amap > 0.8  # tens of thousands of components
    start = time.perf_counter()
    regions = measure_regions(amap, mask, image=(amap * 255).astype(np.uint8))
    elapsed = time.perf_counter() - start
    assert len(regions) == 10
    assert all(regions[i].max_score >= regions[i + 1].max_score for i in range(9))
    assert elapsed < 3.0, f"measure_regions took {elapsed:.2f} s"
    assert math.isfinite(regions[0].elongation)
