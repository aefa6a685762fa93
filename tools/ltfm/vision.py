"""The expert's view of an image: AnyRes crops, the frozen vision tower, and the expert's score and map.

`LlavaVision` preprocesses images exactly as LLaVA-OneVision does (the base crop, the whole image
squashed to the tower's input size, then the AnyRes grid crops) and returns the tower's hidden states
for all crops (`VisionFeatures`). `ExpertVision` runs the expert on them and gives each image its
anomaly score and map at the image's own resolution (`ExpertEncoding`): what the `ltfm` detector reports,
with no language model call. The LLaVA-OneVision wrapper of `agent.mllm` builds on `LlavaVision` too.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np
import torch
from torch import Tensor

from tools.ltfm.checkpoints import ExpertSource, load_llava
from tools.ltfm.expert import AnomalyExpert, ExpertOutput, assemble_image_map

if TYPE_CHECKING:
    from PIL import Image


@dataclass
class VisionFeatures:
    """Frozen vision-tower outputs for a batch of images (all crops, image-major)."""

    hidden_states: tuple[Tensor, ...]  # (N, P, C) each; index 0 = embeddings
    final_layer: int  # the index the projector reads (the "final visual tokens")
    split_sizes: list[int]  # crops per image
    image_sizes: list[tuple[int, int]]  # (H, W) per image
    grid_shapes: list[tuple[int, int] | None]  # AnyRes (nH, nW) per image

    @property
    def final(self) -> Tensor:
        return self.hidden_states[self.final_layer]

    def levels(self, layer_indices: Sequence[int]) -> list[Tensor]:
        return [self.hidden_states[i] for i in layer_indices]


@dataclass(kw_only=True)
class ExpertEncoding:
    """One image as the expert sees it: its size, AnyRes grid, image score and crop maps."""

    image_size: tuple[int, int]  # (H, W) of the original image
    grid_shape: tuple[int, int] | None  # AnyRes (nH, nW); None for a single crop
    score: float | None = None  # expert image score (anomaly probability); None without expert
    crop_maps: Tensor | None = None  # (crops, 1, g, g) expert maps, on CPU

    def anomaly_map(self) -> np.ndarray | None:
        """Expert anomaly map (H, W) float32 at the image's own resolution, or None without expert."""
        if self.crop_maps is None:
            return None
        return assemble_image_map(self.crop_maps, self.grid_shape, self.image_size).numpy().astype(np.float32)


class EncodesWithExpert(Protocol):
    """What the `ltfm` detector needs of a model: an attached expert and per-image encodings
    (`ExpertVision`, or `agent.mllm`'s LLaVA-OneVision wrapper, which already holds one)."""

    expert: AnomalyExpert | None

    def encode_images(self, images: Sequence[Image.Image]) -> Sequence[ExpertEncoding]: ...


class LlavaVision:
    """The vision side of a LLaVA-OneVision model: AnyRes preprocessing and the frozen tower."""

    def __init__(self, llava: Any, image_processor: Any) -> None:
        cfg = llava.config
        self.tower = llava.model.vision_tower
        self.image_processor = image_processor
        self.config = cfg.vision_config
        self.grid_pinpoints = [list(p) for p in cfg.image_grid_pinpoints]
        self.crop_size = int(cfg.vision_config.image_size)
        layer = cfg.vision_feature_layer
        self.feature_layers: list[int] = [layer] if isinstance(layer, int) else list(layer)

    @property
    def device(self) -> torch.device:
        return next(self.tower.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.tower.parameters()).dtype

    def check_expert(self, expert: AnomalyExpert) -> None:
        """Raise ValueError when `expert` was not sized for this tower."""
        ec, vc = expert.config, self.config
        grid = int(vc.image_size) // int(vc.patch_size)
        if ec.hidden_size != vc.hidden_size or ec.grid_size != grid:
            raise ValueError(
                f"expert sizes (width {ec.hidden_size}, grid {ec.grid_size}) do not match the vision tower "
                f"(width {vc.hidden_size}, grid {grid})"
            )
        too_deep = [i for i in ec.layer_indices if not -vc.num_hidden_layers - 1 <= i <= vc.num_hidden_layers]
        if too_deep:
            raise ValueError(
                f"expert layer indices {too_deep} exceed the tower's {vc.num_hidden_layers} layers"
            )

    def preprocess(self, image: Image.Image, anyres: bool) -> tuple[Tensor, tuple[int, int], Any]:
        """(pixel values of the crops, (H, W), AnyRes grid or None) of one image."""
        from transformers.models.llava_onevision.modeling_llava_onevision import (
            get_anyres_image_grid_shape,
            image_size_to_num_patches,
        )

        rgb = image.convert("RGB") if image.mode != "RGB" else image
        batch = self.image_processor(images=[rgb], return_tensors="pt")
        size = tuple(int(v) for v in batch["image_sizes"][0].tolist())  # (H, W)
        n = image_size_to_num_patches(list(size), self.grid_pinpoints, self.crop_size) if anyres else 1
        pixels = batch["pixel_values"][0][:n]
        grid = (
            get_anyres_image_grid_shape(list(size), self.grid_pinpoints, self.crop_size) if anyres else None
        )
        return pixels, size, grid

    @torch.no_grad()
    def features(self, images: Sequence[Image.Image], anyres: bool = True) -> VisionFeatures:
        """The frozen tower's hidden states for all crops of `images` (e.g. to train the expert:
        `expert(f.final, f.levels(expert.config.layer_indices), f.split_sizes)`). `anyres=False`: the
        base crop only."""
        prepared = [self.preprocess(im, anyres) for im in images]
        pixels = torch.cat([p[0] for p in prepared], dim=0).to(self.device, self.dtype)
        hidden = self.tower(pixels, output_hidden_states=True, return_dict=True).hidden_states
        return VisionFeatures(
            hidden_states=tuple(hidden),
            final_layer=self.feature_layers[-1],
            split_sizes=[p[0].shape[0] for p in prepared],
            image_sizes=[p[1] for p in prepared],
            grid_shapes=[p[2] for p in prepared],
        )


@torch.no_grad()
def run_expert(expert: AnomalyExpert, feats: VisionFeatures) -> ExpertOutput:
    """The (frozen) expert on the tower's features, on the expert's device."""
    dev = expert.device
    return expert(feats.final.to(dev), [f.to(dev) for f in feats.levels(expert.config.layer_indices)], feats.split_sizes)


def expert_encodings(out: ExpertOutput, feats: VisionFeatures) -> list[ExpertEncoding]:
    """Each image's score and crop maps (on CPU) from the expert's output for `feats`."""
    return [
        ExpertEncoding(
            image_size=size,
            grid_shape=grid,
            score=float(out.image_scores[b]),
            crop_maps=out.per_image(b)[0].detach().float().cpu(),
        )
        for b, (size, grid) in enumerate(zip(feats.image_sizes, feats.grid_shapes, strict=True))
    ]


class ExpertVision:
    """The vision tower and the expert alone: per-image anomaly scores and maps, no language model."""

    def __init__(self, vision: LlavaVision, expert: AnomalyExpert) -> None:
        vision.check_expert(expert)
        self.vision = vision
        self.expert: AnomalyExpert | None = expert

    def encode_images(self, images: Sequence[Image.Image]) -> list[ExpertEncoding]:
        """Score and map of each image (all AnyRes crops, one pass through the tower)."""
        assert self.expert is not None
        feats = self.vision.features(list(images))
        return expert_encodings(run_expert(self.expert, feats), feats)


def load_expert_vision(
    model: str | os.PathLike[str],
    expert: ExpertSource = "auto",
    dtype: str | torch.dtype | None = "auto",
    device_map: Any = None,
) -> ExpertVision | None:
    """The tower and the expert of a LLaVA-OneVision checkpoint (see `load_llava`); None when no expert
    weights were found for it."""
    ckpt = load_llava(model, expert=expert, dtype=dtype, device_map=device_map)
    if ckpt.expert is None:
        return None
    return ExpertVision(LlavaVision(ckpt.llava, ckpt.image_processor), ckpt.expert)


__all__ = [
    "EncodesWithExpert",
    "ExpertEncoding",
    "ExpertVision",
    "LlavaVision",
    "VisionFeatures",
    "expert_encodings",
    "load_expert_vision",
    "run_expert",
]
