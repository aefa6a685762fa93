"""The batch loop of `looktwice report`: inputs -> inspections -> files + store -> exports and index.html.

Order of writes for one image: its files (staged, flushed, renamed into place), then its row in the
store (one committed transaction). So a kill at any point keeps every committed image, and a resumed
run redoes only what has no committed row, whose file content changed (sha256), whose settings differ,
or whose files went missing. Failed inputs are retried on resume (they are cheap, and the cause, e.g.
permissions, may have been fixed). An input that was done but is missing or unreadable now keeps its
committed result. The exports and the page are rebuilt from the store at the end,
every `html_every_s` seconds during long runs, and when the run is interrupted.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import signal
import sys
import time
from collections import deque
from collections.abc import Callable, Generator, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, TextIO

from agent.images import ImageLimits
from agent.inspection.settings import InspectionSettings
from agent.progress import Stages
from agent.report.files import STAGING_DIR, clear_staging, outputs_present, write_image_outputs
from agent.report.inputs import InputItem, clean_text, file_digest
from agent.report.step import (
    Inspected,
    ReportUsageError,
    Todo,
    assign_stems,
    collect_or_usage_error,
    error_message,
    fits_on_batch,
    fitted_pipeline,
    inspect_item,
    lazy_batch,
    learn_from_batch,
    unchanged,
)
from agent.report.store import DB_NAME, STATUS_DONE, STATUS_FAILED, ResultStore, Row, StoreError

if TYPE_CHECKING:
    from agent.inspection import Pipeline

LOCK_NAME = ".lock"
_OWN_ENTRIES = {LOCK_NAME, STAGING_DIR}  # what a run leaves before it has written anything else


class ReportWriteError(Exception):
    """Outputs could not be written mid-run (disk full, folder removed): the run stops (exit code 2)."""


@dataclass
class ReportSettings:
    inputs: list[str]
    out: Path
    refs: str | None = None
    inspection: InspectionSettings = field(default_factory=InspectionSettings)
    resume: bool = False
    progress: bool = True
    durable: bool = True  # fsync files before they are renamed into place
    html_every_s: float = 120.0  # rebuild the page during long runs
    writer_threads: int = 2  # encode and commit finished images while the next ones are inspected
    limits: ImageLimits = field(default_factory=ImageLimits)  # pixel limit, analysis size


@dataclass
class ReportSummary:
    out: Path
    inputs: int = 0
    processed: int = 0  # inspected or failed in this run
    skipped: int = 0  # already done, unchanged
    defective: int = 0  # over all current inputs (final state)
    review: int = 0
    good: int = 0
    failed: int = 0
    seconds: float = 0.0  # of the loop, including setup_seconds (not the final page and exports)
    setup_seconds: float = 0.0  # reading and fitting the references, learning from the batch
    retried: int = 0  # images sent again after the worker inspecting them died (Ray)
    interrupted: bool = False
    stages: dict[str, float] = field(default_factory=dict)  # seconds per stage (`agent.progress.STAGE_NAMES`)

    @property
    def exit_code(self) -> int:
        if self.interrupted:
            return 130
        return 1 if self.failed else 0

    def line(self) -> str:
        """The closing line: outcomes, then this run's time split by stage, and its overall speed (the
        calibration sample is scored while learning from the batch, so a per-stage speed would mislead)."""
        done = self.defective + self.review + self.good
        rate = f"{100 * self.defective / done:.1f}%" if done else "n/a"
        total = self.seconds + self.stages.get("page", 0.0)
        speed = f"; {self.processed / total:.2f} images/s overall" if total > 0 and self.processed else ""
        head = "report interrupted" if self.interrupted else "report done"
        retried = f" ({self.retried} retried after a worker died)" if self.retried else ""
        split = Stages()
        split.seconds = dict(self.stages)
        parts = split.line()
        return (
            f"{head}: {self.inputs} input(s): {done} inspected ({self.defective} defective, {self.review} to review, {self.good} good, "
            f"defect rate {rate}), {self.failed} failed; this run {self.processed} processed{retried}, {self.skipped} "
            f"skipped as already done, {total:.1f} s{f' ({parts})' if parts else ''}{speed}; report: {self.out / 'index.html'}"
        )


def _stderr(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


# ---------------------------------------------------------------------------------------------- folder
def prepare_out(out: Path, resume: bool) -> None:
    if out.exists() and not out.is_dir():
        raise ReportUsageError(f"output path '{out}' exists and is not a folder")
    if out.is_dir():
        try:
            entries = {p.name for p in out.iterdir()}
        except OSError as err:
            raise ReportUsageError(f"cannot read output folder '{out}': {err.strerror or err}") from None
        if entries - _OWN_ENTRIES:
            if not resume:
                raise ReportUsageError(
                    f"output folder '{out}' is not empty; add --resume to continue the report in it, "
                    "or give a new or empty folder with --out"
                )
            if DB_NAME not in entries:
                raise ReportUsageError(
                    f"output folder '{out}' is not empty and holds no LookTwice report ({DB_NAME} is missing); "
                    "give a new or empty folder with --out"
                )
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / f".write-test-{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as err:
        reason = err.strerror or str(err)
        raise ReportUsageError(f"output folder '{out}' is not writable: {reason}") from None


@contextlib.contextmanager
def locked(out: Path) -> Iterator[None]:
    """One report at a time per folder (the lock goes away with the process, also on kill -9)."""
    try:
        fd = os.open(out / LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as err:
        raise ReportUsageError(f"output folder '{out}' is not writable: {err.strerror or err}") from None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            raise ReportUsageError(
                f"another report is running in '{out}'; wait for it or use another --out"
            ) from None
        yield
    finally:
        os.close(fd)


# ---------------------------------------------------------------------------------------------- settings
def settings_fingerprint(s: ReportSettings) -> dict[str, Any]:
    """What decides a result: detector, its options, brain, and the references' content."""
    from tools.image_io import list_images

    refs: list[list[str]] = []
    if s.refs is not None:
        root = Path(s.refs)
        if not root.exists():
            raise ReportUsageError(f"references folder '{root}' does not exist")
        paths = list_images(root, recursive=True) if root.is_dir() else [root]
        for p in paths:
            try:
                digest = file_digest(str(p))[1]
            except OSError:
                digest = "unreadable"
            refs.append([str(p.relative_to(root)) if root.is_dir() else p.name, digest])
    return {**s.inspection.fingerprint(), "references": refs}


def settings_hash(fingerprint: dict[str, Any]) -> str:
    text = json.dumps(fingerprint, sort_keys=True, default=str)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


def check_settings(store: ResultStore, fingerprint: dict[str, Any], digest: str) -> None:
    stored = store.get_meta("settings_hash")
    if stored is None:
        store.set_meta("settings_hash", digest)
        store.set_meta("settings", json.dumps(fingerprint, default=str))
        store.set_meta("created", time.strftime("%Y-%m-%dT%H:%M:%S"))
        return
    if stored != digest:
        before = json.loads(store.get_meta("settings") or "{}")
        changed = sorted(k for k in set(before) | set(fingerprint) if before.get(k) != fingerprint.get(k))
        raise ReportUsageError(
            f"the report in '{store.path.parent}' was made with other settings (changed: {', '.join(changed)}); "
            "resume it with the same --detector/--brain/--refs/--false-alarm-rate/detector settings, or give a new --out"
        )


# ---------------------------------------------------------------------------------------------- loop
class Inspector(Protocol):
    """Where the images are inspected: in this process (`LocalInspector`) or on Ray actors
    (`agent.report.ray_runner`). The driver keeps the store, the files and the page either way."""

    setup_seconds: float  # reading and fitting the references, learning from the batch
    retried: int  # images sent again after a worker died
    stages: Stages  # the set-up's stages, timed as they happen (also when interrupted)

    def run(self, todos: Iterator[Todo], say: Callable[[str], None]) -> Generator[tuple[Todo, Inspected], None, None]:
        """Inspect what `todos` yields (pulled lazily); yield each with its outcome, in any order."""
        ...


#: builds the inspector of a run from its settings and all its inputs (the batch the pipeline fits on)
InspectorFactory = Callable[["ReportSettings", list[InputItem]], Inspector]


class LocalInspector:
    """One pipeline in this process, fitted on first use: on the references and, for a batch, on the
    batch itself (a seeded sample of the inputs, read lazily), once per run; then image after image."""

    def __init__(self, s: ReportSettings, items: list[InputItem]) -> None:
        self.s, self.items = s, items
        self.stages = Stages()
        self.retried = 0

    @property
    def setup_seconds(self) -> float:
        return self.stages.total()

    def fit(self, say: Callable[[str], None]) -> Pipeline:
        n = len(self.items)
        self.stages.say = say if self.s.progress else None
        self.stages.prefix = "report: "
        pipeline = fitted_pipeline(self.s.inspection, self.s.refs, self.s.limits, n, say, self.stages)
        if fits_on_batch(pipeline, n):
            learn_from_batch(pipeline, lazy_batch(self.items, self.s.limits), [i.display_path for i in self.items],
                             self.stages, self.s.progress)
        if self.s.progress:
            say(f"report: inspecting {n} image(s) with {pipeline.detector.name if pipeline.detector else '?'}")
        return pipeline

    def run(self, todos: Iterator[Todo], say: Callable[[str], None]) -> Generator[tuple[Todo, Inspected], None, None]:
        pipeline = None
        for todo in todos:
            if pipeline is None:
                pipeline = self.fit(say)
            yield todo, inspect_item(pipeline, todo.item, self.s.limits, say)


def failed_row(item: InputItem, stem: str, seq: int, digest: str, error: str, **kw: Any) -> Row:
    return Row(
        item.key,
        item.display_path,
        stem,
        settings_hash=digest,
        status=STATUS_FAILED,
        error=clean_text(error),
        seq=seq,
        **kw,
    )


@dataclass
class _WriteJob:
    """The second half of one image: its files, then its committed row (run on the writer thread)."""

    row: Row
    record: Any  # InspectionRecord
    image: Any  # PIL image
    out: Path
    durable: bool
    t_hash: float
    t_inspect: float

    def run(self, store: ResultStore) -> Row:
        t = time.perf_counter()
        try:
            files = write_image_outputs(
                self.record, self.image, self.out, self.row.stem, durable=self.durable
            )
        except OSError as err:
            raise ReportWriteError(f"cannot write outputs to '{self.out}': {err.strerror or err}") from None
        t_write = time.perf_counter() - t
        data = self.record.to_json_dict({k: v for k, v in files.items() if k in ("anomaly_map", "pred_mask")})
        data["overlay"] = files["overlay"]
        self.row.record, self.row.files = data, files
        self.row.timings = {
            "hash": round(self.t_hash, 4),
            "inspect": round(self.t_inspect, 4),
            "write": round(t_write, 4),
            "total": round(self.t_hash + self.t_inspect + t_write, 4),
        }
        store.put(self.row)
        return self.row


def _plan(
    item: InputItem, stem: str, seq: int, digest: str, store: ResultStore, out: Path
) -> Row | Todo | None:
    """What to do with one input. None: already done; a Row: unreadable (committed); a Todo: inspect it."""
    t0 = time.perf_counter()
    old = store.get(item.key)
    try:
        size, sha = file_digest(item.path)
    except OSError as err:
        if old is not None and old.ok and old.settings_hash == digest and outputs_present(out, old.files):
            return None  # gone or unreadable now: its committed result is kept, not lost
        if isinstance(err, IsADirectoryError):
            reason = "is a directory"
        elif isinstance(err, FileNotFoundError):
            reason = "file not found"
        else:
            reason = err.strerror or str(err)
        row = failed_row(item, stem, seq, digest, f"cannot read image '{item.display_path}': {reason}")
        store.put(row)
        return row
    if unchanged(old, sha, digest, out):
        return None
    return Todo(item, stem, seq, size, sha, time.perf_counter() - t0)


def _finish(
    todo: Todo, inspected: Inspected, digest: str, store: ResultStore, out: Path, durable: bool
) -> Row | _WriteJob:
    """A failed inspection as its committed row; a finished one as the job that writes and commits it."""
    item = todo.item
    if inspected.error is not None:
        row = failed_row(
            item, todo.stem, todo.seq, digest, inspected.error, size=todo.size, sha256=todo.sha256
        )
        store.put(row)
        return row
    row = Row(
        item.key,
        item.display_path,
        todo.stem,
        size=todo.size,
        sha256=todo.sha256,
        settings_hash=digest,
        status=STATUS_DONE,
        seq=todo.seq,
    )
    return _WriteJob(row, inspected.record, inspected.image, out, durable, todo.t_hash, inspected.seconds)


def finalize(store: ResultStore, out: Path, title: str = "LookTwice report") -> list[Row]:
    """Rebuild the exports and the HTML page from everything in the store; returns the rows."""
    from agent.report.export import write_exports
    from agent.report.html import write_html

    rows = list(store.rows())
    meta = {"settings": json.loads(store.get_meta("settings") or "{}"), "title": title}
    try:
        write_exports(rows, out)
        write_html(rows, meta, out)
    except OSError as err:
        raise ReportWriteError(f"cannot write the report files to '{out}': {err.strerror or err}") from None
    return rows


def count_outcomes(rows: Iterable[Row], wanted: set[str], summary: ReportSummary) -> None:
    """Add this run's inputs (`wanted` keys) to the summary's failed / defective / review / good counts."""
    for row in rows:
        if row.path not in wanted:
            continue
        if not row.ok:
            summary.failed += 1
        elif row.record and row.record.get("pred_label"):
            summary.defective += 1
        elif row.record and row.record.get("verdict") == "review":
            summary.review += 1
        else:
            summary.good += 1


@contextlib.contextmanager
def _sigterm_as_interrupt() -> Iterator[None]:
    """SIGTERM stops the run like Ctrl-C: the page and exports are rebuilt before exiting."""
    import threading

    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def run_report(
    s: ReportSettings,
    info: Callable[[str], None] = _stderr,
    progress_file: TextIO | None = None,
    inspector: InspectorFactory | None = None,
) -> ReportSummary:
    """Run (or resume) a report. Raises ReportUsageError / ReportWriteError / StoreError (exit 2).
    `inspector` says where images are inspected (default: `LocalInspector`, in this process)."""
    from agent.brains import BRAINS
    from agent.progress import LazyBar
    from tools.detectors import DETECTORS

    if s.inspection.detector != "auto" and s.inspection.detector not in DETECTORS:
        raise ReportUsageError(
            f"unknown detector '{s.inspection.detector}'; choose one of: auto, {', '.join(DETECTORS.names())}"
        )
    if s.inspection.brain.split(":", 1)[0] not in BRAINS:
        raise ReportUsageError(f"unknown brain '{s.inspection.brain}'; choose one of: {', '.join(BRAINS.names())}")
    t_read = time.perf_counter()
    items = collect_or_usage_error(s.inputs)
    fingerprint = settings_fingerprint(s)
    digest = settings_hash(fingerprint)
    t_read = time.perf_counter() - t_read
    out = Path(s.out)
    prepare_out(out, s.resume)
    summary = ReportSummary(out=out, inputs=len(items))
    t_start = time.perf_counter()
    with locked(out), ResultStore(out) as store, _sigterm_as_interrupt():
        check_settings(store, fingerprint, digest)
        store.set_meta("inputs", json.dumps(s.inputs))
        clear_staging(out)
        stems = assign_stems(store.stems(), items)
        bar = LazyBar(len(items), "report", s.progress, progress_file)  # no stream held: `say` travels to Ray

        def say(msg: str) -> None:
            if not bar.disable:
                bar.write(msg, file=progress_file or sys.stderr)
            else:
                info(msg)

        engine = (inspector or LocalInspector)(s, items)
        last_html = time.monotonic()
        failed_now = 0
        # writer threads: finished images' files are encoded and committed while the next images are
        # inspected (PNG encoding and torch both release the GIL); a few images at most wait to be written
        writers = max(1, s.writer_threads)
        writer = ThreadPoolExecutor(max_workers=writers, thread_name_prefix="report-writer")
        pending: deque[Future[Row]] = deque()
        ahead = writers + 1

        def finished(row: Row) -> None:
            nonlocal failed_now
            summary.processed += 1
            if not row.ok:
                failed_now += 1
                say(f"looktwice: error: {row.error}")
            bar.update(1)
            bar.set_postfix(failed=failed_now, refresh=False)

        def drain(limit: int) -> None:
            while len(pending) > limit:
                finished(pending.popleft().result())  # re-raises ReportWriteError / StoreError

        def todos() -> Iterator[Todo]:
            """The inputs to inspect, decided one by one as the inspector asks for more."""
            for seq, item in enumerate(items):
                planned = _plan(item, stems[item.key], seq, digest, store, out)
                if planned is None:
                    summary.skipped += 1
                    bar.update(1)
                elif isinstance(planned, Row):
                    finished(planned)
                else:
                    yield planned

        try:
            try:
                # closed however the loop ends, so the workers stop
                with contextlib.closing(engine.run(todos(), say)) as results:
                    for todo, inspected in results:
                        result = _finish(todo, inspected, digest, store, out, s.durable)
                        if isinstance(result, Row):
                            finished(result)
                        else:
                            pending.append(writer.submit(result.run, store))
                        drain(ahead - 1)
                        if time.monotonic() - last_html > s.html_every_s:
                            drain(0)
                            finalize(store, out)
                            last_html = time.monotonic()
                drain(0)
            except KeyboardInterrupt:
                summary.interrupted = True
                drain(0)  # what is already inspected gets written and committed (a second Ctrl-C stops that)
        finally:
            writer.shutdown(wait=True)
            bar.close()
        summary.seconds = time.perf_counter() - t_start
        summary.setup_seconds = engine.setup_seconds
        summary.retried = engine.retried
        summary.stages = dict(engine.stages.seconds)
        summary.stages["read"] = summary.stages.get("read", 0.0) + t_read
        summary.stages["inspect"] = max(0.0, summary.seconds - summary.setup_seconds)
        clear_staging(out)
        t_page = time.perf_counter()
        if s.progress and not summary.interrupted:
            say(f"report: writing the page and the exports of {len(items)} input(s)")
        rows = finalize(store, out)
        summary.stages["page"] = time.perf_counter() - t_page
        count_outcomes(rows, {item.key for item in items}, summary)
    return summary


__all__ = [
    "Inspector",
    "InspectorFactory",
    "LocalInspector",
    "ReportSettings",
    "ReportSummary",
    "ReportUsageError",
    "ReportWriteError",
    "StoreError",
    "error_message",
    "failed_row",
    "run_report",
    "settings_fingerprint",
    "settings_hash",
]
