"""Progress of the commands that work through many images: one rule for all of them.

A bar is drawn on stderr when stderr is a terminal and there is more than one item; piped or
redirected (`2> log`, CI, a test), there is none, so logs hold messages, not carriage returns. stdout
never gets a bar, so `--json` output stays clean whatever happens to stderr.

A run is told in stages (`Stages`): reading the inputs, fitting the references, learning from the
batch, inspecting, writing the page. Each stage says when it starts (one line, on a terminal or in a
log) and is timed when it ends, however it ends: after Ctrl-C the timings still add up to the time
spent, stage by stage. The batch stage has its own bar (`BatchProgress`): it counts the images read for
the batch detector's partner pool and for the calibration sample, and keeps its clock moving while the
pool's features are computed, so a long set-up never looks like a stuck `0/200`.
"""

from __future__ import annotations

import contextlib
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
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


class LazyBar:
    """A progress bar that is drawn from its first update on: a run's set-up stages come first, with
    their own lines and bar, so the main bar never sits at 0/N through a long set-up."""

    def __init__(self, total: int | None, desc: str, enabled: bool = True, stream: TextIO | None = None) -> None:
        self.args = (total, desc, enabled, stream)
        self._bar: Any = None

    def _get(self) -> Any:
        if self._bar is None:
            self._bar = progress_bar(*self.args)
        return self._bar

    @property
    def disable(self) -> bool:
        """True until the bar is drawn, and when it is not drawn at all (not a terminal, --quiet)."""
        return self._bar is None or bool(self._bar.disable)

    def update(self, n: int = 1) -> None:
        self._get().update(n)

    def set_postfix(self, **kwargs: Any) -> None:
        self._get().set_postfix(**kwargs)

    def write(self, msg: str, file: TextIO | None = None) -> None:
        self._get().write(msg, file=file)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()


def bar_writer(bar: Any, stream: TextIO | None = None) -> Any:
    """A one-line message writer that goes through the bar when one is drawn, else straight to stderr."""

    def write(msg: str) -> None:
        out = stream if stream is not None else sys.stderr
        if bar.disable:
            print(msg, file=out, flush=True)
        else:
            bar.write(msg, file=out)

    return write


#: stage key -> how the timing line names it (in run order)
STAGE_NAMES: dict[str, str] = {
    "read": "reading",
    "references": "fitting the references",
    "workers": "starting the workers",
    "batch": "learning from the batch",
    "inspect": "inspecting",
    "page": "writing the page",
}


class Stages:
    """The stages of a run: each announced as it starts (`say`) and timed when it ends, also when it
    ends by an exception or Ctrl-C (so an interrupted run's timings are still true)."""

    def __init__(self, say: Callable[[str], None] | None = None, prefix: str = "") -> None:
        self.say = say
        self.prefix = prefix
        self.seconds: dict[str, float] = {}
        self._started: dict[str, float] = {}

    @contextlib.contextmanager
    def stage(self, key: str, message: str = "") -> Iterator[None]:
        """Time the block as stage `key` (added to earlier time of the same stage); say `message` first."""
        if message and self.say is not None:
            self.say(f"{self.prefix}{message}")
        t0 = time.perf_counter()
        self._started[key] = t0
        try:
            yield
        finally:
            self._started.pop(key, None)
            self.seconds[key] = self.seconds.get(key, 0.0) + time.perf_counter() - t0

    def total(self) -> float:
        return sum(self.seconds.values())

    def line(self) -> str:
        """'fitting the references 1.2 s, learning from the batch 35.0 s, inspecting 1.1 s' (run order;
        stages that took no time are left out)."""
        order = [k for k in STAGE_NAMES if k in self.seconds] + [k for k in self.seconds if k not in STAGE_NAMES]
        return ", ".join(f"{STAGE_NAMES.get(k, k)} {self.seconds[k]:.1f} s" for k in order if self.seconds[k] >= 0.05)


class CountedImages(Sequence[Any]):
    """A (lazy) image sequence that calls `on_read` after every image read from it; other attributes
    (the content `keys` of a lazy sequence) are the wrapped sequence's. It stops counting when its
    bar closes, and travels (pickled, e.g. to Ray workers) without its counter."""

    def __init__(self, images: Sequence[Any], on_read: Callable[[], None] | None) -> None:
        self.images = images
        self.on_read = on_read

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: Any) -> Any:
        try:
            return self.images[index]
        finally:
            if self.on_read is not None:
                self.on_read()

    def __getstate__(self) -> dict[str, Any]:
        return {"images": self.images, "on_read": None}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.images, name)


class BatchProgress:
    """The batch stage's bar: images read for the partner pool (`pool`), then for the calibration
    sample (`sample`); its clock is refreshed every second, so it moves while features are computed."""

    def __init__(self, pool: int, sample: int, enabled: bool = True, stream: TextIO | None = None) -> None:
        self.pool, self.sample, self.read = pool, sample, 0
        total = pool + sample
        self.bar = progress_bar(total if total > 1 else None, "learning from the batch", enabled, stream)
        self.bar.unit = "read"
        if pool:
            self.bar.set_postfix_str("reading the partner pool", refresh=False)
        self._counted: list[CountedImages] = []
        self._stop = threading.Event()
        self._ticker: threading.Thread | None = None
        if not self.bar.disable:
            self._ticker = threading.Thread(target=self._tick_clock, name="batch-progress", daemon=True)
            self._ticker.start()

    def _tick_clock(self) -> None:
        while not self._stop.wait(1.0):
            self.bar.refresh()

    def images(self, images: Sequence[Any]) -> CountedImages:
        """`images`, counted on this bar as they are read (until the bar closes)."""
        counted = CountedImages(images, self.tick)
        self._counted.append(counted)
        return counted

    def tick(self) -> None:
        self.read += 1
        if self.read == self.pool and self.pool:
            self.bar.set_postfix_str("pool read; its features and mutual scores", refresh=False)
        elif self.read == self.pool + 1 and self.sample:
            self.bar.set_postfix_str("scoring the calibration sample", refresh=False)
        self.bar.update(1)

    def close(self) -> None:
        self._stop.set()
        if self._ticker is not None:
            self._ticker.join(timeout=2.0)
        for counted in self._counted:  # a detector may keep the sequence: later reads are not this stage's
            counted.on_read = None
        self.bar.close()

    def __enter__(self) -> BatchProgress:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


__all__ = ["STAGE_NAMES", "BatchProgress", "CountedImages", "LazyBar", "Stages", "bar_writer", "progress_bar", "wants_progress"]
