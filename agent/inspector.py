"""One inspection pipeline: detector -> mask -> regions -> explanation, recorded step by step.

This is the "look" step of the match-of-thought loop with the embedded tools, and what `inspect`,
`demo` and later reports call. It knows nothing about files on disk beyond loading images.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from agent.brains import Brain
from tools.detectors import DETECTORS, Detector, DetectorError, DetectorOutput, MissingModelError
from tools.image_io import ImageLoadError, list_images, load_image
from tools.record import InspectionRecord
from tools.regions import measure_regions


def load_images(
    source: str | os.PathLike[str] | Sequence[str | os.PathLike[str]],
    what: str = "image",
    warn: Callable[[str], None] = print,
    limit: int | None = None,
) -> list[Image.Image]:
    """Images from a folder (recursive), one file, or a list of files; unreadable ones are skipped with
    a one-line warning, so one bad file does not block the run. Raises `DetectorError` when none is left."""
    if isinstance(source, str | os.PathLike):
        folder = Path(source)
        if not folder.exists():
            raise DetectorError(f"{what}s folder '{folder}' does not exist")
        paths = list_images(folder, recursive=True) if folder.is_dir() else [folder]
    else:
        paths = [Path(p) for p in source]
    images = []
    for p in paths[:limit] if limit else paths:
        try:
            images.append(load_image(p))
        except ImageLoadError as err:
            warn(f"{what} skipped: {err}")
    if not images:
        raise DetectorError(f"no readable {what} images in '{source}'")
    return images


def load_references(
    refs: str | os.PathLike[str] | Sequence[str | os.PathLike[str]] | None,
    warn: Callable[[str], None] = print,
) -> list[Image.Image]:
    """Good reference images (see `load_images`); none when `refs` is None."""
    return [] if refs is None else load_images(refs, "reference", warn)


def record_from_output(
    image_path: str,
    image: Image.Image,
    out: DetectorOutput,
    detector: Detector,
    brain_name: str,
    trace: list[dict[str, Any]],
) -> InspectionRecord:
    """The record of one detector output: verdict, defect mask (empty for a good verdict), regions."""
    pred_label = bool(out.pred_score > detector.threshold)
    mask = out.predicted_mask(detector.pixel_threshold)
    if not pred_label:
        mask = np.zeros_like(mask)
    return InspectionRecord(
        image_path=image_path,
        pred_score=float(out.pred_score),
        pred_label=pred_label,
        threshold=float(detector.threshold),
        anomaly_map=out.anomaly_map,
        pred_mask=mask,
        regions=measure_regions(out.anomaly_map, mask, np.asarray(image)),
        detector=detector.name,
        brain=brain_name,
        image_size=image.size,
        trace=trace,
    )


class Inspector:
    """Holds a fitted detector and a brain; `inspect` turns one image into an `InspectionRecord`."""

    def __init__(
        self,
        detector: str = "refmatch",
        references: Sequence[Image.Image] = (),
        detector_options: dict[str, Any] | None = None,
        brain: str = "rule",
        warn: Callable[[str], None] = print,
    ) -> None:
        factory = DETECTORS.get(detector)
        if getattr(factory, "requires_references", False) and not references:
            warn(
                f"no references given: {detector} needs good references, using the zero-shot fallback 'selfsim'"
            )
            detector = "selfsim"
            detector_options = {
                k: v for k, v in (detector_options or {}).items() if k in ("resolution", "device")
            }
        t0 = time.perf_counter()
        try:
            self.detector: Detector = DETECTORS.build(detector, **(detector_options or {}))
            self.detector.fit(list(references))
        except MissingModelError as err:
            fallback = "refmatch" if references else "selfsim"
            warn(f"{err}\nfalling back to the embedded detector '{fallback}' (no download needed)")
            self.detector = DETECTORS.build(fallback)
            self.detector.fit(list(references))
        self.fit_seconds = time.perf_counter() - t0
        self.n_references = len(references)
        from agent.brains.spec import build_brain

        self.brain: Brain = build_brain(brain)

    def inspect(
        self, image_path: str | os.PathLike[str], image: Image.Image | None = None
    ) -> InspectionRecord:
        """Inspect one image; raises `ImageLoadError` for unreadable files (callers report and go on)."""
        trace: list[dict[str, Any]] = []
        t = time.perf_counter()
        img = image if image is not None else load_image(image_path)
        trace.append({"step": "load", "seconds": round(time.perf_counter() - t, 4), "size": list(img.size)})

        t = time.perf_counter()
        out = self.detector.predict([img])[0]
        d = self.detector
        trace.append(
            {
                "step": "look",
                "tool": d.name,
                "seconds": round(time.perf_counter() - t, 4),
                "summary": f"score {out.pred_score:.3f} (raw {out.raw_score:.4g}), threshold {d.threshold:.2f}",
            }
        )

        t = time.perf_counter()
        record = record_from_output(str(image_path), img, out, d, self.brain.name, trace)
        trace.append(
            {
                "step": "regions",
                "seconds": round(time.perf_counter() - t, 4),
                "summary": f"{len(record.regions)} region(s)",
            }
        )
        t = time.perf_counter()
        record.explanation = self.brain.explain(record)
        trace.append(
            {"step": "conclude", "brain": self.brain.name, "seconds": round(time.perf_counter() - t, 4)}
        )
        return record
