"""LLaVA-OneVision + the Look-Twice Feature Matching anomaly expert (the Anomaly-OV design).

Importing this package is cheap: torch and transformers load only when a name below is first used.

    from agent.mllm import load_model
    model = load_model("llava-hf/llava-onevision-qwen2-0.5b-ov-hf", expert="pretrained_expert_05b.pth")
    result = model.detect(image)            # expert score + map, P("Yes") for the detection question
    model.chat(history, "Where is the defect?", images=[image])

Modules: `model` (the composed LLaVA-OneVision wrapper), `loading` (the wrapper from a hub id or a
folder), `chat_format` (ChatML, image markers, the suspicion phrase, the detection question of
prompts/agent.yaml), `expert_tokens` (the expert's block after an image, one layout for transformers
and vLLM), `sequences` (token layout, labels, padding), `yes_no` (P(Yes) from logits), `train` (the
two training stages), `convert_anomaly_ov` (the official stage-2 checkpoint to a LookTwice folder),
`vllm_plugin` (vLLM serving with the expert's tokens). The expert itself, its weights, the checkpoint
loading and the vision tower are perception, in `tools.ltfm`.
"""

from __future__ import annotations

from agent.mllm.lazy_exports import lazy_exports

#: defining module -> the public names it gives the package
_EXPORTS = {
    "agent.mllm.model": ("LookTwiceModel", "DetectionResult"),
    "agent.mllm.chat_format": ("detection_question", "format_question", "suspicion_phrase"),
    "agent.mllm.loading": ("load_model",),
}

__getattr__, __dir__, __all__ = lazy_exports(__name__, _EXPORTS, globals())
