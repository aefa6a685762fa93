"""The tiny CLIP and SAM models of the tests (built in `tools.tiny_models`, which the GPU check's dry run
uses too)."""

from tools.tiny_models import (
    TINY_CLIP,
    TINY_CLIP_CONFIG,
    register_tiny_clip,
    tiny_clip_bundle,
    tiny_clip_id,
    tiny_sam,
)

__all__ = ["TINY_CLIP", "TINY_CLIP_CONFIG", "register_tiny_clip", "tiny_clip_bundle", "tiny_clip_id", "tiny_sam"]
