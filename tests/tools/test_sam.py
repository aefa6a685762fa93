"""SAM tool with a tiny random SamModel: prompts -> masks, keep-the-region rules, automatic masks, cache."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from tools.sam import SamTool, decide_region, mask_iou, mask_nms


def _box(h, w, y0, y1, x0, x1):
    m = np.zeros((h, w), bool)
    m[y0:y1, x0:x1] = True
    return m


def test_decide_region_rules():
    region = _box(100, 100, 10, 20, 10, 20)  # 100 px
    ok, reason, iou, ratio = decide_region(region, _box(100, 100, 9, 21, 9, 21))
    assert ok and ratio == pytest.approx(1.44) and iou == pytest.approx(100 / 144)
    assert decide_region(region, np.zeros_like(region))[1] == "SAM returned an empty mask"
    assert not decide_region(region, _box(100, 100, 14, 16, 14, 16))[0]  # 0.04x the area
    assert "area" in decide_region(region, _box(100, 100, 0, 30, 0, 30))[1]  # 9x
    assert "covers" in decide_region(region, _box(100, 100, 0, 100, 0, 80))[1]  # most of the image
    far = _box(100, 100, 60, 70, 60, 70)
    assert "IoU" in decide_region(region, far)[1]


def test_mask_nms_and_iou():
    a = _box(20, 20, 0, 10, 0, 10)
    b = _box(20, 20, 0, 10, 0, 9)  # nearly a
    c = _box(20, 20, 12, 20, 12, 20)
    assert mask_iou(a, b) == pytest.approx(0.9)
    keep = mask_nms(np.stack([a, b, c]), np.array([0.5, 0.9, 0.7]), 0.7)
    assert keep == [1, 2]
    assert mask_nms(np.zeros((0, 4, 4), bool), np.zeros(0)) == []


@pytest.fixture(scope="module")
def sam_parts():
    pytest.importorskip("transformers")
    from tests.tools.clip.tiny import tiny_sam

    return tiny_sam()


@pytest.fixture
def image():
    rng = np.random.default_rng(0)
    return Image.fromarray(rng.integers(0, 255, (50, 70, 3), dtype=np.uint8))


def test_prompts_to_masks_and_cache(sam_parts, image):
    tool = SamTool(sam_model=sam_parts[0], processor=sam_parts[1])
    masks, scores = tool.masks_from_boxes(image, [(5, 5, 30, 20), (40, 10, 60, 40)], [(10, 10), (50, 20)])
    assert masks.shape == (2, 50, 70) and masks.dtype == bool and scores.shape == (2,)
    pmasks, pscores = tool.masks_from_points(
        image, [[(10, 10), (12, 12)], [(50, 20), (1, 1)]], [[1, 1], [1, 0]]
    )
    assert pmasks.shape == (2, 50, 70) and pscores.shape == (2,)
    empty, _ = tool.masks_from_boxes(image, [])
    assert empty.shape == (0, 50, 70)
    assert tool.embed_calls == 1  # one image, embedded once
    again, _ = tool.masks_from_boxes(image, [(5, 5, 30, 20)], [(10, 10)])
    np.testing.assert_array_equal(again[0], masks[0])  # deterministic
    tool.embed(image.transpose(Image.Transpose.FLIP_LEFT_RIGHT))
    assert tool.embed_calls == 2


def test_refine_keeps_regions_when_sam_disagrees(sam_parts, image):
    region_mask = _box(50, 70, 5, 15, 5, 20) | _box(50, 70, 30, 40, 40, 60)
    amap = np.random.default_rng(1).random((50, 70)).astype(np.float32)
    strict = SamTool(sam_model=sam_parts[0], processor=sam_parts[1], min_iou=1.01)
    out, decisions = strict.refine(image, region_mask, amap)
    np.testing.assert_array_equal(out, region_mask)
    assert [d.kept for d in decisions] == ["original", "original"]
    assert decisions[0].bbox == (5, 5, 20, 15)
    lax = SamTool(
        sam_model=sam_parts[0],
        processor=sam_parts[1],
        min_iou=0,
        min_area_ratio=0,
        max_area_ratio=1e9,
        max_image_fraction=1,
    )
    out, decisions = lax.refine(image, region_mask, amap)
    assert all(d.kept == "sam" for d in decisions)
    expected = np.zeros_like(region_mask)
    for d in decisions:
        expected |= d.mask
    np.testing.assert_array_equal(out, expected)
    assert lax.refine(image, np.zeros((50, 70), bool))[1] == []
    with pytest.raises(ValueError, match="differs"):
        lax.refine(image, np.zeros((10, 10), bool))


def test_automatic_masks_deduplicated(sam_parts, image):
    tool = SamTool(sam_model=sam_parts[0], processor=sam_parts[1])
    found = tool.automatic_masks(
        image, points_per_side=6, min_score=-1e9, min_stability=0.0, nms_iou=0.5, points_per_batch=10
    )
    assert found, "random SAM still returns some mask"
    for f in found:
        assert f["mask"].shape == (50, 70) and f["mask"].dtype == bool and f["area"] == f["mask"].sum()
        x0, y0, x1, y1 = f["bbox"]
        assert f["mask"][y0:y1, x0:x1].sum() == f["area"]
    for i in range(len(found)):
        for j in range(i + 1, len(found)):
            assert mask_iou(found[i]["mask"], found[j]["mask"]) <= 0.5 + 0.05  # NMS on a downsampled copy
    assert [f["score"] for f in found] == sorted((f["score"] for f in found), reverse=True)
    assert tool.automatic_masks(image, points_per_side=2, min_score=1e9) == []
