"""The VisA-D&R-style QA-set builder on a tiny synthetic MVTec tree."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from agent.commands import build_qa
from evals.dr.reader import load_qa_set
from instruct_data.datasets import Sample
from instruct_data.qa import BuildSettings, QABuildError, build_qa_set, describe_defect, explain_cause
from instruct_data.qa.builder import defect_entry, measure_mask, select_samples, templates, words_of
from tests.helpers import run_commands
from tests.instruct_data.mvtec_case import write_tree


def run(argv: list[str]) -> int:
    return run_commands(argv, build_qa)


@pytest.fixture(scope="module")
def tree(tmp_path_factory) -> Path:
    return write_tree(tmp_path_factory.mktemp("mvtec"), categories=("plate", "tile"))


def test_build_writes_both_files_with_relative_paths(tree, tmp_path, capsys):
    out = tmp_path / "qa"
    assert run(["build-qa", "--data", str(tree), "--out", str(out)]) == 0
    assert "12 images (6 anomalous, 6 good)" in capsys.readouterr().out
    test_data = json.loads((out / "test_data.json").read_text())
    dr = json.loads((out / "dr.json").read_text())
    meta = json.loads((out / "meta.json").read_text())
    assert len(test_data) == 12 and {t["class"] for t in test_data} == {"plate", "tile"}
    assert all(set(t) == {"image", "anomaly", "class"} for t in test_data)
    assert all(not Path(t["image"]).is_absolute() and (tree / t["image"]).is_file() for t in test_data)
    assert sum(t["anomaly"] for t in test_data) == 6
    assert len(dr) == 6 and all(d["defect_type"] == "scratch" for d in dr)
    for d in dr:
        assert set(d) == {"image", "class", "defect_type", "questions", "answers"}
        assert len(d["questions"]) == len(d["answers"]) == 2
        assert "describe" in d["questions"][0].lower() and "prevent" in d["questions"][1].lower()
        assert d["answers"][0].startswith("There is a scratch on the ")
        assert "scraped" in d["answers"][1] and "To prevent it" in d["answers"][1]
    with_mask = [d for d in dr if not d["image"].endswith("002.png")]
    # the drawn scratch: one elongated dark mark; the reference answer says so
    assert all("elongated mark" in d["answers"][0] and "darker" in d["answers"][0] for d in with_mask)
    no_mask = [d for d in dr if d["image"].endswith("002.png")]
    assert len(no_mask) == 2 and all("not marked" in d["answers"][0] for d in no_mask)
    assert meta["data_root"] == str(tree.resolve()) and meta["counts"]["questions"] == 12
    assert meta["per_class"]["plate"] == {"images": 6, "anomalous": 3, "good": 3, "without_mask": 1}
    # the reader of evals/dr reads it back
    qa = load_qa_set(out)
    assert qa.classes == ["plate", "tile"] and len(qa.images) == 12
    assert all(im.path.is_file() for im in qa.images)


def test_category_limit_and_seed(tree, tmp_path):
    a = build_qa_set(BuildSettings(str(tree), str(tmp_path / "a"), category="tile", limit=4, seed=1))
    build_qa_set(BuildSettings(str(tree), str(tmp_path / "b"), category="tile", limit=4, seed=1))
    assert a["counts"] == {"images": 4, "anomalous": 2, "good": 2, "dr_items": 2, "questions": 4}
    assert (tmp_path / "a" / "test_data.json").read_text() == (tmp_path / "b" / "test_data.json").read_text()
    assert all(
        t["image"].startswith("tile/") for t in json.loads((tmp_path / "a" / "test_data.json").read_text())
    )


def test_usage_errors(tree, tmp_path, capsys):
    assert run(["build-qa", "--data", str(tree), "--category", "nope", "--out", str(tmp_path / "x")]) == 2
    assert "category 'nope' not found" in capsys.readouterr().err
    assert run(["build-qa", "--data", str(tmp_path / "missing"), "--out", str(tmp_path / "x")]) == 2
    with pytest.raises(QABuildError):
        build_qa_set(BuildSettings(str(tree), str(tmp_path / "y"), limit=0))


def _samples(n_good: int, per_defect: dict[str, int]) -> list[Sample]:
    out = [Sample(Path(f"good/{i}.png"), False, "good", "c") for i in range(n_good)]
    for d, n in per_defect.items():
        out += [Sample(Path(f"{d}/{i}.png"), True, d, "c") for i in range(n)]
    return out


def test_select_samples_balances_and_spreads_defect_types():
    picked = select_samples(_samples(10, {"a": 10, "b": 1, "c": 10}), limit=8, seed=0, category="c")
    assert len(picked) == 8 and sum(s.gt_label for s in picked) == 4
    types = [s.defect_type for s in picked if s.gt_label]
    assert types.count("b") == 1 and types.count("a") >= 1 and types.count("c") >= 1
    # too few good images: the rest is anomalous
    picked = select_samples(_samples(1, {"a": 10}), limit=6, seed=0, category="c")
    assert sum(not s.gt_label for s in picked) == 1 and len(picked) == 6
    assert select_samples(_samples(2, {"a": 1}), limit=None, seed=0, category="c") == sorted(
        _samples(2, {"a": 1}), key=lambda s: str(s.image_path)
    )


def test_reference_answers_from_a_mask_by_hand():
    tpl = templates()
    mask = np.zeros((90, 90), bool)
    mask[5:8, 2:40] = True  # a thin line in the upper-left, 3 x 38 = 114 px = 1.4 %
    image = np.full((90, 90, 3), 200, np.uint8)
    image[mask] = 40  # dark
    regions = measure_mask(mask, image)
    text = describe_defect("MT_Crack", "magnetic_tile", regions, tpl)
    assert text == (
        "There is a crack on the magnetic tile: a small elongated mark in the upper-left, darker than its "
        "surroundings, covering about 1.4% of the surface."
    )
    mask[60:80, 60:80] = True  # a second, larger blob in the lower-right (same tone as its ring: bright)
    image[60:80, 60:80] = 250
    text = describe_defect("hole", "bottle", measure_mask(mask, image), tpl)
    assert text.startswith(
        "There are two hole marks on the bottle: a medium-sized compact mark in the lower-right, brighter"
    )
    assert "; a small elongated mark in the upper-left" in text


def test_cause_templates_and_fallbacks():
    tpl = templates()
    assert words_of("MT_Blowhole") == "blowhole" and words_of("metal_nut") == "metal nut"
    assert defect_entry("scratch_head", tpl)["words"] == "scratch"
    assert defect_entry("Uneven", tpl)["words"] == "uneven surface"
    assert defect_entry("zzz_unknown", tpl) is None
    assert explain_cause("crack", "tile", None, tpl).startswith("A crack usually comes from stress")
    line = np.zeros((40, 40), bool)
    line[20, 2:38] = True
    assert explain_cause("weird", "tile", measure_mask(line, None), tpl).startswith(
        "An elongated mark like this"
    )
    generic = explain_cause("weird_thing", "metal_nut", None, tpl)
    assert "weird thing" in generic and "metal nut" in generic
