"""One conversation about one image: inspect it once, then answer questions with the history.

Shared by `looktwice ask` (one question), `looktwice chat` (the terminal) and `looktwice serve` (the
web chat), so the three build the loop, write the outputs and keep the history the same way. Nothing
heavy is imported at the top: the CLI imports this module to build its parser.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from agent.images import ImageLimits


class SetupError(Exception):
    """References, brain or detector could not be set up (a usage error); the message is one line."""


def build_pipeline(
    args: argparse.Namespace,
    references: Sequence[Any] | None = None,
    brain: Any = None,
    sam: Any = None,
    warn: Callable[[str], None] | None = None,
) -> Any:
    """The inspection pipeline (`agent.inspection.Pipeline`) for parsed `ask`/`chat`/`serve`
    arguments, fitted for one image at a time (references mode); raises `SetupError`.

    `references` (PIL images) replace `--refs`, and `brain`/`sam` replace `--brain`/`--sam`: the web
    chat builds one brain for all sessions and fits a pipeline per set of uploaded references.
    `warn` receives the one-line notes (e.g. the zero-shot fallback); default: stderr.
    """
    from agent.brains.common import BrainError
    from agent.brains.spec import build_brain
    from agent.console import info_line
    from agent.detector_flags import inspection_settings
    from agent.images import limits_from_args
    from tools.detectors import DetectorError

    say = warn or info_line
    try:
        settings = inspection_settings(args)
        if brain is None:
            brain = build_brain(args.brain)
        if references is not None:
            refs = list(references)
        else:
            refs = limits_from_args(args, settings.detector_options).references(args.refs, warn=say)
        if sam is None and getattr(args, "sam", None):
            from tools.sam import SamTool

            sam = SamTool(args.sam)
        from agent.inspection import Pipeline  # after the settings: a missing model ends before torch loads

        return Pipeline(settings, warn=say, brain=brain, sam=sam).fit(refs, n_images=1)
    except (BrainError, DetectorError, ValueError, KeyError) as err:
        raise SetupError(str(err)) from None


def trace_warnings(trace: list[dict[str, Any]]) -> list[str]:
    """One line per step of `trace` that failed and was worked around (a brain that fell back to the
    RuleBrain, a SAM or matching failure), for stderr or the chat."""
    lines = []
    for e in trace:
        if not e.get("error"):
            continue
        fallback = f" (answered by the {e['fallback']} brain)" if e.get("fallback") else ""
        lines.append(f"{e['step']}: {e['error']}{fallback}")
    return lines


def save_outputs(record: Any, image: Any, out: Path, taken: set[str]) -> dict[str, str]:
    """The record, maps and overlay (`agent.outputs.write_record`) and `<stem>_trace.json`."""
    from agent.outputs import unique_stem, write_record

    stem = unique_stem(record.image_path, taken)
    files = write_record(record, image, out, stem)
    files["trace"] = f"{stem}_trace.json"
    (out / files["trace"]).write_text(json.dumps(record.trace, indent=2), encoding="utf-8")
    return files


class Conversation:
    """The state of one conversation: the pipeline, the current image and record, history, transcript.

    `open` inspects an image once (the match-of-thought loop) and writes its outputs to `out`; `ask`
    answers from that record with the (question, answer) pairs so far, so follow-up questions cost a
    brain call, not another inspection.
    """

    def __init__(self, pipeline: Any, out: Path, limits: ImageLimits | None = None) -> None:
        from agent.images import ImageLimits

        self.pipeline = pipeline
        self.out = out
        self.limits = limits or ImageLimits()  # pixel limit and analysis size of the images opened
        self.taken: set[str] = set()
        self.record: Any = None
        self.image: Any = None
        self.files: dict[str, str] = {}
        self.history: list[tuple[str, str]] = []
        self.transcript: list[dict[str, Any]] = []

    def open(self, path: str | Path, image: Any = None, pipeline: Any = None) -> str:
        """Inspect `path` (or the already loaded `image`; `pipeline` replaces the current one) and start
        the history again. Raises `ImageLoadError` for an unreadable file; returns the summary line."""
        from agent.images import source_size

        if pipeline is not None:
            self.pipeline = pipeline
        image = self.limits.load(path) if image is None else image
        self.record = self.pipeline.inspect(str(path), image)
        self.record.source_size = source_size(image)
        self.image = image
        self.files = save_outputs(self.record, image, self.out, self.taken)
        self.history = []
        r = self.record
        text = f"{path}: {r.verdict} (score {r.pred_score:.2f}). {r.explanation}"
        self.transcript.append(
            {"event": "image", "image_path": str(path), "verdict": r.verdict, "text": text}
        )
        return text

    def ask(self, question: str) -> str:
        """The brain's answer to `question` about the open image; the pair joins the history."""
        if self.record is None:
            raise RuntimeError("no image is open")
        answer = self.pipeline.answer(question, self.record, list(self.history))
        self.history.append((question, answer))
        self.transcript.append({"event": "turn", "question": question, "answer": answer})
        return answer

    @property
    def overlay(self) -> Path:
        """The overlay (heatmap + outline) of the open image."""
        return self.out / self.files["overlay"]

    def save(self, target: str | Path) -> Path:
        """Write the transcript: JSON when `target` ends in .json, else plain text."""
        path = Path(target)
        path.parent.mkdir(parents=True, exist_ok=True)
        if path.suffix.lower() == ".json":
            path.write_text(json.dumps(self.transcript, indent=2), encoding="utf-8")
        else:
            lines = []
            for e in self.transcript:
                if e["event"] == "image":
                    lines.append(f"[image] {e['text']}")
                else:
                    lines += [f"you: {e['question']}", f"looktwice: {e['answer']}"]
            path.write_text("\n".join(lines) + "\n", encoding="utf-8")
        return path


__all__ = ["Conversation", "SetupError", "build_pipeline", "save_outputs", "trace_warnings"]
