"""One number per region everywhere a person looks: the overlay's tag, the record's `regions`, the
explanation, the web chat's region table and the report's card. Checked on a good plate of the demo
case with two dark marks painted on it, inspected for real (two regions)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
from PIL import ImageDraw

from agent.brains.rule import RuleBrain
from agent.inspection import Pipeline
from agent.outputs import record_overlay, write_record
from agent.report.html import DEFECT_WORDS, _row_data
from agent.report.store import STATUS_DONE, Row
from agent.serve.session import REGION_HEADERS, region_rows
from instruct_data.synthesis.demo_case import make_demo_case
from tools.image_io import load_image
from tools.regions import DEFECT_WORDS as MEASURED_WORDS


@pytest.fixture(scope="module")
def stained(tmp_path_factory):
    root = tmp_path_factory.mktemp("numbers")
    case = make_demo_case(root / "case", n_references=4, seed=0)
    pipeline = Pipeline(brain=RuleBrain(), warn=lambda m: None).fit([load_image(p) for p in case.references])
    image = load_image(next(q for q in case.queries if "good" in Path(q).name)).convert("RGB")
    draw = ImageDraw.Draw(image)
    draw.ellipse((50, 50, 80, 76), fill=(40, 40, 40))  # two marks, far apart, of different sizes
    draw.ellipse((170, 150, 210, 200), fill=(30, 30, 30))
    query = root / "two_marks.png"
    image.save(query)
    record = pipeline.inspect(str(query), image)
    assert len(record.regions) >= 2, record.explanation
    return record, image, root


def test_numbers_agree_in_record_explanation_tables_and_card(stained):
    record, image, root = stained
    numbers = [r.number for r in record.regions]
    assert numbers == list(range(1, len(record.regions) + 1))
    files = write_record(record, image, root / "out", "stain")
    saved = json.loads((root / "out" / files["record"]).read_text())
    assert [g["number"] for g in saved["regions"]] == numbers
    assert named_numbers(record.explanation) == set(numbers)  # "mark 1, ...", "(2) ...", "marks 4 and 5", "Region 2"
    assert [row[0] for row in region_rows(record)] == numbers and REGION_HEADERS[0] == "#"
    row = Row("stain.png", "stain.png", "stain", status=STATUS_DONE, record=saved, files=files)
    assert [line.split(")")[0] for line in _row_data(0, row)["rg"]] == [f"({n}" for n in numbers]


def named_numbers(text: str) -> set[int]:
    """The region numbers an explanation names: "mark 1", "(2)", "marks 4 and 5", "Regions 6, 7 and 8"."""
    found = {int(n) for n in re.findall(r"\((\d+)\) ", text)}
    for group in re.findall(r"\b(?:[Mm]arks?|Regions?) (\d+(?:(?:, | and )\d+)*)", text):
        found |= {int(n) for n in re.findall(r"\d+", group)}
    return found


def test_overlay_tags_carry_each_regions_number_beside_it(stained):
    record, image, _ = stained
    side = max(image.size)  # drawn at its own size without the legend, which may move with the tags
    base = np.asarray(record_overlay(record, image, max_side=side))
    for region in record.regions:
        keep = region.number
        region.number = 99  # another number on this region's tag changes pixels only beside this region
        other = np.asarray(record_overlay(record, image, max_side=side))
        region.number = keep
        ys, xs = np.nonzero(np.any(other != base, axis=2))
        assert ys.size, f"region {keep} has no tag"
        centre = np.array([xs.mean(), ys.mean()])
        # the tag sits at its own region's upper-left corner (below it, or inside the image, when the
        # box touches the edge): within a tag's size of one of the box's left corners
        x0, y0, x1, y1 = region.bbox
        corner = min(float(np.hypot(*(centre - np.array(c)))) for c in ((x0, y0), (x0, y1)))
        assert corner <= 24, (keep, region.bbox, centre)


def test_report_counts_every_word_the_measurements_give():
    assert set(MEASURED_WORDS) <= set(DEFECT_WORDS)


def test_report_header_names_the_detector_that_ran_and_counts_edge_words():
    from agent.report.html import render_html, summarize

    def row(i: int, detector: str, explanation: str) -> Row:
        record = {"verdict": "defective", "pred_label": True, "pred_score": 0.9, "threshold": 0.5, "detector": detector,
                  "regions": [], "explanation": explanation}
        return Row(f"p{i}.png", f"p{i}.png", f"p{i}", status=STATUS_DONE, record=record)

    rows = [row(0, "batch", "Defective (score 0.90): mark 1, a small elongated fray on the left."),
            row(1, "batch", "Defective (score 0.90): mark 1, a small compact broken area at the top.")]
    page = render_html(rows, {"settings": {"detector": "auto", "brain": "rule"}})
    assert "detector <b>batch (asked: auto)</b>" in page
    assert summarize(rows)["defect_words"] == {"fray": 1, "broken area": 1}
