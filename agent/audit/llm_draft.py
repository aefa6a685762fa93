"""The LLM's part of drafting an audit spec: names for the components and proposed pair rules.

Why on top of the statistical draft (agent/audit/draft.py) and not instead of it: the statistics find
the components, counts, places and tolerances reliably; what they cannot know is what a part *is*
("grey-2" is a clamp) and which parts belong together beyond what the references happen to show.
The LLM sees only a text description of the drafted components and answers in JSON; the answer is
validated field by field (one repair request, then rejected), names are made safe and unique, and every
proposed pair rule is checked on the good references like the drafted ones: one that fails on a
reference is dropped, and the spec's `dropped` and `notes` say so.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from PIL import Image

from agent.audit.check import _colour_word
from agent.audit.spec import PairRule, Spec
from agent.brains.base import TextChat
from prompts import load_prompts
from tools.regions import location_words

if TYPE_CHECKING:
    from agent.audit.finders import Finders

ATTRIBUTES = ("hue", "colour", "area", "x", "y")
PAIR_TOLERANCE = {"hue": 0.05, "colour": 0.1, "area": 0.3, "x": 0.05, "y": 0.05}
_NAME = re.compile(r"[^a-z0-9]+")
_JSON = re.compile(r"\{.*\}", re.S)


class ProposalError(ValueError):
    """The LLM's reply is not a usable proposal (one line, sent back to it once)."""


@dataclass
class Proposal:
    names: dict[str, str] = field(default_factory=dict)  # automatic name -> proposed name
    pairs: list[PairRule] = field(default_factory=list)


def describe_components(spec: Spec) -> str:
    """One line per drafted component: name, count, colour, size and where (for the prompt)."""
    lines = []
    for c in spec.components:
        count = "any number" if c.count is None else _count_text(c.count.min, c.count.max)
        rgb = c.colour.rgb if c.colour else c.find.rgb
        colour = (
            f"{_colour_word(tuple(rgb))} (rgb {rgb[0]:.2f}, {rgb[1]:.2f}, {rgb[2]:.2f})" if rgb else "varies"
        )
        size = f"{100 * c.area.each:.1f}% of the image each" if c.area else "size varies"
        where = ""
        if c.position and c.position.slots:
            where = ", at " + ", ".join(_where(x, y) for x, y in c.position.slots[:6])
        elif c.find.region:
            x0, y0, x1, y1 = c.find.region
            where = ", at " + _where((x0 + x1) / 2, (y0 + y1) / 2)
        lines.append(f"- {c.name}: {count}, {colour}, {size}{where}")
    return "\n".join(lines)


def _where(x: float, y: float) -> str:
    """Location words for a point in image fractions."""
    return location_words(x * 1000, y * 1000, 1000, 1000)


def _count_text(lo: int, hi: int | None) -> str:
    return f"{lo} per image" if hi == lo else f"{lo} to {hi if hi is not None else 'any'} per image"


def safe_name(text: str) -> str:
    """Lowercase words joined by '-', at most 32 characters ('' when nothing is left)."""
    return _NAME.sub("-", str(text).lower()).strip("-")[:32].strip("-")


def parse_proposal(text: str, spec: Spec) -> Proposal:
    """The proposal in an LLM reply; raises ProposalError naming what is wrong."""
    match = _JSON.search(text or "")
    if not match:
        raise ProposalError("no JSON object in the reply")
    try:
        data = json.loads(match.group(0))
    except json.JSONDecodeError as err:
        raise ProposalError(f"invalid JSON: {err.msg} at character {err.pos}") from None
    if not isinstance(data, dict):
        raise ProposalError("the reply must be a JSON object with 'names' and 'pairs'")
    known = [c.name for c in spec.components]
    names_in = data.get("names", {}) or {}
    if not isinstance(names_in, dict):
        raise ProposalError("'names' must be an object mapping automatic names to names")
    names: dict[str, str] = {}
    for auto, proposed in names_in.items():
        if auto not in known:
            raise ProposalError(f"'names' has an unknown component {auto!r}; known: {', '.join(known)}")
        name = safe_name(proposed)
        if not name:
            raise ProposalError(f"the name for {auto!r} is empty after cleaning")
        names[auto] = name
    pairs_in = data.get("pairs", []) or []
    if not isinstance(pairs_in, list):
        raise ProposalError("'pairs' must be a list")
    pairs: list[PairRule] = []
    for i, p in enumerate(pairs_in):
        if not isinstance(p, dict):
            raise ProposalError(f"pairs[{i}] must be an object with a, b and attribute")
        a, b, attr = p.get("a"), p.get("b"), str(p.get("attribute", "hue")).lower()
        if a not in known or b not in known or a == b:
            raise ProposalError(f"pairs[{i}] must name two different components of: {', '.join(known)}")
        if attr not in ATTRIBUTES:
            raise ProposalError(f"pairs[{i}].attribute must be one of {', '.join(ATTRIBUTES)}, got {attr!r}")
        pairs.append(PairRule(a=a, b=b, attribute=attr, tolerance=PAIR_TOLERANCE[attr]))
    return Proposal(names, pairs)


def apply_proposal(spec: Spec, proposal: Proposal) -> tuple[Spec, list[str]]:
    """A copy of `spec` with the proposed pairs added (duplicates skipped) and then the names applied
    (unique; pair rules and relative positions follow the renaming). Returns (spec, labels of the
    added pair rules under their final names)."""
    new = spec.model_copy(deep=True)
    existing = {(p.a, p.b, p.attribute) for p in new.pairs} | {(p.b, p.a, p.attribute) for p in new.pairs}
    added = [p for p in proposal.pairs if (p.a, p.b, p.attribute) not in existing]
    new.pairs = [*new.pairs, *added]
    rename: dict[str, str] = {}
    taken: set[str] = set()
    for c in new.components:
        base = proposal.names.get(c.name, c.name)
        name, k = base, 2
        while name in taken:
            name, k = f"{base}-{k}", k + 1
        taken.add(name)
        rename[c.name] = name
    for c in new.components:
        c.name = rename[c.name]
        if c.position and c.position.relative_to in rename:
            c.position.relative_to = rename[c.position.relative_to]
    for p in new.pairs:
        p.a, p.b = rename.get(p.a, p.a), rename.get(p.b, p.b)
    labels = [f"pair:{rename.get(p.a, p.a)}~{rename.get(p.b, p.b)}.{p.attribute}" for p in added]
    return new, labels


def refine_with_llm(
    spec: Spec,
    references: Sequence[Image.Image],
    names: Sequence[str],
    chat: TextChat,
    brain_name: str = "llm",
    prompts: str = "audit",
    finders: Finders | None = None,
) -> Spec:
    """Names and pair rules from the LLM, validated on the references (with the run's SAM / CLIP
    `finders`, agent.audit.finders). Never raises for a bad reply: the statistical spec comes back
    with a note saying why the proposal was not used."""
    from agent.audit.draft import validate_on_references
    from agent.brains.common import BrainError

    t: dict[str, Any] = load_prompts(prompts)
    pairs_text = ", ".join(f"{p.a} ~ {p.b} ({p.attribute})" for p in spec.pairs) or "none"
    prompt = t["propose"].format(components=describe_components(spec), pairs=pairs_text)
    try:
        reply = chat(prompt, [])
        try:
            proposal = parse_proposal(reply, spec)
        except ProposalError as err:
            reply2 = chat(t["repair"].format(error=err), [(prompt, reply)])
            proposal = parse_proposal(reply2, spec)
    except ProposalError as err:
        out = spec.model_copy(deep=True)
        out.notes.append(f"{brain_name}: proposal rejected after one repair ({err}); statistical draft kept")
        return out
    except BrainError as err:
        out = spec.model_copy(deep=True)
        out.notes.append(f"{brain_name}: no proposal ({err}); statistical draft kept")
        return out
    candidate, added = apply_proposal(spec, proposal)
    before = len(candidate.dropped)
    validated = validate_on_references(candidate, references, names, finders)
    validated.dropped = [
        d + (" (proposed by the LLM)" if any(d.startswith(label + ":") for label in added) else "")
        if i >= before
        else d
        for i, d in enumerate(validated.dropped)
    ]
    kept = [a for a in added if not any(d.startswith(a + ":") for d in validated.dropped)]
    validated.notes.append(
        f"{brain_name}: named {len(proposal.names)} component(s); proposed {len(added)} new pair rule(s), "
        f"{len(kept)} kept after checking them on the {len(references)} references"
    )
    return validated


__all__ = [
    "Proposal",
    "ProposalError",
    "TextChat",
    "apply_proposal",
    "describe_components",
    "parse_proposal",
    "refine_with_llm",
    "safe_name",
]
