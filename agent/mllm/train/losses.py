"""Training objectives and the learning-rate schedule, in plain torch (no accelerate, no files).

Stage 1 uses `balanced_bce_loss` (tools.ltfm.expert) on image labels; `map_loss` adds the optional
mask supervision of the expert's base-crop anomaly map. Stage 2's loss is the LLM's own token
cross-entropy over the supervised (answer) tokens, so it needs nothing here.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor


def map_loss(maps: Tensor, targets: Tensor) -> Tensor:
    """BCE between anomaly maps (B, 1, g, g; probabilities) and the defect coverage of each cell
    (same shape, 0..1), with defective cells weighted up to as much as the clean ones together:
    defects cover a few percent of the cells, and an unweighted loss is won by an all-zero map."""
    maps = maps.float().clamp(1e-6, 1 - 1e-6)
    targets = targets.to(maps)
    positive = targets > 0
    n_pos = positive.sum()
    pos_weight = torch.where(
        n_pos > 0, (~positive).sum().clamp_min(1) / n_pos.clamp_min(1), torch.ones_like(n_pos)
    )
    weights = torch.where(positive, pos_weight.to(maps), torch.ones_like(maps))
    return F.binary_cross_entropy(maps, targets, weight=weights, reduction="sum") / weights.sum()


def lr_lambda(total_steps: int, warmup_steps: int, kind: str) -> Callable[[int], float]:
    """Multiplier of the base learning rate at each optimizer step: linear warm-up, then
    cosine / linear decay to zero, or constant."""
    total = max(1, int(total_steps))
    warm = max(0, min(int(warmup_steps), total - 1))

    def factor(step: int) -> float:
        if step < warm:
            return (step + 1) / (warm + 1)
        if kind == "constant":
            return 1.0
        progress = (step - warm) / max(1, total - warm)
        if kind == "linear":
            return max(0.0, 1.0 - progress)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))

    return factor
