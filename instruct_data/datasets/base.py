"""What every dataset reader yields, so evaluation code never cares which folder layout it came from."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, runtime_checkable

import numpy as np

from tools.image_io import IMAGE_EXTENSIONS, list_images, load_mask, read_image_size

GOOD = "good"
ALL_CATEGORIES = "all"


class DatasetError(ValueError):
    """A dataset folder is missing or laid out in a way we cannot read; the message names the path."""


@dataclass(frozen=True)
class Sample:
    """One test image with its ground truth.

    `mask_path` is None for normal images and for anomalous images whose mask file is missing; it may
    also be a folder of masks (MVTec LOCO: one file per defect region), which are OR-ed together.
    """

    image_path: Path
    gt_label: bool  # True = anomalous
    defect_type: str  # "good" for normal images
    category: str
    mask_path: Path | None = None

    def load_mask(self, size: tuple[int, int] | None = None) -> np.ndarray | None:
        """Boolean HxW ground-truth mask at `size` = (w, h), by default the image's own size.

        Normal image -> all False. Anomalous image without a mask file -> None, so pixel metrics skip
        it while image-level metrics still count it (a missing mask is not an empty mask).
        """
        w, h = size if size is not None else read_image_size(self.image_path)
        if not self.gt_label:
            return np.zeros((h, w), dtype=bool)
        if self.mask_path is None:
            return None
        if self.mask_path.is_dir():
            parts = list_images(self.mask_path)
            if not parts:
                return None
            merged = np.zeros((h, w), dtype=bool)
            for part in parts:
                merged |= load_mask(part, (w, h))
            return merged
        return load_mask(self.mask_path, (w, h))


@runtime_checkable
class Dataset(Protocol):
    """The reader interface the evaluation and data builders use."""

    root: Path

    def categories(self) -> list[str]: ...

    def train_good(self, category: str | None = None) -> list[Path]: ...

    def test_samples(self, category: str | None = None) -> list[Sample]: ...

    def defect_types(self, category: str | None = None) -> list[str]: ...


def check_root(root: str | os.PathLike[str]) -> Path:
    """The dataset root as a Path, or a DatasetError when it is missing or not a folder."""
    path = Path(root).expanduser()
    if not path.exists():
        raise DatasetError(f"dataset root not found: '{path}'")
    if not path.is_dir():
        raise DatasetError(f"dataset root is not a folder: '{path}'")
    return path


def subdirs(folder: Path) -> list[Path]:
    """Visible sub-folders, sorted."""
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))


def index_masks(folder: Path) -> dict[str, Path]:
    """Mask lookup for one folder: key = image stem, value = its mask.

    `<stem>_mask.<ext>` beats `<stem>.<ext>`, and .png beats other extensions, so a folder holding both
    a mask and a stray preview picks the mask. Sub-folders are kept too (LOCO keeps one per image).
    """
    ranked: dict[str, tuple[int, Path]] = {}
    if not folder.is_dir():
        return {}
    for p in sorted(folder.iterdir()):
        if p.name.startswith("."):
            continue
        if p.is_dir():
            candidates = [(p.name, 4)]
        elif p.suffix.lower() in IMAGE_EXTENSIONS:
            png = p.suffix.lower() == ".png"
            stem = p.stem
            if stem.endswith("_mask"):
                candidates = [(stem[: -len("_mask")], 0 if png else 1)]
            else:
                candidates = [(stem, 2 if png else 3)]
        else:
            continue
        for key, rank in candidates:
            if key not in ranked or rank < ranked[key][0]:
                ranked[key] = (rank, p)
    return {key: path for key, (_, path) in ranked.items()}
