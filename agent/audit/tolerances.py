"""How wide a drafted rule's tolerance is, and whether the rule is kept: from the references' own
spread, robustly, with a floor, checked on each reference held out in turn.

A rule measures one value per image (a position, a size, an angle, a fill level). From the n good
references:

- the expected value is their median;
- the spread is robust: 1.4826 x the median absolute deviation, or the standard deviation when that is
  smaller (with few references the MAD can be 0 while they still differ);
- the tolerance is `k` spreads, never below the rule's `floor` (what the measurement itself can tell
  apart), and at least `cover` x the largest deviation of any reference, both from the expected value
  of all of them and from the expected value of the others (held out): every good reference passes
  the rule, also as a new part would meet it;
- held out in turn, each reference is measured against the expected value and tolerance drafted from
  the others: its *held-out deviation* (deviation / tolerance, <= 1 passes) is what a new good part
  would score, and is what the audit's decision is calibrated on;
- the rule is dropped only when no width would separate it: the tolerance it needs exceeds the rule's
  `cap` (e.g. a position that wanders a quarter of the product); it is then listed in `dropped` with
  its spread and the reason.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

K_SPREADS = 3.0  # tolerance in robust spreads
COVER = 1.15  # the tolerance covers every reference's deviation by this factor


@dataclass(frozen=True)
class Tolerance:
    """A drafted tolerance and the evidence behind it."""

    expected: float
    tolerance: float
    spread: float
    worst: float  # largest |value - expected| over the references
    held_out: tuple[float, ...]  # each reference's deviation / tolerance, drafted without it
    kept: bool
    why: str

    def line(self, rule: str, unit: str = "", digits: int = 3) -> str:
        """One line for the spec's `kept` / `dropped` lists."""
        f = f"{{:.{digits}f}}{unit}"
        held = max(self.held_out, default=0.0)
        return (
            f"{rule}: {self.why} (expected {f.format(self.expected)}, spread {f.format(self.spread)}, "
            f"tolerance {f.format(self.tolerance)}, widest held-out deviation {held:.2f} x its tolerance)"
        )


def robust_spread(values: Sequence[float]) -> float:
    v = np.asarray(values, dtype=np.float64)
    if v.size < 2:
        return 0.0
    mad = 1.4826 * float(np.median(np.abs(v - np.median(v))))
    return min(mad, float(np.std(v))) if mad > 0 else float(np.std(v))


def _width(deviations: np.ndarray, floor: float) -> float:
    worst = float(np.max(np.abs(deviations))) if deviations.size else 0.0
    return max(floor, K_SPREADS * robust_spread(deviations), COVER * worst)


def draft_tolerance(
    values: Sequence[float], floor: float, cap: float, circular: float | None = None, below_only: bool = False
) -> Tolerance:
    """Expected value, tolerance and held-out deviations of one measured value (see the module
    docstring). `circular`: the period of an angle-like value (differences wrap); `below_only`: only
    values below the expected one deviate (a match score: higher is only better)."""
    v = np.asarray(values, dtype=np.float64)
    if v.size == 0:
        return Tolerance(float("nan"), floor, 0.0, 0.0, (), False, "not measured on any reference")

    def centred(x: np.ndarray, c: float) -> np.ndarray:
        if circular is None:
            return x - c
        return (x - c + circular / 2) % circular - circular / 2

    centre = float(np.median(v))
    dev = centred(v, centre)
    tol = _width(dev, floor)
    held = []
    for i in range(v.size):
        rest = np.delete(v, i)
        if rest.size == 0:
            held.append(0.0)
            continue
        c = float(np.median(rest))
        t = _width(centred(rest, c), floor)
        d = centred(v[i : i + 1], c)[0]
        d = max(0.0, -d) if below_only else abs(d)
        held.append(float(d / t))
        tol = max(tol, COVER * d)  # held out, every reference must pass too
    spread = robust_spread(dev)
    worst = float(np.max(np.abs(dev)))
    if tol > cap:
        why = f"dropped: the references need a tolerance of {tol:.3g}, wider than {cap:.3g} (no width separates it)"
        return Tolerance(centre, tol, spread, worst, tuple(held), False, why)
    why = "kept: holds on every reference" + (
        "" if max(held) <= 1.0 else f"; held out, one deviates {max(held):.2f} x the others' tolerance"
    )
    return Tolerance(centre, tol, spread, worst, tuple(held), True, why)


def draft_radius(points: Sequence[Sequence[float]], floor: float, cap: float) -> tuple[tuple[float, ...], Tolerance]:
    """(expected point, tolerance on the distance from it) of points (positions, colours): the
    componentwise median, the distances' RMS as the spread; otherwise as `draft_tolerance`."""
    p = np.asarray(points, dtype=np.float64)
    if p.size == 0:
        return (), Tolerance(float("nan"), floor, 0.0, 0.0, (), False, "not measured on any reference")

    def width(q: np.ndarray) -> tuple[np.ndarray, float, float, float]:
        c = np.median(q, axis=0)
        d = np.sqrt(((q - c) ** 2).sum(-1))
        spread = float(np.sqrt(np.mean(d**2))) if d.size > 1 else 0.0
        return c, max(floor, K_SPREADS * spread, COVER * float(d.max())), spread, float(d.max())

    centre, tol, spread, worst = width(p)
    held = []
    for i in range(len(p)):
        rest = np.delete(p, i, axis=0)
        if len(rest) == 0:
            held.append(0.0)
            continue
        c, t, _, _ = width(rest)
        d = float(np.sqrt(((p[i] - c) ** 2).sum()))
        held.append(d / t)
        tol = max(tol, COVER * d)  # held out, every reference must pass too
    kept = tol <= cap
    why = (
        "kept: holds on every reference"
        + ("" if max(held) <= 1.0 else f"; held out, one deviates {max(held):.2f} x the others' tolerance")
        if kept
        else f"dropped: the references need a tolerance of {tol:.3g}, wider than {cap:.3g} (no width separates it)"
    )
    return tuple(float(v) for v in centre), Tolerance(0.0, tol, spread, worst, tuple(held), kept, why)


__all__ = ["COVER", "K_SPREADS", "Tolerance", "draft_radius", "draft_tolerance", "robust_spread"]
