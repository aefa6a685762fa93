"""Drafting a spec of one product's parts from good photos (`segmenter: regions`, `frame: product`).

1. Each reference's product frame; the product itself is a component (count 1, its size in the image).
2. Candidate parts the references agree on (agent.audit.product_parts.discover), each with a pattern
   (the mean of its aligned crops). A candidate along the product's top or bottom edge is its outline
   (a cap, a neck's glass threads turned differently on each photo): left out, as discovery leaves out
   the pieces along its sides.
3. Each candidate found on each reference with the pattern of the *other* references (held out), and
   measured there: match score, place in the product frame, size, edge direction, colour, fill level.
4. One rule per measure, its tolerance from the references' spread (agent.audit.tolerances): kept when
   a width covers every reference, dropped with the spread and the reason otherwise. A part that does
   not match on every reference is left out altogether (and `dropped` says so): drafting goes on with
   the parts that do, it never refuses good references of one product.
5. Colour: one colour, or the kinds seen (a flavour) when the references' colours fall into well
   separated groups. Fill level: for a wide part, how high its colour reaches in the product.
6. Pair rule `kind`: a part of steady colour whose look (its print) tells which kind of colour another
   part has on every reference held out (the label's fruit and the juice): the combinations seen are
   the rule, as one look per kind. A's own one-colour rule is then dropped: its colour goes with B's
   kind too, and one colour over the kinds a draw of references happens to show is too narrow.
7. `held_out_scores`: each reference's logical score under the rules drafted without it, for the
   decision's calibration.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
from PIL import Image

from agent.audit.draft_error import DraftError
from agent.audit.looks import (
    colour_kinds,
    colour_word,
    encode_pattern,
    kind_names,
    look_distance,
    look_pattern,
)
from agent.audit.product_parts import (
    Candidate,
    PartFind,
    ProductView,
    aligned_crops,
    discover,
    distinctiveness,
    fill_level,
    find_part,
    product_view,
)
from agent.audit.spec import (
    Area,
    Background,
    Colour,
    ComponentSpec,
    Count,
    Fill,
    Find,
    Orientation,
    PairRule,
    Position,
    RegionSettings,
    Spec,
    Template,
)
from agent.audit.tolerances import draft_radius, draft_tolerance

MAX_PARTS = 10
MAX_PAIRS = 2  # pair rules per part of several colour kinds
SEARCH = 0.15  # template search half-width, share of the product
# floors (what a measurement can tell apart) and caps (wider: the rule tells nothing) per measure
MATCH_FLOOR, MATCH_CAP, MIN_MATCH = 0.2, 0.5, 0.25
POSITION_FLOOR, POSITION_CAP = 0.03, 0.12
SIZE_FLOOR, SIZE_CAP = 0.35, 0.8
ANGLE_FLOOR, ANGLE_CAP = 6.0, 15.0
MIN_EDGE_STRENGTH = 0.2  # an orientation rule needs a leading edge direction on every reference
MAX_UPRIGHT = 20.0  # an orientation rule for parts whose edges stand upright (within this many degrees)
MIN_DISTINCT = 0.1  # a part must match where it is this much better than anywhere else its search looks
OUTLINE_BAND = 0.02  # a part whose box reaches this close to the product's top or bottom edge is its outline
COLOUR_FLOOR, COLOUR_CAP = 0.08, 0.3
FILL_FLOOR, FILL_CAP = 0.02, 0.1
AREA_FLOOR, AREA_CAP = 0.1, 0.5  # the product's area in the image, relative
FILL_MIN_WIDTH = 0.75  # a part this wide (share of the product) may be a liquid with a level
KIND_SHARE = 0.5  # a kind's tolerance stays below this share of the gap to the nearest other kind
LOOK_SEPARATION = 1.2  # a look tells a kind when between-kind distances are this much the within-kind ones
SAME_LIQUID = 3.0  # a part whose colour follows another's kinds this clearly,
NEAR_COLOUR = 0.2  # and stays this close to it, is that liquid seen again (not a print that goes with it)


@dataclass
class Measured:
    """One candidate part measured on every reference (held out)."""

    candidate: Candidate
    pattern: np.ndarray
    finds: list[PartFind]
    name: str = ""
    rules: dict[str, list[float]] = field(default_factory=dict)  # rule -> held-out deviation per reference
    colours: list[np.ndarray] = field(default_factory=list)
    kinds: list[int] = field(default_factory=list)  # colour kind per reference (one kind: steady)
    kind_centres: list[np.ndarray] = field(default_factory=list)
    level: list[float] | None = None
    separation: float = 0.0  # how much farther apart its looks are across kinds of another part than within
    kind_note: str = ""  # why its colours were not taken as kinds


def _where(cy: float) -> str:
    return "top" if cy < 0.2 else "upper" if cy < 0.42 else "middle" if cy < 0.62 else "lower" if cy < 0.82 else "bottom"


def _name(m: Measured, used: dict[str, int]) -> str:
    cx = (m.candidate.box[0] + m.candidate.box[2]) / 2
    cy = (m.candidate.box[1] + m.candidate.box[3]) / 2
    word = "varying" if len(set(m.kinds)) > 1 else colour_word(np.median(m.colours, axis=0))
    side = "" if 0.3 <= cx <= 0.7 else ("-left" if cx < 0.3 else "-right")
    base = f"{word}-{_where(cy)}{side}"
    used[base] = used.get(base, 0) + 1
    return base if used[base] == 1 else f"{base}-{used[base]}"


def _box_words(box: Sequence[float]) -> str:
    return f"x {box[0]:.2f}-{box[2]:.2f}, y {box[1]:.2f}-{box[3]:.2f} of the product"


def logical_score(deviation: float) -> float:
    """The audit's logical score for the largest rule deviation (as agent.audit.check scores it)."""
    if deviation <= 1.0:
        return 0.5 * min(0.999, deviation)
    return 0.5 + 0.5 * min(1.0, deviation / 6.0)


def separated_kinds(colours: Sequence[np.ndarray]) -> tuple[list[int], str]:
    """(colour kind per reference, why) where the kinds are well apart: each kind's tolerance (2.5 x the
    spread pooled over the kinds, at least 1.5 x the floor and 1.25 x the widest member) stays below
    `KIND_SHARE` of the gap to the nearest other kind, and there are at most half as many kinds as
    references. Otherwise one kind: the part has one colour that varies."""
    cols = np.asarray(colours)
    kinds = colour_kinds(cols)
    n_kinds = len(set(kinds))
    if n_kinds == 1:
        return kinds, ""
    centres = np.array([cols[[k == j for k in kinds]].mean(0) for j in range(n_kinds)])
    within = [float(np.linalg.norm(cols[i] - centres[kinds[i]])) for i in range(len(cols))]
    pooled = float(np.sqrt(np.sum(np.square(within)) / max(1, len(cols) - n_kinds)))
    gap = min(float(np.linalg.norm(a - b)) for i, a in enumerate(centres) for b in centres[i + 1 :])
    tol = max(COLOUR_FLOOR * 1.5, 2.5 * pooled, 1.25 * max(within))
    if tol > KIND_SHARE * gap or n_kinds > len(cols) / 2:
        return [0] * len(cols), f"its colours form {n_kinds} groups that are not well apart (gap {gap:.3f}, spread {max(within):.3f})"
    return kinds, ""


def _colour_rule(m: Measured, kept: list[str], dropped: list[str]) -> Colour | None:
    cols = np.asarray(m.colours)
    kinds = m.kinds
    n_kinds = len(set(kinds))
    if n_kinds == 1:
        centre, tol = draft_radius(cols, COLOUR_FLOOR, COLOUR_CAP)
        line = tol.line(f"{m.name}.colour")
        (kept if tol.kept else dropped).append(line + (f"; one colour: {m.kind_note}" if m.kind_note else ""))
        if not tol.kept:
            return None
        m.rules["colour"] = list(tol.held_out)
        return Colour(rgb=tuple(round(c, 4) for c in centre), tolerance=round(tol.tolerance, 4))
    centres = np.array([cols[[k == j for k in kinds]].mean(0) for j in range(n_kinds)])
    within = [float(np.linalg.norm(cols[i] - centres[kinds[i]])) for i in range(len(cols))]
    pooled = float(np.sqrt(np.sum(np.square(within)) / max(1, len(cols) - n_kinds)))
    gap = min(float(np.linalg.norm(a - b)) for i, a in enumerate(centres) for b in centres[i + 1 :])
    tol = min(max(COLOUR_FLOOR * 1.5, 2.5 * pooled, 1.25 * max(within)), KIND_SHARE * gap)
    names = kind_names(centres)
    held = []
    for i in range(len(cols)):
        same = [j for j in range(len(cols)) if j != i and kinds[j] == kinds[i]]
        if not same:  # a kind seen once: held out it is a new kind, which the rule cannot judge
            held.append(0.0)
            continue
        held.append(float(np.linalg.norm(cols[i] - cols[same].mean(0))) / tol)
    m.rules["colour"] = held
    m.kind_centres = list(centres)
    seen = ", ".join(f"{nm} on {kinds.count(j)}" for j, nm in enumerate(names))
    kept.append(f"{m.name}.colour: kept: one of {n_kinds} kinds seen ({seen} reference(s)); within a kind at most {max(within):.3f} apart, kinds at least {gap:.3f} apart; tolerance {tol:.3f}")
    return Colour(classes={nm: tuple(round(float(v), 4) for v in c) for nm, c in zip(names, centres, strict=True)}, tolerance=round(tol, 4))


def _follows(colours: Sequence[np.ndarray], kinds: Sequence[int]) -> float:
    """How clearly colours follow the given kinds: mean distance across kinds / mean within a kind."""
    c = np.asarray(colours)
    n = len(c)
    same = [np.linalg.norm(c[i] - c[j]) for i in range(n) for j in range(i + 1, n) if kinds[i] == kinds[j]]
    other = [np.linalg.norm(c[i] - c[j]) for i in range(n) for j in range(i + 1, n) if kinds[i] != kinds[j]]
    if not same or not other:
        return 0.0
    return float(np.mean(other) / max(float(np.mean(same)), 1e-6))


def _pair(a: Measured, b: Measured, kept: list[str], dropped: list[str]) -> PairRule | None:
    """The `kind` pair rule: A's look tells B's colour kind on every reference held out."""
    looks = [f.look() for f in a.finds]
    kinds = b.kinds
    n = len(looks)
    d = np.array([[look_distance(looks[i], looks[j]) for j in range(n)] for i in range(n)])
    same = [d[i, j] for i in range(n) for j in range(i + 1, n) if kinds[i] == kinds[j]]
    other = [d[i, j] for i in range(n) for j in range(i + 1, n) if kinds[i] != kinds[j]]
    rule = f"pair:{a.name}~{b.name}.kind"
    if not other:
        return None
    a.separation = float(np.mean(other) / max(np.mean(same), 1e-9)) if same else math.inf
    if same and a.separation < LOOK_SEPARATION:
        dropped.append(f"{rule}: dropped: {a.name} looks alike with every kind of {b.name} (between kinds {np.mean(other):.3f}, within {np.mean(same):.3f})")
        return None
    held, wrong = [], []
    for i in range(n):
        rest = [j for j in range(n) if j != i]
        if kinds[i] not in {kinds[j] for j in rest}:
            held.append(0.0)  # B's kind is new without it: the combination cannot be judged
            continue
        ds = min(d[i, j] for j in rest if kinds[j] == kinds[i])
        do = min((d[i, j] for j in rest if kinds[j] != kinds[i]), default=math.inf)
        held.append(ds / max(do, 1e-9))
        if ds > do:
            wrong.append(i)
    if wrong:
        dropped.append(f"{rule}: dropped: held out, {len(wrong)} reference(s) look more like another kind's {a.name}")
        return None
    names = kind_names(b.kind_centres) if b.kind_centres else [str(k) for k in sorted(set(kinds))]
    protos = {}
    for k, nm in enumerate(names):
        members = [looks[i] for i in range(n) if kinds[i] == k]
        protos[nm] = encode_pattern(look_pattern(np.mean(members, axis=0)))
    a.rules[rule] = held
    kept.append(f"{rule}: kept: the look of {a.name} tells the kind of {b.name} on every reference held out (combinations seen: {', '.join(names)}); widest held-out ratio {max(held):.2f}")
    return PairRule(a=a.name, b=b.name, attribute="kind", tolerance=1.0, looks=protos)


def _measure(views: Sequence[ProductView], cand: Candidate, settings: RegionSettings) -> Measured:
    crops = aligned_crops(views, cand.box)
    total = np.sum(crops, axis=0)
    pattern = total / len(crops)
    finds = []
    for i, v in enumerate(views):
        held = (total - crops[i]) / (len(crops) - 1) if len(crops) > 1 else pattern
        finds.append(find_part(v, held, cand.box, SEARCH, settings.angles, settings.scales))
    return Measured(cand, pattern, finds)


def draft_product_spec(
    references: Sequence[Image.Image], names: Sequence[str], settings: RegionSettings | None = None
) -> Spec:
    """A spec of the product's parts (see the module docstring); DraftError when no product is seen."""
    settings = settings or RegionSettings()
    views = [product_view(im, None, settings.work_size) for im in references]
    lost = [nm for v, nm in zip(views, names, strict=True) if not v.frame.found]
    if len(lost) == len(views):
        raise DraftError("no product found on any reference: every one looks like background")
    notes = [f"no product found on {', '.join(lost)}: left out of the draft"] if lost else []
    views = [v for v in views if v.frame.found]
    bg = np.median([v.background for v in views], axis=0)
    kept: list[str] = []
    dropped: list[str] = []
    held_out: dict[str, list[float]] = {}
    areas = [float(v.frame.silhouette.mean()) for v in views]
    area_tol = draft_tolerance(np.array(areas) / np.median(areas), AREA_FLOOR, AREA_CAP)
    product = ComponentSpec(name="product", find=Find(product=True), count=Count(min=1, max=1))
    kept.append(f"product.count: kept: a product found on all {len(views)} references")
    if area_tol.kept:
        product.area = Area(each=round(float(np.median(areas)), 5), tolerance=round(area_tol.tolerance, 4))
        held_out["product.area"] = list(area_tol.held_out)
    (kept if area_tol.kept else dropped).append(area_tol.line("product.area"))

    measured: list[Measured] = []
    for cand in discover(views)[: MAX_PARTS]:
        if cand.box[1] < OUTLINE_BAND or cand.box[3] > 1.0 - OUTLINE_BAND:
            edge = "top" if cand.box[1] < OUTLINE_BAND else "bottom"
            dropped.append(
                f"the part at {_box_words(cand.box)}: left out of the spec: it lies along the product's {edge} edge, "
                "where its look and place follow the outline (a cap, a neck's threads turned differently on each photo) "
                "and the product's own size rule already measures it"
            )
            continue
        m = _measure(views, cand, settings)
        m.colours = [f.colour() for f in m.finds]
        m.kinds, m.kind_note = separated_kinds(m.colours)
        measured.append(m)
    used: dict[str, int] = {}
    for m in measured:
        m.name = _name(m, used)

    components = [product]
    kept_parts: list[tuple[Measured, ComponentSpec]] = []
    for m in measured:
        scores = [f.score for f in m.finds]
        match = draft_tolerance(scores, MATCH_FLOOR, MATCH_CAP, below_only=True)
        threshold = match.expected - match.tolerance
        if not match.kept or threshold < MIN_MATCH:
            why = f"not found alike on every reference (match scores {min(scores):.2f}-{max(scores):.2f})"
            dropped.append(f"{m.name}: left out of the spec: {why}")
            continue
        distinct = float(np.median([distinctiveness(v, m.pattern, f, SEARCH) for v, f in zip(views, m.finds, strict=True)]))
        if distinct < MIN_DISTINCT:
            dropped.append(
                f"{m.name}: left out of the spec: it looks much the same around its place (it matches where it "
                f"is only {distinct:.2f} better than anywhere else its search looks, at least {MIN_DISTINCT} needed)"
            )
            continue
        box = tuple(round(float(b), 4) for b in m.candidate.box)
        comp = ComponentSpec(
            name=m.name,
            find=Find(template=Template(box=box, pattern=encode_pattern(m.pattern), min_match=round(threshold, 4), search=SEARCH)),
            count=Count(min=1, max=1),
        )
        kept.append(match.line(f"{m.name}.count", digits=2) + f"; found on all {len(views)} references ({len(m.candidate.support)} agreed on its region)")
        m.rules["count"] = _presence_held_out(scores)
        centre, pos = draft_radius([f.centre for f in m.finds], POSITION_FLOOR, POSITION_CAP)
        (kept if pos.kept else dropped).append(pos.line(f"{m.name}.position"))
        if pos.kept:
            comp.position = Position(slots=[(round(centre[0], 4), round(centre[1], 4))], tolerance=round(pos.tolerance, 4))
            m.rules["position"] = list(pos.held_out)
        size = draft_tolerance([f.scale**2 for f in m.finds], SIZE_FLOOR, SIZE_CAP)
        (kept if size.kept else dropped).append(size.line(f"{m.name}.area"))
        if size.kept:
            box_area = (box[2] - box[0]) * (box[3] - box[1])
            comp.area = Area(each=round(box_area * size.expected, 5), tolerance=round(size.tolerance / max(size.expected, 1e-6), 4))
            m.rules["area"] = list(size.held_out)
        angle = draft_tolerance([f.angle for f in m.finds], ANGLE_FLOOR, ANGLE_CAP, circular=90.0)
        weakest = min(f.edge_strength for f in m.finds)
        upright = abs(angle.expected) <= MAX_UPRIGHT
        if weakest < MIN_EDGE_STRENGTH or not upright:
            why = (
                f"no edge direction leads clearly on every reference (strength down to {weakest:.2f}, at least "
                f"{MIN_EDGE_STRENGTH} needed)" if upright else
                f"its edges run at {angle.expected:+.0f} degrees (a slope, as of a shoulder: mirrored slopes cannot be told apart)"
            )
            dropped.append(f"{m.name}.orientation: dropped: {why}")
        else:
            (kept if angle.kept else dropped).append(angle.line(f"{m.name}.orientation", unit=" deg", digits=1))
        if angle.kept and weakest >= MIN_EDGE_STRENGTH and upright:
            comp.orientation = Orientation(angle=round(angle.expected, 2), tolerance=round(angle.tolerance, 2))
            m.rules["orientation"] = list(angle.held_out)
        comp.colour = _colour_rule(m, kept, dropped)
        components.append(comp)
        kept_parts.append((m, comp))

    _fill_rules(views, kept_parts, kept, dropped)
    pairs = []
    varying = [m for m, c in kept_parts if len(set(m.kinds)) > 1 and m.kind_centres]
    if varying:
        b = max(varying, key=lambda m: m.candidate.cells)
        found = []
        for m, _ in kept_parts:
            # a part whose own colour follows B's kinds is the liquid again (seen elsewhere), not a print
            near = float(np.median([np.linalg.norm(x - y) for x, y in zip(m.colours, b.colours, strict=True)]))
            liquid = _follows(m.colours, b.kinds) >= SAME_LIQUID and near < NEAR_COLOUR
            if m is not b and len(set(m.kinds)) == 1 and not liquid:
                p = _pair(m, b, kept, dropped)
                if p is not None:
                    found.append((m.separation, m, p))
        if found:  # at most MAX_PAIRS pair rules: the parts whose looks tell the kinds apart best
            found.sort(key=lambda t: -t[0])
            pairs.extend(p for _, _, p in found[:MAX_PAIRS])
            for _, m, p in found[MAX_PAIRS:]:
                kept.remove(next(k for k in kept if k.startswith(f"pair:{p.a}~{p.b}.kind")))
                m.rules.pop(f"pair:{p.a}~{p.b}.kind", None)
                dropped.append(
                    f"pair:{p.a}~{p.b}.kind: dropped: {found[0][1].name}'s look tells the kind of {b.name} apart "
                    f"better (separation {found[0][0]:.2f} against {m.separation:.2f}); at most {MAX_PAIRS} pair rules per part"
                )
    _colour_follows_pairs(pairs, kept_parts, kept, dropped)
    for m, _ in kept_parts:
        for rule, dev in m.rules.items():
            held_out[f"{m.name}.{rule}"] = dev
    scores = [logical_score(max((dev[i] for dev in held_out.values() if i < len(dev)), default=0.0)) for i in range(len(views))]
    notes.append(
        f"drafted on the product's parts ({len(kept_parts)} of {len(measured)} candidate part(s) found on every reference); "
        "positions and sizes are relative to the product's bounding box"
    )
    return Spec(
        background=Background(rgb=tuple(round(float(c), 4) for c in bg), tolerance=0.1),
        min_area=0.0,
        components=components,
        pairs=pairs,
        unexpected_objects=False,
        segmenter="regions",
        frame="product",
        regions=settings,
        white_balance=False,
        dropped=dropped,
        kept=kept,
        notes=notes,
        held_out_scores=[round(s, 4) for s in scores],
    )


def _colour_follows_pairs(pairs: Sequence[PairRule], parts: list[tuple[Measured, ComponentSpec]], kept: list[str], dropped: list[str]) -> None:
    """A part whose look tells another part's kind (a label's print and the juice) changes its colour
    with that kind too: one colour drafted over the kinds the references happen to show is too narrow
    for the kinds' other members. The pair rule checks its look against the kind instead, so its own
    one-colour rule is dropped (and `dropped` says why)."""
    for p in pairs:
        m, comp = next((m, c) for m, c in parts if m.name == p.a)
        if comp.colour is None or comp.colour.rgb is None:
            continue
        comp.colour = None
        m.rules.pop("colour", None)
        line = next((k for k in kept if k.startswith(f"{m.name}.colour:")), None)
        if line is not None:
            kept.remove(line)
        dropped.append(
            f"{m.name}.colour: dropped: its look goes with the kind of {p.b} (pair rule), so its colour changes with "
            f"that kind; the pair rule checks it against the kind instead of one colour for all kinds"
        )


def _presence_held_out(scores: Sequence[float]) -> list[float]:
    """Each reference's presence deviation, (1 - score) / (1 - threshold), the threshold drafted from
    the other references' scores (as the checker scores presence)."""
    out = []
    for i, s in enumerate(scores):
        rest = [v for j, v in enumerate(scores) if j != i] or [s]
        t = draft_tolerance(rest, MATCH_FLOOR, MATCH_CAP, below_only=True)
        out.append((1.0 - s) / max(1e-6, 1.0 - (t.expected - t.tolerance)))
    return out


def _fill_rules(views: Sequence[ProductView], parts: list[tuple[Measured, ComponentSpec]], kept: list[str], dropped: list[str]) -> None:
    """One fill level per product: of the wide parts (a liquid fills the container's width) whose
    level holds on every reference, the one that reaches highest (below a label, a liquid's colour
    stops at the label's edge, not at its surface)."""
    best: tuple[float, Measured, ComponentSpec, object] | None = None
    for m, comp in parts:
        box = m.candidate.box
        if box[2] - box[0] < FILL_MIN_WIDTH:
            continue
        column = (box[0] + 0.3 * (box[2] - box[0]), box[2] - 0.3 * (box[2] - box[0]))
        levels = [fill_level(v, f, column) for v, f in zip(views, m.finds, strict=True)]
        fill = draft_tolerance(levels, FILL_FLOOR, FILL_CAP)
        if not fill.kept:
            dropped.append(fill.line(f"{m.name}.fill"))
        elif best is None or fill.expected > best[0]:
            best = (fill.expected, m, comp, fill)
    if best is None:
        return
    _, m, comp, fill = best
    kept.append(fill.line(f"{m.name}.fill") + "; the highest level of the product's wide parts")
    comp.fill = Fill(level=round(fill.expected, 4), tolerance=round(fill.tolerance, 4))
    m.rules["fill"] = list(fill.held_out)


__all__ = ["draft_product_spec", "logical_score"]
