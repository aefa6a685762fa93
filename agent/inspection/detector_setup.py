"""Build and fit the detector an inspection asks for, with the fallbacks a user expects.

- `auto` chooses from what was given (`tools.detectors.choice`): the batch detector for a batch, reference
  matching with references, else the zero-shot fallback.
- A detector that needs references, given none, is replaced by `selfsim`, and the user is told.
- A model-based detector named explicitly whose weights are not on this machine (`MissingModelError`,
  raised within seconds by `tools.models.require_model`) ends the run: the caller reports it as a usage
  error with the one message that says what was asked, where it was looked for and how to get it. Only
  with `fallback` (`--fallback`, or `fallback: true` in the config) is it replaced by the embedded
  detector, said once; `auto` never needs a model.
- `device` defaults to auto for every detector that takes one: CUDA when present, else the CPU.
- `--detector ltfm` with `--brain llava` on the same checkpoint: the detector reads the brain's loaded
  model (`shared_model`), so the checkpoint is loaded once, on one device.
- The learned head's image-space defects come from `instruct_data.synthesis` (perception tools draw no
  defects themselves), passed in here when the settings ask for them.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from tools.detectors import DETECTORS, Detector, DetectorError, MissingModelError
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
    """`DETECTORS.build` plus what the detector can take from this layer (the head's synthesizer, the
    global rule's whole-image changes) and the auto device when none is given."""
    from tools.settings import declared_settings

    options = dict(options)
    factory = DETECTORS.get(name)
    try:
        params = inspect.signature(factory).parameters
    except (TypeError, ValueError):
        params = {}
    if "synthesizer" in params and options.get("head_synthetic", 0):
        options["synthesizer"] = head_synthesizer()
    if "global_changes" in params and options.get("global_weight", "auto") == "auto":
        from instruct_data.synthesis.global_changes import rule_change

        options["global_changes"] = rule_change  # the references' whole-image test copies (global rule)
    if "device" not in options and "device" in declared_settings(factory)[0]:
        from tools.ltfm.options import resolve_device

        options["device"] = resolve_device("auto")
    elif "device" in options:
        from tools.ltfm.options import OptionError, resolve_device

        try:
            options["device"] = resolve_device(options["device"])
        except OptionError as err:
            raise DetectorError(f"{name}: {err}") from None
    return DETECTORS.build(name, **options)


def shared_model(name: str, options: dict[str, Any], brain: Any, warn: Callable[[str], None]) -> dict[str, Any]:
    """`options` with `loaded` set to the brain's model when the `ltfm` detector and a LLaVA brain
    name the same checkpoint: one model in memory, on the brain's device. The detector's expert is the
    brain's when they are the same file, else it is loaded beside it (the LLM still reads the tokens of
    its own expert only)."""
    if name != "ltfm" or brain is None or "loaded" in options or not hasattr(brain, "share_model"):
        return options
    from tools.detectors.ltfm import DEFAULT_MODEL
    from tools.ltfm.checkpoints import ModelNotFoundError, resolve_model_path, select_expert

    try:
        wanted = Path(resolve_model_path(options.get("model") or DEFAULT_MODEL)).resolve()
        theirs = Path(resolve_model_path(brain.model_id)).resolve()
    except ModelNotFoundError:
        return options  # the detector reports it when it loads
    if wanted != theirs:
        return options
    model = brain.share_model()
    choice = select_expert(str(theirs), options.get("expert") or "auto")
    same = model.expert is not None and bool(model.expert_source) and choice.source is not None and (
        Path(str(choice.source)).resolve() == Path(model.expert_source).resolve()
    )
    if same:
        loaded: Any = model
    elif choice.source is None:
        return options  # no expert for the detector: it says so when it loads
    else:
        from tools.ltfm.checkpoints import load_expert_for
        from tools.ltfm.vision import ExpertVision

        expert = load_expert_for(choice.source, model.vision.config, device=model.vision.device)
        assert expert is not None
        loaded = ExpertVision(model.vision, expert)
    if options.get("device") not in (None, "auto") and str(options["device"]) != str(model.device):
        warn(f"ltfm: uses the brain's model on {model.device} (one model in memory), not --device {options['device']}")
    warn(f"ltfm: shares the LLaVA brain's model {theirs} (loaded once)")
    return {k: v for k, v in options.items() if k not in ("device", "dtype")} | {"loaded": loaded}


def fitted_detector(
    requested: str,
    options: dict[str, Any],
    references: Sequence[Image.Image],
    n_images: int,
    warn: Callable[[str], None],
    *,
    fallback: bool = False,
    brain: Any = None,
) -> Detector:
    """The detector to use for `n_images` images with `references`, fitted (see the module docstring).
    Raises `MissingModelError` for an explicitly named detector whose model is not here, unless
    `fallback`; `brain` lends its model to a detector on the same checkpoint."""
    name, why = choose_detector(requested, len(references), n_images)
    if why:
        warn(why)
    factory = DETECTORS.get(name)
    if factory.requires_references and not references:
        warn(f"no references given: {name} needs good references, using the zero-shot fallback 'selfsim'")
        name = "selfsim"
        options = {k: v for k, v in options.items() if k in ("resolution", "device")}
    options = shared_model(name, options, brain, warn)
    try:
        detector = build_detector(name, options)
        detector.fit(list(references))
    except MissingModelError as err:
        if requested != "auto" and not fallback:
            raise
        embedded = "refmatch" if references else "selfsim"
        warn(f"{err} Falling back to the embedded detector '{embedded}' (--fallback; no download needed).")
        detector = build_detector(embedded, {})
        detector.fit(list(references))
    return detector


__all__ = ["HEAD_KINDS", "build_detector", "fitted_detector", "head_synthesizer", "shared_model"]
