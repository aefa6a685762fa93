"""Progress bars of the commands that work through many images: one rule for all of them.

A bar is drawn on stderr when stderr is a terminal and there is more than one item; piped or
redirected (`2> log`, CI, a test), there is none, so logs hold messages, not carriage returns. stdout
never gets a bar, so `--json` output stays clean whatever happens to stderr.
"""

from __future__ import annotations

import sys
from typing import Any, TextIO


def wants_progress(enabled: bool = True, stream: TextIO | None = None) -> bool:
    """True when a bar should be drawn on `stream` (default stderr): asked for, and a terminal."""
    stream = stream if stream is not None else sys.stderr
    try:
        return bool(enabled) and stream.isatty()
    except (AttributeError, ValueError):  # a closed or fake stream
        return False


def progress_bar(total: int | None, desc: str, enabled: bool = True, stream: TextIO | None = None) -> Any:
    """A tqdm bar over `total` images (None: not known ahead, a count is shown) on stderr, disabled
    unless `wants_progress` and more than one image. Write messages with `bar.write(msg)` so they do
    not tear the bar."""
    from tqdm import tqdm

    stream = stream if stream is not None else sys.stderr
    show = (total is None or total > 1) and wants_progress(enabled, stream)
    return tqdm(
        total=total, desc=desc, unit="img", disable=not show, file=stream, dynamic_ncols=True, smoothing=0.1
    )


def bar_writer(bar: Any, stream: TextIO | None = None) -> Any:
    """A one-line message writer that goes through the bar when one is drawn, else straight to stderr."""

    def write(msg: str) -> None:
        out = stream if stream is not None else sys.stderr
        if bar.disable:
            print(msg, file=out, flush=True)
        else:
            bar.write(msg, file=out)

    return write


__all__ = ["bar_writer", "progress_bar", "wants_progress"]
