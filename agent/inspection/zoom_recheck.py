"""Step 2 of the loop, the zoomed re-check: the most suspicious places, zoomed in, scored again against
the references. (Not the LTFM expert's "look twice" token selection, which lives in `tools.ltfm`.)

The first look scores the whole image at the detector's working resolution, where a pit a few pixels
wide is a fraction of a patch. The second look crops each of the `top_k` most suspicious places of
the first map (with context) and scores the crop at `zoom` times the resolution against the
references at that same resolution (a reference-matching detector fitted once on them, with the
views the first detector accepted). Its unit is what the references themselves score there when held
out (the median held-out score), so the ratio says: above 1, the place is less like the references
than they are like each other (confirmed); below 1, it is within their variation (dismissed).

The final score is the first score times the largest ratio to the power `weight` (0: record only), so
a pit that only the zoom resolves raises the score and a place that the first look over-rated lowers
it; the places are re-ranked by the ratio, and the most suspicious one is what the record points to.
Without references to compare with (zero-shot detectors), the step is skipped and says why.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image

from agent.inspection.settings import ZoomRecheckSettings
from tools.detectors import Detector
from tools.detectors.patch_features import round_to_grid
from tools.detectors.reference_matching import ReferenceMatchingDetector
from tools.region_views import suspicious_places, zoom_box

RATIO_RANGE = (0.25, 4.0)  # a single look cannot move the score by more than this factor


@dataclass
class Look:
    target: str
    box: tuple[int, int, int, int]  # the crop that was scored again
    place: tuple[int, int, int, int]  # the suspicious place inside it
    first: float  # first-look peak value there (raw)
    second: float  # second-look raw score of the crop
    ratio: float  # second / the references' own held-out score at the zoom resolution

    @property
    def outcome(self) -> str:
        return "confirmed" if self.ratio > 1.0 else "dismissed"

    def to_dict(self) -> dict[str, Any]:
        return {
            "target": self.target,
            "box": list(self.box),
            "place": list(self.place),
            "first_peak_raw": round(self.first, 5),
            "second_raw": round(self.second, 5),
            "ratio": round(self.ratio, 4),
            "outcome": self.outcome,
        }


def comparable_part(detector: Detector) -> ReferenceMatchingDetector | None:
    """The reference-matching detector behind `detector` (itself, or a batch detector's reference
    part), which the second look can zoom like; None when the detector compares with no references."""
    if isinstance(detector, ReferenceMatchingDetector):
        return detector
    part = getattr(detector, "reference_part", None)
    return part if isinstance(part, ReferenceMatchingDetector) else None


#: Bank size of the zoomed matcher below which no coreset is selected (about 16 references at 2x).
ZOOM_RECHECK_BANK = 65536


class ZoomRecheck:
    """The zoomed reference matcher: fitted once on the references, then asked about crops."""

    def __init__(self, first: ReferenceMatchingDetector, references: Sequence[Image.Image], s: ZoomRecheckSettings) -> None:
        self.settings = s
        cfg = first.config
        self.detector = ReferenceMatchingDetector(
            cfg,
            resolution=round_to_grid(cfg.resolution * s.zoom),
            extra_resolution=0,
            # no views: at twice the size, flipped copies would quadruple a bank that already holds four
            # times the patches, and push it past `max_bank` into a coreset selection (minutes per fit)
            augment=(),
            max_bank=max(cfg.max_bank, ZOOM_RECHECK_BANK),
            align="off",  # crops are not registered; the first look was position-aware where it could be
            head_weight=0.0,
            global_weight=0.0,
        )
        self.references = list(references)
        self.detector.fit(self.references)
        held = np.array([o.raw_score for o in self.detector.held_out_outputs()], dtype=np.float64)
        self.unit = float(np.median(held)) if held.size else 1.0

    def look(self, image: Image.Image, raw_map: np.ndarray, held_out: int | None = None) -> list[Look]:
        """The top places of `raw_map` (the first look, at image resolution), each scored again;
        `held_out`: the image is that reference, compared with the others only."""
        s = self.settings
        looks = [
            self.look_at(image, place, f"place {n + 1}", s.margin, peak, held_out)
            for n, (place, peak) in enumerate(suspicious_places(raw_map, s.top_k, s.min_crop))
        ]
        looks.sort(key=lambda lk: -lk.ratio)
        return looks

    def look_at(
        self, image: Image.Image, place: tuple[int, int, int, int], target: str, margin: float,
        first: float = float("nan"), held_out: int | None = None,
    ) -> Look:
        """Score the crop around one place (x0, y0, x1, y1) again, zoomed in."""
        box = zoom_box(place, image.size, margin, self.settings.min_crop)
        second = float(self.detector.raw_maps([image.crop(box)], exclude=held_out)[0][0])
        ratio = float(np.clip(second / max(self.unit, 1e-9), *RATIO_RANGE))
        return Look(target, box, tuple(int(v) for v in place), first, second, ratio)


def fused_factor(looks: Sequence[Look], weight: float) -> float:
    """The factor on the first score: (largest ratio) ** weight; 1 without looks or with weight 0."""
    if not looks or weight <= 0:
        return 1.0
    return float(max(lk.ratio for lk in looks) ** weight)


__all__ = ["ZOOM_RECHECK_BANK", "Look", "ZoomRecheck", "comparable_part", "fused_factor"]
