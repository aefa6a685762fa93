"""What every anomaly family shares: the result of an edit, the registry of kinds, and the structured
description of an edit (type, location words, size, appearance, box).

Descriptions use the words the rest of the agent uses: `tools.regions.location_words` (3x3 grid), the
area as a fraction of the image, and a short appearance phrase ("dark thin curved line").
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from instruct_data.synthesis.drawing import luminance
from tools.regions import location_words
from tools.registry import Registry


@dataclass
class SynthResult:
    """One synthesized anomaly: `image` uint8 HxWx3, `mask` bool HxW (non-empty), `description`."""

    image: np.ndarray
    mask: np.ndarray
    description: dict[str, Any] = field(default_factory=dict)


SynthFn = Callable[[np.ndarray, np.random.Generator], SynthResult]

#: name -> synthesis function (image, rng) -> SynthResult; every family module registers its kinds here
#: (`instruct_data.synthesis.anomalies` imports them all).
ANOMALIES: Registry[SynthResult] = Registry("anomaly")


def size_words(fraction: float) -> str:
    if fraction < 0.005:
        return "tiny"
    if fraction < 0.02:
        return "small"
    if fraction < 0.08:
        return "medium"
    return "large"


def tone_of(before: np.ndarray, after: np.ndarray, mask: np.ndarray) -> str:
    """'darker', 'brighter' or 'similar brightness' of the masked area after the edit."""
    diff = float(luminance(after)[mask].mean() - luminance(before)[mask].mean())
    if diff < -8:
        return "darker"
    if diff > 8:
        return "brighter"
    return "similar brightness"


def describe(kind: str, family: str, mask: np.ndarray, appearance: str, **extra: Any) -> dict[str, Any]:
    """The structured description of a synthesized anomaly (type, location, size, appearance, box)."""
    h, w = mask.shape
    ys, xs = np.nonzero(mask)
    cy, cx = float(ys.mean()), float(xs.mean())
    fraction = float(mask.sum()) / (h * w)
    desc: dict[str, Any] = {
        "type": kind,
        "family": family,
        "location": location_words(cx, cy, w, h),
        "size": round(fraction, 5),
        "size_words": size_words(fraction),
        "appearance": appearance,
        "bbox": [int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1],
        "centroid": [round(cx, 1), round(cy, 1)],
    }
    desc.update(extra)
    return desc
