"""Decisions a line engineer can trust: a threshold that keeps a stated false-alarm rate.

A score ranks images; a decision needs a boundary, and the one number a user can reason about is the
false-alarm rate: the share of good parts that will be called defective. The boundary is estimated,
without labels, from what good scores look like:

- references mode (one image at a time): the raw scores of good samples that were not part of the
  bank they were scored against (leave-one-out references; a reference's accepted views are not
  independent parts, so each reference counts once, with its largest view score). The boundary is
  the split-conformal quantile: with n good scores, the k-th smallest with k = ceil((n+1)(1-a)); a
  new good part scores above it with probability at most (n+1-k)/(n+1). With n scores the finest
  honest rate is 1/(n+1): a finer rate is refused, the finest honest one used, and the record says so.
- batch mode (a folder): the batch's own scores. Most images are good, but a quarter or more may be
  defective, so the good scores are modelled from the lower bulk of the batch only: on a log scale,
  the mode of the score density is the centre of the good scores, the batch's share of good images is
  twice the share below the mode, and the spread comes from the left flank (where defects hardly
  reach); the boundary is the normal quantile for the asked rate. Known-good scores (references,
  leave-one-out) are pooled with the batch when given.

Three outcomes: `defective` above the boundary; `review` in a band below it (scores more unusual
than the good parts at `review_factor` times the rate, not beyond the boundary): uncertain cases go to
a person instead of being guessed; `good` below. `pred_score = sigmoid((raw - boundary) / spread)` so
0.5 is the boundary whatever the detector and the number of references, and 0.73 is one good-score
spread beyond it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from statistics import NormalDist
from typing import Any

import numpy as np

VERDICTS = ("good", "review", "defective")
_NORMAL = NormalDist()


def finest_rate(n: int) -> float:
    """The smallest false-alarm rate n good scores can honestly promise: 1 / (n + 1)."""
    return 1.0 / (n + 1) if n >= 1 else 1.0


def conformal_threshold(scores: np.ndarray, rate: float) -> tuple[float, float]:
    """(boundary, rate it guarantees) from good scores: the ceil((n+1)(1-rate))-th smallest score,
    or the largest when `rate` is finer than 1/(n+1)."""
    s = np.sort(np.asarray(scores, dtype=np.float64).ravel())
    s = s[np.isfinite(s)]
    if s.size == 0:
        raise ValueError("no finite good scores to set a threshold from")
    n = s.size
    k = min(n, max(1, math.ceil((n + 1) * (1.0 - rate))))
    return float(s[k - 1]), (n + 1 - k) / (n + 1)


def _robust_spread(x: np.ndarray) -> float:
    med = float(np.median(x))
    return float(np.median(np.abs(x - med))) * 1.4826


@dataclass(frozen=True)
class GoodModel:
    """Normal model of good scores on a log scale, from the lower bulk of a contaminated batch."""

    centre: float  # log-scale mode of the good scores
    spread: float  # log-scale standard deviation
    good_share: float  # estimated share of good images in the batch
    n_good: int  # how many good samples the model rests on (estimated)
    shift: float  # scores are log(raw - shift)

    def quantile(self, rate: float) -> float:
        """Raw score that good parts exceed with probability `rate`."""
        return float(math.exp(self.centre + _NORMAL.inv_cdf(1.0 - rate) * self.spread) + self.shift)


def good_model_from_batch(
    batch_scores: np.ndarray, known_good: np.ndarray | None = None, anchor: np.ndarray | None = None,
) -> GoodModel:
    """The good-score model of a batch where an unknown minority may be defective (see the module
    docstring). `known_good` scores (e.g. references) join the batch. `anchor` (known-good scores on the
    batch's scale, e.g. the references held out) bounds where the good scores' mode can lie: defects
    score higher, never lower, than good parts, so the good mode is looked for no further than
    `ANCHOR_REACH` good spreads above the anchors' median (the spread as the batch shows it below that
    median); a denser cluster beyond it is taken for what it is, defects that look alike."""
    parts = [np.asarray(batch_scores, dtype=np.float64).ravel()]
    if known_good is not None and len(known_good):
        parts.append(np.asarray(known_good, dtype=np.float64).ravel())
    raw = np.concatenate(parts)
    raw = raw[np.isfinite(raw)]
    if raw.size < 3:
        raise ValueError(f"batch calibration needs at least 3 scores, got {raw.size}")
    lo, hi = float(raw.min()), float(raw.max())
    shift = lo - 0.5 * max(hi - lo, 1e-6) if lo <= 0 else 0.0  # logs need positive scores
    x = np.log(raw - shift)
    # Mode of a Gaussian kernel density (Silverman's bandwidth on the robust spread).
    spread = _robust_spread(x) or float(np.std(x)) or 1e-3
    bw = 1.06 * spread * x.size ** (-0.2)
    top = float(np.quantile(x, 0.9))
    a = _log_anchor(anchor, shift)
    if a.size:
        top = min(top, _anchor_reach(x, a))
    grid = np.linspace(min(float(np.quantile(x, 0.01)), top), top, 256)
    density = np.exp(-0.5 * ((grid[:, None] - x[None, :]) / bw) ** 2).sum(1)
    mode = float(grid[int(np.argmax(density))])
    below = float(np.mean(x <= mode))
    good_share = min(1.0, 2.0 * below)
    # Left flank: the good scores' 15.9 % quantile sits one spread below the centre.
    q_left = float(np.quantile(x, min(below, 0.1587 * good_share)))
    sigma = max(mode - q_left, 0.05 * spread, 1e-6)
    return GoodModel(mode, sigma, good_share, int(round(good_share * x.size)), shift)


def _log_anchor(anchor: np.ndarray | None, shift: float) -> np.ndarray:
    if anchor is None:
        return np.empty(0)
    a = np.asarray(anchor, dtype=np.float64).ravel()
    a = a[np.isfinite(a)]
    return np.log(np.maximum(a - shift, 1e-12)) if a.size >= 2 else np.empty(0)


def _anchor_reach(x: np.ndarray, a: np.ndarray) -> float:
    """How far up (log scale) the good mode of batch scores `x` may lie, given log anchor scores `a`."""
    centre = float(np.median(a))
    below = centre - x[x < centre]
    flank = float(np.median(below)) / 0.6745 if below.size >= 5 else 0.0
    own = _robust_spread(a) if a.size >= 3 else 0.0  # the anchors' own spread: a few low anchors reach less far
    return centre + ANCHOR_REACH * max(flank, own, 1e-3)


#: the good mode of a batch lies at most this many good spreads above the references' median
ANCHOR_REACH = 1.0


@dataclass(frozen=True)
class Calibration:
    """A boundary on raw scores with the false-alarm rate it promises, and the review band under it."""

    boundary: float  # raw score of pred_score 0.5: above it, `defective`
    review_boundary: float | None  # raw score from which a part goes to `review` (None: no band)
    spread: float  # raw-score unit of the logistic mapping to pred_score
    false_alarm_rate: float  # the rate promised (estimated without labels)
    requested_rate: float
    good_samples: int  # how many good scores the promise rests on
    method: str
    note: str = ""

    # ---------------------------------------------------------------------------------------- builders
    @classmethod
    def from_good_scores(
        cls, scores: np.ndarray, rate: float = 0.05, review_factor: float | None = 2.0,
        method: str = "references (leave-one-out)",
    ) -> Calibration:
        """References mode: split-conformal boundary from known-good scores (see the module docstring)."""
        _check_rate(rate)
        s = np.asarray(scores, dtype=np.float64).ravel()
        s = s[np.isfinite(s)]
        boundary, used = conformal_threshold(s, rate)
        note = ""
        if used > rate + 1e-12:
            note = (f"asked for a false-alarm rate of {rate:g}; {s.size} good score(s) can promise no finer than "
                    f"{finest_rate(s.size):.3g}, so {used:.3g} is used (more references allow finer rates)")
        review = None
        if review_factor and review_factor > 1:
            # the band holds parts more unusual than the good parts at `review_factor` times the asked
            # rate; too few good scores to tell that apart from the boundary: no band
            review, _ = conformal_threshold(s, min(0.5, rate * review_factor))
            review = None if review >= boundary else review
        spread = max(_robust_spread(s), float(np.std(s)) * 0.5, 0.05 * abs(float(np.median(s))), 1e-6)
        return cls(boundary, review, spread, used, rate, int(s.size), method, note)

    @classmethod
    def from_batch(
        cls, batch_scores: np.ndarray, rate: float = 0.05, review_factor: float | None = 2.0,
        known_good: np.ndarray | None = None, method: str = "batch", anchor: np.ndarray | None = None,
    ) -> Calibration:
        """Batch mode: the boundary from the batch's lower bulk (see `good_model_from_batch`). With
        `anchor` (known-good scores on the batch's scale, e.g. the references held out), the good mode
        is looked for near them; when that bound moves it, the note says so and the promise rests on
        the references. (A model anchored wholly on the references, when several of them scored above
        the batch's boundary, was tried and removed: held-out references score a little high, as each
        is compared with one reference fewer, and on the validation products it fired twice, both
        times lowering balanced accuracy: 0.97 -> 0.90 and 0.92 -> 0.57.)"""
        _check_rate(rate)
        model = good_model_from_batch(batch_scores, known_good, anchor)
        notes = []
        if anchor is not None and len(anchor):
            free = good_model_from_batch(batch_scores, known_good)
            if free.centre > model.centre + 0.25 * model.spread:
                method = f"{method}, good mode bounded by the references"
                notes.append(f"the batch's densest scores lie above what the references score (good share {free.good_share:.2f} "
                             f"if they were good): much of the batch may share a defect; its good parts are looked for "
                             f"near the references")
        boundary = model.quantile(rate)
        review = model.quantile(min(0.5, rate * review_factor)) if review_factor and review_factor > 1 else None
        centre = math.exp(model.centre) + model.shift
        spread = max(boundary - centre, 1e-6) / max(_NORMAL.inv_cdf(1.0 - rate), 1e-3)
        extra = f" + {len(known_good)} reference score(s)" if known_good is not None and len(known_good) else ""
        promised, n_good = rate, model.n_good
        if notes:  # the batch's good parts could not be told from its defects: the promise rests on the references
            n_good = int(np.isfinite(np.asarray(anchor, dtype=np.float64)).sum())
            promised = max(rate, finest_rate(n_good))
            if promised > rate:
                notes.append(f"{n_good} reference(s) can promise no finer than {promised:.3g}, so {promised:.3g} is "
                             f"promised (the boundary is still the one for {rate:g}; more references allow finer rates)")
        note = "; ".join(notes)
        return cls(
            boundary, review, spread, promised, rate, n_good,
            f"{method} ({len(np.ravel(batch_scores))} image(s){extra}; estimated good share {model.good_share:.2f})",
            note,
        )

    @classmethod
    def fixed(cls, boundary: float, spread: float, method: str) -> Calibration:
        """A boundary given by the model itself (e.g. a probability's 0.5), with no rate promised."""
        return cls(boundary, None, spread, float("nan"), float("nan"), 0, method,
                   "no good samples: the false-alarm rate is unknown; give references or a batch")

    def without_review(self) -> Calibration:
        return replace(self, review_boundary=None)

    # ---------------------------------------------------------------------------------------- use
    def apply(self, raw: np.ndarray | float) -> np.ndarray:
        """Raw scores (or maps) -> [0, 1] with 0.5 at the boundary."""
        z = (np.asarray(raw, dtype=np.float64) - self.boundary) / self.spread
        return (1.0 / (1.0 + np.exp(-np.clip(z, -60, 60)))).astype(np.float32)

    def verdict(self, raw: float) -> str:
        if raw > self.boundary:
            return "defective"
        if self.review_boundary is not None and raw > self.review_boundary:
            return "review"
        return "good"

    def review_score(self) -> float | None:
        """The pred_score at which `review` starts (None without a band)."""
        return None if self.review_boundary is None else float(self.apply(self.review_boundary))

    def to_dict(self) -> dict[str, Any]:
        finite = math.isfinite(self.false_alarm_rate)
        return {
            "method": self.method,
            "false_alarm_rate": round(self.false_alarm_rate, 4) if finite else None,
            "requested_false_alarm_rate": round(self.requested_rate, 4) if math.isfinite(self.requested_rate) else None,
            "good_samples": self.good_samples,
            "boundary_raw": round(self.boundary, 6),
            "review_from_raw": None if self.review_boundary is None else round(self.review_boundary, 6),
            "review_from_score": None if self.review_boundary is None else round(float(self.review_score()), 4),
            "spread_raw": round(self.spread, 6),
            "note": self.note,
            "meaning": (
                f"score 0.5 = the boundary: about {self.false_alarm_rate:.0%} of good parts score above it"
                if finite else "score 0.5 = the model's own boundary (false-alarm rate unknown)"
            ),
        }


def _check_rate(rate: float) -> None:
    if not 0.0 < rate < 1.0:
        raise ValueError(f"false-alarm rate must be between 0 and 1 (exclusive), got {rate}")


def good_samples(detector: Any, references: list[Any]) -> np.ndarray:
    """Raw scores of good samples for references mode: the detector's leave-one-out scores, or, for a
    detector that learns nothing from its references, the references scored as they are."""
    scores = np.asarray(detector.good_scores(), dtype=np.float64)
    if scores.size == 0 and references and not detector.learns_from_references:
        scores = np.array([o.raw_score for o in detector.predict(references)], dtype=np.float64)
    return scores[np.isfinite(scores)]


__all__ = [
    "Calibration",
    "GoodModel",
    "VERDICTS",
    "conformal_threshold",
    "finest_rate",
    "good_model_from_batch",
    "good_samples",
]
