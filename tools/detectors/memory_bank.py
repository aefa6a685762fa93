"""Patch memory bank: greedy coreset subsampling and chunked nearest-neighbour distances.

PatchCore's observation: a k-center coreset of the reference patches keeps nearly all of the
nearest-neighbour accuracy at a fraction of the bank, which is what keeps 16-shot banks fast.
"""

from __future__ import annotations

import torch

#: a bank larger than this many times the selection is first subsampled at random (large images)
PRESAMPLE = 4
#: at most this many (query, bank) distances at once (128 MB in float32): large banks get fewer queries per step
DISTANCE_BLOCK = 1 << 25


def query_chunk(bank_rows: int, chunk: int) -> int:
    """Queries per step so that one step's distance matrix stays within `DISTANCE_BLOCK` (a bank of
    references of many megapixels would otherwise need gigabytes per step)."""
    return max(16, min(chunk, DISTANCE_BLOCK // max(1, bank_rows)))


def presampled(bank: torch.Tensor, owner: torch.Tensor, limit: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """A seeded random `limit` of a bank's rows (and their owners), or the bank when it is within it:
    the fit's statistics (alignment, the channels' unit, the views rule) on references of many
    megapixels, without comparing every patch with every other."""
    if bank.shape[0] <= limit:
        return bank, owner
    keep = torch.randperm(bank.shape[0], generator=torch.Generator().manual_seed(seed))[:limit].sort().values
    return bank[keep].contiguous(), owner[keep]


def greedy_coreset(features: torch.Tensor, n_select: int, projection_dim: int = 128, seed: int = 0) -> torch.Tensor:
    """Indices of `n_select` rows chosen by greedy k-center selection (farthest point first).

    Distances are computed in a random projection (Johnson-Lindenstrauss) to keep selection cheap. A
    bank of more than `PRESAMPLE` times the selection (references of many megapixels) is subsampled
    at random to that size first: the greedy step costs its size times the selection.
    """
    n = features.shape[0]
    if n_select >= n:
        return torch.arange(n)
    gen = torch.Generator().manual_seed(seed)
    if n > PRESAMPLE * n_select:
        keep = torch.randperm(n, generator=gen)[: PRESAMPLE * n_select].sort().values
        return keep[greedy_coreset(features[keep], n_select, projection_dim, seed)]
    x = features.float()
    if x.shape[1] > projection_dim:
        proj = torch.randn(x.shape[1], projection_dim, generator=gen) / projection_dim**0.5
        x = x @ proj.to(x)
    # squared distances from norms and one matrix-vector product per step: the same selection as
    # `torch.cdist` at a small fraction of its cost (cdist's per-call overhead dominated 16-shot fits)
    sq = (x * x).sum(1)
    selected = torch.empty(n_select, dtype=torch.long)
    start = int(torch.randint(n, (1,), generator=gen))
    selected[0] = start
    min_d2 = (sq - 2.0 * (x @ x[start]) + sq[start]).clamp_min_(0)
    d2 = torch.empty_like(min_d2)
    for i in range(1, n_select):
        idx = int(torch.argmax(min_d2))
        selected[i] = idx
        torch.mv(x, x[idx], out=d2)
        d2.mul_(-2.0).add_(sq).add_(sq[idx])
        torch.minimum(min_d2, d2, out=min_d2)
    return selected


def distances_less_query_norm(queries: torch.Tensor, bank_t: torch.Tensor, bank_sq: torch.Tensor) -> torch.Tensor:
    """|b|^2 - 2 q.b for every (query row, bank column) pair in one `addmm`: the squared distance
    without |q|^2, which is the same for every bank row, so callers add it after their minimum
    (three times faster than adding it to the whole (Q, B) matrix; the same distances to rounding)."""
    return torch.addmm(bank_sq, queries, bank_t, beta=1.0, alpha=-2.0)


def nearest_distance(queries: torch.Tensor, bank: torch.Tensor, chunk: int = 4096, k: int = 1) -> torch.Tensor:
    """Euclidean distance from each query row to its nearest bank row (mean over the k nearest when
    k > 1). (Q, C), (B, C) -> (Q,)."""
    bank_sq = (bank * bank).sum(1)
    bank_t = bank.T
    k = max(1, min(k, bank.shape[0]))
    out = torch.empty(queries.shape[0], dtype=queries.dtype, device=queries.device)
    chunk = query_chunk(bank.shape[0], chunk)
    for s in range(0, queries.shape[0], chunk):
        q = queries[s : s + chunk]
        d2 = distances_less_query_norm(q, bank_t, bank_sq)
        q_sq = (q * q).sum(1)
        if k == 1:
            out[s : s + chunk] = (d2.min(dim=1).values + q_sq).clamp_min_(0).sqrt_()
        else:
            out[s : s + chunk] = (d2.topk(k, dim=1, largest=False).values + q_sq[:, None]).clamp_min_(0).sqrt_().mean(1)
    return out
