"""The loop's steps that call the brain: set it up, hand it the image, ask its P(Yes), take its words.

- Set-up (`prepare`, when the pipeline is fitted): a model brain loads now, so a model that is not
  there is a usage error at once (one complete message) rather than three truncated fallbacks later;
  with `fallback` (`--fallback`) the rule brain takes over instead, said once.
- Images: the inspected image, once per inspection. The second look's crops (the most suspicious
  place zoomed in, the same place on the nearest reference) only for a brain that asks for them
  (`send_views`): a model trained with the Look-Twice expert saw one image of the part, and the
  record says which images each request carried (`model_call.images_sent`).
- P(Yes): asked of every brain that judges defects, with the image and the detection question alone
  (no verdict, no score: the model would only repeat the detector), and recorded in the decision. It
  changes the score only with `brain_weight` > 0, and then the fused score gets a boundary of its own,
  set the same way as the detector's, on the references held out (their P(Yes) asked once, at
  set-up), so the false-alarm rate the record states is the fused score's. A batch boundary would
  need the brain on the calibration sample: there it is recorded, not fused, and the record says so.
- Texts: explanation, first opinion and answers; on any failure the rule brain's words, with the
  error in the trace.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
from PIL import Image

from agent.brains.abilities import JudgesDefects, ReportsModelCalls, SeesImages
from agent.brains.base import Brain
from agent.inspection.settings import InspectionSettings
from agent.inspection.trace import change, short, step
from tools.detectors.calibration import Calibration
from tools.record import InspectionRecord
from tools.region_views import nearest_reference_crop, suspicious_places, zoom_box

NOT_FUSED = "recorded, not fused into the score (brain_weight 0)"


class BrainSteps:
    """The brain of one pipeline and the steps that call it (module docstring)."""

    def __init__(self, settings: InspectionSettings, brain: Brain | None = None) -> None:
        """No callbacks are kept (a pipeline is pickled to Ray actors with its brain steps)."""
        self.settings = settings
        self._brain = brain
        self._fallback: Brain | None = None
        self.fused: Calibration | None = None  # the boundary of the fused score (references mode)
        self.fusion_note = NOT_FUSED

    # ------------------------------------------------------------------------------------------ set-up
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

    def prepare(self, warn: Callable[[str], None]) -> Brain:
        """Load a model brain now (its `load()`, its notes to `warn`); when it cannot load, raise its
        `BrainError`, or with `fallback` go on with the rule brain, said once."""
        from agent.brains.common import BrainError

        brain = self.brain
        load = getattr(brain, "load", None)
        if callable(load):
            note = getattr(brain, "note", None)
            if note is not None:
                brain.note = warn
            try:
                load()
            except BrainError as err:
                if not self.settings.fallback:
                    raise
                warn(f"{err} Going on with the rule brain (--fallback).")
                self._brain = self.fallback
            finally:
                if note is not None:
                    brain.note = note
        return self.brain

    def calibrate(self, references: Sequence[Image.Image], good_raw: np.ndarray, cal: Calibration | None) -> None:
        """With `brain_weight` > 0 and a references boundary: the references' P(Yes), each fused with the
        reference's held-out calibrated score, and the fused score's own boundary on them."""
        w = self.settings.brain_weight
        self.fused, self.fusion_note = None, NOT_FUSED
        if w <= 0:
            return
        brain = self.brain
        if not isinstance(brain, JudgesDefects):
            self.fusion_note = f"brain {brain.name} gives no P(Yes): nothing fused"
            return
        good = np.asarray(good_raw, dtype=np.float64)
        if cal is None or not references or good.size % len(references):
            self.fusion_note = "recorded, not fused: no references boundary to set the fused score's on"
            return
        per_ref = good.size // len(references)
        fused = []
        for i, reference in enumerate(references):
            record = InspectionRecord(f"reference {i + 1}", 0.5, False, 0.5, image_size=reference.size)
            if isinstance(brain, SeesImages):
                brain.use_image(record.image_path, reference)
            p, _ = brain.p_yes(record)  # type: ignore[attr-defined]
            fused.extend(fuse(float(cal.apply(v)), p, w) for v in good[i * per_ref : (i + 1) * per_ref])
        d = self.settings.decision
        method = f"references (leave-one-out, the final score fused with the brain's P(Yes), weight {w:g})"
        self.fused = Calibration.from_good_scores(np.array(fused), d.false_alarm_rate, d.review_factor, method=method)
        self.fusion_note = f"fused with weight {w:g}; the boundary set again on the references' fused scores"

    def batch_boundary(self) -> None:
        """The boundary now comes from the batch: P(Yes) is recorded, not fused (a fused boundary would
        need the brain on the calibration sample)."""
        if self.fused is not None or self.settings.brain_weight > 0:
            self.fused = None
            self.fusion_note = "recorded, not fused: the boundary is set on the batch, which the brain did not see"

    # ------------------------------------------------------------------------------------------ steps
    def hand_over(self, image_path: str, image: Image.Image, raw_map: np.ndarray, looks: Sequence[Any],
                  references: Sequence[Image.Image]) -> None:
        """Give the brain the image (and, if it asks for them, the second look's crops)."""
        brain = self.brain
        if not isinstance(brain, SeesImages):
            return
        brain.use_image(image_path, image)
        if getattr(brain, "send_views", False):
            brain.use_views(image_path, self.views(image, raw_map, looks, references))

    def views(self, image: Image.Image, raw_map: np.ndarray, looks: Sequence[Any],
              references: Sequence[Image.Image]) -> list[tuple[str, Image.Image]]:
        """The most suspicious place zoomed in, and the same place on the reference most like it there."""
        z = self.settings.zoom_recheck
        if looks:
            box, target = looks[0].box, looks[0].target
        else:
            places = suspicious_places(raw_map, 1, z.min_crop)
            if not places:
                return []
            box, target = zoom_box(places[0][0], image.size, z.margin, z.min_crop), "place 1"
        views = [(f"{target} zoomed in (the most suspicious place, box {list(box)})", image.crop(box))]
        nearest = nearest_reference_crop(image, references, box)
        if nearest is not None:
            views.append(("the same place on the nearest good reference", nearest))
        return views

    def judge(self, record: InspectionRecord, raw: float, trace: list[dict[str, Any]]) -> None:
        """The brain's P(Yes), recorded in the decision; fused into the score under the fused boundary
        when `calibrate` set one."""
        brain = self.brain
        if not isinstance(brain, JudgesDefects):
            return
        t0 = time.perf_counter()
        try:
            p, source = brain.p_yes(record)
        except Exception as err:  # noqa: BLE001 - the detector's verdict stands
            step(trace, "brain_judgement", t0, error=short(f"{type(err).__name__}: {err}", 200),
                 summary="the brain gave no P(Yes); the verdict stands")
            return
        record.decision = {**record.decision, "brain_p_yes": round(p, 4), "brain_p_yes_from": source,
                           "brain_fusion": self.fusion_note}
        last = brain.last_call if isinstance(brain, ReportsModelCalls) else None
        extra = {"model_call": dict(last)} if last else {}
        w = self.settings.brain_weight
        if self.fused is None:
            step(trace, "brain_judgement", t0, p_yes=round(p, 4), source=source, weight=w, **extra,
                 changed="nothing: " + self.fusion_note, summary=f"P(Yes) {p:.3f} from the brain ({source}), {self.fusion_note}")
            return
        before, verdict_before = record.pred_score, record.verdict
        fused_raw = fuse(record.pred_score, p, w)
        record.pred_score = float(self.fused.apply(fused_raw))
        record.verdict = self.fused.verdict(fused_raw)
        record.pred_label = record.verdict == "defective"
        fields = ("method", "false_alarm_rate", "good_samples", "review_from_score")
        record.decision = {**record.decision, **{k: v for k, v in self.fused.to_dict().items() if k in fields}}
        moved = f"; {verdict_before} -> {record.verdict}" if record.verdict != verdict_before else ""
        step(trace, "brain_judgement", t0, p_yes=round(p, 4), source=source, weight=w, **extra,
             changed=change(before, record.pred_score, "score") + moved,
             summary=f"P(Yes) {p:.3f} from the brain ({source}), fused with weight {w:g} under the fused boundary")

    def text(self, trace: list[dict[str, Any]], name: str, call: Callable[[Brain], str],
             inputs: dict[str, Any] | None = None) -> str:
        """Text from the brain; on any failure the rule brain's, with the error in the trace."""
        t0 = time.perf_counter()
        brain = self.brain
        extra: dict[str, Any] = {"inputs": inputs} if inputs else {}
        try:
            text = call(brain)
            if not isinstance(text, str) or not text.strip():
                raise ValueError("the brain returned no text")
            last = brain.last_call if isinstance(brain, ReportsModelCalls) else None
            if last:
                extra["model_call"] = dict(last)
                if "images_sent" in last:
                    extra["images"] = list(last["images_sent"])
            step(trace, name, t0, brain=brain.name, **extra, summary=short(text))
            return text.strip()
        except Exception as err:  # noqa: BLE001 - a model's failure must never end the inspection
            text = call(self.fallback)
            step(trace, name, t0, brain=brain.name, **extra, error=short(f"{type(err).__name__}: {err}", 200),
                 fallback=self.fallback.name, summary=short(text))
            return text

    def answer(self, question: str, record: InspectionRecord, history: list[tuple[str, str]] | None = None) -> str:
        """The brain's answer to a question about `record` (the rule brain's on failure), traced."""
        return self.text(record.trace, "answer", lambda b: b.answer(question, record, history),
                         {"question": question, "history_turns": len(history or [])})


def fuse(score: float, p_yes: float, weight: float) -> float:
    """The detector's calibrated score and the brain's P(Yes), mixed in logits: (1-w) logit(s) + w logit(p)
    (a raw score for the fused boundary)."""
    return (1 - weight) * _logit(score) + weight * _logit(p_yes)


def _logit(p: float) -> float:
    p = min(max(float(p), 1e-6), 1 - 1e-6)
    return float(np.log(p) - np.log1p(-p))


__all__ = ["NOT_FUSED", "BrainSteps", "fuse"]
