"""LlavaBrain: the local LLaVA-OneVision (+ the Look-Twice expert) of `agent.mllm` as a brain.

The model is loaded on first use (hub id or local folder, through `agent.mllm.load_model`), so building
the brain is cheap and `--help` never imports torch. The image is encoded once per content (the model's
vision cache), the measured evidence goes into the first user turn as text, and the chat history is
passed as (user, assistant) pairs. A missing model raises `BrainError` with the loader's message.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, ClassVar

from PIL import Image

from agent.brains.abilities import JudgesDefects, ProposesRules, SeesImages
from agent.brains.base import Brain
from agent.brains.common import BrainError, ImageMemory, ViewMemory, evidence_text
from prompts import load_prompts
from tools.record import InspectionRecord

DEFAULT_LLAVA = "llava-hf/llava-onevision-qwen2-0.5b-ov-hf"


class LlavaBrain(Brain, SeesImages, JudgesDefects, ProposesRules):
    """Explanations and answers from the local MLLM (transformers, optional 4/8-bit)."""

    name: ClassVar[str] = "llava"

    def __init__(
        self,
        model: str = DEFAULT_LLAVA,
        expert: str | None = "auto",
        dtype: str = "auto",
        device_map: Any = None,
        quantization: str | None = None,
        max_new_tokens: int = 128,
        prompts: str = "agent",
        loaded: Any = None,
    ) -> None:
        self.model_id = str(model)
        self.expert = expert
        self.dtype = dtype
        self.device_map = device_map
        self.quantization = quantization
        self.max_new_tokens = int(max_new_tokens)
        self.prompt_name = prompts
        self.t: dict[str, Any] = load_prompts(prompts)
        self.images = ImageMemory()
        self.views = ViewMemory()
        self.last_images: list[str] = []  # labels of the images the last request carried
        self._model = loaded

    def settings(self) -> dict[str, Any]:
        return {
            "brain": self.name,
            "model": self.model_id,
            "quantization": self.quantization,
            "max_new_tokens": self.max_new_tokens,
            "prompts": self.prompt_name,
        }

    @property
    def model(self) -> Any:
        """The `LookTwiceModel`, loaded on first use."""
        if self._model is None:
            from agent.mllm.loading import load_model
            from tools.ltfm.checkpoints import ModelNotFoundError

            try:
                self._model = load_model(
                    self.model_id,
                    expert=self.expert,
                    dtype=self.dtype,
                    device_map=self.device_map,
                    quantization=self.quantization,
                )
            except (ModelNotFoundError, OSError, ValueError) as err:
                msg = " ".join(str(err).split())
                raise BrainError(f"cannot load LLaVA model {self.model_id!r}: {msg}") from None
        return self._model

    def use_image(self, path: str, image: Image.Image) -> None:
        self.images.put(str(path), image)

    def use_views(self, path: str, views: Any) -> None:
        """The second look's labelled crops for `path`; they follow the whole image in the request."""
        self.views.put(str(path), views)

    def _images(self, record: InspectionRecord) -> tuple[list[Image.Image], str]:
        """The images of a request (the whole image, then the views) and the text that names them."""
        image = self.images.get(record.image_path)
        if image is None:
            self.last_images = []
            return [], ""
        views = self.views.get(record.image_path)
        labels = ["the whole image"] + [label for label, _ in views]
        self.last_images = labels
        names = " ".join(self.t["view_intro"].format(n=n, label=label) for n, label in enumerate(labels, start=1))
        return [image] + [v for _, v in views], names if views else ""

    def _chat(self, record: InspectionRecord, request: str, history: list[tuple[str, str]] | None) -> str:
        model = self.model
        images, names = self._images(record)
        evidence = (names + "\n" if names else "") + evidence_text(record, self.t, self.show_verdict)
        turns = list(history or [])
        if turns:
            turns[0] = (f"{evidence}\n\n{turns[0][0]}", turns[0][1])
            message = request
        else:
            message = f"{evidence}\n\n{request}"
        with self._failures():
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
        """P(Yes) for the detection question: the MLLM's own `pred_score`."""
        return float(self.model.yes_probability([image])[0])

    def p_yes(self, record: InspectionRecord) -> tuple[float, str]:
        """P(Yes) to the detection question about the record's image, off the first token's logits."""
        image = self.images.get(record.image_path)
        if image is None:
            raise BrainError(f"no image for {record.image_path!r}: P(Yes) needs the image")
        with self._failures():
            return self.yes_probability(image), "first-token logits"

    def chat_text(self, prompt: str, history: list[tuple[str, str]] | None = None) -> str:
        """A text-only chat with the local model (no image)."""
        with self._failures():
            return str(
                self.model.chat(list(history or []), prompt, images=(), max_new_tokens=self.max_new_tokens)
            ).strip()

    def propose_rules(self, components_text: str) -> str:
        return self.chat_text(self.t["rules"].format(components=components_text))

    def repair_rules(self, components_text: str, previous: str, error: str) -> str:
        prompt = self.t["rules"].format(components=components_text)
        return self.chat_text(self.t["rules_repair"].format(error=error), [(prompt, previous)])

    @contextmanager
    def _failures(self) -> Iterator[None]:
        """A model error (RuntimeError, ValueError) as the one-line `BrainError` the loop falls back on."""
        try:
            yield
        except (RuntimeError, ValueError) as err:
            raise BrainError(f"LLaVA model {self.model_id!r} failed: {' '.join(str(err).split())[:200]}") from None
