"""The match-of-thought loop: geometry, component matching, rule parsing, and whole runs with brains
that fail or answer garbage (the loop must always return a record)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from agent.brains.base import Brain
from agent.brains.common import BrainError
from agent.loop import (
    Component,
    LoopSettings,
    MatchOfThought,
    Rule,
    RuleParseError,
    check_rules,
    colour_palette,
    derive_rules,
    extract_components,
    match_components,
    parse_rules,
    zoom_box,
)
from tests.agent import agent_case as case

# ---------------------------------------------------------------------------------------------- pure parts


def test_zoom_box_stays_inside_and_has_context():
    assert zoom_box((40, 40, 50, 50), (100, 100), margin=0.5, min_side=8) == (35, 35, 55, 55)
    box = zoom_box((0, 0, 4, 4), (100, 80), margin=0.5, min_side=32)
    assert box == (0, 0, 32, 32)
    x0, y0, x1, y1 = zoom_box((90, 70, 100, 80), (100, 80), margin=1.0, min_side=32)
    assert x1 == 100 and y1 == 80 and x1 - x0 == 32 and y1 - y0 == 32
    assert zoom_box((0, 0, 100, 80), (100, 80), margin=0.5) == (0, 0, 100, 80)  # cut to the image


def _dots(centres, size=96, radius=5, bg=200, fg=30) -> Image.Image:
    arr = np.full((size, size, 3), bg, np.uint8)
    yy, xx = np.mgrid[0:size, 0:size]
    for cx, cy in centres:
        arr[(xx - cx) ** 2 + (yy - cy) ** 2 <= radius**2] = fg
    return Image.fromarray(arr)


FOUR = [(20, 20), (76, 20), (20, 76), (76, 76)]


def test_components_and_hungarian_matching():
    refs = [_dots(FOUR), _dots([(x + 2, y) for x, y in FOUR])]
    palette = colour_palette(refs, k=3)
    assert palette[0].max() < 0.3 and palette[-1].min() > 0.7  # dark dots ... bright background

    def dark(image):
        return [c for c in extract_components(image, palette) if c.colour_class == 0]

    ref_comps = [dark(r) for r in refs]
    assert [len(c) for c in ref_comps] == [4, 4]
    query = dark(_dots(FOUR[:3] + [(48, 48)]))  # one dot moved to the centre
    m = match_components(query, ref_comps[0], max_cost=0.5)
    assert len(m.pairs) == 3 and len(m.extra) == 1 and len(m.missing) == 1
    moved = query[m.extra[0]]
    assert moved.centroid == pytest.approx((0.5, 0.5), abs=0.02)
    # classes must agree: a bright component never pairs with a dark one
    a = Component(0, 0.01, (0.5, 0.5), (0.1, 0.1, 0.1))
    b = Component(1, 0.01, (0.5, 0.5), (0.9, 0.9, 0.9))
    empty = match_components([a], [b])
    assert empty.pairs == [] and empty.extra == [0] and empty.missing == [0]
    assert match_components([], [b]).missing == [0]


def test_derived_rules_catch_a_missing_component():
    refs = [_dots(FOUR), _dots(FOUR)]
    palette = colour_palette(refs)
    ref_comps = [extract_components(r, palette) for r in refs]
    rules = derive_rules(ref_comps, len(palette), count_slack=0)
    count_dark = next(r for r in rules if r.kind == "count" and r.colour_class == 0)
    assert (count_dark.min, count_dark.max) == (4, 4)
    assert check_rules(rules, ref_comps[0]) == []
    broken = check_rules(rules, extract_components(_dots(FOUR[:3]), palette))
    assert any(b["kind"] == "count" and b["value"] == 3 for b in broken)
    assert any(b["kind"] == "balance" for b in broken)  # 1 left - 2 right, references are 0


def test_parse_rules_accepts_fences_prose_lists_and_drops_bad_items():
    text = 'Sure! ```json\n{"rules": [{"kind": "count", "colour_class": 0, "min": 4, "max": 4}]}\n``` done'
    rules, dropped = parse_rules(text)
    assert rules[0].kind == "count" and rules[0].source == "brain" and dropped == []
    rules, dropped = parse_rules(
        'Here: [{"kind": "area", "max": 0.2}, {"kind": "colour", "min": 1}, {"kind": "count"}, '
        '{"kind": "count", "min": 5, "max": 1}, {"kind": "count", "colour_class": 7, "min": 1}, "junk"]',
        n_classes=3,
    )
    assert [r.kind for r in rules] == ["area"]
    assert len(dropped) == 5 and any("colour_class 7" in d for d in dropped)
    for bad in (
        "no json at all",
        '{"rules": {"kind": "count"}}',
        '{"rules": [{"kind": "count"',
        '{"rules": []}',
    ):
        with pytest.raises(RuleParseError):
            parse_rules(bad)
    with pytest.raises(ValueError):
        Rule(kind="area", min=2.0)


# ---------------------------------------------------------------------------------------------- whole runs


@pytest.fixture(scope="module")
def detector():
    from tools.detectors import DETECTORS

    d = DETECTORS.build("refmatch", **case.DETECTOR_OPTIONS)
    d.fit(case.references())
    return d


@pytest.fixture(scope="module")
def fast_detector():
    """A stand-in detector (grey difference to the mean reference) for tests of the loop's plumbing."""
    d = case.MeanDiffDetector()
    d.fit(case.references())
    return d


def _factory():
    from tools.detectors import DETECTORS

    return DETECTORS.build("refmatch", **case.DETECTOR_OPTIONS)


class ScriptedBrain(Brain):
    """A model brain stand-in: scripted rule replies, and optional failures."""

    name = "scripted"

    def __init__(self, rule_replies=(), fail_explain=False, answer_text="scripted answer"):
        self.rule_replies = list(rule_replies)
        self.fail_explain = fail_explain
        self.answer_text = answer_text
        self.repair_errors: list[str] = []

    def explain(self, record):
        if self.fail_explain:
            raise BrainError("http://127.0.0.1:9/v1/chat/completions did not answer within 1 s")
        return f"scripted: {record.verdict}"

    def answer(self, question, record, history=None):
        if self.answer_text is None:
            return ""  # an empty reply is malformed too
        return self.answer_text

    def propose_rules(self, components_text):
        assert "colour class 0" in components_text
        return self.rule_replies.pop(0)

    def repair_rules(self, components_text, previous, error):
        self.repair_errors.append(error)
        reply = self.rule_replies.pop(0)
        if isinstance(reply, Exception):
            raise reply
        return reply


def test_loop_run_with_rule_brain_traces_every_step(detector):
    loop = MatchOfThought(detector, case.references(), zoom_factory=_factory)
    record = loop.run("scratch.png", case.scratched(), question="Where is the defect?")
    steps = [e["step"] for e in record.trace]
    assert steps == ["load", "look", "first_opinion", "look_twice", "match", "explain", "answer", "conclude"]
    assert (
        record.pred_label and record.regions and record.answer and record.explanation.startswith("Defective")
    )
    look_twice = record.trace[3]
    assert look_twice["looks"] and look_twice["looks"][0]["confirmed"]
    assert "fitted on the same crop" in look_twice["looks"][0]["zoom"]
    match = record.trace[4]
    assert match["patch_distances"]["inside_mask"] > match["patch_distances"]["outside_mask"]
    assert match["matching"]["extra"], "the scratch is a component the references do not have"
    assert all("seconds" in e for e in record.trace)
    json.dumps(record.to_json_dict())  # the whole trace is JSON

    good = loop.run("good.png", case.good())
    assert not good.pred_label and good.regions == []
    assert good.trace[3]["looks"][0]["target"] == "peak"  # a good part still gets a second look


def test_loop_without_references_and_with_zoom_weight(detector):
    loop = MatchOfThought(detector, [], settings=LoopSettings(zoom_weight=0.5, first_opinion=False))
    record = loop.run("scratch.png", case.scratched())
    look = record.trace[2]
    assert "no references" in look["looks"][0]["zoom"]
    assert record.trace[3]["summary"].startswith("no references")
    assert "score" in look["summary"]


def test_brain_rules_repaired_rejected_and_failures_fall_back(fast_detector):
    good_json = '{"rules": [{"kind": "count", "colour_class": 0, "min": 0, "max": 50}]}'
    brain = ScriptedBrain(rule_replies=["I think four holes.", good_json])
    loop = MatchOfThought(fast_detector, case.references(), brain, zoom_factory=case.MeanDiffDetector)
    record = loop.run("scratch.png", case.scratched())
    proposed = next(e for e in record.trace if e["step"] == "propose_rules")
    assert proposed["status"] == "repaired" and len(proposed["rules"]) == 1
    assert "no JSON" in brain.repair_errors[0]
    assert record.explanation == "scripted: defective"
    match = next(e for e in record.trace if e["step"] == "match")
    assert match["rules_checked"] > len(loop.reference_model().rules)

    # malformed twice -> rejected; a failing explain and an empty answer -> the RuleBrain's text
    brain = ScriptedBrain(
        rule_replies=['{"rules": [{"kind": "count"}]}', "still not"], fail_explain=True, answer_text=None
    )
    loop = MatchOfThought(fast_detector, case.references(), brain, zoom_factory=case.MeanDiffDetector)
    record = loop.run("scratch.png", case.scratched(), question="Is there a defect?")
    proposed = next(e for e in record.trace if e["step"] == "propose_rules")
    assert proposed["status"] == "rejected" and len(proposed["attempts"]) == 2
    explain = next(e for e in record.trace if e["step"] == "explain")
    assert "did not answer" in explain["error"] and explain["fallback"] == "rule"
    assert record.explanation.startswith("Defective")
    answer = next(e for e in record.trace if e["step"] == "answer")
    assert "no text" in answer["error"] and record.answer.startswith("Yes")

    # the repair call itself raising is recorded, not raised
    brain = ScriptedBrain(rule_replies=["nope", BrainError("server went away")])
    loop = MatchOfThought(fast_detector, case.references(), brain, zoom_factory=case.MeanDiffDetector)
    record = loop.run("scratch.png", case.scratched())
    proposed = next(e for e in record.trace if e["step"] == "propose_rules")
    assert proposed["status"] == "rejected" and "server went away" in proposed["attempts"][-1]["error"]


def test_sam_refines_the_mask(fast_detector):
    pytest.importorskip("transformers")
    from tests.tools.clip.tiny import tiny_sam
    from tools.sam import SamTool

    model, processor = tiny_sam()
    loop = MatchOfThought(fast_detector, case.references(), sam=SamTool(sam_model=model, processor=processor))
    record = loop.run("scratch.png", case.scratched())
    sam_step = next(e for e in record.trace if e["step"] == "sam_refine")
    assert sam_step["refinements"] and sam_step["refinements"][0]["kept"] in ("sam", "original")
    assert record.regions

    class BrokenSam:
        def refine(self, *a, **k):
            raise RuntimeError("SAM exploded")

    record = MatchOfThought(fast_detector, case.references(), sam=BrokenSam()).run(
        "scratch.png", case.scratched()
    )
    sam_step = next(e for e in record.trace if e["step"] == "sam_refine")
    assert "exploded" in sam_step["error"] and record.regions


def test_zoom_grid_fits_on_more_reference_crops(fast_detector):
    fitted: list[int] = []

    class Counting(case.MeanDiffDetector):
        def fit(self, references):
            fitted.append(len(references))
            super().fit(references)

    settings = LoopSettings(zoom_grid=2, first_opinion=False)
    loop = MatchOfThought(fast_detector, case.references(), settings=settings, zoom_factory=Counting)
    record = loop.run("scratch.png", case.scratched())
    look = record.trace[2]["looks"][0]
    assert "2x2 grid" in look["zoom"] and fitted[0] == 2 * (1 + 4)
