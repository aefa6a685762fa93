"""Zero-shot fallback: a patch is suspicious when nothing else in the same image looks like it.

Most of a product surface repeats itself (texture, stripes, a regular layout), while a defect is
rare, so each patch's distance to its nearest look-alikes elsewhere in the image (its immediate
neighbours excluded) is a saliency score that needs no reference at all, the idea SAA+ uses. Weaker
than reference matching, and it says so: use references when you have them.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from tools.backbones.efficientnet_lite import EfficientNetLiteFeatures
from tools.detectors import DETECTORS
from tools.detectors.base import CalibratedDetector, DetectorOutput, check_known_settings
from tools.detectors.calibration import Calibration
from tools.preprocess import gaussian_blur, pil_to_tensor, remove_illumination, standardize_contrast


@dataclass
class SelfSimilarityConfig:
    backbone: str = "efficientnet-lite0"
    blocks: tuple[int, ...] = (4, 10)
    resolution: int = 256  # sqrt(H*W) of the working image; aspect ratio kept
    patch_pool: int = 3
    illumination_sigma: float = 0.25  # gentler than refmatch: soft stains must survive the high-pass
    standardize: bool = True
    exclude_radius: int = 2  # feature cells around a patch that do not count as look-alikes
    neighbours: int = 3  # mean distance to this many nearest look-alikes
    blur_sigma: float = 4.0
    zero_shot_boundary: float = 2.0  # robust z-score of the map maximum that maps to 0.5 (no references)
    device: str = "cpu"

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> SelfSimilarityConfig:
        check_known_settings(cls, d, "selfsim")
        d = dict(d)
        if "blocks" in d:
            d["blocks"] = tuple(d["blocks"])
        return cls(**d)


@DETECTORS.register("selfsim")
class SelfSimilarityDetector(CalibratedDetector):
    """Zero-shot fallback: how unlike the rest of the same image each patch is (no references)."""

    name = "selfsim"
    requires_references = False
    learns_from_references = False  # references only calibrate: their own scores are fair good samples

    def __init__(self, config: SelfSimilarityConfig | None = None, **overrides: Any) -> None:
        base = asdict(config) if config is not None else {}
        base.update(overrides)
        self.config = SelfSimilarityConfig.from_dict(base)
        self.device = torch.device(self.config.device)
        self.backbone = EfficientNetLiteFeatures(self.config.backbone, self.config.blocks).to(self.device)
        cfg = self.config
        self._calibration = Calibration.fixed(cfg.zero_shot_boundary, 1.0, "fixed robust z-score (no references)")
        self._good = np.empty(0)

    def _working_size(self, width: int, height: int) -> tuple[int, int]:
        s = self.config.resolution / float(np.sqrt(width * height))
        return max(64, round(height * s / 32) * 32), max(64, round(width * s / 32) * 32)

    @torch.inference_mode()
    def _robust_z_map(self, image: Image.Image) -> tuple[torch.Tensor, float]:
        """Smoothed robust z-score map at the working size and its maximum."""
        cfg = self.config
        size = self._working_size(*image.size)
        x = remove_illumination(pil_to_tensor([image], size).to(self.device), cfg.illumination_sigma)
        if cfg.standardize:
            x = standardize_contrast(x)
        # Reflect-pad so border patches are not unique just because of the network's zero padding.
        pad = 32
        levels = self.backbone(F.pad(x, (pad, pad, pad, pad), mode="reflect"))
        grid = levels[0].shape[-2:]
        crop = pad * grid[-1] // (size[1] + 2 * pad)
        feats = []
        for f in levels:
            if cfg.patch_pool > 1:
                f = F.avg_pool2d(f, cfg.patch_pool, stride=1, padding=cfg.patch_pool // 2, count_include_pad=False)
            feats.append(F.interpolate(f, size=grid, mode="bilinear", align_corners=False))
        f = torch.cat(feats, 1)[0, :, crop:-crop, crop:-crop]
        h, w = f.shape[-2:]
        f = f.flatten(1).T  # (h*w, C)
        d = torch.cdist(f, f)
        yy, xx = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
        yy, xx = yy.flatten(), xx.flatten()
        near = ((yy[:, None] - yy[None, :]).abs() <= cfg.exclude_radius) & (
            (xx[:, None] - xx[None, :]).abs() <= cfg.exclude_radius
        )
        d.masked_fill_(near.to(d.device), float("inf"))
        k = max(1, min(cfg.neighbours, d.shape[1] - int(near.sum(1).max())))
        score = d.topk(k, dim=1, largest=False).values.mean(1)
        score = torch.nan_to_num(score, posinf=0.0)
        med = score.median()
        mad = (score - med).abs().median().clamp_min(1e-6) * 1.4826
        z = ((score - med) / mad).view(1, 1, h, w)
        stride = size[1] // w
        z = F.interpolate(z, size=(h * stride, w * stride), mode="bilinear", align_corners=False)
        z = gaussian_blur(z, cfg.blur_sigma)
        return z, float(z.max())

    def fit(self, references: Sequence[Image.Image]) -> None:
        """Optional: with good references, put the boundary above their own maxima instead of a fixed z."""
        if not references:
            return
        self._good = np.array([self._robust_z_map(im)[1] for im in references])
        self._calibration = Calibration.from_good_scores(self._good, method="references (scored as they are)")

    def good_scores(self) -> np.ndarray:
        return self._good

    def predict(self, images: Sequence[Image.Image]) -> list[DetectorOutput]:
        out = []
        for im in images:
            z, zmax = self._robust_z_map(im)
            out.append(self.calibrated_output(im.size, zmax, z[0, 0].cpu()))
        return out

    def settings(self) -> dict[str, Any]:
        return {"detector": self.name, **asdict(self.config)}
