"""A tiny synthetic MVTec-layout tree (96 px brushed plates, drawn scratches with masks) for QA tests."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from instruct_data.synthesis.demo_case import brushed_plate, draw_scratch

SIZE = 96


def _save(arr: np.ndarray, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray((np.clip(arr, 0, 1) * 255).round().astype(np.uint8)).save(path)


def write_tree(
    root: Path,
    categories: tuple[str, ...] = ("plate",),
    n_train: int = 4,
    n_good: int = 3,
    n_bad: int = 3,
    seed: int = 0,
) -> Path:
    """root/<cat>/{train/good, test/good, test/scratch, ground_truth/scratch}; the last scratch has no mask."""
    rng = np.random.default_rng(seed)
    for cat in categories:
        base = root / cat
        for i in range(n_train):
            _save(brushed_plate(rng, SIZE), base / "train" / "good" / f"{i:03d}.png")
        for i in range(n_good):
            _save(brushed_plate(rng, SIZE), base / "test" / "good" / f"{i:03d}.png")
        for i in range(n_bad):
            img, mask = draw_scratch(brushed_plate(rng, SIZE), rng)
            _save(img, base / "test" / "scratch" / f"{i:03d}.png")
            if i < n_bad - 1:
                _save(mask.astype(np.float32), base / "ground_truth" / "scratch" / f"{i:03d}_mask.png")
    return root
