"""Load LLaVA-OneVision (+ the LTFM expert) as a `LookTwiceModel`, from a hub id or a local folder.

The checkpoint itself (folder or hub snapshot, dtype, device map, 4/8-bit, the expert next to it) is
loaded by `tools.ltfm.checkpoints.load_llava`; this adds the tokenizer and the wrapper. A model that
cannot be found raises `ModelNotFoundError` with a one-line message.
"""

from __future__ import annotations

import os
from typing import Any

from agent.mllm.model import LookTwiceModel
from tools.ltfm.checkpoints import (
    DEFAULT_MODEL_ID,
    load_llava,
    model_not_found,
)


def load_model(
    model: str | os.PathLike[str] = DEFAULT_MODEL_ID, *, cache_size: int = 32, **checkpoint: Any
) -> LookTwiceModel:
    """Load LLaVA-OneVision (+ expert) as a `LookTwiceModel`.

    Args:
        model: hub id or local folder.
        cache_size: images whose vision encodings are kept.
        checkpoint: how to load the checkpoint, passed on to `tools.ltfm.checkpoints.load_llava`, which
            documents them: expert ("auto", a file, an `AnomalyExpert`, "random" or None), dtype,
            device_map, quantization ("4bit", "8bit"), attn_implementation, expert_dtype, expert_tokens.
            `note` of the result (`LookTwiceModel.expert_note`) says whether the LLM reads the
            expert's tokens, and why.
    """
    from transformers import AutoTokenizer

    ckpt = load_llava(model, **checkpoint)
    try:
        tokenizer = AutoTokenizer.from_pretrained(ckpt.folder, local_files_only=True)
    except OSError as err:
        raise model_not_found(str(model), str(err).splitlines()[0] if str(err) else type(err).__name__) from None
    model = LookTwiceModel(
        ckpt.llava,
        ckpt.image_processor,
        tokenizer,
        expert=ckpt.expert,
        cache_size=cache_size,
        expert_tokens=ckpt.expert_tokens,
    )
    model.expert_note = ckpt.expert_note
    model.expert_source = ckpt.expert_source
    model.folder = ckpt.folder
    return model


__all__ = ["load_model"]
