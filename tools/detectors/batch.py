"""Zero-shot batch detector: unlabeled images of one product score each other (MuSc), optionally
anchored by a few good references.

The most common real case without references is a folder of unlabeled images of one product. Most
of them are good, so what is normal can be learned from the batch itself: each image is compared with
partner images drawn from the batch (`mutual_scoring.py`). With references as well (every `report`,
every `eval`), the references anchor what good is and the batch covers the normal variation that a
few references miss: the two maps are averaged, each in units of its own typical patch score.

Memory and time stay bounded for thousands of images: `fit_batch` keeps the features of a seeded
sample of at most `max_pool` images (the partner pool), and each image is compared with `partners`
of them. Partners are drawn from the image's content and the seed, so results do not depend on the
order of the images or on which machine scores them.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, fields
from typing import Any, ClassVar

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from tools.content_key import image_key, seeded_sample
from tools.detectors import DETECTORS
from tools.detectors.base import CalibratedDetector, DetectorError, DetectorOutput
from tools.detectors.calibration import Calibration
from tools.detectors.map_scoring import image_scores
from tools.detectors.mutual_scoring import (
    choose_partners,
    mutual_scores,
    neighbour_refined,
    per_partner_distances,
)
from tools.detectors.patch_features import (
    GRID,
    PatchFeatureExtractor,
    typical_side,
    working_scale,
    working_size,
)
from tools.detectors.reference_matching import RawMap, ReferenceMatchingConfig, ReferenceMatchingDetector
from tools.image_io import ImageLoadError
from tools.preprocess import gaussian_blur

#: Fewer images than this make a poor batch: `inspect` and `report` use `selfsim` below it.
MIN_BATCH = 8


@dataclass
class BatchConfig:
    """Settings of the batch detector (defaults chosen on validation sets, BENCHMARKS.md)."""

    backbone: str = "efficientnet-lite0"
    blocks: tuple[int, ...] = (4, 10)
    resolution: int = 192  # working size of a typical image (aspect kept)
    min_scale: float = 0.0  # large images: working pixels per image pixel at least this (0 = off)
    pools: tuple[int, ...] = (1,)  # neighbourhood sizes; their maps are averaged
    reflect_pad: int = 32
    standardize: bool = True
    partners: int = 32  # partner images each image is compared with
    fraction: float = 0.3  # patch score = mean of the smallest this fraction of per-partner distances
    max_pool: int = 256  # partner pool: a seeded sample of at most this many batch images
    reference_weight: float = 0.5  # with references: weight of the reference map (batch map: 1 - this)
    refine_neighbours: tuple[int, ...] = ()  # MuSc's RsCIN window sizes; () = off
    blur_sigma: float = 4.0
    score_top_fraction: float = 0.01  # image score = mean of the top 1 % of the inner map
    score_margin: float = 0.1
    mask_peak_fraction: float = 0.5
    reference_options: dict[str, Any] | None = None  # settings of the reference part (refmatch)
    seed: int = 0
    batch_size: int = 8
    device: str = "cpu"

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> BatchConfig:
        """Settings of the reference part (refmatch's) may be given directly: they go to it."""
        known = {f.name for f in fields(cls)}
        reference_known = {f.name for f in fields(ReferenceMatchingConfig)}
        unknown = set(d) - known - reference_known
        if unknown:
            raise DetectorError(
                f"unknown batch settings {sorted(unknown)}; known: {sorted(known)} and refmatch's {sorted(reference_known - known)}"
            )
        d = dict(d)
        routed = {k: d.pop(k) for k in list(d) if k not in known}
        if routed:
            d["reference_options"] = {**(d.get("reference_options") or {}), **routed}
        for key in ("blocks", "pools", "refine_neighbours"):
            if key in d:
                d[key] = tuple(int(v) for v in (d[key] if isinstance(d[key], (list, tuple)) else [d[key]]))
        return cls(**d)

    def validate(self) -> None:
        if self.resolution % GRID or self.resolution < 64:
            raise DetectorError(f"resolution must be a multiple of {GRID} and >= 64, got {self.resolution}")
        if not 0 < self.fraction <= 1:
            raise DetectorError(f"fraction must be in (0, 1], got {self.fraction}")
        if self.partners < 1 or self.max_pool < 2:
            raise DetectorError(f"partners must be >= 1 and max_pool >= 2, got {self.partners}, {self.max_pool}")
        if not 0 <= self.reference_weight <= 1:
            raise DetectorError(f"reference_weight must be in [0, 1], got {self.reference_weight}")


@dataclass
class _Scored:
    raw: float
    smooth: torch.Tensor  # (H, W) fused map at working pixels
    descriptor: np.ndarray


@DETECTORS.register("batch")
class BatchDetector(CalibratedDetector):
    """Zero-shot batch detector: images of one batch score each other (MuSc); references optional."""

    name: ClassVar[str] = "batch"
    requires_references: ClassVar[bool] = False
    needs_batch: ClassVar[bool] = True
    #: settings of the reference part may be given directly (see `BatchConfig.from_dict`)
    delegated_settings: ClassVar[tuple[type, ...]] = (ReferenceMatchingConfig,)

    def __init__(self, config: BatchConfig | None = None, global_changes: Any = None, **overrides: Any) -> None:
        """`global_changes` go to the reference part (its global rule, `global_statistics.py`)."""
        self.global_changes = global_changes
        base = asdict(config) if config is not None else {}
        base.update(overrides)
        self.config = BatchConfig.from_dict(base)
        self.config.validate()
        cfg = self.config
        self.extractor = PatchFeatureExtractor(cfg.backbone, cfg.blocks, cfg.reflect_pad, cfg.standardize, device=cfg.device)
        self.reference_part: Any = None  # a fitted ReferenceMatchingDetector when references are given
        self.scale: float | None = None
        self._max_side = 4 * self.config.resolution
        self.channel_scale: torch.Tensor | None = None
        self.pool_keys: list[str] = []
        self.pool_feats: list[list[torch.Tensor]] = []  # per pool image, one (P, C) per pool size
        self.pool_descriptors = np.empty((0, 0))
        self.pool_scores = np.empty(0)
        self._cache: dict[str, _Scored] = {}
        self._references: list[Image.Image] = []
        self._held_out: list[tuple[tuple[int, int], _Scored]] = []  # each reference scored as a query, held out
        self._norms = (1.0, 1.0)  # typical batch-map and reference-map values, for fusing
        self.mask_peak_fraction = self.config.mask_peak_fraction
        self.fit_seconds = 0.0

    # ------------------------------------------------------------------ fit
    def fit(self, references: Sequence[Image.Image]) -> None:
        """Optional good references: they join the batch evidence (see the module docstring)."""
        self.reference_part = None
        self._references = [_rgb(r) for r in references]
        self._held_out = []
        if references:
            opts = {"resolution": self.config.resolution, "min_scale": self.config.min_scale, "device": self.config.device,
                    **(self.config.reference_options or {})}
            self.reference_part = ReferenceMatchingDetector(global_changes=self.global_changes, **opts)
            self.reference_part.fit(references)
        self._calibration = None

    def fit_batch(self, images: Sequence[Image.Image], keys: Sequence[str] | None = None) -> None:
        """Learn from the batch: sample the partner pool (lazy sequences are read only there), extract
        its features and score the pool images against each other. With `keys` the pool is drawn
        from the images' contents, whatever their order."""
        cfg = self.config
        if len(images) < 2:
            raise DetectorError(f"the batch detector needs at least 2 images in the batch, got {len(images)}")
        t0 = time.perf_counter()
        n = len(images)
        if keys is not None and len(keys) == n:
            order = seeded_sample(keys, cfg.max_pool, cfg.seed)
        else:
            order = np.random.default_rng(cfg.seed).permutation(n)[: min(n, cfg.max_pool)]
        pool = []
        for i in sorted(order):
            try:
                pool.append(_rgb(images[int(i)]))
            except ImageLoadError:  # an unreadable file is reported where it is inspected; the pool goes on
                continue
        if len(pool) < 2:
            raise DetectorError(f"the batch detector needs at least 2 readable images in the batch, got {len(pool)}")
        if self.reference_part is not None:
            self.scale = self.reference_part.scale
        else:
            self.scale = working_scale(cfg.resolution, typical_side(pool), cfg.min_scale)
        self._max_side = 4 * max(cfg.resolution, round(self.scale * typical_side(pool)))
        self.pool_keys = [image_key(im) for im in pool]
        with torch.inference_mode():
            raw_feats = [self._features(im) for im in pool]
            flat = torch.cat([f[0].reshape(-1, f[0].shape[-1]) for f in raw_feats])
            self.channel_scale = 1.0 / flat.std(0).clamp_min(1e-6)
            self.pool_feats = [[(g * self.channel_scale).reshape(-1, g.shape[-1]) for g in f] for f in raw_feats]
            shapes = [f[0].shape[:2] for f in raw_feats]
            self._cache = {}
            batch_maps = [self._batch_map(key, feats, shape) for key, feats, shape in zip(self.pool_keys, self.pool_feats, shapes, strict=True)]
            ref_maps = self.reference_part.raw_maps(pool) if self.reference_part is not None else None
            b_norm = float(np.median([float(m.median()) for m in batch_maps]))
            r_norm = float(np.median([float(m[1].median()) for m in ref_maps])) if ref_maps else 1.0
            self._norms = (max(b_norm, 1e-9), max(r_norm, 1e-9))
            self.pool_descriptors = np.stack([f[0].mean(0).numpy() for f in self.pool_feats])
            for j, key in enumerate(self.pool_keys):
                self._cache[key] = self._score(batch_maps[j], ref_maps[j] if ref_maps else None, self.pool_descriptors[j])
            raw = np.array([self._cache[k].raw for k in self.pool_keys])
            if cfg.refine_neighbours:
                raw = neighbour_refined(raw, self.pool_descriptors, raw, self.pool_descriptors, cfg.refine_neighbours)
                for k, r in zip(self.pool_keys, raw, strict=True):
                    self._cache[k].raw = float(r)
            self.pool_scores = raw
        self._calibration = Calibration.from_batch(self.pool_scores, method="batch pool")
        self._held_out = self._score_references_held_out()
        self.fit_seconds = time.perf_counter() - t0

    def _score_references_held_out(self) -> list[tuple[tuple[int, int], _Scored]]:
        """Each reference scored as a batch image would be, its reference map from the others only:
        the known-good scores of references-mode calibration, and the anchor that checks a batch
        calibration (`Calibration.from_batch`)."""
        if self.reference_part is None or len(self._references) < 2:
            return []
        cfg = self.config
        out = []
        with torch.inference_mode():
            for i, ref in enumerate(self._references):
                raw_f = self._features(ref)
                feats = [(g * self.channel_scale).reshape(-1, g.shape[-1]) for g in raw_f]
                bmap = self._batch_map(image_key(ref), feats, raw_f[0].shape[:2])
                ref_map = self.reference_part.raw_maps([ref], exclude=i)[0]
                out.append((ref.size, self._score(bmap, ref_map, feats[0].mean(0).numpy())))
            if cfg.refine_neighbours:
                refined = neighbour_refined(self.pool_scores, self.pool_descriptors, np.array([o.raw for _, o in out]),
                                            np.stack([o.descriptor for _, o in out]), cfg.refine_neighbours)
                for (_, scored), r in zip(out, refined, strict=True):
                    scored.raw = float(r)
        return out

    def good_scores(self) -> np.ndarray:
        """The references' held-out scores (after `fit_batch`; empty before, or with under 2 references)."""
        return np.array([scored.raw for _, scored in self._held_out], dtype=np.float64)

    def held_out_outputs(self) -> list[DetectorOutput]:
        return [self.calibrated_output(size, scored.raw, scored.smooth) for size, scored in self._held_out]

    # ------------------------------------------------------------------ scoring
    def _features(self, image: Image.Image) -> list[torch.Tensor]:
        assert self.scale is not None
        r = self.config.resolution
        size = working_size(*image.size, scale=self.scale, max_side=max(4 * r, self._max_side))
        return [f[0] for f in self.extractor(self.extractor.prepare([image], size), self.config.pools)]

    def _batch_map(self, key: str, feats: list[torch.Tensor], shape: tuple[int, int]) -> torch.Tensor:
        """Mutual-scoring map of one image at working pixels (blurred), averaged over pool sizes."""
        cfg = self.config
        idx = choose_partners(key, self.pool_keys, cfg.partners, cfg.seed)
        if not idx:
            raise DetectorError("the batch detector needs at least one other image in the batch")
        maps = []
        for p, q in enumerate(feats):
            per = per_partner_distances(q, [self.pool_feats[i][p] for i in idx])
            maps.append(mutual_scores(per, cfg.fraction).view(shape))
        d = torch.stack(maps).mean(0)
        stride = self.extractor.stride
        up = F.interpolate(d[None, None], size=(shape[0] * stride, shape[1] * stride), mode="bilinear", align_corners=False)
        return gaussian_blur(up, cfg.blur_sigma)[0, 0]

    def _score(self, batch_map: torch.Tensor, ref: RawMap | None, descriptor: np.ndarray) -> _Scored:
        """The batch map fused with the reference part's (each in units of its typical value), and the
        reference part's global score added on the same scale."""
        cfg = self.config
        fused = batch_map / self._norms[0]
        global_term = 0.0
        if ref is not None:
            ref_map = ref.smooth
            if ref_map.shape != fused.shape:
                ref_map = F.interpolate(ref_map[None, None], size=fused.shape, mode="bilinear", align_corners=False)[0, 0]
            w = cfg.reference_weight
            fused = (1 - w) * fused + w * ref_map / self._norms[1]
            global_term = w * ref.global_term / self._norms[1]
        raw = float(image_scores(fused[None, None], cfg.score_margin, cfg.score_top_fraction)[0]) + global_term
        return _Scored(raw, fused, descriptor)

    def predict(self, images: Sequence[Image.Image]) -> list[DetectorOutput]:
        if self._calibration is None or not self.pool_keys:
            raise DetectorError("batch: call fit(references) and fit_batch(images) before predict()")
        cfg = self.config
        imgs = [_rgb(im) for im in images]
        keys = [image_key(im) for im in imgs]
        todo = [i for i, k in enumerate(keys) if k not in self._cache]
        scored: dict[int, _Scored] = {i: self._cache[k] for i, k in enumerate(keys) if k in self._cache}
        if todo:
            with torch.inference_mode():
                ref_maps = self.reference_part.raw_maps([imgs[i] for i in todo]) if self.reference_part is not None else None
                new_raw, new_desc = [], []
                for n, i in enumerate(todo):
                    raw_f = self._features(imgs[i])
                    feats = [(g * self.channel_scale).reshape(-1, g.shape[-1]) for g in raw_f]
                    bmap = self._batch_map(keys[i], feats, raw_f[0].shape[:2])
                    desc = feats[0].mean(0).numpy()
                    scored[i] = self._score(bmap, ref_maps[n] if ref_maps else None, desc)
                    new_raw.append(scored[i].raw)
                    new_desc.append(desc)
                if cfg.refine_neighbours:
                    refined = neighbour_refined(self.pool_scores, self.pool_descriptors, np.array(new_raw),
                                                np.stack(new_desc), cfg.refine_neighbours)
                    for i, r in zip(todo, refined, strict=True):
                        scored[i].raw = float(r)
        return [self.calibrated_output(imgs[i].size, scored[i].raw, scored[i].smooth) for i in range(len(imgs))]

    def batch_scores(self) -> np.ndarray:
        return self.pool_scores

    def settings(self) -> dict[str, Any]:
        d = asdict(self.config)
        d["detector"] = self.name
        d["pool_size"] = len(self.pool_keys)
        d["references"] = self.reference_part.settings() if self.reference_part is not None else None
        return d


def _rgb(image: Image.Image) -> Image.Image:
    return image if image.mode == "RGB" else image.convert("RGB")


__all__ = ["MIN_BATCH", "BatchConfig", "BatchDetector"]
