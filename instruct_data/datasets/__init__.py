"""Dataset readers behind one interface (`Dataset`), and `open_dataset`, which picks the layout.

Entries are lazy so that listing the layouts imports no reader code.
"""

from __future__ import annotations

import os

from instruct_data.datasets.base import ALL_CATEGORIES, GOOD, Dataset, DatasetError, Sample, check_root
from tools.registry import Registry

DATASETS: Registry[Dataset] = Registry("dataset")

DATASETS.register_lazy(
    "mvtec",
    "instruct_data.datasets.mvtec:MVTecDataset",
    "MVTec AD layout: <category>/train/good, test/<defect>, ground_truth/<defect>/<name>_mask.png",
)
DATASETS.register_lazy(
    "folder",
    "instruct_data.datasets.folder:FolderDataset",
    "plain folders: good/ (ok/, normal/) and bad/ (ng/, anomalous/, defect*/), optional masks/",
)


def open_dataset(root: str | os.PathLike[str], layout: str | None = None) -> Dataset:
    """Open `root` with the named layout, or detect it: MVTec when train/good or test/ sits at the root
    or one level down, otherwise the plain good/bad folder layout."""
    if layout is not None:
        return DATASETS.build(layout, root=root)
    path = check_root(root)
    from instruct_data.datasets.mvtec import is_mvtec_root

    if is_mvtec_root(path):
        return DATASETS.build("mvtec", root=path)
    try:
        return DATASETS.build("folder", root=path)
    except DatasetError:
        raise DatasetError(
            f"cannot tell the dataset layout of '{path}': expected MVTec (train/good/ and test/<defect>/, "
            "at the root or in category sub-folders) or plain folders (good/ and bad/)"
        ) from None


def categories_with_tests(root: str | os.PathLike[str]) -> tuple[list[str], list[str]]:
    """(categories with test images, folders skipped) under `root`: a folder holding good references
    only (a product kept for audits) has nothing to evaluate."""
    dataset = open_dataset(root)
    found, skipped = [], []
    for cat in dataset.categories():
        try:
            ok = bool(dataset.test_samples(cat))
        except DatasetError:
            ok = False
        (found if ok else skipped).append(cat)
    return found, skipped


__all__ = [
    "ALL_CATEGORIES", "DATASETS", "GOOD", "Dataset", "DatasetError", "Sample", "categories_with_tests", "open_dataset",
]
