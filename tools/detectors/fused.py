"""Fused detector: embedded reference matching + WinCLIP(+), optionally refined by SAM masks.

Why fusing in logit space: every part returns calibrated scores where 0.5 is its own boundary
(`refmatch` and `winclip+` from the references' leave-one-out scores: sigmoid(z - z_boundary)). The
logit of such a score is "standard deviations beyond the boundary", a unit the parts share, so the
fused score is sigmoid(weighted mean of the parts' logits): 0.5 stays the boundary, a part that is
very sure outweighs one that is barely over, and no part's raw unit leaks into another's. Maps are
fused pixel by pixel in the same way. Zero-shot `winclip` reports CLIP's probability, whose logit is a
log-odds; comparable enough to fuse, and `calibration()` says which parts were calibrated how.

A part whose checkpoint is not on this machine (`ModelNotAvailableError`, e.g. no CLIP weights
offline) is skipped with a logged warning and a note in `calibration()["notes"]`, so `fused` falls back
to the embedded reference matching instead of failing; `skip_missing_models=False` makes it fail.

With no references, parts that need them are swapped for their zero-shot counterpart where one exists
(`winclip+` -> `winclip`) and dropped otherwise; the calibration record says so.

SAM refinement (optional): the fused map's mask (> pixel_threshold) is split into regions, each
region prompted to SAM (box + peak point), and SAM's mask used where it agrees with the region
(`tools.sam.SamTool.refine`). The map is then nudged just across 0.5 where the mask changed, so the
map thresholded at 0.5 gives the refined mask; the per-region decisions go in `extras["sam"]`.
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import Sequence
from typing import Any, ClassVar

import numpy as np
from PIL import Image

from tools.detectors.base import Detector, DetectorError, DetectorOutput
from tools.models import ModelNotAvailableError

logger = logging.getLogger(__name__)

ZERO_SHOT_COUNTERPART = {"winclip+": "winclip", "winclip_fewshot": "winclip"}
_CLIP_PARTS = {"winclip", "winclip+", "winclip_fewshot"}
_EPS = 1e-6


def logit(p: np.ndarray | float) -> np.ndarray:
    p = np.clip(np.asarray(p, dtype=np.float64), _EPS, 1.0 - _EPS)
    return np.log(p) - np.log1p(-p)


def sigmoid(x: np.ndarray | float) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-np.clip(np.asarray(x, dtype=np.float64), -60.0, 60.0)))


def fuse_probabilities(probs: Sequence[np.ndarray | float], weights: Sequence[float]) -> np.ndarray:
    """sigmoid of the weighted mean of logits; NaN inputs count as 0.5 (no opinion)."""
    w = np.asarray(weights, dtype=np.float64)
    if len(probs) != len(w) or not len(w) or w.sum() <= 0:
        raise ValueError("need one positive weight per probability")
    total = sum(wi * np.nan_to_num(logit(p), nan=0.0) for wi, p in zip(w, probs, strict=True))
    return sigmoid(total / w.sum())


def _resize_map(m: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    if m.shape == size:
        return m
    img = Image.fromarray(np.asarray(m, dtype=np.float32), mode="F").resize(
        (size[1], size[0]), Image.Resampling.BILINEAR
    )
    return np.asarray(img, dtype=np.float32)


class FusedDetector(Detector):
    """Reference matching + WinCLIP(+) fused on calibrated logits, optionally SAM-refined masks."""

    name: ClassVar[str] = "fused"
    requires_references: ClassVar[bool] = False

    def __init__(
        self,
        parts: Sequence[str | Detector] = ("refmatch", "winclip+"),
        weights: Sequence[float] | None = None,
        model: str | None = None,
        device: str = "cpu",
        object_name: str | None = None,
        category: str | None = None,
        sam: bool | str | Any = False,
        sam_model: str | None = None,
        part_kwargs: dict[str, dict[str, Any]] | None = None,
        skip_missing_models: bool = True,
    ) -> None:
        if not parts:
            raise DetectorError("fused detector needs at least one part")
        self.part_specs = list(parts)
        self.weights = [float(w) for w in weights] if weights is not None else [1.0] * len(parts)
        if len(self.weights) != len(parts) or any(w < 0 for w in self.weights) or sum(self.weights) <= 0:
            raise DetectorError(f"weights {self.weights} must be non-negative, one per part, not all zero")
        self.model = model
        self.device = device
        self.object_name = object_name or category
        self.part_kwargs = dict(part_kwargs or {})
        self.skip_missing_models = skip_missing_models
        self._sam_spec = sam
        self._sam_model = sam_model
        self._sam_tool: Any = None
        self._built: dict[str, Detector] = {}  # parts built by name, reused across fit() calls
        self._active: list[tuple[str, Detector, float]] = []
        self._notes: list[str] = []
        self._n_refs = 0

    # ---- parts ----------------------------------------------------------------------------------

    def _build(self, name: str) -> Detector:
        if name not in self._built:
            self._built[name] = self._make(name)
        return self._built[name]

    def _make(self, name: str) -> Detector:
        from tools.detectors import DETECTORS

        try:
            factory = DETECTORS.get(name)
        except ImportError as e:
            raise DetectorError(f"fused: part {name!r} cannot be imported ({e})") from e
        try:
            params = inspect.signature(factory).parameters
        except (TypeError, ValueError):
            params = {}
        accepts_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
        offered: dict[str, Any] = {"device": self.device}
        if name in _CLIP_PARTS:
            offered["model"] = self.model
        if self.object_name:
            offered["object_name"] = self.object_name
        # named parameters get what they name; a **kwargs-only factory (settings overrides) gets the device only
        kwargs = {k: v for k, v in offered.items() if k in params or (accepts_any and k == "device")}
        kwargs.update(self.part_kwargs.get(name, {}))
        return factory(**kwargs)

    def set_object_name(self, name: str | None) -> None:
        """Pass the object name (e.g. the category) on to every part that uses one (WinCLIP's prompts)."""
        self.object_name = name
        parts = [det for _, det, _ in self._active] + list(self._built.values())
        parts += [s for s in self.part_specs if isinstance(s, Detector)]
        for det in {id(d): d for d in parts}.values():
            if hasattr(det, "set_object_name"):
                det.set_object_name(name)

    def _sam(self) -> Any:
        if self._sam_tool is None and self._sam_spec:
            from tools.sam import SamTool

            if isinstance(self._sam_spec, SamTool):
                self._sam_tool = self._sam_spec
            else:
                model = self._sam_spec if isinstance(self._sam_spec, str) else self._sam_model
                self._sam_tool = SamTool(model, device=self.device)
        return self._sam_tool

    # ---- Detector API ---------------------------------------------------------------------------

    def fit(self, references: Sequence[Image.Image]) -> None:
        refs = list(references)
        self._n_refs = len(refs)
        self._active, self._notes = [], []
        for spec, weight in zip(self.part_specs, self.weights, strict=True):
            if weight == 0:
                continue
            name = spec if isinstance(spec, str) else (spec.name or type(spec).__name__)
            det = self._build(spec) if isinstance(spec, str) else spec
            if not refs and det.requires_references:
                alt = ZERO_SHOT_COUNTERPART.get(name)
                if alt is None:
                    self._notes.append(f"{name} dropped: it needs references and none were given")
                    continue
                self._notes.append(f"{name} replaced by {alt}: no references given")
                name, det = alt, self._build(alt)
            try:
                det.fit(refs)
            except ModelNotAvailableError as e:
                if not self.skip_missing_models:
                    raise
                self._notes.append(f"{name} skipped, the others carry on: {e}")
                logger.warning("fused: %s skipped: %s", name, e)
                continue
            self._active.append((name, det, weight))
        if not self._active:
            raise DetectorError("fused: no part can run (" + "; ".join(self._notes) + ")")
        for note in self._notes:
            logger.info("fused: %s", note)

    def predict(self, images: Sequence[Image.Image]) -> list[DetectorOutput]:
        if not self._active:
            raise DetectorError("fused: call fit() before predict()")
        images = list(images)
        per_part = [(name, det.predict(images), w) for name, det, w in self._active]
        weights = [w for _, _, w in per_part]
        outputs = []
        for i, image in enumerate(images):
            size = (image.height, image.width)
            scores = [outs[i].pred_score for _, outs, _ in per_part]
            maps = [_resize_map(outs[i].anomaly_map, size) for _, outs, _ in per_part]
            score = float(fuse_probabilities(scores, weights))
            amap = fuse_probabilities(maps, weights).astype(np.float32)
            extras: dict[str, Any] = {
                "parts": {
                    name: {"pred_score": float(outs[i].pred_score), "weight": w} for name, outs, w in per_part
                }
            }
            tool = self._sam()
            if tool is not None:
                amap, extras = self._refine(tool, image, amap, extras)
            outputs.append(
                DetectorOutput(
                    anomaly_map=amap, pred_score=score, raw_score=float(logit(score)), extras=extras
                )
            )
        return outputs

    def _refine(
        self, tool: Any, image: Image.Image, amap: np.ndarray, extras: dict[str, Any]
    ) -> tuple[np.ndarray, dict]:
        from tools.regions import mask_from_map

        mask = mask_from_map(amap, self.pixel_threshold)
        refined, decisions = tool.refine(image.convert("RGB"), mask, amap)
        amap = amap.copy()
        grown = refined & ~mask
        shrunk = mask & ~refined
        amap[grown] = np.maximum(amap[grown], np.float32(self.pixel_threshold + 1e-3))
        amap[shrunk] = np.minimum(amap[shrunk], np.float32(self.pixel_threshold - 1e-3))
        extras = {**extras, "sam": [d.to_dict() for d in decisions], "pred_mask": refined}
        return amap, extras

    def settings(self) -> dict[str, Any]:
        parts = [
            {"name": name, "weight": w, "settings": det.settings()} for name, det, w in self._active
        ] or [
            {"name": s if isinstance(s, str) else s.name, "weight": w}
            for s, w in zip(self.part_specs, self.weights, strict=True)
        ]
        sam = self._sam_spec
        return {
            "detector": self.name,
            "parts": parts,
            "fusion": "sigmoid(weighted mean of logits of calibrated part scores)",
            "sam": (sam if isinstance(sam, (bool, str)) else type(sam).__name__) if sam else False,
            "device": str(self.device),
            "references": self._n_refs,
        }

    def calibration(self) -> dict[str, Any]:
        return {
            "method": "each part calibrated on its own (0.5 = its boundary); fused = sigmoid of the weighted "
            "mean of the parts' logits, so 0.5 stays the boundary",
            "parts": {name: det.calibration() for name, det, _ in self._active},
            "notes": list(self._notes),
        }
