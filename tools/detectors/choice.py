"""Which detector `auto` means, from what the user gave: references, and how many images at once.

- two or more references: reference matching (`refmatch`), for one image or a batch; a batch still
  sets the boundary from its own scores (batch calibration, bounded by the references held out). On
  the validation products (BENCHMARKS.md "Products it has never seen") it ranked better than the
  batch detector with the same references (mean image AUROC 0.905 against 0.897, worst product
  0.812 against 0.767) and kept the promise closer (worst false-alarm rate 0.175 against 0.28).
- 8 or more images with fewer than two references (a folder, a report, an evaluation): the batch
  detector, which learns from the batch itself and from the reference if there is one (`batch.py`).
- one reference and fewer images: reference matching.
- fewer images without references: the zero-shot fallback `selfsim`, which is weaker, and says so.
"""

from __future__ import annotations

from tools.detectors.batch import MIN_BATCH

AUTO = "auto"
#: from this many references on, `auto` is reference matching even for a batch (see the module docstring)
MIN_REFERENCES = 2


def choose_detector(requested: str, n_references: int, n_images: int) -> tuple[str, str]:
    """(detector name, a line saying why) for `requested`; any name but `auto` is kept as given."""
    if requested != AUTO:
        return requested, ""
    if n_references >= MIN_REFERENCES:
        batch = f", the boundary from the batch of {n_images}" if n_images >= MIN_BATCH else ""
        return "refmatch", f"auto: reference matching against {n_references} reference(s){batch}"
    if n_images >= MIN_BATCH:
        with_refs = f" and {n_references} reference(s)" if n_references else " (no references)"
        return "batch", f"auto: {n_images} images, so the batch detector learns from the batch{with_refs}"
    if n_references:
        return "refmatch", f"auto: reference matching against {n_references} reference(s)"
    return "selfsim", (
        f"auto: no references and fewer than {MIN_BATCH} images, so the zero-shot fallback 'selfsim' "
        "(weaker: give good references with --refs, or a folder of 8 or more images)"
    )


__all__ = ["AUTO", "MIN_REFERENCES", "choose_detector"]
