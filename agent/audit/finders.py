"""Model-backed finders of an audit run: the SAM mask generator and the CLIP scorer, or why not.

Why a separate object: `agent.audit.check.audit_image` is compute and must not load models; a run
loads each model once, lazily (only if the spec needs it), and a model that is missing must turn into a
skipped rule with one line saying what to do, printed once per run, never a traceback.

- `Finders`: what is already there (tests inject a mask generator or a stub scorer here).
- `ModelFinders`: loads `--sam` / `--clip` (else the spec's `sam.model` / `clip.model`, else the
  `sam` / `clip` entries of `tools.models`) on first use; a failure is remembered and warned once.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from agent.audit.clip_finder import ClipScorer
from agent.audit.segment import MaskGenerator
from agent.audit.spec import ClipSettings, SamSettings

NO_SAM = "no SAM model loaded (pass --sam MODEL or set sam.model in the spec)"
NO_CLIP = "no CLIP model loaded (pass --clip MODEL or set clip.model in the spec)"


@dataclass
class Finders:
    """Ready finders (None = not available) and the one-line reason when one is not."""

    masks: MaskGenerator | None = None
    clip: ClipScorer | None = None
    sam_problem: str = NO_SAM
    clip_problem: str = NO_CLIP

    def mask_generator(self, settings: SamSettings) -> MaskGenerator | None:
        """SAM automatic masks with `settings`, or None (see `sam_problem`)."""
        return self.masks

    def clip_scorer(self, settings: ClipSettings) -> ClipScorer | None:
        """The CLIP image-text scorer, or None (see `clip_problem`)."""
        return self.clip


def unavailable_message(kind: str, model_id: str, err: BaseException) -> str:
    """One line naming the model and how to get it (or the extra to install)."""
    from tools.models import ModelNotAvailableError

    label, extra, flag = ("CLIP", "clip", "--clip") if kind == "clip" else ("SAM", "sam", "--sam")
    if isinstance(err, ImportError):
        return (
            f"{label} model '{model_id}' needs the '{extra}' extra: pip install 'looktwice[{extra}]' "
            f"({err.name or err})"
        )
    if isinstance(err, ModelNotAvailableError):
        how = err.fetch or "check the model id"
        if how.startswith(("huggingface-cli", "python")):
            how = f"on a machine with internet run: {how}, then copy it here or pass its folder with {flag}"
        return f"{label} model '{model_id}' is not on this machine; to get it, {how}"
    text = " ".join(str(err).split()) or type(err).__name__
    return f"{label} model '{model_id}' could not be loaded: {text}"


@dataclass
class ModelFinders(Finders):
    """Finders that load their models on first use, once per model id; failures warned once."""

    sam_model: str | None = None  # CLI override of the spec's / registry's model
    clip_model: str | None = None
    device: str = "cpu"
    warn: Callable[[str], None] = field(default=lambda msg: None)
    _loaded: dict[tuple[str, str], Any] = field(default_factory=dict, repr=False)
    _failed: dict[tuple[str, str], str] = field(default_factory=dict, repr=False)

    def _get(self, kind: str, model_id: str, load: Callable[[str], Any]) -> Any:
        key = (kind, model_id)
        if key in self._loaded:
            return self._loaded[key]
        if key in self._failed:
            return None
        try:
            self._loaded[key] = load(model_id)
        except Exception as err:  # noqa: BLE001 - any load failure becomes a skipped rule, not a crash
            msg = unavailable_message(kind, model_id, err)
            self._failed[key] = msg
            self.warn(f"audit: {msg}; the components that need it are skipped")
            return None
        return self._loaded[key]

    def _model_id(self, kind: str, spec_model: str | None) -> str:
        try:
            from tools.models import resolve_model

            return resolve_model(kind, (self.clip_model if kind == "clip" else self.sam_model) or spec_model)
        except Exception:  # noqa: BLE001 - a broken model config file: the name given, or the kind
            return (self.clip_model if kind == "clip" else self.sam_model) or spec_model or kind

    def mask_generator(self, settings: SamSettings) -> MaskGenerator | None:
        from agent.audit.segment import SamMaskGenerator

        model_id = self._model_id("sam", settings.model)
        tool = self._get("sam", model_id, self._load_sam)
        if tool is None:
            self.sam_problem = self._failed.get(("sam", model_id), NO_SAM)
            return None
        return SamMaskGenerator(tool, settings)

    def clip_scorer(self, settings: ClipSettings) -> ClipScorer | None:
        model_id = self._model_id("clip", settings.model)
        scorer = self._get("clip", model_id, self._load_clip)
        if scorer is None:
            self.clip_problem = self._failed.get(("clip", model_id), NO_CLIP)
        return scorer

    def _load_sam(self, model_id: str) -> Any:
        from tools.models import load_sam
        from tools.sam import SamTool

        model, processor = load_sam(model_id, device=self.device)
        return SamTool(model_id, self.device, sam_model=model, processor=processor)

    def _load_clip(self, model_id: str) -> ClipScorer:
        from agent.audit.clip_finder import OpenClipScorer
        from tools.models import load_open_clip

        return OpenClipScorer(load_open_clip(model_id, device=self.device), device=self.device)


__all__ = ["NO_CLIP", "NO_SAM", "Finders", "ModelFinders", "unavailable_message"]
