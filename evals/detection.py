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

from evals.metrics import decision_scores, f1_max, image_auroc, iou, pixel_metrics
from instruct_data.datasets import Dataset, Sample, open_dataset
from tools.detectors import DETECTORS, Detector
from tools.detectors.calibration import decide_calibration, good_samples
from tools.detectors.choice import choose_detector
from tools.image_io import ImageLoadError, load_image
from tools.lazy_images import LazyImages
from tools.regions import peak_relative_mask


@dataclass
class DetectionBenchmarkSettings:
    data: str
    category: str | None = None
    shots: int = 4
    seed: int = 0
    detector: str = "auto"  # see `tools.detectors.choice`: the batch detector (with the references) here
    detector_options: dict[str, Any] = field(default_factory=dict)
    metric_size: int = 256
    batch_size: int = 8
    fpr_limit: float = 0.3
    calibration: str = "batch"  # "references" (leave-one-out) or "batch" (the test split, unlabeled)
    false_alarm_rate: float = 0.05
    review: bool = True  # a review band under the boundary


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
    ref_set = {Path(p).resolve() for p in ref_paths}
    samples = [s for s in dataset.test_samples(category) if Path(s.image_path).resolve() not in ref_set]
    name, why = choose_detector(settings.detector, len(ref_paths), len(samples))
    if why:
        warn(why)
    options = dict(settings.detector_options)
    factory = DETECTORS.get(name)
    if "category" in inspect.signature(factory).parameters and "category" not in options:
        options["category"] = category  # text-prompted detectors name the object after the category
    detector: Detector = DETECTORS.build(name, **options)
    t0 = time.perf_counter()
    references = [load_image(p) for p in ref_paths]
    detector.fit(references)
    fit_seconds = time.perf_counter() - t0

    batch_seconds = 0.0
    if detector.needs_batch:  # the test split is scored as one unlabeled batch
        t = time.perf_counter()
        detector.fit_batch(LazyImages([s.image_path for s in samples], load_image))
        batch_seconds = time.perf_counter() - t
    kept: list[Sample] = []
    scores, raws, maps, masks, raw_maps = [], [], [], [], []
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
                raws.append(out.raw_score)
                gt = s.load_mask(im.size)
                if gt is None:
                    gt = np.full((im.size[1], im.size[0]), bool(s.gt_label))
                maps.append(_resize_for_metrics(out.anomaly_map, settings.metric_size, nearest=False))
                masks.append(_resize_for_metrics(gt, settings.metric_size, nearest=True))
                raw_map = out.extras.get("raw_map")
                raw_maps.append(None if raw_map is None else _resize_for_metrics(raw_map, settings.metric_size, nearest=False))
        if progress:
            progress(len(samples[start : start + settings.batch_size]))

    labels = np.array([s.gt_label for s in kept], dtype=bool)
    score_arr = np.array(scores, dtype=np.float64)
    raw_arr = np.array(raws, dtype=np.float64)
    good = good_samples(detector, references)
    cal = decide_calibration(
        settings.calibration, good, raw_arr, settings.false_alarm_rate, 2.0 if settings.review else None,
        exchangeable_good=not detector.learns_from_references,
    )
    if cal is not None:
        verdicts = [cal.verdict(float(r)) for r in raw_arr]
        pred_masks = [_decided_mask(m, cal.boundary, maps[i], v) for i, (m, v) in enumerate(zip(raw_maps, verdicts, strict=True))]
    else:  # the detector's own boundary (no good samples to calibrate from)
        verdicts = ["defective" if p > detector.threshold else "good" for p in score_arr]
        pred_masks = [(maps[i] > detector.pixel_threshold) & (v == "defective") for i, v in enumerate(verdicts)]
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
        "at_threshold": decision_scores(labels, verdicts, cal.false_alarm_rate if cal is not None else float("nan")),
        "defect_IoU_at_threshold": iou([pred_masks[i] for i in defective], [masks[i] for i in defective]),
        "per_defect_image_AUROC": _auroc_by_defect(kept, score_arr),
        "throughput_ips": len(kept) / (infer_seconds + batch_seconds) if infer_seconds > 0 else float("nan"),
        "fit_seconds": fit_seconds,
        "n_images": len(kept),
        "n_failed": len(failed),
        "failed": failed,
        "references": [str(p) for p in ref_paths],
        "detector": name,
        "detector_settings": detector.settings(),
        "calibration": cal.to_dict() if cal is not None else {"method": "the detector's own", **detector.calibration()},
        "good_samples": [round(float(g), 6) for g in good],  # the references' held-out scores (raw)
        "good_samples_exchangeable": not detector.learns_from_references,  # may they join a batch calibration
        "images": [  # per image, to study ranking and calibration without rerunning
            {"path": str(s.image_path), "defect_type": s.defect_type, "raw_score": round(float(r), 6),
             "pred_score": round(float(p), 6), "verdict": v}
            for s, r, p, v in zip(kept, raw_arr, score_arr, verdicts, strict=True)
        ],
    }


def _decided_mask(raw_map: np.ndarray | None, boundary: float, calibrated: np.ndarray, verdict: str) -> np.ndarray:
    """The predicted defect mask at metric size: empty unless the verdict is `defective`."""
    if verdict != "defective":
        return np.zeros(calibrated.shape, dtype=bool)
    if raw_map is None:
        return calibrated > 0.5
    return peak_relative_mask(raw_map, boundary)


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
