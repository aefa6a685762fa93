"""The per-image step of a report, shared by the local loop (`runner.py`) and the Ray actors
(`ray_runner.py`), so both inspect an image the same way and fail on it the same way.

Nothing here touches the store or the output folder: that stays on the driver. What crosses a
process boundary (`Inspected`, `Evidence`) is plain picklable data.
"""

from __future__ import annotations

import contextlib
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TextIO

from agent.images import ImageLimits, source_size
from agent.outputs import unique_stem
from agent.progress import BatchProgress, Stages
from agent.report.files import outputs_present
from agent.report.inputs import InputError, InputItem, collect_inputs, safe_stem
from tools.image_io import ImageLoadError

if TYPE_CHECKING:
    from pathlib import Path

    from agent.inspection import Pipeline
    from agent.inspection.pipeline import Evidence
    from agent.inspection.settings import InspectionSettings
    from agent.report.store import Row


class ReportUsageError(Exception):
    """A problem with the command line or the output folder (exit code 2); one clear line."""


def unchanged(old: Row | None, sha: str, digest: str, out: Path) -> bool:
    """Whether a committed row still stands for a resumed run: done, same file content, same
    settings, and its output files still there."""
    return (
        old is not None and old.ok and old.sha256 == sha and old.settings_hash == digest
        and outputs_present(out, old.files)
    )


def assign_stems(stems: dict[str, str], items: Sequence[InputItem]) -> dict[str, str]:
    """`stems` (input key -> output file stem, as the store has them) completed with a unique, safe
    stem for every new input; a resumed run keeps the stems of its first."""
    taken = set(stems.values())
    for item in items:
        if item.key not in stems:
            stems[item.key] = unique_stem(safe_stem(item.key) + ".x", taken)
    return stems


def collect_or_usage_error(inputs: Sequence[str]) -> list[InputItem]:
    """The images named by `inputs` (files, folders, lists) for a batch run; none, or an unreadable
    input, is a usage error."""
    try:
        items = collect_inputs(list(inputs))
    except (InputError, OSError) as err:
        raise ReportUsageError(str(err)) from None
    if not items:
        raise ReportUsageError(f"no input images found in: {', '.join(inputs)}")
    return items


@dataclass
class Todo:
    """An input the driver decided to inspect (not done yet, or changed), with what its row needs."""

    item: InputItem
    stem: str
    seq: int
    size: int
    sha256: str
    t_hash: float


@dataclass
class Inspected:
    """One image's outcome: the record and the analysed image, or the one-line error."""

    record: Any = None  # InspectionRecord
    image: Any = None  # PIL image, as analysed (for the overlay)
    error: str | None = None
    seconds: float = 0.0


def stderr_line(msg: str) -> None:
    """A module-level writer (picklable), for pipelines that travel to other processes."""
    print(msg, file=sys.stderr, flush=True)


def error_message(item: InputItem, err: Exception, action: str) -> str:
    """One line for a failed input, naming it as the user gave it (unreadable image or a crash)."""
    if isinstance(err, ImageLoadError):
        return str(err).replace(f"'{item.path}'", f"'{item.display_path}'")
    first = (str(err).strip().splitlines() or [""])[0]
    return f"{action} of '{item.display_path}' failed: {type(err).__name__}: {first}"


def inspect_item(
    pipeline: Pipeline,
    item: InputItem,
    limits: ImageLimits,
    note: Callable[[str], None] = stderr_line,
    evidence: Evidence | None = None,
) -> Inspected:
    """Load and inspect one input. `evidence` is its calibration-sample evidence when it was scored
    elsewhere (a Ray actor), so the image is concluded from it exactly as the local run would."""
    t0 = time.perf_counter()
    try:
        if evidence is not None:
            pipeline.remember(evidence)
        image = limits.load(item.path, note=note)
        record = pipeline.inspect(item.display_path, image)
        record.source_size = source_size(image)
    except Exception as err:  # one image breaking the detector must not stop the batch
        return Inspected(error=error_message(item, err, "inspection"), seconds=time.perf_counter() - t0)
    return Inspected(record, image, seconds=time.perf_counter() - t0)


def score_item(pipeline: Pipeline, item: InputItem, limits: ImageLimits) -> Evidence | None:
    """Steps 1-3 for one image of the calibration sample; None when it cannot be read (the sample goes
    on without it, as `Pipeline.fit_batch` does)."""
    try:
        image = limits.load(item.path)
    except ImageLoadError:
        return None
    return pipeline.score(item.display_path, image)


@contextlib.contextmanager
def setup_errors_as_usage() -> Iterator[None]:
    """Fitting errors (bad detector settings, unusable references or batch) are usage errors."""
    from tools.detectors import DetectorError

    try:
        yield
    except (DetectorError, ValueError, KeyError, TypeError) as err:
        raise ReportUsageError(str(err)) from None


def fitted_pipeline(
    inspection: InspectionSettings, refs: str | None, limits: ImageLimits, n_images: int, warn: Callable[[str], None],
    stages: Stages | None = None,
) -> Pipeline:
    """The pipeline fitted on the references for a batch of `n_images` (not yet on the batch); the
    reading and the fitting are two `stages` when given."""
    from agent.inspection import Pipeline

    stages = stages or Stages()
    with setup_errors_as_usage():
        with stages.stage("read", f"reading the references in '{refs}'" if refs else ""):
            references = limits.references(refs, warn=warn)
        what = inspection.detector if inspection.detector != "auto" else "the detector"
        with stages.stage("references", f"fitting {what} on {len(references)} reference(s)" if references else ""):
            return Pipeline(inspection, warn=warn).fit(references, n_images=n_images)


def batch_reads(pipeline: Pipeline, n_images: int) -> tuple[int, int]:
    """How many images learning from a batch of `n_images` reads: the batch detector's partner pool,
    and the calibration sample (each 0 when that part does not run)."""
    from agent.inspection.decision import MAX_CALIBRATION_SAMPLE

    detector = pipeline.detector
    pool = 0
    if detector is not None and detector.needs_batch:
        pool = min(n_images, int(getattr(getattr(detector, "config", None), "max_pool", n_images)))
    sample = min(n_images, MAX_CALIBRATION_SAMPLE) if pipeline.calibrates_on_batch else 0
    return pool, sample


def learn_from_batch(
    pipeline: Pipeline, images: Sequence[Any], paths: Sequence[str], stages: Stages, progress: bool = True,
    stream: TextIO | None = None, learn_only: bool = False, keys: Sequence[str] | None = None,
) -> None:
    """`Pipeline.fit_batch` (or only `learn_batch`, when the sample is scored elsewhere) as the stage
    "learning from the batch", said first with what it reads, and with its own bar on a terminal
    (`keys`: the batch's content keys, when the caller has them)."""
    pool, sample = batch_reads(pipeline, len(images))
    sample = 0 if learn_only else sample
    parts = [f"a partner pool of {pool}"] * bool(pool) + [f"a calibration sample of {sample}"] * bool(sample)
    message = f"learning from the batch: {' and '.join(parts)} of the {len(images)} images"
    with stages.stage("batch", message), BatchProgress(pool, sample, progress, stream) as bar, setup_errors_as_usage():
        if learn_only:
            pipeline.learn_batch(bar.images(images), keys)
        else:
            pipeline.fit_batch(bar.images(images), list(paths))


def fits_on_batch(pipeline: Pipeline, n_images: int) -> bool:
    """Whether the batch itself is learned from: a batch detector, or `--calibration batch`."""
    return pipeline.uses_batch(n_images)


def lazy_batch(items: Sequence[InputItem], limits: ImageLimits) -> Any:
    """The batch as a lazy image sequence (only the images a detector samples are read)."""
    from tools.lazy_images import LazyImages

    return LazyImages([item.path for item in items], limits.load)


__all__ = [
    "Inspected",
    "batch_reads",
    "learn_from_batch",
    "ReportUsageError",
    "Todo",
    "error_message",
    "fits_on_batch",
    "fitted_pipeline",
    "inspect_item",
    "lazy_batch",
    "score_item",
    "setup_errors_as_usage",
    "stderr_line",
]
