"""P(Yes) off the first answer token's logits: the MLLM's own `pred_score` for the detection question.

Why from logits and not from the text: AUROC needs a score, and a "Yes" / "No" answer is only a label.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor


def yes_no_token_ids(tokenizer: Any) -> tuple[list[int], list[int]]:
    """Vocabulary ids that decode exactly to Yes / No (any case, optional leading space); cached on the
    tokenizer."""
    cache = getattr(tokenizer, "_looktwice_yes_no", None)
    if cache is not None:
        return cache
    yes: set[int] = set()
    no: set[int] = set()
    for word, bucket in (("yes", yes), ("no", no)):
        for variant in (word, word.capitalize(), word.upper()):
            for text in (variant, " " + variant):
                ids = tokenizer(text, add_special_tokens=False)["input_ids"]
                if len(ids) == 1 and tokenizer.decode(ids).strip().lower() == word:
                    bucket.add(int(ids[0]))
    if not yes or not no:
        raise ValueError(
            "the tokenizer has no single token for 'Yes' or 'No'; P(Yes) cannot be read off logits"
        )
    result = (sorted(yes), sorted(no))
    with contextlib.suppress(AttributeError):
        tokenizer._looktwice_yes_no = result
    return result


def yes_probability_from_logits(logits: Tensor, yes_ids: Sequence[int], no_ids: Sequence[int]) -> Tensor:
    """P(Yes) / (P(Yes) + P(No)) per row of (B, V) logits, from the full-vocabulary softmax."""
    probs = torch.softmax(logits.float(), dim=-1)
    p_yes = probs[:, list(yes_ids)].sum(-1)
    p_no = probs[:, list(no_ids)].sum(-1)
    return p_yes / (p_yes + p_no).clamp_min(1e-12)
