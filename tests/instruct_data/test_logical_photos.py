"""The logical validation set's view of a bottle (instruct_data.synthesis.logical_photos): the liquid's
surface and the labels are where they are, so that an edit changes what it says it changes (a
`fill_low` edit that moved the neck's ring instead of the surface would be no fill anomaly at all)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from instruct_data.synthesis.logical_photos import change_fill, fill_row, find_bottle

DATA = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "juice_bottle" / "train" / "good"
PHOTOS = sorted(DATA.glob("*.png")) if DATA.is_dir() else []


def _drawn_bottle() -> np.ndarray:
    """A dark bottle on black: a bright ring on its neck (a stronger colour step than the surface), a
    dark red liquid from row 120 down, a glint on the shoulder."""
    px = np.full((400, 200, 3), 0.03)
    px[40:380, 50:150] = 0.12  # empty glass
    px[70:76, 50:150] = 0.45  # the neck's ring
    px[120:380, 50:150] = (0.36, 0.2, 0.16)  # the liquid
    px[200:206, 50:150] = (0.55, 0.33, 0.3)  # a glint on the liquid
    return px


def test_fill_row_is_the_top_of_the_liquid_not_the_strongest_step() -> None:
    px = _drawn_bottle()
    assert abs(fill_row(px, (50, 40, 150, 380), 260) - 120) <= 2


@pytest.mark.data
@pytest.mark.skipif(len(PHOTOS) < 50, reason="needs the 50 juice-bottle photos in ../shared/data/juice_bottle")
def test_every_good_photo_has_its_surface_and_labels_where_good_bottles_have_them() -> None:
    """Good bottles are filled to one level and labelled at one place: every photo's surface and label
    rows lie close to the median of all 50 (a wrong find stands out by a tenth of the bottle or more)."""
    bottles = [find_bottle(Image.open(p)) for p in PHOTOS]
    fill = np.array([(b.box[3] - b.fill) / b.height for b in bottles])
    off = np.abs(fill - np.median(fill))
    assert off.max() < 0.03, [(PHOTOS[i].name, round(float(fill[i]), 3)) for i in np.argsort(-off)[:3]]
    for which in ("top_label", "bottom_label"):
        rows = np.array([[(getattr(b, which)[k] - b.box[1]) / b.height for k in (1, 3)] for b in bottles])
        assert np.abs(rows - np.median(rows, axis=0)).max() < 0.06, which


def _band_colour(px: np.ndarray, b, r0: float, r1: float) -> np.ndarray:
    """Median colour of the bottle's middle in the rows from r0 to r1 (shares of its height) past the
    surface."""
    w, h = b.box[2] - b.box[0], b.box[3] - b.box[1]
    cols = slice(b.box[0] + int(0.3 * w), b.box[2] - int(0.3 * w))
    return np.median(px[b.fill + int(r0 * h) : b.fill + int(r1 * h), cols].reshape(-1, 3), axis=0)


@pytest.mark.data
@pytest.mark.skipif(len(PHOTOS) < 50, reason="needs the 50 juice-bottle photos in ../shared/data/juice_bottle")
@pytest.mark.parametrize("lower", [True, False])
def test_a_fill_edit_moves_the_surface(lower: bool) -> None:
    """Rows of the bottle's middle from 1 to 4 % of its height past the surface (below it when lowered,
    above it when raised) change sides: they take the colour of the empty glass, or of the liquid."""
    for i, p in enumerate(PHOTOS[38:46]):
        with Image.open(p) as im:
            px = np.asarray(im.convert("RGB"), dtype=np.float64) / 255
        b = find_bottle(Image.fromarray((px * 255).astype(np.uint8)))
        edited, mask, _ = change_fill(px, b, np.random.default_rng(i), lower=lower)
        glass, liquid = _band_colour(px, b, -0.05, -0.02), _band_colour(px, b, 0.02, 0.05)
        band = _band_colour(edited, b, 0.01, 0.04) if lower else _band_colour(edited, b, -0.04, -0.01)
        now, was = (glass, liquid) if lower else (liquid, glass)
        assert np.linalg.norm(band - now) < np.linalg.norm(band - was), (p.name, band, glass, liquid)
        assert mask.any()
