"""The match-of-thought loop: one inspection in four steps, each recorded in `record.trace`.

1. look        the detector on the whole image: anomaly map, score, mask, measured regions; the
               brain's first opinion.
2. look twice  crop and zoom the most suspicious regions (or, for a part that looks good, the map's
               peak) and score each crop again with a fresh detector of the same kind fitted on the
               same crop of every reference, so the second look compares like with like at a higher
               resolution; optionally refine the mask with SAM (`tools.sam.SamTool.refine`).
3. match       compare with the references: the patch distances are in the map already (summarised
               inside and outside the mask); the image is split into colour components (a k-means
               palette of the references, connected components per colour), each reference's
               components are matched to the query's with the Hungarian method (cost: area ratio,
               centroid distance, colour), and rules on counts, area fractions and left/right balance
               are derived from the references. A brain with `propose_rules` (the model brains) is
               asked for checkable rules as JSON; the reply is validated with pydantic, repaired once
               by asking again, and rejected (the derived rules stay) when it still does not parse.
4. conclude    verdict, score, regions, explanation (and the answer to a question) from the brain.

Decisions:
- The image score stays the detector's unless `zoom_weight` > 0 (then it is blended with the highest
  zoom score) or `match_can_flag` is set (then a rule violation marks the part defective): the
  detector's score is the calibrated one; the other evidence is recorded, and shown by the brains.
- Any brain failure (unreachable server, malformed output, a model error) is caught, recorded in the
  trace with the error, and the RuleBrain's text from the tool evidence is used instead: the loop
  always returns a record.
"""

from __future__ import annotations

import json
import math
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
from PIL import Image
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator
from scipy import ndimage
from scipy.optimize import linear_sum_assignment

from agent.brains.abilities import ProposesRules, ReportsModelCalls, SeesImages
from agent.brains.base import Brain
from agent.inspector import record_from_output
from tools.detectors import Detector, DetectorOutput
from tools.image_io import load_image
from tools.record import InspectionRecord, Region
from tools.regions import EIGHT_CONNECTED, measure_regions

# ---------------------------------------------------------------------------------------------- settings


@dataclass
class LoopSettings:
    """Knobs of the loop (defaults are what `ask` and `chat` use)."""

    top_k: int = 2  # regions to look twice at
    zoom_margin: float = 0.5  # context added on each side of a region's box, as a fraction of its long side
    min_crop: int = 32  # smallest crop side in image pixels
    zoom_weight: float = 0.0  # blend of the highest zoom score into pred_score (0 = record only)
    zoom_grid: int = 1  # >1: also fit the zoom detector on an n x n grid of reference crops (unaligned parts)
    palette_size: int = 3  # colour classes of the component segmentation
    component_size: int = 96  # long side of the image when segmenting components
    min_component: float = 0.002  # smallest component, as a fraction of the image
    max_component: float = 0.4  # larger components are background
    max_components: int = 30  # per image, largest first
    max_match_cost: float = 1.5  # a matched pair above this cost counts as unmatched
    area_tolerance: float = 0.5  # derived area rules allow min/(1+tol) .. max*(1+tol)
    count_slack: int = 1  # derived count and balance rules allow this much beyond the references' range
    ask_rules: bool = True  # ask a brain with `propose_rules` for rules
    rule_retries: int = 1  # repair attempts for malformed rule JSON
    match_can_flag: bool = False  # a rule violation makes the part defective
    first_opinion: bool = True  # ask the brain for an explanation after the first look


# ---------------------------------------------------------------------------------------------- trace


def _step(trace: list[dict[str, Any]], step: str, t0: float, **fields: Any) -> dict[str, Any]:
    entry = {"step": step, **fields, "seconds": round(time.perf_counter() - t0, 4)}
    trace.append(entry)
    return entry


def _short(text: str, limit: int = 300) -> str:
    line = " ".join(str(text).split())
    return line if len(line) <= limit else line[: limit - 3] + "..."


# ---------------------------------------------------------------------------------------------- look twice


def zoom_box(
    bbox: Sequence[int], size: tuple[int, int], margin: float = 0.5, min_side: int = 32
) -> tuple[int, int, int, int]:
    """A square crop box around `bbox` (x0, y0, x1, y1, exclusive) with context, shifted to lie inside
    the image; a side longer than the image is cut to the image (so the box can be non-square)."""
    w, h = size
    x0, y0, x1, y1 = (int(v) for v in bbox)
    side = int(max(min_side, max(x1 - x0, y1 - y0) * (1.0 + 2.0 * margin)))
    sw, sh = min(side, w), min(side, h)
    cx, cy = (x0 + x1) / 2.0, (y0 + y1) / 2.0
    bx0 = min(max(0, int(round(cx - sw / 2.0))), w - sw)
    by0 = min(max(0, int(round(cy - sh / 2.0))), h - sh)
    return bx0, by0, bx0 + sw, by0 + sh


def peak_box(anomaly_map: np.ndarray, min_side: int) -> tuple[int, int, int, int]:
    """A box around the anomaly map's highest value (used when no region passed the threshold)."""
    amap = np.nan_to_num(np.asarray(anomaly_map, dtype=np.float64), nan=-np.inf)
    y, x = np.unravel_index(int(np.argmax(amap)), amap.shape)
    half = max(1, min_side // 2)
    return int(x) - half, int(y) - half, int(x) + half, int(y) + half


# ---------------------------------------------------------------------------------------------- components


@dataclass
class Component:
    """One connected area of one colour class, in normalized image coordinates."""

    colour_class: int
    area_fraction: float
    centroid: tuple[float, float]  # x, y in 0..1
    colour: tuple[float, float, float]  # mean RGB in 0..1

    def to_dict(self) -> dict[str, Any]:
        return {
            "colour_class": self.colour_class,
            "area_fraction": round(self.area_fraction, 5),
            "centroid": [round(v, 4) for v in self.centroid],
            "colour": [round(v, 4) for v in self.colour],
        }


def _pixels(image: Image.Image, size: int, blur: float = 1.0, nearest: bool = False) -> np.ndarray:
    """RGB 0..1 at `size` (long side), slightly blurred so texture grain does not split components."""
    img = image.convert("RGB")
    scale = size / max(img.size)
    if scale < 1:
        resample = Image.NEAREST if nearest else Image.BILINEAR  # a colour sample must not invent colours
        img = img.resize((max(1, round(img.width * scale)), max(1, round(img.height * scale))), resample)
    px = np.asarray(img, dtype=np.float64) / 255.0
    return ndimage.gaussian_filter(px, (blur, blur, 0)) if blur > 0 else px


def colour_palette(
    references: Sequence[Image.Image],
    k: int = 3,
    size: int = 64,
    iterations: int = 12,
    min_distance: float = 0.15,
    min_share: float = 0.01,
    blur: float = 1.0,
) -> np.ndarray:
    """Up to k RGB cluster centres (n, 3) of the references' pixels, dark to bright.

    The pixels are sampled with nearest-neighbour resizing and a light blur (`blur`, in pixels) so grain
    does not become a colour. k-means with a deterministic farthest-point start (the median pixel, then
    the pixel farthest from the centres so far); clusters holding less than `min_share` of the pixels
    are dropped, and centres closer than `min_distance` (RGB 0..1) merged: a uniform texture is one
    material, not k shades.
    """
    pixels = np.concatenate(
        [_pixels(im, size, blur=blur, nearest=True).reshape(-1, 3) for im in references], axis=0
    )
    luma_w = np.array([0.299, 0.587, 0.114])
    luma = pixels @ luma_w
    centres = [pixels[np.argsort(luma)[len(luma) // 2]]]
    for _ in range(1, k):
        d = np.min([((pixels - c) ** 2).sum(-1) for c in centres], axis=0)
        centres.append(pixels[int(np.argmax(d))])
    cents = np.stack(centres)
    assign = np.zeros(len(pixels), int)
    for _ in range(iterations):
        assign = ((pixels[:, None, :] - cents[None, :, :]) ** 2).sum(-1).argmin(1)
        for c in range(len(cents)):
            members = pixels[assign == c]
            if len(members):
                cents[c] = members.mean(0)
    share = np.bincount(assign, minlength=len(cents)) / len(pixels)
    cents = cents[share >= min_share] if (share >= min_share).any() else cents
    cents = cents[np.argsort(cents @ luma_w)]
    kept = [cents[0]]
    for c in cents[1:]:
        if min(float(np.linalg.norm(c - q)) for q in kept) >= min_distance:
            kept.append(c)
    return np.stack(kept)


def extract_components(
    image: Image.Image,
    palette: np.ndarray,
    size: int = 96,
    min_area: float = 0.002,
    max_area: float = 0.4,
    max_components: int = 30,
) -> list[Component]:
    """Connected components of each palette colour (8-connected), larger than `min_area`, smaller than
    `max_area` (larger ones are background), largest first."""
    px = _pixels(image, size)
    h, w = px.shape[:2]
    d = ((px[:, :, None, :] - palette[None, None, :, :]) ** 2).sum(-1)
    classes = d.argmin(-1)
    total = float(h * w)
    comps: list[Component] = []
    for c in range(len(palette)):
        labels, n = ndimage.label(classes == c, structure=EIGHT_CONNECTED)
        if n == 0:
            continue
        idx = np.arange(1, n + 1)
        areas = np.bincount(labels.ravel(), minlength=n + 1)[1:].astype(np.float64)
        keep = (areas / total >= min_area) & (areas / total <= max_area)
        if not keep.any():
            continue
        cy, cx = (
            np.asarray(v)
            for v in zip(*ndimage.center_of_mass(np.ones_like(labels), labels, idx[keep]), strict=True)
        )
        means = np.stack([ndimage.mean(px[..., ch], labels, idx[keep]) for ch in range(3)], axis=-1)
        for a, x, y, col in zip(areas[keep], cx, cy, means, strict=True):
            comps.append(
                Component(
                    c,
                    float(a / total),
                    (float((x + 0.5) / w), float((y + 0.5) / h)),
                    (float(col[0]), float(col[1]), float(col[2])),
                )
            )
    comps.sort(key=lambda comp: -comp.area_fraction)
    return comps[:max_components]


@dataclass
class ComponentMatch:
    """Hungarian matching of query components to one reference's components."""

    pairs: list[tuple[int, int, float]]  # (query index, reference index, cost)
    extra: list[int]  # query components with no counterpart
    missing: list[int]  # reference components with no counterpart
    cost: float  # sum of matched costs + 1 per unmatched component

    def to_dict(self) -> dict[str, Any]:
        return {
            "matched": len(self.pairs),
            "extra": self.extra,
            "missing": self.missing,
            "cost": round(self.cost, 4),
        }


_NO_MATCH = 1e6


def component_cost(a: Component, b: Component) -> float:
    """|log area ratio| + 2 x centroid distance + colour distance; classes must agree."""
    if a.colour_class != b.colour_class:
        return _NO_MATCH
    ratio = abs(math.log(max(a.area_fraction, 1e-9) / max(b.area_fraction, 1e-9)))
    dist = math.dist(a.centroid, b.centroid)
    colour = math.dist(a.colour, b.colour)
    return ratio + 2.0 * dist + colour


def match_components(
    query: Sequence[Component], reference: Sequence[Component], max_cost: float = 1.5
) -> ComponentMatch:
    """Optimal one-to-one assignment (scipy's `linear_sum_assignment`); pairs above `max_cost` are unmatched."""
    if not query or not reference:
        return ComponentMatch(
            [], list(range(len(query))), list(range(len(reference))), float(len(query) + len(reference))
        )
    cost = np.array([[component_cost(q, r) for r in reference] for q in query])
    rows, cols = linear_sum_assignment(cost)
    pairs = [
        (int(i), int(j), float(cost[i, j])) for i, j in zip(rows, cols, strict=True) if cost[i, j] <= max_cost
    ]
    matched_q = {p[0] for p in pairs}
    matched_r = {p[1] for p in pairs}
    extra = [i for i in range(len(query)) if i not in matched_q]
    missing = [j for j in range(len(reference)) if j not in matched_r]
    total = sum(p[2] for p in pairs) + len(extra) + len(missing)
    return ComponentMatch(pairs, extra, missing, float(total))


# ---------------------------------------------------------------------------------------------- rules


class Rule(BaseModel):
    """A checkable rule on the components of a good part."""

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


def rule_value(rule: Rule, comps: Sequence[Component]) -> float:
    """What the rule measures on a list of components."""
    chosen = [c for c in comps if rule.colour_class is None or c.colour_class == rule.colour_class]
    if rule.kind == "count":
        return float(len(chosen))
    if rule.kind == "area":
        return float(sum(c.area_fraction for c in chosen))
    left = sum(1 for c in chosen if c.centroid[0] < 0.5)
    return float(left - (len(chosen) - left))


def check_rules(rules: Sequence[Rule], comps: Sequence[Component]) -> list[dict[str, Any]]:
    """The rules the components break, with the measured value."""
    broken = []
    for rule in rules:
        value = rule_value(rule, comps)
        if (rule.min is not None and value < rule.min - 1e-9) or (
            rule.max is not None and value > rule.max + 1e-9
        ):
            broken.append({**rule.model_dump(), "value": round(value, 5)})
    return broken


def derive_rules(
    ref_components: Sequence[Sequence[Component]],
    n_classes: int,
    area_tolerance: float = 0.5,
    count_slack: int = 1,
) -> list[Rule]:
    """Count, area and balance ranges per colour class, as seen over the references."""
    rules: list[Rule] = []
    if not ref_components:
        return rules
    for c in range(n_classes):
        for kind in ("count", "area", "balance"):
            probe = Rule(kind=kind, colour_class=c, min=0.0, max=0.0)
            values = [rule_value(probe, comps) for comps in ref_components]
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


def components_summary(ref_components: Sequence[Sequence[Component]], palette: np.ndarray) -> str:
    """The text the rule prompt shows: per colour class, its RGB, count per image and mean area."""
    lines = []
    for c, rgb in enumerate(palette):
        counts = [sum(1 for comp in comps if comp.colour_class == c) for comps in ref_components]
        areas = [
            sum(comp.area_fraction for comp in comps if comp.colour_class == c) for comps in ref_components
        ]
        colour = ", ".join(f"{int(round(v * 255))}" for v in rgb)
        lines.append(
            f"- colour class {c} (RGB {colour}): count per image {min(counts)}..{max(counts)}, "
            f"mean area fraction {float(np.mean(areas)):.4f}"
        )
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------- the loop


@dataclass
class ReferenceModel:
    """What the match step knows about the references (computed once per loop)."""

    palette: np.ndarray
    components: list[list[Component]]
    rules: list[Rule]
    brain_rules: list[Rule] | None = None
    brain_rules_status: dict[str, Any] = field(default_factory=dict)


class MatchOfThought:
    """Runs the loop for one image at a time with a fitted detector, its references and a brain."""

    def __init__(
        self,
        detector: Detector,
        references: Sequence[Image.Image] = (),
        brain: Brain | None = None,
        sam: Any = None,
        settings: LoopSettings | None = None,
        zoom_factory: Callable[[], Detector] | None = None,
    ) -> None:
        if brain is None:
            from agent.brains.rule import RuleBrain

            brain = RuleBrain()
        self.detector = detector
        self.references = list(references)
        self.brain = brain
        self.sam = sam
        self.settings = settings or LoopSettings()
        self.zoom_factory = zoom_factory
        self._fallback: Brain | None = None
        self._refs: ReferenceModel | None = None
        self._zoom: Detector | None = None

    @classmethod
    def from_inspector(
        cls,
        inspector: Any,
        references: Sequence[Image.Image] = (),
        detector_options: dict[str, Any] | None = None,
        brain: Brain | None = None,
        sam: Any = None,
        settings: LoopSettings | None = None,
        requested_detector: str | None = None,
    ) -> MatchOfThought:
        """A loop over an `agent.inspector.Inspector`'s fitted detector (and its brain unless given).

        The zoom detector is built like the inspector's: with `detector_options`, except after the
        inspector fell back to another detector than `requested_detector` (then with the fallback's
        defaults, as the inspector did; "selfsim" keeps resolution and device).
        """
        from tools.detectors import DETECTORS

        name = inspector.detector.name
        options = dict(detector_options or {})
        if name == "selfsim":
            options = {k: v for k, v in options.items() if k in ("resolution", "device")}
        elif requested_detector is not None and name != requested_detector:
            options = {}

        def factory() -> Detector:
            return DETECTORS.build(name, **options)

        return cls(inspector.detector, references, brain or inspector.brain, sam, settings, factory)

    # -------------------------------------------------------------------------------------------- brain

    @property
    def fallback(self) -> Brain:
        if self._fallback is None:
            from agent.brains.rule import RuleBrain

            self._fallback = RuleBrain()
        return self._fallback

    def _brain_text(
        self,
        trace: list[dict[str, Any]],
        step: str,
        call: Callable[[Brain], str],
        inputs: dict[str, Any] | None = None,
    ) -> str:
        """Text from the brain; on any failure the RuleBrain's, with the error in the trace."""
        t0 = time.perf_counter()
        extra = {"inputs": inputs} if inputs else {}
        try:
            text = call(self.brain)
            if not isinstance(text, str) or not text.strip():
                raise ValueError("the brain returned no text")
            _step(trace, step, t0, brain=self.brain.name, **extra, summary=_short(text), **self._model_call())
            return text.strip()
        except Exception as err:  # noqa: BLE001 - a model's failure must never end the inspection
            text = call(self.fallback)
            _step(
                trace,
                step,
                t0,
                brain=self.brain.name,
                **extra,
                error=_short(f"{type(err).__name__}: {err}", 200),
                fallback=self.fallback.name,
                summary=_short(text),
            )
            return text

    def _model_call(self) -> dict[str, Any]:
        last = self.brain.last_call if isinstance(self.brain, ReportsModelCalls) else None
        return {"model_call": dict(last)} if last else {}

    def answer(
        self, question: str, record: InspectionRecord, history: list[tuple[str, str]] | None = None
    ) -> str:
        """The brain's answer to a question about `record` (RuleBrain's on failure); traced in the record."""
        return self._brain_text(
            record.trace,
            "answer",
            lambda b: b.answer(question, record, history),
            {"question": question, "history_turns": len(history or [])},
        )

    # -------------------------------------------------------------------------------------------- steps

    def run(
        self,
        image_path: str,
        image: Image.Image | None = None,
        question: str | None = None,
        history: list[tuple[str, str]] | None = None,
    ) -> InspectionRecord:
        """Inspect one image (raises `ImageLoadError` only for an unreadable file)."""
        trace: list[dict[str, Any]] = []
        t0 = time.perf_counter()
        img = image if image is not None else load_image(image_path)
        _step(trace, "load", t0, inputs={"image_path": str(image_path)}, size=list(img.size))
        if isinstance(self.brain, SeesImages):
            self.brain.use_image(str(image_path), img)

        record = self._look(str(image_path), img, trace)
        self._look_twice(record, img, trace)
        self._match(record, img, trace)
        self._conclude(record, trace, question, history)
        return record

    def _look(self, image_path: str, img: Image.Image, trace: list[dict[str, Any]]) -> InspectionRecord:
        t0 = time.perf_counter()
        d = self.detector
        out: DetectorOutput = d.predict([img])[0]
        record = record_from_output(image_path, img, out, d, self.brain.name, trace)
        label, regions = record.pred_label, record.regions
        _step(
            trace,
            "look",
            t0,
            tool=d.name,
            inputs={"image_size": list(img.size), "threshold": float(d.threshold)},
            summary=f"score {out.pred_score:.3f} (raw {out.raw_score:.4g}), threshold {d.threshold:.2f}, "
            f"{'defective' if label else 'good'}, {len(regions)} region(s)",
            pred_score=round(float(out.pred_score), 6),
            regions=len(regions),
        )
        if self.settings.first_opinion:
            self._brain_text(trace, "first_opinion", lambda b: b.explain(record))
        return record

    def _zoom_detector(self, box: tuple[int, int, int, int], size: tuple[int, int]) -> tuple[Detector, str]:
        """A detector fitted on the same crop of every reference; the main detector when that cannot be."""
        if not self.references or self.zoom_factory is None:
            return self.detector, "main detector on the crop alone (no references)"
        crops = []
        bw, bh = box[2] - box[0], box[3] - box[1]
        w, h = size
        n = max(1, int(self.settings.zoom_grid))
        for ref in self.references:
            scaled = ref.convert("RGB").resize(size, Image.BILINEAR)
            crops.append(scaled.crop(box))
            if n > 1:  # unaligned products: the same-sized crop at an n x n grid of places too
                for gy in np.linspace(0, h - bh, n):
                    for gx in np.linspace(0, w - bw, n):
                        crops.append(scaled.crop((int(gx), int(gy), int(gx) + bw, int(gy) + bh)))
        if self._zoom is None:
            self._zoom = self.zoom_factory()  # built once (weights load once), refitted per crop
        zoom = self._zoom
        zoom.fit(crops)
        where = "the same crop" if n == 1 else f"the same crop and a {n}x{n} grid of crops"
        return zoom, f"fresh {zoom.name} fitted on {where} of {len(self.references)} reference(s)"

    def look_again(
        self, img: Image.Image, bbox: Sequence[int], target: str = "region", margin: float | None = None
    ) -> dict[str, Any]:
        """Crop and zoom around `bbox` and score the crop again; a dict for the trace (with "error" on failure)."""
        s = self.settings
        t1 = time.perf_counter()
        box = zoom_box(bbox, img.size, s.zoom_margin if margin is None else margin, s.min_crop)
        try:
            detector, how = self._zoom_detector(box, img.size)
            out = detector.predict([img.convert("RGB").crop(box)])[0]
        except Exception as err:  # noqa: BLE001 - a failed second look leaves the first one standing
            return {"target": target, "box": list(box), "error": _short(str(err), 200)}
        return {
            "target": target,
            "box": list(box),
            "zoom": how,
            "zoom_score": round(float(out.pred_score), 6),
            "threshold": float(detector.threshold),
            "confirmed": bool(out.pred_score > detector.threshold),
            "seconds": round(time.perf_counter() - t1, 4),
            "anomaly_map": out.anomaly_map,
        }

    def _look_twice(self, record: InspectionRecord, img: Image.Image, trace: list[dict[str, Any]]) -> None:
        s = self.settings
        t0 = time.perf_counter()
        candidates: list[tuple[str, tuple[int, int, int, int]]] = [
            (f"region {i}", tuple(r.bbox)) for i, r in enumerate(record.regions[: s.top_k])
        ]
        if not candidates and s.top_k > 0 and record.anomaly_map is not None:
            candidates = [("peak", peak_box(record.anomaly_map, s.min_crop))]
        looks = [self.look_again(img, bbox, label) for label, bbox in candidates]
        for lk in looks:
            lk.pop("anomaly_map", None)
        scores = [lk["zoom_score"] for lk in looks if "zoom_score" in lk]
        before = record.pred_score
        if scores and s.zoom_weight > 0:
            record.pred_score = float((1.0 - s.zoom_weight) * record.pred_score + s.zoom_weight * max(scores))
            record.pred_label = bool(record.pred_score > record.threshold)
            if not record.pred_label and record.pred_mask is not None:
                record.pred_mask = np.zeros_like(record.pred_mask)
                record.regions = []
        confirmed = sum(1 for lk in looks if lk.get("confirmed"))
        summary = (
            f"{len(looks)} crop(s) re-scored, {confirmed} confirmed"
            + (f"; score {before:.3f} -> {record.pred_score:.3f}" if record.pred_score != before else "")
            if looks
            else "nothing to look at twice"
        )
        _step(
            trace,
            "look_twice",
            t0,
            inputs={"top_k": s.top_k, "margin": s.zoom_margin},
            looks=looks,
            summary=summary,
        )

        if self.sam is not None and record.pred_mask is not None and record.pred_mask.any():
            t1 = time.perf_counter()
            try:
                refined, refinements = self.sam.refine(img, record.pred_mask, record.anomaly_map)
                record.pred_mask = np.asarray(refined, dtype=bool)
                record.regions = measure_regions(record.anomaly_map, record.pred_mask, np.asarray(img))
                kept = sum(1 for r in refinements if r.kept == "sam")
                _step(
                    trace,
                    "sam_refine",
                    t1,
                    tool="sam",
                    refinements=[r.to_dict() for r in refinements],
                    summary=f"SAM mask kept for {kept} of {len(refinements)} region(s); {len(record.regions)} region(s)",
                )
            except Exception as err:  # noqa: BLE001
                _step(
                    trace,
                    "sam_refine",
                    t1,
                    tool="sam",
                    error=_short(str(err), 200),
                    summary="SAM failed; map mask kept",
                )

    def reference_model(self, trace: list[dict[str, Any]] | None = None) -> ReferenceModel | None:
        """Palette, components and rules of the references (once); None without references."""
        if not self.references:
            return None
        if self._refs is None:
            s = self.settings
            palette = colour_palette(self.references, s.palette_size)
            comps = [
                extract_components(
                    r, palette, s.component_size, s.min_component, s.max_component, s.max_components
                )
                for r in self.references
            ]
            self._refs = ReferenceModel(
                palette, comps, derive_rules(comps, len(palette), s.area_tolerance, s.count_slack)
            )
        refs = self._refs
        if refs.brain_rules is None and self.settings.ask_rules and isinstance(self.brain, ProposesRules):
            refs.brain_rules, refs.brain_rules_status = self._ask_rules(refs)
            if trace is not None:
                trace.append({"step": "propose_rules", "brain": self.brain.name, **refs.brain_rules_status})
        return refs

    def _ask_rules(self, refs: ReferenceModel) -> tuple[list[Rule], dict[str, Any]]:
        """Rules from the brain, validated; repaired `rule_retries` times; [] when rejected."""
        assert isinstance(self.brain, ProposesRules)
        t0 = time.perf_counter()
        summary = components_summary(refs.components, refs.palette)
        attempts: list[dict[str, Any]] = []
        text = ""
        for attempt in range(1 + max(0, self.settings.rule_retries)):
            try:
                if attempt == 0:
                    text = self.brain.propose_rules(summary)
                else:
                    text = self.brain.repair_rules(summary, text, attempts[-1]["error"])
            except Exception as err:  # noqa: BLE001
                attempts.append({"error": _short(f"{type(err).__name__}: {err}", 200)})
                break
            try:
                rules, dropped = parse_rules(text, len(refs.palette))
            except RuleParseError as err:
                attempts.append({"error": str(err), "reply": _short(text, 200)})
                continue
            attempts.append({"accepted": len(rules), "dropped": dropped})
            status = {
                "status": "accepted" if attempt == 0 else "repaired",
                "rules": [r.model_dump() for r in rules],
                "attempts": attempts,
                "summary": f"{len(rules)} rule(s) accepted"
                + (f", {len(dropped)} dropped" if dropped else ""),
                "seconds": round(time.perf_counter() - t0, 4),
            }
            return rules, status
        return [], {
            "status": "rejected",
            "attempts": attempts,
            "summary": "the brain's rules were rejected; the rules derived from the references stay",
            "seconds": round(time.perf_counter() - t0, 4),
        }

    def compare(self, img: Image.Image, refs: ReferenceModel | None = None) -> dict[str, Any]:
        """Components of `img` matched to each reference's (Hungarian), and the rules checked."""
        refs = refs or self.reference_model()
        if refs is None:
            raise ValueError("no references to compare with")
        s = self.settings
        comps = extract_components(
            img, refs.palette, s.component_size, s.min_component, s.max_component, s.max_components
        )
        matches = [match_components(comps, rc, s.max_match_cost) for rc in refs.components]
        best = int(np.argmin([m.cost for m in matches]))
        rules = list(refs.rules) + list(refs.brain_rules or [])
        broken = check_rules(rules, comps)
        m = matches[best]
        return {
            "components": len(comps),
            "reference_components": [len(c) for c in refs.components],
            "best_reference": best,
            "matching": m.to_dict(),
            "extra_components": [comps[i].to_dict() for i in m.extra],
            "rules_checked": len(rules),
            "violations": broken,
            "summary": f"{len(comps)} component(s); best reference {best}: {len(m.pairs)} matched, "
            f"{len(m.extra)} extra, {len(m.missing)} missing; {len(broken)} of {len(rules)} rule(s) broken",
        }

    def _match(self, record: InspectionRecord, img: Image.Image, trace: list[dict[str, Any]]) -> None:
        t0 = time.perf_counter()
        entry: dict[str, Any] = {}
        if record.anomaly_map is not None:
            amap = np.nan_to_num(np.asarray(record.anomaly_map, dtype=np.float64))
            mask = record.pred_mask if record.pred_mask is not None else np.zeros(amap.shape, bool)
            entry["patch_distances"] = {
                "mean": round(float(amap.mean()), 5),
                "max": round(float(amap.max()), 5),
                "inside_mask": round(float(amap[mask].mean()), 5) if mask.any() else None,
                "outside_mask": round(float(amap[~mask].mean()), 5) if (~mask).any() else None,
            }
        try:
            refs = self.reference_model(trace)
        except Exception as err:  # noqa: BLE001
            refs = None
            entry["error"] = _short(str(err), 200)
        if refs is None:
            _step(trace, "match", t0, summary="no references: patch distances only", **entry)
            return
        try:
            result = self.compare(img, refs)
        except Exception as err:  # noqa: BLE001 - the map evidence still stands
            _step(
                trace, "match", t0, error=_short(str(err), 200), summary="component matching failed", **entry
            )
            return
        entry.update({k: v for k, v in result.items() if k != "summary"})
        summary = result["summary"]
        broken = result["violations"]
        s = self.settings
        if broken and s.match_can_flag and not record.pred_label:
            record.pred_label = True
            record.pred_score = max(record.pred_score, record.threshold + 1e-3)
            summary += "; the part is flagged by the rules"
        _step(trace, "match", t0, inputs={"references": len(self.references)}, summary=summary, **entry)

    def _conclude(
        self,
        record: InspectionRecord,
        trace: list[dict[str, Any]],
        question: str | None,
        history: list[tuple[str, str]] | None,
    ) -> None:
        t0 = time.perf_counter()
        record.explanation = self._brain_text(trace, "explain", lambda b: b.explain(record))
        if question:
            record.answer = self.answer(question, record, history)
        _step(
            trace,
            "conclude",
            t0,
            verdict=record.verdict,
            pred_score=round(float(record.pred_score), 6),
            regions=len(record.regions),
            summary=f"{record.verdict} (score {record.pred_score:.3f}), {len(record.regions)} region(s)",
        )


def regions_from_dicts(items: Sequence[dict[str, Any]]) -> list[Region]:
    """Regions back from their JSON dicts (what tools pass around as artifacts)."""
    return [Region.from_dict(d) for d in items]


__all__ = [
    "Component",
    "ComponentMatch",
    "LoopSettings",
    "MatchOfThought",
    "Rule",
    "RuleParseError",
    "check_rules",
    "colour_palette",
    "component_cost",
    "derive_rules",
    "extract_components",
    "match_components",
    "parse_rules",
    "peak_box",
    "zoom_box",
]
