"""A line where 40 % of the parts share one defect: the batch's "most parts are good" assumption is
strained (defects that look alike make a dense cluster that can pass for the good mode). The
references bound where the good mode can lie (`tools.detectors.calibration`, tested on score
distributions in tests/tools/test_calibration.py); here, end to end, the defective parts are caught
and the good ones kept, with the batch's good share estimated from what is really good."""

from __future__ import annotations

import numpy as np
from PIL import Image

from agent.inspection import DecisionSettings, InspectionSettings, Pipeline
from instruct_data.synthesis.demo_case import brushed_plate

SIZE = 96


def _plate(seed: int, stained: bool) -> Image.Image:
    rng = np.random.default_rng(seed)
    arr = brushed_plate(rng, SIZE)
    if stained:  # the same dark stain at the same place on every defective part
        yy, xx = np.mgrid[0:SIZE, 0:SIZE]
        blob = np.exp(-(((yy - 60) / 9) ** 2 + ((xx - 40) / 12) ** 2))[..., None]
        arr = arr * (1 - 0.45 * blob)
    return Image.fromarray((np.clip(arr, 0, 1) * 255).astype(np.uint8))


def test_a_line_with_a_shared_defect_is_still_caught():
    warnings: list[str] = []
    goods = [_plate(100 + i, False) for i in range(18)]
    bads = [_plate(200 + i, True) for i in range(12)]  # 40 % of the batch
    batch = goods + bads
    settings = InspectionSettings("batch", {"resolution": 96}, decision=DecisionSettings(0.05, True, None))
    pipeline = Pipeline(settings, warn=warnings.append).fit([_plate(i, False) for i in range(6)], n_images=len(batch))
    pipeline.fit_batch(batch)
    cal = pipeline.calibration
    assert cal is not None and cal.method.startswith("batch")
    share = float(cal.method.split("estimated good share ")[1].rstrip(")"))
    assert abs(share - len(goods) / len(batch)) <= 0.15, cal.method  # not pulled towards the shared defect
    verdicts = [pipeline.decide(pipeline.score(f"p{i}", im)).verdict for i, im in enumerate(batch)]
    caught = sum(v == "defective" for v in verdicts[len(goods):])
    false_alarms = sum(v == "defective" for v in verdicts[: len(goods)])
    assert caught >= 0.8 * len(bads) and false_alarms <= 0.2 * len(goods), (caught, false_alarms)
