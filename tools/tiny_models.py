"""Tiny randomly initialised open_clip and SAM models built from configs (no downloads).

For the tests and for `python -m evals.gpu_check --device cpu --tiny`, which runs the GPU check's code
path on a CPU in seconds. LLaVA-OneVision's tiny model lives with the MLLM (`agent.mllm.testing`).
"""

from __future__ import annotations

import json
import tempfile
from functools import lru_cache
from pathlib import Path

TINY_CLIP = "LookTwiceTinyCLIP"
TINY_CLIP_CONFIG = {
    "embed_dim": 32,
    "vision_cfg": {"image_size": 48, "layers": 2, "width": 32, "patch_size": 8, "head_width": 16},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1},
}


@lru_cache(maxsize=1)
def register_tiny_clip() -> str:
    """Register the tiny open_clip config once per process; returns its architecture name."""
    import open_clip

    folder = Path(tempfile.mkdtemp(prefix="tinyclip-"))
    (folder / f"{TINY_CLIP}.json").write_text(json.dumps(TINY_CLIP_CONFIG))
    open_clip.add_model_config(folder)
    return TINY_CLIP


def tiny_clip_id() -> str:
    """A model id for `tools.models.load_open_clip`: the tiny architecture with random weights."""
    return register_tiny_clip() + ":none"


def tiny_clip_bundle(seed: int = 0):
    import torch

    from tools.models import load_open_clip

    torch.manual_seed(seed)
    return load_open_clip(tiny_clip_id())


def tiny_sam(seed: int = 0):
    """(SamModel, SamProcessor) with a 64 px input, a few thousand parameters."""
    import torch
    from transformers import SamConfig, SamImageProcessor, SamModel, SamProcessor
    from transformers.models.sam.configuration_sam import (
        SamMaskDecoderConfig,
        SamPromptEncoderConfig,
        SamVisionConfig,
    )

    vision = SamVisionConfig(
        hidden_size=16,
        output_channels=16,
        num_hidden_layers=1,
        num_attention_heads=2,
        image_size=64,
        patch_size=8,
        mlp_dim=32,
        global_attn_indexes=[0],
        window_size=4,
        num_pos_feats=8,
    )
    prompt = SamPromptEncoderConfig(hidden_size=16, image_size=64, patch_size=8, mask_input_channels=4)
    decoder = SamMaskDecoderConfig(
        hidden_size=16, num_hidden_layers=1, num_attention_heads=2, mlp_dim=32, iou_head_hidden_dim=16
    )
    torch.manual_seed(seed)
    model = SamModel(
        SamConfig(vision_config=vision, prompt_encoder_config=prompt, mask_decoder_config=decoder)
    )
    processor = SamProcessor(
        image_processor=SamImageProcessor(size={"longest_edge": 64}, pad_size={"height": 64, "width": 64})
    )
    return model.eval(), processor
