"""The same paths on a CUDA GPU in bf16 (skipped on CPU machines)."""

from __future__ import annotations

import importlib.util

import pytest
import torch

from agent.mllm.chat_format import format_question
from agent.mllm.loading import load_model
from tests.agent.mllm.conftest import random_image

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
]


def test_bf16_on_gpu(tiny_llava_dir):
    model = load_model(tiny_llava_dir, expert="random", dtype="bfloat16", device_map="cuda:0")
    assert model.device.type == "cuda" and model.expert.device.type == "cuda"
    images = [random_image(50, 90, 1), random_image(40, 40, 2)]
    p = model.yes_probability(images)
    assert all(0 <= v <= 1 for v in p)
    out = model.generate([format_question("Any defect?")] * 2, [[im] for im in images], max_new_tokens=4)
    assert len(out) == 2
    inputs = model.build_inputs([format_question("Any?")], [images[:1]], answers=["No."])
    assert torch.isfinite(model.forward(inputs).loss)


@pytest.mark.skipif(importlib.util.find_spec("bitsandbytes") is None, reason="bitsandbytes not installed")
def test_4bit_on_gpu(tiny_llava_dir):
    model = load_model(
        tiny_llava_dir, expert="random", dtype="bfloat16", quantization="4bit", device_map="cuda:0"
    )
    assert 0 <= model.yes_probability([random_image(40, 40, 3)])[0] <= 1
