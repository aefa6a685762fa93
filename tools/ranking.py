"""Ranking quality of scores against binary labels: AUROC with ties counted half.

Why in `tools/`: the benchmarks (`evals.metrics`, layer 5) and the MLLM's held-out training check
(`agent.mllm.train.evaluate`, layer 4) both need AUROC, and neither may import the other's layer; one
exact implementation here serves both, so the two can never disagree.

Conventions: a label of True (or 1) means anomalous, a higher score means more anomalous; NaN scores
raise ValueError (they would silently skew the curve); a missing class gives NaN.
"""

from __future__ import annotations

import math

import numpy as np
from numpy.typing import ArrayLike

#: binary searches run over this many keys at a time so index arrays stay small (32 MiB)
CHUNK = 1 << 22


def as_scores(x: ArrayLike) -> np.ndarray:
    """Real-valued array; booleans become 0/1 so they can be sorted and searched like numbers."""
    a = np.asarray(x)
    if a.dtype.kind == "b":
        return a.astype(np.uint8)
    if a.dtype.kind not in "fiu":
        raise TypeError(f"scores must be real numbers, got dtype {a.dtype}")
    return a


def as_labels(x: ArrayLike) -> np.ndarray:
    return np.asarray(x).astype(bool, copy=False)


def raise_on_nan(*sorted_arrays: np.ndarray) -> None:
    """NaN sorts last, so checking the last element of each sorted array is enough."""
    for a in sorted_arrays:
        if a.size and a.dtype.kind == "f" and np.isnan(a[-1]):
            raise ValueError("scores contain NaN")


def split_scores(labels: ArrayLike, scores: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    """Sorted scores of the anomalous and of the normal samples."""
    y = as_labels(labels).ravel()
    s = as_scores(scores).ravel()
    if y.shape != s.shape:
        raise ValueError(f"{y.size} labels but {s.size} scores")
    pos, neg = np.sort(s[y]), np.sort(s[~y])
    raise_on_nan(pos, neg)
    return pos, neg


def auroc_sorted(pos: np.ndarray, neg: np.ndarray, chunk: int = CHUNK) -> float:
    """Mann-Whitney AUROC of sorted scores, P(s_pos > s_neg) + P(tie) / 2, by binary search of one
    array into the other; NaN when either is empty.

    Equal to the trapezoid area under the ROC curve over all distinct thresholds.
    """
    if pos.size == 0 or neg.size == 0:
        return math.nan
    if pos.size > neg.size:  # search the smaller array into the larger one
        return 1.0 - auroc_sorted(neg, pos, chunk)
    twice_wins = 0  # 2 * (number of pairs with pos > neg) + (number of tied pairs)
    for i in range(0, pos.size, chunk):
        keys = pos[i : i + chunk]
        twice_wins += int(np.searchsorted(neg, keys, "left").sum(dtype=np.int64))
        twice_wins += int(np.searchsorted(neg, keys, "right").sum(dtype=np.int64))
    return twice_wins / (2 * pos.size * neg.size)


def auroc(labels: ArrayLike, scores: ArrayLike) -> float:
    """Area under the ROC curve; ties count half. NaN when either class is missing."""
    return auroc_sorted(*split_scores(labels, scores))


__all__ = ["CHUNK", "as_labels", "as_scores", "auroc", "auroc_sorted", "raise_on_nan", "split_scores"]
