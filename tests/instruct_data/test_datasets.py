"""Dataset readers on tiny synthetic trees built in tmp_path."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from instruct_data.datasets import DATASETS, DatasetError, Sample, open_dataset
from instruct_data.datasets.folder import FolderDataset
from instruct_data.datasets.mvtec import MVTecDataset
from tools.registry import RegistryError

SIZE = (8, 6)  # w, h


def _image(path: Path, value: int = 100, size: tuple[int, int] = SIZE) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fmt = {".jpg": "JPEG", ".jpeg": "JPEG", ".bmp": "BMP", ".png": "PNG"}[path.suffix.lower()]
    Image.new("L", size, value).save(path, format=fmt)
    return path


def _mask(path: Path, rows: slice = slice(0, 2), value: int = 255, size: tuple[int, int] = SIZE) -> Path:
    """A mask that is `value` on `rows` and 0 elsewhere."""
    path.parent.mkdir(parents=True, exist_ok=True)
    arr = np.zeros((size[1], size[0]), dtype=np.uint8)
    arr[rows] = value
    fmt = {".png": "PNG", ".bmp": "BMP"}[path.suffix.lower()]
    Image.fromarray(arr).save(path, format=fmt)
    return path


def _category(root: Path) -> Path:
    """One MVTec category with mixed extensions and every mask-naming variant."""
    for name in ["000.png", "001.JPG", "002.bmp"]:
        _image(root / "train" / "good" / name)
    (root / "train" / "good" / "notes.txt").write_text("not an image")
    (root / "train" / "good" / ".DS_Store").write_bytes(b"\0")
    _image(root / "test" / "good" / "000.png")
    _image(root / "test" / "good" / "001.JPG")
    _image(root / "test" / "crack" / "000.png", 200)
    _image(root / "test" / "crack" / "001.JPG", 200)
    _image(root / "test" / "crack" / "002.bmp", 200)  # no mask on purpose
    _image(root / "test" / "hole" / "000.png", 10)
    # crack/000: values 127 and 128 -> only the 128 rows are defect
    arr = np.full((SIZE[1], SIZE[0]), 127, dtype=np.uint8)
    arr[2:4] = 128
    (root / "ground_truth" / "crack").mkdir(parents=True)
    Image.fromarray(arr).save(root / "ground_truth" / "crack" / "000_mask.png")
    _mask(root / "ground_truth" / "crack" / "001.png", rows=slice(0, 1))  # <stem>.png naming
    _mask(root / "ground_truth" / "hole" / "000_mask.bmp", rows=slice(5, 6))  # any extension
    return root


def _by_name(samples: list[Sample]) -> dict[str, Sample]:
    return {f"{s.defect_type}/{s.image_path.name}": s for s in samples}


# ---------------------------------------------------------------------------------------------------
# MVTec, one category


def test_single_category_lists_train_and_test(tmp_path: Path) -> None:
    ds = MVTecDataset(_category(tmp_path / "tile"))
    assert ds.categories() == ["tile"]
    assert [p.name for p in ds.train_good()] == ["000.png", "001.JPG", "002.bmp"]
    assert ds.defect_types() == ["crack", "hole"]

    samples = ds.test_samples()
    assert [f"{s.defect_type}/{s.image_path.name}" for s in samples] == [
        "crack/000.png",
        "crack/001.JPG",
        "crack/002.bmp",
        "good/000.png",
        "good/001.JPG",
        "hole/000.png",
    ]
    assert all(s.category == "tile" for s in samples)
    assert [s.gt_label for s in samples] == [True, True, True, False, False, True]
    assert ds.test_samples("tile") == samples


def test_masks_found_by_every_naming_and_missing_is_none(tmp_path: Path) -> None:
    root = _category(tmp_path / "tile")
    s = _by_name(MVTecDataset(root).test_samples())
    assert s["crack/000.png"].mask_path == root / "ground_truth" / "crack" / "000_mask.png"
    assert s["crack/001.JPG"].mask_path == root / "ground_truth" / "crack" / "001.png"
    assert s["hole/000.png"].mask_path == root / "ground_truth" / "hole" / "000_mask.bmp"
    assert s["crack/002.bmp"].mask_path is None
    assert s["good/000.png"].mask_path is None


def test_sample_masks_threshold_above_127(tmp_path: Path) -> None:
    s = _by_name(MVTecDataset(_category(tmp_path / "tile")).test_samples())
    crack = s["crack/000.png"].load_mask()
    assert crack.shape == (SIZE[1], SIZE[0]) and crack.dtype == bool
    assert crack[2:4].all() and crack.sum() == 2 * SIZE[0]  # the 127 rows stay False

    assert s["hole/000.png"].load_mask()[5].all()
    good = s["good/001.JPG"].load_mask()
    assert good.shape == (SIZE[1], SIZE[0]) and not good.any()
    assert s["crack/002.bmp"].load_mask() is None  # anomalous, mask unknown: not "empty"

    resized = s["crack/000.png"].load_mask(size=(16, 12))
    assert resized.shape == (12, 16) and resized[4:8].all() and resized.sum() == 4 * 16


def test_mask_prefers_suffix_mask_and_png(tmp_path: Path) -> None:
    root = tmp_path / "cat"
    _image(root / "test" / "dent" / "a.png")
    _mask(root / "ground_truth" / "dent" / "a.png", rows=slice(0, 1))
    _mask(root / "ground_truth" / "dent" / "a_mask.bmp", rows=slice(1, 2))
    _mask(root / "ground_truth" / "dent" / "a_mask.png", rows=slice(2, 3))
    (sample,) = MVTecDataset(root).test_samples()
    assert sample.mask_path is not None and sample.mask_path.name == "a_mask.png"


def test_loco_style_mask_folders_are_merged(tmp_path: Path) -> None:
    root = tmp_path / "box"
    _image(root / "train" / "good" / "000.png")
    _image(root / "test" / "logical" / "000.png")
    _mask(root / "ground_truth" / "logical" / "000" / "000.png", rows=slice(0, 1))
    _mask(root / "ground_truth" / "logical" / "000" / "001.png", rows=slice(3, 4))
    (sample,) = MVTecDataset(root).test_samples()
    assert sample.mask_path == root / "ground_truth" / "logical" / "000"
    mask = sample.load_mask()
    assert mask[0].all() and mask[3].all() and mask.sum() == 2 * SIZE[0]


def test_samples_are_frozen(tmp_path: Path) -> None:
    sample = MVTecDataset(_category(tmp_path / "tile")).test_samples()[0]
    with pytest.raises(dataclasses.FrozenInstanceError):
        sample.gt_label = False  # type: ignore[misc]


# ---------------------------------------------------------------------------------------------------
# MVTec, several categories


def _two_categories(root: Path) -> Path:
    _category(root / "tile")
    _image(root / "screw" / "train" / "good" / "a.png")
    _image(root / "screw" / "test" / "good" / "a.png")
    _image(root / "screw" / "test" / "scratch" / "b.png")
    _mask(root / "screw" / "ground_truth" / "scratch" / "b_mask.png")
    (root / "README.txt").write_text("readme")
    (root / "not_a_category").mkdir()
    return root


def test_two_categories_need_a_choice(tmp_path: Path) -> None:
    ds = MVTecDataset(_two_categories(tmp_path / "mvtec"))
    assert ds.categories() == ["screw", "tile"]
    for call in (ds.train_good, ds.test_samples, ds.defect_types):
        with pytest.raises(DatasetError) as info:
            call()
        message = str(info.value)
        assert "--category" in message and "screw, tile" in message and "\n" not in message


def test_two_categories_by_name_and_all(tmp_path: Path) -> None:
    ds = MVTecDataset(_two_categories(tmp_path / "mvtec"))
    assert [p.name for p in ds.train_good("screw")] == ["a.png"]
    assert ds.defect_types("screw") == ["scratch"]
    screw = ds.test_samples("screw")
    assert [(s.defect_type, s.gt_label, s.category) for s in screw] == [
        ("good", False, "screw"),
        ("scratch", True, "screw"),
    ]
    assert screw[1].mask_path is not None and screw[1].load_mask()[:2].all()
    everything = ds.test_samples("all")
    assert len(everything) == len(screw) + len(ds.test_samples("tile"))
    assert {s.category for s in everything} == {"screw", "tile"}
    assert len(ds.train_good("all")) == 4
    assert ds.defect_types("all") == ["crack", "hole", "scratch"]


def test_unknown_category_lists_the_available(tmp_path: Path) -> None:
    ds = MVTecDataset(_two_categories(tmp_path / "mvtec"))
    with pytest.raises(DatasetError, match=r"unknown category 'bottle'.*available: screw, tile"):
        ds.test_samples("bottle")


# ---------------------------------------------------------------------------------------------------
# MVTec errors


def test_missing_root(tmp_path: Path) -> None:
    with pytest.raises(DatasetError) as info:
        MVTecDataset(tmp_path / "absent")
    assert str(info.value) == f"dataset root not found: '{tmp_path / 'absent'}'"


def test_root_without_categories(tmp_path: Path) -> None:
    _image(tmp_path / "empty" / "stuff" / "a.png")
    with pytest.raises(DatasetError, match="no MVTec category under .*empty"):
        MVTecDataset(tmp_path / "empty")


def test_category_without_train_or_test_images(tmp_path: Path) -> None:
    root = tmp_path / "half"
    _image(root / "test" / "good" / "a.png")
    ds = MVTecDataset(root)
    with pytest.raises(DatasetError, match="no training images in '.*train/good'"):
        ds.train_good()
    (root / "test" / "good" / "a.png").unlink()
    with pytest.raises(DatasetError, match="no test images under"):
        ds.test_samples()

    train_only = tmp_path / "train_only"
    _image(train_only / "train" / "good" / "a.png")
    with pytest.raises(DatasetError, match="no test folder"):
        MVTecDataset(train_only).test_samples()


# ---------------------------------------------------------------------------------------------------
# folder layout


def _folder_tree(root: Path) -> Path:
    _image(root / "OK" / "a.png")
    _image(root / "OK" / "b.jpg")
    _image(root / "ng" / "c.png", 200)
    _image(root / "ng" / "scratch" / "d.bmp", 200)
    _image(root / "defect_stain" / "e.png", 200)
    _mask(root / "masks" / "c_mask.png")
    _mask(root / "masks" / "scratch" / "d.png", rows=slice(4, 6))
    return root


def test_folder_dataset_labels_types_and_masks(tmp_path: Path) -> None:
    root = _folder_tree(tmp_path / "parts")
    ds = FolderDataset(root)
    assert ds.categories() == ["parts"]
    assert [p.name for p in ds.train_good()] == ["a.png", "b.jpg"]
    assert ds.defect_types() == ["defect_stain", "ng", "scratch"]

    s = _by_name(ds.test_samples())
    assert set(s) == {"good/a.png", "good/b.jpg", "ng/c.png", "scratch/d.bmp", "defect_stain/e.png"}
    assert not s["good/a.png"].gt_label and s["ng/c.png"].gt_label
    assert s["ng/c.png"].mask_path == root / "masks" / "c_mask.png"
    assert s["scratch/d.bmp"].mask_path == root / "masks" / "scratch" / "d.png"
    assert s["scratch/d.bmp"].load_mask()[4:].all()
    assert s["defect_stain/e.png"].mask_path is None
    assert ds.test_samples("parts") == ds.test_samples("all") == ds.test_samples()


def test_folder_dataset_errors(tmp_path: Path) -> None:
    ds = FolderDataset(_folder_tree(tmp_path / "parts"))
    with pytest.raises(DatasetError, match="unknown category 'x'.*'parts'"):
        ds.train_good("x")
    _image(tmp_path / "random" / "photos" / "a.png")
    with pytest.raises(DatasetError, match=r"not a folder dataset: expected good/.*found: photos"):
        FolderDataset(tmp_path / "random")
    _image(tmp_path / "only_bad" / "bad" / "a.png")
    with pytest.raises(DatasetError, match="no good images"):
        FolderDataset(tmp_path / "only_bad").train_good()


# ---------------------------------------------------------------------------------------------------
# registry and auto-detection


def test_registry_lists_both_layouts() -> None:
    assert DATASETS.names() == ["folder", "mvtec"]
    assert "MVTec" in DATASETS.describe("mvtec")
    assert DATASETS.get("mvtec") is MVTecDataset


def test_open_dataset_detects_layouts(tmp_path: Path) -> None:
    assert isinstance(open_dataset(_category(tmp_path / "tile")), MVTecDataset)
    multi = open_dataset(_two_categories(tmp_path / "mvtec"))
    assert isinstance(multi, MVTecDataset) and multi.categories() == ["screw", "tile"]
    assert isinstance(open_dataset(_folder_tree(tmp_path / "parts")), FolderDataset)
    assert isinstance(open_dataset(tmp_path / "parts", layout="folder"), FolderDataset)


def test_open_dataset_errors(tmp_path: Path) -> None:
    _image(tmp_path / "photos" / "x" / "a.png")
    with pytest.raises(DatasetError) as info:
        open_dataset(tmp_path / "photos")
    assert "cannot tell the dataset layout" in str(info.value) and "\n" not in str(info.value)
    with pytest.raises(DatasetError, match="dataset root not found"):
        open_dataset(tmp_path / "absent")
    with pytest.raises(RegistryError, match="available: folder, mvtec"):
        open_dataset(tmp_path / "photos", layout="visa")
