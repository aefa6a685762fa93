"""Checkable rules on an image's parts: derived from the references, proposed by a brain, or given.

A rule bounds what one colour class of parts may show: how many (`count`), how much of the image
they cover (`area`), or how they balance left against right (`balance`). Rules derived from the
references take the range the references show, widened by a slack, so a rule is broken only
beyond the variation seen among good parts. Rules a brain proposes arrive as JSON text, which is
parsed leniently (code fences, prose around it) and validated strictly with pydantic.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from tools.components import Part


class Rule(BaseModel):
    """A checkable rule on the parts of a good product image."""

    model_config = ConfigDict(extra="ignore")

    kind: Literal["count", "area", "balance"]
    colour_class: int | None = Field(default=None, ge=0)
    min: float | None = None
    max: float | None = None
    description: str = ""
    source: str = "references"

    @model_validator(mode="after")
    def _bounds(self) -> Rule:
        if self.min is None and self.max is None:
            raise ValueError("a rule needs 'min' or 'max'")
        if self.min is not None and self.max is not None and self.min > self.max:
            raise ValueError(f"min {self.min} is above max {self.max}")
        if self.kind == "area" and any(v is not None and not 0.0 <= v <= 1.0 for v in (self.min, self.max)):
            raise ValueError("area bounds are fractions of the image, 0..1")
        return self


class RuleParseError(ValueError):
    """Model output that holds no usable rule JSON."""


_FENCE = re.compile(r"```(?:json)?\s*(.*?)```", re.DOTALL | re.IGNORECASE)


def parse_rules(text: str, n_classes: int | None = None) -> tuple[list[Rule], list[str]]:
    """Valid rules and the reasons others were dropped, from a model reply.

    Accepts `{"rules": [...]}` or a bare list, inside code fences or surrounded by prose. Raises
    `RuleParseError` when no JSON is found, it is not that shape, or no rule is valid.
    """
    raw = str(text or "")
    fenced = _FENCE.search(raw)
    if fenced:
        raw = fenced.group(1)
    starts = [i for i in (raw.find("{"), raw.find("[")) if i >= 0]
    if not starts:
        raise RuleParseError("no JSON object in the reply")
    start = min(starts)
    end = max(raw.rfind("}"), raw.rfind("]"))
    try:
        data = json.loads(raw[start : end + 1])
    except json.JSONDecodeError as err:
        raise RuleParseError(f"invalid JSON: {err.msg} at position {err.pos}") from None
    items = data.get("rules") if isinstance(data, dict) else data
    if not isinstance(items, list):
        raise RuleParseError('expected {"rules": [...]}')
    rules: list[Rule] = []
    problems: list[str] = []
    for i, item in enumerate(items):
        try:
            rule = Rule.model_validate({**item, "source": "brain"} if isinstance(item, dict) else item)
        except ValidationError as err:
            first = err.errors()[0]
            where = ".".join(str(p) for p in first.get("loc", ())) or "rule"
            problems.append(f"rule {i}: {where}: {first.get('msg', 'invalid')}")
            continue
        if n_classes is not None and rule.colour_class is not None and rule.colour_class >= n_classes:
            problems.append(f"rule {i}: colour_class {rule.colour_class} does not exist (0..{n_classes - 1})")
            continue
        rules.append(rule)
    if not rules:
        raise RuleParseError("no valid rule" + (f" ({problems[0]})" if problems else ""))
    return rules, problems


def rule_value(rule: Rule, parts: Sequence[Part]) -> float:
    """What the rule measures on a list of parts."""
    chosen = [p for p in parts if rule.colour_class is None or p.colour_class == rule.colour_class]
    if rule.kind == "count":
        return float(len(chosen))
    if rule.kind == "area":
        return float(sum(p.area for p in chosen))
    left = sum(1 for p in chosen if p.centroid[0] < 0.5)
    return float(left - (len(chosen) - left))


def check_rules(rules: Sequence[Rule], parts: Sequence[Part]) -> list[dict[str, Any]]:
    """The rules the parts break, with the measured value."""
    broken = []
    for rule in rules:
        value = rule_value(rule, parts)
        if (rule.min is not None and value < rule.min - 1e-9) or (
            rule.max is not None and value > rule.max + 1e-9
        ):
            broken.append({**rule.model_dump(), "value": round(value, 5)})
    return broken


def derive_rules(
    ref_parts: Sequence[Sequence[Part]],
    n_classes: int,
    area_tolerance: float = 0.5,
    count_slack: int = 1,
) -> list[Rule]:
    """Count, area and balance ranges per colour class, as seen over the references."""
    rules: list[Rule] = []
    if not ref_parts:
        return rules
    for c in range(n_classes):
        for kind in ("count", "area", "balance"):
            probe = Rule(kind=kind, colour_class=c, min=0.0, max=0.0)
            values = [rule_value(probe, parts) for parts in ref_parts]
            lo, hi = min(values), max(values)
            if kind == "area":
                lo, hi = lo / (1.0 + area_tolerance), min(1.0, hi * (1.0 + area_tolerance))
            else:
                lo, hi = lo - count_slack, hi + count_slack
            rules.append(
                Rule(
                    kind=kind,
                    colour_class=c,
                    min=lo,
                    max=hi,
                    description=f"{kind} of colour {c} as on the references",
                )
            )
    return rules


def components_summary(ref_parts: Sequence[Sequence[Part]], palette: np.ndarray) -> str:
    """The text the rule prompt shows: per colour class, its RGB, count per image and mean area."""
    lines = []
    for c, rgb in enumerate(palette):
        counts = [sum(1 for p in parts if p.colour_class == c) for parts in ref_parts]
        areas = [sum(p.area for p in parts if p.colour_class == c) for parts in ref_parts]
        colour = ", ".join(f"{int(round(v * 255))}" for v in rgb)
        lines.append(
            f"- colour class {c} (RGB {colour}): count per image {min(counts)}..{max(counts)}, "
            f"mean area fraction {float(np.mean(areas)):.4f}"
        )
    return "\n".join(lines)


__all__ = [
    "Rule",
    "RuleParseError",
    "check_rules",
    "components_summary",
    "derive_rules",
    "parse_rules",
    "rule_value",
]
