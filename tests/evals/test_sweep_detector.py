"""The tuning script runs on a tiny MVTec tree and prints one JSON line with the metrics."""

from __future__ import annotations

import json

from evals.sweep_detector import main
from tests.agent.test_cli import _mvtec_root


def test_sweep_prints_metrics(tmp_path, capsys):
    root = _mvtec_root(tmp_path / "data")
    main(["--data", str(root), "--shots", "2", "--every", "1", "--set", "resolution=96"])
    res = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert res["images"] == 6 and res["settings"] == {"resolution": 96}
    assert res["image_AUROC"] == 1.0
    assert set(res["at_threshold"]) == {"accuracy", "precision", "recall"}
