"""The trace of one inspection: each step with what went in, what it found and what it changed.

Steps are dicts in `record.trace` (JSON-ready): `step`, `seconds`, a one-line `summary`, and, for
steps that can move the answer, `changed` ("score 0.41 -> 0.66", or "nothing: record only").
"""

from __future__ import annotations

import time
from typing import Any


def step(trace: list[dict[str, Any]], name: str, t0: float, **fields: Any) -> dict[str, Any]:
    """Append one step (with the seconds since `t0`) and return it."""
    entry = {"step": name, **fields, "seconds": round(time.perf_counter() - t0, 4)}
    trace.append(entry)
    return entry


def short(text: str, limit: int = 300) -> str:
    """One line of at most `limit` characters."""
    line = " ".join(str(text).split())
    return line if len(line) <= limit else line[: limit - 3] + "..."


def change(before: float, after: float, what: str = "score") -> str:
    """What a fusion did to a score, in words for the trace."""
    if abs(after - before) < 1e-9:
        return f"{what} unchanged ({before:.4g})"
    return f"{what} {before:.4g} -> {after:.4g}"


__all__ = ["change", "short", "step"]
