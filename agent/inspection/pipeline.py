"""The match-of-thought loop: one inspection pipeline for every command.

For each image, in this order (each step recorded in `record.trace`, with what it changed):

1. look          the detector on the whole image: anomaly map and raw score.
2. zoom_recheck  the most suspicious places, zoomed in, scored again against the references
                 (`zoom_recheck.py`); off by default (no gain on validation, `settings.py`), and
                 then recorded as skipped, with why.
3. match         the image's parts matched to the references' parts and the rules checked
                 (`match.py`); runs when its weight is above 0, when a brain proposes rules, or with
                 `--trace full` (its result changes nothing otherwise).
4. decide        the final score under the boundary (`decision.py`): good, review or defective, with
                 the false-alarm rate promised and how many good samples it rests on.
5. explain       the brain's explanation (and answer, for a question), from the measured evidence.

The pipeline orders the steps and holds their state; the steps' work is done in `evidence.py`,
`decision.py`, `tools.region_views` and the brains. The boundary is set for the final score, after
every fusion, so the promise holds for the answer the user sees. Built once, a pipeline is reused for
every image of a run: the detector is fitted once, the brain loaded once.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
from PIL import Image

from agent.brains.abilities import ProposesRules
from agent.brains.base import Brain
from agent.inspection import decision as decisions
from agent.inspection import evidence as steps
from agent.inspection.brain_steps import BrainSteps
from agent.inspection.detector_setup import fitted_detector
from agent.inspection.evidence import Evidence
from agent.inspection.match import ReferenceModel, ask_brain_rules, reference_model
from agent.inspection.settings import InspectionSettings
from agent.inspection.trace import step
from agent.inspection.zoom_recheck import ZoomRecheck, comparable_part
from tools.content_key import image_key
from tools.detectors import Detector
from tools.detectors.batch import MIN_BATCH
from tools.detectors.calibration import Calibration, good_samples
from tools.image_io import ImageLoadError, load_image
from tools.record import InspectionRecord
from tools.region_views import ReferenceTones
from tools.regions import number_regions

#: evidence of a calibration sample kept until its image is inspected, at most this many bytes of it
CACHE_BYTES = 1 << 30
#: Why the zoomed re-check did not run when it is turned off (the default).
ZOOM_RECHECK_OFF = "off (no gain on the validation sets; turn on with `zoom_recheck: {enabled: true}` in --config)"


class Pipeline:
    """Fitted once on the references (and, in batch mode, on the batch), then inspects image after image."""

    def __init__(
        self, settings: InspectionSettings | None = None, warn: Callable[[str], None] = print,
        brain: Brain | None = None, sam: Any = None, detector: Detector | None = None,
    ) -> None:
        """`brain`, `sam` and `detector` given here are used instead of building them from `settings`
        (the web chat shares one brain; tests and tools bring their own detector)."""
        self.settings = settings or InspectionSettings()
        self.warn = warn
        self._brain = brain
        self.sam = sam
        self._given_detector = detector
        self.detector: Detector | None = None
        self.references: list[Image.Image] = []
        self.recheck: ZoomRecheck | None = None
        self.recheck_reason = ""
        self._zoom: tuple[ZoomRecheck | None, str] | None = None  # fitted on request (`zoom_recheck`)
        self.calibration: Calibration | None = None
        self.fit_seconds = 0.0
        self._refs_model: ReferenceModel | None = None
        self._good = np.empty(0)  # the references' held-out final raw scores
        self._unit = 1.0  # good-score unit of the raw scores (what one broken rule adds, times its weight)
        self._cache: dict[str, Evidence] = {}
        self._cache_bytes = 0
        self.brain_steps = BrainSteps(self.settings, brain)  # the brain, its set-up, P(Yes) and texts
        self._tones = ReferenceTones([])

    # ------------------------------------------------------------------------------------------ setup
    @property
    def brain(self) -> Brain:
        return self.brain_steps.brain

    @property
    def fallback(self) -> Brain:
        return self.brain_steps.fallback

    def fit(self, references: Sequence[Image.Image], n_images: int = 1) -> Pipeline:
        """Build and fit the detector for `n_images` images, the re-check and the reference parts, and
        (for detectors that need no batch) set the boundary on the references, each held out in turn."""
        t0 = time.perf_counter()
        s = self.settings
        self._brain = self.brain_steps.prepare(self.warn)  # a model brain loads first: a missing model stops here
        self.references = [r if r.mode == "RGB" else r.convert("RGB") for r in references]
        if self._given_detector is not None:
            self.detector = self._given_detector
            self.detector.fit(self.references)
        else:
            self.detector = fitted_detector(s.detector, s.detector_options, self.references, n_images, self.warn,
                                            fallback=s.fallback, brain=self._brain)
        self.recheck, self.recheck_reason, self._zoom = None, "", None
        if s.zoom_recheck.enabled:
            self.recheck, self.recheck_reason = self._fit_recheck()
        self._refs_model, self._cache, self._cache_bytes, self._tones = None, {}, 0, ReferenceTones(self.references)
        self.calibration = None
        if not self.detector.needs_batch:
            self._calibrate_on_references()
        self.fit_seconds = time.perf_counter() - t0
        return self

    def _fit_recheck(self) -> tuple[ZoomRecheck | None, str]:
        """The zoomed matcher, or None and why the detector cannot be zoomed like."""
        if not self.references or self.detector is None:
            return None, "no references to compare with" if not self.references else "no detector fitted yet"
        part = comparable_part(self.detector)
        if part is None:
            return None, f"{self.detector.name} compares with no references"
        return ZoomRecheck(part, self.references, self.settings.zoom_recheck), ""

    def zoom_recheck(self) -> tuple[ZoomRecheck | None, str]:
        """The zoomed matcher for looking again on request (the `zoom` tool), fitted on first use when
        the loop does not run it for every image; None and why when it cannot be built."""
        if self.recheck is not None:
            return self.recheck, ""
        if self._zoom is None:
            self._zoom = self._fit_recheck()
        return self._zoom

    def _fusing(self) -> bool:
        s = self.settings
        return (self.recheck is not None and s.zoom_recheck.weight > 0) or (s.match.enabled and s.match.weight > 0 and bool(self.references))

    def _runs_match(self) -> bool:
        """Match runs when it can change the score, when a brain will propose rules, or on request."""
        s = self.settings
        asks = s.match.ask_rules and isinstance(self._brain, ProposesRules)
        return s.match.enabled and (s.match.weight > 0 or asks or s.trace == "full")

    def _calibrate_on_references(self) -> None:
        """The references' final scores, each held out of everything in turn, and the references-mode
        boundary on them (also the anchor that checks a batch calibration)."""
        assert self.detector is not None
        good = good_samples(self.detector, self.references)
        self._unit = float(np.median(good)) if good.size else 1.0
        held = self.detector.held_out_outputs() if self._fusing() and good.size else []
        if held:
            per_ref = good.size // len(held) if good.size % len(held) == 0 else 0
            fused = []
            for i, out in enumerate(held):
                ev = self._evidence(f"reference {i + 1}", self.references[i], out, held_out=i)
                views = good[i * per_ref : (i + 1) * per_ref] if per_ref else np.array([out.raw_score])
                fused.extend(float(v) * ev.factor + ev.match_term for v in views)
            good = np.array(fused)
        elif self._fusing() and good.size:
            self.warn("the detector gives no held-out scores: the boundary rests on its own scores, before the loop's evidence")
        self._good = good
        what = "the final score" if held else "the detector's score"
        self.calibration = decisions.reference_calibration(good, self.settings.decision, f"references (leave-one-out, {what})")
        self.brain_steps.calibrate(self.references, good, self.calibration)

    def fit_batch(self, images: Sequence[Image.Image], paths: Sequence[str] | None = None) -> None:
        """Batch mode: the detector learns from the batch (batch detectors), and the final score is
        calibrated on a seeded sample of it (see `decision.py`). `images` may be a lazy sequence: only
        the sampled images are read. The parts (`learn_batch`, `calibration_sample` scored with
        `score`, `calibrate_on_batch`) are public so that a distributed run can score the sample
        elsewhere and still decide exactly as here."""
        keys = decisions.batch_keys(images)
        self.learn_batch(images, keys)
        if not self.calibrates_on_batch:
            return
        t0 = time.perf_counter()
        scores = []
        for i in self.calibration_sample(keys):
            try:
                image = images[i]
            except ImageLoadError:  # reported where it is inspected; the sample goes on without it
                continue
            ev = self.score(paths[i] if paths else f"batch image {i + 1}", image)
            self.remember(ev)
            scores.append(ev.raw)
        self.fit_seconds += time.perf_counter() - t0
        self.calibrate_on_batch(scores)

    def learn_batch(self, images: Sequence[Image.Image], keys: Sequence[str] | None = None) -> None:
        """The batch detector's partner pool (a no-op for other detectors), then the references'
        held-out scores through it."""
        assert self.detector is not None, "call fit() first"
        t0 = time.perf_counter()
        if self.detector.needs_batch:
            self.detector.fit_batch(images, decisions.batch_keys(images) if keys is None else keys)
            self._calibrate_on_references()
        self.fit_seconds += time.perf_counter() - t0

    @property
    def calibrates_on_batch(self) -> bool:
        return (self.settings.decision.calibration or "batch") == "batch"

    def uses_batch(self, n_images: int) -> bool:
        """Whether a run over `n_images` learns from the batch (`fit_batch`): a batch detector, `--calibration
        batch`, or no mode asked for and `MIN_BATCH` images or more. Every folder command asks this."""
        assert self.detector is not None, "call fit() first"
        mode = self.settings.decision.calibration
        return n_images > 1 and (self.detector.needs_batch or mode == "batch" or (mode is None and n_images >= MIN_BATCH))

    @property
    def good_samples(self) -> np.ndarray:
        """The references' held-out final raw scores (what references mode rests on)."""
        return self._good

    def calibration_sample(self, keys: Sequence[str]) -> list[int]:
        """Indices (sorted) of the images of a batch (given by their content keys) the boundary is set on."""
        return decisions.calibration_sample(keys, int(self.settings.detector_options.get("seed", 0)))

    def calibrate_on_batch(self, scores: Sequence[float]) -> None:
        """Set the boundary from the sample's final raw scores; fewer than 3 keep the references'
        boundary. Deterministic: every copy of a pipeline given the same scores agrees."""
        assert self.detector is not None, "call fit() first"
        if len(scores) < 3:
            return
        exchangeable = not self.detector.learns_from_references
        self._unit = float(np.median(scores))
        self.calibration = decisions.batch_calibration(scores, self.settings.decision, self._good if exchangeable else None, self._good)
        self.brain_steps.batch_boundary()
        if self.calibration.note:
            self.warn(f"batch calibration: {self.calibration.note}")

    def remember(self, ev: Evidence) -> None:
        """Keep `ev` until its image is inspected (the calibration sample is scored once), while the
        kept evidence stays under `CACHE_BYTES` (beyond it, an image is scored again)."""
        size = ev.raw_map.nbytes + ev.image.size[0] * ev.image.size[1] * 3
        if self._cache_bytes + size <= CACHE_BYTES:
            self._cache[image_key(_rgb(ev.image))] = ev
            self._cache_bytes += size

    # ------------------------------------------------------------------------------------------ steps
    def score(self, image_path: str, image: Image.Image) -> Evidence:
        """Steps 1-3 for one image: look, zoom re-check, match; the evidence before any decision."""
        assert self.detector is not None, "call fit() first"
        img = _rgb(image)
        cached = self._cache.pop(image_key(img), None)
        if cached is not None:
            self._cache_bytes -= cached.raw_map.nbytes + img.size[0] * img.size[1] * 3
            return dataclasses.replace(cached, image_path=image_path, trace=list(cached.trace))
        t0 = time.perf_counter()
        out = self.detector.predict([img])[0]
        trace: list[dict[str, Any]] = []
        step(trace, "look", t0, tool=self.detector.name, inputs={"image_size": list(img.size)},
             summary=f"{self.detector.name}: raw score {out.raw_score:.4g}", raw_score=round(float(out.raw_score), 6))
        return self._evidence(image_path, img, out, trace=trace)

    def _evidence(self, image_path: str, image: Image.Image, out: Any, held_out: int | None = None,
                  trace: list[dict[str, Any]] | None = None) -> Evidence:
        ev = Evidence.of(image_path, image, out, trace)
        s = self.settings
        skipped = self.recheck_reason if s.zoom_recheck.enabled else ZOOM_RECHECK_OFF
        steps.zoom_recheck_step(ev, self.recheck, s.zoom_recheck, skipped, held_out)
        if self._runs_match():
            steps.match_step(ev, self.reference_model, s.match, self._unit, held_out, len(self.references))
        return ev

    def reference_model(self, held_out: int | None = None, trace: list[dict[str, Any]] | None = None) -> ReferenceModel | None:
        """Parts and rules of the references (once; without reference `held_out` when given)."""
        s = self.settings.match
        if not self.references:
            return None
        if self._refs_model is None:
            self._refs_model = reference_model(self.references, s)
        if held_out is not None:
            return self._refs_model.held_out(held_out)
        brain = self._brain
        if self._refs_model.brain_rules is None and s.ask_rules and isinstance(brain, ProposesRules):
            rules, status = ask_brain_rules(brain, self._refs_model, s.rule_retries)  # asked once, on the first image
            self._refs_model.brain_rules, self._refs_model.brain_rules_status = rules, status
            if trace is not None:
                trace.append({"step": "propose_rules", "brain": brain.name, **status})
        return self._refs_model

    def decide(self, ev: Evidence) -> decisions.Decision:
        """Step 4: the verdict of the final score under the boundary (every command decides here)."""
        assert self.detector is not None
        cal = self.calibration
        if cal is not None and not self.settings.decision.review:
            cal = cal.without_review()
        return decisions.decide(ev.raw, ev.raw_map, cal, ev.output, self.detector)

    # ------------------------------------------------------------------------------------------ conclude
    def conclude(self, ev: Evidence, question: str | None = None, history: list[tuple[str, str]] | None = None) -> InspectionRecord:
        """Steps 4-5: the calibrated verdict, the outlined defects, the explanation (and answer)."""
        assert self.detector is not None
        trace = list(ev.trace)
        t0 = time.perf_counter()
        d = self.decide(ev)
        regions, suspect = steps.measured_regions(ev, d.anomaly_map, d.mask, self._tones)
        record = InspectionRecord(
            image_path=ev.image_path, pred_score=d.pred_score, pred_label=d.verdict == "defective", threshold=0.5,
            anomaly_map=d.anomaly_map, pred_mask=d.mask, regions=regions, detector=self.detector.name,
            brain=self.brain.name, image_size=ev.image.size, trace=trace, verdict=d.verdict, decision=d.info,
            suspicious_place=suspect,
        )
        rate = d.info.get("false_alarm_rate")
        step(trace, "decide", t0, verdict=d.verdict, pred_score=round(d.pred_score, 6), final_raw=round(ev.raw, 6),
             summary=f"{d.verdict} (score {d.pred_score:.3f})"
             + (f": boundary for a false-alarm rate of {rate:.3g}, from {d.info['good_samples']} good sample(s)" if rate else "")
             + f"; {len(regions)} region(s)")
        steps.sam_refine_step(record, ev.image, self.sam)
        number_regions(record.regions)  # final order: the numbers the overlay, the explanation and the tables show
        brain = self.brain_steps
        brain.hand_over(ev.image_path, ev.image, ev.raw_map, ev.looks, self.references)
        brain.judge(record, ev.raw, trace)
        if self.settings.first_opinion:
            first = decisions.decide(ev.first_raw, ev.raw_map, self.calibration, ev.output, self.detector)
            opinion = dataclasses.replace(record, pred_score=first.pred_score, verdict=first.verdict, pred_label=first.verdict == "defective")
            brain.text(trace, "first_opinion", lambda b: b.explain(opinion))
        record.explanation = brain.text(trace, "explain", lambda b: b.explain(record))
        if question:
            record.answer = self.answer(question, record, history)
        step(trace, "conclude", t0, verdict=record.verdict, pred_score=round(record.pred_score, 6), regions=len(record.regions),
             summary=f"{record.verdict} (score {record.pred_score:.3f}), {len(record.regions)} region(s)")
        return record

    def inspect(self, image_path: str, image: Image.Image | None = None, question: str | None = None,
                history: list[tuple[str, str]] | None = None) -> InspectionRecord:
        """The whole loop for one image (raises `ImageLoadError` only for an unreadable file)."""
        t0 = time.perf_counter()
        img = image if image is not None else load_image(image_path)
        loaded = {"step": "load", "inputs": {"image_path": str(image_path)}, "size": list(img.size),
                  "seconds": round(time.perf_counter() - t0, 4)}
        ev = self.score(str(image_path), img)
        ev.trace.insert(0, loaded)
        return self.conclude(ev, question, history)

    def answer(self, question: str, record: InspectionRecord, history: list[tuple[str, str]] | None = None) -> str:
        """The brain's answer to a question about `record` (RuleBrain's on failure); traced in the record."""
        return self.brain_steps.answer(question, record, history)


def _rgb(image: Image.Image) -> Image.Image:
    return image if image.mode == "RGB" else image.convert("RGB")


__all__ = ["ZOOM_RECHECK_OFF", "Evidence", "Pipeline"]
