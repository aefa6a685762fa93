"""Which detector `auto` means, from what the user gave: references, and how many images at once.

- 8 or more images (a folder, a report, an evaluation): the batch detector, which learns from the
  batch itself and, with references, from both (`batch.py`).
- fewer images with references (one part in `ask` or `chat`): reference matching (`refmatch`).
- fewer images without references: the zero-shot fallback `selfsim`, which is weaker, and says so.
"""

from __future__ import annotations

from tools.detectors.batch import MIN_BATCH

AUTO = "auto"


def choose_detector(requested: str, n_references: int, n_images: int) -> tuple[str, str]:
    """(detector name, a line saying why) for `requested`; any name but `auto` is kept as given."""
    if requested != AUTO:
        return requested, ""
    if n_images >= MIN_BATCH:
        with_refs = f" and {n_references} reference(s)" if n_references else " (no references)"
        return "batch", f"auto: {n_images} images, so the batch detector learns from the batch{with_refs}"
    if n_references:
        return "refmatch", f"auto: reference matching against {n_references} reference(s)"
    return "selfsim", (
        f"auto: no references and fewer than {MIN_BATCH} images, so the zero-shot fallback 'selfsim' "
        "(weaker: give good references with --refs, or a folder of 8 or more images)"
    )


__all__ = ["AUTO", "choose_detector"]
