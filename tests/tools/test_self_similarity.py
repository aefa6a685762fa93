"""Zero-shot fallback: finds a drawn defect with no references at all."""

from __future__ import annotations

import numpy as np
from PIL import Image

from instruct_data.synthesis.demo_case import brushed_plate, draw_stain
from tools.detectors import DETECTORS
from tools.detectors.self_similarity import SelfSimilarityDetector


def test_stain_found_without_references():
    rng = np.random.default_rng(0)
    good = Image.fromarray((brushed_plate(rng, 192) * 255).astype(np.uint8))
    stained, mask = draw_stain(brushed_plate(rng, 192), rng)
    bad = Image.fromarray((stained * 255).astype(np.uint8))
    det = DETECTORS.build("selfsim", resolution=192)
    assert isinstance(det, SelfSimilarityDetector) and not det.requires_references
    det.fit([])
    out_good, out_bad = det.predict([good, bad])
    assert out_bad.raw_score > out_good.raw_score
    assert out_bad.anomaly_map.shape == mask.shape
    assert out_bad.anomaly_map[mask].mean() > out_bad.anomaly_map[~mask].mean()
    assert det.calibration()["method"].startswith("fixed")


def test_references_move_the_boundary():
    rng = np.random.default_rng(1)
    refs = [Image.fromarray((brushed_plate(rng, 128) * 255).astype(np.uint8)) for _ in range(3)]
    det = SelfSimilarityDetector(resolution=128)
    det.fit(refs)
    cal = det.calibration()
    assert cal["good_samples"] == 3 and cal["method"].startswith("references")
