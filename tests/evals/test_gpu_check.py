"""The GPU check's dry run: the same code path on a CPU with tiny models (no GPU here).

`--device cpu --tiny --model <tiny folder>` must exit 0 with every section's figures (vLLM, absent
here, says so); a brain call made to fail must turn the exit code to 1, with the fallback counted."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from evals.gpu_check import JSON_NAME, MD_NAME, SECTIONS, main


@pytest.fixture(scope="module")
def tiny_folder(tmp_path_factory) -> Path:
    """A tiny LookTwice folder as stage 2 writes it (random weights, a random expert, the marker)."""
    import torch

    from agent.mllm.loading import load_model
    from agent.mllm.testing import build_tiny_llava

    root = tmp_path_factory.mktemp("gpu_check")
    torch.manual_seed(0)
    model = load_model(build_tiny_llava(root / "tiny", speaks=True), expert="random", dtype="float32")
    model.save_pretrained(str(root / "looktwice"), trained_by="test: stage 2 stand-in")
    return root / "looktwice"


@pytest.mark.slow
def test_dry_run_with_a_model_covers_every_section(tiny_folder, tmp_path):
    pytest.importorskip("open_clip")
    pytest.importorskip("bitsandbytes")
    out = tmp_path / "gc"
    code = main(["--device", "cpu", "--tiny", "--model", str(tiny_folder), "--out", str(out), "--loop-images", "1",
                 "--new-tokens", "4", "--repeats", "2"])
    result = json.loads((out / JSON_NAME).read_text())
    assert code == 0, result["failed"]
    assert set(result["sections"]) == set(SECTIONS) and not result["skipped"] and not result["errors"]
    s = result["sections"]
    assert [r["what"] for r in s["winclip"]["runs"]] == ["winclip zero-shot", "winclip 4-shot"]
    assert s["sam"]["image_embedding_s"] > 0
    for key, quant in (("ask_bf16", "none"), ("ask_4bit", "4bit")):
        ask = s[key]
        assert ask["quantization"] == quant and ask["seconds_per_image_p50"] > 0 and ask["seconds_per_image_p95"] > 0
        assert ask["tokens_per_second"] > 0 and ask["peak_rss_MB"] > 0
        assert ask["brain_calls"] >= 3 and ask["fallbacks"] == 0 and ask["brain_errors"] == 0
    assert s["report"]["images"] == 1 and s["report"]["seconds_per_image_p50"] > 0 and s["report"]["fallbacks"] == 0
    assert s["expert"]["expert_s"] > 0 and s["expert"]["crops"] >= 1
    assert s["ask_bf16"]["expert_tokens"] is True  # the folder's marker: the LLM reads the expert's tokens
    for key in ("train_stage1", "train_stage2_lora", "train_stage2_qlora"):
        assert s[key]["steps"] == 1 and s[key]["peak_rss_MB"] > 0
    assert "not installed" in s["vllm"]["not_run"]
    assert result["fallbacks"] == {"ask_bf16": 0, "ask_4bit": 0, "report": 0}
    table = (out / MD_NAME).read_text()
    assert "DRY RUN with tiny models" in table and "p95" in table and "fallbacks 0 of" in table


def test_a_brain_call_that_falls_back_fails_the_check(tiny_folder, tmp_path, monkeypatch, capsys):
    """The model's generation made to fail: the loop still answers (the rule brain's words), but the
    check counts the fallbacks and exits 1."""
    from agent.mllm.model import LookTwiceModel

    def broken(self, *args, **kwargs):
        raise RuntimeError("CUDA error: an illegal memory access was encountered (made to fail by the test)")

    monkeypatch.setattr(LookTwiceModel, "generate", broken)
    out = tmp_path / "gc"
    code = main(["--device", "cpu", "--tiny", "--model", str(tiny_folder), "--out", str(out), "--sections", "ask_bf16",
                 "--loop-images", "1", "--new-tokens", "2"])
    result = json.loads((out / JSON_NAME).read_text())
    assert code == 1
    ask = result["sections"]["ask_bf16"]
    assert ask["fallbacks"] >= 2 and result["fallbacks"] == {"ask_bf16": ask["fallbacks"]}
    assert any("fell back" in line for line in result["failed"])
    assert "FAILED ask_bf16" in capsys.readouterr().out


def test_a_model_that_is_not_there_fails_the_check(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty"))
    out = tmp_path / "gc"
    code = main(["--device", "cpu", "--tiny", "--model", "looktwice-test/no-such-model", "--out", str(out),
                 "--sections", "ask_bf16"])
    result = json.loads((out / JSON_NAME).read_text())
    assert code == 1 and "no-such-model" in result["errors"]["ask_bf16"]


def test_refuses_cuda_without_a_gpu(tmp_path, capsys):
    import torch

    if torch.cuda.is_available():
        pytest.skip("a GPU is here")
    assert main(["--out", str(tmp_path / "x")]) == 2
    assert "--device cpu --tiny" in capsys.readouterr().out
    assert not (tmp_path / "x").exists()
