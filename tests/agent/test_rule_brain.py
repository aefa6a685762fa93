"""RuleBrain: explanations and answers from hand-built records (and one measured from a synthetic map)."""

from __future__ import annotations

import numpy as np
import pytest

from agent.brains import BRAINS, Brain
from agent.brains.rule import RuleBrain
from prompts import PromptError, load_prompts
from tools.record import InspectionRecord, Region
from tools.regions import defect_word, measure_regions


def _region(
    location: str = "upper-left",
    shape: str = "elongated",
    area_fraction: float = 0.02,
    elongation: float = 8.0,
    contrast: float = -0.3,
    max_score: float = 0.93,
    bbox: tuple[int, int, int, int] = (10, 20, 50, 25),
    centroid: tuple[float, float] = (30.0, 22.0),
    texture: float = -0.02,
) -> Region:
    r = Region(
        bbox=bbox,
        area_px=int(area_fraction * 10_000),
        area_fraction=area_fraction,
        centroid=centroid,
        elongation=elongation,
        mean_score=max_score - 0.1,
        max_score=max_score,
        intensity_contrast=contrast,
        location=location,
        shape=shape,
        texture_contrast=texture,
    )
    r.kind = defect_word(r) if contrast != 0.0 else ""  # as the region measurer does with an image
    return r


def _record(
    regions: list[Region] | None = None, score: float = 0.93, label: bool = True, verdict: str = "",
    suspect: Region | None = None,
) -> InspectionRecord:
    return InspectionRecord(
        image_path="part.png", pred_score=score, pred_label=label, threshold=0.45, regions=regions or [],
        verdict=verdict, suspicious_place=suspect,
    )


@pytest.fixture(scope="module")
def brain() -> RuleBrain:
    return RuleBrain()


def _four_regions() -> list[Region]:
    return [
        _region(),
        _region(location="bottom", shape="compact", area_fraction=0.004, elongation=1.2, contrast=0.2, max_score=0.8),
        _region(location="center", shape="diffuse", area_fraction=0.12, elongation=1.5, contrast=0.01, max_score=0.7),
        _region(location="right", shape="compact", area_fraction=0.001, elongation=1.0, max_score=0.6),
    ]


def test_registry_builds_rule_brain():
    assert "rule" in BRAINS.names()
    b = BRAINS.build("rule")
    assert isinstance(b, RuleBrain) and isinstance(b, Brain)
    assert b.name == "rule"
    assert b.settings() == {"brain": "rule", "prompts": "rule_brain"}


def test_prompts_yaml_loads_and_is_copied():
    t = load_prompts("rule_brain")
    assert t["shapes"]["elongated"]["kind_short"] == "crack- or scratch-like"
    assert t["shapes"]["compact"]["kind_short"] == "spot- or hole-like"
    assert "unevenness or discolouration" in t["shapes"]["diffuse"]["kind_short"]
    t["verdict"]["good"] = "changed"
    assert load_prompts("rule_brain")["verdict"]["good"] != "changed"  # cache not mutated by callers


def test_missing_prompt_file_names_the_file():
    with pytest.raises(PromptError, match=r"prompts/no_such_prompts\.yaml.*rule_brain"):
        load_prompts("no_such_prompts")
    with pytest.raises(PromptError, match="invalid prompt name"):
        load_prompts("../rule_brain")


def test_explain_good(brain):
    assert brain.explain(_record(score=0.12, label=False)) == "No defect found (score 0.12, threshold 0.45)."


def test_explain_one_region(brain):
    text = brain.explain(_record([_region()]))
    assert text == (
        "Defective (score 0.93): mark 1, a medium-sized elongated crack in the upper-left, darker than its "
        "surroundings, covering about 2% of the surface (40 x 5 pixels)."
    )


def test_explain_without_image_claims_no_tone(brain):
    text = brain.explain(
        _record([_region(shape="compact", elongation=1.0, contrast=0.0, area_fraction=0.0003)])
    )
    assert text == (
        "Defective (score 0.93): mark 1, a tiny compact mark in the upper-left, covering less than 0.1% of the "
        "surface (40 x 5 pixels)."
    )


def test_explain_defective_without_regions(brain):
    text = brain.explain(_record([]))
    assert text.startswith("Defective (score 0.93, threshold 0.45)")
    assert "spread" in text


def test_explain_several_regions_lists_them_all_with_their_numbers(brain):
    text = brain.explain(_record(_four_regions()))
    assert text.startswith("Defective (score 0.93): four marks: (1) a medium-sized elongated crack in the upper-left")
    assert "(2) a small compact spot at the bottom, brighter than its surroundings, covering about 0.4% of the surface" in text
    assert "(3) a large diffuse uneven surface in the center, similar in tone to its surroundings" in text
    assert "; and (4) a tiny compact hole on the right" in text  # four marks: all listed, no "one more"
    assert "more" not in text


def test_many_marks_name_the_rest_by_number(brain):
    regions = _four_regions() + [_region(location="top", shape="compact", area_fraction=0.002, elongation=1.0, max_score=0.55)]
    for i, r in enumerate(regions, start=1):
        r.number = i
    text = brain.explain(_record(regions))
    assert text.startswith("Defective (score 0.93): five marks: (1) ")
    assert "(3) a large diffuse" in text and "(4)" not in text
    assert text.endswith("; and marks 4 and 5, weaker, outlined on the overlay.")
    assert "one more" not in text


def test_explain_follows_the_record_order(brain):
    regions = _four_regions()[:2][::-1]  # the loop ranked the bright spot first
    text = brain.explain(_record(regions))
    assert text.index("bottom") < text.index("upper-left")
    assert "two marks: (1) a small compact spot" in text and "; and (2) a medium-sized elongated crack in the upper-left" in text


def test_shape_derived_when_missing(brain):
    r = _region(shape="", elongation=5.0)
    assert "elongated crack" in brain.explain(_record([r]))


@pytest.mark.parametrize(
    ("fields", "word"),
    [
        (dict(shape="elongated", elongation=8.0, contrast=-0.2), "crack"),
        (dict(shape="elongated", elongation=8.0, contrast=0.2), "scratch"),
        (dict(shape="compact", elongation=1.1, contrast=-0.2, area_fraction=0.002), "hole"),
        (dict(shape="compact", elongation=1.1, contrast=0.2, area_fraction=0.002), "spot"),
        (dict(shape="diffuse", elongation=1.3, contrast=0.01, area_fraction=0.2), "uneven surface"),
        (dict(shape="diffuse", elongation=1.3, contrast=-0.2, area_fraction=0.2), "stain"),
    ],
)
def test_defect_words_from_shape_and_tone(fields, word):
    assert _region(**fields).kind == word


def test_defect_words_at_the_edge():
    fray = _region(shape="elongated", elongation=6.0, contrast=-0.2)
    fray.touches_border, fray.border_contact = True, 0.5
    broken = _region(shape="compact", elongation=1.2, contrast=-0.3, area_fraction=0.03)
    broken.touches_border, broken.border_contact = True, 0.45
    assert defect_word(fray) == "fray" and defect_word(broken) == "broken area"
    grazing = _region(shape="compact", elongation=1.2, contrast=-0.3, area_fraction=0.03)
    grazing.touches_border, grazing.border_contact = True, 0.1  # a halo reaching the edge is not cut by it
    assert defect_word(grazing) == "hole"


def test_uneven_surface_from_texture():
    rough = _region(shape="compact", elongation=1.3, contrast=0.01, area_fraction=0.006, texture=0.02)
    assert rough.kind == "uneven surface"
    dark_pit = _region(shape="compact", elongation=1.1, contrast=-0.1, area_fraction=0.006, texture=0.02)
    assert dark_pit.kind == "hole"  # a darker mark stays a hole however rough


def test_measured_region_end_to_end(brain):
    amap = np.zeros((100, 100), dtype=np.float32)
    amap[10:12, 5:45] = 0.95
    image = np.full((100, 100, 3), 180, dtype=np.uint8)
    image[10:12, 5:45] = 30
    regions = measure_regions(amap, amap > 0.5, image=image)
    assert regions[0].kind == "crack" and not regions[0].touches_border
    text = brain.explain(_record(regions))
    assert text == (
        "Defective (score 0.93): mark 1, a small elongated crack in the upper-left, darker than its surroundings, "
        "covering about 0.8% of the surface (40 x 2 pixels)."
    )


def test_review_and_comparison_with_the_references(brain):
    r = _region(contrast=0.01)  # like its surroundings, but darker than every reference there
    r.reference_contrast = -0.12
    text = brain.explain(_record([r], score=0.45, label=False, verdict="review"))
    assert text.startswith("Not sure (score 0.45") and "darker than every reference there" in text
    assert "similar in tone" not in text
    answer = brain.answer("Is there a defect? Where?", _record([r], score=0.45, label=False, verdict="review"))
    assert answer.startswith("Not sure:") and "in the upper-left" in answer


@pytest.mark.parametrize(
    ("question", "intents"),
    [
        ("Is this part defective?", ["verdict"]),
        ("Is there an anomaly?", ["verdict"]),
        ("Where is the defect?", ["where"]),
        ("What kind of defect is it?", ["kind"]),
        ("What type of damage?", ["kind"]),
        ("How big is the defect?", ["size"]),
        ("How many defects are there?", ["count"]),
        ("Why did this happen?", ["cause"]),
        ("How can we prevent it?", ["cause"]),
        ("Where is it and how big?", ["where", "size"]),
        ("Describe the defect: what is it, where is it, and how does it look?", ["describe"]),
        ("Tell me a joke", []),
        ("", []),
    ],
)
def test_intents(brain, question, intents):
    assert brain.intents(question) == intents


def test_answer_verdict(brain):
    yes = brain.answer("Is it defective?", _record([_region()]))
    assert yes.startswith("Yes, it looks defective: the score 0.93 is above the threshold 0.45.")
    assert "mark 1, a medium-sized elongated crack in the upper-left" in yes
    no = brain.answer("Is it defective?", _record(score=0.2, label=False))
    assert no == "No, it looks good: the score 0.20 is below the threshold 0.45."
    first = brain.answer("Is there a defect? Where?", _record([_region()]))
    assert first.startswith("Yes") and "It is in the upper-left" in first  # Yes or No first, then the place


def test_answer_where(brain):
    one = brain.answer("Where is the defect?", _record([_region()]))
    assert one == (
        "It is in the upper-left (mark 1): centred near x = 30, y = 22, inside the box from (10, 20) to (50, 25) in pixels."
    )
    several = brain.answer("Where?", _record(_four_regions()))
    assert several.startswith(
        "There are four marks: (1) in the upper-left (box (10, 20) to (50, 25)); (2) at the bottom"
    )
    assert several.endswith("; and (4) on the right (box (10, 20) to (50, 25)).")
    good = brain.answer("Where is the defect?", _record(score=0.1, label=False))
    assert good.startswith("Nowhere: no defect was found")
    suspect = brain.answer("Where?", _record(score=0.3, label=False, suspect=_region(location="right")))
    assert "the most suspicious spot, on the right, stays below the threshold" in suspect


def test_answer_describe(brain):
    one = brain.answer("Describe the defect: what is it, where is it, and how does it look?", _record([_region()]))
    assert one == (
        "There is a crack on the part (mark 1): a medium-sized elongated crack in the upper-left, darker than its "
        "surroundings, covering about 2% of the surface (40 x 5 pixels)."
    )
    good = brain.answer("Describe the defect.", _record(score=0.2, label=False, suspect=_region(location="right")))
    assert good.startswith("No defect was found") and "the most suspicious place is a medium-sized elongated crack on the right" in good


def test_answer_kind(brain):
    one = brain.answer("What kind of defect is it?", _record([_region()]))
    assert one == (
        "It is a crack in the upper-left (mark 1): elongated, about 8 times as long as it is wide, "
        "darker than its surroundings."
    )
    diffuse = brain.answer(
        "What type?", _record([_region(shape="diffuse", area_fraction=0.2, elongation=1.3, contrast=0.0)])
    )
    assert diffuse == (
        "It is an area in the upper-left (mark 1): diffuse, covering about 20% of the surface without sharp edges."
    )
    several = brain.answer("What kind?", _record(_four_regions()))
    assert "(1) a crack in the upper-left; (2) a spot at the bottom" in several


def test_answer_size(brain):
    one = brain.answer("How big is it?", _record([_region()]))
    assert (
        one == "It is medium-sized: about 2% of the surface, 40 x 5 pixels in its bounding box (200 pixels)."
    )
    several = brain.answer("How large are they?", _record(_four_regions()))
    assert several.startswith("The four marks cover 14% of the surface together; the largest, mark 3 in the center,")
    assert "is large: about 12% of the surface" in several


def test_answer_count(brain):
    assert brain.answer("How many defects?", _record([_region()])) == "One: (1) a crack in the upper-left."
    several = brain.answer("How many defects?", _record(_four_regions()))
    assert several.startswith("Four: (1) a crack in the upper-left;")
    assert several.endswith("; and (4) a hole on the right.")
    none = brain.answer("How many defects?", _record(score=0.1, label=False))
    assert none.startswith("None: no defect was found")


def test_answer_cause_per_defect_word(brain):
    text = brain.answer("Why is it defective, and how to prevent it?", _record(_four_regions()))
    assert text.startswith(
        "It was flagged because the score 0.93 is above the threshold 0.45, driven by four marks"
    )
    qa = load_prompts("qa_templates")
    entries = {e["words"]: e for e in qa["defect_types"]}
    assert entries["crack"]["cause"] in text and entries["crack"]["prevention"] in text
    assert entries["uneven surface"]["cause"] in text
    assert text.index("A crack usually") < text.index("An uneven surface")
    assert text.endswith(load_prompts("rule_brain")["answers"]["cause"]["caveat"])
    good = brain.answer("Why?", _record(score=0.1, label=False))
    assert good == "No defect was found (score 0.10, threshold 0.45), so there is no cause to look for."
    hedged = brain.answer("Why?", _record(score=0.3, label=False, suspect=_region()))
    assert hedged.startswith("No defect was found") and "if the crack in the upper-left were one" in hedged


def test_answer_several_intents_in_question_order(brain):
    text = brain.answer("Where is it and how big?", _record([_region()]))
    assert text.startswith("It is in the upper-left (mark 1):")
    assert "It is medium-sized: about 2% of the surface" in text
    good = brain.answer("Where is it and how big?", _record(score=0.1, label=False))
    assert good == "Nowhere: no defect was found (score 0.10, threshold 0.45)."


def test_unknown_question_gets_explanation_and_help(brain):
    rec = _record([_region()])
    text = brain.answer("What colour is the sky?", rec, history=[("Is it defective?", "Yes.")])
    assert text.startswith(brain.explain(rec))
    assert "I can answer whether the part is defective" in text


def test_answers_are_deterministic(brain):
    rec = _record(_four_regions())
    assert brain.answer("Why?", rec) == RuleBrain().answer("Why?", rec)


# ---------------------------------------------------------------------------------------------------
# the most suspicious spot, the comparison with the references, edge responses, one tone per mark


def test_most_suspicious_spot(brain):
    assert brain.intents("What is the most suspicious spot?") == ["suspicious"]
    text = brain.answer("What is the most suspicious spot?", _record(_four_regions()))
    assert text.startswith("The most suspicious spot is mark 1, centred near x = 30, y = 22: a medium-sized elongated crack in the upper-left")
    assert "Its anomaly score peaks at 0.93 there (the boundary is 0.45)." in text
    passed = brain.answer("Where is the most suspicious spot?", _record(score=0.3, label=False, suspect=_region(location="right", max_score=0.41)))
    assert passed.startswith("The most suspicious spot, centred near x = 30, y = 22, is a medium-sized elongated crack on the right")
    assert "peaks at 0.41 there, below the boundary 0.45, so the part passed" in passed
    nothing = brain.answer("What is the most suspicious spot?", _record(score=0.1, label=False))
    assert nothing.startswith("No spot stands out")


def test_comparison_with_the_references(brain):
    assert brain.intents("How does it compare to the reference?") == ["compare"]
    darker = _region()
    darker.reference_contrast = -0.12
    within = _region(location="bottom", shape="compact", area_fraction=0.004, elongation=1.2, contrast=0.2, max_score=0.8)
    within.reference_contrast = 0.0
    text = brain.answer("How does it compare to the reference?", _record([darker, within]))
    assert text.startswith("Compared with the good references at the same place: Mark 1 in the upper-left is darker than every reference there, by 12% of the grey scale")
    assert "its anomaly score peaks at 0.93" in text
    assert "Mark 2 at the bottom is within the references' range of tone there, so it differs in texture or shape" in text
    no_refs = brain.answer("How does it differ from a good one?", _record([_region()]))
    assert no_refs.startswith("No good references were given")
    assert "Mark 1 in the upper-left is darker than its surroundings" in no_refs
    place = _region(location="right", max_score=0.4)
    place.reference_contrast = 0.05
    good = brain.answer("Compared with the references?", _record(score=0.3, label=False, suspect=place))
    assert good.startswith("No defect was found") and "The most suspicious place on the right is brighter than every reference there, by 5%" in good


def test_weak_edge_responses_are_not_listed_as_marks(brain):
    main = _region(location="center", shape="compact", area_fraction=0.02, elongation=1.3, contrast=-0.1, max_score=1.0)
    edge = _region(location="lower-right", shape="compact", area_fraction=0.001, elongation=1.4, contrast=-0.01, max_score=0.63)
    edge.touches_border = True
    main.number, edge.number = 1, 2
    text = brain.explain(_record([main, edge]))
    assert text.startswith("Defective (score 0.93): mark 1, a medium-sized compact hole in the center")
    assert "marks:" not in text
    assert text.endswith("Region 2, in the lower-right at the image's edge, is a weak, small response there, more likely the border than a defect.")
    assert brain.answer("How many defects?", _record([main, edge])).startswith("One: (1) a hole in the center.")
    # the strongest region at the edge (a break, a frayed edge) is a mark like any other
    edge.max_score = 1.0
    edge.number, main.number = 1, 2
    assert "two marks: (1) a tiny compact stain in the lower-right" in brain.explain(_record([edge, main]))


def _tones_in(text: str) -> set[str]:
    phrases = {
        "similar": "similar in tone", "darker": "darker than", "brighter": "brighter than",
    }
    return {k for k, v in phrases.items() if v in text}


def _assert_one_tone_per_mark(brain: RuleBrain, record: InspectionRecord) -> None:
    texts = [brain.explain(record), brain.answer("Describe the defect.", record), brain.answer("What kind of defect?", record)]
    for text in texts:
        # one mark per segment: "(1) ...; (2) ..." or the whole text for one mark
        for segment in text.replace("; and (", "; (").split("; ("):
            tones = _tones_in(segment)
            assert not ({"similar"} < tones or tones >= {"darker", "brighter"}), (segment, tones)
    for region in record.regions + ([record.suspicious_place] if record.suspicious_place else []):
        assert len(_tones_in(brain._description(region))) <= 1, brain._description(region)


def test_no_explanation_says_two_tones_on_generated_regions(brain):
    rng = np.random.default_rng(0)
    for _ in range(300):
        r = _region(
            shape=str(rng.choice(["elongated", "compact", "diffuse"])),
            area_fraction=float(rng.uniform(0.0005, 0.2)),
            contrast=float(rng.choice([0.0, rng.uniform(-0.3, 0.3), rng.uniform(-0.06, 0.06)])),
        )
        r.reference_contrast = None if rng.random() < 0.3 else float(rng.choice([0.0, rng.uniform(-0.2, 0.2)]))
        _assert_one_tone_per_mark(brain, _record([r]))


def test_no_explanation_says_two_tones_on_the_demo_case(brain, tmp_path):
    """The README's demo case (4 references, seed 0) and two other drawn cases, inspected for real."""
    from agent.inspection import Pipeline
    from instruct_data.synthesis.demo_case import make_demo_case
    from tools.image_io import load_image

    for seed, size, refs in ((0, 256, 4), (1, 96, 3)):
        case = make_demo_case(tmp_path / f"case-{seed}", n_references=refs, seed=seed, size=size)
        pipeline = Pipeline(brain=brain, warn=lambda m: None).fit([load_image(p) for p in case.references])
        for query in case.queries:
            record = pipeline.inspect(str(query))
            assert [r.number for r in record.regions] == list(range(1, len(record.regions) + 1))
            _assert_one_tone_per_mark(brain, record)
