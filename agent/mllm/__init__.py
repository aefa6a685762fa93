"""LLaVA-OneVision + the Look-Twice Feature Matching anomaly expert (the Anomaly-OV design).

Importing this package is cheap: torch and transformers load only when a name below is first used.

    from agent.mllm import load_model
    model = load_model("llava-hf/llava-onevision-qwen2-0.5b-ov-hf", expert="pretrained_expert_05b.pth")
    result = model.detect(image)            # expert score + map, P("Yes") for the detection question
    model.chat(history, "Where is the defect?", images=[image])

Modules: `model` (the composed LLaVA-OneVision wrapper), `loading` (the wrapper from a hub id or a
folder), `chat_format` (ChatML, image markers, the suspicion phrase), `sequences` (token layout, labels,
padding), `yes_no` (P(Yes) from logits), `train` (the two training stages). The expert itself, its
weights, the checkpoint loading and the vision tower are perception, in `tools.ltfm`.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "LookTwiceModel": "agent.mllm.model",
    "DetectionResult": "agent.mllm.model",
    "DETECTION_QUESTION": "agent.mllm.chat_format",
    "format_question": "agent.mllm.chat_format",
    "suspicion_phrase": "agent.mllm.chat_format",
    "load_model": "agent.mllm.loading",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'agent.mllm' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))
