"""Stage 1: the Look-Twice anomaly expert alone, on image labels (optionally masks), tower frozen.

Only the base model's vision tower is loaded (`tools.ltfm.tower.load_vision_tower`: the language
model's weights are never read), on the training device. Each batch: the frozen tower's hidden states
for all crops of the images (AnyRes as at inference, or the base crop alone), the expert on them,
`balanced_bce_loss` on the image logits, plus `mask_loss_weight * map_loss` on the base-crop maps of
images whose mask is known. `cache_features` keeps the tower's outputs in memory after the first
epoch (a small data set trained for many epochs). The result is `<out>/ltfm_expert.safetensors`
(`tools.ltfm.expert_io` format), which `load_model(base, expert=...)` and stage 2 read.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from agent.mllm.train.config import ExpertTrainConfig
from agent.mllm.train.data import LabelledImage, labelled_images, load_mask_grid
from agent.mllm.train.losses import map_loss
from tools.ltfm.expert import AnomalyExpert, ExpertConfig, balanced_bce_loss


class ExpertStage:
    """`StageTask` of stage 1."""

    def __init__(self, cfg: ExpertTrainConfig, device: torch.device | str) -> None:
        from tools.ltfm.checkpoints import load_expert_for
        from tools.ltfm.options import resolve_dtype
        from tools.ltfm.tower import load_vision_tower

        self.cfg = cfg
        self.samples: list[LabelledImage] = labelled_images(cfg.data, cfg.categories)
        device = torch.device(device)
        self.vision = load_vision_tower(cfg.model, dtype=resolve_dtype(cfg.dtype, device.type), device=str(device))
        vision = self.vision.config
        if cfg.init_expert:
            expert = load_expert_for(cfg.init_expert, vision, device="cpu", dtype=torch.float32, **cfg.expert)
        else:
            expert = AnomalyExpert(ExpertConfig.from_vision_config(vision, **cfg.expert))
        assert expert is not None
        self.vision.use_expert(expert.float())  # checks the sizes against the tower
        self.module: nn.Module = expert
        self.module.requires_grad_(True)
        self._cache: dict[int, tuple[Tensor, list[Tensor]]] = {}

    def num_samples(self) -> int:
        return len(self.samples)

    def param_groups(self) -> list[dict[str, Any]]:
        return [{"params": [p for p in self.module.parameters() if p.requires_grad]}]

    def _features(self, indices: list[int]) -> tuple[Tensor, list[Tensor], list[int]]:
        """(final tokens, level features, crops per image) of samples `indices`, from the cache or the tower."""
        from tools.image_io import load_image

        layers = self.module.config.layer_indices  # type: ignore[union-attr]
        found = {i: self._cache[i] for i in indices if i in self._cache}
        todo = [i for i in indices if i not in found]
        if todo:
            images = [load_image(self.samples[i].path, mode="RGB") for i in todo]
            feats = self.vision.features(images, anyres=self.cfg.anyres)
            start = 0
            for i, n in zip(todo, feats.split_sizes, strict=True):
                found[i] = (
                    feats.final[start : start + n],
                    [f[start : start + n] for f in feats.levels(layers)],
                )
                start += n
                if self.cfg.cache_features:
                    self._cache[i] = (found[i][0].cpu(), [f.cpu() for f in found[i][1]])
        items = [found[i] for i in indices]
        device = self.module.device  # type: ignore[union-attr]
        final = torch.cat([it[0] for it in items]).to(device)
        levels = [torch.cat([it[1][k] for it in items]).to(device) for k in range(len(layers))]
        return final, levels, [it[0].shape[0] for it in items]

    def loss(self, model: nn.Module, indices: list[int]) -> Tensor:
        final, levels, splits = self._features(indices)
        out = model(final, levels, splits)
        labels = torch.tensor([self.samples[i].anomalous for i in indices], device=out.image_logits.device)
        loss = balanced_bce_loss(out.image_logits, labels)
        if self.cfg.mask_loss_weight > 0:
            loss = loss + self.cfg.mask_loss_weight * self._mask_term(out.crop_maps, splits, indices)
        return loss

    def _mask_term(self, crop_maps: Tensor, splits: list[int], indices: list[int]) -> Tensor:
        grid = crop_maps.shape[-1]
        starts = [sum(splits[:b]) for b in range(len(splits))]
        maps, targets = [], []
        for b, i in enumerate(indices):
            target = load_mask_grid(self.samples[i], grid)
            if target is not None:
                maps.append(crop_maps[starts[b]])
                targets.append(target)
        if not maps:
            return crop_maps.sum() * 0.0
        return map_loss(torch.stack(maps), torch.stack(targets).to(crop_maps.device))

    def export(self, out: Path) -> dict[str, str]:
        from tools.ltfm.checkpoints import EXPERT_FILENAME
        from tools.ltfm.expert_io import save_expert

        path = save_expert(self.module, out / EXPERT_FILENAME)  # type: ignore[arg-type]
        return {"expert": str(path)}
