"""The LOCO-like scene generator: determinism and ground truth."""

from __future__ import annotations

import json

import numpy as np
import pytest

from instruct_data.synthesis.scenes import (
    CLAMP,
    KINDS,
    RED,
    SCENES,
    STRUCTURAL_KINDS,
    make_scene,
    write_scene_set,
)


@pytest.mark.parametrize("scene", SCENES)
def test_same_seed_same_pixels(scene: str) -> None:
    for kind in ("good", *KINDS[scene]):
        a = make_scene(scene, kind, seed=7)
        b = make_scene(scene, kind, seed=7)
        assert np.array_equal(np.asarray(a.image), np.asarray(b.image))
        assert a.component == b.component
    assert not np.array_equal(
        np.asarray(make_scene(scene, seed=1).image), np.asarray(make_scene(scene, seed=2).image)
    )


@pytest.mark.parametrize(("scene", "kind"), [(s, k) for s in SCENES for k in KINDS[s]])
def test_ground_truth(scene: str, kind: str) -> None:
    sc = make_scene(scene, kind, seed=3)
    assert sc.label == 1 and sc.kind == kind
    assert sc.component in {"pin", "bottle", "label", "cap", "bar", "clamp", "plug"}
    assert sc.mask is not None and sc.mask.shape == (128, 128) and sc.mask.any()
    px = np.asarray(sc.image).astype(int)
    inside = px[sc.mask].mean(0)
    if kind == "missing" and sc.component == "clamp":  # the cable shows where the clamp was
        assert np.abs(inside - np.array(CLAMP)).max() > 30
    elif kind == "missing":  # the item is gone: background where it was
        assert np.abs(inside - np.array([226, 222, 210])).max() < 12
    if kind == "recoloured":
        assert np.abs(inside - np.array(RED)).max() < 12
    if kind == "mismatched":
        assert sc.component == ("plug" if scene == "cable" else "label")
    good = make_scene(scene, "good", seed=3)
    assert good.label == 0 and good.mask is None and good.component is None


@pytest.mark.parametrize(("scene", "kind"), [(s, k) for s in SCENES for k in STRUCTURAL_KINDS])
def test_structural_defects_are_local_and_visible(scene: str, kind: str) -> None:
    sc = make_scene(scene, kind, seed=4)
    assert sc.label == 1 and sc.mask is not None and 0 < sc.mask.mean() < 0.05
    px = np.asarray(sc.image).astype(float).mean(-1)
    ring = np.zeros_like(sc.mask)
    ys, xs = np.nonzero(sc.mask)
    ring[max(0, ys.min() - 6) : ys.max() + 7, max(0, xs.min() - 6) : xs.max() + 7] = True
    ring &= ~sc.mask
    assert abs(px[sc.mask].mean() - px[ring].mean()) > 8  # darker or discoloured against around it
    again = make_scene(scene, kind, seed=4)
    assert np.array_equal(np.asarray(again.image), np.asarray(sc.image))


def test_bad_names() -> None:
    with pytest.raises(ValueError, match="unknown scene"):
        make_scene("shelf")
    with pytest.raises(ValueError, match="no anomaly kind 'mismatched'"):
        make_scene("tray", "mismatched")


def test_write_scene_set(tmp_path) -> None:
    labels = write_scene_set(tmp_path, 10, seed=5)
    assert json.loads((tmp_path / "labels.json").read_text()) == labels
    for scene in SCENES:
        assert len(list((tmp_path / scene / "refs").glob("*.png"))) == 4
        mine = {k: v for k, v in labels.items() if v["scene"] == scene}
        assert len(mine) == 10 and sum(v["label"] for v in mine.values()) == 5
        assert {v["kind"] for v in mine.values()} == {"good", *KINDS[scene]}
        for rel, v in mine.items():
            assert (tmp_path / rel).is_file()
            assert (v["mask"] is None) == (v["label"] == 0)
            if v["mask"]:
                assert (tmp_path / v["mask"]).is_file()
    again = write_scene_set(tmp_path / "again", 10, seed=5)
    assert again == labels
    for v in labels.values():
        assert v["family"] == (None if v["kind"] == "good" else "logical")
    mixed = write_scene_set(tmp_path / "mixed", 20, seed=5, scenes=("cable",), structural=True)
    assert {v["kind"] for v in mixed.values()} == {"good", *KINDS["cable"], *STRUCTURAL_KINDS}
    assert {v["family"] for v in mixed.values() if v["kind"] in STRUCTURAL_KINDS} == {"structural"}
    a = (tmp_path / "tray/test/0001_missing.png").read_bytes()
    assert a == (tmp_path / "again/tray/test/0001_missing.png").read_bytes()
