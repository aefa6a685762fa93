"""The one AUROC (tools.ranking) against a pairwise count, and its two users agreeing with it."""

from __future__ import annotations

import math

import numpy as np
import pytest

from tools.ranking import auroc, auroc_sorted, split_scores


def _pairwise(labels: np.ndarray, scores: np.ndarray) -> float:
    pos, neg = scores[labels], scores[~labels]
    diff = pos[:, None] - neg[None, :]
    return float(np.mean(diff > 0) + 0.5 * np.mean(diff == 0))


@pytest.mark.parametrize("seed", range(4))
def test_auroc_counts_ties_half(seed: int) -> None:
    rng = np.random.default_rng(seed)
    labels = rng.random(150) < 0.4
    scores = np.round(rng.random(150) + 0.3 * labels, 1)  # coarse: many ties
    assert auroc(labels, scores) == pytest.approx(_pairwise(labels, scores), abs=1e-12)
    pos, neg = split_scores(labels, scores)
    assert auroc_sorted(pos, neg, chunk=3) == pytest.approx(auroc(labels, scores), abs=1e-12)


def test_auroc_edges() -> None:
    assert auroc([0, 0, 1, 1], [0.1, 0.5, 0.5, 0.9]) == 0.875
    assert auroc([True, False], [True, False]) == 1.0  # boolean scores rank as 0/1
    assert math.isnan(auroc([1, 1], [0.2, 0.3]))
    with pytest.raises(ValueError, match="NaN"):
        auroc([0, 1], [0.1, float("nan")])
    with pytest.raises(ValueError, match="1 labels but 2 scores"):
        auroc([1], [0.1, 0.2])


def test_benchmarks_and_training_check_use_the_same_auroc() -> None:
    from agent.mllm.train.evaluate import auroc as training_auroc
    from evals.metrics import image_auroc

    rng = np.random.default_rng(7)
    labels = rng.random(60) < 0.5
    scores = np.round(rng.random(60), 1)
    expected = auroc(labels, scores)
    assert image_auroc(labels, scores) == expected
    assert training_auroc(scores.tolist(), labels.tolist()) == expected
    assert training_auroc([0.2, 0.4], [True, True]) is None  # its contract: None, not NaN
    assert math.isnan(image_auroc([True, True], [0.2, 0.4]))
