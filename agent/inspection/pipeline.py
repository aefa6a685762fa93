"""The match-of-thought loop: one inspection pipeline for every command.

For each image, in this order (each step recorded in `record.trace`, with what it changed):

1. look        the detector on the whole image: anomaly map and raw score.
2. look twice  the most suspicious places, zoomed in, scored again against the references
               (`look_twice.py`); the score is multiplied by the evidence. Off by default (no gain
               on validation, `settings.py`); the step is then recorded as skipped, with why.
3. match       the image's parts matched to the references' parts and the rules checked
               (`match.py`); a rule broken beyond the references' variation adds to the score.
4. decide      the final score, calibrated (`tools.detectors.calibration`): good, review or defective,
               with the false-alarm rate promised and how many good samples it rests on.
5. explain     the brain's explanation (and answer, for a question), from the measured evidence.

The calibration is made for the final score, after every fusion, so the promise holds for the answer
the user sees: on the references, each one held out of the detector, the second look and the rules
in turn (references mode), or on a seeded sample of the batch itself (batch mode, `fit_batch`).
Built once, a pipeline is reused for every image of a run: the detector is fitted once, the brain
loaded once.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from PIL import Image

from agent.brains.abilities import JudgesDefects, ProposesRules, ReportsModelCalls, SeesImages
from agent.brains.base import Brain
from agent.inspection.detector_setup import fitted_detector
from agent.inspection.look_twice import (
    Look,
    SecondLook,
    comparable_part,
    fused_factor,
    suspicious_places,
    zoom_box,
)
from agent.inspection.match import ReferenceModel, ask_brain_rules, compare, reference_model
from agent.inspection.settings import InspectionSettings
from agent.inspection.trace import change, short, step
from tools.detectors import Detector, DetectorOutput
from tools.detectors.calibration import Calibration, good_samples
from tools.detectors.mutual_scoring import image_key
from tools.image_io import ImageLoadError, load_image
from tools.record import InspectionRecord, Region
from tools.regions import mask_from_map, measure_regions, peak_relative_mask, to_grey

#: batch mode calibrates on at most this many images of the batch (a seeded sample)
MAX_CALIBRATION_SAMPLE = 256
#: Why the second look did not run when it is turned off (the default).
LOOK_TWICE_OFF = "off (no gain on the validation sets; turn on with `look_twice: {enabled: true}` in --config)"


@dataclass
class Evidence:
    """Everything the loop found about one image before deciding."""

    image_path: str
    image: Image.Image
    output: DetectorOutput
    raw_map: np.ndarray  # the first look's raw map at image resolution
    looks: list[Look] = field(default_factory=list)
    factor: float = 1.0  # the second look's factor on the detector's raw score
    match: dict[str, Any] | None = None
    match_term: float = 0.0  # what broken rules add, in raw units
    trace: list[dict[str, Any]] = field(default_factory=list)

    @property
    def raw(self) -> float:
        """The final fused raw score."""
        return float(self.output.raw_score) * self.factor + self.match_term


class Pipeline:
    """Fitted once on the references (and, in batch mode, on the batch), then inspects image after image."""

    def __init__(
        self,
        settings: InspectionSettings | None = None,
        warn: Callable[[str], None] = print,
        brain: Brain | None = None,
        sam: Any = None,
        detector: Detector | None = None,
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
        self.second: SecondLook | None = None
        self.second_reason = ""
        self._zoom: tuple[SecondLook | None, str] | None = None  # fitted on request (`second_look`)
        self.calibration: Calibration | None = None
        self.fit_seconds = 0.0
        self._refs_model: ReferenceModel | None = None
        self._unit = 1.0  # good-score unit of the raw scores (what one broken rule adds, times its weight)
        self._cache: dict[str, Evidence] = {}
        self._fallback: Brain | None = None
        self._ref_greys: list[np.ndarray] | None = None  # references in grey at the last image size

    # ------------------------------------------------------------------------------------------ setup
    @property
    def brain(self) -> Brain:
        if self._brain is None:
            from agent.brains.spec import build_brain

            self._brain = build_brain(self.settings.brain)
        self._brain.show_verdict = self.settings.show_verdict_to_brain
        return self._brain

    @property
    def fallback(self) -> Brain:
        if self._fallback is None:
            from agent.brains.rule import RuleBrain

            self._fallback = RuleBrain()
        return self._fallback

    def fit(self, references: Sequence[Image.Image], n_images: int = 1) -> Pipeline:
        """Build and fit the detector for `n_images` images, the second look and the reference parts,
        and calibrate the final score on the references (held out in turn)."""
        t0 = time.perf_counter()
        s = self.settings
        self.references = [r if r.mode == "RGB" else r.convert("RGB") for r in references]
        if self._given_detector is not None:
            self.detector = self._given_detector
            self.detector.fit(self.references)
        else:
            self.detector = fitted_detector(s.detector, s.detector_options, self.references, n_images, self.warn)
        self.second, self.second_reason, self._zoom = None, "", None
        if s.look_twice.enabled:
            self.second, self.second_reason = self._fit_second_look()
        self._refs_model, self._cache, self._ref_greys = None, {}, None
        good = good_samples(self.detector, self.references)
        self._unit = float(np.median(good)) if good.size else 1.0
        self.calibration = self._reference_calibration(good)
        self.fit_seconds = time.perf_counter() - t0
        return self

    def _fit_second_look(self) -> tuple[SecondLook | None, str]:
        """The zoomed matcher, or None and why the detector cannot be zoomed like."""
        if not self.references or self.detector is None:
            return None, "no references to compare with" if not self.references else "no detector fitted yet"
        part = comparable_part(self.detector)
        if part is None:
            return None, f"{self.detector.name} compares with no references"
        return SecondLook(part, self.references, self.settings.look_twice), ""

    def second_look(self) -> tuple[SecondLook | None, str]:
        """The zoomed matcher for looking again on request (the `zoom` tool), fitted on first use when
        the loop does not run it for every image; None and why when it cannot be built."""
        if self.second is not None:
            return self.second, ""
        if self._zoom is None:
            self._zoom = self._fit_second_look()
        return self._zoom

    def _fusing(self) -> bool:
        s = self.settings
        looks = self.second is not None and s.look_twice.weight > 0
        rules = s.match.enabled and s.match.weight > 0 and bool(self.references)
        return looks or rules

    def _reference_calibration(self, good: np.ndarray) -> Calibration | None:
        """References mode: the final score of every reference, held out of everything in turn."""
        d = self.settings.decision
        if not good.size:
            return None
        if self._fusing():
            held = self.detector.held_out_outputs() if self.detector is not None else []
            if held:
                per_ref = good.size // len(held) if good.size % len(held) == 0 else 0
                fused = []
                for i, out in enumerate(held):
                    ev = self._evidence(f"reference {i + 1}", self.references[i], out, held_out=i)
                    views = good[i * per_ref : (i + 1) * per_ref] if per_ref else np.array([out.raw_score])
                    fused.extend(float(v) * ev.factor + ev.match_term for v in views)
                good = np.array(fused)
            else:
                self.warn("the detector gives no held-out scores: the boundary rests on its own scores, before the loop's evidence")
        return Calibration.from_good_scores(good, d.false_alarm_rate, d.review_factor, method=self._ref_method())

    def _ref_method(self) -> str:
        what = "the final score" if self._fusing() else "the detector's score"
        return f"references (leave-one-out, {what})"

    def fit_batch(self, images: Sequence[Image.Image], paths: Sequence[str] | None = None) -> None:
        """Batch mode: the detector learns from the batch (batch detectors), and the final score is
        calibrated on a seeded sample of it (most images are good; a quarter or more may not be).
        `images` may be a lazy sequence: only the sampled images are read. The three parts
        (`learn_batch`, `calibration_sample` scored with `score`, `calibrate_on_batch`) are public so
        that a distributed run can score the sample elsewhere and still decide exactly as here."""
        self.learn_batch(images)
        if not self.calibrates_on_batch:
            return
        t0 = time.perf_counter()
        scores = []
        for i in self.calibration_sample(len(images)):
            try:
                image = images[i]
            except ImageLoadError:  # reported where it is inspected; the sample goes on without it
                continue
            ev = self.score(paths[i] if paths else f"batch image {i + 1}", image)
            self.remember(ev)
            scores.append(ev.raw)
        self.fit_seconds += time.perf_counter() - t0
        self.calibrate_on_batch(scores)

    def learn_batch(self, images: Sequence[Image.Image]) -> None:
        """The batch detector's partner pool (a no-op for other detectors)."""
        assert self.detector is not None, "call fit() first"
        t0 = time.perf_counter()
        if self.detector.needs_batch:
            self.detector.fit_batch(images)
        self.fit_seconds += time.perf_counter() - t0

    @property
    def calibrates_on_batch(self) -> bool:
        return (self.settings.decision.calibration or "batch") == "batch"

    def calibration_sample(self, n: int) -> list[int]:
        """Indices (sorted) of the seeded sample of a batch of `n` images that the boundary is set on."""
        seed = int(self.settings.detector_options.get("seed", 0))
        return sorted(int(i) for i in np.random.default_rng(seed).permutation(n)[: min(n, MAX_CALIBRATION_SAMPLE)])

    def calibrate_on_batch(self, scores: Sequence[float]) -> None:
        """Set the boundary from the sample's final raw scores (in sample order); fewer than 3 keep the
        references' boundary. Deterministic: every copy of a pipeline given the same scores agrees."""
        assert self.detector is not None, "call fit() first"
        d = self.settings.decision
        known = good_samples(self.detector, self.references) if not self.detector.learns_from_references else None
        if len(scores) >= 3:
            self._unit = float(np.median(scores))
            self.calibration = Calibration.from_batch(
                np.array(scores), d.false_alarm_rate, d.review_factor, known_good=known, method="batch"
            )

    def remember(self, ev: Evidence) -> None:
        """Keep `ev` so that scoring the same image again returns it (the calibration sample's
        evidence is reused, not recomputed, when its image is inspected)."""
        self._cache[image_key(_rgb(ev.image).tobytes())] = ev

    # ------------------------------------------------------------------------------------------ steps
    def score(self, image_path: str, image: Image.Image) -> Evidence:
        """Steps 1-3 for one image: look, look twice, match; the evidence before any decision."""
        assert self.detector is not None, "call fit() first"
        img = _rgb(image)
        key = image_key(img.tobytes())
        if key in self._cache:
            return self._cache[key]
        t0 = time.perf_counter()
        out = self.detector.predict([img])[0]
        trace: list[dict[str, Any]] = []
        step(
            trace, "look", t0, tool=self.detector.name,
            inputs={"image_size": list(img.size)},
            summary=f"{self.detector.name}: raw score {out.raw_score:.4g}",
            raw_score=round(float(out.raw_score), 6),
        )
        return self._evidence(image_path, img, out, trace=trace)

    def _evidence(
        self, image_path: str, image: Image.Image, out: DetectorOutput,
        held_out: int | None = None, trace: list[dict[str, Any]] | None = None,
    ) -> Evidence:
        raw_map = out.extras.get("raw_map")
        ev = Evidence(image_path, image, out, np.asarray(out.anomaly_map if raw_map is None else raw_map), trace=trace or [])
        self._look_twice(ev, held_out)
        self._match(ev, held_out)
        return ev

    def _look_twice(self, ev: Evidence, held_out: int | None) -> None:
        s = self.settings.look_twice
        t0 = time.perf_counter()
        if self.second is None:
            why = self.second_reason if s.enabled else LOOK_TWICE_OFF
            step(ev.trace, "look_twice", t0, skipped=why, summary=f"skipped: {why}")
            return
        before = ev.raw
        ev.looks = self.second.look(ev.image, ev.raw_map, held_out)
        ev.factor = fused_factor(ev.looks, s.weight)
        confirmed = sum(1 for lk in ev.looks if lk.outcome == "confirmed")
        step(
            ev.trace, "look_twice", t0,
            inputs={"top_k": s.top_k, "zoom": s.zoom, "weight": s.weight},
            looks=[lk.to_dict() for lk in ev.looks],
            changed=change(before, ev.raw, "raw score") if s.weight > 0 else "nothing: record only (weight 0)",
            summary=f"{len(ev.looks)} place(s) looked at again at {s.zoom:g}x, {confirmed} confirmed",
        )

    def reference_model(self, held_out: int | None = None, trace: list[dict[str, Any]] | None = None) -> ReferenceModel | None:
        """Parts and rules of the references (once; without reference `held_out` when given)."""
        s = self.settings.match
        if not self.references:
            return None
        if self._refs_model is None:
            self._refs_model = reference_model(self.references, s)
        if held_out is not None:
            return self._refs_model.held_out(held_out)
        if self._refs_model.brain_rules is None:  # a brain that proposes rules is asked once, on the first image
            brain = self._brain
            if s.ask_rules and isinstance(brain, ProposesRules):
                rules, status = ask_brain_rules(brain, self._refs_model, s.rule_retries)
                self._refs_model.brain_rules, self._refs_model.brain_rules_status = rules, status
                if trace is not None:
                    trace.append({"step": "propose_rules", "brain": brain.name, **status})
        return self._refs_model

    def _match(self, ev: Evidence, held_out: int | None) -> None:
        s = self.settings.match
        if not s.enabled:
            return
        t0 = time.perf_counter()
        try:
            refs = self.reference_model(held_out, ev.trace)
        except Exception as err:  # noqa: BLE001 - the map evidence still stands
            step(ev.trace, "match", t0, error=short(str(err), 200), summary="the references could not be split into parts")
            return
        if refs is None:
            step(ev.trace, "match", t0, skipped="no references", summary="skipped: no references to match with")
            return
        try:
            result = compare(ev.image, refs, s)
        except Exception as err:  # noqa: BLE001
            step(ev.trace, "match", t0, error=short(str(err), 200), summary="part matching failed")
            return
        before = ev.raw
        broken = len(result["violations"])
        ev.match = result
        ev.match_term = s.weight * self._unit * broken
        step(
            ev.trace, "match", t0,
            inputs={"references": len(self.references) - (held_out is not None)},
            **{k: v for k, v in result.items() if k != "summary"},
            changed=change(before, ev.raw, "raw score") if s.weight > 0 else "nothing: record only (weight 0)",
            summary=result["summary"],
        )

    # ------------------------------------------------------------------------------------------ decide
    def _decision(self) -> Calibration | None:
        cal = self.calibration
        if cal is not None and not self.settings.decision.review:
            cal = cal.without_review()
        return cal

    def conclude(
        self, ev: Evidence, question: str | None = None, history: list[tuple[str, str]] | None = None
    ) -> InspectionRecord:
        """Steps 4-5: the calibrated verdict, the outlined defects, the explanation (and answer)."""
        assert self.detector is not None
        trace = list(ev.trace)
        t0 = time.perf_counter()
        cal = self._decision()
        if cal is not None:
            anomaly_map = cal.apply(ev.raw_map)
            pred_score = float(cal.apply(ev.raw))
            verdict = cal.verdict(ev.raw)
            mask = peak_relative_mask(ev.raw_map, cal.boundary) if verdict != "good" else np.zeros(ev.raw_map.shape, bool)
            decision = {k: v for k, v in cal.to_dict().items() if k in ("method", "false_alarm_rate", "good_samples", "review_from_score", "note")}
        else:  # the detector's own boundary: no good samples to calibrate the final score on
            anomaly_map = ev.output.anomaly_map
            pred_score = float(ev.output.pred_score)
            verdict = "defective" if pred_score > self.detector.threshold else "good"
            mask = ev.output.predicted_mask(self.detector.pixel_threshold) if verdict != "good" else np.zeros(ev.raw_map.shape, bool)
            decision = {"method": "the detector's own boundary", "false_alarm_rate": None, "good_samples": 0,
                        "note": "no good samples to estimate a false-alarm rate from: give references or a batch"}
        mask = mask_from_map(mask.astype(np.float32), 0.5)  # specks dropped
        pixels = np.asarray(ev.image)
        regions = _order_by_looks(measure_regions(anomaly_map, mask, pixels), ev.looks)
        suspect = regions[0] if regions else _place_region(anomaly_map, ev, pixels)
        for region in regions + ([suspect] if suspect is not None and not regions else []):
            region.reference_contrast = self._reference_contrast(pixels, region)
        record = InspectionRecord(
            image_path=ev.image_path, pred_score=pred_score, pred_label=verdict == "defective", threshold=0.5,
            anomaly_map=anomaly_map, pred_mask=mask, regions=regions, detector=self.detector.name,
            brain=self.brain.name, image_size=ev.image.size, trace=trace, verdict=verdict, decision=decision,
            suspicious_place=suspect,
        )
        rate = decision.get("false_alarm_rate")
        step(
            trace, "decide", t0, verdict=verdict, pred_score=round(pred_score, 6), final_raw=round(ev.raw, 6),
            summary=f"{verdict} (score {pred_score:.3f})"
            + (f": boundary for a false-alarm rate of {rate:.3g}, from {decision['good_samples']} good sample(s)" if rate else "")
            + f"; {len(regions)} region(s)",
        )
        self._refine_with_sam(record, ev.image)
        images: list[str] = []
        if isinstance(self.brain, SeesImages):
            self.brain.use_image(ev.image_path, ev.image)
            views = self._views(ev)
            self.brain.use_views(ev.image_path, views)
            images = ["the whole image"] + [label for label, _ in views]
        if isinstance(self.brain, JudgesDefects) and self.settings.brain_weight > 0:
            self._judge(record, cal, trace)
        if self.settings.first_opinion:
            self._brain_text(trace, "first_opinion", lambda b: b.explain(record))
        record.explanation = self._brain_text(trace, "explain", lambda b: b.explain(record), images=images)
        if question:
            record.answer = self.answer(question, record, history)
        step(
            trace, "conclude", t0, verdict=record.verdict, pred_score=round(pred_score, 6), regions=len(record.regions),
            summary=f"{record.verdict} (score {pred_score:.3f}), {len(record.regions)} region(s)",
        )
        return record

    def inspect(
        self, image_path: str, image: Image.Image | None = None, question: str | None = None,
        history: list[tuple[str, str]] | None = None,
    ) -> InspectionRecord:
        """The whole loop for one image (raises `ImageLoadError` only for an unreadable file)."""
        t0 = time.perf_counter()
        img = image if image is not None else load_image(image_path)
        ev = self.score(str(image_path), img)
        ev.trace.insert(0, {"step": "load", "inputs": {"image_path": str(image_path)}, "size": list(img.size),
                            "seconds": round(time.perf_counter() - t0, 4)})
        return self.conclude(ev, question, history)

    def _reference_contrast(self, pixels: np.ndarray, region: Region) -> float | None:
        """Mean grey of the region's box minus the references' at the same place: negative when it is
        darker than every reference there, positive when brighter than every one, 0 within their range."""
        if not self.references:
            return None
        h, w = pixels.shape[:2]
        x0, y0, x1, y1 = region.bbox
        if self._ref_greys is None or self._ref_greys[0].shape != (h, w):
            self._ref_greys = [to_grey(np.asarray(r.resize((w, h), Image.BILINEAR))) for r in self.references]
        here = float(to_grey(pixels)[y0:y1, x0:x1].mean())
        refs = [float(g[y0:y1, x0:x1].mean()) for g in self._ref_greys]
        if here < min(refs):
            return here - min(refs)
        if here > max(refs):
            return here - max(refs)
        return 0.0

    def _refine_with_sam(self, record: InspectionRecord, image: Image.Image) -> None:
        if self.sam is None or record.pred_mask is None or not record.pred_mask.any():
            return
        t0 = time.perf_counter()
        try:
            refined, refinements = self.sam.refine(image, record.pred_mask, record.anomaly_map)
            record.pred_mask = np.asarray(refined, dtype=bool)
            record.regions = measure_regions(record.anomaly_map, record.pred_mask, np.asarray(image))
            kept = sum(1 for r in refinements if r.kept == "sam")
            step(record.trace, "sam_refine", t0, tool="sam", refinements=[r.to_dict() for r in refinements],
                 summary=f"SAM mask kept for {kept} of {len(refinements)} region(s); {len(record.regions)} region(s)")
        except Exception as err:  # noqa: BLE001
            step(record.trace, "sam_refine", t0, tool="sam", error=short(str(err), 200), summary="SAM failed; map mask kept")

    # ------------------------------------------------------------------------------------------ brain
    def _views(self, ev: Evidence) -> list[tuple[str, Image.Image]]:
        """What a model brain sees besides the whole image: the most suspicious place zoomed in (the
        second look's top place, or the first look's when there was no second look), and the same
        place on the reference that looks most like it there."""
        if ev.looks:
            box, target = ev.looks[0].box, ev.looks[0].target
        else:
            places = suspicious_places(ev.raw_map, 1, self.settings.look_twice.min_crop)
            if not places:
                return []
            box = zoom_box(places[0][0], ev.image.size, self.settings.look_twice.margin, self.settings.look_twice.min_crop)
            target = "place 1"
        crop = ev.image.crop(box)
        views = [(f"{target} zoomed in (the most suspicious place, box {list(box)})", crop)]
        if self.references:
            w, h = ev.image.size
            grey = np.asarray(crop.convert("L"), dtype=np.float32)
            crops = [r.resize((w, h), Image.BILINEAR).crop(box) for r in self.references]
            nearest = min(crops, key=lambda c: float(np.abs(np.asarray(c.convert("L"), dtype=np.float32) - grey).mean()))
            views.append(("the same place on the nearest good reference", nearest))
        return views

    def _judge(self, record: InspectionRecord, cal: Calibration | None, trace: list[dict[str, Any]]) -> None:
        """Fuse the brain's P(Yes) with the calibrated score (logits, weight `brain_weight`)."""
        t0 = time.perf_counter()
        w = self.settings.brain_weight
        try:
            p, source = self.brain.p_yes(record)  # type: ignore[attr-defined]
        except Exception as err:  # noqa: BLE001 - the detector's verdict stands
            step(trace, "brain_judgement", t0, error=short(f"{type(err).__name__}: {err}", 200),
                 summary="the brain gave no P(Yes); the verdict stands")
            return
        before, verdict_before = record.pred_score, record.verdict
        fused = float(_sigmoid((1 - w) * _logit(record.pred_score) + w * _logit(p)))
        record.pred_score = fused
        review = cal.review_score() if cal is not None else None
        record.verdict = "defective" if fused > 0.5 else ("review" if review is not None and fused > review else "good")
        record.pred_label = record.verdict == "defective"
        record.decision = {**record.decision, "brain_p_yes": round(p, 4), "brain_p_yes_from": source}
        last = self.brain.last_call if isinstance(self.brain, ReportsModelCalls) else None
        step(trace, "brain_judgement", t0, p_yes=round(p, 4), source=source, weight=w,
             **({"model_call": dict(last)} if last else {}),
             changed=change(before, fused, "score") + (f"; {verdict_before} -> {record.verdict}" if record.verdict != verdict_before else ""),
             summary=f"P(Yes) {p:.3f} from the brain ({source}), fused with weight {w:g}")

    def _brain_text(self, trace: list[dict[str, Any]], name: str, call: Callable[[Brain], str],
                    inputs: dict[str, Any] | None = None, images: list[str] | None = None) -> str:
        """Text from the brain; on any failure the RuleBrain's, with the error in the trace."""
        t0 = time.perf_counter()
        extra: dict[str, Any] = {"inputs": inputs} if inputs else {}
        if images:
            extra["images"] = images
        try:
            text = call(self.brain)
            if not isinstance(text, str) or not text.strip():
                raise ValueError("the brain returned no text")
            last = self.brain.last_call if isinstance(self.brain, ReportsModelCalls) else None
            step(trace, name, t0, brain=self.brain.name, **extra, summary=short(text), **({"model_call": dict(last)} if last else {}))
            return text.strip()
        except Exception as err:  # noqa: BLE001 - a model's failure must never end the inspection
            text = call(self.fallback)
            step(trace, name, t0, brain=self.brain.name, **extra, error=short(f"{type(err).__name__}: {err}", 200),
                 fallback=self.fallback.name, summary=short(text))
            return text

    def answer(self, question: str, record: InspectionRecord, history: list[tuple[str, str]] | None = None) -> str:
        """The brain's answer to a question about `record` (RuleBrain's on failure); traced in the record."""
        return self._brain_text(
            record.trace, "answer", lambda b: b.answer(question, record, history),
            {"question": question, "history_turns": len(history or [])},
        )


def _logit(p: float) -> float:
    p = min(max(float(p), 1e-6), 1 - 1e-6)
    return float(np.log(p) - np.log1p(-p))


def _sigmoid(x: float) -> float:
    return float(1.0 / (1.0 + np.exp(-np.clip(x, -60, 60))))


def _rgb(image: Image.Image) -> Image.Image:
    return image if image.mode == "RGB" else image.convert("RGB")


def _place_region(anomaly_map: np.ndarray, ev: Evidence, pixels: np.ndarray) -> Region | None:
    """The most suspicious place as a measured region (for a part with no region above the boundary):
    the second look's top place, else the first map's peak; the area above half its peak inside it."""
    box = ev.looks[0].place if ev.looks else None
    if box is None:
        places = suspicious_places(np.asarray(ev.raw_map), 1, 16)
        if not places:
            return None
        box = places[0][0]
    x0, y0, x1, y1 = box
    amap = np.asarray(anomaly_map, dtype=np.float64)
    inside = amap[y0:y1, x0:x1]
    if inside.size == 0:
        return None
    floor = float(np.median(amap))
    mask = np.zeros(amap.shape, bool)
    mask[y0:y1, x0:x1] = inside >= floor + 0.5 * (float(inside.max()) - floor)
    found = measure_regions(amap, mask, pixels, max_regions=1)
    return found[0] if found else None


def _order_by_looks(regions: list, looks: Sequence[Look]) -> list:
    """Regions the second look confirmed most strongly first (then by the measurer's order)."""
    if not looks or len(regions) < 2:
        return regions

    def strength(r: Any) -> float:
        x0, y0, x1, y1 = r.bbox
        best = 0.0
        for lk in looks:
            px0, py0, px1, py1 = lk.place
            if px0 < x1 and x0 < px1 and py0 < y1 and y0 < py1:
                best = max(best, lk.ratio)
        return best

    return sorted(regions, key=lambda r: -strength(r))


__all__ = ["MAX_CALIBRATION_SAMPLE", "Evidence", "Pipeline"]
