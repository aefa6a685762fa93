"""Step 3 of the loop, match: the image's parts against the references' parts, and the rules.

The references are split into parts once (`tools.components`: a colour palette of the references,
connected areas per colour) and rules are derived from the range they show (`rules.py`); a brain
that proposes rules may add more (validated, repaired once, rejected when still broken). Each image
is split the same way, its parts matched to every reference's parts with the Hungarian method, and
the rules checked. A broken rule is a finding beyond the variation seen among the references.

Words: a part of another colour at the place of a missing one is *recoloured*, reported once, not
also as missing and extra.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from PIL import Image

from agent.inspection.rules import (
    Rule,
    RuleParseError,
    check_rules,
    components_summary,
    derive_rules,
    parse_rules,
)
from agent.inspection.settings import MatchSettings
from agent.inspection.trace import short
from tools.components import Part, colour_palette, match_parts, segment_by_palette
from tools.regions import location_words

#: parts closer than this (normalized image units) count as the same place when pairing extra and missing
SAME_PLACE = 0.08


RuleKey = tuple[str, int | None]


def _key(rule: Rule | dict[str, Any]) -> RuleKey:
    return (rule.kind, rule.colour_class) if isinstance(rule, Rule) else (rule["kind"], rule.get("colour_class"))


@dataclass
class ReferenceModel:
    """What the match step knows about the references (computed once)."""

    palette: np.ndarray
    parts: list[list[Part]]
    rules: list[Rule]
    brain_rules: list[Rule] | None = None
    brain_rules_status: dict[str, Any] = field(default_factory=dict)
    dropped: list[Rule] = field(default_factory=list)  # derived rules a held-out reference breaks itself
    held_out_rules: list[list[Rule]] = field(default_factory=list)  # per reference: the kept rules, from the others

    def all_rules(self) -> list[Rule]:
        return list(self.rules) + list(self.brain_rules or [])

    def held_out(self, i: int) -> ReferenceModel:
        """The model without reference `i` (same palette, the kept rules derived from the others), for
        scoring that reference as a good sample."""
        others = [p for j, p in enumerate(self.parts) if j != i]
        return ReferenceModel(self.palette, others, list(self.held_out_rules[i]) if self.held_out_rules else [])


def reference_model(references: Sequence[Image.Image], s: MatchSettings) -> ReferenceModel:
    """Palette, parts and the derived rules the references keep when each is held out: a rule derived
    from all references but one that the one held out breaks measures something that varies among good
    parts more than the references show (e.g. part areas on references of different sizes), so it
    cannot flag a defect and is left out. With one reference every derived rule is kept (there is no
    variation to check against)."""
    palette = colour_palette(references, s.palette_size)
    parts = [segment_by_palette(r, palette, s.part_size, s.min_part, s.max_part, s.max_parts) for r in references]
    rules = derive_rules(parts, len(palette), s.area_tolerance, s.count_slack)
    loo: list[list[Rule]] = []
    unstable: set[RuleKey] = set()
    for i in range(len(parts) if len(parts) >= 2 else 0):
        loo.append(derive_rules([p for j, p in enumerate(parts) if j != i], len(palette), s.area_tolerance, s.count_slack))
        unstable |= {_key(b) for b in check_rules(loo[-1], parts[i])}
    return ReferenceModel(
        palette, parts,
        rules=[r for r in rules if _key(r) not in unstable],
        dropped=[r for r in rules if _key(r) in unstable],
        held_out_rules=[[r for r in rs if _key(r) not in unstable] for rs in loo],
    )


def ask_brain_rules(brain: Any, refs: ReferenceModel, retries: int) -> tuple[list[Rule], dict[str, Any]]:
    """Rules a brain proposes (raw text), parsed and validated; repaired `retries` times; [] when rejected."""
    t0 = time.perf_counter()
    summary = components_summary(refs.parts, refs.palette)
    attempts: list[dict[str, Any]] = []
    text = ""
    for attempt in range(1 + max(0, retries)):
        try:
            text = brain.propose_rules(summary) if attempt == 0 else brain.repair_rules(summary, text, attempts[-1]["error"])
        except Exception as err:  # noqa: BLE001 - a model's failure leaves the derived rules standing
            attempts.append({"error": short(f"{type(err).__name__}: {err}", 200)})
            break
        try:
            rules, dropped = parse_rules(text, len(refs.palette))
        except RuleParseError as err:
            attempts.append({"error": str(err), "reply": short(text, 200)})
            continue
        attempts.append({"accepted": len(rules), "dropped": dropped})
        return rules, {
            "status": "accepted" if attempt == 0 else "repaired",
            "rules": [r.model_dump() for r in rules],
            "attempts": attempts,
            "summary": f"{len(rules)} rule(s) accepted" + (f", {len(dropped)} dropped" if dropped else ""),
            "seconds": round(time.perf_counter() - t0, 4),
        }
    return [], {
        "status": "rejected",
        "attempts": attempts,
        "summary": "the brain's rules were rejected; the rules derived from the references stay",
        "seconds": round(time.perf_counter() - t0, 4),
    }


def _place_words(p: Part) -> str:
    return location_words(p.centroid[0] * 1000 - 0.5, p.centroid[1] * 1000 - 0.5, 1000, 1000)


def recoloured_pairs(extra: Sequence[Part], missing: Sequence[Part]) -> list[tuple[int, int]]:
    """(extra index, missing index) pairs at the same place with a similar size: one part in another
    colour, not a missing part and an extra one."""
    pairs, used = [], set()
    for i, e in enumerate(extra):
        best = None
        for j, m in enumerate(missing):
            if j in used or e.colour_class == m.colour_class:
                continue
            d = math.dist(e.centroid, m.centroid)
            if d <= SAME_PLACE and 0.5 <= e.area / max(m.area, 1e-9) <= 2.0 and (best is None or d < best[0]):
                best = (d, j)
        if best is not None:
            used.add(best[1])
            pairs.append((i, best[1]))
    return pairs


def compare(image: Image.Image, refs: ReferenceModel, s: MatchSettings) -> dict[str, Any]:
    """The image's parts matched to each reference's (Hungarian), findings named, rules checked."""
    parts = segment_by_palette(image, refs.palette, s.part_size, s.min_part, s.max_part, s.max_parts)
    matches = [match_parts(parts, rp, s.max_match_cost) for rp in refs.parts]
    best = int(np.argmin([m.cost for m in matches]))
    m, ref_parts = matches[best], refs.parts[best]
    extra = [parts[i] for i in m.extra]
    missing = [ref_parts[j] for j in m.missing]
    recoloured = recoloured_pairs(extra, missing)
    gone_e, gone_m = {i for i, _ in recoloured}, {j for _, j in recoloured}
    findings = [
        {"kind": "recoloured", "where": _place_words(extra[i]), "part": extra[i].to_dict(), "was": missing[j].to_dict()}
        for i, j in recoloured
    ]
    findings += [{"kind": "extra", "where": _place_words(p), "part": p.to_dict()} for i, p in enumerate(extra) if i not in gone_e]
    findings += [{"kind": "missing", "where": _place_words(p), "part": p.to_dict()} for j, p in enumerate(missing) if j not in gone_m]
    rules = refs.all_rules()
    broken = check_rules(rules, parts)
    return {
        "components": len(parts),
        "reference_components": [len(c) for c in refs.parts],
        "best_reference": best,
        "matching": m.to_dict(),
        "findings": findings,
        "rules_checked": len(rules),
        "rules_dropped": [r.description for r in refs.dropped],
        "violations": broken,
        "summary": f"{len(parts)} part(s); best reference {best}: {len(m.pairs)} matched, "
        f"{len(m.extra)} extra, {len(m.missing)} missing"
        + (f" ({len(recoloured)} recoloured)" if recoloured else "")
        + f"; {len(broken)} of {len(rules)} rule(s) broken"
        + (f" ({len(refs.dropped)} derived rule(s) left out: the references break them)" if refs.dropped else "")
        + (": " + "; ".join(v.get("description") or v["kind"] for v in broken[:3]) if broken else ""),
    }


__all__ = ["ReferenceModel", "ask_brain_rules", "compare", "recoloured_pairs", "reference_model"]
