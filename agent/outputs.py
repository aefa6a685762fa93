"""Writing inspection records to disk: `<stem>.json` with maps as PNG files beside it, and an overlay.

Files are written to a temporary name and renamed, so an interrupted run never leaves a half-written
JSON that looks complete.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
from PIL import Image

from tools.overlay import render_overlay, save_map_png, save_mask_png
from tools.record import InspectionRecord


def unique_stem(path: str | os.PathLike[str], taken: set[str]) -> str:
    """File stem for outputs; `name-2`, `name-3`, ... when two inputs share a stem."""
    stem = Path(path).stem or "image"
    candidate, n = stem, 1
    while candidate in taken:
        n += 1
        candidate = f"{stem}-{n}"
    taken.add(candidate)
    return candidate


def _atomic_write_text(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def heat_floor(record: InspectionRecord) -> float:
    """Where the overlay's heat starts: the review band's start when there is one, else the boundary
    (nothing below it is suspicious, so nothing below it is tinted)."""
    review = (record.decision or {}).get("review_from_score")
    threshold = float(record.threshold)
    return float(review) if review is not None and float(review) < threshold else threshold


def record_overlay(record: InspectionRecord, image: Image.Image, max_side: int | None = None) -> Image.Image:
    """The picture of a record (what `<stem>_overlay.png` holds): heat above the review band, the
    regions outlined with their numbers, the ground truth dashed, and the verdict with its score and
    the heat scale in a corner.

    With `max_side` (a thumbnail), the image is reduced first and drawn at that size, so the colours,
    outlines and numbers stay sharp; a thumbnail has no legend (its card says the verdict)."""
    if max_side is not None and max(image.size) > max_side:
        image = image.copy()
        image.thumbnail((max_side, max_side), Image.Resampling.BILINEAR)
    amap = record.anomaly_map if record.anomaly_map is not None else np.zeros(image.size[::-1], np.float32)
    return render_overlay(
        image, amap, record.pred_mask, record.gt_mask,
        floor=heat_floor(record), boundary=float(record.threshold), regions=record.regions,
        verdict=record.verdict, score=float(record.pred_score), legend=max_side is None,
    )


def write_record(
    record: InspectionRecord, image: Image.Image, out_dir: Path, stem: str, overlay: Image.Image | None = None
) -> dict[str, str]:
    """Write maps, mask, overlay and the JSON record; return the written files by role.

    Pass `overlay` when the caller already rendered it (e.g. to make a thumbnail from it)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    files: dict[str, str] = {}
    if record.anomaly_map is not None:
        files["anomaly_map"] = f"{stem}_anomaly_map.png"
        save_map_png(out_dir / files["anomaly_map"], record.anomaly_map)
    if record.pred_mask is not None:
        files["pred_mask"] = f"{stem}_mask.png"
        save_mask_png(out_dir / files["pred_mask"], record.pred_mask)
    files["overlay"] = f"{stem}_overlay.png"
    if overlay is None:
        overlay = record_overlay(record, image)
    overlay.save(out_dir / files["overlay"], compress_level=1)
    data = record.to_json_dict(files)
    data["overlay"] = files["overlay"]
    files["record"] = f"{stem}.json"
    _atomic_write_text(out_dir / files["record"], json.dumps(data, indent=2))
    return files
