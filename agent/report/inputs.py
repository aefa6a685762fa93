"""Which files a report covers: folders (recursive), single files, and list files of paths.

A list file is named `@paths.txt` on the command line, or is any `.txt` file given as an input: one
path per line, blank lines and lines starting with `#` ignored, relative paths taken relative to the
list file's folder. Listed paths that do not exist are kept: they become failed inputs with a clear
error, so one typo in a list does not stop the batch. A path named on the command line itself that
does not exist is a usage error, before anything is written. Duplicates (same absolute path) are dropped.
"""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from tools.image_io import list_images

_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")


class InputError(ValueError):
    """The inputs themselves are unusable (e.g. an unreadable list file): a usage error."""


def clean_text(text: str) -> str:
    """`text` with undecodable file-name bytes (surrogate escapes) shown as `\\xNN`: storable as UTF-8."""
    return text.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


@dataclass(frozen=True)
class InputItem:
    path: str  # absolute, as the OS spells it (used to open the file)
    display_path: str  # as given by the user (or as listed), clean UTF-8

    @property
    def key(self) -> str:
        """The store's key: the absolute path as clean UTF-8."""
        return clean_text(self.path)


def _is_list_file(item: str) -> bool:
    return item.startswith("@") or (item.lower().endswith(".txt") and Path(item).is_file())


def _read_list(item: str) -> list[tuple[Path, str]]:
    list_path = Path(item[1:] if item.startswith("@") else item)
    try:
        text = list_path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as err:
        raise InputError(
            f"cannot read the list file '{list_path}': {getattr(err, 'strerror', None) or err}"
        ) from None
    out = []
    for line in text.splitlines():
        entry = line.strip()
        if not entry or entry.startswith("#"):
            continue
        p = Path(entry)
        if not p.is_absolute():
            p = list_path.parent / p
        out.append((p, entry))
    return out


def collect_inputs(items: Sequence[str]) -> list[InputItem]:
    """Expand command-line inputs into image paths, in order, without duplicates.

    A command-line input that does not exist is a usage error (`InputError`, one line per missing
    path), raised before anything is written; a missing path inside a list file is a failed input."""
    from agent.images import missing_message, missing_paths

    missing = missing_paths(items)
    if missing:
        raise InputError(missing_message(missing))
    found: list[InputItem] = []
    seen: set[str] = set()

    def add(p: Path, shown: str) -> None:
        key = os.path.abspath(p)
        if key not in seen:
            seen.add(key)
            found.append(InputItem(key, clean_text(shown)))

    def expand(p: Path, shown: str) -> None:
        if p.is_dir():
            for image in list_images(p, recursive=True):
                add(image, str(image))
        else:
            add(p, shown)

    for item in items:
        if _is_list_file(item):
            for p, shown in _read_list(item):
                expand(p, shown)
        else:
            expand(Path(item), item)
    return found


def safe_stem(path: str) -> str:
    """A file-name stem of safe characters only (for output files and URLs in the report)."""
    stem = Path(path).stem
    safe = _UNSAFE.sub("_", stem).strip("._-")[:80]
    if not safe:
        safe = "image-" + hashlib.sha1(path.encode("utf-8", "surrogateescape")).hexdigest()[:8]
    return safe


def file_digest(path: str, chunk: int = 1 << 20) -> tuple[int, str]:
    """(size in bytes, sha256 hex) of a file; raises OSError when it cannot be read."""
    h = hashlib.sha256()
    size = 0
    with open(path, "rb") as f:
        while block := f.read(chunk):
            size += len(block)
            h.update(block)
    return size, h.hexdigest()
