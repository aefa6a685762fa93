"""The brain interface: explain an inspection record and answer questions about it.

Why so narrow: the rule templates, a local MLLM and a remote OpenAI-compatible server must be
interchangeable in the chat, the reports and the D&R benchmark, so a brain sees nothing but the
`InspectionRecord` (plus, for questions, the conversation so far) and returns plain text.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from typing import Any, ClassVar

from tools.record import InspectionRecord

#: `Brain.chat_text` as a plain callable: (prompt, earlier (user, assistant) turns) -> reply.
TextChat = Callable[[str, list[tuple[str, str]]], str]


class Brain(ABC):
    """Base class of all brains in `agent.brains.BRAINS`."""

    name: ClassVar[str] = ""
    #: whether the evidence a model brain reads states the detector's verdict (off for evaluation: a
    #: model told the verdict only repeats it)
    show_verdict: bool = True

    @abstractmethod
    def explain(self, record: InspectionRecord) -> str:
        """A short plain-words verdict with the evidence behind it (what reports show)."""

    @abstractmethod
    def answer(
        self, question: str, record: InspectionRecord, history: list[tuple[str, str]] | None = None
    ) -> str:
        """Answer one question about the inspected image; `history` holds earlier (question, answer) pairs."""

    def settings(self) -> dict[str, Any]:
        """The settings that shaped the texts, recorded in outputs and benchmark JSON."""
        return {"brain": self.name}

    def chat_text(self, prompt: str, history: list[tuple[str, str]] | None = None) -> str:
        """Plain text in, text out, no image or record: what tasks like drafting an audit spec ask a
        language model. Brains without one raise `BrainError`."""
        from agent.brains.common import BrainError

        raise BrainError(
            f"brain '{self.name}' has no language model; use llava:<model> or openai:<url>#<model>"
        )
