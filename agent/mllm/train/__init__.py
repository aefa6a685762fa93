"""Training of LookTwice's MLLM, in the two stages of Anomaly-OV (DESIGN.md section 4).

- Stage 1 (`looktwice train expert`): the anomaly expert alone, balanced BCE on image labels (and,
  with `mask_loss_weight > 0`, the masks), SigLIP tower frozen. Output: `ltfm_expert.safetensors`.
- Stage 2 (`looktwice train llm`): projector + LLM on LLaVA-JSON instruction data, expert frozen;
  full fine-tuning, LoRA or QLoRA. Output: a model folder `load_model` reads.

Modules: `config` (YAML settings, checked), `data` (samples, conversations, batch order), `losses`
(plain torch), `loop` (accelerate loop, checkpoints via `checkpoint`), `expert_stage`, `llm_stage`,
`evaluate` (held-out Yes/No accuracy), `runner` (`train_stage`, what the CLI calls). Shipped configs
are in `configs/`. Importing this package is cheap; accelerate and peft load when a stage runs.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "load_config": "agent.mllm.train.config",
    "apply_overrides": "agent.mllm.train.config",
    "shipped_configs": "agent.mllm.train.config",
    "TrainConfigError": "agent.mllm.train.config",
    "ExpertTrainConfig": "agent.mllm.train.config",
    "LLMTrainConfig": "agent.mllm.train.config",
    "TrainDataError": "agent.mllm.train.data",
    "CheckpointError": "agent.mllm.train.checkpoint",
    "TrainResult": "agent.mllm.train.loop",
    "train_stage": "agent.mllm.train.runner",
    "evaluate_detection": "agent.mllm.train.evaluate",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'agent.mllm.train' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value
