"""Split guards: the QA benchmark and the instruction data must not share images.

Why: `data instruct --data ROOT` takes its anomalies from `test/<defect>` (and good images from
`train/good` and `test/good`), and `data qa` builds the benchmark from the same test split, so a model
trained on the one would be scored on images it has seen. Each builder, given the other set
(`--exclude-from`), refuses to build when any image it would use has the same content as an image of
the other set, unless the caller allows the overlap (`--allow-overlap`, recorded in the output).

Images are compared by content (`tools.content_key.file_key`, the hash of the file's bytes), not by
path: a copy, a renamed file or the same root reached by another path is still caught. A re-encoded
copy (other bytes) is not.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from instruct_data.qa.reader import QASetError, load_qa_set
from tools.content_key import file_key

#: the file `data instruct` writes its conversations to (image paths relative to its folder)
INSTRUCT_FILE = "instruct.json"

ALLOW_FLAG = "--allow-overlap"


class SplitOverlapError(ValueError):
    """The other set cannot be read, or the two sets share images; the message is one line."""


def qa_set_images(folder: str | os.PathLike[str]) -> list[Path]:
    """The images of a QA set (detection and reasoning), resolved against its data root."""
    try:
        qa = load_qa_set(folder)
    except QASetError as err:
        raise SplitOverlapError(f"--exclude-from: {err}") from None
    return [im.path for im in qa.images]


def instruct_file(path: str | os.PathLike[str]) -> Path:
    """The instruct.json of `path` (the file itself, or the folder `data instruct` wrote)."""
    p = Path(path)
    return p / INSTRUCT_FILE if p.is_dir() else p


def instruct_set_images(path: str | os.PathLike[str]) -> list[Path]:
    """The images of instruction data (LLaVA JSON, `image` relative to the file's folder)."""
    file = instruct_file(path)
    try:
        items = json.loads(file.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as err:
        raise SplitOverlapError(
            f"--exclude-from: cannot read instruction data '{file}' ({err}); give the {INSTRUCT_FILE} "
            "written by `looktwice data instruct`, or its folder"
        ) from None
    if not isinstance(items, list) or not all(isinstance(i, dict) for i in items):
        raise SplitOverlapError(f"--exclude-from: '{file}' is not a list of LLaVA conversations")
    names = sorted({i["image"] for i in items if isinstance(i.get("image"), str)})
    return [file.parent / name for name in names]


def key_of(path: Path, what: str) -> str:
    """The content key of one file; an unreadable file is an error that names it (a guard that
    skipped it could miss an overlap)."""
    try:
        return file_key(path)
    except OSError as err:
        raise SplitOverlapError(f"cannot read '{path}' of {what} to compare contents: {err}") from None


@dataclass(frozen=True)
class SplitGuard:
    """The content keys of the other set, and the check of a builder's images against them."""

    other: str  # the other set, as given
    kind: str  # "instruction data" or "QA set"
    keys: frozenset[str]

    @classmethod
    def against_instruct(cls, path: str | os.PathLike[str]) -> SplitGuard:
        """A guard against the instruction data at `path` (instruct.json or its folder)."""
        what = f"the instruction data '{instruct_file(path)}'"
        images = instruct_set_images(path)
        return cls(str(instruct_file(path)), "instruction data", frozenset(key_of(p, what) for p in images))

    @classmethod
    def against_qa(cls, folder: str | os.PathLike[str]) -> SplitGuard:
        """A guard against the QA set in `folder`."""
        images = qa_set_images(folder)
        return cls(str(folder), "QA set", frozenset(key_of(p, f"the QA set '{folder}'") for p in images))

    def check(self, images: Sequence[tuple[str, Path]], building: str, allow: bool) -> dict[str, Any]:
        """Compare `images` ((name to show, path) of what is being built) with the other set; raise
        `SplitOverlapError` when some share content and `allow` is false. Returns the summary that
        the builder records: the other set, how many images were compared and how many are shared."""
        shared = [name for name, path in images if key_of(path, f"the {building}") in self.keys]
        if shared and not allow:
            raise SplitOverlapError(
                f"{len(shared)} of the {len(images)} images of this {building} have the same content as "
                f"images of the {self.kind} '{self.other}' (e.g. '{shared[0]}'): build the two from "
                f"different images, or pass {ALLOW_FLAG}"
            )
        return {
            "exclude_from": self.other,
            "kind": self.kind,
            "images_compared": len(images),
            "in_common": len(shared),
            "allowed": bool(allow),
            "examples": shared[:5],
        }


__all__ = [
    "ALLOW_FLAG",
    "INSTRUCT_FILE",
    "SplitGuard",
    "SplitOverlapError",
    "instruct_set_images",
    "key_of",
    "qa_set_images",
]
