"""One number per region everywhere a person looks: the overlay's tag, the record's `regions`, the
explanation, the web chat's region table and the report's card. Checked on the demo case's stained
plate, inspected for real (two regions: the stain, and a weak response at the image's edge)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

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
    query = next(q for q in case.queries if "stain" in Path(q).name)
    image = load_image(query)
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
    for n in numbers:  # each region is named by its number: "mark 1, ...", "(2) ...", "Region 2, ..."
        assert f"mark {n}," in record.explanation or f"({n}) " in record.explanation or f"Region {n}," in record.explanation
    assert [row[0] for row in region_rows(record)] == numbers and REGION_HEADERS[0] == "#"
    row = Row("stain.png", "stain.png", "stain", status=STATUS_DONE, record=saved, files=files)
    assert [line.split(")")[0] for line in _row_data(0, row)["rg"]] == [f"({n}" for n in numbers]


def test_overlay_tags_carry_each_regions_number_beside_it(stained):
    record, image, _ = stained
    base = np.asarray(record_overlay(record, image))
    for region in record.regions:
        keep = region.number
        region.number = 99  # another number on this region's tag changes pixels only beside this region
        other = np.asarray(record_overlay(record, image))
        region.number = keep
        ys, xs = np.nonzero(np.any(other != base, axis=2))
        assert ys.size, f"region {keep} has no tag"
        x0, y0, x1, y1 = region.bbox
        reach = 40  # a tag sits at the box's upper-left corner, outside it when there is room
        assert xs.min() >= x0 - reach and xs.max() <= max(x1, x0 + reach)
        assert ys.min() >= y0 - reach and ys.max() <= max(y1, y0 + reach)


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
