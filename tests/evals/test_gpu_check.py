"""The GPU check's dry run: the same code path on a CPU with tiny random models (no GPU here)."""

from __future__ import annotations

import json

import pytest

from evals.gpu_check import JSON_NAME, MD_NAME, SECTIONS, main


@pytest.mark.slow
def test_dry_run_covers_every_section(tmp_path, capsys):
    pytest.importorskip("open_clip")
    pytest.importorskip("bitsandbytes")
    out = tmp_path / "gc"
    code = main(["--device", "cpu", "--tiny", "--out", str(out), "--loop-images", "1", "--new-tokens", "4",
                 "--repeats", "2"])
    result = json.loads((out / JSON_NAME).read_text())
    assert code == 0, result["errors"]
    assert set(result["sections"]) == set(SECTIONS) and not result["skipped"]
    s = result["sections"]
    assert [r["what"] for r in s["winclip"]["runs"]] == ["winclip zero-shot", "winclip 4-shot"]
    assert s["sam"]["image_embedding_s"] > 0
    for key, quant in (("mllm_loop_bf16", "none (bf16)"), ("mllm_loop_4bit", "4bit")):
        loop = s[key]
        assert loop["quantization"] == quant and loop["end_to_end_mean_seconds"] > 0
        assert {"look", "conclude"} & set(loop["steps"]), loop["steps"]
    assert s["expert"]["expert_s"] > 0 and s["expert"]["crops"] >= 1
    table = (out / MD_NAME).read_text()
    assert "DRY RUN with tiny random models" in table and "s / image" in table and "images/s" in table


def test_refuses_cuda_without_a_gpu(tmp_path, capsys):
    import torch

    if torch.cuda.is_available():
        pytest.skip("a GPU is here")
    assert main(["--out", str(tmp_path / "x")]) == 2
    assert "--device cpu --tiny" in capsys.readouterr().out
    assert not (tmp_path / "x").exists()
