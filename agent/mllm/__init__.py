"""LLaVA-OneVision + the Look-Twice Feature Matching anomaly expert (the Anomaly-OV design).

Importing this package is cheap: torch and transformers load only when a name below is first used.

    from agent.mllm import load_model
    model = load_model("llava-hf/llava-onevision-qwen2-0.5b-ov-hf", expert="pretrained_expert_05b.pth")
    result = model.detect(image)            # expert score + map, P("Yes") for the detection question
    model.chat(history, "Where is the defect?", images=[image])

Modules: `expert` (the torch module), `expert_io` (save / load / official checkpoint converter),
`model` (the composed LLaVA-OneVision wrapper), `loading` (hub id or folder, dtype, device map, 4/8-bit).
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "AnomalyExpert": "agent.mllm.expert",
    "ExpertConfig": "agent.mllm.expert",
    "ExpertOutput": "agent.mllm.expert",
    "assemble_image_map": "agent.mllm.expert",
    "balanced_bce_loss": "agent.mllm.expert",
    "ExpertWeightsError": "agent.mllm.expert_io",
    "save_expert": "agent.mllm.expert_io",
    "load_expert": "agent.mllm.expert_io",
    "load_official_expert": "agent.mllm.expert_io",
    "convert_official_state_dict": "agent.mllm.expert_io",
    "LookTwiceModel": "agent.mllm.model",
    "DetectionResult": "agent.mllm.model",
    "DETECTION_QUESTION": "agent.mllm.model",
    "format_question": "agent.mllm.model",
    "suspicion_phrase": "agent.mllm.model",
    "DEFAULT_MODEL_ID": "agent.mllm.loading",
    "ModelNotFoundError": "agent.mllm.loading",
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
