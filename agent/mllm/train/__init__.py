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

from agent.mllm.lazy_exports import lazy_exports

#: defining module -> the public names it gives the package
_EXPORTS = {
    "agent.mllm.train.config": (
        "load_config", "apply_overrides", "shipped_configs", "TrainConfigError", "ExpertTrainConfig", "LLMTrainConfig"
    ),
    "agent.mllm.train.data": ("TrainDataError",),
    "agent.mllm.train.checkpoint": ("CheckpointError",),
    "agent.mllm.train.loop": ("TrainResult",),
    "agent.mllm.train.runner": ("train_stage",),
    "agent.mllm.train.evaluate": ("evaluate_detection",),
}

__getattr__, __dir__, __all__ = lazy_exports(__name__, _EXPORTS, globals())
