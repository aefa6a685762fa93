"""Which flips and turns of the references may join the bank: a rule that can say no.

Augmenting a few references with flipped and turned views widens what counts as normal, which helps
a free texture (a woven fabric looks the same upside down) and hides real defects of an oriented
part (a bracket upside down is a wrong part, a tile whose stripes run across is a wrong tile). The
rule asks the references themselves: each held-out reference is scored against the others, once as
it is and once per view. A view that looks no less normal than the reference itself (median score
ratio within `tolerance`) describes the product; a view that looks abnormal does not, and is refused.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

#: Candidate views, in the order they are tried. Quarter turns are offered only for square-ish images.
FLIP_VIEWS = ("hflip", "vflip", "rot180")
TURN_VIEWS = ("rot90", "rot270")


@dataclass
class AugmentationDecision:
    accepted: tuple[str, ...]
    ratios: dict[str, float] = field(default_factory=dict)  # median score(view) / score(original)
    reason: str = ""

    def to_dict(self) -> dict[str, object]:
        return {"accepted": list(self.accepted), "ratios": {k: round(v, 3) for k, v in self.ratios.items()},
                "reason": self.reason}


def decide_views(
    held_out_score: Callable[[int, str | None], float],
    n_references: int,
    candidates: Sequence[str],
    tolerance: float = 0.1,
) -> AugmentationDecision:
    """`held_out_score(i, view)`: raw image score of reference i (seen through `view`, None = as it
    is) against the un-augmented bank of the other references. Returns the views to accept."""
    if n_references < 2:
        return AugmentationDecision((), {}, "fewer than 2 references: no held-out check, no views")
    if not candidates:
        return AugmentationDecision((), {}, "no candidate views")
    base = np.array([held_out_score(i, None) for i in range(n_references)], dtype=np.float64)
    base = np.maximum(base, 1e-9)
    ratios: dict[str, float] = {}
    for name in candidates:
        scores = np.array([held_out_score(i, name) for i in range(n_references)], dtype=np.float64)
        ratios[name] = float(np.median(scores / base))
    accepted = tuple(v for v in candidates if ratios[v] <= 1.0 + tolerance)
    refused = [v for v in candidates if v not in accepted]
    reason = (
        f"accepted {', '.join(accepted) or 'none'}"
        + (f"; refused {', '.join(refused)} (held-out views look abnormal: the product is oriented)" if refused else "")
    )
    return AugmentationDecision(accepted, ratios, reason)


__all__ = ["AugmentationDecision", "FLIP_VIEWS", "TURN_VIEWS", "decide_views"]
