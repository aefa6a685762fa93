"""Detection benchmark on MVTec-layout data: k-shot references drawn with a seed, standard metrics.

Image metrics use every test image; pixel metrics compare anomaly maps and ground-truth masks resized
so their long side is `metric_size` (maps bilinear, masks nearest), the usual practice that keeps
memory bounded on large data sets. Throughput counts `predict` (and, for batch detectors, `fit_batch` over
the test split), not model loading or reading the files.
"""

from __future__ import annotations

import inspect
import random
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from evals.metrics import binary_scores_at, f1_max, image_auroc, iou, pixel_metrics
from instruct_data.datasets import Dataset, Sample, open_dataset
from tools.detectors import DETECTORS, Detector
from tools.image_io import ImageLoadError, load_image
from tools.lazy_images import LazyImages


@dataclass
class DetectionBenchmarkSettings:
    data: str
    category: str | None = None
    shots: int = 4
    seed: int = 0
    detector: str = "refmatch"
    detector_options: dict[str, Any] = field(default_factory=dict)
    metric_size: int = 256
    batch_size: int = 8
    fpr_limit: float = 0.3


def draw_references(dataset: Dataset, category: str, shots: int, seed: int) -> list[Path]:
    """`shots` good training images chosen reproducibly by `seed` (sorted list, then a seeded sample);
    none for `shots` 0 (zero-shot)."""
    if shots <= 0:
        return []
    pool = sorted(dataset.train_good(category))
    if shots > len(pool):
        raise ValueError(f"category {category!r} has {len(pool)} good training images, fewer than --shots {shots}")
    return sorted(random.Random(seed).sample(pool, shots))


def _resize_for_metrics(array: np.ndarray, long_side: int, nearest: bool) -> np.ndarray:
    h, w = array.shape
    scale = long_side / max(h, w)
    if scale >= 1:
        return array
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    if nearest:
        return np.asarray(Image.fromarray(array.astype(np.uint8) * 255).resize(size, Image.Resampling.NEAREST)) > 127
    return np.asarray(Image.fromarray(array.astype(np.float32), mode="F").resize(size, Image.Resampling.BILINEAR))


def _auroc_by_defect(samples: list[Sample], scores: np.ndarray) -> dict[str, float]:
    good = np.array([not s.gt_label for s in samples])
    out = {}
    for defect in sorted({s.defect_type for s in samples if s.gt_label}):
        sel = good | np.array([s.defect_type == defect for s in samples])
        labels = np.array([s.gt_label for s in samples])[sel]
        out[defect] = image_auroc(labels, scores[sel])
    return out


def evaluate_category(
    dataset: Dataset,
    category: str,
    settings: DetectionBenchmarkSettings,
    progress: Callable[[int], None] | None = None,
    warn: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Fit on k references of one category, score its test set, compute the metrics."""
    ref_paths = draw_references(dataset, category, settings.shots, settings.seed)
    options = dict(settings.detector_options)
    factory = DETECTORS.get(settings.detector)
    if "category" in inspect.signature(factory).parameters and "category" not in options:
        options["category"] = category  # text-prompted detectors name the object after the category
    detector: Detector = DETECTORS.build(settings.detector, **options)
    t0 = time.perf_counter()
    detector.fit([load_image(p) for p in ref_paths])
    fit_seconds = time.perf_counter() - t0

    ref_set = {Path(p).resolve() for p in ref_paths}
    samples = [s for s in dataset.test_samples(category) if Path(s.image_path).resolve() not in ref_set]
    batch_seconds = 0.0
    if detector.needs_batch:  # the test split is scored as one unlabeled batch
        t = time.perf_counter()
        detector.fit_batch(LazyImages([s.image_path for s in samples], load_image))
        batch_seconds = time.perf_counter() - t
    kept: list[Sample] = []
    scores, preds, maps, masks, pred_masks = [], [], [], [], []
    infer_seconds, failed = 0.0, []
    for start in range(0, len(samples), settings.batch_size):
        batch_samples, images = [], []
        for s in samples[start : start + settings.batch_size]:
            try:
                images.append(load_image(s.image_path))
                batch_samples.append(s)
            except ImageLoadError as err:
                failed.append(str(err))
                warn(f"skipped: {err}")
        if images:
            t = time.perf_counter()
            outputs = detector.predict(images)
            infer_seconds += time.perf_counter() - t
            for s, im, out in zip(batch_samples, images, outputs, strict=True):
                kept.append(s)
                scores.append(out.pred_score)
                preds.append(out.pred_score > detector.threshold)
                gt = s.load_mask(im.size)
                if gt is None:
                    gt = np.full((im.size[1], im.size[0]), bool(s.gt_label))
                maps.append(_resize_for_metrics(out.anomaly_map, settings.metric_size, nearest=False))
                masks.append(_resize_for_metrics(gt, settings.metric_size, nearest=True))
                predicted = out.predicted_mask(detector.pixel_threshold)
                pred_masks.append(_resize_for_metrics(predicted, settings.metric_size, nearest=True))
        if progress:
            progress(len(samples[start : start + settings.batch_size]))

    labels = np.array([s.gt_label for s in kept], dtype=bool)
    score_arr = np.array(scores, dtype=np.float64)
    f1, _ = f1_max(labels, score_arr)
    px = pixel_metrics(masks, maps, fpr_limit=settings.fpr_limit)
    defective = [i for i, s in enumerate(kept) if s.gt_label]
    return {
        "category": category,
        "image_AUROC": image_auroc(labels, score_arr),
        "pixel_AUROC": px["pixel_auroc"],
        "pixel_AUPRO": px["pixel_aupro"],
        "image_F1Max": f1,
        "pixel_F1Max": px["pixel_f1_max"],
        "at_threshold": binary_scores_at(labels, np.array(preds, dtype=bool)),
        "defect_IoU_at_threshold": iou([pred_masks[i] for i in defective], [masks[i] for i in defective]),
        "per_defect_image_AUROC": _auroc_by_defect(kept, score_arr),
        "throughput_ips": len(kept) / (infer_seconds + batch_seconds) if infer_seconds > 0 else float("nan"),
        "fit_seconds": fit_seconds,
        "n_images": len(kept),
        "n_failed": len(failed),
        "failed": failed,
        "references": [str(p) for p in ref_paths],
        "detector_settings": detector.settings(),
        "calibration": detector.calibration(),
    }


def run_detection_benchmark(settings: DetectionBenchmarkSettings, show_progress: bool = True) -> dict[str, Any]:
    """Evaluate every selected category; top-level metrics are the mean over categories."""
    from tqdm import tqdm

    dataset = open_dataset(settings.data)
    categories = dataset.categories() if settings.category in (None, "all") else [settings.category]
    if settings.category not in (None, "all") and settings.category not in dataset.categories():
        raise ValueError(f"no category {settings.category!r} in {settings.data}; found: {', '.join(dataset.categories())}")
    total = sum(len(dataset.test_samples(c)) for c in categories)
    per_category = []
    with tqdm(total=total, desc="eval", unit="img", disable=not show_progress, leave=False) as bar:
        for cat in categories:
            bar.set_postfix_str(cat)
            per_category.append(evaluate_category(dataset, cat, settings, progress=bar.update, warn=bar.write))
    keys = ("image_AUROC", "pixel_AUROC", "pixel_AUPRO", "image_F1Max", "pixel_F1Max", "throughput_ips")
    result: dict[str, Any] = {k: float(np.nanmean([c[k] for c in per_category])) for k in keys}
    if len(per_category) == 1:
        result["per_defect_image_AUROC"] = per_category[0]["per_defect_image_AUROC"]
    result["categories"] = per_category
    result["settings"] = asdict(settings)
    return result
