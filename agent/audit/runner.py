"""The batch loop of `looktwice audit run`: the `report` machinery (SQLite store, atomic per-image files,
resume, exports, index.html) with the audit in place of the plain inspection.

Per image: the spec's rules (agent.audit.check) and, unless `--detector none`, the structural detector
(the `agent.inspection` pipeline, its part matching left to the spec); the record's `pred_score` fuses both, `pred_mask` marks the offending
components (and the empty places of missing ones), `explanation` is the audit's, and `audit` in the
stored record holds every rule with measured vs expected. The spec used is written to `spec.yaml` in
the output folder (drafted from the references when none is given); its content is part of the
settings, so `--resume` with another spec is refused like a change of detector.

The decision (agent.audit.decision): the fused score's boundary is set on the references, each held
out in turn, for `--false-alarm-rate` (default 0.05; 8 references promise no finer than 1/9), and every
record carries it in `decision` (method, false_alarm_rate, good_samples, note) with a verdict of good,
review or anomalous ("defective" in the record, as `inspect` writes it).

`--sam MODEL` / `--clip MODEL` name the models of the SAM segmenter and the CLIP prompt finder
(agent.audit.finders: loaded once, on first use, only when the spec needs them; a missing one is
warned once and its components are reported as skipped rules). With `--sam` and no `--spec` the
drafted spec segments with SAM. Both are part of the settings, like the detector.
"""

from __future__ import annotations

import hashlib
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from agent.audit.spec import Spec, SpecError, load_spec
from agent.images import ImageLimits, source_size
from agent.inspection.settings import InspectionSettings
from agent.report.runner import (
    ReportSettings,
    ReportSummary,
    ReportUsageError,
    ReportWriteError,
    check_settings,
    count_outcomes,
    error_message,
    failed_row,
    finalize,
    locked,
    prepare_out,
    settings_fingerprint,
    settings_hash,
)
from agent.report.store import STATUS_DONE, ResultStore, Row

if TYPE_CHECKING:
    from agent.audit.finders import ModelFinders

SPEC_NAME = "spec.yaml"
NO_DETECTOR = "none"


@dataclass
class AuditSettings:
    inputs: list[str]
    out: Path
    refs: str
    spec: str | None = None
    detector: str = "auto"
    detector_options: dict[str, Any] = field(default_factory=dict)
    resume: bool = False
    progress: bool = True
    durable: bool = True
    brain: str = "rule"  # drafting: rule = statistics only; an LLM brain also names parts, proposes pairs
    sam: str | None = None  # SAM model (hub id or folder) for `segmenter: sam`; also drafts with SAM
    clip: str | None = None  # open_clip model for `clip_prompt` finders
    limits: ImageLimits = field(default_factory=ImageLimits)  # pixel limit, analysis size
    segmenter: str = "auto"  # drafting: auto, colour or regions (the product's parts); sam with --sam
    false_alarm_rate: float = 0.05  # share of good parts allowed to be called anomalous
    review: bool = True  # a review band under the boundary


def model_finders(
    sam: str | None, clip: str | None, device: str | None, warn: Callable[[str], None]
) -> ModelFinders:
    """The run's lazily loaded SAM / CLIP finders (nothing is loaded here)."""
    from agent.audit.finders import ModelFinders

    return ModelFinders(sam_model=sam, clip_model=clip, device=device or "cpu", warn=warn)


def _stderr(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def load_reference_images(
    refs: str, warn: Callable[[str], None], limits: ImageLimits | None = None
) -> tuple[list, list[str]]:
    from tools.image_io import ImageLoadError, list_images, load_image

    limits = limits or ImageLimits()
    root = Path(refs)
    if not root.exists():
        raise ReportUsageError(f"references folder '{root}' does not exist")
    paths = list_images(root, recursive=True) if root.is_dir() else [root]
    images, names = [], []
    for p in paths:
        try:
            images.append(load_image(p, max_pixels=limits.max_pixels, max_side=limits.max_side))
            names.append(p.name)
        except ImageLoadError as err:
            warn(f"reference skipped: {err}")
    if not images:
        raise ReportUsageError(f"no readable reference images in '{root}'")
    return images, names


def get_spec(
    spec_path: str | None,
    refs: str,
    warn: Callable[[str], None] = _stderr,
    brain: str = "rule",
    finders: ModelFinders | None = None,
    limits: ImageLimits | None = None,
    segmenter: str = "auto",
) -> tuple[Spec, list]:
    """The spec (loaded, or drafted from the references) and the reference images. With an LLM
    `brain` the drafted spec is refined by it (agent.audit.llm_draft); its failures leave a note.
    When `finders` names a SAM model the draft segments with SAM (the model is kept in the spec)."""
    from agent.audit.draft import DraftError
    from agent.brains.common import BrainError

    images, names = load_reference_images(refs, warn, limits)
    if spec_path is not None:
        try:
            return load_spec(spec_path), images
        except SpecError as err:
            raise ReportUsageError(str(err)) from None
    try:
        spec = drafter(finders, segmenter)(images, names)
    except DraftError as err:
        raise ReportUsageError(str(err)) from None
    if brain == "rule":
        return spec, images
    from agent.audit.llm_draft import refine_with_llm
    from agent.brains.spec import build_brain

    try:
        llm = build_brain(brain)
    except BrainError as err:
        raise ReportUsageError(str(err)) from None
    spec = refine_with_llm(spec, images, names, llm.chat_text, brain_name=llm.name, finders=finders)
    for note in spec.notes[-1:]:
        warn(note)
    return spec, images


def drafter(finders: ModelFinders | None, segmenter: str = "auto") -> Callable[[list, list[str] | None], Spec]:
    """The run's drafting function (references, names) -> spec: SAM segments when `finders` names a SAM
    model, else `segmenter` (auto, colour or regions)."""
    from agent.audit.draft import draft_spec
    from agent.audit.spec import SamSettings

    sam_model = finders.sam_model if finders is not None else None
    if sam_model:
        return lambda images, names=None: draft_spec(images, names, "sam", finders, SamSettings(model=sam_model))
    return lambda images, names=None: draft_spec(images, names, segmenter, finders=finders)


AUDIT_MIN_SCALE = 0.25  # the structural detector's smallest shrink of large photos in an audit


def structural_options(detector: str, options: dict[str, Any]) -> dict[str, Any]:
    """The structural detector's options in an audit: reference matching shrinks large photos further
    than `inspect` does (`min_scale` 0.25 instead of 0.5: 800 x 1600 photos at 200 x 400 and up), since
    an audit is about parts, and a photo a second is the aim; `--set min_scale=...` overrides it."""
    if detector in ("auto", "refmatch") and "min_scale" not in options:
        return {**options, "min_scale": AUDIT_MIN_SCALE}
    return dict(options)


def audit_decision(
    spec: Spec, images: list, drafted: bool, redraft: Callable[[list], Spec], inspector: Any, s: AuditSettings
) -> Any:
    """The run's calibrated decision (agent.audit.decision) on the references, each held out."""
    from agent.audit.decision import AuditDecision, held_out_logical, structural_held_out

    logical, how = held_out_logical(spec, images, redraft if drafted and spec.segmenter != "regions" else None)
    structural = None
    if inspector is not None:
        structural = structural_held_out(inspector.good_samples, len(images), inspector.calibration)
    return AuditDecision.fit(logical, how, structural, s.false_alarm_rate, 2.0 if s.review else None)


def _record(path: str, image, result, structural, decision) -> Any:
    from tools.record import InspectionRecord
    from tools.regions import measure_regions

    pred_score, verdict, block, text = decision.decide(result)
    mask = result.offending_mask(image.size)
    amap = structural.anomaly_map if structural is not None else None
    base = amap if amap is not None else np.zeros(mask.shape, np.float32)
    regions = measure_regions(base, mask, np.asarray(image)) if mask.any() else []
    trace = list(structural.trace) if structural is not None else []
    trace.append(
        {
            "step": "audit",
            "summary": f"{sum(not r.passed for r in result.rules)} of {len(result.rules)} rules violated; {verdict}",
            "rules": [r.to_dict() for r in result.rules],
        }
    )
    return InspectionRecord(
        image_path=path,
        pred_score=pred_score,
        pred_label=verdict == "defective",
        threshold=0.5,
        anomaly_map=amap,
        pred_mask=mask,
        regions=regions,
        explanation=text,
        detector=structural.detector if structural is not None else NO_DETECTOR,
        brain="audit",
        image_size=image.size,
        source_size=source_size(image),
        trace=trace,
        verdict=verdict,
        decision=block,
    )


def run_audit(s: AuditSettings, info: Callable[[str], None] = _stderr) -> ReportSummary:
    """Run (or resume) an audit into `s.out`. Raises ReportUsageError / ReportWriteError / StoreError."""
    from agent.audit.check import audit_image
    from agent.progress import bar_writer, progress_bar
    from agent.report.files import atomic_write_text, clear_staging, write_image_outputs
    from agent.report.inputs import file_digest
    from agent.report.step import assign_stems, collect_or_usage_error, unchanged
    from tools.detectors import DETECTORS
    from tools.detectors.choice import AUTO

    if s.detector not in (NO_DETECTOR, AUTO) and s.detector not in DETECTORS:
        raise ReportUsageError(
            f"unknown detector '{s.detector}'; choose one of: {NO_DETECTOR}, {AUTO}, {', '.join(DETECTORS.names())}"
        )
    items = collect_or_usage_error(s.inputs)
    spec_path = s.spec
    if spec_path is None and s.resume and (Path(s.out) / SPEC_NAME).is_file():
        spec_path = str(Path(s.out) / SPEC_NAME)  # the spec of the first run, not a new (LLM) draft
    finders = model_finders(s.sam, s.clip, s.detector_options.get("device"), info)
    spec, ref_images = get_spec(spec_path, s.refs, info, s.brain, finders, s.limits, s.segmenter)
    spec_text = spec.to_yaml()
    fingerprint = settings_fingerprint(
        ReportSettings(
            inputs=s.inputs,
            out=s.out,
            refs=s.refs,
            inspection=InspectionSettings(s.detector, s.detector_options, "audit"),
        )
    )
    fingerprint["spec_sha256"] = hashlib.sha256(spec_text.encode("utf-8")).hexdigest()[:16]
    fingerprint["decision"] = {"false_alarm_rate": s.false_alarm_rate, "review": s.review}
    if s.sam or s.clip:
        fingerprint["finders"] = {"sam": s.sam, "clip": s.clip}
    digest = settings_hash(fingerprint)
    out = Path(s.out)
    prepare_out(out, s.resume)
    summary = ReportSummary(out=out, inputs=len(items))
    t0 = time.perf_counter()
    with locked(out), ResultStore(out) as store:
        check_settings(store, fingerprint, digest)
        try:
            atomic_write_text(out / SPEC_NAME, spec_text)
        except OSError as err:
            raise ReportWriteError(f"cannot write '{out / SPEC_NAME}': {err.strerror or err}") from None
        clear_staging(out)
        stems = assign_stems(store.stems(), items)
        inspector = None
        if s.detector != NO_DETECTOR:
            from agent.inspection import MatchSettings, Pipeline
            from agent.inspection.settings import DecisionSettings
            from tools.detectors import DetectorError

            t = time.perf_counter()
            try:
                # the spec's rules are the match step here: the pipeline's own part matching is off
                settings = InspectionSettings(
                    s.detector, structural_options(s.detector, s.detector_options), match=MatchSettings(enabled=False),
                    decision=DecisionSettings(s.false_alarm_rate, s.review, "references"),
                )
                inspector = Pipeline(settings, warn=info).fit(ref_images, n_images=1)
            except (DetectorError, ValueError, KeyError, TypeError) as err:
                raise ReportUsageError(str(err)) from None
            summary.setup_seconds = time.perf_counter() - t
        t = time.perf_counter()
        decision = audit_decision(spec, ref_images, s.spec is None, drafter(finders, s.segmenter), inspector, s)
        summary.setup_seconds += time.perf_counter() - t
        if decision.calibration.note:
            info(f"audit decision: {decision.calibration.note}")
        bar = progress_bar(len(items), "audit", s.progress)
        say = bar_writer(bar)
        try:
            for seq, item in enumerate(items):
                stem = stems[item.key]
                old = store.get(item.key)
                try:
                    size, sha = file_digest(item.path)
                except OSError as err:
                    if old is not None and old.ok and old.settings_hash == digest:
                        summary.skipped += 1
                        bar.update(1)
                        continue
                    reason = (
                        "file not found" if isinstance(err, FileNotFoundError) else (err.strerror or str(err))
                    )
                    store.put(
                        failed_row(
                            item, stem, seq, digest, f"cannot read image '{item.display_path}': {reason}"
                        )
                    )
                    summary.processed += 1
                    bar.update(1)
                    continue
                if unchanged(old, sha, digest, out):
                    summary.skipped += 1
                    bar.update(1)
                    continue
                t1 = time.perf_counter()
                try:
                    image = s.limits.load(item.path, note=say)
                    structural = inspector.inspect(item.display_path, image) if inspector else None
                    result = audit_image(
                        image,
                        spec,
                        None if structural is None else (structural.pred_score, structural.threshold),
                        finders,
                    )
                    record = _record(item.display_path, image, result, structural, decision)
                except Exception as err:  # one image breaking the audit must not stop the batch
                    msg = error_message(item, err, "audit")
                    store.put(failed_row(item, stem, seq, digest, msg, size=size, sha256=sha))
                    summary.processed += 1
                    bar.update(1)
                    continue
                t_check = time.perf_counter() - t1
                t2 = time.perf_counter()
                try:
                    files = write_image_outputs(record, image, out, stem, durable=s.durable)
                except OSError as err:
                    raise ReportWriteError(
                        f"cannot write outputs to '{out}': {err.strerror or err}"
                    ) from None
                data = record.to_json_dict(
                    {k: v for k, v in files.items() if k in ("anomaly_map", "pred_mask")}
                )
                data["overlay"] = files["overlay"]
                data["audit"] = result.to_dict()
                row = Row(
                    item.key,
                    item.display_path,
                    stem,
                    size=size,
                    sha256=sha,
                    settings_hash=digest,
                    status=STATUS_DONE,
                    record=data,
                    files=files,
                    timings={"audit": round(t_check, 4), "write": round(time.perf_counter() - t2, 4)},
                    seq=seq,
                )
                store.put(row)
                summary.processed += 1
                bar.update(1)
        except KeyboardInterrupt:
            summary.interrupted = True
        finally:
            bar.close()
        summary.seconds = time.perf_counter() - t0
        clear_staging(out)
        rows = finalize(store, out, title="LookTwice audit")
        count_outcomes(rows, {item.key for item in items}, summary)
    return summary


__all__ = ["NO_DETECTOR", "SPEC_NAME", "AuditSettings", "audit_decision", "drafter", "get_spec", "model_finders", "run_audit"]
