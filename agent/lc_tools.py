"""LangChain adapters: the perception tools as `StructuredTool`s, and a tool-calling agent.

Each tool has a pydantic argument schema and `response_format="content_and_artifact"`: the model reads
a short text, while maps, regions and crops travel as the artifact (kept in the `ToolMessage`, never
sent to the model). The tools share one `InspectionSession` (the image and a fitted inspection pipeline,
`agent.inspection.Pipeline`), so `regions` and `zoom` work on what `detect` found, and `detect` gives
the same verdict as `looktwice ask`.

Errors are answers, not crashes: a bad argument (validation error) or a tool failure (no detection
yet, an unreadable image, an index out of range) comes back to the model as a ToolMessage with
status "error" and a one-line reason, so it can correct itself.

LangChain is imported here and in `agent.lc_models` (the chat model for OpenAI-compatible servers)
only; nothing else in the package needs it.
"""

from __future__ import annotations

from typing import Any

from PIL import Image
from pydantic import BaseModel, Field, ValidationError

from agent.brains.abilities import DrivesTools
from agent.brains.base import Brain
from agent.brains.common import BrainError
from agent.brains.spec import build_brain
from agent.inspection import Pipeline
from agent.inspection.match import compare
from tools.image_io import ImageLoadError, load_image
from tools.record import InspectionRecord, Region

SYSTEM_PROMPT = (
    "You are LookTwice, an industrial visual-inspection agent. Use the tools: `detect` first, then "
    "`regions` to list what it found, `zoom` to look twice at a region, `compare_with_references` to "
    "check components against the good references. Answer briefly from the tool results only."
)


class InspectionSession:
    """What the tools share: the current image and the last detection on it."""

    def __init__(
        self, pipeline: Pipeline, image: Image.Image | None = None, image_path: str | None = None
    ) -> None:
        self.pipeline = pipeline
        self.image = image
        self.image_path = image_path
        self.record: InspectionRecord | None = None

    @property
    def regions(self) -> list[Region]:
        return self.record.regions if self.record is not None else []

    def set_image(self, path: str) -> None:
        from langchain_core.tools import ToolException

        try:
            self.image = load_image(path)
        except (ImageLoadError, OSError) as err:
            raise ToolException(str(err)) from None
        self.image_path = str(path)
        self.record = None


# ---------------------------------------------------------------------------------------------- schemas


class DetectArgs(BaseModel):
    """Arguments of `detect`."""

    image_path: str | None = Field(
        default=None, description="image file to inspect; leave out to inspect the current image"
    )


class RegionsArgs(BaseModel):
    """Arguments of `regions`."""

    max_regions: int = Field(
        default=5, ge=1, le=20, description="how many regions to list, most suspicious first"
    )


class ZoomArgs(BaseModel):
    """Arguments of `zoom`."""

    region: int = Field(ge=0, description="index of the region in the `regions` list (0 = most suspicious)")
    margin: float = Field(
        default=0.5, ge=0.0, le=2.0, description="context around the region, fraction of its size"
    )


class CompareArgs(BaseModel):
    """Arguments of `compare_with_references`."""

    max_extra: int = Field(default=5, ge=0, le=50, description="how many unmatched components to describe")


# ---------------------------------------------------------------------------------------------- tools


def _validation_message(err: ValidationError) -> str:
    parts = []
    for e in err.errors()[:3]:
        where = ".".join(str(p) for p in e.get("loc", ())) or "arguments"
        parts.append(f"{where}: {e.get('msg', 'invalid')}")
    return "invalid arguments: " + "; ".join(parts)


def make_tools(session: InspectionSession) -> list[Any]:
    """`detect`, `regions`, `zoom`, `compare_with_references` over one session."""
    from langchain_core.tools import StructuredTool, ToolException

    def need_image() -> Image.Image:
        if session.image is None:
            raise ToolException("no image: call detect with image_path first")
        return session.image

    def need_detection() -> InspectionRecord:
        if session.record is None:
            raise ToolException("nothing detected yet: call detect first")
        return session.record

    def detect(image_path: str | None = None) -> tuple[str, dict[str, Any]]:
        if image_path:
            session.set_image(image_path)
        img = need_image()
        record = session.pipeline.inspect(session.image_path or "image", img)
        session.record = record
        text = (
            f"score {record.pred_score:.3f} (threshold {record.threshold:.2f}): "
            f"{record.verdict}, {len(record.regions)} region(s)"
        )
        artifact = {
            "pred_score": float(record.pred_score),
            "pred_label": record.pred_label,
            "verdict": record.verdict,
            "threshold": float(record.threshold),
            "anomaly_map": record.anomaly_map,
            "pred_mask": record.pred_mask,
            "decision": record.decision,
        }
        return text, artifact

    def regions(max_regions: int = 5) -> tuple[str, list[dict[str, Any]]]:
        need_detection()
        shown = session.regions[:max_regions]
        if not shown:
            return "no regions above the pixel threshold", []
        lines = [
            f"{i}: {r.shape or 'anomalous'} {r.location}, {100 * r.area_fraction:.1f}% of the image, "
            f"box {list(r.bbox)}, peak {r.max_score:.2f}"
            for i, r in enumerate(shown)
        ]
        return "\n".join(lines), [r.to_dict() for r in shown]

    def zoom(region: int, margin: float = 0.5) -> tuple[str, dict[str, Any]]:
        need_detection()
        img = need_image()
        if region >= len(session.regions):
            raise ToolException(f"no region {region}: there are {len(session.regions)} (indices from 0)")
        r = session.regions[region]
        second, why = session.pipeline.zoom_recheck()
        if second is None:
            raise ToolException(f"no zoomed re-check: {why}")
        look = second.look_at(img, tuple(r.bbox), f"region {region}", margin)
        text = (
            f"region {region} zoomed (box {list(look.box)}): {look.ratio:.2f} times what the references score "
            f"there, {look.outcome} at the closer look"
        )
        return text, {**look.to_dict(), "crop": img.crop(look.box)}

    def compare_with_references(max_extra: int = 5) -> tuple[str, dict[str, Any]]:
        img = need_image()
        refs = session.pipeline.reference_model()
        if refs is None:
            raise ToolException("no good references were given, nothing to compare with")
        result = compare(img, refs, session.pipeline.settings.match)
        text = result["summary"]
        findings = result["findings"][:max_extra]
        if findings:
            text += "; " + ", ".join(
                f"{f['kind']} part of colour {f['part']['colour_class']} ({f['where']})" for f in findings
            )
        if result["violations"]:
            text += "; broken: " + ", ".join(
                f"{v['kind']} of colour {v['colour_class']} = {v['value']:g} (allowed {v['min']:g}..{v['max']:g})"
                for v in result["violations"][:5]
            )
        return text, result

    specs = [
        (detect, DetectArgs, "Run the anomaly detector on the image; returns the score and the verdict."),
        (
            regions,
            RegionsArgs,
            "List the anomalous regions of the last detection: location, size, shape, box.",
        ),
        (
            zoom,
            ZoomArgs,
            "Look twice: crop and zoom one region and score the crop again against the references.",
        ),
        (
            compare_with_references,
            CompareArgs,
            "Match the image's colour components to the good references' (counts, areas, positions).",
        ),
    ]
    return [
        StructuredTool.from_function(
            func=fn,
            name=fn.__name__,
            description=desc,
            args_schema=schema,
            response_format="content_and_artifact",
            handle_tool_error=True,
            handle_validation_error=_validation_message,
        )
        for fn, schema, desc in specs
    ]


def build_agent(model: Any, tools: list[Any], system_prompt: str | None = SYSTEM_PROMPT) -> Any:
    """A LangChain 1.x agent (`langchain.agents.create_agent`) over a tool-calling chat model.

    `model` is a LangChain chat model, a brain that has one (`OpenAIBrain`: its server as a
    `ChatOpenAI`) or a `--brain` spec such as `openai:http://127.0.0.1:8000/v1#Qwen/Qwen2.5-7B-Instruct`
    (see `chat_model_for`); other brains raise `BrainError`. Run it with
    `agent.invoke({"messages": [("user", "Is there a defect?")]})`; the reply is the last message, the
    tool results (with their artifacts) are the `ToolMessage`s before it.
    """
    from langchain.agents import create_agent

    return create_agent(model=chat_model_for(model), tools=tools, system_prompt=system_prompt)


def chat_model_for(model: Any) -> Any:
    """A LangChain chat model from a chat model (returned as is), a brain or a `--brain` spec.

    Brains that can drive a tool-calling agent are `DrivesTools` (`OpenAIBrain`); any other brain
    raises `BrainError` saying what to use instead.
    """
    if isinstance(model, str):
        model = build_brain(model)
    if not isinstance(model, Brain):
        return model
    if not isinstance(model, DrivesTools):
        raise BrainError(
            f"brain {model.name!r} cannot drive a tool-calling agent: use "
            "openai:<base-url>#<model> (an OpenAI-compatible server with tool calling)"
        )
    return model.chat_model()


__all__ = [
    "SYSTEM_PROMPT",
    "CompareArgs",
    "DetectArgs",
    "InspectionSession",
    "RegionsArgs",
    "ZoomArgs",
    "build_agent",
    "chat_model_for",
    "make_tools",
]
