"""`python -m evals.ablation`: variants x seeds through the eval code, a markdown row per variant, and a
JSON whose runs `evals.redecide` can decide again (the settings are chosen on validation this way)."""

from __future__ import annotations

import json

from evals.ablation import main
from evals.redecide import main as redecide_main
from tests.instruct_data.mvtec_case import write_tree


def test_ablation_rows_and_runs_feed_redecide(tmp_path, capsys) -> None:
    root = write_tree(tmp_path / "data", n_train=4, n_good=3, n_bad=3)
    out = tmp_path / "ablation.json"
    argv = ["--data", str(root), "--categories", "plate", "--seeds", "0,1", "--shots", "3",
            "--variant", "base:resolution=96", "--variant", "no-views:resolution=96,augment=[]", "--json", str(out)]
    assert main(argv) == 0
    table = capsys.readouterr().out.splitlines()
    assert table[0].startswith("| variant | plate |") and [r.split(" | ")[0] for r in table[2:]] == ["| base", "| no-views"]
    runs = json.loads(out.read_text())["runs"]
    assert [(r["variant"], r["seed"]) for r in runs] == [("base", 0), ("base", 1), ("no-views", 0), ("no-views", 1)]
    for r in runs:
        assert 0.0 <= r["image_AUROC"] <= 1.0 and len(r["images"]) == 6
        assert len(r["good_samples"]) == 3  # one held-out score per reference
    rows_path = tmp_path / "rows.json"
    assert redecide_main([str(out), "--calibration", "references", "--false-alarm-rate", "0.2", "--json", str(rows_path)]) == 0
    rows = json.loads(rows_path.read_text())
    assert len(rows) == 4 and all(r["estimated_false_alarm_rate"] == 0.25 for r in rows)  # 3 references: 1/4
