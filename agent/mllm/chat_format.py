"""The text the LLaVA-OneVision LLM reads: ChatML turns with `<image>` markers, the detection question,
and the suspicion phrase put before the expert's tokens.

The detection question lives in one place, `prompts/agent.yaml` (`detection`), worded as one of the
training templates (`prompts/instruct_templates.yaml`), so P(Yes) asks what stage 2 taught; eval-dr
keeps the benchmark's own wording (`prompts/qa_templates.yaml`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

IMAGE_MARKER = "<image>"
#: a plain ChatML chat template (Qwen / LLaVA-OneVision), for tokenizers that come without one
CHATML_TEMPLATE = (
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\\n' + message['content']"
    " + '<|im_end|>' + '\\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}"
    "{% endif %}"
)
DEFAULT_SYSTEM = "You are a helpful assistant."  # the system prompt of training (`LLMTrainConfig.system`)

_SUSPICION_LEVELS: tuple[tuple[float, str], ...] = (
    (0.3, "slightly"),
    (0.7, "moderately"),
    (math.inf, "highly"),
)


def detection_question() -> str:
    """The detection question whose first answer token gives P(Yes): `prompts/agent.yaml`'s `detection`."""
    from prompts import load_prompts

    return str(load_prompts("agent")["detection"]).strip()


def suspicion_word(score: float) -> str:
    """'slightly' (< 0.3), 'moderately' (< 0.7) or 'highly' for an expert image score."""
    for bound, word in _SUSPICION_LEVELS:
        if score < bound:
            return word
    return _SUSPICION_LEVELS[-1][1]


SUSPICION_WORDS: tuple[str, ...] = tuple(word for _, word in _SUSPICION_LEVELS)


def phrase_with(word: str) -> str:
    """The suspicion phrase for one of `SUSPICION_WORDS`."""
    return f"with {word} suspicious features: "


def suspicion_phrase(score: float) -> str:
    """The text put between the visual tokens and the anomaly tokens."""
    return phrase_with(suspicion_word(score))


def format_chat(
    turns: Sequence[tuple[str, str]], system: str | None = DEFAULT_SYSTEM, add_generation_prompt: bool = True
) -> str:
    """ChatML (Qwen / LLaVA-OneVision `qwen_1_5`) text for (role, content) turns; contents may hold
    `<image>` markers."""
    parts = [f"<|im_start|>system\n{system}<|im_end|>\n"] if system else []
    parts += [f"<|im_start|>{role}\n{content}<|im_end|>\n" for role, content in turns]
    if add_generation_prompt:
        parts.append("<|im_start|>assistant\n")
    return "".join(parts)


def format_question(question: str, num_images: int = 1, system: str | None = DEFAULT_SYSTEM) -> str:
    """One user turn: `num_images` image markers, then the question, ready for generation."""
    return format_chat([("user", (IMAGE_MARKER + "\n") * num_images + question)], system=system)
