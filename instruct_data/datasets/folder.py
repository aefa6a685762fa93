"""Reader for the plain layout people make by hand: a folder of good parts and a folder of bad ones.

    <root>/good/ (or ok/, normal/)                  normal images, searched recursively
    <root>/bad/  (or ng/, nok/, anomalous/, abnormal/, anomaly/, defect*/)
        x.png                                       defect type = the folder's name ("bad")
        scratch/y.png                               defect type = the sub-folder's name ("scratch")
    <root>/masks/ (or mask/, ground_truth/)         optional: <stem>_mask.<ext> or <stem>.<ext>,
                                                    flat or mirroring the image folders

It has no train/test split: `train_good` is every good image and `test_samples` is every image, good
ones included, so an evaluation that takes references from `train_good` must drop them from the test
set (otherwise each reference scores itself as perfectly normal).
"""

from __future__ import annotations

import os
from pathlib import Path

from instruct_data.datasets.base import (
    ALL_CATEGORIES,
    GOOD,
    DatasetError,
    Sample,
    check_root,
    index_masks,
    subdirs,
)
from tools.image_io import list_images

GOOD_NAMES = frozenset({"good", "ok", "normal"})
BAD_NAMES = frozenset({"bad", "ng", "nok", "anomalous", "abnormal", "anomaly", "anomalies"})
MASK_NAMES = frozenset({"masks", "mask", "ground_truth"})


def _is_bad_name(name: str) -> bool:
    low = name.lower()
    return low in BAD_NAMES or low.startswith("defect")


class FolderDataset:
    """good/ + bad/ folders (names matched case-insensitively), optional masks/; one category."""

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = check_root(root)
        folders = subdirs(self.root)
        self._good_dirs = [d for d in folders if d.name.lower() in GOOD_NAMES]
        self._bad_dirs = [d for d in folders if _is_bad_name(d.name)]
        mask_dirs = [d for d in folders if d.name.lower() in MASK_NAMES]
        self._mask_root: Path | None = mask_dirs[0] if mask_dirs else None
        if not self._good_dirs and not self._bad_dirs:
            seen = ", ".join(d.name for d in folders) or "no sub-folders"
            raise DatasetError(
                f"'{self.root}' is not a folder dataset: expected good/ (or ok/, normal/) and bad/ "
                f"(or ng/, anomalous/, defect*/) sub-folders; found: {seen}"
            )
        self._mask_index: dict[Path, dict[str, Path]] = {}

    def __repr__(self) -> str:
        return f"FolderDataset('{self.root}')"

    @property
    def category(self) -> str:
        return self.root.name

    def categories(self) -> list[str]:
        return [self.category]

    def defect_types(self, category: str | None = None) -> list[str]:
        self._check(category)
        return sorted({s.defect_type for s in self._bad_samples()})

    def train_good(self, category: str | None = None) -> list[Path]:
        """Every good image (see the module docstring about overlap with the test set)."""
        self._check(category)
        images = [p for d in self._good_dirs for p in list_images(d, recursive=True)]
        if not images:
            raise DatasetError(f"no good images in '{self.root}' (looked in good/, ok/, normal/)")
        return images

    def test_samples(self, category: str | None = None) -> list[Sample]:
        """Every image: good ones first, then the anomalous ones with their masks where found."""
        self._check(category)
        good = [
            Sample(p, False, GOOD, self.category, None)
            for d in self._good_dirs
            for p in list_images(d, recursive=True)
        ]
        samples = good + self._bad_samples()
        if not samples:
            raise DatasetError(f"no images in the good/bad folders of '{self.root}'")
        return samples

    def _bad_samples(self) -> list[Sample]:
        samples = []
        for bad_dir in self._bad_dirs:
            for p in list_images(bad_dir, recursive=True):
                inner = p.parent.relative_to(bad_dir).parts
                defect = inner[0] if inner else bad_dir.name
                samples.append(Sample(p, True, defect, self.category, self._find_mask(p, bad_dir)))
        return samples

    def _find_mask(self, image: Path, bad_dir: Path) -> Path | None:
        """Mirrored tree (masks/bad/scratch/), tree below the bad folder (masks/scratch/), then flat."""
        if self._mask_root is None:
            return None
        candidates = [
            self._mask_root / image.parent.relative_to(self.root),
            self._mask_root / image.parent.relative_to(bad_dir),
            self._mask_root,
        ]
        for folder in candidates:
            if folder not in self._mask_index:
                self._mask_index[folder] = index_masks(folder)
            found = self._mask_index[folder].get(image.stem)
            if found is not None and not found.is_dir():
                return found
        return None

    def _check(self, category: str | None) -> None:
        if category in (None, ALL_CATEGORIES, self.category):
            return
        raise DatasetError(
            f"unknown category '{category}' in '{self.root}'; a folder dataset has one: '{self.category}'"
        )
