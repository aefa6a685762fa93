"""Keep optional back ends quiet when they are imported but not used.

Why: loading the SBERT model of `eval-dr` imports sentence-transformers -> transformers' trainer
utilities -> peft -> bitsandbytes, and bitsandbytes announces at import, as a warning, which compiled
CPU kernels it could not fetch. Nothing is quantized there, so on a CPU machine that notice is noise
(and on a GPU machine it is irrelevant to an embedding model). While `optional_backends_quiet()` is
active, such records go to this module's debug log instead of the terminal; transformers' own
"Loading weights" bar can be switched off for the same span.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator

logger = logging.getLogger(__name__)

#: Loggers of back ends that talk at import time although the caller does not use them.
QUIET_LOGGERS: tuple[str, ...] = ("bitsandbytes",)


class _ToDebug(logging.Handler):
    """Re-emits a record on this module's logger at DEBUG."""

    def emit(self, record: logging.LogRecord) -> None:
        logger.debug("%s: %s", record.name, record.getMessage())


@contextlib.contextmanager
def optional_backends_quiet(progress_bars: bool = True) -> Iterator[None]:
    """Route the `QUIET_LOGGERS` to a debug log while the body runs (imports included); with
    `progress_bars=False` also hide transformers' progress bars (weight loading) for that span.
    Both are restored afterwards."""
    handler = _ToDebug()
    saved = []
    for name in QUIET_LOGGERS:
        lg = logging.getLogger(name)
        saved.append((lg, lg.propagate))
        lg.addHandler(handler)
        lg.propagate = False
    restore_bars = None
    if not progress_bars:
        try:
            from transformers.utils import logging as hf_logging
        except ImportError:
            hf_logging = None
        if hf_logging is not None and hf_logging.is_progress_bar_enabled():
            hf_logging.disable_progress_bar()
            restore_bars = hf_logging.enable_progress_bar
    try:
        yield
    finally:
        for lg, propagate in saved:
            lg.removeHandler(handler)
            lg.propagate = propagate
        if restore_bars is not None:
            restore_bars()


__all__ = ["QUIET_LOGGERS", "optional_backends_quiet"]
