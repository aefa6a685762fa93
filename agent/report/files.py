"""Per-image output files of a report, written so that none is ever seen half-written.

Each image's files (record JSON, anomaly map, mask, overlay: `agent.outputs.write_record`) and its
thumbnail are first written into a staging folder, flushed to disk, then moved into `images/` and
`thumbs/` with `os.replace` (atomic on one file system). Only after that is the image committed to the
store. A kill before the commit leaves at most complete files that the resumed run overwrites.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from PIL import Image

from agent.outputs import record_overlay, write_record
from tools.record import InspectionRecord

IMAGES_DIR = "images"
THUMBS_DIR = "thumbs"
STAGING_DIR = ".staging"
THUMB_SIZE = 192


def atomic_write_text(path: Path, text: str) -> None:
    """Write `text` to a temporary name beside `path`, flush it, then rename over `path`."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "w", encoding="utf-8", newline="") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _fsync_file(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def clear_staging(out_dir: Path) -> None:
    """Remove what a killed run left in the staging folder (never referenced by the store)."""
    shutil.rmtree(out_dir / STAGING_DIR, ignore_errors=True)


def write_image_outputs(
    record: InspectionRecord, image: Image.Image, out_dir: Path, stem: str, durable: bool = True
) -> dict[str, str]:
    """Write one image's outputs; return {role: path relative to `out_dir`}."""
    staging = out_dir / STAGING_DIR / stem
    if staging.exists():
        shutil.rmtree(staging)
    staging.mkdir(parents=True)
    overlay = record_overlay(record, image)
    written = write_record(record, image, staging, stem, overlay=overlay)

    thumb_name = f"{stem}.jpg"
    thumb = record_overlay(record, image, max_side=THUMB_SIZE).convert("RGB")
    thumb.save(staging / thumb_name, format="JPEG", quality=82)

    images, thumbs = out_dir / IMAGES_DIR, out_dir / THUMBS_DIR
    images.mkdir(exist_ok=True)
    thumbs.mkdir(exist_ok=True)
    moves = [(staging / name, images / name, f"{IMAGES_DIR}/{name}", role) for role, name in written.items()]
    moves.append((staging / thumb_name, thumbs / thumb_name, f"{THUMBS_DIR}/{thumb_name}", "thumbnail"))
    files: dict[str, str] = {}
    for src, _, rel, role in moves:
        if durable:
            _fsync_file(src)
        files[role] = rel
    for src, dst, _, _ in moves:
        os.replace(src, dst)
    staging.rmdir()
    return files


def outputs_present(out_dir: Path, files: dict[str, str]) -> bool:
    """True when every file of a committed row is there and not empty (checked on resume)."""
    for rel in files.values():
        p = out_dir / rel
        try:
            if p.stat().st_size == 0:
                return False
        except OSError:
            return False
    return True
