"""The `looktwice` command line end to end: demo, inspect (bad inputs mixed in), eval, help."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from agent.cli import main
from instruct_data.synthesis.demo_case import brushed_plate, draw_scratch, make_demo_case
from tests.tools.test_image_io import _bomb, _text_as_png, _truncated_jpeg, _zero_byte


@pytest.fixture(scope="module")
def demo(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("case")
    make_demo_case(root, n_references=3, seed=2, size=128)
    return root


def _plate(rng: np.random.Generator, size: int = 128) -> Image.Image:
    return Image.fromarray((brushed_plate(rng, size) * 255).astype(np.uint8))


def test_help_is_fast_and_lists_commands():
    out = subprocess.run(
        [sys.executable, "-c", "import sys, agent.cli\ntry:\n    agent.cli.main(['--help'])\nexcept SystemExit:\n    pass\nprint('torch' in sys.modules)"],
        capture_output=True, text=True,
    )
    assert "inspect" in out.stdout and "eval" in out.stdout and "demo" in out.stdout
    assert out.stdout.strip().endswith("False"), "--help must not import torch"


def test_no_command_is_a_usage_error(capsys):
    assert main([]) == 2


def test_demo_writes_outputs(tmp_path, capsys):
    # the default 4 references: with 3, the promise is one false alarm in 4 good images, so a good plate may be flagged
    assert main(["demo", "--out", str(tmp_path / "d")]) == 0
    results = tmp_path / "d" / "results"
    good = json.loads((results / "plate_good.json").read_text())
    scratch = json.loads((results / "plate_scratch.json").read_text())
    assert good["verdict"] == "good" and scratch["verdict"] == "defective"
    assert scratch["regions"] and scratch["explanation"].startswith("Defective")
    for key in ("anomaly_map", "pred_mask", "overlay"):
        assert (results / scratch[key]).is_file()
    assert "Outputs are in" in capsys.readouterr().out


def test_inspect_mixed_bad_inputs(tmp_path, demo, capsys):
    folder = tmp_path / "inputs"
    folder.mkdir()
    rng = np.random.default_rng(5)
    _plate(rng).save(folder / "ok_a.png")
    scratched, _ = draw_scratch(brushed_plate(rng, 128), rng)
    Image.fromarray((scratched * 255).astype(np.uint8)).save(folder / "ok_scratch.jpg")
    bad = [_zero_byte(folder), _truncated_jpeg(folder), _text_as_png(folder), _bomb(folder)]
    grey16 = (np.asarray(_plate(rng).convert("L"), dtype=np.uint16) * 257)
    Image.fromarray(grey16).save(folder / "ok_16bit.png")
    _plate(rng).convert("CMYK").save(folder / "ok_cmyk.jpg")
    _plate(rng).convert("RGBA").save(folder / "ok_rgba.png")
    Image.new("RGB", (1, 1), (120, 120, 120)).save(folder / "ok_tiny.png")
    out = tmp_path / "out"
    code = main(["inspect", str(folder), "--refs", str(demo / "references"), "--out", str(out), "--resolution", "128"])
    captured = capsys.readouterr()
    assert code == 1
    for p in bad:
        lines = [ln for ln in captured.err.splitlines() if p.name in ln]
        assert len(lines) == 1, f"one error line for {p.name}: {captured.err}"
    for name in ("ok_a", "ok_scratch", "ok_16bit", "ok_cmyk", "ok_rgba", "ok_tiny"):
        rec = json.loads((out / f"{name}.json").read_text())
        assert rec["verdict"] in ("good", "review", "defective") and 0.0 <= rec["pred_score"] <= 1.0
        assert (out / f"{name}_overlay.png").is_file()
    assert "Traceback" not in captured.err


def test_inspect_json_lines_and_exit_zero(tmp_path, demo, capsys):
    queries = sorted((demo / "queries").iterdir())
    code = main(["inspect", *map(str, queries), "--refs", str(demo / "references"), "--out", str(tmp_path), "--json",
                 "--resolution", "128"])
    assert code == 0
    records = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [Path(r["image_path"]).name for r in records] == [q.name for q in queries]
    by_name = {Path(r["image_path"]).name: r for r in records}
    assert by_name["plate_scratch.png"]["pred_score"] > by_name["plate_good.png"]["pred_score"]
    assert {"regions", "explanation", "trace", "threshold", "pred_label"} <= set(records[0])


def test_same_stem_gets_distinct_outputs(tmp_path, demo, capsys):
    a, b = tmp_path / "a", tmp_path / "b"
    for d in (a, b):
        d.mkdir()
        Image.open(demo / "queries" / "plate_good.png").save(d / "part.png")
    code = main(["inspect", str(a / "part.png"), str(b / "part.png"), "--refs", str(demo / "references"),
                 "--out", str(tmp_path / "o"), "--resolution", "128"])
    assert code == 0
    assert (tmp_path / "o" / "part.json").is_file() and (tmp_path / "o" / "part-2.json").is_file()


def test_references_problems(tmp_path, demo, capsys):
    img = str(demo / "queries" / "plate_good.png")
    empty = tmp_path / "empty"
    empty.mkdir()
    assert main(["inspect", img, "--refs", str(empty), "--out", str(tmp_path / "o")]) == 2
    assert "no readable reference images" in capsys.readouterr().err
    assert main(["inspect", img, "--refs", str(tmp_path / "nope"), "--out", str(tmp_path / "o")]) == 2
    assert "does not exist" in capsys.readouterr().err
    # Unreadable references are skipped with a warning; mixed sizes are fine.
    mixed = tmp_path / "mixed"
    mixed.mkdir()
    _zero_byte(mixed)
    rng = np.random.default_rng(0)
    _plate(rng, 128).save(mixed / "r1.png")
    _plate(rng, 128).resize((160, 96)).save(mixed / "r2.png")
    assert main(["inspect", img, "--refs", str(mixed), "--out", str(tmp_path / "o2"), "--resolution", "128"]) == 0
    assert "reference skipped" in capsys.readouterr().err


def test_no_references_falls_back_to_zero_shot(tmp_path, demo, capsys):
    img = str(demo / "queries" / "plate_scratch.png")
    assert main(["inspect", img, "--out", str(tmp_path), "--json"]) == 0
    captured = capsys.readouterr()
    assert "zero-shot fallback" in captured.err
    assert json.loads(captured.out)["detector"] == "selfsim"


def test_bad_detector_setting_is_a_usage_error(tmp_path, demo, capsys):
    img = str(demo / "queries" / "plate_good.png")
    assert main(["inspect", img, "--refs", str(demo / "references"), "--set", "nonsense=1"]) == 2
    assert "unknown detector settings" in capsys.readouterr().err
    assert main(["inspect", img, "--detector", "nope"]) == 2
    assert "available" in capsys.readouterr().err


def _mvtec_root(root: Path) -> Path:
    rng = np.random.default_rng(0)
    cat = root / "plates"
    for i in range(4):
        (cat / "train" / "good").mkdir(parents=True, exist_ok=True)
        _plate(rng, 96).save(cat / "train" / "good" / f"{i:03d}.png")
    (cat / "test" / "good").mkdir(parents=True)
    (cat / "test" / "scratch").mkdir(parents=True)
    (cat / "ground_truth" / "scratch").mkdir(parents=True)
    for i in range(3):
        _plate(rng, 96).save(cat / "test" / "good" / f"{i:03d}.png")
        img, mask = draw_scratch(brushed_plate(rng, 96), rng)
        Image.fromarray((img * 255).astype(np.uint8)).save(cat / "test" / "scratch" / f"{i:03d}.png")
        Image.fromarray(mask.astype(np.uint8) * 255).save(cat / "ground_truth" / "scratch" / f"{i:03d}_mask.png")
    return root


def test_eval_writes_metrics_json(tmp_path, capsys):
    root = _mvtec_root(tmp_path / "data")
    out = tmp_path / "res.json"
    code = main(["eval", "--data", str(root), "--shots", "2", "--seed", "1", "--resolution", "96", "--out", str(out),
                 "--quiet"])
    assert code == 0
    res = json.loads(out.read_text())
    for key in ("image_AUROC", "pixel_AUROC", "pixel_AUPRO", "image_F1Max", "pixel_F1Max", "throughput_ips"):
        assert 0.0 <= res[key] <= 1.0 or key == "throughput_ips"
    assert res["image_AUROC"] == 1.0
    assert res["per_defect_image_AUROC"] == {"scratch": 1.0}
    images = res["categories"][0]["images"]  # every test image, with its scores and verdict
    assert sorted({i["defect_type"] for i in images}) == ["good", "scratch"]
    assert all(i["verdict"] in ("good", "review", "defective") and 0.0 <= i["pred_score"] <= 1.0 for i in images)
    assert res["settings"]["shots"] == 2 and res["settings"]["detector_options"] == {"resolution": 96}
    assert "plates" in capsys.readouterr().out


def test_eval_usage_errors(tmp_path, capsys):
    root = _mvtec_root(tmp_path / "data")
    assert main(["eval", "--data", str(root), "--shots", "50", "--quiet"]) == 2
    assert "fewer than --shots" in capsys.readouterr().err
    assert main(["eval", "--data", str(root), "--category", "nope", "--quiet"]) == 2
    assert main(["eval", "--data", str(tmp_path / "missing"), "--quiet"]) == 2
