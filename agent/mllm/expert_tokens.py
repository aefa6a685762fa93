"""What the LLM reads after an image from the Look-Twice expert: the suspicion phrase and the anomaly
tokens, laid out once for every back end.

Why its own module: the transformers path (`agent.mllm.model.LookTwiceModel`) and the vLLM plugin
(`agent.mllm.vllm_plugin`) must put exactly the same tokens in exactly the same order after an image,
or a model served by vLLM reads something other than what it was trained on. Both build the block with
`anomaly_token_block` and count it with `expert_token_count`; plain torch, no model class.

Layout for an image with an nH x nW AnyRes grid and s = pool_size (s * s selected tokens per crop):

    [phrase tokens "with {slightly|moderately|highly} suspicious features: "]
    [image-level token][s*s base-crop tokens][nH*s rows of (nW*s grid tokens + newline)]

through the multimodal projector (the newline is LLaVA-OneVision's learned `image_newline`), so
1 + s^2 + s nH (s nW + 1) anomaly tokens; a single crop gets 1 + s^2 + 1 (the newline alone).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from agent.mllm.chat_format import SUSPICION_WORDS, phrase_with
from agent.mllm.sequences import anomaly_token_count


def anomaly_token_block(
    image_token: Tensor,
    crop_tokens: Tensor,
    grid_shape: tuple[int, int] | None,
    pool_size: int,
    project: Callable[[Tensor], Tensor],
    newline: Tensor,
) -> Tensor:
    """The anomaly tokens of one image, projected: `image_token` (C,) is the expert's image-level token,
    `crop_tokens` (crops, s*s, C) its selected tokens per crop (crop 0 the base crop), `project` the
    multimodal projector, `newline` (D,) the row separator. Returns (T_a, D)."""
    n, t = crop_tokens.shape[0], crop_tokens.shape[1]
    tokens = torch.cat([image_token.reshape(1, -1), crop_tokens.reshape(-1, crop_tokens.shape[-1])], dim=0)
    proj = project(tokens)
    newline = newline.to(proj.device, proj.dtype)
    pieces = [proj[: 1 + t]]  # image-level token, base-crop tokens
    if n > 1:
        s = int(pool_size)
        if grid_shape is None or grid_shape[0] * grid_shape[1] != n - 1:
            raise RuntimeError(f"grid {grid_shape} does not match {n - 1} AnyRes crops")
        n_h, n_w = grid_shape
        grid = proj[1 + t :].view(n_h, n_w, s, s, -1).permute(0, 2, 1, 3, 4).reshape(n_h * s, n_w * s, -1)
        rows = torch.cat([grid, newline.expand(n_h * s, 1, -1)], dim=1)
        pieces.append(rows.reshape(-1, rows.shape[-1]))
    else:
        pieces.append(newline[None])
    return torch.cat(pieces, dim=0)


def phrase_token_ids(tokenizer: Any) -> dict[str, list[int]]:
    """The token ids of the suspicion phrase for each level ("slightly", "moderately", "highly"),
    tokenized on their own, as `LookTwiceModel` adds them."""
    return {word: list(tokenizer(phrase_with(word), add_special_tokens=False)["input_ids"]) for word in SUSPICION_WORDS}


def fixed_phrase_length(tokenizer: Any) -> int:
    """The phrase's token count, the same for every level, or `ValueError`: a server must reserve the
    expert's tokens before the expert has scored the image, so the three phrases must be equally long
    (one word each in the Qwen2 vocabulary)."""
    lengths = {word: len(ids) for word, ids in phrase_token_ids(tokenizer).items()}
    if len(set(lengths.values())) != 1:
        raise ValueError(
            f"the suspicion phrases tokenize to different lengths {lengths}: a server cannot reserve "
            "their places before the expert scores the image"
        )
    return next(iter(lengths.values()))


def expert_token_count(grid_shape: tuple[int, int] | None, phrase_length: int, pool_size: int = 2) -> int:
    """Tokens the expert adds after an image: the phrase and the anomaly tokens."""
    return int(phrase_length) + anomaly_token_count(grid_shape, pool_size)


__all__ = ["anomaly_token_block", "expert_token_count", "fixed_phrase_length", "phrase_token_ids"]
