"""Mutual scoring of unlabeled images (the MuSc idea), as plain torch functions.

A normal patch finds close look-alikes in most other images of the same product; a defect finds
them in few. So each patch is compared with every partner image separately (its distance to that
image's nearest patch), and its score is the mean of the smallest `fraction` of those per-partner
distances: a defect shared by a few partners (fewer than `fraction` of them) still stands out, and a
batch where many images are defective still works, because the good partners decide.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from tools.content_key import seeded_rank
from tools.detectors.memory_bank import distances_less_query_norm, query_chunk


def per_partner_distances(query: torch.Tensor, partners: Sequence[torch.Tensor], chunk: int = 2048) -> torch.Tensor:
    """query (P, C); partners: one (Pj, C) tensor per partner image -> (P, K) distance of each query
    patch to the nearest patch of each partner."""
    if not partners:
        raise ValueError("no partner images to compare with")
    k = len(partners)
    same = len({p.shape[0] for p in partners}) == 1
    bank = torch.cat(list(partners))
    bank_sq = (bank * bank).sum(1)
    owner = None if same else torch.cat([torch.full((p.shape[0],), j) for j, p in enumerate(partners)])
    out = torch.empty(query.shape[0], k, dtype=query.dtype)
    bank_t = bank.T
    chunk = query_chunk(bank.shape[0], chunk)
    for s in range(0, query.shape[0], chunk):
        q = query[s : s + chunk]
        d2 = distances_less_query_norm(q, bank_t, bank_sq)  # |q|^2 is added after the minimum
        if owner is None:
            best = d2.view(q.shape[0], k, -1).min(2).values
        else:
            best = torch.full((q.shape[0], k), float("inf"), dtype=q.dtype)
            best = best.scatter_reduce(1, owner[None].expand(q.shape[0], -1), d2, "amin")
        out[s : s + chunk] = (best + (q * q).sum(1, keepdim=True)).clamp_min_(0).sqrt_()
    return out


def mutual_scores(per_partner: torch.Tensor, fraction: float) -> torch.Tensor:
    """(P, K) per-partner distances -> (P,) mean of the smallest `fraction` of each row (at least one)."""
    k = max(1, int(round(fraction * per_partner.shape[1])))
    return per_partner.topk(min(k, per_partner.shape[1]), dim=1, largest=False).values.mean(1)


def choose_partners(key: str, pool_keys: Sequence[str], k: int, seed: int) -> list[int]:
    """Up to `k` pool indices (never the image itself), drawn from a generator seeded by the image's
    content and `seed`: the same image gets the same partners whatever the order or the machine."""
    candidates = [i for i, pk in enumerate(pool_keys) if pk != key]
    if len(candidates) <= k:
        return candidates
    rng = np.random.default_rng(seeded_rank(key, seed))
    return sorted(int(i) for i in rng.choice(candidates, size=k, replace=False))


def neighbour_refined(scores: np.ndarray, descriptors: np.ndarray, query_scores: np.ndarray,
                      query_descriptors: np.ndarray, ks: Sequence[int]) -> np.ndarray:
    """Image scores refined with each image's nearest images (MuSc's RsCIN): the mean over `ks` of the
    similarity-weighted mean score of the k most similar pool images, the image itself counted first."""
    if not ks:
        return query_scores
    pool = descriptors / np.maximum(np.linalg.norm(descriptors, axis=1, keepdims=True), 1e-12)
    q = query_descriptors / np.maximum(np.linalg.norm(query_descriptors, axis=1, keepdims=True), 1e-12)
    sims = q @ pool.T
    out = np.zeros(len(query_scores))
    for k in ks:
        for i in range(len(query_scores)):
            order = np.argsort(-sims[i])[: max(0, k - 1)]
            vals = np.concatenate([[query_scores[i]], scores[order]])
            weights = np.concatenate([[1.0], np.maximum(sims[i, order], 1e-6)])
            out[i] += float(np.average(vals, weights=weights))
    return out / len(ks)


__all__ = ["choose_partners", "mutual_scores", "neighbour_refined", "per_partner_distances"]
