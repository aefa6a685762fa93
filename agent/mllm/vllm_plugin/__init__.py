"""The LookTwice vLLM plugin: `vllm serve <LookTwice folder>` serves LLaVA-OneVision *with* the Look-Twice
expert's tokens.

How vLLM finds it: the distribution declares the entry point
`[project.entry-points."vllm.general_plugins"] looktwice = "agent.mllm.vllm_plugin:register"`, which vLLM
calls in every process it starts; `register` adds the architecture `LookTwiceLlavaOnevisionForConditionalGeneration`
(lazily: nothing of vLLM or CUDA is imported here). A folder written by stage 2 or a converter declares
that architecture in its `config.json` (`tools.ltfm.expert_marker.mark_trained_with_expert`), so vLLM
without the plugin refuses it rather than serving it as plain LLaVA-OneVision without the expert.

Install beside vLLM (its own pins of torch and transformers): `pip install vllm` then
`pip install --no-deps -e <looktwice checkout>` in the same environment (`.ci/make_vllm_venv.sh`).
"""

from __future__ import annotations

from tools.ltfm.expert_marker import LOOKTWICE_ARCHITECTURE

MODEL_CLASS = "agent.mllm.vllm_plugin.model:LookTwiceLlavaOnevisionForConditionalGeneration"


def register() -> None:
    """vLLM's `vllm.general_plugins` hook: register the LookTwice architecture (safe to call twice)."""
    from vllm import ModelRegistry

    if LOOKTWICE_ARCHITECTURE not in ModelRegistry.get_supported_archs():
        ModelRegistry.register_model(LOOKTWICE_ARCHITECTURE, MODEL_CLASS)


__all__ = ["LOOKTWICE_ARCHITECTURE", "MODEL_CLASS", "register"]
