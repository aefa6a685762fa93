"""Overlays and map/mask PNG files on synthetic arrays."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from tools.image_io import load_mask
from tools.overlay import (
    GT_COLOR,
    HEAT_ALPHA,
    PRED_COLOR,
    heat_colormap,
    jet_colormap,
    load_map_png,
    render_overlay,
    save_map_png,
    save_mask_png,
)
from tools.record import Region
from tools.regions import measure_regions


def _square_mask(h: int = 40, w: int = 60) -> np.ndarray:
    mask = np.zeros((h, w), dtype=bool)
    mask[10:30, 20:40] = True
    return mask


def test_jet_endpoints_and_middle():
    cmap = jet_colormap(np.array([0.0, 0.5, 1.0, 2.0, np.nan]))
    assert cmap.shape == (5, 3)
    np.testing.assert_allclose(cmap[0], [0.0, 0.0, 0.5])  # dark blue
    np.testing.assert_allclose(cmap[1], [0.5, 1.0, 0.5])  # green-ish
    np.testing.assert_allclose(cmap[2], [0.5, 0.0, 0.0])  # dark red
    np.testing.assert_allclose(cmap[3], cmap[2])  # clipped
    np.testing.assert_allclose(cmap[4], cmap[0])  # NaN as the minimum


def test_heat_colormap_is_perceptually_ordered():
    cmap = heat_colormap(np.linspace(0.0, 1.0, 50))
    luma = cmap @ np.array([0.299, 0.587, 0.114])
    assert (np.diff(luma) < 0).all()  # hotter is always darker: readable in grey and by colour-blind eyes
    assert cmap[0, 0] > 0.9 and cmap[0, 1] > 0.7  # starts yellow
    assert cmap[-1, 0] > 0.4 and cmap[-1, 1] < 0.05  # ends dark red
    np.testing.assert_allclose(heat_colormap(np.array([2.0, np.nan])), heat_colormap(np.array([1.0, 0.0])))


def test_heat_only_above_the_floor_and_translucent():
    image = np.full((40, 60, 3), 100, dtype=np.uint8)
    amap = np.zeros((40, 60), dtype=np.float32)
    amap[:, 20:40] = 0.45  # below the floor: untouched
    amap[:, 40:] = 1.0
    out = render_overlay(image, amap, None, floor=0.5)
    assert isinstance(out, Image.Image) and out.mode == "RGB" and out.size == (60, 40)
    arr = np.asarray(out).astype(int)
    assert (arr[:, :40] == 100).all()  # the image keeps its true colours below the floor
    top = np.rint((1 - HEAT_ALPHA[1]) * 100 + HEAT_ALPHA[1] * 255 * heat_colormap(np.array(1.0)))
    np.testing.assert_allclose(arr[5, 50], top, atol=1)
    assert arr[5, 50, 0] > arr[5, 50, 2]  # red, not the grey of the image, but the image still shows through
    assert arr[5, 50, 0] < 255 * 0.9


def test_numbered_outlines_legend_and_verdict():
    image = np.full((120, 160, 3), 90, dtype=np.uint8)
    amap = np.zeros((120, 160), dtype=np.float32)
    amap[20:40, 20:50] = 0.9
    amap[80:100, 110:140] = 0.7
    mask = amap > 0.5
    regions = measure_regions(amap, mask, image)
    assert [r.number for r in regions] == [1, 2]
    plain = np.asarray(render_overlay(image, amap, mask, floor=0.5))
    full = np.asarray(render_overlay(image, amap, mask, floor=0.5, boundary=0.5, regions=regions,
                                     verdict="defective", score=0.93, legend=True))
    outline = np.all(plain == PRED_COLOR, axis=2)
    assert outline[20, 20] and outline[80, 110] and not outline[30, 35]
    changed = np.any(full != plain, axis=2)
    # each number's tag sits just outside its region's box (upper-left), so the region stays visible
    assert changed[5:20, 0:20].any() and changed[65:80, 90:110].any()
    assert not changed[24:38, 24:48].any() and not changed[84:98, 114:138].any()
    # the legend with the verdict goes in a corner without heat or tags (the upper-right here)
    assert changed[0:20, 120:160].any()
    assert not changed[105:120, 0:60].any()


def test_tags_follow_region_numbers():
    image = np.zeros((100, 100, 3), dtype=np.uint8)
    mask = np.zeros((100, 100), bool)
    mask[30:60, 30:60] = True
    region = Region(bbox=(30, 30, 60, 60), area_px=900, area_fraction=0.09, centroid=(45.0, 45.0), elongation=1.0,
                    mean_score=0.9, max_score=0.9, intensity_contrast=0.0, location="center", number=7)
    a = np.asarray(render_overlay(image, np.zeros((100, 100)), mask, regions=[region]))
    region.number = 1
    b = np.asarray(render_overlay(image, np.zeros((100, 100)), mask, regions=[region]))
    assert (a != b).any()  # the tag shows the region's own number


def test_pred_outline_is_drawn_inside_the_mask_edge():
    image = np.full((40, 60), 128, dtype=np.uint8)  # greyscale input is accepted
    mask = _square_mask()
    out = np.asarray(render_overlay(image, np.zeros((40, 60)), mask))
    outline = np.all(out == PRED_COLOR, axis=2)
    # 2 px band inside the 20x20 square: 20*20 - 16*16 pixels
    assert outline.sum() == 20 * 20 - 16 * 16
    assert outline[10, 20] and outline[11, 21] and outline[29, 39]
    assert not outline[12, 22]  # interior keeps the heatmap
    assert not outline[9, 20] and not outline[10, 19]  # nothing outside the mask


def test_gt_outline_is_dashed_outside_and_both_stay_visible():
    image = Image.new("RGB", (60, 40), (60, 60, 60))
    mask = _square_mask()
    out = np.asarray(render_overlay(image, np.zeros((40, 60)), mask, gt_mask=mask))
    pred = np.all(out == PRED_COLOR, axis=2)
    gt = np.all(out == GT_COLOR, axis=2)
    assert pred.sum() == 20 * 20 - 16 * 16  # prediction not hidden by the ground truth
    assert gt.any()
    assert not (gt & mask).any()  # ground truth drawn outside its edge
    ring = np.zeros_like(mask)
    ring[8:32, 18:42] = True
    ring[10:30, 20:40] = False
    assert (gt <= ring).all()  # within 2 px of the edge (cross-shaped dilation)
    assert 0 < gt.sum() < ring.sum()  # dashed, not solid


def test_map_and_masks_of_other_size_are_resized_to_the_image():
    image = np.zeros((80, 120, 3), dtype=np.uint8)
    small_mask = _square_mask()  # 40x60
    out = np.asarray(render_overlay(image, np.zeros((40, 60)), small_mask))
    assert out.shape == (80, 120, 3)
    outline = np.all(out == PRED_COLOR, axis=2)
    assert outline[20, 40] and not outline[19, 40]


def test_invalid_range_is_rejected():
    with pytest.raises(ValueError, match="vmax"):
        render_overlay(np.zeros((4, 4, 3), np.uint8), np.zeros((4, 4)), None, vmin=1.0, vmax=1.0)


@pytest.mark.parametrize(("vmin", "vmax"), [(0.0, 1.0), (-2.0, 3.0)])
def test_map_png_round_trip_is_16_bit(tmp_path, vmin, vmax):
    rng = np.random.default_rng(1)
    amap = (rng.random((33, 47)) * (vmax - vmin) + vmin).astype(np.float32)
    path = tmp_path / "sub" / "map.png"
    save_map_png(path, amap, vmin=vmin, vmax=vmax)
    with Image.open(path) as im:
        assert im.size == (47, 33)
        assert im.mode in ("I;16", "I")  # Pillow reads 16-bit grey PNG as one of these
        assert np.asarray(im).max() > 255  # really more than 8 bits
    back = load_map_png(path, vmin=vmin, vmax=vmax)
    assert back.dtype == np.float32
    assert back.shape == amap.shape
    assert np.abs(back - amap).max() < 1e-4 * (vmax - vmin)


def test_map_png_clips_out_of_range_and_nan(tmp_path):
    amap = np.array([[-1.0, 0.5, 2.0, np.nan]], dtype=np.float32)
    save_map_png(tmp_path / "m.png", amap)
    back = load_map_png(tmp_path / "m.png")
    np.testing.assert_allclose(back, [[0.0, 0.5, 1.0, 0.0]], atol=1e-4)


def test_mask_png_is_8_bit_0_255_and_reads_back(tmp_path):
    mask = _square_mask()
    path = tmp_path / "mask.png"
    save_mask_png(path, mask)
    with Image.open(path) as im:
        assert im.mode == "L"
        values = set(np.unique(np.asarray(im)).tolist())
    assert values == {0, 255}
    np.testing.assert_array_equal(load_mask(path), mask)
