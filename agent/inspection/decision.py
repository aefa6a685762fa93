"""Step 4 of the loop, decide: where the boundary comes from, and the verdict, score, map and mask it
gives one image. `inspect`, `report`, `eval` (and through it the ablations) all decide here.

Where the boundary comes from (`DecisionSettings.calibration`):
- references: the final score of every reference, held out in turn (split-conformal; each reference
  counts once).
- batch: a seeded sample of at most `MAX_CALIBRATION_SAMPLE` images of the batch, drawn by content
  (`tools.content_key.seeded_sample`), so the sample does not depend on the order the images are
  listed in; the references' held-out scores check the batch's assumption that most of it is good
  (`tools.detectors.calibration.batch_contradiction`), and anchor the good model when it fails.
- neither possible: the detector's own boundary, and the record says no rate is promised.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image

from agent.inspection.settings import DecisionSettings
from tools.content_key import image_key, seeded_sample
from tools.detectors import Detector, DetectorOutput
from tools.detectors.calibration import Calibration
from tools.image_io import ImageLoadError
from tools.regions import mask_from_map, peak_relative_mask

#: batch mode calibrates on at most this many images of the batch (a seeded sample)
MAX_CALIBRATION_SAMPLE = 256
#: the record's `decision` block keeps these fields of a calibration
DECISION_FIELDS = ("method", "false_alarm_rate", "good_samples", "review_from_score", "note")


@dataclass
class Decision:
    """One image's verdict under a boundary: what the record carries."""

    verdict: str  # good, review or defective
    pred_score: float  # 0.5 at the boundary
    anomaly_map: np.ndarray  # calibrated map (0.5 at the boundary), image resolution
    mask: np.ndarray  # the outlined defect (empty unless the verdict is not good)
    info: dict[str, Any]  # the record's `decision` block


def decide(raw: float, raw_map: np.ndarray, cal: Calibration | None, output: DetectorOutput, detector: Detector) -> Decision:
    """The verdict of a final raw score and map under `cal`, or the detector's own boundary without it."""
    if cal is not None:
        verdict = cal.verdict(raw)
        anomaly_map = cal.apply(raw_map)
        mask = peak_relative_mask(raw_map, cal.boundary) if verdict != "good" else np.zeros(raw_map.shape, bool)
        info = {k: v for k, v in cal.to_dict().items() if k in DECISION_FIELDS}
        pred_score = float(cal.apply(raw))
    else:
        pred_score = float(output.pred_score)
        verdict = "defective" if pred_score > detector.threshold else "good"
        anomaly_map = output.anomaly_map
        mask = output.predicted_mask(detector.pixel_threshold) if verdict != "good" else np.zeros(raw_map.shape, bool)
        info = {"method": "the detector's own boundary", "false_alarm_rate": None, "good_samples": 0,
                "note": "no good samples to estimate a false-alarm rate from: give references or a batch"}
    return Decision(verdict, pred_score, anomaly_map, mask_from_map(mask.astype(np.float32), 0.5), info)


def reference_calibration(good: np.ndarray, d: DecisionSettings, method: str) -> Calibration | None:
    """References mode: split-conformal boundary from the references' held-out final scores."""
    if not np.asarray(good).size:
        return None
    return Calibration.from_good_scores(good, d.false_alarm_rate, d.review_factor, method=method)


def batch_calibration(
    scores: Sequence[float], d: DecisionSettings, known_good: np.ndarray | None, anchor: np.ndarray | None,
) -> Calibration:
    """Batch mode: the boundary from the sample's final raw scores; `known_good` join the batch
    (exchangeable good samples), `anchor` checks it (the references held out)."""
    return Calibration.from_batch(
        np.asarray(scores, dtype=np.float64), d.false_alarm_rate, d.review_factor,
        known_good=known_good, method="batch", anchor=anchor,
    )


def batch_keys(images: Sequence[Image.Image]) -> list[str]:
    """A content key per batch image: from the files of a lazy sequence (nothing decoded), else from
    the pixels; an unreadable image gets a key of its position."""
    keys_of = getattr(images, "keys", None)
    if callable(keys_of):
        return list(keys_of())
    out = []
    for i in range(len(images)):
        try:
            image = images[i]
        except ImageLoadError:
            out.append(f"unreadable:{i}")
            continue
        out.append(image_key(image))
    return out


def calibration_sample(keys: Sequence[str], seed: int) -> list[int]:
    """Indices (sorted) of the images of a batch that the boundary is set on: at most
    `MAX_CALIBRATION_SAMPLE`, drawn by content and seed (the same images whatever the listing order)."""
    return seeded_sample(keys, MAX_CALIBRATION_SAMPLE, seed)


__all__ = [
    "DECISION_FIELDS",
    "MAX_CALIBRATION_SAMPLE",
    "Decision",
    "batch_calibration",
    "batch_keys",
    "calibration_sample",
    "decide",
    "reference_calibration",
]
