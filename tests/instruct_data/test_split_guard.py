"""Split guards: `data qa --exclude-from INSTRUCT` and `data instruct --exclude-from QA` refuse to build
from images the other set used (by content), unless --allow-overlap; disjoint pairs build."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from agent.commands import data
from instruct_data.qa import BuildSettings, build_qa_set
from instruct_data.qa.overlap import SplitGuard, SplitOverlapError
from tests.helpers import run_commands
from tests.instruct_data.mvtec_case import write_tree


def run(argv: list[str]) -> int:
    return run_commands(["data", *argv], data)


def error_line(capsys: pytest.CaptureFixture[str]) -> str:
    """The command's error: exactly one `looktwice: error:` line."""
    lines = [ln for ln in capsys.readouterr().err.splitlines() if ln.startswith("looktwice: error:")]
    assert len(lines) == 1, lines
    return lines[0]


@pytest.fixture(scope="module")
def tree(tmp_path_factory) -> Path:
    return write_tree(tmp_path_factory.mktemp("mvtec"), categories=("plate", "tile"))


@pytest.fixture(scope="module")
def instruct_from_test(tree: Path, tmp_path_factory) -> Path:
    """Instruction data from the real images (anomalies and some good ones of the test split)."""
    out = tmp_path_factory.mktemp("inst") / "instruct"
    assert run(["instruct", "--data", str(tree), "--out", str(out), "--quiet"]) == 0
    return out


def test_qa_set_over_the_instruct_images_is_refused_in_one_line(tree, instruct_from_test, tmp_path, capsys):
    out = tmp_path / "qa"
    code = run(["qa", "--data", str(tree), "--out", str(out), "--exclude-from", str(instruct_from_test / "instruct.json"), "--quiet"])
    assert code == 2
    line = error_line(capsys)
    # the 6 anomalies and the good test image the instruction data drew are shared
    assert "7 of the 12 images of this QA set have the same content as images of the instruction data" in line
    assert "(e.g. 'plate/test/" in line and "--allow-overlap" in line
    assert not (out / "test_data.json").exists()


def test_allow_overlap_builds_and_records_it(tree, instruct_from_test, tmp_path, capsys):
    out = tmp_path / "qa"
    code = run(["qa", "--data", str(tree), "--out", str(out), "--exclude-from", str(instruct_from_test), "--allow-overlap", "--quiet"])
    assert code == 0
    assert "7 of 12 images in common with the instruction data" in capsys.readouterr().err
    check = json.loads((out / "meta.json").read_text())["split_check"]
    assert check["in_common"] == 7 and check["images_compared"] == 12 and check["allowed"] is True
    assert len(json.loads((out / "test_data.json").read_text())) == 12


def test_instruct_over_the_qa_images_is_refused_then_allowed(tree, tmp_path, capsys):
    qa = tmp_path / "qa"
    build_qa_set(BuildSettings(str(tree), str(qa)))
    out = tmp_path / "instruct"
    assert run(["instruct", "--data", str(tree), "--out", str(out), "--exclude-from", str(qa), "--quiet"]) == 2
    line = error_line(capsys)
    assert "7 of the 12 images of this instruction data have the same content as images of the QA set" in line
    assert not out.exists()  # nothing written
    assert run(["instruct", "--data", str(tree), "--out", str(out), "--exclude-from", str(qa), "--allow-overlap", "--quiet"]) == 0
    stats = json.loads((out / "stats.json").read_text())
    assert stats["split_check"]["in_common"] == 7 and stats["split_check"]["kind"] == "QA set"


def test_disjoint_pair_builds_both_ways(tree, tmp_path, capsys):
    """The safe pair of README: instruction data synthesized from train/good, the QA set from test."""
    inst, qa = tmp_path / "instruct", tmp_path / "qa"
    assert run(["instruct", "--synth-from", str(tree), "--out", str(inst), "--quiet"]) == 0
    assert run(["qa", "--data", str(tree), "--out", str(qa), "--exclude-from", str(inst), "--quiet"]) == 0
    assert "no image in common with the instruction data" in capsys.readouterr().err
    assert json.loads((qa / "meta.json").read_text())["split_check"]["in_common"] == 0
    # and the other way round: the QA set first, then the instruction data that keeps clear of it
    inst2 = tmp_path / "instruct2"
    assert run(["instruct", "--synth-from", str(tree), "--out", str(inst2), "--exclude-from", str(qa), "--quiet"]) == 0
    assert json.loads((inst2 / "stats.json").read_text())["split_check"]["in_common"] == 0


def test_compared_by_content_not_by_path(tree, tmp_path, capsys):
    """A QA image copied under another name into a folder of good images is still caught."""
    qa = tmp_path / "qa"
    build_qa_set(BuildSettings(str(tree), str(qa), category="tile"))
    goods = tmp_path / "goods"
    goods.mkdir()
    shutil.copy(tree / "tile" / "test" / "good" / "001.png", goods / "renamed.png")
    shutil.copy(tree / "tile" / "train" / "good" / "000.png", goods / "train_000.png")
    out = tmp_path / "instruct"
    assert run(["instruct", "--synth-from", str(goods), "--out", str(out), "--exclude-from", str(qa), "--quiet"]) == 2
    line = error_line(capsys)
    assert "1 of the 2 images of this instruction data" in line and "renamed.png" in line
    assert not (out / "images").exists()  # refused before anything was synthesized


def test_other_set_that_cannot_be_read_is_a_usage_error(tree, tmp_path, capsys):
    assert run(["qa", "--data", str(tree), "--out", str(tmp_path / "q"), "--exclude-from", str(tmp_path / "nope")]) == 2
    assert "--exclude-from: cannot read instruction data" in error_line(capsys)
    assert run(["instruct", "--data", str(tree), "--out", str(tmp_path / "i"), "--exclude-from", str(tmp_path / "nope")]) == 2
    assert "--exclude-from: QA folder not found" in error_line(capsys)
    qa = tmp_path / "qa"
    build_qa_set(BuildSettings(str(tree), str(qa), category="plate"))
    meta = json.loads((qa / "meta.json").read_text())
    meta["data_root"] = str(tmp_path / "moved")  # the set's images are gone
    (qa / "meta.json").write_text(json.dumps(meta))
    with pytest.raises(SplitOverlapError, match="cannot read .* of the QA set"):
        SplitGuard.against_qa(qa)
