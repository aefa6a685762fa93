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


def test_inspect_missing_clip_falls_back(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "empty-cache"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "empty-cache"))
    root = _mvtec_root(tmp_path / "data")
    img = next((root / "plates" / "test" / "scratch").iterdir())
    code = main(["inspect", str(img), "--refs", str(root / "plates" / "train" / "good"), "--detector", "winclip+",
                 "--out", str(tmp_path / "o"), "--json"])
    captured = capsys.readouterr()
    assert code == 0
    assert "huggingface-cli download" in captured.err and "falling back" in captured.err
    assert json.loads(captured.out)["detector"] == "refmatch"
