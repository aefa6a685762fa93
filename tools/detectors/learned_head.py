"""A small learned head that separates defects from normal variation (SimpleNet / GLASS style).

Nearest-neighbour matching treats every direction of feature space alike; a head trained per product
can learn which changes matter. It is trained in seconds on the CPU, only on good images and
synthetic defects, never on real defective images of the product:

- normal: the references' patch features (through a learned linear adaptor, initialised to identity);
- feature-space anomalies (SimpleNet): the same features plus Gaussian noise of spread `noise`
  (features are standardized per channel, so the noise is in units of the references' own spread);
- image-space anomalies (GLASS), when the caller passes them: features of patches covered by a
  synthetic defect pasted into a reference.

Loss: binary cross-entropy (softplus on logits), balanced between normal and each anomaly family.
The head's output is an anomaly logit per patch; detectors fuse it with their matching score.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn


@dataclass
class HeadSettings:
    hidden: int = 256
    steps: int = 300
    batch: int = 512
    lr: float = 1e-3
    noise: float = 2.0  # feature-space noise spread, in standardized units; 0 = off
    seed: int = 0


class AnomalyHead(nn.Module):
    """Adaptor (C -> C, identity at start) then a two-layer discriminator; returns anomaly logits."""

    def __init__(self, channels: int, hidden: int = 256) -> None:
        super().__init__()
        self.adaptor = nn.Linear(channels, channels)
        with torch.no_grad():
            self.adaptor.weight.copy_(torch.eye(channels))
            self.adaptor.bias.zero_()
        self.discriminator = nn.Sequential(nn.Linear(channels, hidden), nn.LeakyReLU(0.2), nn.Linear(hidden, 1))

    def normality(self, adapted: torch.Tensor) -> torch.Tensor:
        return self.discriminator(adapted)[..., 0]

    def forward(self, feats: torch.Tensor) -> torch.Tensor:
        """(..., C) standardized features -> (...) anomaly logits (higher = more anomalous)."""
        return -self.normality(self.adaptor(feats))


def train_head(normal: torch.Tensor, anomalous: torch.Tensor | None = None, settings: HeadSettings | None = None) -> AnomalyHead:
    """Train on (N, C) normal patch features and optional (M, C) features of synthetic defects."""
    s = settings or HeadSettings()
    if normal.ndim != 2 or normal.shape[0] == 0:
        raise ValueError(f"normal features must be a non-empty (N, C) tensor, got shape {tuple(normal.shape)}")
    if s.noise <= 0 and (anomalous is None or anomalous.shape[0] == 0):
        raise ValueError("the head needs anomalies to learn from: feature noise > 0 or synthetic defects")
    gen = torch.Generator().manual_seed(s.seed)
    softplus = nn.functional.softplus
    # Callers extract features under inference mode; training needs ordinary tensors.
    with torch.inference_mode(False), torch.enable_grad():
        torch.manual_seed(s.seed)
        head = AnomalyHead(normal.shape[1], s.hidden)
        opt = torch.optim.Adam(head.parameters(), lr=s.lr)
        normal = normal.clone()
        anomalous = anomalous.clone() if anomalous is not None else None
        for _ in range(s.steps):
            idx = torch.randint(0, normal.shape[0], (s.batch,), generator=gen)
            x = head.adaptor(normal[idx])
            loss = softplus(-head.normality(x)).mean()
            if s.noise > 0:
                noisy = x + torch.randn(x.shape, generator=gen) * s.noise
                loss = loss + softplus(head.normality(noisy)).mean()
            if anomalous is not None and anomalous.shape[0]:
                j = torch.randint(0, anomalous.shape[0], (s.batch // 2,), generator=gen)
                loss = loss + softplus(head.normality(head.adaptor(anomalous[j]))).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
    return head.eval().requires_grad_(False)


__all__ = ["AnomalyHead", "HeadSettings", "train_head"]
