"""The marker that says a model folder's LLM was trained with the Look-Twice expert's tokens.

Why a marker: the expert's tokens (the suspicion phrase and the anomaly tokens after each image) mean
something only to an LLM that learned them in stage 2. A plain LLaVA-OneVision checkpoint with an
expert file copied next to it is a model nobody trained, so `expert="auto"` attaches the expert to the
LLM only where this file says so: stage 2 (`looktwice train llm`) and the converters write it.

`looktwice_expert.json` holds the expert file's name and SHA-256: a marker that does not match the
expert file beside it (the expert was swapped after training) counts as no marker, and says why.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

MARKER_FILENAME = "looktwice_expert.json"
MARKER_FORMAT = "looktwice-expert-marker"
#: the architecture name a marked folder's config.json declares, so that a vLLM server without the
#: LookTwice plugin refuses the folder instead of serving it without the expert (`agent.mllm.vllm_plugin`)
LOOKTWICE_ARCHITECTURE = "LookTwiceLlavaOnevisionForConditionalGeneration"


@dataclass(frozen=True)
class ExpertMarker:
    """What a marker says: which expert file the LLM was trained with, and by what."""

    expert_file: str  # file name inside the model folder
    sha256: str
    trained_by: str  # "looktwice train llm (stage 2, lora)", "convert anomaly-ov", ...
    written: str = ""

    def to_dict(self) -> dict[str, str]:
        return {
            "format": MARKER_FORMAT,
            "llm_trained_with_expert": "true",
            "expert_file": self.expert_file,
            "expert_sha256": self.sha256,
            "trained_by": self.trained_by,
            "written": self.written,
        }


@dataclass(frozen=True)
class MarkerCheck:
    """The marker of a folder, checked: `marker` when it holds, else None and `why` says what is missing."""

    marker: ExpertMarker | None
    why: str  # what the marker says, or why there is none (one line)
    expert_path: Path | None = None  # the expert file the LLM was trained with


def file_sha256(path: str | os.PathLike[str], chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def write_expert_marker(folder: str | os.PathLike[str], expert_file: str, trained_by: str) -> Path:
    """Write the marker for `folder`, whose `expert_file` (a name inside it) the LLM was trained with."""
    root = Path(folder)
    expert = root / expert_file
    if not expert.is_file():
        raise FileNotFoundError(f"cannot mark {root}: the expert file {expert} does not exist")
    marker = ExpertMarker(
        expert_file=expert_file,
        sha256=file_sha256(expert),
        trained_by=trained_by,
        written=datetime.now(timezone.utc).isoformat(timespec="seconds"),
    )
    out = root / MARKER_FILENAME
    out.write_text(json.dumps(marker.to_dict(), indent=2) + "\n", encoding="utf-8")
    return out


def mark_trained_with_expert(folder: str | os.PathLike[str], expert_file: str, trained_by: str) -> Path:
    """Mark a saved model folder as trained with `expert_file`: the marker, and `config.json`'s
    architecture renamed to `LOOKTWICE_ARCHITECTURE` (transformers loads the folder by its model type
    as before; vLLM then needs the LookTwice plugin, which keeps the expert's tokens, and refuses the
    folder without it instead of serving it as plain LLaVA-OneVision)."""
    root = Path(folder)
    marker = write_expert_marker(root, expert_file, trained_by)
    config = root / "config.json"
    if config.is_file():
        data = json.loads(config.read_text(encoding="utf-8"))
        data["architectures"] = [LOOKTWICE_ARCHITECTURE]
        config.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    return marker


def check_expert_marker(folder: str | os.PathLike[str]) -> MarkerCheck:
    """The folder's marker if it is there, readable and matches its expert file; otherwise None and
    the reason in words (for the trace and `looktwice models`)."""
    root = Path(folder)
    path = root / MARKER_FILENAME
    if not path.is_file():
        return MarkerCheck(None, f"no {MARKER_FILENAME}: the LLM was not trained with the expert's tokens")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        marker = ExpertMarker(
            expert_file=str(data["expert_file"]),
            sha256=str(data["expert_sha256"]),
            trained_by=str(data.get("trained_by", "")),
            written=str(data.get("written", "")),
        )
    except (OSError, ValueError, KeyError, TypeError) as err:
        return MarkerCheck(None, f"{path} is unreadable ({type(err).__name__}): treated as no marker")
    if data.get("format") != MARKER_FORMAT:
        return MarkerCheck(None, f"{path} is not a LookTwice expert marker: treated as no marker")
    expert = root / marker.expert_file
    if not expert.is_file():
        return MarkerCheck(None, f"{path} names {marker.expert_file}, which is not in {root}")
    if file_sha256(expert) != marker.sha256:
        return MarkerCheck(
            None, f"{expert} is not the expert the LLM was trained with (its SHA-256 differs from {path})"
        )
    why = f"the LLM was trained with {marker.expert_file} ({marker.trained_by or 'no origin given'})"
    return MarkerCheck(marker, why, expert)


__all__ = [
    "LOOKTWICE_ARCHITECTURE",
    "MARKER_FILENAME",
    "ExpertMarker",
    "MarkerCheck",
    "check_expert_marker",
    "file_sha256",
    "mark_trained_with_expert",
    "write_expert_marker",
]
