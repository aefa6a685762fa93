"""The detector interface: fit on good references (possibly none), predict maps and scores.

Every detector returns calibrated outputs: `pred_score` and the anomaly map are on a scale where
`threshold` (0.5 unless a detector says otherwise) separates "looks like the references" from "does
not", so scores of different detectors can be compared and fused.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np
from PIL import Image


class DetectorError(RuntimeError):
    """A detector cannot run as configured (no references where needed, missing weights, ...)."""


class MissingModelError(DetectorError):
    """The detector's checkpoint is not on this machine; callers may fall back to the embedded detector."""


@dataclass
class DetectorOutput:
    """One image's result. Maps are float32 HxW at the input image's own resolution."""

    anomaly_map: np.ndarray
    pred_score: float
    raw_score: float = float("nan")  # the detector's own unit, before calibration
    extras: dict[str, Any] = field(default_factory=dict)

    def predicted_mask(self, pixel_threshold: float = 0.5) -> np.ndarray:
        """The defect mask: the detector's own outline (`extras["pred_mask"]`) when it gives one,
        else the map thresholded; specks below the minimum area are dropped either way."""
        from tools.regions import mask_from_map

        proposed = self.extras.get("pred_mask")
        if proposed is not None:
            return mask_from_map(np.asarray(proposed, dtype=np.float32), 0.5)
        return mask_from_map(self.anomaly_map, pixel_threshold)


class Detector(ABC):
    """Base class of all detectors in `tools.detectors.DETECTORS`."""

    name: ClassVar[str] = ""
    #: True if the detector cannot work without good references.
    requires_references: ClassVar[bool] = False
    #: True if the detector learns from the batch it scores: call `fit_batch(images)` after `fit`.
    needs_batch: ClassVar[bool] = False

    threshold: float = 0.5  # image-level: pred_score > threshold -> defective
    pixel_threshold: float = 0.5  # pixel-level: anomaly_map > pixel_threshold -> pred_mask

    @abstractmethod
    def fit(self, references: Sequence[Image.Image]) -> None:
        """Learn what good looks like from reference images (RGB PIL images). May be empty."""

    def fit_batch(self, images: Sequence[Image.Image]) -> None:
        """Learn from the unlabeled batch about to be scored (only where `needs_batch`). `images` may
        be a lazy sequence: a detector reads only the images it samples."""
        return None

    @abstractmethod
    def predict(self, images: Sequence[Image.Image]) -> list[DetectorOutput]:
        """Score a batch of RGB PIL images; one output per image, in order."""

    def settings(self) -> dict[str, Any]:
        """The settings that shaped the results, recorded in outputs and benchmark JSON."""
        return {"detector": self.name}

    def calibration(self) -> dict[str, Any]:
        """What the threshold was derived from, in words and numbers a user can check."""
        return {}
