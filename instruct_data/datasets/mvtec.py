"""Reader for the MVTec AD folder layout (also VisA/LOCO converted to it, and the user's own data).

    <category>/train/good/*.png
    <category>/test/good/*.png                      normal test images
    <category>/test/<defect>/<name>.png             anomalous test images
    <category>/ground_truth/<defect>/<name>_mask.png   (or <name>.png; any image extension)
    <category>/ground_truth/<defect>/<name>/*.png      MVTec LOCO: one file per region, OR-ed

The root is one category folder or a folder of category folders. With several categories, a method
called without `category` refuses rather than silently mixing them (a detector fitted on bottles and
tested on cables measures nothing); `category="all"` asks for all of them on purpose.
"""

from __future__ import annotations

import logging
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

logger = logging.getLogger(__name__)


def is_mvtec_category(folder: Path) -> bool:
    """A category folder holds train/good/ or test/."""
    return (folder / "train" / GOOD).is_dir() or (folder / "test").is_dir()


def is_mvtec_root(folder: str | os.PathLike[str]) -> bool:
    """True when `folder` is a category, or holds one directly below it."""
    path = Path(folder)
    return is_mvtec_category(path) or any(is_mvtec_category(d) for d in subdirs(path))


class MVTecDataset:
    """MVTec AD layout: one category folder, or a folder of category folders."""

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = check_root(root)
        if is_mvtec_category(self.root):
            self._dirs = {self.root.name: self.root}
        else:
            self._dirs = {d.name: d for d in subdirs(self.root) if is_mvtec_category(d)}
        if not self._dirs:
            raise DatasetError(
                f"no MVTec category under '{self.root}': expected train/good/ and test/<defect>/ there "
                "or in its sub-folders"
            )

    def __repr__(self) -> str:
        return f"MVTecDataset('{self.root}', categories={self.categories()})"

    def categories(self) -> list[str]:
        return sorted(self._dirs)

    def defect_types(self, category: str | None = None) -> list[str]:
        """Anomaly folder names under test/ (everything but good), sorted."""
        found = {
            d.name
            for cat in self._select(category)
            for d in subdirs(self._dirs[cat] / "test")
            if d.name != GOOD
        }
        return sorted(found)

    def train_good(self, category: str | None = None) -> list[Path]:
        """Normal training images (the references for few-shot detectors)."""
        images: list[Path] = []
        for cat in self._select(category):
            folder = self._dirs[cat] / "train" / GOOD
            found = list_images(folder) if folder.is_dir() else []
            if not found:
                raise DatasetError(f"no training images in '{folder}' (category '{cat}')")
            images.extend(found)
        return images

    def test_samples(self, category: str | None = None) -> list[Sample]:
        """Test images with labels and mask paths, ordered by category, defect type, file name."""
        samples: list[Sample] = []
        for cat in self._select(category):
            samples.extend(self._category_test(cat))
        return samples

    def _category_test(self, cat: str) -> list[Sample]:
        test_dir = self._dirs[cat] / "test"
        if not test_dir.is_dir():
            raise DatasetError(f"no test folder: '{test_dir}' is missing (category '{cat}')")
        samples: list[Sample] = []
        for defect_dir in subdirs(test_dir):
            defect = defect_dir.name
            if defect == GOOD:
                samples.extend(Sample(p, False, GOOD, cat, None) for p in list_images(defect_dir))
                continue
            masks = index_masks(self._dirs[cat] / "ground_truth" / defect)
            samples.extend(Sample(p, True, defect, cat, masks.get(p.stem)) for p in list_images(defect_dir))
        if not samples:
            raise DatasetError(f"no test images under '{test_dir}' (category '{cat}')")
        missing = sum(1 for s in samples if s.gt_label and s.mask_path is None)
        if missing:
            logger.warning(
                "%d of %d anomalous test images of '%s' have no mask under '%s'; pixel metrics skip them",
                missing,
                sum(s.gt_label for s in samples),
                cat,
                self._dirs[cat] / "ground_truth",
            )
        return samples

    def _select(self, category: str | None) -> list[str]:
        """Category names a call covers; refuses ambiguity instead of guessing."""
        if category is None:
            if len(self._dirs) == 1:
                return list(self._dirs)
            raise DatasetError(
                f"'{self.root}' holds {len(self._dirs)} categories ({', '.join(self.categories())}); "
                f"choose one with --category NAME, or '{ALL_CATEGORIES}'"
            )
        if category in self._dirs:
            return [category]
        if category == ALL_CATEGORIES:
            return self.categories()
        raise DatasetError(
            f"unknown category '{category}' in '{self.root}'; available: {', '.join(self.categories())}"
        )
