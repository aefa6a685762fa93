"""Drafting an audit spec from good references (the RuleBrain's match-of-thought step: segmentation and
statistics, no model).

1. Background: the median colour of the references' outer border (each reference white-balanced to
   it); its tolerance from the spread there.
2. Blobs per reference (see `tools.components.find_parts`); the first reference's blobs seed *places*,
   the others are matched to them by position (Hungarian); places found on every reference are kept.
3. Places of one steady colour and similar size form one component (found by colour, `rgb` with a
   tolerance kept below half the distance to every other colour seen); a place whose colour varies
   across the references (e.g. flavours) is its own component, found by its region.
4. Per component: exact count, expected places (tolerance from the positional spread), colour and area
   per instance (tolerances from the spread). Pair rules: two varying components whose hue always agrees.
5. Validation: every rule is checked on every reference; a rule that fails on one is dropped and the
   spec lists it in `dropped`.

Real photos (`segmenter="regions"`, agent.audit.product_draft): colour blobs fragment on glass, print
and shading, so the references disagree with themselves and most rules above are dropped. There the
parts are discovered as regions the references agree on and found by their look. `segmenter="auto"`
(the default) drafts by colour first and turns to the product's parts when the colour draft is weak:
no count rule kept, fewer than twice as many rules kept as dropped, or no component on every
reference. The spec's `notes` say which way was taken and why.

With `segmenter="sam"` (and a SAM mask generator in `finders`) step 2 uses SAM's segments
(agent.audit.segment) instead of colour blobs; the components are then `find: {sam: true, rgb: ...}`
(or `{sam: true, region: ...}`) and the spec says `segmenter: sam`, so a run segments the same way.
Without a mask generator the draft falls back to colour and says so in `notes`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal

import numpy as np
from PIL import Image

from agent.audit.check import _colour_word, audit_image, candidate_blobs, hue_distance
from agent.audit.draft_error import DraftError
from agent.audit.spec import (
    Area,
    Background,
    Colour,
    ComponentSpec,
    Count,
    Find,
    PairRule,
    Position,
    SamSettings,
    Spec,
)
from tools.components import Part, border_colour, hungarian, white_balance, work_pixels
from tools.regions import location_words

if TYPE_CHECKING:
    from agent.audit.finders import Finders

PLACE_MATCH = 0.08  # centroids this far apart (image fractions) are the same place across references
VARYING_COLOUR = 0.1  # a place whose colour spread exceeds this is found by region, not colour
SAME_COLOUR = 0.15
MIN_AREA = 0.002


@dataclass
class _Place:
    blobs: list[Part] = field(default_factory=list)

    @property
    def centre(self) -> tuple[float, float]:
        xs = [b.centroid for b in self.blobs]
        return (float(np.mean([c[0] for c in xs])), float(np.mean([c[1] for c in xs])))

    @property
    def rgb(self) -> np.ndarray:
        return np.mean([b.rgb for b in self.blobs], axis=0)

    @property
    def colour_spread(self) -> float:
        m = self.rgb
        return max(math.dist(b.rgb, m) for b in self.blobs)

    @property
    def pos_spread(self) -> float:
        c = self.centre
        return max(math.dist(b.centroid, c) for b in self.blobs)

    @property
    def area(self) -> float:
        return float(np.mean([b.area for b in self.blobs]))


def _background(pixels: Sequence[np.ndarray]) -> tuple[tuple[float, float, float], float]:
    border = np.concatenate(
        [
            np.concatenate(
                [
                    p[:2].reshape(-1, 3),
                    p[-2:].reshape(-1, 3),
                    p[:, :2].reshape(-1, 3),
                    p[:, -2:].reshape(-1, 3),
                ]
            )
            for p in pixels
        ]
    )
    bg = np.median(border, axis=0)
    d = np.sqrt(((border - bg) ** 2).sum(-1))
    tol = float(min(0.35, max(0.15, 3.0 * np.percentile(d, 99))))
    return (float(bg[0]), float(bg[1]), float(bg[2])), round(tol, 4)


def _places(per_ref: list[list[Part]]) -> tuple[list[_Place], list[str]]:
    notes: list[str] = []
    places = [_Place([b]) for b in per_ref[0]]
    for k, blobs in enumerate(per_ref[1:], start=2):
        if not blobs or not places:
            continue
        cost = np.array([[math.dist(p.centre, b.centroid) for b in blobs] for p in places])
        assignment = hungarian(cost, PLACE_MATCH)
        for r, c, _ in assignment.pairs:
            places[r].blobs.append(blobs[c])
        unmatched = len(blobs) - len(assignment.pairs)
        if unmatched:
            notes.append(f"reference {k}: {unmatched} object(s) not on the first reference were ignored")
    full = [p for p in places if len(p.blobs) == len(per_ref)]
    if len(full) < len(places):
        notes.append(f"{len(places) - len(full)} object(s) not found on every reference were ignored")
    return full, notes


def _row_major(centres: list[tuple[float, float]]) -> list[int]:
    """Indices sorted into reading order (rows grouped by y within a tolerance)."""
    order = sorted(range(len(centres)), key=lambda i: centres[i][1])
    rows: list[list[int]] = []
    for i in order:
        if rows and abs(centres[i][1] - np.mean([centres[j][1] for j in rows[-1]])) < 0.05:
            rows[-1].append(i)
        else:
            rows.append([i])
    return [i for row in rows for i in sorted(row, key=lambda j: centres[j][0])]


def draft_spec(
    references: Sequence[Image.Image],
    names: Sequence[str] | None = None,
    segmenter: Literal["auto", "colour", "sam", "regions"] = "auto",
    finders: Finders | None = None,
    sam: SamSettings | None = None,
) -> Spec:
    """A validated spec from good references; raises DraftError when none can be made.

    `segmenter="sam"` drafts on SAM's segments (`finders` gives the mask generator, `sam` its settings,
    kept in the spec); "regions" on the product's parts; "auto" by colour, else the product's parts."""
    if len(references) < 1:
        raise DraftError("drafting a spec needs at least one good reference image")
    names = list(names) if names else [f"reference {i + 1}" for i in range(len(references))]
    if segmenter == "regions":
        from agent.audit.product_draft import draft_product_spec

        return draft_product_spec(references, names)
    if segmenter != "auto":
        return _draft_by_colour(references, names, segmenter, finders, sam)
    try:
        spec = _draft_by_colour(references, names, "colour", finders, sam)
        weak = weak_colour_draft(spec)
    except DraftError as err:
        spec, weak = None, str(err)
    if weak is None:
        return spec
    from agent.audit.product_draft import draft_product_spec

    out = draft_product_spec(references, names)
    out.notes.insert(0, f"drafted on the product's parts, not colour blobs: the colour draft was weak ({weak})")
    return out


def weak_colour_draft(spec: Spec) -> str | None:
    """Why a colour draft is too weak to use (no count rule kept, or fewer than twice as many rules
    kept as dropped), or None when it is fine."""
    counts = sum(c.count is not None for c in spec.components)
    kept = counts + sum(
        getattr(c, k) is not None for c in spec.components for k in ("colour", "area", "position")
    ) + len(spec.pairs) + int(spec.unexpected_objects)
    if counts == 0:
        return f"no count rule held on every reference; {len(spec.dropped)} rule(s) dropped"
    if kept < 2 * len(spec.dropped):
        return f"{kept} rule(s) kept, {len(spec.dropped)} dropped"
    return None


def _draft_by_colour(
    references: Sequence[Image.Image],
    names: list[str],
    segmenter: Literal["colour", "sam"],
    finders: Finders | None,
    sam: SamSettings | None,
) -> Spec:
    """The colour (or SAM) draft of steps 1-5."""
    from agent.audit.finders import Finders

    finders = finders or Finders()
    pixels = [work_pixels(im) for im in references]
    target = np.median([border_colour(p) for p in pixels], axis=0)
    pixels = [white_balance(p, target) for p in pixels]
    bg, bg_tol = _background(pixels)
    probe = Spec(
        background=Background(rgb=bg, tolerance=bg_tol),
        min_area=MIN_AREA,
        components=[ComponentSpec(name="probe", find=Find(region=(0, 0, 1, 1)))],
        segmenter=segmenter,
        sam=sam,
    )
    per_ref, sam_problem = [], None
    for p in pixels:
        blobs, sam_problem = candidate_blobs(p, probe, finders)
        per_ref.append(blobs)
    use_sam = segmenter == "sam" and sam_problem is None
    if not per_ref[0] and use_sam:
        raise DraftError(
            f"SAM found no components on {names[0]}: no mask passed its filters (sam.min_score, "
            "sam.min_stability) or all were background"
        )
    if not per_ref[0]:
        raise DraftError(f"no components found on {names[0]}: everything looks like background")
    places, notes = _places(per_ref)
    if sam_problem is not None:
        notes.append(f"drafted by colour, not SAM: {sam_problem}")
    if not places:
        raise DraftError("no component is found on every reference; are they images of the same part?")

    varying = [p for p in places if p.colour_spread > VARYING_COLOUR]
    steady = [p for p in places if p.colour_spread <= VARYING_COLOUR]
    groups: list[list[_Place]] = []
    for p in sorted(steady, key=lambda q: -q.area):
        for g in groups:
            if math.dist(g[0].rgb, p.rgb) < SAME_COLOUR and 1 / 1.6 < p.area / g[0].area < 1.6:
                g.append(p)
                break
        else:
            groups.append([p])

    all_blobs = [b for blobs in per_ref for b in blobs]
    components: list[ComponentSpec] = []
    used: dict[str, int] = {}

    def name_for(rgb: Sequence[float]) -> str:
        word = _colour_word(rgb)
        used[word] = used.get(word, 0) + 1
        return word if used[word] == 1 else f"{word}-{used[word]}"

    def common(group: list[_Place]) -> dict:
        centres = [p.centre for p in group]
        order = _row_major(centres)
        slots = [(round(centres[i][0], 4), round(centres[i][1], 4)) for i in order]
        pos_tol = max(0.04, 3.0 * max(p.pos_spread for p in group))
        areas = [b.area for p in group for b in p.blobs]
        each = float(np.mean(areas))
        spread = max(abs(a / each - 1.0) for a in areas)
        return {
            "count": Count(min=len(group), max=len(group)),
            "area": Area(each=round(each, 6), tolerance=round(max(0.25, 3.0 * spread), 4)),
            "position": Position(slots=slots, tolerance=round(pos_tol, 4)),
        }

    for g in groups:
        mine = {id(b) for p in g for b in p.blobs}
        rgb = np.mean([p.rgb for p in g], axis=0)
        spread = max(math.dist(b.rgb, rgb) for p in g for b in p.blobs)
        others = [math.dist(b.rgb, rgb) for b in all_blobs if id(b) not in mine]
        colour_tol = max(0.06, 3.0 * spread)
        find_tol = max(colour_tol * 1.5, min(0.3, 0.45 * min(others, default=1.0)))
        rgb_t = (round(float(rgb[0]), 4), round(float(rgb[1]), 4), round(float(rgb[2]), 4))
        components.append(
            ComponentSpec(
                name=name_for(rgb),
                find=Find(rgb=rgb_t, tolerance=round(find_tol, 4), sam=use_sam),
                colour=Colour(rgb=rgb_t, tolerance=round(colour_tol, 4)),
                **common(g),
            )
        )
    var_names: list[tuple[str, _Place]] = []
    for p in varying:
        xs = [b.centroid[0] for b in p.blobs]
        ys = [b.centroid[1] for b in p.blobs]
        half = math.sqrt(p.area) / 2 + 0.03
        region = (
            round(max(0.0, min(xs) - half), 4),
            round(max(0.0, min(ys) - half), 4),
            round(min(1.0, max(xs) + half), 4),
            round(min(1.0, max(ys) + half), 4),
        )
        where = location_words(p.centre[0] * 1000 - 0.5, p.centre[1] * 1000 - 0.5, 1000, 1000)
        name = f"part-{where}"
        used[name] = used.get(name, 0) + 1
        name = name if used[name] == 1 else f"{name}-{used[name]}"
        components.append(ComponentSpec(name=name, find=Find(region=region, sam=use_sam), **common([p])))
        var_names.append((name, p))
    pairs: list[PairRule] = []
    for i, (na, pa) in enumerate(var_names):
        for nb, pb in var_names[i + 1 :]:
            diffs = [hue_distance(a.hue, b.hue) for a, b in zip(pa.blobs, pb.blobs, strict=True)]
            hue_range = max(hue_distance(a.hue, pa.blobs[0].hue) for a in pa.blobs)
            if max(diffs) < 0.06 and hue_range > 0.1:
                pairs.append(
                    PairRule(a=na, b=nb, attribute="hue", tolerance=round(max(0.05, 2 * max(diffs)), 4))
                )
    spec = Spec(
        background=Background(rgb=tuple(round(v, 4) for v in bg), tolerance=bg_tol),
        min_area=MIN_AREA,
        components=components,
        pairs=pairs,
        notes=notes,
        segmenter="sam" if use_sam else None,
        sam=sam if use_sam else None,
    )
    return validate_on_references(spec, references, names, finders)


def validate_on_references(
    spec: Spec, references: Sequence[Image.Image], names: Sequence[str], finders: Finders | None = None
) -> Spec:
    """Drop every rule that fails on a good reference; list each in `dropped`. `finders`: the run's
    SAM / CLIP finders, so the rules are checked on the blobs the run will see."""
    dropped = list(spec.dropped)
    for _ in range(3):
        changed = False
        for im, nm in zip(references, names, strict=True):
            result = audit_image(im, spec, finders=finders)
            for r in result.violations:
                changed = True
                dropped.append(f"{r.rule}: failed on {nm} ({r.explanation})")
                spec = _without(spec, r.rule)
            if changed:
                break
        if not changed:
            break
    spec.dropped = dropped
    return spec


def _without(spec: Spec, rule: str) -> Spec:
    data = spec.model_copy(deep=True)
    if rule == "unexpected_objects":
        data.unexpected_objects = False
        return data
    if rule.startswith("pair:"):
        data.pairs = [p for p in data.pairs if f"pair:{p.a}~{p.b}.{p.attribute}" != rule]
        return data
    name, _, part = rule.rpartition(".")
    for c in data.components:
        if c.name == name and part in ("count", "colour", "area", "position"):
            setattr(c, part, None)
    return data


__all__ = ["DraftError", "draft_spec", "validate_on_references", "weak_colour_draft"]
