"""The expert's view of an image: AnyRes crops, the frozen vision tower, and the expert's score and map.

`LlavaVision` preprocesses images exactly as LLaVA-OneVision does (the base crop, the whole image
squashed to the tower's input size, then the AnyRes grid crops) and returns the tower's hidden states
for all crops at the layers the projector and the expert read (`VisionFeatures`). `ExpertVision` runs
the expert on them and gives each image its anomaly score and map at the image's own resolution
(`ExpertEncoding`): what the `ltfm` detector reports, with no language model (`tools.ltfm.tower` loads
the tower alone). The LLaVA-OneVision wrapper of `agent.mllm` builds on `LlavaVision` too.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np
import torch
from torch import Tensor

from tools.ltfm.expert import AnomalyExpert, ExpertOutput, assemble_image_map

if TYPE_CHECKING:
    from PIL import Image


@dataclass
class VisionFeatures:
    """Frozen vision-tower outputs for a batch of images (all crops, image-major), only at the layers
    asked for: the projector's and the expert's, not every hidden state of every crop."""

    layers: dict[int, Tensor]  # hidden-state index (0 = embeddings, i = output of layer i) -> (N, P, C)
    final_layer: int  # the index the projector reads (the "final visual tokens")
    split_sizes: list[int]  # crops per image
    image_sizes: list[tuple[int, int]]  # (H, W) per image
    grid_shapes: list[tuple[int, int] | None]  # AnyRes (nH, nW) per image
    num_layers: int  # layers of the tower (a negative index counts back from hidden state num_layers)

    @property
    def final(self) -> Tensor:
        return self.layers[self.final_layer]

    def levels(self, layer_indices: Sequence[int]) -> list[Tensor]:
        return [self.layers[i % (self.num_layers + 1) if i < 0 else i] for i in layer_indices]


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
    """The vision side of a LLaVA-OneVision model: AnyRes preprocessing and the frozen tower.

    Built from the tower alone (`load_vision_tower` reads only its weights) or from a loaded LLaVA model
    (`from_llava`). `keep_layers` are the hidden states `features` keeps besides the projector's (the
    expert's levels, set by whoever attaches an expert)."""

    def __init__(self, tower: Any, llava_config: Any, image_processor: Any) -> None:
        cfg = llava_config
        self.tower = tower
        self.image_processor = image_processor
        self.config = cfg.vision_config
        self.grid_pinpoints = [list(p) for p in cfg.image_grid_pinpoints]
        self.crop_size = int(cfg.vision_config.image_size)
        self.num_layers = int(cfg.vision_config.num_hidden_layers)
        layer = cfg.vision_feature_layer
        self.feature_layers: list[int] = [self.hidden_index(i) for i in ([layer] if isinstance(layer, int) else layer)]
        self.keep_layers: tuple[int, ...] = ()

    @classmethod
    def from_llava(cls, llava: Any, image_processor: Any) -> LlavaVision:
        return cls(llava.model.vision_tower, llava.config, image_processor)

    def hidden_index(self, index: int) -> int:
        """A hidden-state index counted from the front (`-1` is the last layer's output)."""
        return int(index) % (self.num_layers + 1) if int(index) < 0 else int(index)

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

    def use_expert(self, expert: AnomalyExpert | None) -> None:
        """Check `expert` against the tower and keep its levels in `features` from now on (None: the
        projector's layer only)."""
        if expert is not None:
            self.check_expert(expert)
        self.keep_layers = tuple(expert.config.layer_indices) if expert is not None else ()

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
    def features(
        self, images: Sequence[Image.Image], anyres: bool = True, layers: Sequence[int] | None = None
    ) -> VisionFeatures:
        """The frozen tower's hidden states for all crops of `images`, at the projector's layer, the
        `keep_layers` and `layers` only (e.g. to train the expert:
        `expert(f.final, f.levels(expert.config.layer_indices), f.split_sizes)`). `anyres=False`: the base
        crop only."""
        prepared = [self.preprocess(im, anyres) for im in images]
        pixels = torch.cat([p[0] for p in prepared], dim=0).to(self.device, self.dtype)
        wanted = {*self.feature_layers, *(self.hidden_index(i) for i in (*self.keep_layers, *(layers or ())))}
        return VisionFeatures(
            layers=self.hidden_states(pixels, sorted(wanted)),
            final_layer=self.feature_layers[-1],
            split_sizes=[p[0].shape[0] for p in prepared],
            image_sizes=[p[1] for p in prepared],
            grid_shapes=[p[2] for p in prepared],
            num_layers=self.num_layers,
        )

    def hidden_states(self, pixels: Tensor, indices: Sequence[int]) -> dict[int, Tensor]:
        """The tower's hidden states `indices` for `pixels`, caught by forward hooks as the tower runs
        (`output_hidden_states=True` would keep every layer's output until the call returns)."""
        caught: dict[int, Tensor] = {}
        handles = []
        for index in indices:
            module = self.tower.embeddings if index == 0 else self.tower.encoder.layers[index - 1]

            def keep(_module: Any, _inputs: Any, output: Any, index: int = index) -> None:
                caught[index] = output[0] if isinstance(output, tuple) else output

            handles.append(module.register_forward_hook(keep))
        try:
            self.tower(pixels, return_dict=True)
        finally:
            for handle in handles:
                handle.remove()
        return caught


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
        feats = self.vision.features(list(images), layers=self.expert.config.layer_indices)
        return expert_encodings(run_expert(self.expert, feats), feats)


__all__ = [
    "EncodesWithExpert",
    "ExpertEncoding",
    "ExpertVision",
    "LlavaVision",
    "VisionFeatures",
    "expert_encodings",
    "run_expert",
]
