"""Detection benchmark on MVTec-layout data: k-shot references drawn with a seed, standard metrics,
and decisions made exactly as `inspect` and `report` make them.

Each category's test split is treated as the folder a user would inspect: one `Pipeline` is fitted on
the references for that many images (so `auto` chooses the detector as `report` does), learns from
the batch and sets its boundary where `report` would (`Pipeline.uses_batch`, `Pipeline.fit_batch`:
the same seeded, order-independent sample), and every image is scored and decided by the pipeline
(`Pipeline.score`, `Pipeline.decide`). So every `at_threshold` figure is what a user gets.

Image metrics use every test image (or a stratified `limit` of them); pixel metrics compare anomaly
maps and ground-truth masks resized so their long side is `metric_size` (maps bilinear, masks
nearest), the usual practice that keeps memory bounded on large data sets. Throughput counts the
scoring (and, in batch mode, learning from the batch), not loading the model or reading the files.
"""

from __future__ import annotations

import inspect
import random
import sys
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from agent.inspection import DecisionSettings, InspectionSettings, Pipeline
from evals.metrics import decision_scores, f1_max, image_auroc, iou, pixel_metrics
from instruct_data.datasets import Dataset, Sample, open_dataset
from tools.content_key import file_key
from tools.detectors import DETECTORS
from tools.detectors.choice import choose_detector
from tools.image_io import ImageLoadError, load_image
from tools.lazy_images import LazyImages


@dataclass
class DetectionBenchmarkSettings:
    data: str
    category: str | None = None
    shots: int = 4
    seed: int = 0
    detector: str = "auto"  # as `report` chooses: the batch detector (with the references) for a test split
    detector_options: dict[str, Any] = field(default_factory=dict)
    metric_size: int = 256
    fpr_limit: float = 0.3
    calibration: str | None = None  # as `report`: None = batch for a batch detector, else references
    false_alarm_rate: float = 0.05
    review: bool = True  # a review band under the boundary
    limit: int | None = None  # a stratified seeded sample of this many test images in all


def draw_references(dataset: Dataset, category: str, shots: int, seed: int) -> list[Path]:
    """`shots` good training images chosen reproducibly by `seed` (sorted list, then a seeded sample);
    none for `shots` 0 (zero-shot)."""
    if shots <= 0:
        return []
    pool = sorted(dataset.train_good(category))
    if shots > len(pool):
        raise ValueError(f"category {category!r} has {len(pool)} good training images, fewer than --shots {shots}")
    return sorted(random.Random(seed).sample(pool, shots))


def stratified_limit(by_category: dict[str, list[Sample]], limit: int | None, seed: int) -> dict[str, list[Sample]]:
    """At most `limit` samples in all, drawn with `seed`, stratified over categories and, within each,
    over good and every defect type: each group keeps its share of the whole (largest remainders), and
    every group keeps at least one sample when the limit allows, so the share of good images, and with
    it the batch a calibration sees, stays as in the full set. Each category keeps its samples in their
    order."""
    if limit is None or limit >= sum(len(v) for v in by_category.values()):
        return by_category
    if limit <= 0:
        raise ValueError(f"--limit must be positive, got {limit}")
    rng = random.Random(seed)
    groups: list[list[Sample]] = []
    for cat in sorted(by_category):
        per_type: dict[str, list[Sample]] = defaultdict(list)
        for s in by_category[cat]:
            per_type[s.defect_type].append(s)
        for kind in sorted(per_type):
            members = list(per_type[kind])
            rng.shuffle(members)
            groups.append(members)
    total = sum(len(g) for g in groups)
    quota = [min(len(g), max(1 if limit >= len(groups) else 0, int(limit * len(g) / total))) for g in groups]
    order = sorted(range(len(groups)), key=lambda i: -(limit * len(groups[i]) / total - int(limit * len(groups[i]) / total)))
    while sum(quota) < limit:  # largest remainders first, then wherever samples are left
        grew = False
        for i in order:
            if sum(quota) < limit and quota[i] < len(groups[i]):
                quota[i] += 1
                grew = True
        if not grew:
            break
    while sum(quota) > limit:  # the minimum of one per group overshot: take from the largest groups
        quota[max(range(len(quota)), key=lambda i: quota[i])] -= 1
    chosen = {id(s) for g, q in zip(groups, quota, strict=True) for s in g[:q]}
    return {cat: [s for s in samples if id(s) in chosen] for cat, samples in by_category.items()}


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


def category_pipeline(settings: DetectionBenchmarkSettings, category: str, n_images: int, warn: Callable[[str], None]) -> Pipeline:
    """The pipeline `report` would build for this category's folder of `n_images` (not yet fitted)."""
    options = dict(settings.detector_options)
    name, _ = choose_detector(settings.detector, settings.shots, n_images)
    factory = DETECTORS.get(name)
    if "category" in inspect.signature(factory).parameters and "category" not in options:
        options["category"] = category  # text-prompted detectors name the object after the category
    decision = DecisionSettings(settings.false_alarm_rate, settings.review, settings.calibration)
    return Pipeline(InspectionSettings(settings.detector, options, decision=decision), warn=warn)


def evaluate_category(
    dataset: Dataset,
    category: str,
    settings: DetectionBenchmarkSettings,
    progress: Callable[[int], None] | None = None,
    warn: Callable[[str], None] = print,
    samples: list[Sample] | None = None,
) -> dict[str, Any]:
    """Fit on k references of one category, inspect its test set (or `samples` of it) as `report`
    would, compute the metrics."""
    ref_paths = draw_references(dataset, category, settings.shots, settings.seed)
    ref_set = {Path(p).resolve() for p in ref_paths}
    if samples is None:
        samples = dataset.test_samples(category)
    samples = [s for s in samples if Path(s.image_path).resolve() not in ref_set]
    pipeline = category_pipeline(settings, category, len(samples), warn)
    t0 = time.perf_counter()
    references = [load_image(p) for p in ref_paths]
    pipeline.fit(references, n_images=len(samples))
    fit_seconds = time.perf_counter() - t0
    assert pipeline.detector is not None
    paths = [str(s.image_path) for s in samples]
    t = time.perf_counter()
    if pipeline.uses_batch(len(samples)):
        pipeline.fit_batch(LazyImages(paths, load_image), paths)
    score_seconds = time.perf_counter() - t
    kept: list[Sample] = []
    scores, raws, verdicts, maps, masks, pred_masks = [], [], [], [], [], []
    failed: list[str] = []
    megapixels = 0.0
    for s in samples:
        try:
            image = load_image(s.image_path)
        except ImageLoadError as err:
            failed.append(str(err))
            warn(f"skipped: {err}")
            if progress:
                progress(1)
            continue
        t = time.perf_counter()
        ev = pipeline.score(str(s.image_path), image)
        d = pipeline.decide(ev)
        score_seconds += time.perf_counter() - t
        megapixels += image.size[0] * image.size[1] / 1e6
        kept.append(s)
        scores.append(d.pred_score)
        raws.append(ev.raw)
        verdicts.append(d.verdict)
        gt = s.load_mask(image.size)
        if gt is None:
            gt = np.full((image.size[1], image.size[0]), bool(s.gt_label))
        maps.append(_resize_for_metrics(d.anomaly_map, settings.metric_size, nearest=False))
        masks.append(_resize_for_metrics(gt, settings.metric_size, nearest=True))
        pred_masks.append(_resize_for_metrics(d.mask, settings.metric_size, nearest=True))
        if progress:
            progress(1)

    labels = np.array([s.gt_label for s in kept], dtype=bool)
    score_arr = np.array(scores, dtype=np.float64)
    cal = pipeline.calibration
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
        "throughput_ips": len(kept) / score_seconds if score_seconds > 0 else float("nan"),
        "seconds_per_megapixel": score_seconds / megapixels if megapixels > 0 else float("nan"),
        "fit_seconds": fit_seconds,
        "n_images": len(kept),
        "n_failed": len(failed),
        "failed": failed,
        "references": [str(p) for p in ref_paths],
        "detector": pipeline.detector.name,
        "detector_settings": pipeline.detector.settings(),
        "calibration": cal.to_dict() if cal is not None else {"method": "the detector's own", **pipeline.detector.calibration()},
        "good_samples": [round(float(g), 6) for g in pipeline.good_samples],  # the references' held-out final scores (raw)
        "good_samples_exchangeable": not pipeline.detector.learns_from_references,  # may they join a batch calibration
        "calibration_seed": int(pipeline.settings.detector_options.get("seed", 0)),  # of the batch sample
        "images": [  # per image, to study ranking and calibration without rerunning (`evals.redecide`)
            {"path": str(s.image_path), "key": file_key(s.image_path), "defect_type": s.defect_type,
             "raw_score": round(float(r), 6), "pred_score": round(float(p), 6), "verdict": v}
            for s, r, p, v in zip(kept, raws, score_arr, verdicts, strict=True)
        ],
    }


class ProgressLines:
    """Progress as plain lines, one every 10 % (`eval: 30% (18/60 images)`), for logs and pipes where
    no bar is drawn."""

    def __init__(self, total: int, desc: str = "eval", stream: Any = None) -> None:
        self.total, self.desc, self.done, self.next_tenth = max(total, 1), desc, 0, 1
        self.stream = stream if stream is not None else sys.stderr

    def update(self, n: int = 1) -> None:
        self.done += n
        while self.next_tenth <= 10 and self.done * 10 >= self.next_tenth * self.total:
            print(f"{self.desc}: {self.next_tenth * 10}% ({self.done}/{self.total} images)", file=self.stream, flush=True)
            self.next_tenth += 1

    def write(self, msg: str) -> None:
        print(msg, file=self.stream, flush=True)


def run_detection_benchmark(settings: DetectionBenchmarkSettings, show_progress: bool = True, progress_lines: bool = False) -> dict[str, Any]:
    """Evaluate every selected category; top-level metrics are the mean over categories. A bar is
    drawn with `show_progress` (a terminal); else `progress_lines` prints a line every 10 %."""
    from tqdm import tqdm

    dataset = open_dataset(settings.data)
    categories = dataset.categories() if settings.category in (None, "all") else [settings.category]
    if settings.category not in (None, "all") and settings.category not in dataset.categories():
        raise ValueError(f"no category {settings.category!r} in {settings.data}; found: {', '.join(dataset.categories())}")
    chosen = stratified_limit({c: dataset.test_samples(c) for c in categories}, settings.limit, settings.seed)
    total = sum(len(v) for v in chosen.values())
    per_category = []
    bar: Any = tqdm(total=total, desc="eval", unit="img", leave=False) if show_progress else ProgressLines(total) if progress_lines else None
    try:
        for cat in categories:
            if bar is not None and hasattr(bar, "set_postfix_str"):
                bar.set_postfix_str(cat)
            per_category.append(evaluate_category(
                dataset, cat, settings, progress=bar.update if bar is not None else None,
                warn=bar.write if bar is not None else print, samples=chosen[cat],
            ))
    finally:
        if bar is not None and hasattr(bar, "close"):
            bar.close()
    keys = ("image_AUROC", "pixel_AUROC", "pixel_AUPRO", "image_F1Max", "pixel_F1Max", "throughput_ips", "seconds_per_megapixel")
    result: dict[str, Any] = {k: float(np.nanmean([c[k] for c in per_category])) for k in keys}
    if len(per_category) == 1:
        result["per_defect_image_AUROC"] = per_category[0]["per_defect_image_AUROC"]
    result["categories"] = per_category
    result["settings"] = asdict(settings)
    return result
