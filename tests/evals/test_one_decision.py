"""`eval` decides as `report` does: same detector, same batch sample, same boundary, same verdicts."""

from __future__ import annotations

import json
import random
import shutil
from pathlib import Path

import pytest

from agent.cli import main
from evals.detection import DetectionBenchmarkSettings, evaluate_category, stratified_limit
from instruct_data.datasets import open_dataset
from tests.instruct_data.mvtec_case import write_tree
from tools.content_key import seeded_sample


def test_the_calibration_sample_does_not_depend_on_the_listing_order():
    keys = [f"{i:04x}" for i in range(600)]
    picked = {keys[i] for i in seeded_sample(keys, 256, seed=0)}
    shuffled = list(keys)
    random.Random(1).shuffle(shuffled)
    assert {shuffled[i] for i in seeded_sample(shuffled, 256, seed=0)} == picked
    assert len(picked) == 256
    assert {keys[i] for i in seeded_sample(keys, 256, seed=1)} != picked  # the seed matters


def test_a_limit_keeps_every_group_and_its_share(tmp_path):
    root = write_tree(tmp_path / "data", categories=("a", "b"), n_good=20, n_bad=6)
    dataset = open_dataset(root)
    chosen = stratified_limit({c: dataset.test_samples(c) for c in ("a", "b")}, 13, seed=0)
    assert sum(len(v) for v in chosen.values()) == 13
    for samples in chosen.values():
        assert {s.defect_type for s in samples} == {"good", "scratch"}
        goods = sum(s.defect_type == "good" for s in samples)
        assert 4 <= goods <= 5  # 20 of 26 are good: the sample keeps about that share


@pytest.mark.slow
def test_report_and_eval_give_every_image_the_same_verdict(tmp_path):
    """A folder of more than 256 images (so the boundary rests on a sample of it), inspected by
    `report` and by `eval`: the same detector (`auto`: reference matching with 4 references), the same
    calibration sample of the batch, the same verdict per image."""
    root = write_tree(tmp_path / "data", n_train=4, n_good=250, n_bad=14, seed=3)
    options = {"resolution": 64}
    settings = DetectionBenchmarkSettings(data=str(root), category="plate", shots=4, seed=0, detector_options=options)
    result = evaluate_category(open_dataset(root), "plate", settings, warn=lambda _m: None)
    assert result["detector"] == "refmatch" and result["n_images"] == 264
    assert result["calibration"]["method"].startswith("batch")

    refs = tmp_path / "refs"
    refs.mkdir()
    for p in result["references"]:
        shutil.copy(p, refs / Path(p).name)
    out = tmp_path / "report"
    code = main(["report", str(root / "plate" / "test"), "--refs", str(refs), "--out", str(out), "--quiet",
                 "--resolution", "64"])
    assert code == 0
    rows = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines() if line.strip()]
    reported = {Path(r["absolute_path"]).resolve(): r["record"]["verdict"] for r in rows}
    evaluated = {Path(i["path"]).resolve(): i["verdict"] for i in result["images"]}
    assert len(reported) == len(evaluated) == 264
    assert reported == evaluated
    assert len(set(evaluated.values())) >= 2  # not a trivial agreement on one verdict
