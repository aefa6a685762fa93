"""`eval` and `inspect` with the model-based detectors, end to end, on tiny random CLIP models."""

from __future__ import annotations

import json

import pytest

from agent.cli import main
from tests.agent.test_cli import _mvtec_root
from tests.tools.clip.tiny import tiny_clip_id

pytest.importorskip("open_clip")


@pytest.mark.parametrize("detector", ["winclip", "winclip+", "fused"])
def test_eval_with_tiny_clip(tmp_path, detector, capsys):
    root = _mvtec_root(tmp_path / "data")
    out = tmp_path / "res.json"
    code = main(["eval", "--data", str(root), "--shots", "2", "--detector", detector, "--model", tiny_clip_id(),
                 "--out", str(out), "--quiet"])
    assert code == 0, capsys.readouterr().err
    res = json.loads(out.read_text())
    assert res["settings"]["detector"] == detector
    for key in ("image_AUROC", "pixel_AUROC", "pixel_AUPRO"):
        assert 0.0 <= res[key] <= 1.0
    assert res["categories"][0]["n_images"] == 6


def test_inspect_missing_clip_stops_unless_fallback(tmp_path, monkeypatch, capsys):
    """A named detector whose weights are not here is a usage error (exit 2, one message); `--fallback`
    goes on with the embedded detector, said once (tests/agent/test_missing_models.py: the hub)."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "empty-cache"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "empty-cache"))
    root = _mvtec_root(tmp_path / "data")
    img = next((root / "plates" / "test" / "scratch").iterdir())
    argv = ["inspect", str(img), "--refs", str(root / "plates" / "train" / "good"), "--detector", "winclip+",
            "--out", str(tmp_path / "o"), "--json"]
    assert main(argv) == 2
    captured = capsys.readouterr()
    assert captured.out == "" and "HF_HUB_OFFLINE is set" in captured.err and "huggingface-cli download" in captured.err
    assert main([*argv, "--fallback"]) == 0
    captured = capsys.readouterr()
    assert captured.err.count("huggingface-cli download") == 1 and "Falling back" in captured.err
    assert json.loads(captured.out)["detector"] == "refmatch"
