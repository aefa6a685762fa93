"""LLaVA-OneVision checkpoints: folders, missing models, dtypes, 4/8-bit settings (no model is loaded)."""

from __future__ import annotations

import importlib.util

import pytest
import torch

from tools.ltfm.checkpoints import (
    QUANT_SKIP_MODULES,
    ModelNotFoundError,
    quantization_config,
    resolve_model_path,
    torch_dtype,
)


def test_import_is_light():
    from tests.helpers import fresh_python

    code = "import sys, tools.ltfm, tools.detectors.ltfm; print('torch' in sys.modules)"
    assert fresh_python(code) == "False"


def test_missing_folder_gives_one_line(tmp_path):
    with pytest.raises(ModelNotFoundError) as err:
        resolve_model_path(str(tmp_path / "models" / "llava"))
    assert "no such folder" in str(err.value) and "\n" not in str(err.value)
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelNotFoundError, match="config.json"):
        resolve_model_path(tmp_path / "empty")


def test_quantization_config_skips_vision_projector_head():
    if importlib.util.find_spec("bitsandbytes") is None:
        pytest.skip("bitsandbytes not installed")
    q4 = quantization_config("4bit", torch.float32)
    assert q4.load_in_4bit and q4.llm_int8_skip_modules == QUANT_SKIP_MODULES
    assert quantization_config("8bit").load_in_8bit
    assert quantization_config(None) is None
    with pytest.raises(ValueError):
        quantization_config("3bit")


def test_dtype_names():
    assert torch_dtype("auto") == "auto" and torch_dtype(None) == "auto"
    assert torch_dtype("bf16") is torch.bfloat16 and torch_dtype(torch.float16) is torch.float16
    with pytest.raises(ValueError, match="unknown dtype"):
        torch_dtype("float7")
