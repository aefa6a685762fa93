"""Steps 2 and 3 of the loop on one image's evidence: the zoomed re-check and the match.

The pipeline orders the steps and holds what they need (the fitted re-check, the references' parts);
each step here reads and extends an `Evidence`, records itself in its trace, and says what it changed.
A step whose weight is 0 changes nothing and runs only when something else needs its result (see
`Pipeline._runs_match`).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from PIL import Image

from agent.inspection.match import ReferenceModel, compare
from agent.inspection.settings import MatchSettings, ZoomRecheckSettings
from agent.inspection.trace import change, short, step
from agent.inspection.zoom_recheck import Look, ZoomRecheck, fused_factor
from tools.detectors import DetectorOutput
from tools.record import InspectionRecord, Region
from tools.region_views import ReferenceTones, order_by_places, place_region
from tools.regions import measure_regions


@dataclass
class Evidence:
    """Everything the loop found about one image before deciding."""

    image_path: str
    image: Image.Image
    output: DetectorOutput
    raw_map: np.ndarray  # the first look's raw map at image resolution
    looks: list[Look] = field(default_factory=list)
    factor: float = 1.0  # the re-check's factor on the detector's raw score
    match: dict[str, Any] | None = None
    match_term: float = 0.0  # what broken rules add, in raw units
    trace: list[dict[str, Any]] = field(default_factory=list)

    @property
    def first_raw(self) -> float:
        """The first look's raw score (the detector's)."""
        return float(self.output.raw_score)

    @property
    def raw(self) -> float:
        """The final fused raw score."""
        return self.first_raw * self.factor + self.match_term

    @classmethod
    def of(cls, image_path: str, image: Image.Image, output: DetectorOutput, trace: list[dict[str, Any]] | None = None) -> Evidence:
        raw_map = output.extras.get("raw_map")
        return cls(image_path, image, output, np.asarray(output.anomaly_map if raw_map is None else raw_map), trace=trace or [])


def zoom_recheck_step(ev: Evidence, recheck: ZoomRecheck | None, s: ZoomRecheckSettings, skipped: str, held_out: int | None) -> None:
    """Step 2: the top places scored again, zoomed in; `skipped` says why when `recheck` is None."""
    t0 = time.perf_counter()
    if recheck is None:
        step(ev.trace, "zoom_recheck", t0, skipped=skipped, summary=f"skipped: {skipped}")
        return
    before = ev.raw
    ev.looks = recheck.look(ev.image, ev.raw_map, held_out)
    ev.factor = fused_factor(ev.looks, s.weight)
    confirmed = sum(1 for lk in ev.looks if lk.outcome == "confirmed")
    step(
        ev.trace, "zoom_recheck", t0,
        inputs={"top_k": s.top_k, "zoom": s.zoom, "weight": s.weight},
        looks=[lk.to_dict() for lk in ev.looks],
        changed=change(before, ev.raw, "raw score") if s.weight > 0 else "nothing: record only (weight 0)",
        summary=f"{len(ev.looks)} place(s) looked at again at {s.zoom:g}x, {confirmed} confirmed",
    )


def match_step(
    ev: Evidence, references: Callable[[int | None, list[dict[str, Any]]], ReferenceModel | None],
    s: MatchSettings, unit: float, held_out: int | None, n_references: int,
) -> None:
    """Step 3: the image's parts matched to the references' (`references(held_out, trace)` gives
    their model), the rules checked; each broken rule adds `weight * unit` to the raw score."""
    t0 = time.perf_counter()
    try:
        refs = references(held_out, ev.trace)
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
    ev.match = result
    ev.match_term = s.weight * unit * len(result["violations"])
    step(
        ev.trace, "match", t0,
        inputs={"references": n_references - (held_out is not None)},
        **{k: v for k, v in result.items() if k != "summary"},
        changed=change(before, ev.raw, "raw score") if s.weight > 0 else "nothing: record only (weight 0)",
        summary=result["summary"],
    )


def measured_regions(ev: Evidence, anomaly_map: np.ndarray, mask: np.ndarray, tones: ReferenceTones) -> tuple[list[Region], Region | None]:
    """The outlined defects measured (ordered by what the re-check confirmed) and the most suspicious
    place (the first region, or the top place when none is outlined), with their reference contrast."""
    pixels = np.asarray(ev.image)
    regions = order_by_places(measure_regions(anomaly_map, mask, pixels), [(lk.place, lk.ratio) for lk in ev.looks])
    suspect = regions[0] if regions else place_region(anomaly_map, ev.raw_map, pixels, ev.looks[0].place if ev.looks else None)
    for region in regions + ([suspect] if suspect is not None and not regions else []):
        region.reference_contrast = tones.contrast(pixels, region.bbox)
    return regions, suspect


def sam_refine_step(record: InspectionRecord, image: Image.Image, sam: Any) -> None:
    """SAM's masks for the outlined regions where it agrees with the map (`tools.sam`); a failure
    keeps the map's mask and is traced."""
    if sam is None or record.pred_mask is None or not record.pred_mask.any():
        return
    t0 = time.perf_counter()
    try:
        refined, refinements = sam.refine(image, record.pred_mask, record.anomaly_map)
        record.pred_mask = np.asarray(refined, dtype=bool)
        record.regions = measure_regions(record.anomaly_map, record.pred_mask, np.asarray(image))
        kept = sum(1 for r in refinements if r.kept == "sam")
        step(record.trace, "sam_refine", t0, tool="sam", refinements=[r.to_dict() for r in refinements],
             summary=f"SAM mask kept for {kept} of {len(refinements)} region(s); {len(record.regions)} region(s)")
    except Exception as err:  # noqa: BLE001
        step(record.trace, "sam_refine", t0, tool="sam", error=short(str(err), 200), summary="SAM failed; map mask kept")


__all__ = ["Evidence", "match_step", "measured_regions", "sam_refine_step", "zoom_recheck_step"]
