"""A small MVTec-layout data set of procedural plates with synthesized defects, for training smoke runs.

Why: the training pipeline (expert stage 1, instruction stage 2) needs labelled images with masks,
and no real data set can be downloaded here. Brushed plates from `demo_case` are drawn at
`render_size`, a defect from `anomalies` is drawn at that size (where its shape is meaningful), and
both image and mask are shrunk to `size`, so tiny models train on visible defects in seconds.

Layout written under `<root>/<category>/` (what `instruct_data.datasets.open_dataset` reads):
`train/good/`, `test/good/`, `test/<kind>/` and `ground_truth/<kind>/<name>_mask.png`.
The same seed gives the same files.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
from PIL import Image

from instruct_data.synthesis.layout import SetCounts

#: Kinds that stay visible when a plate is shrunk to a few dozen pixels.
VISIBLE_KINDS: tuple[str, ...] = ("hole", "missing", "spots", "stain")


def _shrink(image: np.ndarray, size: int) -> np.ndarray:
    return np.asarray(Image.fromarray(image).resize((size, size), Image.Resampling.BOX))


def _shrink_mask(mask: np.ndarray, size: int) -> np.ndarray:
    area = np.asarray(Image.fromarray(mask.astype(np.uint8) * 255).resize((size, size), Image.Resampling.BOX))
    small = area >= 64  # a pixel a quarter covered by the defect counts as defective
    if not small.any():  # a tiny defect keeps at least its strongest pixel
        small = area == area.max()
    return small


def _plate(rng: np.random.Generator, render_size: int) -> np.ndarray:
    from instruct_data.synthesis.demo_case import brushed_plate

    return (np.clip(brushed_plate(rng, render_size), 0, 1) * 255).round().astype(np.uint8)


def _visible_defect(
    rng: np.random.Generator, kind: str, render_size: int, size: int, min_area: float, min_contrast: float
) -> tuple[np.ndarray, np.ndarray]:
    """A shrunk defective plate and its mask; redrawn (up to 20 times) until the defect is visible."""
    from instruct_data.synthesis.anomalies import synthesize

    best: tuple[float, np.ndarray, np.ndarray] | None = None
    for _ in range(20):
        clean = _plate(rng, render_size)
        result = synthesize(clean, kind, rng)
        image, mask = _shrink(result.image, size), _shrink_mask(result.mask, size)
        change = np.abs(image.astype(np.float32) - _shrink(clean, size).astype(np.float32)).mean(-1) / 255
        contrast = float(change[mask].mean())
        if mask.mean() >= min_area and contrast >= min_contrast:
            return image, mask
        score = mask.mean() * contrast
        if best is None or score > best[0]:
            best = (score, image, mask)
    assert best is not None
    return best[1], best[2]


def make_plate_dataset(
    root: str | Path,
    train_good: int = 40,
    test_good: int = 40,
    test_bad: int = 40,
    size: int = 40,
    render_size: int = 128,
    kinds: Sequence[str] = VISIBLE_KINDS,
    seed: int = 0,
    category: str = "plate",
    min_area: float = 0.01,
    min_contrast: float = 0.08,
    progress: Callable[[int], None] | None = None,
) -> SetCounts:
    """Write `train_good` + `test_good` good plates and `test_bad` defective ones (kinds cycled).

    A defect that covers less than `min_area` of the shrunk image, or changes it by less than
    `min_contrast` (mean absolute change inside the mask, 0..1), is drawn again: at a few dozen
    pixels such a defect is invisible, and its "defective" label would be noise.
    """
    from instruct_data.synthesis.anomalies import ANOMALIES

    unknown = [k for k in kinds if k not in ANOMALIES]
    if unknown or not kinds:
        raise ValueError(
            f"unknown anomaly kind(s) {unknown or '(none given)'}; known: {', '.join(ANOMALIES.names())}"
        )
    if min(train_good, test_good, test_bad) < 0 or size < 8 or render_size < size:
        raise ValueError("counts must be >= 0, size >= 8 and render_size >= size")
    cat = Path(root) / category
    counts = SetCounts(root=cat)
    for split, n in (("train", train_good), ("test", test_good)):
        folder = cat / split / "good"
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(n):
            rng = np.random.default_rng([seed, 0 if split == "train" else 1, i])
            Image.fromarray(_shrink(_plate(rng, render_size), size)).save(folder / f"{i:04d}.png")
            if progress:
                progress(1)
        setattr(counts, f"{split}_good", n)
    for i in range(test_bad):
        kind = kinds[i % len(kinds)]
        rng = np.random.default_rng([seed, 2, i])
        image, mask = _visible_defect(rng, kind, render_size, size, min_area, min_contrast)
        (cat / "test" / kind).mkdir(parents=True, exist_ok=True)
        (cat / "ground_truth" / kind).mkdir(parents=True, exist_ok=True)
        Image.fromarray(image).save(cat / "test" / kind / f"{i:04d}.png")
        Image.fromarray(mask.astype(np.uint8) * 255).save(cat / "ground_truth" / kind / f"{i:04d}_mask.png")
        counts.test_bad[kind] = counts.test_bad.get(kind, 0) + 1
        if progress:
            progress(1)
    return counts
