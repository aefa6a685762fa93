"""What a brain can do beyond `explain` and `answer`, as typed interfaces.

Why: the loop, the chat and the tool-calling agent use some brains for more (an image to look at, audit
rules to propose, a LangChain chat model, the cost of the last request). A brain says so by inheriting
these protocols, for example `class OpenAIBrain(Brain, SeesImages, ProposesRules, DrivesTools,
ReportsModelCalls)`, and a caller asks with `isinstance(brain, SeesImages)`, which type checkers follow
(a stand-in brain with the same methods passes too, as protocols are structural).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol, runtime_checkable

from PIL import Image

from tools.record import InspectionRecord


@runtime_checkable
class SeesImages(Protocol):
    """Looks at the image itself; the loop hands it over once per inspection, so no file is read twice,
    and, to a brain whose `send_views` is on, the views of the second look (labelled crops: the zoomed
    place, the same place on the nearest reference), which go into its requests after the whole image."""

    def use_image(self, path: str, image: Image.Image) -> None: ...

    def use_views(self, path: str, views: Sequence[tuple[str, Image.Image]]) -> None: ...


@runtime_checkable
class JudgesDefects(Protocol):
    """Says how likely the part is defective, as P(Yes) to the detection question, and how that was read
    ("first-token logits", "logprobs", or "parsed answer" when the server gives no probabilities)."""

    def p_yes(self, record: InspectionRecord) -> tuple[float, str]: ...


@runtime_checkable
class ProposesRules(Protocol):
    """Proposes audit rules from a text description of the reference components (raw text, which the
    loop parses and validates), and repairs a rejected proposal given the error."""

    def propose_rules(self, components_text: str) -> str: ...

    def repair_rules(self, components_text: str, previous: str, error: str) -> str: ...


@runtime_checkable
class DrivesTools(Protocol):
    """Has a LangChain chat model with tool calling, for `agent.lc_tools.build_agent`."""

    def chat_model(self, **options: Any) -> Any: ...


@runtime_checkable
class ReportsModelCalls(Protocol):
    """Keeps what its last model request was (url, model, seconds, token usage, why an image was
    dropped), which the loop copies into the trace."""

    last_call: dict[str, Any]


__all__ = ["DrivesTools", "JudgesDefects", "ProposesRules", "ReportsModelCalls", "SeesImages"]
