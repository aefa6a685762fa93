"""`looktwice bench`: synthetic mode end to end (JSONL + markdown), warm-up excluded, loop steps,
tokens/s from a brain's reported calls, and usage errors. Timings are checked for presence only."""

from __future__ import annotations

import json

import pytest

from agent.commands import bench
from evals.bench.runner import machine_description, markdown_summary, summarize_traces
from tests.helpers import run_commands

KEYS = {
    "timestamp",
    "mode",
    "detector",
    "brain",
    "device",
    "images",
    "references",
    "warmup_runs",
    "repeat",
    "timed_runs",
    "load_seconds",
    "brain_load_seconds",
    "detector_load_seconds",
    "detector_fit_seconds",
    "detector_predict_mean_seconds",
    "end_to_end_mean_seconds",
    "timed_seconds",
    "images_per_second",
    "steps",
    "peak_rss_MB",
    "machine",
}


def _bench(argv: list[str]) -> int:
    return run_commands(["bench", *argv], bench)


def _lines(path):
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def _non_negative_seconds(res: dict) -> None:
    for key, value in res.items():
        if key.endswith("_seconds"):
            assert value >= 0, key
    for step in res["steps"].values():
        assert step["calls"] >= 1 and step["total_seconds"] >= 0 and step["mean_seconds"] >= 0
    assert res["images_per_second"] > 0 and res["peak_rss_MB"] > 0


def test_synthetic_appends_one_line_per_run(tmp_path, capsys):
    out = tmp_path / "b" / "bench.jsonl"
    common = ["--synthetic", "3", "--size", "96", "--set", "resolution=96", "--out", str(out)]
    assert _bench([*common, "--warmup", "2", "--repeat", "2"]) == 0
    printed = capsys.readouterr().out
    assert "| stage |" in printed and "images/s" in printed
    (res,) = _lines(out)
    assert set(res) >= KEYS
    assert res["mode"] == "inspect" and res["brain"] == "rule" and res["device"] == "cpu"
    assert res["images"] == 3 and res["references"] == 4
    # warm-up runs are not counted: 3 images x 2 passes
    assert res["warmup_runs"] == 2 and res["timed_runs"] == 6
    # the second look is off there: its step is recorded as skipped (with why), match not at all
    assert set(res["steps"]) == {"load", "look", "zoom_recheck", "decide", "explain", "conclude"}
    assert all(s["calls"] == 6 for s in res["steps"].values())
    assert "tokens_per_second" not in res  # the RuleBrain generates no tokens
    assert {"cpu", "cores", "torch_threads", "torch"} <= set(res["machine"])
    assert "cuda_device" not in res["machine"]
    _non_negative_seconds(res)
    md = out.with_suffix(".md")
    assert md.is_file() and "| look | 6 |" in md.read_text(encoding="utf-8")

    assert _bench([*common, "--warmup", "0", "--loop", "--json"]) == 0
    line = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    first, second = _lines(out)
    assert first == res and second == line
    assert second["mode"] == "loop" and second["timed_runs"] == 3 and second["warmup_runs"] == 0
    assert {"look", "zoom_recheck", "match", "answer"} <= set(second["steps"])
    _non_negative_seconds(second)
    assert md.read_text(encoding="utf-8").count("### bench ") == 2


def test_tokens_per_second_only_when_reported():
    traces = [
        [
            {"step": "look", "seconds": 0.1},
            {
                "step": "answer",
                "seconds": 0.5,
                "model_call": {"seconds": 0.5, "usage": {"completion_tokens": 10}},
            },
        ],
        [
            {"step": "look", "seconds": 0.3},
            {"step": "answer", "seconds": 0.5, "model_call": {"seconds": 0.5, "new_tokens": 30}},
        ],
    ]
    steps, gen = summarize_traces(traces)
    assert steps["look"] == {"calls": 2, "total_seconds": 0.4, "mean_seconds": 0.2}
    assert gen == {"generated_tokens": 40, "tokens_per_second": 40.0}
    assert summarize_traces([[{"step": "answer", "seconds": 0.2, "model_call": {"seconds": 0.2}}]])[1] == {}


def test_markdown_and_machine():
    machine = machine_description("cpu")
    assert machine["cores"] >= 1 and isinstance(machine["torch"], str)
    res = {
        "timestamp": "t", "mode": "inspect", "detector": "refmatch", "brain": "rule", "device": "cpu",
        "images": 1, "source": "s", "references": 1, "warmup_runs": 0, "timed_runs": 1,
        "brain_load_seconds": 0.0, "detector_load_seconds": 0.1, "steps": {"look": {"calls": 1, "mean_seconds": 0.1, "total_seconds": 0.1}},
        "end_to_end_mean_seconds": 0.1, "timed_seconds": 0.1, "images_per_second": 10.0, "peak_rss_MB": 1.0,
        "tokens_per_second": 5.0, "machine": machine,
    }  # fmt: skip
    text = markdown_summary(res)
    assert "| look | 1 |" in text and "| 10.0 | 1.0 | 5.0 |" in text


@pytest.mark.parametrize(
    "argv",
    [
        ["--synthetic", "0"],
        ["--repeat", "0"],
        ["--warmup", "-1"],
        ["--synthetic", "2", "--images", "x"],
    ],
)
def test_bad_arguments_exit_2(argv, tmp_path):
    with pytest.raises(SystemExit) as exc:
        _bench([*argv, "--out", str(tmp_path / "b.jsonl")])
    assert exc.value.code == 2
    assert not (tmp_path / "b.jsonl").exists()


@pytest.mark.parametrize(
    "argv",
    [
        ["--images", "does-not-exist"],
        ["--synthetic", "2", "--detector", "no-such-detector"],
        ["--synthetic", "2", "--brain", "no-such-brain"],
        ["--synthetic", "2", "--set", "resolution"],
        ["--synthetic", "2", "--device", "tpu"],
        ["--synthetic", "2", "--refs", "no-such-refs"],
    ],
)
def test_setup_errors_exit_2(argv, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert _bench([*argv, "--out", str(tmp_path / "b.jsonl")]) == 2
    assert "looktwice: error:" in capsys.readouterr().err
    assert not (tmp_path / "b.jsonl").exists()


def test_cuda_without_a_gpu_exits_2(tmp_path, capsys):
    torch = pytest.importorskip("torch")
    if torch.cuda.is_available():
        pytest.skip("a CUDA device is available")
    assert _bench(["--synthetic", "2", "--device", "cuda", "--out", str(tmp_path / "b.jsonl")]) == 2
    assert "no CUDA device" in capsys.readouterr().err
