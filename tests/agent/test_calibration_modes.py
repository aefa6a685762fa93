"""Every calibration mode works with every embedded detector: the boundary comes from where the mode
says (the references held out, or the batch), and every record carries a promise."""

from __future__ import annotations

import math

import pytest

from agent.inspection import DecisionSettings, InspectionSettings, Pipeline
from tests.agent import agent_case as case


def _batch() -> list:
    return [case.good(seed=10 + i) for i in range(9)] + [case.scratched(seed=40 + i) for i in range(3)]


@pytest.mark.parametrize("detector", ["refmatch", "batch", "selfsim"])
@pytest.mark.parametrize("mode", ["references", "batch"])
def test_each_detector_with_each_calibration_mode(detector, mode):
    settings = InspectionSettings(detector, {"resolution": 64}, decision=DecisionSettings(0.2, True, mode))
    pipeline = Pipeline(settings, warn=lambda _m: None).fit(case.references(4), n_images=12)
    images = _batch()
    assert pipeline.uses_batch(len(images)) == (mode == "batch" or detector == "batch")
    if pipeline.uses_batch(len(images)):
        pipeline.fit_batch(images)
    cal = pipeline.calibration
    assert cal is not None, f"{detector} / {mode}: no boundary"
    assert cal.method.startswith(mode)
    if mode == "references":
        assert cal.good_samples == 4  # each reference once, held out (selfsim: scored as it is)
    record = pipeline.inspect("scratch.png", case.scratched(seed=99))
    rate = record.decision["false_alarm_rate"]
    assert rate is not None and math.isfinite(rate) and 0 < rate < 1
    assert record.verdict in ("good", "review", "defective")
