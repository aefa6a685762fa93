"""One measured rule of an audit: what was measured, what was expected, and the sentence that says so.

Its own module so that every checker (agent.audit.check for colour parts, agent.audit.product_check
for a product's parts) builds the same result without importing the other.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass
class RuleResult:
    rule: str  # e.g. "blue.count"
    components: list[str]
    measured: Any
    expected: Any
    passed: bool
    deviation: float  # distance / tolerance: <= 1 passes (counts: excess + 1 when failing)
    explanation: str
    offending: list[int] = field(default_factory=list)  # blob indices to mark
    places: list[tuple[float, float, float]] = field(default_factory=list)  # (x, y, radius) to mark
    skipped: bool = False

    def to_dict(self) -> dict[str, Any]:
        return {
            "rule": self.rule,
            "components": self.components,
            "measured": self.measured,
            "expected": self.expected,
            "passed": self.passed,
            "skipped": self.skipped,
            "deviation": round(float(self.deviation), 4),
            "explanation": self.explanation,
        }


__all__ = ["RuleResult"]
