"""Regions, consensus parts, templates and edge directions (tools.graph_segmentation,
tools.part_segmentation, tools.part_templates)."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image, ImageDraw

from tools.graph_segmentation import graph_regions
from tools.part_segmentation import consensus_parts, grid_shape, product_frame, split_two_colours
from tools.part_templates import edge_angle, locate, ncc_map


def test_graph_regions_keep_a_gradient_whole_and_split_at_an_edge() -> None:
    px = np.zeros((40, 60, 3))
    px[:, :30] = np.linspace(0.2, 0.45, 40)[:, None, None]  # a smooth gradient: one region
    px[:, 30:] = (0.9, 0.7, 0.2)  # a sharp step to another colour
    labels = graph_regions(px, k=0.5, min_size=10)
    assert len(np.unique(labels[:, :28])) == 1
    assert labels[5, 5] != labels[5, 50]
    with pytest.raises(ValueError, match="HxWxC"):
        graph_regions(np.zeros((5, 5)))


def test_two_colours_joined_by_a_weak_corner_are_split() -> None:
    px = np.zeros((20, 20, 3))
    px[:, 10:] = 0.9
    merged = np.zeros((20, 20), int)  # one region over both colours
    out = split_two_colours(merged, px, min_size=5)
    assert out[0, 0] != out[0, 19] and len(np.unique(out)) == 2


def test_product_frame_is_the_largest_foreground_piece() -> None:
    px = np.zeros((100, 60, 3))
    px[10:90, 20:40] = 0.6
    px[2:5, 2:5] = 0.6  # a speck
    f = product_frame(px, np.zeros(3), 0.1)
    assert f.found and f.box == (20, 10, 40, 90)
    assert f.to_frame(30, 50) == pytest.approx((0.5, 0.5))
    assert not product_frame(np.zeros((10, 10, 3)), np.zeros(3), 0.1).found


def test_consensus_matches_a_part_that_sits_a_little_differently_on_each_reference() -> None:
    gw, gh = grid_shape(0.5, rows=40)
    masks = []
    for shift in (0, 2, -2, 3, 1):
        m = np.zeros((gh, gw), bool)
        m[15 + shift : 20 + shift, 4:16] = True  # a thin label, placed a little differently
        big = np.zeros((gh, gw), bool)
        big[25:38, 2:18] = True
        masks.append([m, big])
    parts, support = consensus_parts(masks, min_iou=0.4, min_support=0.8)
    assert len(support) == 2 and all(len(s) == 5 for s in support)
    assert parts[17, 10] != parts[30, 10] and parts[17, 10] >= 0 and parts[30, 10] >= 0


def test_ncc_matches_brute_force_and_finds_the_pattern() -> None:
    rng = np.random.default_rng(0)
    win = rng.random((30, 25, 3))
    tpl = win[8:20, 5:15].copy()
    got = ncc_map(win, tpl)
    y, x = 3, 4
    patch = win[y : y + 12, x : x + 10]
    a = patch - patch.mean(axis=(0, 1))
    b = tpl - tpl.mean(axis=(0, 1))
    assert got[y, x] == pytest.approx(float((a * b).sum() / np.sqrt((a**2).sum() * (b**2).sum())), abs=1e-9)
    assert np.unravel_index(got.argmax(), got.shape) == (8, 5) and got.max() == pytest.approx(1.0)
    m = locate(win, tpl, (12.0, 12.0), (8.0, 8.0))
    assert (m.x, m.y) == (10.0, 14.0) and m.score == pytest.approx(1.0)


def test_ncc_of_a_few_places_directly_equals_the_fft_correlation() -> None:
    """A refinement (a window a few pixels larger than the template) is correlated directly; the
    numbers are those of the FFT path (a window just past DIRECT_PLACES) at the same places."""
    from tools.part_templates import DIRECT_PLACES

    rng = np.random.default_rng(1)
    win = rng.random((40, 60, 3))
    tpl = rng.random((35, 54, 3))
    small = ncc_map(win, tpl)  # 6 x 7 places: direct
    assert small.size <= DIRECT_PLACES
    wide = np.concatenate([win, rng.random((40, 20, 3))], axis=1)  # 6 x 27 places: FFT
    large = ncc_map(wide, tpl)
    assert large.size > DIRECT_PLACES
    assert np.allclose(small, large[:, : small.shape[1]], atol=1e-9)


@pytest.mark.parametrize("angle", [0.0, 7.0, -12.0, 25.0])
def test_edge_angle_reads_a_tilt(angle: float) -> None:
    im = Image.new("RGB", (80, 80), (30, 30, 30))
    ImageDraw.Draw(im).rectangle((20, 25, 60, 55), fill=(240, 200, 90))
    tilted = np.asarray(im.rotate(angle, resample=Image.BILINEAR, fillcolor=(30, 30, 30)), float) / 255
    got, strength = edge_angle(tilted)
    assert got == pytest.approx(angle, abs=2.0) and strength > 0.5
