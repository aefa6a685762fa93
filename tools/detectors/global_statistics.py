"""A whole-image score for anomalies no single patch shows, and the rule that decides whether a product
gets it.

A denser weave, a colour that is off everywhere, a surface out of focus: every patch of such an
image still finds a close look-alike among the references' patches, so nearest-patch matching misses
it. The image's pooled feature statistics (per-channel mean and spread over its patches) do change.
`GlobalStatistics` measures how far an image's statistics lie from the nearest reference's, in units
of the largest distance of a reference to its nearest other reference, and counts only what lies
beyond that (0 within): with the median distance as the unit, most good images of a textured product
got a share of it (68-82 % on the validation weave and bracket, against 8-32 % with the largest).

Whether a product gets this score is decided from its references, like the views rule
(`augmentation_rule.py`): each reference, held out, is scored as it is and with whole-image changes
drawn by the caller (perception tools draw none themselves); when the changed copies stand out from
the held-out references (AUROC at least `threshold`), the score is fused with the patch score, else
it is left out, since references that vary too much globally would turn it into noise.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image

from tools import ranking
from tools.detectors.patch_features import TILE, TILE_CONTEXT


def descriptor(feats: torch.Tensor) -> torch.Tensor:
    """(N, h, w, C) -> (N, 2C): per-channel mean and spread over each image's patches."""
    flat = feats.flatten(1, 2)
    return torch.cat([flat.mean(1), flat.std(1)], dim=1)


class GlobalStatistics:
    """The references' pooled statistics and the global score of an image against them."""

    def __init__(self, grids: Sequence[torch.Tensor]) -> None:
        """`grids`: each reference's (h, w, C) standardized features."""
        self.descriptors = torch.stack([descriptor(g[None])[0] for g in grids])
        n = self.descriptors.shape[0]
        self.norm = self._unit(list(range(n)))
        # a held-out reference is measured in the unit of the others alone, as a new image is measured
        # in the unit of all of them: so its score is a fair good sample for calibration
        self.norm_without = [self._unit([j for j in range(n) if j != i]) for i in range(n)]

    def _unit(self, members: list[int]) -> float:
        """The largest distance of a member to its nearest other member (1 with fewer than 2)."""
        if len(members) < 2:
            return self.norm if hasattr(self, "norm") else 1.0
        d = self.descriptors[members]
        dist = torch.cdist(d, d) + torch.diag(torch.full((len(members),), float("inf")))
        return max(float(dist.min(1).values.max()), 1e-6)

    def scores(self, feats: torch.Tensor, exclude: int | None = None) -> torch.Tensor:
        """(N, h, w, C) -> (N,): how far each image's statistics lie beyond the references' own spread
        (0 within); `exclude`: without that reference (a held-out reference, or a copy of it)."""
        refs, norm = self.descriptors, self.norm
        if exclude is not None and refs.shape[0] > 1:
            refs, norm = refs[torch.arange(refs.shape[0]) != exclude], self.norm_without[exclude]
        d = torch.cdist(descriptor(feats), refs).min(1).values / norm
        return (d - 1.0).clamp_min(0.0)


@dataclass
class GlobalDecision:
    """Whether the global score joins the image score, and on what evidence."""

    weight: float
    separation: float | None  # AUROC of changed copies against held-out references (None: not tested)
    reason: str

    def to_dict(self) -> dict[str, object]:
        return {"weight": self.weight, "separation": None if self.separation is None else round(self.separation, 3),
                "reason": self.reason}


def changed_copy(
    image: Image.Image, change: Callable[[np.ndarray, np.random.Generator], np.ndarray], working_hw: tuple[int, int],
    rng: np.random.Generator,
) -> Image.Image:
    """A whole-image test copy of a reference for the global rule. A reference the backbone sees in
    tiles (a photo of many megapixels) is changed at its working size and brought back to its own size:
    the features see the working size anyway, and the change of a 20-megapixel photo at full size
    needed about 2 GB of float arrays."""
    h, w = working_hw
    if max(h, w) <= TILE + 2 * TILE_CONTEXT:
        return Image.fromarray(change(np.asarray(image), rng))
    small = np.asarray(image.resize((w, h), Image.BILINEAR))
    return Image.fromarray(change(small, rng)).resize(image.size, Image.BILINEAR)


def decide_global(good: np.ndarray, changed: np.ndarray, weight: float, threshold: float) -> GlobalDecision:
    """`good`: global scores of the held-out references; `changed`: of their changed copies (each
    against the references without its source). Fused with `weight` when they separate."""
    good, changed = np.asarray(good, np.float64).ravel(), np.asarray(changed, np.float64).ravel()
    if good.size < 2 or changed.size == 0:
        return GlobalDecision(0.0, None, "fewer than 2 references: no held-out check, no global score")
    auroc = float(ranking.auroc(np.r_[np.ones(changed.size, bool), np.zeros(good.size, bool)], np.r_[changed, good]))
    if auroc >= threshold:
        return GlobalDecision(weight, auroc, f"whole-image changes of the references stand out (AUROC {auroc:.2f}): fused")
    return GlobalDecision(0.0, auroc, f"the references vary too much as a whole (AUROC {auroc:.2f} < {threshold:g}): left out")


__all__ = ["GlobalDecision", "GlobalStatistics", "decide_global", "descriptor", "changed_copy"]
