"""One settings object for every inspection, whichever command runs it (configuration as data).

`inspect`, `ask`, `chat`, `serve`, `report`, `eval-dr`, the LangChain tools and `audit` build an
`InspectionSettings` from their flags and hand it to `agent.inspection.Pipeline`; nothing else
decides how an image is inspected. Each step's fusion into the final score is a weight that can be
set to 0 (the step is then recorded but does not change the answer), so its effect can be measured.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

#: where the good scores that set the boundary come from (`decision.py`)
CALIBRATION_MODES = ("references", "batch")
#: `--trace`: "brief" runs only the steps that can change the answer; "full" runs the others too
TRACE_LEVELS = ("brief", "full")


@dataclass
class DecisionSettings:
    """How the final score becomes a verdict (`tools.detectors.calibration`)."""

    false_alarm_rate: float = 0.05
    review: bool = True  # a review band under the boundary
    calibration: str | None = None  # "references" or "batch"; None: batch for a batch, else references

    @property
    def review_factor(self) -> float | None:
        return 2.0 if self.review else None


@dataclass
class ZoomRecheckSettings:
    """Step 2: the most suspicious places are scored again, zoomed in, against the references (the
    `zoom_recheck:` section of a config file; `look_twice:` is its deprecated old name)."""

    # Off by default: on the validation sets (magnetic tile, weave, bracket; two reference draws each)
    # it moved neither the verdict nor where the defect is found (localization equal on 3 of 6 draws,
    # one image of 32 better on 2 and worse on 1) for 1.8-4x the time of the first look (BENCHMARKS.md,
    # "The loop's steps").
    # A model brain still sees the most suspicious place zoomed in (the first look's top place).
    enabled: bool = False
    top_k: int = 2  # places looked at twice
    zoom: float = 2.0  # working resolution of the second look, as a multiple of the detector's
    margin: float = 0.5  # context around a place's box, as a fraction of its long side
    min_crop: int = 32  # smallest crop side in image pixels
    # final score x (second-look ratio) ** weight; 0 = record only. Off by default: on the magnetic-tile
    # validation set (BENCHMARKS.md) weight 0.5 lowered balanced accuracy 0.875 -> 0.828
    weight: float = 0.0


@dataclass
class MatchSettings:
    """Step 3: parts of the image matched to the references' parts, rules checked."""

    enabled: bool = True
    palette_size: int = 3  # colour classes of the part segmentation
    part_size: int = 96  # long side of the image when segmenting parts
    min_part: float = 0.002  # smallest part, as a fraction of the image
    max_part: float = 0.4  # larger parts are background
    max_parts: int = 30  # per image, largest first
    max_match_cost: float = 1.5  # a matched pair above this cost counts as unmatched
    area_tolerance: float = 0.5  # derived area rules allow min/(1+tol) .. max*(1+tol)
    count_slack: int = 1  # derived count and balance rules allow this much beyond the references' range
    ask_rules: bool = True  # ask a brain that proposes rules for more
    rule_retries: int = 1  # repair attempts for malformed rule JSON
    # each broken rule adds this many good-score units to the final score; 0 = record only. Off by
    # default: even with the rules the references break themselves left out, good tiles of the
    # magnetic-tile validation set break the others (balanced accuracy 0.875 -> 0.578 with weight 1;
    # no change on weave and bracket; BENCHMARKS.md)
    weight: float = 0.0


@dataclass
class InspectionSettings:
    detector: str = "auto"
    detector_options: dict[str, Any] = field(default_factory=dict)
    brain: str = "rule"
    zoom_recheck: ZoomRecheckSettings = field(default_factory=ZoomRecheckSettings)
    match: MatchSettings = field(default_factory=MatchSettings)
    decision: DecisionSettings = field(default_factory=DecisionSettings)
    # an MLLM brain's P(Yes) fused with the detector's calibrated score (and the boundary set again on the
    # references' fused scores, `brain_steps.py`); 0 = recorded only. Off by default: no real checkpoint
    # has been measured to gain from it here, and the P(Yes) of a random or plain model only adds noise
    brain_weight: float = 0.0
    show_verdict_to_brain: bool = True  # the prompt states the detector's verdict (off for evaluation)
    first_opinion: bool = False  # also ask the brain for an opinion on the first look alone (before re-check and match)
    trace: str = "brief"  # "full": also run (and record) the steps whose result does not change the answer
    # an explicitly named detector or brain that cannot be loaded: False stops with a usage error (exit 2),
    # True goes on with the embedded detector / the rule brain, said once (`--fallback`)
    fallback: bool = False

    def fingerprint(self) -> dict[str, Any]:
        """What decides a result, for resumable reports (JSON-ready)."""
        from dataclasses import asdict

        return asdict(self)


__all__ = ["CALIBRATION_MODES", "TRACE_LEVELS", "DecisionSettings", "InspectionSettings", "MatchSettings", "ZoomRecheckSettings"]
