"""The text the LLaVA-OneVision LLM reads: ChatML turns with `<image>` markers, the detection question,
and the suspicion phrase put before the expert's tokens.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

IMAGE_MARKER = "<image>"
DETECTION_QUESTION = "Are there any defects in the image? Answer Yes or No."
DEFAULT_SYSTEM = "You are a helpful assistant."

_SUSPICION_LEVELS: tuple[tuple[float, str], ...] = (
    (0.3, "slightly"),
    (0.7, "moderately"),
    (math.inf, "highly"),
)


def suspicion_word(score: float) -> str:
    """'slightly' (< 0.3), 'moderately' (< 0.7) or 'highly' for an expert image score."""
    for bound, word in _SUSPICION_LEVELS:
        if score < bound:
            return word
    return _SUSPICION_LEVELS[-1][1]


def suspicion_phrase(score: float) -> str:
    """The text put between the visual tokens and the anomaly tokens."""
    return f"with {suspicion_word(score)} suspicious features: "


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
