"""Build and fit the detector an inspection asks for, with the fallbacks a user expects.

- `auto` chooses from what was given (`tools.detectors.choice`): the batch detector for a batch, reference
  matching with references, else the zero-shot fallback.
- A detector that needs references, given none, is replaced by `selfsim`, and the user is told.
- A model-based detector whose weights are not on this machine (`MissingModelError`) is replaced by
  the embedded one, with the message that says how to get the model.
- The learned head's image-space defects come from `instruct_data.synthesis` (perception tools draw no
  defects themselves), passed in here when the settings ask for them.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
from PIL import Image

from tools.detectors import DETECTORS, Detector, MissingModelError
from tools.detectors.choice import choose_detector

#: synthetic defect kinds the learned head trains on (disjoint from the validation sets' kinds)
HEAD_KINDS = ("perlin", "cutpaste", "cutpaste_scar")


def head_synthesizer() -> Callable[[np.ndarray, np.random.Generator], tuple[np.ndarray, np.ndarray]]:
    """(image, rng) -> (image with one synthetic defect, its mask), kinds from `HEAD_KINDS`."""
    from instruct_data.synthesis.anomalies import synthesize_random

    def draw(image: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        result = synthesize_random(image, rng, HEAD_KINDS)
        return result.image, result.mask

    return draw


def build_detector(name: str, options: dict[str, Any]) -> Detector:
    """`DETECTORS.build` plus what the detector can take from this layer (the head's synthesizer)."""
    options = dict(options)
    factory = DETECTORS.get(name)
    try:
        params = inspect.signature(factory).parameters
    except (TypeError, ValueError):
        params = {}
    if "synthesizer" in params and options.get("head_synthetic", 0):
        options["synthesizer"] = head_synthesizer()
    return DETECTORS.build(name, **options)


def fitted_detector(
    requested: str,
    options: dict[str, Any],
    references: Sequence[Image.Image],
    n_images: int,
    warn: Callable[[str], None],
) -> Detector:
    """The detector to use for `n_images` images with `references`, fitted (see the module docstring)."""
    name, why = choose_detector(requested, len(references), n_images)
    if why:
        warn(why)
    factory = DETECTORS.get(name)
    if factory.requires_references and not references:
        warn(f"no references given: {name} needs good references, using the zero-shot fallback 'selfsim'")
        name = "selfsim"
        options = {k: v for k, v in options.items() if k in ("resolution", "device")}
    try:
        detector = build_detector(name, options)
        detector.fit(list(references))
    except MissingModelError as err:
        fallback = "refmatch" if references else "selfsim"
        warn(f"{err}\nfalling back to the embedded detector '{fallback}' (no download needed)")
        detector = DETECTORS.build(fallback)
        detector.fit(list(references))
    return detector


__all__ = ["HEAD_KINDS", "build_detector", "fitted_detector", "head_synthesizer"]
