"""Checking one image against a spec of a product's parts (`segmenter: regions`, `frame: product`).

Each part is found by its pattern (agent.audit.product_parts.find_part) and its rules measured there;
every rule becomes a `RuleResult` whose sentence names the measured and the expected value ("the
yellow-middle is missing (0 found, 1 expected)", "fill level 62 % of the product, expected 78-81 %").
The marks for the overlay are boxes at work resolution: the part where it was found, or the place
where a missing part should be.
"""

from __future__ import annotations

import math
from dataclasses import replace

import numpy as np
from PIL import Image

from agent.audit.looks import colour_word, decode_pattern, look_distance, pattern_vector
from agent.audit.product_parts import PartFind, ProductView, box_pixels, fill_level, find_part, product_view
from agent.audit.rule_result import RuleResult
from agent.audit.spec import ComponentSpec, PairRule, Spec
from tools.components import Part


def _pct(v: float) -> str:
    return f"{100 * v:.0f} %"


def _box_part(view: ProductView, centre: tuple[float, float], size: tuple[int, int]) -> Part:
    """A box-shaped mark at work resolution."""
    h, w = view.px.shape[:2]
    mask = np.zeros((h, w), bool)
    x0, y0 = int(round(centre[0] - size[0] / 2)), int(round(centre[1] - size[1] / 2))
    mask[max(0, y0) : max(0, y0 + size[1]), max(0, x0) : max(0, x0 + size[0])] = True
    return Part(mask, float(mask.mean()), ((centre[0]) / w, (centre[1]) / h), (0.0, 0.0, 0.0))


def _kind(rgb: np.ndarray, comp: ComponentSpec) -> tuple[str | None, float]:
    """(nearest colour kind of the component, distance to it)."""
    assert comp.colour is not None and comp.colour.classes is not None
    name, d = min(((k, math.dist(rgb, c)) for k, c in comp.colour.classes.items()), key=lambda kd: kd[1])
    return name, d


def _part_rules(view: ProductView, comp: ComponentSpec, found: PartFind, mark: int, where: int) -> list[RuleResult]:
    """Position, size, orientation, colour and fill of a found part."""
    name = comp.name
    out: list[RuleResult] = []
    tpl = comp.find.template
    assert tpl is not None
    if comp.position is not None and comp.position.slots:
        slot = comp.position.slots[0]
        tol = comp.position.tolerance
        dx, dy = found.centre[0] - slot[0], found.centre[1] - slot[1]
        d = math.hypot(dx, dy)
        ok = d <= tol
        text = (
            f"{name}: in its place ({_pct(d)} of the product away, at most {_pct(tol)})"
            if ok
            else f"{name} is out of place: {dx:+.0%} of the product's width and {dy:+.0%} of its height from "
            f"where it should be (at most {_pct(tol)} on the references)"
        )
        out.append(
            RuleResult(f"{name}.position", [name], [round(found.centre[0], 4), round(found.centre[1], 4)],
                       [slot[0], slot[1]], ok, d / tol if ok else 1.0 + d / tol, text,
                       offending=[] if ok else [mark, where])
        )
    if comp.area is not None:
        box_area = (tpl.box[2] - tpl.box[0]) * (tpl.box[3] - tpl.box[1])
        ratio = box_area * found.scale**2 / comp.area.each
        dev = abs(ratio - 1.0) / comp.area.tolerance
        ok = dev <= 1.0
        text = (
            f"{name}: size as expected ({ratio:.2f} x)"
            if ok
            else f"{name} is {ratio:.2f} x its size on the references (within {1 - comp.area.tolerance:.2f}-{1 + comp.area.tolerance:.2f} x)"
        )
        out.append(RuleResult(f"{name}.area", [name], round(ratio, 3), f"1 +- {comp.area.tolerance}", ok,
                              dev if ok else 1.0 + dev, text, offending=[] if ok else [mark]))
    if comp.orientation is not None:
        o = comp.orientation
        diff = (found.angle - o.angle + 45.0) % 90.0 - 45.0
        dev = abs(diff) / o.tolerance
        ok = dev <= 1.0
        text = (
            f"{name}: upright as expected ({found.angle:+.1f} degrees)"
            if ok
            else f"{name} is turned by {found.angle:+.0f} degrees (expected {o.angle:+.0f}, within {o.tolerance:.0f})"
        )
        out.append(RuleResult(f"{name}.orientation", [name], round(found.angle, 2), o.angle, ok,
                              dev if ok else 1.0 + dev, text, offending=[] if ok else [mark]))
    colour = found.colour()
    if comp.colour is not None and comp.colour.rgb is not None:
        d = math.dist(colour, comp.colour.rgb)
        dev = d / comp.colour.tolerance
        ok = dev <= 1.0
        text = (
            f"{name}: colour as expected"
            if ok
            else f"{name} has the wrong colour: {colour_word(colour)} (rgb {colour[0]:.2f}, {colour[1]:.2f}, "
            f"{colour[2]:.2f}), expected {colour_word(comp.colour.rgb)} within {comp.colour.tolerance:.2f}"
        )
        out.append(RuleResult(f"{name}.colour", [name], [round(float(c), 4) for c in colour], list(comp.colour.rgb),
                              ok, dev if ok else 1.0 + dev, text, offending=[] if ok else [mark]))
    elif comp.colour is not None:
        kind, d = _kind(colour, comp)
        dev = d / comp.colour.tolerance
        ok = dev <= 1.0
        seen = ", ".join(comp.colour.classes or {})
        text = (
            f"{name}: colour of a kind seen ({kind})"
            if ok
            else f"{name}'s colour ({colour_word(colour)}, rgb {colour[0]:.2f}, {colour[1]:.2f}, {colour[2]:.2f}) "
            f"is none of the kinds seen on the references ({seen})"
        )
        out.append(RuleResult(f"{name}.colour", [name], [round(float(c), 4) for c in colour], f"one of {seen}",
                              ok, dev if ok else 1.0 + dev, text, offending=[] if ok else [mark]))
    if comp.fill is not None:
        out.append(_fill_rule(view, comp, found, mark))
    return out


def _at_place(view: ProductView, found: PartFind, centre: tuple[float, float], size: tuple[int, int]) -> PartFind:
    """The part taken where it should be (for measuring a level there when its look did not match)."""
    return replace(found, centre=view.frame.to_frame(*centre), centre_px=centre, size_px=size, scale=1.0)


def _fill_rule(view: ProductView, comp: ComponentSpec, found: PartFind, mark: int) -> RuleResult:
    """The fill level of a part (see product_parts.fill_level) against the drafted one."""
    f = comp.fill
    assert f is not None and comp.find.template is not None
    name = comp.name
    box = comp.find.template.box
    column = (box[0] + 0.3 * (box[2] - box[0]), box[2] - 0.3 * (box[2] - box[0]))
    level = fill_level(view, found, column)
    dev = abs(level - f.level) / f.tolerance
    ok = dev <= 1.0
    text = (
        f"{name}: fill level {_pct(level)} of the product, as expected"
        if ok
        else f"{name}: fill level {_pct(level)} of the product, expected {_pct(f.level - f.tolerance)}-{_pct(f.level + f.tolerance)}"
    )
    return RuleResult(f"{name}.fill", [name], round(level, 4), f.level, ok, dev if ok else 1.0 + dev, text,
                      offending=[] if ok else [mark])


def _pair_rule(p: PairRule, spec: Spec, found: dict[str, PartFind]) -> RuleResult | None:
    """The `kind` pair rule on the found parts; None when a side is missing or B's colour is no kind
    seen (those rules already say so)."""
    if p.a not in found or p.b not in found or not p.looks:
        return None
    b = spec.component(p.b)
    if b.colour is None or b.colour.classes is None:
        return None
    kind, d = _kind(found[p.b].colour(), b)
    if d > b.colour.tolerance:
        return None
    look = found[p.a].look()
    dist = {k: look_distance(look, pattern_vector(decode_pattern(v))) for k, v in p.looks.items()}
    if kind not in dist:
        return None
    expected = min(dist, key=dist.get)
    others = [v for k, v in dist.items() if k != kind]
    ratio = dist[kind] / max(min(others, default=math.inf), 1e-9)
    ok = expected == kind
    rule = f"pair:{p.a}~{p.b}.kind"
    text = (
        f"{p.a} and {p.b} go together ({kind})"
        if ok
        else f"{p.a} looks like the one seen with {expected} {p.b} (look distance {dist[expected]:.2f}; "
        f"{dist[kind]:.2f} to the one seen with {kind}), but {p.b} is {kind}: that combination never occurs on the "
        f"references (each of {', '.join(p.looks)} {p.b} has its own {p.a})"
    )
    return RuleResult(rule, [p.a, p.b], kind, expected, ok, ratio if ok else 1.0 + ratio, text)


def check_product(image: Image.Image, spec: Spec) -> tuple[list[RuleResult], list[Part], tuple[int, int]]:
    """(rules, marks, work size (w, h)) of one image against a product spec."""
    s = spec.region_settings
    view = product_view(image, spec.background.rgb, s.work_size)
    h, w = view.px.shape[:2]
    rules: list[RuleResult] = []
    marks: list[Part] = []
    found: dict[str, PartFind] = {}
    mark_of: dict[str, int] = {}
    for comp in spec.components:
        name = comp.name
        if comp.find.product:
            n = int(view.frame.found)
            if comp.count is not None:
                ok = n >= comp.count.min and (comp.count.max is None or n <= comp.count.max)
                text = f"{name}: found" if ok else f"the {name} is missing (0 found, 1 expected): the image shows only background"
                rules.append(RuleResult(f"{name}.count", [name], n, 1, ok, 0.0 if ok else 6.0, text))
            if comp.area is not None and view.frame.found:
                ratio = float(view.frame.silhouette.mean()) / comp.area.each
                dev = abs(ratio - 1.0) / comp.area.tolerance
                ok = dev <= 1.0
                text = (
                    f"{name}: size as expected ({ratio:.2f} x)"
                    if ok
                    else f"the {name} is {ratio:.2f} x its size on the references (within {1 - comp.area.tolerance:.2f}-{1 + comp.area.tolerance:.2f} x)"
                )
                rules.append(RuleResult(f"{name}.area", [name], round(ratio, 3), 1.0, ok, dev if ok else 1.0 + dev, text))
            continue
        tpl = comp.find.template
        assert tpl is not None
        centre, size = box_pixels(view.frame, tpl.box)
        marks.append(_box_part(view, centre, size))
        where = len(marks) - 1
        if not view.frame.found:
            rules.append(RuleResult(f"{name}.count", [name], 0, 1, False, 2.0,
                                    f"{name} not looked for: no product found", offending=[where]))
            continue
        part = find_part(view, decode_pattern(tpl.pattern), tpl.box, tpl.search, s.angles, s.scales)
        present = part.score >= tpl.min_match
        dev = (1.0 - part.score) / max(1e-6, 1.0 - tpl.min_match)
        if not present:
            # a liquid part whose level moved no longer looks like itself: its level says why
            level = _fill_rule(view, comp, _at_place(view, part, centre, size), where) if comp.fill is not None else None
            if level is not None and not level.passed:
                rules.append(level)
                continue
            text = (
                f"{name} is missing (0 found, 1 expected): nothing near its place looks like it "
                f"(best match {part.score:.2f}, at least {tpl.min_match:.2f} on the references); its place is outlined"
            )
            rules.append(RuleResult(f"{name}.count", [name], 0, 1, False, 1.0 + dev, text, offending=[where]))
            continue
        found[name] = part
        marks.append(_box_part(view, part.centre_px, part.size_px))
        mark = mark_of[name] = len(marks) - 1
        rules.append(RuleResult(f"{name}.count", [name], 1, 1, True, dev, f"{name}: found (match {part.score:.2f})"))
        rules.extend(_part_rules(view, comp, part, mark, where))
    for p in spec.pairs:
        r = _pair_rule(p, spec, found)
        if r is not None:
            r.offending = [] if r.passed else [mark_of[p.a], mark_of[p.b]]
            rules.append(r)
    return rules, marks, (w, h)


__all__ = ["check_product"]
