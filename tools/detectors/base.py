"""The detector interface: fit on good references (possibly none), predict maps and scores.

Every detector returns calibrated outputs: `pred_score` and the anomaly map are on a scale where
`threshold` (0.5 unless a detector says otherwise) separates "looks like the references" from "does
not", so scores of different detectors can be compared and fused.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import fields
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np
from PIL import Image

if TYPE_CHECKING:
    from tools.detectors.calibration import Calibration


class DetectorError(RuntimeError):
    """A detector cannot run as configured (no references where needed, missing weights, ...)."""


class MissingModelError(DetectorError):
    """The detector's checkpoint is not on this machine; callers may fall back to the embedded detector."""


def check_known_settings(config: type, settings: Mapping[str, Any], detector: str) -> None:
    """Raise `DetectorError` naming the `settings` that the dataclass `config` has no field for, and the
    ones it has, so a typo in `--set` or a config file is caught before the detector is built."""
    known = {f.name for f in fields(config)}
    unknown = set(settings) - known
    if unknown:
        raise DetectorError(f"unknown {detector} settings {sorted(unknown)}; known: {sorted(known)}")


class DetectorOutput:
    """One image's result. Maps are float32 HxW at the input image's own resolution.

    A calibrated detector gives its raw map (`extras["raw_map"]`) and its calibration; the calibrated
    map and the mask are then made only when asked for (`anomaly_map`, `predicted_mask`), since a caller
    that sets its own boundary (the pipeline) never asks, and on a large image they cost as much as
    the scoring's last steps."""

    def __init__(
        self,
        anomaly_map: np.ndarray | None = None,
        pred_score: float = float("nan"),
        raw_score: float = float("nan"),
        extras: dict[str, Any] | None = None,
        *,
        calibration: Calibration | None = None,
        mask_peak_fraction: float = 0.5,
    ) -> None:
        if anomaly_map is None and (calibration is None or (extras or {}).get("raw_map") is None):
            raise ValueError("a detector output needs an anomaly map, or a raw map and its calibration")
        self._anomaly_map = anomaly_map
        self.pred_score = pred_score
        self.raw_score = raw_score
        self.extras: dict[str, Any] = dict(extras or {})
        self.calibration = calibration
        self.mask_peak_fraction = mask_peak_fraction

    @property
    def anomaly_map(self) -> np.ndarray:
        """The calibrated map (0.5 at the detector's boundary), made on first use."""
        if self._anomaly_map is None:
            assert self.calibration is not None
            self._anomaly_map = self.calibration.apply(self.extras["raw_map"])
        return self._anomaly_map

    @anomaly_map.setter
    def anomaly_map(self, value: np.ndarray) -> None:
        self._anomaly_map = value

    def predicted_mask(self, pixel_threshold: float = 0.5) -> np.ndarray:
        """The defect mask: the detector's own outline (`extras["pred_mask"]`) when it gives one, the
        raw map's peaks beyond its boundary for a calibrated detector, else the map thresholded;
        specks below the minimum area are dropped either way."""
        from tools.regions import mask_from_map, peak_relative_mask

        proposed = self.extras.get("pred_mask")
        if proposed is None and self.calibration is not None and self.extras.get("raw_map") is not None:
            proposed = peak_relative_mask(self.extras["raw_map"], self.calibration.boundary, self.mask_peak_fraction)
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
    #: True when `fit` learns from the references, so scoring a reference is not a fair good sample
    #: (`good_scores` must then hold leave-one-out scores).
    learns_from_references: ClassVar[bool] = True

    @abstractmethod
    def fit(self, references: Sequence[Image.Image]) -> None:
        """Learn what good looks like from reference images (RGB PIL images). May be empty."""

    def fit_batch(self, images: Sequence[Image.Image], keys: Sequence[str] | None = None) -> None:
        """Learn from the unlabeled batch about to be scored (only where `needs_batch`). `images` may
        be a lazy sequence: a detector reads only the images it samples. `keys` (one content key per
        image, `tools.content_key`) make what is sampled independent of the order of the images."""
        return None

    @abstractmethod
    def predict(self, images: Sequence[Image.Image]) -> list[DetectorOutput]:
        """Score a batch of RGB PIL images; one output per image, in order."""

    def good_scores(self) -> np.ndarray:
        """Raw scores of good samples the detector did not learn from (references held out of the
        bank), one per independent good part: what references-mode calibration rests on. Empty when
        unknown."""
        return np.empty(0)

    def held_out_outputs(self) -> list[DetectorOutput]:
        """Each reference scored as a query, by a detector that has not learnt from it (leave-one-out);
        [] when the detector cannot give that. Loops that add evidence to a detector's score use these
        to calibrate their final score on the references."""
        return []

    def batch_scores(self) -> np.ndarray:
        """Raw scores of the batch seen by `fit_batch` (batch detectors): what batch-mode calibration
        rests on when the whole batch is not scored first. Empty otherwise."""
        return np.empty(0)

    def set_calibration(self, calibration: Calibration) -> None:
        """Use `calibration` for `pred_score` and the map from now on (detectors that support it)."""
        raise DetectorError(f"{self.name}: this detector keeps its own calibration")

    def settings(self) -> dict[str, Any]:
        """The settings that shaped the results, recorded in outputs and benchmark JSON."""
        return {"detector": self.name}

    def calibration(self) -> dict[str, Any]:
        """What the threshold was derived from, in words and numbers a user can check."""
        return {}


class CalibratedDetector(Detector):
    """A detector whose `pred_score` and map come from a `Calibration` of its raw scores: its own by
    default (set in `fit`), or the one a caller sets (batch mode, the loop's final score)."""

    _calibration: Calibration | None = None
    mask_peak_fraction: float = 0.5

    def set_calibration(self, calibration: Calibration) -> None:
        self._calibration = calibration

    @property
    def decision(self) -> Calibration | None:
        """The calibration in use (None before `fit`)."""
        return self._calibration

    def calibration(self) -> dict[str, Any]:
        return {} if self._calibration is None else self._calibration.to_dict()

    def calibrated_output(self, size: tuple[int, int], raw: float, raw_map: Any) -> DetectorOutput:
        """The output for an image of `size` (width, height) from its raw score and raw map (a 2-D
        torch tensor at working resolution, resized here); its calibrated map and mask are made only
        when asked for."""
        import torch.nn.functional as F

        cal = self._calibration
        if cal is None:
            raise DetectorError(f"{self.name}: call fit() before predict()")
        width, height = size
        m = F.interpolate(raw_map[None, None], size=(height, width), mode="bilinear", align_corners=False)
        full = m[0, 0].numpy()
        return DetectorOutput(
            pred_score=float(cal.apply(raw)), raw_score=float(raw), extras={"raw_map": full},
            calibration=cal, mask_peak_fraction=self.mask_peak_fraction,
        )
