"""Machine-readable exports of a report: `results.jsonl` (one JSON object per input) and `results.csv`.

Both are rebuilt from the store at the end of every run and written atomically. In the CSV, text
cells that a spreadsheet would run as a formula (starting with = + - @, tab or CR) get a leading `'`.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from agent.report.files import atomic_write_text
from agent.report.store import Row

CSV_COLUMNS = (
    "image_path",
    "status",
    "verdict",
    "pred_score",
    "pred_label",
    "threshold",
    "n_regions",
    "region_shapes",
    "region_locations",
    "explanation",
    "error",
    "overlay",
    "thumbnail",
    "record_json",
    "size_bytes",
    "sha256",
    "seconds",
)


def row_to_json(row: Row) -> dict[str, Any]:
    """The exported form of one input: the record (or null), its files, hash, timings and error."""
    return {
        "image_path": row.display_path,
        "absolute_path": row.path,
        "status": row.status,
        "size": row.size,
        "sha256": row.sha256,
        "settings_hash": row.settings_hash,
        "record": row.record,
        "files": row.files,
        "timings": row.timings,
        "error": row.error,
    }


def _cell(value: Any) -> Any:
    if isinstance(value, str) and value[:1] in ("=", "+", "-", "@", "\t", "\r"):
        return "'" + value
    return value


def row_to_csv(row: Row) -> dict[str, Any]:
    rec = row.record or {}
    regions = rec.get("regions") or []
    return {
        "image_path": _cell(row.display_path),
        "status": row.status,
        "verdict": rec.get("verdict", ""),
        "pred_score": rec.get("pred_score", ""),
        "pred_label": rec.get("pred_label", ""),
        "threshold": rec.get("threshold", ""),
        "n_regions": len(regions) if row.ok else "",
        "region_shapes": ";".join(str(r.get("shape", "")) for r in regions),
        "region_locations": ";".join(str(r.get("location", "")) for r in regions),
        "explanation": _cell(rec.get("explanation", "")),
        "error": _cell(row.error or ""),
        "overlay": row.files.get("overlay", ""),
        "thumbnail": row.files.get("thumbnail", ""),
        "record_json": row.files.get("record", ""),
        "size_bytes": "" if row.size is None else row.size,
        "sha256": row.sha256 or "",
        "seconds": row.timings.get("total", ""),
    }


def write_exports(rows: Iterable[Row], out_dir: Path) -> dict[str, Path]:
    """Write `results.jsonl` and `results.csv`; return their paths."""
    rows = list(rows)
    jsonl = "".join(json.dumps(row_to_json(r), ensure_ascii=False) + "\n" for r in rows)
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=CSV_COLUMNS, lineterminator="\n")
    writer.writeheader()
    for r in rows:
        writer.writerow(row_to_csv(r))
    paths = {"jsonl": out_dir / "results.jsonl", "csv": out_dir / "results.csv"}
    atomic_write_text(paths["jsonl"], jsonl)
    atomic_write_text(paths["csv"], buf.getvalue())
    return paths
