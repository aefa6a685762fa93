"""Anomaly synthesis: every kind is deterministic, masked, local and described; the synth command runs."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image
from scipy import ndimage

from instruct_data.synthesis.anomalies import ANOMALIES, as_rgb_uint8, kinds, synthesize, synthesize_random
from instruct_data.synthesis.contact_sheet import Tile, contact_sheet
from instruct_data.synthesis.demo_case import brushed_plate
from instruct_data.synthesis.drawing import perlin_noise
from tools.regions import _LOCATION_GRID

EXPECTED_KINDS = {
    "blur",
    "crack",
    "cutpaste",
    "cutpaste_scar",
    "hole",
    "logical_duplicate",
    "logical_move",
    "logical_recolour",
    "logical_remove",
    "missing",
    "perlin",
    "scratch",
    "smear",
    "spots",
    "stain",
}
LOCATION_WORDS = {w for row in _LOCATION_GRID for w in row}
#: how far (px) outside the mask an edit may reach: soft edges and blur kernels
MARGIN = 6


def _plate(seed: int = 0, size: int = 128) -> np.ndarray:
    return (brushed_plate(np.random.default_rng(seed), size) * 255).round().astype(np.uint8)


def _textured(h: int, w: int, seed: int = 0) -> np.ndarray:
    """A grey, textured image of any size (the plate generator only makes squares)."""
    rng = np.random.default_rng(seed)
    base = ndimage.gaussian_filter(rng.normal(128, 40, (h, w)), 1.0)
    return np.clip(base, 0, 255).astype(np.uint8)


@pytest.fixture(scope="module")
def plate() -> np.ndarray:
    return _plate()


def test_registry_holds_every_family() -> None:
    assert set(kinds()) >= EXPECTED_KINDS
    for name in EXPECTED_KINDS:
        assert ANOMALIES.describe(name)


@pytest.mark.parametrize("kind", sorted(EXPECTED_KINDS))
def test_kind_is_deterministic_masked_local_and_described(kind: str, plate: np.ndarray) -> None:
    original = plate.copy()
    a = synthesize(plate, kind, np.random.default_rng(7))
    b = synthesize(plate, kind, np.random.default_rng(7))
    assert np.array_equal(plate, original), "the input must not be modified"
    assert np.array_equal(a.image, b.image) and np.array_equal(a.mask, b.mask)
    assert a.description == b.description

    h, w = plate.shape[:2]
    assert a.image.dtype == np.uint8 and a.image.shape == (h, w, 3)
    assert a.mask.dtype == bool and a.mask.shape == (h, w)
    assert a.mask.any() and a.mask.sum() < 0.5 * h * w

    changed = np.abs(a.image.astype(int) - plate.astype(int)).max(axis=2) > 3
    assert changed[a.mask].mean() > 0.2, "the masked area must visibly change"
    near = ndimage.binary_dilation(a.mask, iterations=MARGIN)
    assert changed[~near].mean() < 0.002, "pixels well outside the mask must stay as they were"

    d = a.description
    assert d["type"] == kind
    assert d["location"] in LOCATION_WORDS
    assert d["size"] == pytest.approx(a.mask.mean(), abs=1e-4)
    assert isinstance(d["appearance"], str) and d["appearance"]
    x0, y0, x1, y1 = d["bbox"]
    assert 0 <= x0 < x1 <= w and 0 <= y0 < y1 <= h
    json.dumps(d)  # descriptions go into JSON lines as they are


def test_different_seeds_differ(plate: np.ndarray) -> None:
    for kind in EXPECTED_KINDS:
        a = synthesize(plate, kind, np.random.default_rng(1))
        b = synthesize(plate, kind, np.random.default_rng(2))
        assert not np.array_equal(a.image, b.image), kind


@pytest.mark.parametrize("shape", [(97, 131), (131, 97), (33, 41)])
def test_every_kind_on_grey_images_of_odd_sizes(shape: tuple[int, int]) -> None:
    grey = _textured(*shape)
    for i, kind in enumerate(kinds()):
        for seed in range(3):
            res = synthesize(grey, kind, np.random.default_rng([seed, i]))
            assert res.image.shape == (*shape, 3), kind
            assert res.mask.shape == shape and res.mask.any(), kind
            assert res.description["location"] in LOCATION_WORDS


def test_every_kind_on_rgb_image_of_odd_size() -> None:
    rgb = np.stack([_textured(97, 131, s) for s in range(3)], axis=-1)
    for kind in kinds():
        res = synthesize(rgb, kind, np.random.default_rng(0))
        assert res.image.shape == rgb.shape and res.mask.shape == rgb.shape[:2] and res.mask.any()


def test_grey_input_promotion() -> None:
    grey = _textured(20, 30)
    rgb = as_rgb_uint8(grey)
    assert (
        rgb.shape == (20, 30, 3) and np.array_equal(rgb[..., 0], grey) and np.array_equal(rgb[..., 2], grey)
    )
    assert as_rgb_uint8(np.dstack([rgb, np.full((20, 30), 255, np.uint8)])).shape == (20, 30, 3)
    with pytest.raises(ValueError):
        as_rgb_uint8(grey.astype(np.float32))


def test_logical_edits_find_components(plate: np.ndarray) -> None:
    """On the demo plate the components are the screw holes: a moved one leaves its place empty."""
    res = synthesize(plate, "logical_move", np.random.default_rng(3))
    d = res.description
    assert "component" in d["appearance"] and d["from_location"] != d["location"]
    labels, n = ndimage.label(res.mask)
    assert n == 2  # the emptied place and the new one
    removed = synthesize(plate, "logical_remove", np.random.default_rng(3))
    grey_before = plate[removed.mask].mean()
    assert removed.image[removed.mask].mean() > grey_before + 20  # a dark hole became bright plate
    for kind in ("logical_duplicate", "logical_recolour"):
        assert "component" in synthesize(plate, kind, np.random.default_rng(0)).description["appearance"]


def test_synthesize_random_is_deterministic_and_respects_kinds(plate: np.ndarray) -> None:
    seen = set()
    for seed in range(12):
        a = synthesize_random(plate, np.random.default_rng(seed), kinds=["stain", "hole"])
        b = synthesize_random(plate, np.random.default_rng(seed), kinds=["stain", "hole"])
        assert np.array_equal(a.image, b.image)
        seen.add(a.description["type"])
    assert seen == {"stain", "hole"}


def test_unknown_kind_lists_the_known_ones(plate: np.ndarray) -> None:
    with pytest.raises(KeyError, match="scratch"):
        synthesize(plate, "scrath", np.random.default_rng(0))


def test_appearance_words(plate: np.ndarray) -> None:
    scratch = synthesize(plate, "scratch", np.random.default_rng(0)).description["appearance"]
    assert "line" in scratch and ("dark" in scratch or "bright" in scratch)
    assert "hole" in synthesize(plate, "hole", np.random.default_rng(0)).description["appearance"]
    assert "stain" in synthesize(plate, "stain", np.random.default_rng(0)).description["appearance"]


def test_perlin_noise_range_and_determinism() -> None:
    a = perlin_noise((50, 70), (3, 5), np.random.default_rng(0))
    b = perlin_noise((50, 70), (3, 5), np.random.default_rng(0))
    assert a.shape == (50, 70) and np.array_equal(a, b)
    assert np.abs(a).max() <= 1.5 and a.std() > 0.05


def test_contact_sheet_grid(plate: np.ndarray) -> None:
    res = synthesize(plate, "hole", np.random.default_rng(0))
    sheet = contact_sheet(
        [[Tile(plate, "original")], [Tile(res.image, "hole", res.mask), Tile(plate[..., 0])]], 64
    )
    assert sheet.size[0] > 2 * 64 and sheet.size[1] > 2 * 64
    arr = np.asarray(sheet)
    assert (arr == [0, 255, 0]).all(axis=2).any(), "the mask outline is drawn"
    with pytest.raises(ValueError):
        contact_sheet([])


def test_synth_command_end_to_end(tmp_path) -> None:
    from agent.commands.synth import main

    src = tmp_path / "good"
    (src / "sub").mkdir(parents=True)
    Image.fromarray(_plate(1, 48)).save(src / "a.png")
    Image.fromarray(_textured(37, 45, 2)).save(src / "b.png")
    Image.fromarray(_plate(3, 40)).save(src / "sub" / "c.png")
    out = tmp_path / "out"
    sheet = tmp_path / "sheet.png"
    argv = ["--images", str(src), "--out", str(out), "--per-image", "2", "--seed", "5"]
    argv += ["--kinds", "scratch,stain", "hole", "--contact-sheet", str(sheet)]
    assert main(argv) == 0

    lines = (out / "descriptions.jsonl").read_text().splitlines()
    records = [json.loads(line) for line in lines]
    assert len(records) == 6
    for r in records:
        assert r["kind"] in {"scratch", "stain", "hole"} and r["description"]["type"] == r["kind"]
        img = np.asarray(Image.open(out / r["image"]))
        mask = np.asarray(Image.open(out / r["mask"]))
        assert img.ndim == 3 and img.shape[:2] == mask.shape and (mask == 255).any()
        assert set(np.unique(mask)) <= {0, 255}
    assert sheet.exists() and Image.open(sheet).size[0] > 0

    out2 = tmp_path / "out2"
    assert main(["synth", *argv[:3], str(out2), *argv[4:-2]]) == 0
    assert (out2 / "descriptions.jsonl").read_text() == "\n".join(lines) + "\n"
    for r in records:
        assert (out2 / r["image"]).read_bytes() == (out / r["image"]).read_bytes()


def test_synth_command_usage_errors(tmp_path, capsys) -> None:
    from agent.commands.synth import main

    (tmp_path / "empty").mkdir()
    assert main(["--images", str(tmp_path / "empty"), "--out", str(tmp_path / "o")]) == 2
    Image.fromarray(_plate(0, 32)).save(tmp_path / "empty" / "x.png")
    assert main(["--images", str(tmp_path / "empty"), "--out", str(tmp_path / "o"), "--kinds", "nope"]) == 2
    assert "available" in capsys.readouterr().err
