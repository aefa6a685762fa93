"""Load LLaVA-OneVision (+ the LTFM expert) as a `LookTwiceModel`, from a hub id or a local folder.

The checkpoint itself (folder or hub snapshot, dtype, device map, 4/8-bit, the expert next to it) is
loaded by `tools.ltfm.checkpoints.load_llava`; this adds the tokenizer and the wrapper. A model that
cannot be found raises `ModelNotFoundError` with a one-line message.
"""

from __future__ import annotations

import os
from typing import Any

import torch

from agent.mllm.model import LookTwiceModel
from tools.ltfm.checkpoints import (
    DEFAULT_MODEL_ID,
    ExpertSource,
    load_llava,
    model_not_found,
)


def load_model(
    model: str | os.PathLike[str] = DEFAULT_MODEL_ID,
    expert: ExpertSource = "auto",
    dtype: str | torch.dtype | None = "auto",
    device_map: Any = None,
    quantization: str | None = None,
    attn_implementation: str | None = None,
    expert_dtype: torch.dtype | None = torch.float32,
    cache_size: int = 32,
) -> LookTwiceModel:
    """Load LLaVA-OneVision (+ expert) as a `LookTwiceModel`.

    Args:
        model: hub id or local folder.
        expert: "auto" (the folder's `ltfm_expert.safetensors` if present, else none), a file path,
            an `AnomalyExpert`, "random", or None.
        dtype: weights dtype of the unquantized parts ("auto" = as saved).
        device_map: accelerate device map ("auto", "cpu", "cuda:0", dict); None = CPU.
        quantization: None, "4bit" or "8bit" (bitsandbytes; vision tower / projector / head unquantized).
        attn_implementation: default SDPA, flash-attention 2 when installed and on a GPU.
        expert_dtype: dtype of the expert (float32 by default; it is small).
        cache_size: images whose vision encodings are kept.
    """
    from transformers import AutoTokenizer

    ckpt = load_llava(model, expert, dtype, device_map, quantization, attn_implementation, expert_dtype)
    try:
        tokenizer = AutoTokenizer.from_pretrained(ckpt.folder, local_files_only=True)
    except OSError as err:
        raise model_not_found(str(model), str(err).splitlines()[0] if str(err) else type(err).__name__) from None
    return LookTwiceModel(ckpt.llava, ckpt.image_processor, tokenizer, expert=ckpt.expert, cache_size=cache_size)


__all__ = ["load_model"]
