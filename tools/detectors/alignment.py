"""Registration of a query to its references, for products photographed in the same pose.

When every image shows the same part in the same place (a bracket on a fixture), a patch should be
compared with the references' patches at the same place, not with any patch anywhere: a hole is
normal where the part has its hole and a defect a few centimetres away. Two small steps make that
possible, both on small grey images and cheap:

- `phase_shift`: the translation between two images from the peak of their phase correlation
  (normalized cross-power spectrum), with sub-pixel refinement of the peak by a parabola fit.
- `is_aligned`: whether a set of references shows an aligned product or a free texture. For an
  aligned product, matching each held-out reference only against the others' patches near the same
  position costs almost nothing (the nearest patch was there anyway), while matching against a
  distant position costs a lot; for a texture the place does not matter.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F


def grey_small(x: torch.Tensor, side: int = 64) -> torch.Tensor:
    """(N, 3, H, W) -> (N, h, w) grey, resized so the longer side is `side`, zero mean, windowed."""
    g = x.mean(1, keepdim=True)
    h, w = g.shape[-2:]
    s = side / max(h, w)
    g = F.interpolate(g, size=(max(8, round(h * s)), max(8, round(w * s))), mode="area")[:, 0]
    g = g - g.mean(dim=(-2, -1), keepdim=True)
    wy = torch.hann_window(g.shape[-2], periodic=False, dtype=g.dtype)
    wx = torch.hann_window(g.shape[-1], periodic=False, dtype=g.dtype)
    return g * (wy[:, None] * wx[None, :])


def _subpixel(c_m: float, c_0: float, c_p: float) -> float:
    denom = c_m - 2 * c_0 + c_p
    return 0.0 if abs(denom) < 1e-12 else float(np.clip(0.5 * (c_m - c_p) / denom, -0.5, 0.5))


def phase_shift(moving: torch.Tensor, fixed: torch.Tensor) -> tuple[float, float, float]:
    """(dy, dx, peak) such that `moving` shifted by (dy, dx) matches `fixed`; both (h, w), same size.

    `peak` is the height of the correlation peak (1 for identical images, near 0 for unrelated ones).
    """
    fa, fb = torch.fft.rfft2(fixed), torch.fft.rfft2(moving)
    cross = fa * fb.conj()
    cross = cross / cross.abs().clamp_min(1e-9)
    corr = torch.fft.irfft2(cross, s=fixed.shape)
    h, w = corr.shape
    idx = int(torch.argmax(corr))
    py, px = divmod(idx, w)
    peak = float(corr[py, px])
    dy = py + _subpixel(float(corr[(py - 1) % h, px]), peak, float(corr[(py + 1) % h, px]))
    dx = px + _subpixel(float(corr[py, (px - 1) % w]), peak, float(corr[py, (px + 1) % w]))
    if dy > h / 2:
        dy -= h
    if dx > w / 2:
        dx -= w
    return float(dy), float(dx), peak


def shift_features(f: torch.Tensor, dy: int, dx: int) -> torch.Tensor:
    """(h, w, C) features moved by whole cells (dy down, dx right); uncovered cells repeat the edge."""
    if dy == 0 and dx == 0:
        return f
    h, w = f.shape[:2]
    ys = (torch.arange(h) - dy).clamp(0, h - 1)
    xs = (torch.arange(w) - dx).clamp(0, w - 1)
    return f[ys][:, xs]


def windowed_nearest(query: torch.Tensor, bank: torch.Tensor, radius: int) -> torch.Tensor:
    """Position-aware nearest distance: query (h, w, C) against aligned bank (R, h, w, C), each query
    cell compared only with bank cells within `radius` cells of the same position. Returns (h, w)."""
    h, w, c = query.shape
    r = radius
    padded = F.pad(bank.permute(0, 3, 1, 2), (r, r, r, r), mode="replicate")  # (R, C, h+2r, w+2r)
    q = query.permute(2, 0, 1).unsqueeze(0)  # (1, C, h, w)
    best = torch.full((h, w), float("inf"), dtype=query.dtype)
    for oy in range(2 * r + 1):
        for ox in range(2 * r + 1):
            cand = padded[:, :, oy : oy + h, ox : ox + w]
            d = ((cand - q) ** 2).sum(1).min(0).values  # (h, w)
            best = torch.minimum(best, d)
    return best.clamp_min_(0).sqrt_()


def is_aligned(
    near: np.ndarray, far: np.ndarray, anywhere: np.ndarray, tolerance: float = 0.05, position_gain: float = 1.5
) -> bool:
    """Aligned product: held-out references match the others near the same place almost as well as
    anywhere (median `near / anywhere` <= 1 + `tolerance`), and clearly better than at a distant place
    (median `far / near` >= `position_gain`). A texture, even a periodic one whose repeat fits in the
    window, fails the second test: its look does not depend on the place."""
    near, far, anywhere = (np.asarray(a, dtype=np.float64) for a in (near, far, anywhere))
    holds = np.median(near / np.maximum(anywhere, 1e-9)) <= 1.0 + tolerance
    matters = np.median(far / np.maximum(near, 1e-9)) >= position_gain
    return bool(holds and matters)


__all__ = ["grey_small", "is_aligned", "phase_shift", "shift_features", "windowed_nearest"]
