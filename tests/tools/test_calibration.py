"""Calibrated decisions on synthetic score distributions: coverage, the finest honest rate, the
batch estimate under contamination, the three outcomes."""

from __future__ import annotations

import math

import numpy as np
import pytest

from tools.detectors.calibration import (
    Calibration,
    conformal_threshold,
    finest_rate,
    good_model_from_batch,
)


@pytest.mark.parametrize("rate", [0.05, 0.2])
def test_conformal_threshold_keeps_the_promised_rate_on_new_good_scores(rate):
    """Over many draws of 40 good scores, the share of fresh good scores above the boundary stays at or
    below the promised rate (split-conformal coverage), within sampling error."""
    rng = np.random.default_rng(0)
    exceed = []
    for _ in range(400):
        calib = rng.lognormal(0.0, 0.4, 40)
        boundary, used = conformal_threshold(calib, rate)
        fresh = rng.lognormal(0.0, 0.4, 200)
        exceed.append(np.mean(fresh > boundary))
    assert used <= rate + 1e-12
    mean = float(np.mean(exceed))
    se = float(np.std(exceed)) / math.sqrt(len(exceed))
    assert mean <= rate + 3 * se
    assert mean >= rate - 0.03, "the boundary should not be far more conservative than asked"


def test_finest_honest_rate_is_used_and_said():
    scores = np.array([1.0, 1.2, 0.9, 1.1])  # 4 references: no finer than 1/5
    cal = Calibration.from_good_scores(scores, rate=0.05)
    assert finest_rate(4) == pytest.approx(0.2)
    assert cal.false_alarm_rate == pytest.approx(0.2) and cal.requested_rate == 0.05
    assert cal.boundary == pytest.approx(1.2)  # the largest good score
    assert "0.2" in cal.note and "more references" in cal.note
    fine = Calibration.from_good_scores(np.linspace(1, 2, 99), rate=0.05)
    assert fine.false_alarm_rate <= 0.05 and fine.note == ""


def test_three_outcomes_and_pred_score_scale():
    cal = Calibration.from_good_scores(np.linspace(1.0, 2.0, 199), rate=0.05, review_factor=2.0)
    assert cal.review_boundary is not None and cal.review_boundary < cal.boundary
    assert cal.verdict(cal.boundary + 0.01) == "defective"
    assert cal.verdict((cal.boundary + cal.review_boundary) / 2) == "review"
    assert cal.verdict(1.0) == "good"
    assert float(cal.apply(cal.boundary)) == pytest.approx(0.5)
    assert float(cal.apply(1.0)) < 0.5 < float(cal.apply(cal.boundary + cal.spread))
    plain = cal.without_review()
    assert plain.verdict((cal.boundary + cal.review_boundary) / 2) == "good"
    d = cal.to_dict()
    assert d["false_alarm_rate"] <= 0.05 and d["good_samples"] == 199 and d["review_from_score"] < 0.5


@pytest.mark.parametrize("rate", [0.05, 0.2])
@pytest.mark.parametrize("defective_share", [0.0, 0.25, 0.45])
def test_batch_estimate_keeps_the_rate_with_many_defective_images(rate, defective_share):
    rng = np.random.default_rng(1)
    n = 600
    n_bad = int(n * defective_share)
    good = rng.lognormal(0.0, 0.3, n - n_bad)
    bad = rng.lognormal(0.9, 0.5, n_bad)
    cal = Calibration.from_batch(np.concatenate([good, bad]), rate=rate)
    fresh = rng.lognormal(0.0, 0.3, 20000)
    measured = float(np.mean(fresh > cal.boundary))
    assert abs(measured - rate) <= 0.05
    model = good_model_from_batch(np.concatenate([good, bad]))
    assert abs(model.good_share - (1 - defective_share)) < 0.2


def test_decision_modes():
    """References mode rests on the held-out references; batch mode on the batch, the references
    joining it only when exchangeable, and checking it always."""
    from agent.inspection.decision import batch_calibration, reference_calibration
    from agent.inspection.settings import DecisionSettings

    d = DecisionSettings(0.05, True, None)
    good = np.array([1.0, 1.1, 1.2, 0.9, 1.05])
    batch = np.random.default_rng(2).lognormal(0, 0.2, 100)
    ref = reference_calibration(good, d, "references (leave-one-out)")
    assert ref is not None and ref.method.startswith("references")
    bat = batch_calibration(batch, d, None, good)
    assert bat.method.startswith("batch") and "reference" not in bat.method and not bat.note
    pooled = batch_calibration(batch, d, good, good)
    assert "5 reference score(s)" in pooled.method
    assert reference_calibration(np.empty(0), d, "references") is None
    with pytest.raises(ValueError, match="between 0 and 1"):
        Calibration.from_good_scores(good, rate=1.5)


def test_defects_that_look_alike_do_not_pass_for_the_good_mode():
    """40 % of a batch share one defect, so tightly that their scores make the densest cluster: alone,
    the batch model takes them for the good parts and passes every defect; the references (known good,
    held out) bound where the good mode can lie, the note says so, and the defects are caught while
    fresh good parts keep the promise (over many draws)."""
    plain_recall, recall, fresh_far = [], [], []
    noted = 0
    for seed in range(40):
        rng = np.random.default_rng(seed)
        good, bad = np.exp(rng.normal(0, 0.1, 60)), np.exp(rng.normal(0.3, 0.03, 40))
        refs = np.exp(rng.normal(0.03, 0.1, 4))  # held out: a little higher than good parts scored whole
        batch = np.concatenate([good, bad])
        plain = Calibration.from_batch(batch, 0.05)
        cal = Calibration.from_batch(batch, 0.05, anchor=refs)
        plain_recall.append(np.mean(bad > plain.boundary))
        recall.append(np.mean(bad > cal.boundary))
        fresh_far.append(np.mean(np.exp(rng.normal(0, 0.1, 4000)) > cal.boundary))
        noted += "references" in cal.note
    assert np.mean(np.array(plain_recall) < 0.5) > 0.3  # the failure is real without the references
    assert np.mean(recall) > 0.85 and noted > 0
    assert np.mean(fresh_far) < 0.05 + 0.03


def test_a_batch_that_needs_the_references_promises_what_they_allow():
    """When the batch's good mode is bounded by the references (40 % share one defect), the promise
    rests on the 4 references: no finer than 1/5, and the record says so; a plain batch keeps 0.05."""
    rng = np.random.default_rng(2)  # a draw where the defects make the densest cluster (as in the test above)
    good, bad = np.exp(rng.normal(0, 0.1, 60)), np.exp(rng.normal(0.3, 0.03, 40))
    refs = np.exp(rng.normal(0.03, 0.1, 4))
    batch = np.concatenate([good, bad])
    cal = Calibration.from_batch(batch, 0.05, anchor=refs)
    assert "references" in cal.method
    assert cal.false_alarm_rate == pytest.approx(0.2) and cal.requested_rate == 0.05 and cal.good_samples == 4
    assert "no finer than 0.2" in cal.note
    plain = Calibration.from_batch(np.exp(rng.normal(0, 0.1, 100)), 0.05, anchor=np.exp(rng.normal(0, 0.1, 4)))
    assert plain.false_alarm_rate == 0.05 and not plain.note
