"""WinCLIP (zero-shot) and WinCLIP+ (few-shot) detectors on open_clip (DESIGN.md section 3).

- `winclip`: no references needed. Scores are the model's own anomalous probability (softmax over the
  normal/anomalous prompt ensembles), left uncalibrated: 0.5 is where CLIP finds "damaged <object>" and
  "flawless <object>" equally likely, which is a meaningful but not a tuned boundary.
- `winclip+`: adds visual association against the good references' window and patch embeddings.
  With two or more references the scores are calibrated on the references' leave-one-out scores
  (each reference scored against the others): z = (raw - mean) / std, pred = sigmoid(z - z_boundary),
  so 0.5 sits `z_boundary` standard deviations above what good images score. The map is calibrated the
  same way on the leave-one-out map maxima. Leave-one-out scores use one reference fewer than test
  images do, so they run slightly high: the boundary errs towards fewer false alarms.

The model loads on first use (`tools.models.load_open_clip`, offline-aware), and loaded models are
shared between detector instances in one process.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, ClassVar

import numpy as np
from PIL import Image

from tools.detectors.base import Detector, DetectorError, DetectorOutput

_ENGINES: dict[tuple, Any] = {}  # (model id, device, precision, scales, temperature, prompts) -> WinCLIP


def get_winclip(
    model: str | None = None,
    device: str = "cpu",
    precision: str = "fp32",
    scales: Sequence[int] = (2, 3),
    temperature: float = 0.07,
    prompts: str | None = None,
    token_budget: int = 65536,
) -> Any:
    """A (process-wide shared) `tools.clip.winclip.WinCLIP` for these settings."""
    from tools.models import resolve_model

    model_id = resolve_model("clip", model)
    key = (model_id, str(device), precision, tuple(scales), float(temperature), prompts)
    if key not in _ENGINES:
        from tools.clip.winclip import WinCLIP
        from tools.models import load_open_clip

        bundle = load_open_clip(model_id, device=device)
        _ENGINES[key] = WinCLIP(
            bundle,
            scales=scales,
            temperature=temperature,
            prompts=prompts,
            device=device,
            precision=precision,
            token_budget=token_budget,
        )
    engine = _ENGINES[key]
    engine.token_budget = int(token_budget)
    return engine


def resolve_precision(precision: str, device: str) -> str:
    """ "auto": bf16 on GPUs that have it (else fp16), bf16 on CPUs with native bf16 (AVX512-BF16/AMX), else fp32.

    Measured on a shared 2-core AMD EPYC with AVX512-BF16 (full-size ViT-B-16-plus-240): 7.8 s/image bf16
    vs 14.1 s fp32, window embeddings' cosine to fp32 >= 0.9999.
    """
    if precision != "auto":
        if precision not in ("fp32", "bf16", "fp16"):
            raise DetectorError(f"precision must be auto, fp32, bf16 or fp16, got {precision!r}")
        return precision
    import torch

    if str(device).startswith("cuda") and torch.cuda.is_available():
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    if str(device) == "cpu" and _cpu_has_bf16():
        return "bf16"
    return "fp32"


def _cpu_has_bf16() -> bool:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("flags"):
                    flags = set(line.split(":", 1)[1].split())
                    return bool(flags & {"avx512_bf16", "amx_bf16"})
    except OSError:
        pass
    return False


def _sigmoid(x: np.ndarray | float) -> np.ndarray | float:
    return 1.0 / (1.0 + np.exp(-np.clip(x, -60.0, 60.0)))


class LeaveOneOutCalibration:
    """z-score -> logistic calibration from good images' leave-one-out scores."""

    def __init__(self, scores: Sequence[float], z_boundary: float = 3.0, min_rel_std: float = 0.1) -> None:
        s = np.asarray(scores, dtype=np.float64)
        s = s[np.isfinite(s)]
        if s.size < 2:
            raise ValueError("leave-one-out calibration needs at least two finite scores")
        self.scores = s
        self.mean = float(s.mean())
        # floored like refmatch's calibration (10% of the mean): two lucky references must not make
        # the detector hair-triggered
        self.std = float(max(s.std(ddof=1), min_rel_std * abs(self.mean), 1e-6))
        self.z_boundary = float(z_boundary)

    @property
    def boundary(self) -> float:
        """The raw score that maps to 0.5."""
        return self.mean + self.z_boundary * self.std

    def __call__(self, raw: np.ndarray | float) -> np.ndarray | float:
        return _sigmoid((np.asarray(raw, dtype=np.float64) - self.mean) / self.std - self.z_boundary)

    def describe(self) -> dict[str, Any]:
        return {
            "n": int(self.scores.size),
            "mean": round(self.mean, 6),
            "std": round(self.std, 6),
            "z_boundary": self.z_boundary,
            "raw_boundary": round(self.boundary, 6),
        }


class WinCLIPDetector(Detector):
    """WinCLIP zero-shot: CLIP window embeddings vs. normal/anomalous prompt ensembles (no references)."""

    name: ClassVar[str] = "winclip"
    requires_references: ClassVar[bool] = False
    learns_from_references: ClassVar[bool] = False
    few_shot: ClassVar[bool] = False

    def __init__(
        self,
        model: str | None = None,
        device: str = "cpu",
        object_name: str | None = None,
        category: str | None = None,
        scales: Sequence[int] = (2, 3),
        temperature: float = 0.07,
        precision: str = "auto",
        batch_size: int = 8,
        token_budget: int | None = None,
        prompts: str | None = None,
        image_map_weight: float | None = None,
        z_boundary: float = 3.0,
        engine: Any = None,
        resolution: int | None = None,
    ) -> None:
        if resolution is not None:
            raise DetectorError(
                f"{self.name} runs at its CLIP model's input size (240 px for ViT-B-16-plus-240); "
                "a resolution setting does not apply (choose another model instead)"
            )
        self.model_id = model
        self.device = device
        self.object_name = object_name or category or "object"
        self.scales = tuple(int(s) for s in scales)
        self.temperature = float(temperature)
        self.precision = resolve_precision(precision, device)
        self.batch_size = max(1, int(batch_size))
        # tokens per transformer call when batching window sequences: 64k (~0.5 GB of activations at
        # width 896) on a CPU, 4x that on a GPU
        default_budget = 262144 if str(device).startswith("cuda") else 65536
        self.token_budget = int(token_budget or default_budget)
        self.prompts = prompts
        # image score = (1 - w) * class-token score + w * max of the map; paper defaults: 0 zero-shot, 0.5 few-shot
        self.image_map_weight = float(
            image_map_weight if image_map_weight is not None else (0.5 if self.few_shot else 0.0)
        )
        self.z_boundary = float(z_boundary)
        self._engine = engine
        self._refs: Any = None  # Encoded references (few-shot)
        self._n_refs = 0
        self._image_cal: LeaveOneOutCalibration | None = None
        self._loo_raw = np.empty(0)
        self._map_cal: LeaveOneOutCalibration | None = None

    # ---- plumbing -------------------------------------------------------------------------------

    @property
    def engine(self) -> Any:
        if self._engine is None:
            self._engine = get_winclip(
                self.model_id,
                device=self.device,
                precision=self.precision,
                scales=self.scales,
                temperature=self.temperature,
                prompts=self.prompts,
                token_budget=self.token_budget,
            )
        return self._engine

    def set_object_name(self, name: str | None) -> None:
        """The object the prompts talk about ("metal_nut" reads as "metal nut"); text embeddings are cached.

        The scores depend on the prompts, so a fitted WinCLIP+ re-calibrates (cheap: no new forwards).
        """
        self.object_name = name or "object"
        if self._refs is not None:
            self._calibrate()

    def _encode(self, images: Sequence[Image.Image]) -> Any:
        from tools.clip.winclip import Encoded

        parts = [
            self.engine.encode_images(images[i : i + self.batch_size])
            for i in range(0, len(images), self.batch_size)
        ]
        if len(parts) == 1:
            return parts[0]
        return Encoded(
            image=_cat([p.image for p in parts]),
            windows=[_cat([p.windows[s] for p in parts]) for s in range(len(parts[0].windows))],
            patches=_cat([p.patches for p in parts]),
        )

    def _raw(self, enc: Any, refs: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(raw image scores (B,), raw maps (B, gh, gw), class-token scores (B,)) on the patch grid."""
        text = self.engine.text_embeddings(self.object_name)
        cls, zs_map = self.engine.zero_shot(enc, text)
        raw_map = zs_map
        if refs is not None:
            fs_map = self.engine.few_shot(enc, refs)
            raw_map = (zs_map + fs_map) / 2.0
            map_max = fs_map.flatten(1).amax(dim=1)
        else:
            map_max = zs_map.flatten(1).amax(dim=1)
        w = self.image_map_weight
        image = (1.0 - w) * cls + w * map_max
        return image.cpu().numpy(), raw_map.cpu().numpy(), cls.cpu().numpy()

    # ---- Detector API ---------------------------------------------------------------------------

    def fit(self, references: Sequence[Image.Image]) -> None:
        refs = list(references)
        self._refs, self._n_refs, self._image_cal, self._map_cal = None, len(refs), None, None
        self._loo_raw = np.empty(0)
        if not self.few_shot:
            self.engine.text_embeddings(self.object_name)  # load the model now: a missing one fails in fit()
            return  # zero-shot: references are not used
        if not refs:
            raise DetectorError(f"{self.name} needs at least one good reference image (or use 'winclip')")
        self._refs = self._encode(refs)
        self._calibrate()

    def _calibrate(self) -> None:
        """Leave-one-out: each reference scored against the others (embeddings reused, no new forwards)."""
        self._image_cal = self._map_cal = None
        enc, n = self._refs, self._n_refs
        if enc is None or n < 2:
            return
        loo_image, loo_map = [], []
        for i in range(n):
            image, raw_map, _ = self._raw(enc.select([i]), enc.select([j for j in range(n) if j != i]))
            loo_image.append(float(image[0]))
            loo_map.append(float(raw_map[0].max()))
        self._loo_raw = np.asarray(loo_image, dtype=np.float64)
        self._image_cal = LeaveOneOutCalibration(loo_image, self.z_boundary)
        self._map_cal = LeaveOneOutCalibration(loo_map, self.z_boundary)

    def good_scores(self) -> np.ndarray:
        """Leave-one-out raw scores of the references (WinCLIP+); zero-shot WinCLIP learns nothing
        from references, so callers may score them as they are."""
        return self._loo_raw if self.few_shot else np.empty(0)

    def predict(self, images: Sequence[Image.Image]) -> list[DetectorOutput]:
        import torch

        from tools.clip.winclip import upsample_maps

        if self.few_shot and self._refs is None:
            raise DetectorError(f"{self.name}: call fit() with good reference images before predict()")
        images = list(images)
        outputs: list[DetectorOutput] = []
        for start in range(0, len(images), self.batch_size):
            chunk = images[start : start + self.batch_size]
            enc = self.engine.encode_images(chunk)
            raw_image, raw_map, cls = self._raw(enc, self._refs)
            if self._image_cal is not None and self._map_cal is not None:
                pred = np.asarray(self._image_cal(raw_image), dtype=np.float64)
                grid_maps = np.asarray(self._map_cal(raw_map), dtype=np.float32)
            else:
                pred, grid_maps = raw_image.astype(np.float64), raw_map.astype(np.float32)
            maps = upsample_maps(torch.from_numpy(grid_maps), [(im.height, im.width) for im in chunk])
            for k, m in enumerate(maps):
                score = float(pred[k])
                outputs.append(
                    DetectorOutput(
                        anomaly_map=np.clip(m, 0.0, 1.0).astype(np.float32),
                        pred_score=score if math.isfinite(score) else 1.0,
                        raw_score=float(raw_image[k]),
                        extras={
                            "class_token_score": float(cls[k]),
                            "raw_map_max": float(raw_map[k].max()),
                            "object_name": self.object_name,
                        },
                    )
                )
        return outputs

    def settings(self) -> dict[str, Any]:
        from tools.models import resolve_model

        try:
            model_id = resolve_model("clip", self.model_id)
        except Exception:
            model_id = self.model_id or ""
        return {
            "detector": self.name,
            "model": model_id,
            "object_name": self.object_name,
            "scales": list(self.scales),
            "temperature": self.temperature,
            "image_map_weight": self.image_map_weight,
            "precision": self.precision,
            "device": str(self.device),
            "prompts": self.prompts or "prompts/winclip.yaml",
            "references": self._n_refs if self.few_shot else 0,
        }

    def calibration(self) -> dict[str, Any]:
        if not self.few_shot:
            return {
                "method": "none (zero-shot): pred_score is CLIP's anomalous probability from the prompt "
                "ensembles; 0.5 = 'normal' and 'anomalous' prompts equally likely",
                "references_used": 0,
            }
        if self._image_cal is None or self._map_cal is None:
            return {
                "method": "none: leave-one-out calibration needs >= 2 references; pred_score is the raw "
                "fused score (mean of CLIP probability and visual association)",
                "references_used": self._n_refs,
            }
        return {
            "method": "leave-one-out z-score -> logistic: pred = sigmoid((raw - mean) / std - z_boundary)",
            "references_used": self._n_refs,
            "image": self._image_cal.describe(),
            "pixel": {**self._map_cal.describe(), "source": "maxima of the leave-one-out maps"},
        }


class WinCLIPPlusDetector(WinCLIPDetector):
    """WinCLIP+ few-shot: zero-shot WinCLIP fused with visual association to good references."""

    name: ClassVar[str] = "winclip+"
    requires_references: ClassVar[bool] = True
    learns_from_references: ClassVar[bool] = True
    few_shot: ClassVar[bool] = True


def _cat(tensors: list[Any]) -> Any:
    import torch

    return torch.cat(tensors, dim=0)
