"""Feedback from the line: a false alarm becomes a reference, a missed defect is kept for checking.

A part the tool called defective (or sent to review) that a person says is good is exactly what the
references lacked: it goes into a `feedback-good/` folder inside the references folder, so every later
inspection with `--refs` compares with it (the references are searched recursively) and the boundary is
re-estimated from the larger set. A defect the tool passed is not a reference: it goes to a sibling
folder `<refs>.defects/`, kept so the line can check later that the boundary catches it.

Images are re-encoded as PNG and named by their content, so the same image given twice is stored once
and no uploaded byte is kept as is.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from PIL import Image

GOOD_FOLDER = "feedback-good"
DEFECTS_SUFFIX = ".defects"
LABELS = ("good", "defective")


def store_folder(references: str | Path, label: str) -> Path:
    """Where feedback of `label` for the references folder `references` is kept."""
    refs = Path(references)
    if label == "good":
        return refs / GOOD_FOLDER
    if label == "defective":
        return refs.with_name(refs.name + DEFECTS_SUFFIX)
    raise ValueError(f"feedback label must be one of {', '.join(LABELS)}, got {label!r}")


def content_name(image: Image.Image, stem: str = "") -> str:
    """`<stem>-<12 hex digits of the pixels' hash>.png`: one file per distinct image."""
    digest = hashlib.sha256(f"{image.mode}:{image.size}".encode() + image.tobytes()).hexdigest()[:12]
    clean = "".join(c if c.isalnum() or c in "-_" else "_" for c in stem)[:40]
    return f"{clean}-{digest}.png" if clean else f"{digest}.png"


def add_feedback(image: Image.Image, label: str, references: str | Path, stem: str = "") -> tuple[Path, bool]:
    """Keep `image` as `label` feedback for the references folder; (its path, whether it is new)."""
    refs = Path(references)
    if not refs.is_dir():
        raise NotADirectoryError(f"references folder '{refs}' does not exist or is not a folder")
    folder = store_folder(refs, label)
    path = folder / content_name(image, stem)
    if path.exists():
        return path, False
    folder.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    image.convert("RGB").save(tmp, format="PNG")
    tmp.replace(path)
    return path, True


__all__ = ["DEFECTS_SUFFIX", "GOOD_FOLDER", "LABELS", "add_feedback", "content_name", "store_folder"]
