"""Checking one image against an audit spec: components found, every rule measured, explained and scored.

Steps: colours white-balanced against the background (the image border); foreground = pixels away from the background colour; blobs = 8-connected pieces of one main
foreground colour (larger than `min_area`; tools.components), or with `segmenter: sam` the pieces of SAM's automatic masks
(agent.audit.segment); each blob is claimed by the component whose colour finder it fits best (then
CLIP prompt finders, agent.audit.clip_finder, then region finders take what is left in their box, then a
bare `sam: true` finder the rest); then per component count, position (Hungarian matching of
instances to the expected places), colour and area, the pair rules, and the blobs no component claims.
A component whose finder needs a model that is not here (agent.audit.finders) gets a skipped rule, and
then so does the unexpected-objects rule (its parts would look unexpected).

Score: each rule gives a deviation (measured distance / tolerance); the logical score is below 0.5 when
every rule passes (0.5 x the largest relative deviation) and 0.5..1 when one fails. With a structural
detector, its calibrated score is normalized so that its threshold maps to 0.5 and the two are fused by
max (as LogSAD does); any hard violation makes the image anomalous.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
from PIL import Image

from agent.audit.looks import colour_word
from agent.audit.rule_result import RuleResult
from agent.audit.spec import ComponentSpec, Spec
from tools.components import Part, find_parts, hungarian, white_balance, work_pixels
from tools.regions import location_words

if TYPE_CHECKING:
    from agent.audit.finders import Finders


@dataclass
class AuditResult:
    rules: list[RuleResult]
    blobs: list[Part]
    logical_score: float
    structural_score: float | None
    score: float
    anomalous: bool
    explanation: str
    work_size: tuple[int, int]  # width, height of the blob masks

    @property
    def violations(self) -> list[RuleResult]:
        """Failed rules, most severe first."""
        return sorted((r for r in self.rules if not r.passed), key=lambda r: -r.deviation)

    def offending_mask(self, size: tuple[int, int], rules: Sequence[RuleResult] | None = None) -> np.ndarray:
        """HxW bool at `size` (width, height): offending blobs and the empty places of `rules` (default:
        all violations)."""
        w, h = self.work_size
        mask = np.zeros((h, w), bool)
        for r in self.violations if rules is None else rules:
            for i in r.offending:
                mask |= self.blobs[i].mask
            if r.places:
                yy, xx = np.mgrid[0:h, 0:w]
                for x, y, rad in r.places:
                    mask |= ((xx + 0.5) / w - x) ** 2 + ((yy + 0.5) / h - y) ** 2 <= rad**2
        if (w, h) != tuple(size):
            mask = np.asarray(Image.fromarray(mask.astype(np.uint8) * 255).resize(size, Image.NEAREST)) > 0
        return mask

    def to_dict(self) -> dict[str, Any]:
        return {
            "score": round(self.score, 6),
            "logical_score": round(self.logical_score, 6),
            "structural_score": None if self.structural_score is None else round(self.structural_score, 6),
            "anomalous": self.anomalous,
            "explanation": self.explanation,
            "rules": [r.to_dict() for r in self.rules],
            "components_found": len(self.blobs),
        }


def hue_distance(a: float, b: float) -> float:
    d = abs(a - b) % 1.0
    return min(d, 1.0 - d)


def _fits_hsv(blob: Part, comp: ComponentSpec) -> bool:
    rng = comp.find.hsv
    h, s, v = blob.hsv
    hl, hh = rng.h
    in_h = hl <= h <= hh if hl <= hh else (h >= hl or h <= hh)
    return in_h and rng.s[0] <= s <= rng.s[1] and rng.v[0] <= v <= rng.v[1]


PromptClaims = Callable[[list[int]], dict[int, str]]  # unclaimed blob indices -> {index: component}


def assign(
    blobs: list[Part], spec: Spec, by_prompt: PromptClaims | None = None, sam_segments: bool = False
) -> None:
    """Set each blob's owner: best colour finder, else a CLIP prompt that claims it (`by_prompt`), else
    a region finder whose box holds its centre, else (on SAM segments) the first bare `sam` finder."""
    for b in blobs:
        best, best_d = None, math.inf
        for comp in spec.components:
            f = comp.find
            if f.rgb is not None:
                d = math.dist(b.rgb, f.rgb)
                if d <= f.tolerance and d / f.tolerance < best_d:
                    best, best_d = comp.name, d / f.tolerance
            elif f.hsv is not None and _fits_hsv(b, comp) and best is None:
                best, best_d = comp.name, 1.0
        b.owner = best
    if by_prompt is not None:
        for i, owner in by_prompt([i for i, b in enumerate(blobs) if b.owner is None]).items():
            blobs[i].owner = owner
    bare_sam = next((c.name for c in spec.components if c.find.sam and not _has_other_way(c)), None)
    for b in blobs:
        if b.owner is not None:
            continue
        for comp in spec.components:
            r = comp.find.region
            if r is not None and r[0] <= b.centroid[0] <= r[2] and r[1] <= b.centroid[1] <= r[3]:
                b.owner = comp.name
                break
        if b.owner is None and sam_segments:
            b.owner = bare_sam


def _has_other_way(comp: ComponentSpec) -> bool:
    return comp.find.by_appearance or bool(comp.find.clip_prompt)


def unavailable_components(spec: Spec, clip_problem: str | None, sam_problem: str | None) -> dict[str, str]:
    """{component: why it is not checked} for components whose every way of finding needs a model
    that is not here (`*_problem` None = that model is available)."""
    out = {}
    for comp in spec.components:
        f = comp.find
        if f.by_appearance:
            continue
        if f.clip_prompt and clip_problem is None:
            continue
        if f.sam and not f.clip_prompt and sam_problem is None:
            continue
        why = clip_problem if f.clip_prompt else sam_problem
        out[comp.name] = f"{comp.name}: not checked, finding it by {f.needs_extras} needs a model: {why}"
    return out


def _words(items: Sequence[int]) -> str:
    s = [str(i) for i in items]
    return s[0] if len(s) == 1 else ", ".join(s[:-1]) + " and " + s[-1]


def _radius(comp: ComponentSpec) -> float:
    each = comp.area.each if comp.area else 0.005
    return max(0.02, math.sqrt(each / math.pi) * 1.3)


def _match_slots(inst: list[int], blobs: list[Part], slots: list[tuple[float, float]], tol: float):
    """(matched {slot: (blob, dist)}, empty slots, stray blob indices)."""
    matched: dict[int, tuple[int, float]] = {}
    if inst and slots:
        cost = np.array([[math.dist(blobs[i].centroid, s) for s in slots] for i in inst])
        for r, c, d in hungarian(cost, tol).pairs:
            matched[c] = (inst[r], d)
    used = {b for b, _ in matched.values()}
    empty = [j for j in range(len(slots)) if j not in matched]
    stray = [i for i in inst if i not in used]
    return matched, empty, stray


def _where(blob: Part) -> str:
    return location_words(blob.centroid[0] * 1000 - 0.5, blob.centroid[1] * 1000 - 0.5, 1000, 1000)


def check_components(
    spec: Spec, blobs: list[Part], unavailable: dict[str, str] | None = None
) -> list[RuleResult]:
    """Every rule of the spec measured on the claimed blobs; components in `unavailable` (name -> why)
    get one skipped `<name>.find` rule instead, and the unexpected-objects rule is skipped with them."""
    out: list[RuleResult] = []
    unavailable = unavailable or {}
    instances = {c.name: [i for i, b in enumerate(blobs) if b.owner == c.name] for c in spec.components}
    empty_places: dict[str, list[tuple[int, tuple[float, float]]]] = {}
    for comp in spec.components:
        name = comp.name
        if name in unavailable:
            out.append(
                RuleResult(
                    f"{name}.find",
                    [name],
                    None,
                    comp.find.needs_extras,
                    True,
                    0.0,
                    unavailable[name],
                    skipped=True,
                )
            )
            continue
        inst = instances[name]
        n = len(inst)
        slots = comp.position.slots if comp.position and comp.position.slots else None
        matched, empty, stray = (
            _match_slots(inst, blobs, slots, comp.position.tolerance) if slots else ({}, [], [])
        )
        if slots:
            empty_places[name] = [(j, slots[j]) for j in empty]
        if comp.count is not None:
            lo, hi = comp.count.min, comp.count.max
            ok = n >= lo and (hi is None or n <= hi)
            expected = lo if hi == lo else {"min": lo, "max": hi}
            total = hi if hi is not None else lo
            if ok:
                text = f"{name}: {n} found, as expected"
                dev = 0.0
                res = RuleResult(f"{name}.count", [name], n, expected, True, dev, text)
            elif n < lo:
                k = lo - n
                places = ""
                marks: list[tuple[float, float, float]] = []
                if slots and empty:
                    places = f": place{'s' if len(empty) > 1 else ''} {_words([j + 1 for j in empty])}"
                    marks = [(slots[j][0], slots[j][1], _radius(comp)) for j in empty]
                text = f"{k} of {total} {name} missing{places}"
                res = RuleResult(f"{name}.count", [name], n, expected, False, 1.0 + k, text, places=marks)
            else:
                k = n - hi
                offend = stray if stray else inst
                where = ", ".join(_where(blobs[i]) for i in offend[:3])
                text = f"{k} {name} too many ({n} found, {hi} expected){', at the ' + where if where else ''}"
                res = RuleResult(f"{name}.count", [name], n, expected, False, 1.0 + k, text, offending=offend)
            out.append(res)
        if comp.position is not None:
            pos = comp.position
            tol = pos.tolerance
            if slots:
                worst = max((d for _, d in matched.values()), default=0.0) / tol
                moved = stray and empty
                if stray:
                    where = ", ".join(_where(blobs[i]) for i in stray[:3])
                    if moved:
                        text = (
                            f"{name} out of place: place{'s' if len(empty) > 1 else ''} "
                            f"{_words([j + 1 for j in empty])} empty, {len(stray)} at the {where} instead"
                        )
                    else:
                        text = f"{len(stray)} {name} away from every expected place (at the {where})"
                    marks = [(slots[j][0], slots[j][1], _radius(comp)) for j in empty]
                    out.append(
                        RuleResult(
                            f"{name}.position",
                            [name],
                            len(stray),
                            0,
                            False,
                            1.0 + len(stray),
                            text,
                            offending=stray,
                            places=marks,
                        )
                    )
                else:
                    out.append(
                        RuleResult(
                            f"{name}.position",
                            [name],
                            round(worst * tol, 4),
                            f"<= {tol}",
                            True,
                            worst,
                            f"{name}: every one in its place",
                        )
                    )
            elif pos.box is not None:
                x0, y0, x1, y1 = pos.box
                outside = [
                    i
                    for i in inst
                    if not (
                        x0 - tol <= blobs[i].centroid[0] <= x1 + tol
                        and y0 - tol <= blobs[i].centroid[1] <= y1 + tol
                    )
                ]
                ok = not outside
                text = f"{name}: inside its area" if ok else f"{len(outside)} {name} outside its area"
                out.append(
                    RuleResult(
                        f"{name}.position",
                        [name],
                        len(outside),
                        0,
                        ok,
                        0.0 if ok else 2.0,
                        text,
                        offending=outside,
                    )
                )
            elif pos.relative_to is not None:
                ref = instances.get(pos.relative_to) or []
                if inst and ref:
                    a, b = blobs[inst[0]].centroid, blobs[ref[0]].centroid
                    off = (a[0] - b[0], a[1] - b[1])
                    d = math.dist(off, pos.offset)
                    ok = d <= tol
                    text = (
                        f"{name}: in place relative to {pos.relative_to}"
                        if ok
                        else f"{name} is {d:.2f} of the image away from its place relative to {pos.relative_to}"
                    )
                    out.append(
                        RuleResult(
                            f"{name}.position",
                            [name, pos.relative_to],
                            [round(off[0], 4), round(off[1], 4)],
                            list(pos.offset),
                            ok,
                            d / tol if ok else 1.0 + d / tol,
                            text,
                            offending=[] if ok else [inst[0]],
                        )
                    )
        if comp.colour is not None and inst:
            ds = [math.dist(blobs[i].rgb, comp.colour.rgb) for i in inst]
            bad = [i for i, d in zip(inst, ds, strict=True) if d > comp.colour.tolerance]
            worst = max(ds) / comp.colour.tolerance
            text = f"{name}: colour as expected" if not bad else f"{len(bad)} {name} in an off colour"
            out.append(
                RuleResult(
                    f"{name}.colour",
                    [name],
                    round(max(ds), 4),
                    f"<= {comp.colour.tolerance}",
                    not bad,
                    worst if not bad else 1.0 + worst,
                    text,
                    offending=bad,
                )
            )
        if comp.area is not None and inst:
            rel = [blobs[i].area / comp.area.each - 1.0 for i in inst]
            bad = [i for i, r in zip(inst, rel, strict=True) if abs(r) > comp.area.tolerance]
            worst_i = int(np.argmax(np.abs(rel)))
            worst = abs(rel[worst_i]) / comp.area.tolerance
            if bad:
                kind = "larger" if rel[inst.index(bad[0])] > 0 else "smaller"
                text = f"{len(bad)} {name} {kind} than expected ({blobs[bad[0]].area / comp.area.each:.2f} x)"
            else:
                text = f"{name}: size as expected"
            out.append(
                RuleResult(
                    f"{name}.area",
                    [name],
                    round(blobs[inst[worst_i]].area, 5),
                    comp.area.each,
                    not bad,
                    worst if not bad else 1.0 + worst,
                    text,
                    offending=bad,
                )
            )
    for p in spec.pairs:
        a, b = instances.get(p.a) or [], instances.get(p.b) or []
        if not a or not b:
            continue  # a missing side is the count rule's business
        ba, bb = blobs[a[0]], blobs[b[0]]
        if p.attribute == "hue":
            d = hue_distance(ba.hue, bb.hue)
        elif p.attribute == "colour":
            d = math.dist(ba.rgb, bb.rgb)
        elif p.attribute == "area":
            d = abs(math.log(ba.area / bb.area))
        else:
            k = 0 if p.attribute == "x" else 1
            d = abs(ba.centroid[k] - bb.centroid[k])
        ok = d <= p.tolerance
        text = (
            f"{p.a} and {p.b} match in {p.attribute}"
            if ok
            else f"{p.a} and {p.b} do not match: their {p.attribute} differs by {d:.2f} (at most {p.tolerance})"
        )
        out.append(
            RuleResult(
                f"pair:{p.a}~{p.b}.{p.attribute}",
                [p.b, p.a],
                round(d, 4),
                f"<= {p.tolerance}",
                ok,
                d / p.tolerance if ok else 1.0 + d / p.tolerance,
                text,
                offending=[] if ok else [a[0], b[0]],
            )
        )
    if spec.unexpected_objects and unavailable:
        names = ", ".join(sorted(unavailable))
        out.append(
            RuleResult(
                "unexpected_objects",
                [],
                None,
                0,
                True,
                0.0,
                f"unexpected objects: not checked, {names} could not be looked for",
                skipped=True,
            )
        )
    elif spec.unexpected_objects:
        loose = [i for i, b in enumerate(blobs) if b.owner is None]
        if not loose:
            out.append(RuleResult("unexpected_objects", [], 0, 0, True, 0.0, "no unexpected objects"))
        for i in loose:
            b = blobs[i]
            owner, place, best = None, None, math.inf
            for comp in spec.components:
                for j, s in empty_places.get(comp.name, []):
                    d = math.dist(b.centroid, s)
                    if d <= max(comp.position.tolerance * 2, _radius(comp)) and d < best:
                        owner, place, best = comp.name, j, d
            colour = _colour_word(b.rgb)
            if owner is not None:
                text = f"{owner} at place {place + 1} has the wrong colour ({colour})"
            else:
                text = f"an unexpected {colour} object at the {_where(b)}"
            out.append(
                RuleResult(
                    "unexpected_objects",
                    [owner] if owner else [],
                    1,
                    0,
                    False,
                    2.0 + b.area * 10,
                    text,
                    offending=[i],
                )
            )
    return out


def _colour_word(rgb: Sequence[float]) -> str:
    """A plain colour word (the scenes' words: no "brown")."""
    return colour_word(rgb, brown=False)


def normalized_structural(score: float, threshold: float) -> float:
    """A calibrated detector score mapped so that its threshold becomes 0.5 (0..1)."""
    thr = min(max(threshold, 1e-6), 1 - 1e-6)
    if score <= thr:
        return 0.5 * max(score, 0.0) / thr
    return 0.5 + 0.5 * min(1.0, (score - thr) / (1 - thr))


def candidate_blobs(px: np.ndarray, spec: Spec, finders: Finders) -> tuple[list[Part], str | None]:
    """(blobs of the work image, why SAM was not used or None): SAM's segments when the spec uses SAM
    and a mask generator is there, else colour segmentation."""
    if spec.uses_sam:
        generate = finders.mask_generator(spec.sam_settings)
        if generate is not None:
            from agent.audit.segment import masks_to_blobs, work_image

            bg = spec.background
            masks = generate(work_image(px))
            blobs = masks_to_blobs(
                masks, px, bg.rgb, bg.tolerance, spec.min_area, spec.sam_settings.max_background
            )
            return blobs, None
        why: str | None = finders.sam_problem
    else:
        why = None
    return find_parts(px, spec.background.rgb, spec.background.tolerance, spec.min_area), why


def _prompt_claims(
    image: Image.Image, spec: Spec, blobs: list[Part], finders: Finders
) -> tuple[PromptClaims | None, str | None]:
    """(claims callable or None, why CLIP is not available or None) for the spec's prompt finders."""
    if not any(c.find.clip_prompt for c in spec.components):
        return None, None
    scorer = finders.clip_scorer(spec.clip_settings)
    if scorer is None:
        return None, finders.clip_problem
    from agent.audit.clip_finder import claim_by_prompt

    return (lambda idx: claim_by_prompt(blobs, idx, image, spec, scorer)), None


def audit_image(
    image: Image.Image,
    spec: Spec,
    structural: tuple[float, float] | None = None,
    finders: Finders | None = None,
) -> AuditResult:
    """Check one image; `structural` = (calibrated score, threshold) of the structural detector;
    `finders` = the SAM mask generator and CLIP scorer of the run (default: none, so components that
    need them are skipped)."""
    if spec.segmenter == "regions":
        from agent.audit.product_check import check_product

        rules, blobs, work = check_product(image, spec)
        return _conclude(rules, blobs, structural, work)
    if finders is None:
        from agent.audit.finders import Finders

        finders = Finders()
    px = work_pixels(image)
    if spec.white_balance:
        px = white_balance(px, spec.background.rgb)
    blobs, sam_problem = candidate_blobs(px, spec, finders)
    by_prompt, clip_problem = _prompt_claims(image, spec, blobs, finders)
    assign(blobs, spec, by_prompt, sam_segments=spec.uses_sam and sam_problem is None)
    rules = check_components(spec, blobs, unavailable_components(spec, clip_problem, sam_problem))
    if sam_problem is not None:
        rules.insert(
            0,
            RuleResult(
                "segmenter",
                [],
                "colour",
                "sam",
                True,
                0.0,
                f"segmented by colour, not SAM: {sam_problem}",
                skipped=True,
            ),
        )
    return _conclude(rules, blobs, structural, (px.shape[1], px.shape[0]))


def _conclude(
    rules: list[RuleResult], blobs: list[Part], structural: tuple[float, float] | None, work: tuple[int, int]
) -> AuditResult:
    """Score, verdict and sentence from the measured rules (and the structural detector's score)."""
    failed = [r for r in rules if not r.passed]
    devs = [r.deviation for r in rules if not r.skipped]
    if failed:
        logical = 0.5 + 0.5 * min(1.0, max(r.deviation for r in failed) / 6.0)
    else:
        logical = 0.5 * min(0.999, max(devs, default=0.0))
    s_norm = None if structural is None else normalized_structural(*structural)
    score = logical if s_norm is None else max(logical, s_norm)
    anomalous = bool(failed) or (s_norm is not None and s_norm > 0.5)
    if failed:
        text = "; ".join(r.explanation for r in sorted(failed, key=lambda r: -r.deviation))
        text = text[0].upper() + text[1:] + "."
    else:
        checked = sum(1 for r in rules if not r.skipped)
        text = f"All {checked} audit rules pass."
    if s_norm is not None and s_norm > 0.5:
        text += f" The structural detector also flags it (score {structural[0]:.2f})."
    return AuditResult(rules, blobs, logical, s_norm, score, anomalous, text, work)


__all__ = [
    "AuditResult",
    "RuleResult",
    "assign",
    "audit_image",
    "candidate_blobs",
    "normalized_structural",
    "unavailable_components",
]
