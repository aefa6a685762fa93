"""LlavaBrain: the local LLaVA-OneVision (+ the Look-Twice expert) of `agent.mllm` as a brain.

Loading: `load()` (the pipeline calls it when it is set up, so a model that is not there is a usage
error at once, `BrainError`) or the first use. Where and how it loads comes from the `--brain` spec's
options (`llava:<model>?device=cuda&dtype=bf16&quant=4bit&attn=sdpa&expert=auto`, spelled as in
`tools.ltfm.options`): device auto is CUDA when present, else the CPU in float32, said once.

What the model sees is what it was trained on: every request (explanation, answer, P(Yes)) carries one
AnyRes image, the inspected part, with the expert's tokens when the LLM was trained with them (the
folder's marker, `tools.ltfm.expert_marker`); no auxiliary crops. P(Yes) asks the detection question
of `prompts/agent.yaml` exactly as training did (the image, the question, the training system prompt),
without the detector's evidence. `last_call` records each request (tokens, seconds, images, expert).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, ClassVar

from PIL import Image

from agent.brains.abilities import JudgesDefects, ProposesRules, ReportsModelCalls, SeesImages
from agent.brains.base import Brain
from agent.brains.common import BrainError, ImageMemory, evidence_text
from prompts import load_prompts
from tools.record import InspectionRecord

DEFAULT_LLAVA = "llava-hf/llava-onevision-qwen2-0.5b-ov-hf"
WHOLE_IMAGE = "the whole image"


class LlavaBrain(Brain, SeesImages, JudgesDefects, ProposesRules, ReportsModelCalls):
    """Explanations and answers from the local MLLM (transformers, optional 4/8-bit)."""

    name: ClassVar[str] = "llava"

    def __init__(
        self,
        model: str = DEFAULT_LLAVA,
        expert: str | None = "auto",
        device: str = "auto",
        dtype: str = "auto",
        quant: str | None = None,
        attn: str | None = None,
        max_new_tokens: int = 128,
        prompts: str = "agent",
        loaded: Any = None,
        note: Callable[[str], None] | None = None,
    ) -> None:
        """`device`, `dtype`, `quant`, `attn`: as `tools.ltfm.options` spells them (a bad value is a
        `BrainError`); `loaded`: an already loaded `LookTwiceModel` to use; `note`: where the one-line
        notes go (the CPU default, the expert's status), default nowhere."""
        from tools.ltfm.options import LoadOptions, OptionError

        self.model_id = str(model)
        self.expert = None if expert in (None, "none") else expert
        try:
            self.options = LoadOptions.from_values(device, dtype, quant, attn)
        except OptionError as err:
            raise BrainError(f"llava: {err}") from None
        self.max_new_tokens = int(max_new_tokens)
        self.prompt_name = prompts
        self.t: dict[str, Any] = load_prompts(prompts)
        self.images = ImageMemory()
        self.last_images: list[str] = []  # labels of the images the last request carried
        self.last_call: dict[str, Any] = {}
        self.note = note or _quiet
        self.resolved: Any = None  # the ResolvedLoad the model was loaded with
        self._model = loaded

    def settings(self) -> dict[str, Any]:
        out = {
            "brain": self.name,
            "model": self.model_id,
            "device": self.options.device,
            "dtype": self.options.dtype,
            "quant": self.options.quant,
            "attn": self.options.attn,
            "expert": self.expert,
            "max_new_tokens": self.max_new_tokens,
            "prompts": self.prompt_name,
        }
        if self._model is not None:
            out["expert_tokens"] = bool(self._model.expert_tokens)
            out["expert_note"] = getattr(self._model, "expert_note", "")
        return out

    # ------------------------------------------------------------------------------------------ loading
    @property
    def loaded(self) -> bool:
        return self._model is not None

    def load(self) -> Any:
        """Load the model now (idempotent); a model that is not there or does not load is a
        `BrainError` with one complete line (what was asked, where it was looked for, how to get it)."""
        if self._model is None:
            from tools.ltfm.checkpoints import ModelNotFoundError, resolve_model_path
            from tools.ltfm.expert_io import ExpertWeightsError
            from tools.ltfm.options import OptionError

            try:
                resolve_model_path(self.model_id)  # fast: disk, or one short hub request, before any import
                resolved = self.options.resolved()
                from agent.mllm.loading import load_model

                self._model = load_model(
                    self.model_id,
                    expert=self.expert,
                    dtype=resolved.dtype,
                    device_map={"": resolved.device},
                    quantization=resolved.quant,
                    attn_implementation=resolved.attn,
                )
            except ModelNotFoundError as err:
                raise BrainError(f"--brain llava: {_one_line(err)}") from None
            except (OptionError, ExpertWeightsError, ImportError, OSError, ValueError) as err:
                raise BrainError(f"cannot load LLaVA model {self.model_id!r}: {_one_line(err)}") from None
            self.resolved = resolved
            if resolved.note:
                self.note(f"llava: {resolved.note}")
            self.note(f"llava: {self._model.expert_note}")
        return self._model

    @property
    def model(self) -> Any:
        """The `LookTwiceModel`, loaded on first use."""
        return self.load()

    def share_model(self) -> Any:
        """The loaded model, for a detector on the same checkpoint (`--detector ltfm`): one model in
        memory."""
        return self.load()

    # ------------------------------------------------------------------------------------------ images
    def use_image(self, path: str, image: Image.Image) -> None:
        self.images.put(str(path), image)

    def use_views(self, path: str, views: Any) -> None:
        """Views are not sent: the model was trained on one image of the part (module docstring)."""

    def _image(self, record: InspectionRecord) -> Image.Image | None:
        image = self.images.get(record.image_path)
        self.last_images = [WHOLE_IMAGE] if image is not None else []
        return image

    # ------------------------------------------------------------------------------------------ requests
    def _chat(self, record: InspectionRecord, request: str, history: list[tuple[str, str]] | None) -> str:
        model = self.model
        image = self._image(record)
        evidence = evidence_text(record, self.t, self.show_verdict)
        turns = list(history or [])
        if turns:
            turns[0] = (f"{evidence}\n\n{turns[0][0]}", turns[0][1])
            message = request
        else:
            message = f"{evidence}\n\n{request}"
        images = [image] if image is not None else []
        with self._failures(), self._call("chat"):
            text = model.chat(
                turns, message, images=images, system=self.t["system"].strip(), max_new_tokens=self.max_new_tokens
            )
        return str(text).strip()

    def explain(self, record: InspectionRecord) -> str:
        return self._chat(record, self.t["explain"].strip(), None)

    def answer(
        self, question: str, record: InspectionRecord, history: list[tuple[str, str]] | None = None
    ) -> str:
        request = question if history else f"{self.t['answer_prefix'].strip()}\n{question}"
        return self._chat(record, request, history)

    def yes_probability(self, image: Image.Image) -> float:
        """P(Yes) for the detection question (`prompts/agent.yaml`), asked as in training."""
        with self._call("p_yes"):
            return float(self.model.yes_probability([image], question=self.t["detection"].strip())[0])

    def p_yes(self, record: InspectionRecord) -> tuple[float, str]:
        """P(Yes) to the detection question about the record's image, off the first token's logits; the
        prompt holds no evidence from the detector (its verdict is not repeated back)."""
        image = self._image(record)
        if image is None:
            raise BrainError(f"no image for {record.image_path!r}: P(Yes) needs the image")
        with self._failures():
            return self.yes_probability(image), "first-token logits"

    def chat_text(self, prompt: str, history: list[tuple[str, str]] | None = None) -> str:
        """A text-only chat with the local model (no image)."""
        self.last_images = []
        with self._failures(), self._call("chat_text"):
            return str(
                self.model.chat(list(history or []), prompt, images=(), max_new_tokens=self.max_new_tokens)
            ).strip()

    def propose_rules(self, components_text: str) -> str:
        return self.chat_text(self.t["rules"].format(components=components_text))

    def repair_rules(self, components_text: str, previous: str, error: str) -> str:
        prompt = self.t["rules"].format(components=components_text)
        return self.chat_text(self.t["rules_repair"].format(error=error), [(prompt, previous)])

    @contextmanager
    def _call(self, what: str) -> Iterator[None]:
        """Record the request in `last_call`: model, device, seconds, tokens, images, expert tokens."""
        t0 = time.perf_counter()
        self.last_call = {}
        yield
        model = self._model
        run = dict(getattr(model, "last_run", {}) or {})
        self.last_call = {
            "request": what,
            "model": self.model_id,
            "device": str(model.device) if model is not None else None,
            "seconds": round(time.perf_counter() - t0, 4),
            "prompt_tokens": run.get("prompt_tokens"),
            "new_tokens": run.get("new_tokens"),
            "images_sent": list(self.last_images),
            "expert_tokens": run.get("expert_tokens", 0),
            "expert": getattr(model, "expert_note", ""),  # why the LLM reads the expert's tokens, or not
        }

    @contextmanager
    def _failures(self) -> Iterator[None]:
        """A model error (RuntimeError, ValueError) as the one-line `BrainError` the loop falls back on."""
        try:
            yield
        except BrainError:
            raise
        except (RuntimeError, ValueError, IndexError) as err:
            raise BrainError(f"LLaVA model {self.model_id!r} failed: {_one_line(err)[:300]}") from None


def _quiet(_message: str) -> None:
    """Where notes go when nobody listens (a module function: a brain stays picklable)."""


def _one_line(err: BaseException) -> str:
    return " ".join(str(err).split()) or type(err).__name__


__all__ = ["DEFAULT_LLAVA", "LlavaBrain"]
