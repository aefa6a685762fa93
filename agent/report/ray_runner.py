"""Reports on Ray: the same report, with the images inspected by Ray actors on one or many machines.

Why this shape:
- The driver (the `looktwice report` process) keeps everything that must happen once: the SQLite
  store, the files, the page, resume. Results stream back and go through the local run's code
  (`runner.run_report`), so a Ray report and a local one are the same report.
- The pipeline is fitted once, on the driver, and shipped (`ray.put`): each actor unpickles it once
  and keeps it for its whole life, so the detector and the brain load once per actor, not per image.
- What needs the whole batch runs as stages, mirroring `Pipeline.fit_batch`: the batch detector's
  partner pool is learned on the driver; the calibration sample is scored on the actors
  (`Pipeline.score`); the boundary is set on the driver from those scores and the same scores are
  sent to every actor (`Pipeline.calibrate_on_batch` is deterministic); then the actors inspect. The
  sample's evidence comes back and goes with its image, so its verdict is concluded from the very
  evidence the boundary was set on, as in a local run: the same seed gives the same scores.
- A worker that dies costs only its images in flight: they are sent to a new actor (`_Pool`), up to
  `max_attempts` times, then recorded as failed. A killed driver loses nothing committed: `--resume`.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import os
import shutil
import signal
import tempfile
import threading
import time
from collections import deque
from collections.abc import Callable, Generator, Iterable, Iterator
from dataclasses import dataclass
from types import ModuleType
from typing import TYPE_CHECKING, Any

from agent.images import ImageLimits
from agent.progress import Stages
from agent.report.inputs import InputItem
from agent.report.runner import ReportSettings
from agent.report.step import (
    Inspected,
    ReportUsageError,
    Todo,
    fits_on_batch,
    fitted_pipeline,
    inspect_item,
    lazy_batch,
    learn_from_batch,
    score_item,
    stderr_line,
)

if TYPE_CHECKING:
    from agent.inspection import Pipeline
    from agent.inspection.pipeline import Evidence

#: the one line `--ray` prints when the extra is not installed
MISSING_RAY = "--ray needs Ray, which is not installed: pip install 'looktwice[scale]'"


@dataclass
class RaySettings:
    """Where and how wide: `address` None starts Ray here; "auto" joins the cluster of `ray start`."""

    address: str | None = None
    workers: int = 2
    cpus_per_worker: float = 1.0
    gpus_per_worker: float = 0.0
    in_flight: int = 2  # images queued on each actor, so none idles while the driver writes
    max_attempts: int = 3  # an image whose worker died this many times is recorded as failed
    start_timeout_s: float = 300.0  # workers not started by then: not enough resources, a usage error


def import_ray() -> ModuleType:
    """Ray, or a usage error naming the extra (Ray is optional and heavy: imported only here)."""
    try:
        import ray
    except ImportError:
        raise ReportUsageError(MISSING_RAY) from None
    return ray


class InspectorActor:
    """One worker. It holds one fitted pipeline for its whole life: the detector's weights arrive
    once (unpickled from the object store), and a model brain loads on the first image, once."""

    def __init__(self, pipeline: Pipeline, limits: ImageLimits) -> None:
        self.pipeline, self.limits = pipeline, limits

    def pid(self) -> int:
        """This worker's process id (to watch it, or to test that its death costs nothing)."""
        return os.getpid()

    def score(self, item: InputItem) -> Evidence | None:
        return score_item(self.pipeline, item, self.limits)

    def calibrate(self, scores: list[float]) -> None:
        self.pipeline.calibrate_on_batch(scores)

    def inspect(self, item: InputItem, evidence: Evidence | None = None) -> Inspected:
        return inspect_item(self.pipeline, item, self.limits, stderr_line, evidence)


@dataclass
class _Died:
    """A call whose worker died `attempts` times (or that raised inside Ray): what to record."""

    message: str


@dataclass
class _Slot:
    actor: Any
    generation: int
    load: int = 0


class _Pool:
    """The actors, and calls spread over them as they free up; a dead actor is replaced and its calls
    in flight are sent again (own resubmission, not Ray's restarts: a replacement must start from
    the latest pipeline, which after the batch stage is the calibrated one)."""

    def __init__(self, ray: ModuleType, rs: RaySettings, pipeline_ref: Any, limits: ImageLimits, say: Callable[[str], None]) -> None:
        self.ray, self.rs, self.pipeline_ref, self.limits, self.say = ray, rs, pipeline_ref, limits, say
        self.actor_class = ray.remote(InspectorActor)
        self.run_id = f"looktwice-report-{os.getpid()}-{int(time.time())}"
        self.started = 0
        self.retried = 0
        self.slots = [self._new(i) for i in range(rs.workers)]

    def _new(self, index: int) -> _Slot:
        self.started += 1
        actor = self.actor_class.options(
            name=f"{self.run_id}-{self.started}",
            num_cpus=self.rs.cpus_per_worker,
            num_gpus=self.rs.gpus_per_worker,
            max_restarts=0,
            max_task_retries=0,
        ).remote(self.pipeline_ref, self.limits)
        return _Slot(actor, self.started)

    def broadcast(self, method: str, *args: Any) -> None:
        """Call `method` on every actor and wait (a death here is met again, and healed, in `map`)."""
        refs = [getattr(slot.actor, method).remote(*args) for slot in self.slots]
        with contextlib.suppress(self.ray.exceptions.RayActorError):
            self.ray.get(refs)

    def map(self, calls: Iterable[tuple[Any, str, tuple[Any, ...]]]) -> Iterator[tuple[Any, Any]]:
        """Run (key, method, args) calls, pulled lazily; yield (key, result) as each finishes, or
        (key, _Died) for a call whose worker kept dying or that raised inside Ray."""
        ray, source = self.ray, iter(calls)
        retry: deque[tuple[Any, str, tuple[Any, ...], int]] = deque()
        running: dict[Any, tuple[int, int, Any, str, tuple[Any, ...], int]] = {}
        exhausted = False
        while True:
            while True:  # fill every actor up to `in_flight`
                slot_index = min(range(len(self.slots)), key=lambda i: self.slots[i].load)
                slot = self.slots[slot_index]
                if slot.load >= self.rs.in_flight:
                    break
                if retry:
                    key, method, args, attempt = retry.popleft()
                elif not exhausted:
                    nxt = next(source, None)
                    if nxt is None:
                        exhausted = True
                        continue
                    (key, method, args), attempt = nxt, 1
                else:
                    break
                ref = getattr(slot.actor, method).remote(*args)
                running[ref] = (slot_index, slot.generation, key, method, args, attempt)
                slot.load += 1
            if not running:
                return
            ready, _ = ray.wait(list(running), num_returns=1, timeout=1.0)
            for ref in ready:
                slot_index, generation, key, method, args, attempt = running.pop(ref)
                slot = self.slots[slot_index]
                if slot.generation == generation:
                    slot.load -= 1
                try:
                    value = ray.get(ref)
                except ray.exceptions.RayActorError as err:
                    self._heal(slot_index, generation, err)
                    if attempt >= self.rs.max_attempts:
                        yield key, _Died(f"its worker died {attempt} times ({_first_line(err)})")
                    else:
                        self.retried += 1
                        retry.append((key, method, args, attempt + 1))
                    continue
                except ray.exceptions.RayError as err:
                    yield key, _Died(_first_line(err))
                    continue
                yield key, value

    def _heal(self, index: int, generation: int, err: Exception) -> None:
        """Replace a dead actor once (its other calls in flight fail too and only get resent)."""
        if self.slots[index].generation != generation:
            return
        self.say(f"looktwice: a Ray worker died ({_first_line(err)}); its images go to a new worker")
        self.slots[index] = self._new(index)

    def close(self) -> None:
        for slot in self.slots:
            with contextlib.suppress(Exception):
                self.ray.kill(slot.actor)

    def pids(self) -> list[int]:
        """The workers' process ids; returns once every actor has started (unpickled its pipeline),
        so setup time is counted as setup and a worker that cannot start is one clear error."""
        try:
            refs = [slot.actor.pid.remote() for slot in self.slots]
            return [int(pid) for pid in self.ray.get(refs, timeout=self.rs.start_timeout_s)]
        except self.ray.exceptions.GetTimeoutError:
            raise ReportUsageError(
                f"the {len(self.slots)} Ray worker(s) did not start within {self.rs.start_timeout_s:g} s: does the "
                "cluster have the CPUs/GPUs they ask for (--workers, --cpus-per-worker, --gpus-per-worker)?"
            ) from None
        except self.ray.exceptions.RayError as err:
            raise ReportUsageError(f"the Ray workers could not start: {_first_line(err)}") from None


def _first_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return f"{type(err).__name__}: {text[0] if text else ''}".strip()


@contextlib.contextmanager
def connected(ray: ModuleType, rs: RaySettings) -> Iterator[None]:
    """Connect to Ray: the running connection of this process if any, else `rs.address` ("auto", a
    head's host:port, ray://...), else a new local instance (stopped again at the end)."""
    if ray.is_initialized():
        yield
        return
    options: dict[str, Any] = {"logging_level": logging.WARNING, "log_to_driver": True}
    own_dir: str | None = None
    if rs.address is None:
        need = rs.workers * rs.cpus_per_worker
        # a Ray of our own keeps its session folder (logs, sockets) in a folder removed at the end,
        # not in the system's /tmp/ray, where every run would leave one behind
        own_dir = tempfile.mkdtemp(prefix="looktwice-ray-")
        options.update(num_cpus=max(os.cpu_count() or 1, int(need + 0.999)), include_dashboard=False, _temp_dir=own_dir)
    on_sigterm = signal.getsignal(signal.SIGTERM)
    try:
        ray.init(address=rs.address, **options)
    except (ConnectionError, ValueError, RuntimeError) as err:
        if own_dir is not None:
            shutil.rmtree(own_dir, ignore_errors=True)
        where = f"the Ray cluster at '{rs.address}'" if rs.address else "a local Ray instance"
        raise ReportUsageError(f"cannot connect to {where}: {_first_line(err)}") from None
    if threading.current_thread() is threading.main_thread() and on_sigterm is not None:
        signal.signal(signal.SIGTERM, on_sigterm)  # ray.init sets its own; the report's rebuilds the page
    try:
        yield
    finally:
        ray.shutdown()
        if own_dir is not None:
            shutil.rmtree(own_dir, ignore_errors=True)


class RayInspector:
    """The report's `Inspector` on Ray (see the module docstring for the stages)."""

    def __init__(self, rs: RaySettings, s: ReportSettings, items: list[InputItem]) -> None:
        self.rs, self.s, self.items = rs, s, items
        self.keys: list[str] = []  # the batch's content keys (the calibration sample is drawn by them)
        self.stages = Stages()
        self.retried = 0
        self.workers_started = 0

    @property
    def setup_seconds(self) -> float:
        return self.stages.total()

    def run(self, todos: Iterator[Todo], say: Callable[[str], None]) -> Generator[tuple[Todo, Inspected], None, None]:
        first = next(todos, None)
        if first is None:  # nothing to do: no cluster, no fitting
            return
        ray = import_ray()
        self.stages.say = say if self.s.progress else None
        self.stages.prefix = "report: "
        t0 = time.perf_counter()
        with connected(ray, self.rs):
            self.stages.seconds["workers"] = time.perf_counter() - t0  # connecting to Ray
            pipeline = self._fit(say)
            pipeline.warn = stderr_line  # the run's writer is a closure: it stays here
            pool = _Pool(ray, self.rs, ray.put(pipeline), self.s.limits, say)
            try:
                with self.stages.stage("workers", f"starting {self.rs.workers} Ray worker(s)"):
                    pool.pids()
                evidence: dict[str, Evidence] = {}
                if fits_on_batch(pipeline, len(self.items)) and pipeline.calibrates_on_batch:
                    with self.stages.stage("batch", "scoring the calibration sample on the workers"):
                        evidence = self._calibrate(pool, pipeline)
                        pool.pipeline_ref = ray.put(pipeline)  # a replacement actor starts calibrated
                calls = (
                    (todo, "inspect", (todo.item, evidence.pop(todo.item.key, None)))
                    for todo in itertools.chain([first], todos)
                )
                for todo, value in pool.map(calls):
                    if isinstance(value, _Died):
                        value = Inspected(error=f"inspection of '{todo.item.display_path}' failed: {value.message}")
                    yield todo, value
            finally:
                self.retried, self.workers_started = pool.retried, pool.started
                pool.close()

    def _fit(self, say: Callable[[str], None]) -> Pipeline:
        """On the driver, once: the references, and the batch detector's partner pool."""
        n = len(self.items)
        pipeline = fitted_pipeline(self.s.inspection, self.s.refs, self.s.limits, n, say, self.stages)
        if fits_on_batch(pipeline, n):
            batch = lazy_batch(self.items, self.s.limits)
            self.keys = batch.keys()
            learn_from_batch(pipeline, batch, [], self.stages, self.s.progress, learn_only=True, keys=self.keys)
        return pipeline

    def _calibrate(self, pool: _Pool, pipeline: Pipeline) -> dict[str, Evidence]:
        """The batch stage: the sample scored on the actors, the boundary set here and on every actor
        from the same scores. Returns the sample's evidence by input key."""
        sample = [self.items[i] for i in pipeline.calibration_sample(self.keys)]
        found: dict[str, Evidence | None] = {}
        for item, value in pool.map((item, "score", (item,)) for item in sample):
            if isinstance(value, _Died):
                raise ReportUsageError(f"the batch calibration could not score '{item.display_path}': {value.message}")
            found[item.key] = value
        evidence = {item.key: ev for item in sample if (ev := found[item.key]) is not None}
        scores = [ev.raw for ev in evidence.values()]
        pipeline.calibrate_on_batch(scores)
        pool.broadcast("calibrate", scores)
        return evidence


def ray_inspector(rs: RaySettings) -> Callable[[ReportSettings, list[InputItem]], RayInspector]:
    """The `inspector` argument of `run_report` for a run on Ray."""
    return lambda s, items: RayInspector(rs, s, items)


__all__ = ["MISSING_RAY", "InspectorActor", "RayInspector", "RaySettings", "connected", "import_ray", "ray_inspector"]
