"""Held-out detection check for a trained model: does it answer "Is there a defect?" correctly?

Why here and not in evals/: it is the quick check a training run reports on its own held-out split
(before and after training), on the same LLaVA-JSON format it trains on; the full VisA-D&R benchmark
(`looktwice eval-dr`) is the real evaluation.

For every conversation whose first answer is a strict Yes / No, the first question is asked with its
image: the greedy answer is parsed strictly (`parse_yes_no`; anything else counts as wrong) and
P(Yes) is read off the first answer token's logits (accuracy at 0.5 and AUROC).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import torch

from agent.mllm.train.data import Conversation
from tools.ranking import auroc as ranking_auroc


def detection_items(conversations: Sequence[Conversation]) -> list[Conversation]:
    """Conversations with an image whose first answer is the one word Yes or No."""
    return [
        c
        for c in conversations
        if c.image is not None and c.first_answer.strip().rstrip(".").lower() in ("yes", "no")
    ]


def auroc(scores: Sequence[float], labels: Sequence[bool]) -> float | None:
    """Area under the ROC curve (ties count half; `tools.ranking`, the benchmarks' one); None when one
    class is missing."""
    value = ranking_auroc(labels, scores)
    return None if math.isnan(value) else value


@torch.no_grad()
def evaluate_detection(
    model: Any,
    conversations: Sequence[Conversation],
    system: str | None = "You are a helpful assistant.",
    batch_size: int = 16,
    limit: int | None = None,
    progress: Callable[[int], None] | None = None,
) -> dict[str, Any]:
    """Detection accuracy of `model` (a `LookTwiceModel`) on the Yes/No items of `conversations`."""
    from agent.mllm.chat_format import format_chat
    from agent.mllm.yes_no import yes_probability_from_logits
    from instruct_data.answers import parse_yes_no
    from tools.image_io import load_image

    items = detection_items(conversations)[:limit]
    if not items:
        raise ValueError("no detection items (first answer Yes or No, with an image) to evaluate")
    model.clear_cache()  # the projector may have changed since cached encodings were made
    yes_ids, no_ids = model.yes_no_token_ids()
    truth, said, p_yes = [], [], []
    for start in range(0, len(items), batch_size):
        batch = items[start : start + batch_size]
        prompts = [format_chat([("user", c.first_question)], system=system) for c in batch]
        images = [[load_image(c.image, mode="RGB")] for c in batch]
        texts = model.generate(prompts, images, max_new_tokens=4, do_sample=False)
        inputs = model.build_inputs(prompts, images)
        logits = model.llava(**inputs.model_kwargs(), logits_to_keep=1).logits[:, -1]
        p_yes += yes_probability_from_logits(logits, yes_ids, no_ids).tolist()
        said += [parse_yes_no(t) for t in texts]
        truth += [parse_yes_no(c.first_answer) for c in batch]
        if progress:
            progress(len(batch))
    n = len(items)
    return {
        "n": n,
        "anomalous": sum(bool(t) for t in truth),
        "accuracy": sum(s == t for s, t in zip(said, truth, strict=True)) / n,
        "answered_yes_no": sum(s is not None for s in said) / n,
        "accuracy_p_yes": sum((p > 0.5) == t for p, t in zip(p_yes, truth, strict=True)) / n,
        "auroc_p_yes": auroc(p_yes, [bool(t) for t in truth]),
    }
