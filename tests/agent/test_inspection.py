"""The inspection pipeline (the match-of-thought loop): geometry, part matching, rule parsing, the
second look and the match deciding the answer, the calibration of the final score, and whole runs with
brains that fail or answer garbage (the pipeline must always return a record)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from agent.brains.base import Brain
from agent.brains.common import BrainError
from agent.inspection import InspectionSettings, MatchSettings, Pipeline, ZoomRecheckSettings
from agent.inspection.evidence import zoom_recheck_step
from agent.inspection.match import reference_model
from agent.inspection.rules import Rule, RuleParseError, check_rules, derive_rules, parse_rules
from tests.agent import agent_case as case
from tools.components import Part, colour_palette, match_parts, segment_by_palette
from tools.region_views import suspicious_places, zoom_box

# ---------------------------------------------------------------------------------------------- pure parts


def test_zoom_box_stays_inside_and_has_context():
    assert zoom_box((40, 40, 50, 50), (100, 100), margin=0.5, min_side=8) == (35, 35, 55, 55)
    box = zoom_box((0, 0, 4, 4), (100, 80), margin=0.5, min_side=32)
    assert box == (0, 0, 32, 32)
    x0, y0, x1, y1 = zoom_box((90, 70, 100, 80), (100, 80), margin=1.0, min_side=32)
    assert x1 == 100 and y1 == 80 and x1 - x0 == 32 and y1 - y0 == 32
    assert zoom_box((0, 0, 100, 80), (100, 80), margin=0.5) == (0, 0, 100, 80)  # cut to the image


def test_suspicious_places_are_distinct_peaks():
    amap = np.zeros((100, 100), np.float32)
    amap[20:26, 20:26] = 3.0
    amap[70:74, 60:64] = 2.0
    places = suspicious_places(amap, 3, 8)
    assert len(places) == 2  # the flat rest is no third place
    (b0, p0), (b1, p1) = places
    assert p0 == 3.0 and b0[0] <= 20 and b0[2] >= 26 and p1 == 2.0 and b1[1] <= 70 <= b1[3]


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
        return [c for c in segment_by_palette(image, palette) if c.colour_class == 0]

    ref_comps = [dark(r) for r in refs]
    assert [len(c) for c in ref_comps] == [4, 4]
    query = dark(_dots(FOUR[:3] + [(48, 48)]))  # one dot moved to the centre
    m = match_parts(query, ref_comps[0], max_cost=0.5)
    assert len(m.pairs) == 3 and len(m.extra) == 1 and len(m.missing) == 1
    moved = query[m.extra[0]]
    assert moved.centroid == pytest.approx((0.5, 0.5), abs=0.02)
    # classes must agree: a bright component never pairs with a dark one
    a = Part(None, 0.01, (0.5, 0.5), (0.1, 0.1, 0.1), colour_class=0)
    b = Part(None, 0.01, (0.5, 0.5), (0.9, 0.9, 0.9), colour_class=1)
    empty = match_parts([a], [b])
    assert empty.pairs == [] and empty.extra == [0] and empty.missing == [0]
    assert match_parts([], [b]).missing == [0]


def test_derived_rules_catch_a_missing_component():
    refs = [_dots(FOUR), _dots(FOUR)]
    palette = colour_palette(refs)
    ref_comps = [segment_by_palette(r, palette) for r in refs]
    rules = derive_rules(ref_comps, len(palette), count_slack=0)
    count_dark = next(r for r in rules if r.kind == "count" and r.colour_class == 0)
    assert (count_dark.min, count_dark.max) == (4, 4)
    assert check_rules(rules, ref_comps[0]) == []
    broken = check_rules(rules, segment_by_palette(_dots(FOUR[:3]), palette))
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

REFMATCH = dict(case.DETECTOR_OPTIONS)


#: The loop with both fusions on (by default they are recorded but change nothing: BENCHMARKS.md).
FUSED = {"zoom_recheck": ZoomRecheckSettings(enabled=True, weight=0.5), "match": MatchSettings(weight=1.0)}


def _settings(**kw) -> InspectionSettings:
    return InspectionSettings("refmatch", REFMATCH, **{**FUSED, **kw})


@pytest.fixture(scope="module")
def full():
    """The full loop on refmatch with three references, the second look and the rules fused."""
    return Pipeline(_settings()).fit(case.references(3))


def test_by_default_the_zoom_recheck_is_off_and_rules_are_not_run():
    """Validation showed no gain: the zoomed re-check is off (the trace says so and why) and the match
    step, whose weight is 0, does not run at all (its result would be thrown away); `trace: full` runs
    and records it without changing the score; turned on, the re-check runs and is traced."""
    pipeline = Pipeline(InspectionSettings("refmatch", REFMATCH)).fit(case.references(3))
    record = pipeline.inspect("scratch.png", case.scratched())
    steps = {e["step"]: e for e in record.trace}
    assert steps["zoom_recheck"]["skipped"].startswith("off") and "enabled: true" in steps["zoom_recheck"]["summary"]
    assert "match" not in steps
    traced = Pipeline(InspectionSettings("refmatch", REFMATCH, trace="full")).fit(case.references(3))
    full_steps = {e["step"]: e for e in traced.inspect("scratch.png", case.scratched()).trace}
    assert full_steps["match"]["changed"].startswith("nothing")
    assert pipeline.calibration is not None and pipeline.calibration.method == "references (leave-one-out, the detector's score)"
    on = Pipeline(InspectionSettings("refmatch", REFMATCH, zoom_recheck=ZoomRecheckSettings(enabled=True))).fit(case.references(3))
    looked = next(e for e in on.inspect("scratch.png", case.scratched()).trace if e["step"] == "zoom_recheck")
    assert looked["looks"] and looked["changed"].startswith("nothing")


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


def test_full_loop_traces_every_step_and_says_what_it_changed(full):
    record = full.inspect("scratch.png", case.scratched(), question="Where is the defect?")
    steps = [e["step"] for e in record.trace]
    assert steps == ["load", "look", "zoom_recheck", "match", "decide", "explain", "answer", "conclude"]
    assert record.verdict == "defective" and record.pred_label and record.regions and record.answer
    recheck = record.trace[2]
    assert recheck["looks"] and recheck["looks"][0]["outcome"] == "confirmed"
    assert recheck["changed"].startswith("raw score")
    match = record.trace[3]
    assert "changed" in match and "findings" in match
    decide = record.trace[4]
    assert decide["verdict"] == "defective" and "false-alarm rate" in decide["summary"]
    assert record.decision["good_samples"] >= 3 and record.decision["method"].startswith("references")
    assert all("seconds" in e for e in record.trace)
    json.dumps(record.to_json_dict())  # the whole trace is JSON

    good = full.inspect("good.png", case.good())
    assert good.verdict in ("good", "review") and not good.pred_label
    assert good.trace[2]["looks"], "a good part still gets a second look at its most suspicious place"


def test_calibration_is_of_the_final_score(full):
    """The references' own final scores (each held out of everything) set the boundary: with few
    references it is the largest of them, and no reference would be called defective."""
    cal = full.calibration
    assert cal is not None and cal.method == "references (leave-one-out, the final score)"
    held = full.detector.held_out_outputs()
    finals = [full._evidence(f"r{i}", r, o, held_out=i).raw for i, (r, o) in enumerate(zip(full.references, held, strict=True))]
    assert cal.boundary >= max(finals) - 1e-9


class _OneLook:
    """A second look that reports a fixed ratio for the top place (for testing the fusion)."""

    def __init__(self, ratio: float) -> None:
        self.ratio = ratio

    def look(self, image, raw_map, held_out=None):
        from agent.inspection.zoom_recheck import Look

        return [Look("place 1", (0, 0, 32, 32), (8, 8, 24, 24), 1.0, self.ratio, self.ratio)]


def test_a_second_look_changes_the_verdict_when_it_should(full):
    """A part the first look barely passes becomes defective when the zoom confirms a place strongly,
    and a part it barely flags becomes good when the zoom dismisses it."""
    ev = full.score("good.png", case.good())
    boundary = full.calibration.boundary
    # put the first look right under, then right over the boundary
    for first, ratio, expected in ((0.97 * boundary, 3.0, "defective"), (1.03 * boundary, 0.3, "good")):
        ev.output.raw_score = first
        ev.match_term = 0.0
        pipeline = Pipeline(_settings(decision=full.settings.decision))
        pipeline.detector, pipeline.calibration, pipeline._brain = full.detector, full.calibration, full.brain
        pipeline.recheck = _OneLook(ratio)
        ev.looks, ev.factor = [], 1.0
        zoom_recheck_step(ev, pipeline.recheck, pipeline.settings.zoom_recheck, "", None)
        record = pipeline.conclude(ev)
        assert record.verdict == expected, (first, ratio, record.verdict)
        assert "raw score" in next(e for e in ev.trace if e["step"] == "zoom_recheck")["changed"]
        ev.trace.clear()


def _dot_scene(extra: bool = False, size: int = 96, seed: int = 0, radius: int = 5) -> Image.Image:
    rng = np.random.default_rng(seed)
    arr = np.full((size, size, 3), 210.0)
    yy, xx = np.mgrid[0:size, 0:size]
    for cx, cy in FOUR + ([(48, 48)] if extra else []):
        dx, dy = rng.integers(-2, 3, 2)
        arr[(xx - cx - dx) ** 2 + (yy - cy - dy) ** 2 <= radius**2] = (40, 60, 200)
    arr += rng.normal(0, 4, arr.shape)
    return Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8))


def test_a_broken_rule_raises_the_score_and_is_named():
    """A fifth part the references never show: the first look alone may miss it (it looks like the
    other parts), the match step breaks the count rule and raises the final score."""
    refs = [_dot_scene(seed=s) for s in range(3)]
    weights = {}
    for name, match in (("off", MatchSettings(weight=0.0, count_slack=0)), ("on", MatchSettings(weight=1.0, count_slack=0))):
        p = Pipeline(_settings(zoom_recheck=ZoomRecheckSettings(enabled=False), match=match, trace="full")).fit(refs)
        record = p.inspect("five.png", _dot_scene(extra=True, seed=9))
        step = next(e for e in record.trace if e["step"] == "match")
        assert any(v["kind"] == "count" for v in step["violations"]) and "broken" in step["summary"]
        weights[name] = next(e for e in record.trace if e["step"] == "decide")["final_raw"]
        if name == "on":
            assert step["changed"].startswith("raw score") and record.verdict != "good"
        else:
            assert step["changed"].startswith("nothing")
    assert weights["on"] > weights["off"]


def test_rules_the_references_break_themselves_are_left_out():
    """References whose parts differ in size: the area rules, derived from all but one reference, are
    broken by the one held out, so they are left out (named in the trace); the count rule holds and
    still catches a fifth part. No held-out reference is raised, so the boundary is not lifted."""
    refs = [_dot_scene(seed=s, radius=r) for s, r in ((0, 3), (1, 5), (2, 8))]
    settings = MatchSettings(weight=1.0, count_slack=0, area_tolerance=0.0)
    model = reference_model(refs, settings)
    dropped = {(r.kind, r.colour_class) for r in model.dropped}
    kept = {(r.kind, r.colour_class) for r in model.rules}
    assert any(kind == "area" for kind, _ in dropped) and any(kind == "count" for kind, _ in kept)
    assert not dropped & kept
    for i in range(len(refs)):  # every reference keeps the rules derived from the others
        assert check_rules(model.held_out(i).rules, model.parts[i]) == []

    p = Pipeline(_settings(zoom_recheck=ZoomRecheckSettings(enabled=False), match=settings)).fit(refs)
    held = p.detector.held_out_outputs()
    assert all(p._evidence(f"r{i}", r, o, held_out=i).match_term == 0.0 for i, (r, o) in enumerate(zip(refs, held, strict=True)))
    record = p.inspect("five.png", _dot_scene(extra=True, seed=9))
    step = next(e for e in record.trace if e["step"] == "match")
    assert any(v["kind"] == "count" for v in step["violations"])
    assert step["rules_dropped"] and "left out" in step["summary"]


def test_zero_shot_skips_the_second_look_and_says_why():
    p = Pipeline(InspectionSettings("selfsim", {"resolution": 96}, zoom_recheck=ZoomRecheckSettings(enabled=True), trace="full")).fit([])
    record = p.inspect("scratch.png", case.scratched())
    look = next(e for e in record.trace if e["step"] == "zoom_recheck")
    assert look["skipped"] == "no references to compare with"
    match = next(e for e in record.trace if e["step"] == "match")
    assert match["skipped"] == "no references"
    assert record.decision["method"].startswith("references") or record.decision["false_alarm_rate"] is None


def test_brain_rules_repaired_rejected_and_failures_fall_back():
    good_json = '{"rules": [{"kind": "count", "colour_class": 0, "min": 0, "max": 50}]}'
    brain = ScriptedBrain(rule_replies=["I think four holes.", good_json])
    settings = _settings(zoom_recheck=ZoomRecheckSettings(enabled=False))
    pipeline = Pipeline(settings, brain=brain, detector=case.MeanDiffDetector()).fit(case.references())
    record = pipeline.inspect("scratch.png", case.scratched())
    proposed = next(e for e in record.trace if e["step"] == "propose_rules")
    assert proposed["status"] == "repaired" and len(proposed["rules"]) == 1
    assert "no JSON" in brain.repair_errors[0]
    assert record.explanation == "scripted: defective"
    match = next(e for e in record.trace if e["step"] == "match")
    assert match["rules_checked"] > len(pipeline.reference_model().rules)

    # malformed twice -> rejected; a failing explain and an empty answer -> the RuleBrain's text
    brain = ScriptedBrain(
        rule_replies=['{"rules": [{"kind": "count"}]}', "still not"], fail_explain=True, answer_text=None
    )
    pipeline = Pipeline(settings, brain=brain, detector=case.MeanDiffDetector()).fit(case.references())
    record = pipeline.inspect("scratch.png", case.scratched(), question="Is there a defect?")
    proposed = next(e for e in record.trace if e["step"] == "propose_rules")
    assert proposed["status"] == "rejected" and len(proposed["attempts"]) == 2
    explain = next(e for e in record.trace if e["step"] == "explain")
    assert "did not answer" in explain["error"] and explain["fallback"] == "rule"
    assert record.explanation.startswith("Defective")
    answer = next(e for e in record.trace if e["step"] == "answer")
    assert "no text" in answer["error"] and record.answer.startswith("Yes")

    # the repair call itself raising is recorded, not raised
    brain = ScriptedBrain(rule_replies=["nope", BrainError("server went away")])
    pipeline = Pipeline(settings, brain=brain, detector=case.MeanDiffDetector()).fit(case.references())
    record = pipeline.inspect("scratch.png", case.scratched())
    proposed = next(e for e in record.trace if e["step"] == "propose_rules")
    assert proposed["status"] == "rejected" and "server went away" in proposed["attempts"][-1]["error"]


def test_sam_refines_the_mask():
    pytest.importorskip("transformers")
    from tests.tools.clip.tiny import tiny_sam
    from tools.sam import SamTool

    model, processor = tiny_sam()
    settings = _settings(zoom_recheck=ZoomRecheckSettings(enabled=False))
    sam = SamTool(sam_model=model, processor=processor)
    pipeline = Pipeline(settings, sam=sam, detector=case.MeanDiffDetector()).fit(case.references())
    record = pipeline.inspect("scratch.png", case.scratched())
    sam_step = next(e for e in record.trace if e["step"] == "sam_refine")
    assert sam_step["refinements"] and sam_step["refinements"][0]["kept"] in ("sam", "original")
    assert record.regions

    class BrokenSam:
        def refine(self, *a, **k):
            raise RuntimeError("SAM exploded")

    pipeline = Pipeline(settings, sam=BrokenSam(), detector=case.MeanDiffDetector()).fit(case.references())
    record = pipeline.inspect("scratch.png", case.scratched())
    sam_step = next(e for e in record.trace if e["step"] == "sam_refine")
    assert "exploded" in sam_step["error"] and record.regions


def test_the_detector_is_fitted_once_per_pipeline():
    fits: list[int] = []

    class Counting(case.MeanDiffDetector):
        def fit(self, references):
            fits.append(len(references))
            super().fit(references)

    pipeline = Pipeline(_settings(zoom_recheck=ZoomRecheckSettings(enabled=False)), detector=Counting()).fit(case.references())
    for _ in range(3):
        pipeline.inspect("scratch.png", case.scratched())
    assert fits == [2]
