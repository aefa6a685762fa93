"""Small brushed-plate images for the agent tests (96 px, so the detector runs in about a second)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from instruct_data.synthesis.demo_case import brushed_plate, draw_scratch
from tools.detectors import Detector

SIZE = 96
DETECTOR_OPTIONS = {"resolution": 96}


def _img(arr: np.ndarray) -> Image.Image:
    return Image.fromarray((np.clip(arr, 0, 1) * 255).astype(np.uint8))


def references(n: int = 2, seed: int = 0) -> list[Image.Image]:
    rng = np.random.default_rng(seed)
    return [_img(brushed_plate(rng, SIZE)) for _ in range(n)]


def scratched(seed: int = 1) -> Image.Image:
    rng = np.random.default_rng(seed)
    arr, _ = draw_scratch(brushed_plate(rng, SIZE), rng)
    return _img(arr)


def good(seed: int = 2) -> Image.Image:
    return _img(brushed_plate(np.random.default_rng(seed), SIZE))


def write_case(root: Path) -> dict[str, Path]:
    """refs/ (two good plates), scratch.png, good.png and a broken file under `root`."""
    refs = root / "refs"
    refs.mkdir(parents=True, exist_ok=True)
    for i, im in enumerate(references()):
        im.save(refs / f"ref_{i}.png")
    scratched().save(root / "scratch.png")
    good().save(root / "good.png")
    (root / "broken.png").write_bytes(b"not an image")
    return {
        "refs": refs,
        "scratch": root / "scratch.png",
        "good": root / "good.png",
        "broken": root / "broken.png",
    }


class MeanDiffDetector(Detector):
    """A fast stand-in detector for tests of the agent plumbing: |image - mean reference| in grey,
    smoothed, scaled so a clear mark is well above 0.5. Real code paths of the loop and tools run."""

    name = "meandiff"
    requires_references = False

    def __init__(self, gain: float = 3.5) -> None:
        self.gain = gain
        self.mean: np.ndarray | None = None

    def fit(self, references) -> None:
        self.mean = None
        if references:
            self.mean = np.mean([np.asarray(r.convert("L"), np.float32) / 255.0 for r in references], axis=0)

    def predict(self, images):
        from scipy import ndimage

        from tools.detectors import DetectorOutput

        outs = []
        for im in images:
            grey = np.asarray(im.convert("L"), np.float32) / 255.0
            ref = self.mean if self.mean is not None and self.mean.shape == grey.shape else np.median(grey)
            amap = ndimage.gaussian_filter(np.abs(grey - ref), 1.5) * self.gain
            amap = np.clip(amap, 0, 1).astype(np.float32)
            outs.append(DetectorOutput(amap, float(amap.max()), float(amap.max())))
        return outs


def pipeline(detector=None, refs=None, brain=None, **settings):
    """An inspection pipeline fitted on `refs` (default: the two references) with `detector` (default:
    refmatch at 96 px) and `brain` (default: the rule brain); `settings` are `InspectionSettings` fields."""
    from agent.inspection import InspectionSettings, Pipeline, ZoomRecheckSettings

    if detector is not None and "zoom_recheck" not in settings:
        settings["zoom_recheck"] = ZoomRecheckSettings(enabled=False)  # a stand-in detector has no zoom
    s = InspectionSettings("refmatch", dict(DETECTOR_OPTIONS), **settings)
    refs = references() if refs is None else refs
    return Pipeline(s, warn=lambda m: None, brain=brain, detector=detector).fit(refs)
