"""Detection metrics of the D&R benchmark: per class, then the unweighted mean over classes.

Accuracy, precision, recall and F1 are averaged over classes as the Anomaly-OV paper reports them;
miss rate and overkill rate (MMAD's names) and image AUROC (from the records' `pred_score`) are
averaged the same way, so one table reads consistently. A class where a metric is undefined (recall
without anomalous images, AUROC without both kinds) is left out of that metric's mean. Pooled values
over all images are reported next to the means.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from evals.metrics import binary_scores_at, image_auroc

MEAN_KEYS = ("accuracy", "precision", "recall", "f1", "miss_rate", "overkill_rate", "image_AUROC")


def _nanmean(values: list[float]) -> float:
    finite = [v for v in values if v is not None and not math.isnan(v)]
    return float(sum(finite) / len(finite)) if finite else math.nan


def class_scores(labels: Sequence[bool], preds: Sequence[bool], scores: Sequence[float]) -> dict[str, Any]:
    """binary_scores_at plus image_AUROC and the image count for one class (or the pool)."""
    y = np.asarray(labels, dtype=bool)
    out: dict[str, Any] = binary_scores_at(y, np.asarray(preds, dtype=bool))
    s = np.asarray(scores, dtype=np.float64)
    out["image_AUROC"] = image_auroc(y, s) if y.any() and (~y).any() and np.isfinite(s).all() else math.nan
    out["n_images"] = int(y.size)
    return out


def detection_metrics(
    classes: Sequence[str], labels: Sequence[bool], preds: Sequence[bool], scores: Sequence[float]
) -> dict[str, Any]:
    """{metric: mean over classes} for MEAN_KEYS, plus `per_class` and `pooled`.

    `preds` are the parsed answers with unparsable ones already counted as wrong (see runner).
    """
    if not (len(classes) == len(labels) == len(preds) == len(scores)):
        raise ValueError("classes, labels, preds and scores must have the same length")
    per_class: dict[str, dict[str, Any]] = {}
    for cls in sorted(set(classes)):
        idx = [i for i, c in enumerate(classes) if c == cls]
        per_class[cls] = class_scores(
            [labels[i] for i in idx], [preds[i] for i in idx], [scores[i] for i in idx]
        )
    result: dict[str, Any] = {k: _nanmean([per_class[c][k] for c in per_class]) for k in MEAN_KEYS}
    result["per_class"] = per_class
    result["pooled"] = class_scores(labels, preds, scores) if len(labels) else {}
    return result
