"""Turn raw anomaly scores into a scale users understand: 0.5 is the boundary, derived from good parts.

From the raw scores of good references (each scored by a bank built without it: leave-one-out), we
fit mean and spread, put the boundary `sigmas` spreads above the mean and squash with a logistic:
`calibrated = sigmoid((raw - boundary) / spread)`. A good part scores well below 0.5, a part that is
less like the references than any of them were like each other scores above it. No test label is used.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np


@dataclass(frozen=True)
class ScoreCalibration:
    mean: float
    spread: float
    sigmas: float
    n: int
    method: str

    @property
    def boundary(self) -> float:
        """The raw score that maps to 0.5."""
        return self.mean + self.sigmas * self.spread

    @classmethod
    def from_good_scores(cls, scores: np.ndarray, sigmas: float = 3.0, method: str = "leave-one-out") -> ScoreCalibration:
        """Fit from raw scores of good images. With very few scores the spread is floored (10% of the
        mean) so one lucky pair of references cannot make the detector hair-triggered."""
        s = np.asarray(scores, dtype=np.float64).ravel()
        s = s[np.isfinite(s)]
        if s.size == 0:
            raise ValueError("no finite scores of good images to calibrate from")
        mean = float(s.mean())
        spread = float(s.std(ddof=1)) if s.size > 1 else 0.0
        spread = max(spread, 0.1 * abs(mean), 1e-6)
        return cls(mean=mean, spread=spread, sigmas=float(sigmas), n=int(s.size), method=method)

    def apply(self, raw: np.ndarray | float) -> np.ndarray:
        z = (np.asarray(raw, dtype=np.float64) - self.boundary) / self.spread
        return (1.0 / (1.0 + np.exp(-np.clip(z, -60, 60)))).astype(np.float32)

    def to_dict(self) -> dict[str, Any]:
        return {
            "method": self.method,
            "good_images": self.n,
            "good_mean_raw": round(self.mean, 6),
            "good_spread_raw": round(self.spread, 6),
            "sigmas": self.sigmas,
            "boundary_raw": round(self.boundary, 6),
            "meaning": f"score 0.5 = {self.sigmas:g} spreads above the mean score of the good references",
        }
