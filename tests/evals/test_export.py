"""Exports: MMAD result JSON from a real `eval-dr` run, and an lmms-eval task folder for a QA set
(checked with lmms-eval's conventions without installing it: `!function` YAML tags, utils hooks)."""

from __future__ import annotations

import importlib.util
import json
import math
from pathlib import Path

import pytest
import yaml

from agent.commands import build_qa, eval_dr, export
from evals.export import QUESTION_TYPES, mmad_records
from evals.export.mmad import MMAD_KEYS
from tests.helpers import run_commands
from tests.instruct_data.mvtec_case import write_tree


def run(argv: list[str]) -> int:
    return run_commands(argv, build_qa, eval_dr, export)


@pytest.fixture(scope="module")
def case(tmp_path_factory):
    base = tmp_path_factory.mktemp("export")
    tree = write_tree(base / "data", categories=("plate",), n_train=2, n_good=2, n_bad=2)
    qa = base / "qa"
    assert run(["build-qa", "--data", str(tree), "--out", str(qa)]) == 0
    out = base / "dr"
    argv = ["eval-dr", "--qa", str(qa), "--brain", "rule", "--refs-from", str(tree), "--shots", "2"]
    argv += ["--set", "resolution=96", "--limit", "4", "--no-sbert", "--quiet", "--out", str(out)]
    assert run(argv) == 0
    return {"base": base, "tree": tree, "qa": qa, "run": out}


# ---------------------------------------------------------------------------------------------- MMAD


def test_mmad_export_of_a_real_run(case, capsys):
    out_file = case["base"] / "mmad" / "answers.json"
    capsys.readouterr()
    assert run(["export", "mmad", "--run", str(case["run"]), "--out", str(out_file)]) == 0
    assert "records" in capsys.readouterr().out
    records = json.loads(out_file.read_text())
    rows = [json.loads(line) for line in (case["run"] / "samples.jsonl").read_text().splitlines()]
    n_turns = sum(len(r.get("reasoning", [])) for r in rows)
    assert isinstance(records, list) and len(records) == len(rows) + n_turns and n_turns > 0
    for rec in records:
        assert tuple(rec) == MMAD_KEYS and all(isinstance(v, str) for v in rec.values())
    det = [r for r in records if r["question_type"] == "Anomaly Detection"]
    assert len(det) == len(rows)
    by_image = {r["image"]: r for r in rows}
    for rec in det:
        row = by_image[rec["image"]]
        assert rec["correct_answer"] == ("Yes" if row["anomaly"] else "No")
        assert rec["gpt_answer"] in ("Yes", "No")  # the RuleBrain answers with a leading Yes/No
        assert (rec["gpt_answer"] == rec["correct_answer"]) == row["detection"]["correct"]
        assert rec["question"].startswith("Are there any defects")
    reasoning = [r for r in records if r["question_type"] != "Anomaly Detection"]
    assert {r["question_type"] for r in reasoning} <= set(QUESTION_TYPES)
    first = [r for r in reasoning if r["question_type"] == "Defect Description"]
    assert first and all(r["question"].startswith("Describe the defect") for r in first)
    assert all(r["gpt_answer"] and r["correct_answer"] for r in reasoning)


def test_mmad_records_edge_cases():
    rows = [
        {
            "image": "c/test/x/1.png",
            "anomaly": True,
            "detection": {"question": "Q?", "answer": "The eyes are fine"},
            "reasoning": [
                {"question": "d", "answer": "a1", "reference": "r1"},
                {"question": "c", "answer": "a2", "reference": "r2"},
                {"question": "e", "answer": None, "reference": "r3"},
            ],
        },
        {"image": "c/test/good/2.png", "anomaly": False, "detection": {"question": "Q?", "answer": "no."}},
    ]
    recs = mmad_records(rows, image_prefix="MVTec-AD/")
    assert recs[0]["gpt_answer"] == "The eyes are fine" and recs[0]["correct_answer"] == "Yes"
    assert [r["question_type"] for r in recs[1:4]] == [
        "Defect Description",
        "Defect Analysis",
        "Defect Analysis",
    ]
    assert recs[3]["gpt_answer"] == "" and recs[0]["image"] == "MVTec-AD/c/test/x/1.png"
    assert recs[4]["gpt_answer"] == "No" and recs[4]["correct_answer"] == "No"


def test_mmad_export_usage_error(tmp_path, capsys):
    assert run(["export", "mmad", "--run", str(tmp_path / "none"), "--out", str(tmp_path / "a.json")]) == 2
    assert "no samples file" in capsys.readouterr().err
    assert run(["export"]) == 2


# ---------------------------------------------------------------------------------------------- lmms-eval


class _Function:
    def __init__(self, ref: str) -> None:
        self.ref = ref


class _Loader(yaml.SafeLoader):
    pass


_Loader.add_constructor("!function", lambda loader, node: _Function(loader.construct_scalar(node)))


def _load_utils(folder: Path):
    spec = importlib.util.spec_from_file_location("looktwice_lmms_utils", folder / "utils.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_lmms_eval_task_folder(case, capsys):
    folder = case["base"] / "lmms"
    capsys.readouterr()
    assert run(["export", "lmms-eval", "--qa", str(case["qa"]), "--out", str(folder), "--task", "lt_dr"]) == 0
    assert "documents" in capsys.readouterr().out
    cfg = yaml.load((folder / "lt_dr.yaml").read_text(), Loader=_Loader)
    assert cfg["task"] == "lt_dr" and cfg["dataset_path"] == "json" and cfg["test_split"] == "test"
    assert cfg["output_type"] == "generate_until"
    data_file = Path(cfg["dataset_kwargs"]["data_files"]["test"])
    assert data_file.is_absolute() and data_file.is_file()
    assert cfg["generation_kwargs"]["max_new_tokens"] > 0 and cfg["generation_kwargs"]["do_sample"] is False

    utils = _load_utils(folder)
    refs = [cfg[k] for k in ("doc_to_visual", "doc_to_text", "doc_to_target", "process_results")]
    refs += [m["aggregation"] for m in cfg["metric_list"]]
    for ref in refs:
        assert isinstance(ref, _Function) and ref.ref.startswith("utils.")
        assert callable(getattr(utils, ref.ref.split(".", 1)[1]))
    metrics = [m["metric"] for m in cfg["metric_list"]]
    assert {"dr_accuracy", "dr_f1", "dr_rouge_l"} <= set(metrics)

    docs = [json.loads(line) for line in data_file.read_text().splitlines()]
    test_data = json.loads((case["qa"] / "test_data.json").read_text())
    dr = json.loads((case["qa"] / "dr.json").read_text())
    det = [d for d in docs if d["kind"] == "detection"]
    reasoning = [d for d in docs if d["kind"] == "reasoning"]
    assert len(det) == len(test_data) and len(reasoning) == sum(len(e["questions"]) for e in dr)
    for d in docs:
        assert Path(d["image_path"]).is_file()
        assert Path(d["image_path"]) == (case["tree"] / d["image"]).resolve()
    kw = cfg["lmms_eval_specific_kwargs"]["default"]
    visual = utils.doc_to_visual(det[0])
    assert len(visual) == 1 and visual[0].mode == "RGB" and visual[0].size == (96, 96)
    assert utils.doc_to_text(det[0], kw) == det[0]["question"]
    second = next(d for d in reasoning if d["turn"] == 2)
    text = utils.doc_to_text(second, kw)
    assert text.endswith(second["question"]) and second["history"][0][1] in text

    # a perfect model, then one that always answers "The eyes ..." (unparsable: all wrong)
    def score(answer_of):
        per_doc = [utils.process_results(d, [answer_of(d)]) for d in docs]
        for r in per_doc:
            assert set(r) == set(metrics)
        return {
            m["metric"]: getattr(utils, m["aggregation"].ref.split(".", 1)[1])(
                [r[m["metric"]] for r in per_doc]
            )
            for m in cfg["metric_list"]
        }

    perfect = score(utils.doc_to_target)
    assert perfect["dr_accuracy"] == 1.0 and perfect["dr_f1"] == 1.0 and perfect["dr_rouge_l"] == 1.0
    assert perfect["dr_miss_rate"] == 0.0 and perfect["dr_overkill_rate"] == 0.0
    bad = score(lambda d: "The eyes of the plate look fine")
    assert bad["dr_accuracy"] == 0.0 and bad["dr_recall"] == 0.0 and bad["dr_overkill_rate"] == 1.0
    assert 0.0 <= bad["dr_rouge_l"] < 1.0


def test_lmms_utils_parsing_matches_eval_dr(case, tmp_path):
    from evals.dr.text import rouge_l
    from evals.export import write_lmms_eval_task
    from instruct_data.answers import parse_yes_no

    info = write_lmms_eval_task(case["qa"], tmp_path / "t")
    utils = _load_utils(info["yaml"].parent)
    for text in ["Yes.", "yes, a crack", "  **Yes** - a crack", '"No."', "No defects", "The eyes", "I think yes",
                 "Nope", "", "   ", None]:  # fmt: skip
        assert utils.parse_yes_no(text) is parse_yes_no(text), text
    for a, r in [("the cat sat on the mat", "the cat is on the mat"), ("a crack", "there is a small crack"),
                 ("", "x"), ("Yes, a Crack!", "yes a crack")]:  # fmt: skip
        assert utils.rouge_l(a, r) == pytest.approx(rouge_l(a, r)["f"])
    # a class without good images: overkill undefined there, left out of the mean
    items = [{"kind": "detection", "class": "a", "anomaly": True, "parsed": True}]
    assert utils.aggregate_accuracy(items) == 1.0 and math.isnan(utils.aggregate_overkill_rate(items))
    assert math.isnan(utils.aggregate_rouge_l(items))


def test_lmms_eval_usage_errors(case, tmp_path, capsys):
    assert run(["export", "lmms-eval", "--qa", str(tmp_path / "none"), "--out", str(tmp_path / "o")]) == 2
    assert "QA folder not found" in capsys.readouterr().err
    assert (
        run(["export", "lmms-eval", "--qa", str(case["qa"]), "--out", str(tmp_path / "o"), "--task", "a b"])
        == 2
    )
    assert "task name" in capsys.readouterr().err
