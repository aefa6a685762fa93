"""The audit's decision: a boundary on the fused score that keeps a stated false-alarm rate, set on
the references, each held out in turn, as `inspect` sets its own (tools.detectors.calibration).

Every image's audit score is max(logical, structural): the logical score is 0.5 x the largest rule
deviation while every rule holds and 0.5..1 once one fails; the structural detector's calibrated
score is mapped so its own boundary is 0.5. Good samples of that fused score come from the references:

- logical: each reference under the rules drafted *without* it. A product spec stores these
  (`held_out_scores`, drafted with the spec); a colour spec drafted in the run is drafted again
  without each reference in turn; a spec given with `--spec` can only be checked on the references
  as they are (they may have shaped it: the promise is then optimistic, and the decision says so);
- structural: the detector's leave-one-out scores (each reference counted once, its largest view).

The boundary is the split-conformal quantile of the n fused good scores (Calibration.from_good_scores):
with n references the finest honest false-alarm rate is 1/(n + 1), so 8 references promise no finer
than 1/9; a finer request is refused and the decision says what is used. It is never below 0.5, the
rules' own boundary: an image that passes every rule (and that the structural detector does not flag)
is not called anomalous, and then there is no review band. Raising a boundary only lowers the
false-alarm rate, so the promise stands. When the references held out score above 0.5 (a rule that
some good part breaks, held out), the boundary moves up to keep the promise and a failed rule alone is
no longer enough: the explanation then says so.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace

import numpy as np
from PIL import Image

from agent.audit.check import AuditResult, audit_image, normalized_structural
from agent.audit.spec import Spec
from tools.detectors.calibration import Calibration

DECISION_KEYS = ("method", "false_alarm_rate", "good_samples", "review_from_score", "note")
RULES_BOUNDARY = 0.5  # the fused score at which a rule fails (or the structural detector flags)
MIN_SPREAD = 0.1  # unit of the logistic map from the fused score to pred_score


def held_out_logical(
    spec: Spec,
    references: Sequence[Image.Image],
    redraft: Callable[[list[Image.Image]], Spec] | None = None,
) -> tuple[np.ndarray, str]:
    """(each reference's logical score with the rules drafted without it, how they were obtained).

    `redraft` drafts a spec from a subset of the references (given when the run drafted the spec)."""
    if spec.held_out_scores and len(spec.held_out_scores) == len(references):
        return np.asarray(spec.held_out_scores, dtype=np.float64), "rules drafted without each reference"
    if redraft is not None and len(references) > 1:
        scores = []
        for i, ref in enumerate(references):
            rest = [r for j, r in enumerate(references) if j != i]
            try:
                scores.append(audit_image(ref, redraft(rest)).logical_score)
            except ValueError:  # no spec without this reference: it is unlike the others
                scores.append(1.0)
        return np.asarray(scores), "rules drafted again without each reference"
    scores = [audit_image(ref, spec).logical_score for ref in references]
    return np.asarray(scores), "the given spec on the references as they are (not held out: optimistic)"


@dataclass
class AuditDecision:
    """The calibrated boundary of an audit run and how to apply it to one image."""

    calibration: Calibration

    @classmethod
    def fit(
        cls,
        logical: np.ndarray,
        how: str,
        structural: np.ndarray | None = None,
        rate: float = 0.05,
        review_factor: float | None = 2.0,
    ) -> AuditDecision:
        """From the references' held-out logical scores and, with a structural detector, their held-out
        structural scores already normalized (its boundary at 0.5), one per reference."""
        fused = np.asarray(logical, dtype=np.float64)
        what = "rules"
        if structural is not None and len(structural) == len(fused):
            fused = np.maximum(fused, np.asarray(structural, dtype=np.float64))
            what = "rules and structural detector"
        method = f"references (leave-one-out: {how}; {what})"
        cal = Calibration.from_good_scores(fused, rate, review_factor, method=method)
        if cal.boundary < RULES_BOUNDARY:
            note = (cal.note + "; " if cal.note else "") + (
                f"the references held out score at most {cal.boundary:.2f}: the boundary stays at the rules' own 0.5 "
                "(an image that passes every rule is good)"
            )
            cal = replace(cal, boundary=RULES_BOUNDARY, review_boundary=None, note=note)
        # scores are 0..1: a spread below 0.1 would make every pred_score 0 or 1
        return cls(replace(cal, spread=max(cal.spread, MIN_SPREAD)))

    def decide(self, result: AuditResult) -> tuple[float, str, dict, str]:
        """(pred_score with 0.5 at the boundary, verdict, decision block, explanation)."""
        cal = self.calibration
        raw = result.score
        verdict = cal.verdict(raw)
        block = {k: v for k, v in cal.to_dict().items() if k in DECISION_KEYS}
        block["raw_score"] = round(raw, 6)
        text = result.explanation
        if result.violations and verdict == "good":
            text += (
                f" Its score ({raw:.2f}) is not beyond the boundary ({cal.boundary:.2f}) set on the references held"
                " out: they vary this much too, so it is called good."
            )
        elif not result.violations and verdict != "good":
            text += (
                f" Its score ({raw:.2f}) is more unusual than the references held out allow "
                f"({'boundary' if verdict == 'defective' else 'review band from'} "
                f"{cal.boundary if verdict == 'defective' else cal.review_boundary:.2f})."
            )
        return float(cal.apply(raw)), verdict, block, text


def structural_held_out(good_raw: np.ndarray, n_refs: int, calibration: Calibration | None) -> np.ndarray | None:
    """The detector's held-out raw scores as normalized audit scores, one per reference (its largest
    view), or None when they cannot be lined up with the references."""
    good = np.asarray(good_raw, dtype=np.float64)
    if calibration is None or n_refs == 0 or good.size == 0 or good.size % n_refs:
        return None
    per_ref = good.reshape(n_refs, -1).max(1)
    return np.array([normalized_structural(float(calibration.apply(v)), 0.5) for v in per_ref])


__all__ = ["AuditDecision", "held_out_logical", "structural_held_out"]
