"""evals.score_parity: same environment, same scores; differences are measured and judged."""

from __future__ import annotations

import json

from evals.score_parity import compare_scores, main, score_dataset
from tests.agent.test_cli import _mvtec_root


def test_run_twice_gives_identical_scores_and_compare_judges(tmp_path, capsys):
    root = _mvtec_root(tmp_path / "data")
    a, b = tmp_path / "a.json", tmp_path / "b.json"
    for out in (a, b):
        assert main(["run", "--data", str(root), "--shots", "2", "--seed", "1", "--out", str(out)]) == 0
    first = json.loads(a.read_text())
    assert len(first["scores"]) == 6 and all(0.0 <= s <= 1.0 for s in first["scores"].values())
    assert first["references"]["plates"] and first["environment"]["torch"]
    capsys.readouterr()
    assert main(["compare", str(a), str(b)]) == 0
    assert json.loads(capsys.readouterr().out)["max_abs_diff"] == 0.0
    shifted = dict(first, scores={k: v + 2e-4 for k, v in first["scores"].items()})
    b.write_text(json.dumps(shifted))
    assert main(["compare", str(a), str(b), "--tol", "1e-4"]) == 1
    fewer = dict(first, scores=dict(list(first["scores"].items())[:3]))
    b.write_text(json.dumps(fewer))
    assert main(["compare", str(a), str(b)]) == 2


def test_compare_reports_the_worst_image():
    a = {"scores": {"x.png": 0.2, "y.png": 0.9}}
    b = {"scores": {"x.png": 0.2, "y.png": 0.4}}
    summary = compare_scores(a, b)
    assert summary["worst_image"] == "y.png" and abs(summary["max_abs_diff"] - 0.5) < 1e-12
    assert summary["same_verdicts"] == 1 and summary["images"] == 2
    assert score_dataset.__doc__
