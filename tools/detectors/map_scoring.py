"""From patch distances to a smooth anomaly map and one robust image score (shared by detectors).

- The patch grid is upsampled to working pixels and smoothed with a Gaussian: a defect rarely
  covers whole patches, and a smooth map outlines it better than blocky cells.
- The image score leaves out a border band (`margin`, a fraction of the side): the edges of a crop
  differ from image to image far more than its inside, and without this band the most anomalous
  "defects" of good images were their corners.
- It is the mean of the top `top_fraction` of the inner map (AnomalyDINO's robust top-k), or the
  maximum when `top_fraction` is 0: one hot pixel is noise, a defect covers many.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from tools.preprocess import gaussian_blur


def smooth_maps(dist: torch.Tensor, stride: int, sigma: float) -> torch.Tensor:
    """(N, h, w) patch distances -> (N, 1, h*stride, w*stride) smoothed map at working pixels."""
    size = (dist.shape[-2] * stride, dist.shape[-1] * stride)
    m = F.interpolate(dist.unsqueeze(1), size=size, mode="bilinear", align_corners=False)
    return gaussian_blur(m, sigma)


def image_scores(smooth: torch.Tensor, margin: float, top_fraction: float = 0.0) -> torch.Tensor:
    """(N, 1, H, W) smoothed maps -> (N,) image scores (see the module docstring)."""
    m = round(margin * min(smooth.shape[-2:]))
    if m > 0 and min(smooth.shape[-2:]) > 2 * m:
        smooth = smooth[..., m:-m, m:-m]
    flat = smooth.flatten(1)
    k = max(1, int(round(top_fraction * flat.shape[1]))) if top_fraction > 0 else 1
    return flat.topk(min(k, flat.shape[1]), dim=1).values.mean(1)


__all__ = ["image_scores", "smooth_maps"]
