"""`python -m evals.redecide`: a finished eval decided again at other rates, without rescoring."""

from __future__ import annotations

import json

import numpy as np

from evals.redecide import main, redecide


def _result(seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    good = np.exp(rng.normal(0.0, 0.2, 600))  # log-normal good scores, as the batch model assumes
    bad = np.exp(rng.normal(0.8, 0.3, 200))
    images = [{"defect_type": "good", "raw_score": float(g), "key": f"{seed}-good-{i}"} for i, g in enumerate(good)]
    images += [{"defect_type": "scratch", "raw_score": float(b), "key": f"{seed}-bad-{i}"} for i, b in enumerate(bad)]
    refs = np.exp(rng.normal(0.0, 0.2, 40))
    return {"categories": [{"category": "plates", "images": images, "good_samples": refs.tolist(),
                            "good_samples_exchangeable": True}]}


def test_batch_and_reference_modes_keep_the_rate_asked_for() -> None:
    """Averaged over draws, the measured false-alarm rate is the one asked for (a single draw of 600
    good images, or 40 references, varies by a few points)."""
    for mode, tolerance in (("batch", (0.02, 0.045)), ("references", (0.035, 0.06))):
        for rate, tol in zip((0.05, 0.2), tolerance, strict=True):
            rows = [redecide(_result(seed)["categories"][0], mode, rate) for seed in range(8)]
            assert abs(np.mean([r["false_alarm_rate"] for r in rows]) - rate) < tol, (mode, rate)
            assert all(r["requested_false_alarm_rate"] == rate for r in rows)
        strict, loose = redecide(_result()["categories"][0], mode, 0.05), redecide(_result()["categories"][0], mode, 0.2)
        assert loose["recall"] > strict["recall"]


def test_cli_writes_rows_and_refuses_results_without_scores(tmp_path, capsys) -> None:
    path = tmp_path / "eval.json"
    path.write_text(json.dumps(_result()))
    out = tmp_path / "rows.json"
    assert main([str(path), "--false-alarm-rate", "0.05,0.2", "--calibration", "batch,references", "--json", str(out)]) == 0
    rows = json.loads(out.read_text())
    assert [(r["calibration"], r["requested_false_alarm_rate"]) for r in rows] == [
        ("batch", 0.05), ("batch", 0.2), ("references", 0.05), ("references", 0.2)]
    assert "batch@0.2" in capsys.readouterr().out
    old = tmp_path / "old.json"
    old.write_text(json.dumps({"categories": [{"category": "plates"}]}))
    assert main([str(old)]) == 2
    assert "no per-image scores" in capsys.readouterr().err


def test_ablation_runs_are_decided_per_run(tmp_path, capsys) -> None:
    """An ablation's JSON keeps each run's scores: every (variant, seed) is decided again."""
    runs = [{**_result(seed)["categories"][0], "variant": "base", "seed": seed} for seed in (0, 1)]
    path = tmp_path / "ablation.json"
    path.write_text(json.dumps({"runs": runs}))
    out = tmp_path / "rows.json"
    assert main([str(path), "--calibration", "references", "--json", str(out)]) == 0
    rows = json.loads(out.read_text())
    assert [(r["variant"], r["seed"]) for r in rows] == [("base", 0), ("base", 1)]
    assert all(0.0 <= r["false_alarm_rate"] <= 0.2 for r in rows)
    assert "plates variant base seed 1 references@0.05" in capsys.readouterr().out
