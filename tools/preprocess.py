"""Image -> tensor preparation shared by the feature-based detectors.

Illumination on production lines drifts between shots; a few references cannot cover that, so the
embedded detector can remove slow brightness gradients (a high-pass) and normalize each image's
contrast before features are computed. Both are cheap and measured in BENCHMARKS.md.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image


def pil_to_tensor(images: Sequence[Image.Image], size: tuple[int, int]) -> torch.Tensor:
    """RGB PIL images -> (N, 3, H, W) float32 in [0, 1], resized (bilinear) to size = (H, W)."""
    h, w = size
    arrays = []
    for im in images:
        if im.mode != "RGB":
            im = im.convert("RGB")
        if im.size != (w, h):
            im = im.resize((w, h), Image.Resampling.BILINEAR)
        arrays.append(np.asarray(im, dtype=np.uint8))
    batch = torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2)
    return batch.float().div_(255.0)


def gaussian_kernel1d(sigma: float) -> torch.Tensor:
    radius = max(1, int(math.ceil(3 * sigma)))
    x = torch.arange(-radius, radius + 1, dtype=torch.float32)
    k = torch.exp(-0.5 * (x / sigma) ** 2)
    return k / k.sum()


def gaussian_blur(x: torch.Tensor, sigma: float) -> torch.Tensor:
    """Separable Gaussian blur of (N, C, H, W) with reflect padding; sigma in pixels."""
    if sigma <= 0:
        return x
    k = gaussian_kernel1d(sigma).to(x)
    r = k.numel() // 2
    n, c, h, w = x.shape
    y = x.reshape(n * c, 1, h, w)
    mode = "reflect" if r < min(h, w) else "replicate"
    y = F.conv2d(F.pad(y, (r, r, 0, 0), mode=mode), k.view(1, 1, 1, -1))
    y = F.conv2d(F.pad(y, (0, 0, r, r), mode=mode), k.view(1, 1, -1, 1))
    return y.reshape(n, c, h, w)


def remove_illumination(x: torch.Tensor, sigma_fraction: float = 1 / 16, level: float = 0.45) -> torch.Tensor:
    """High-pass: subtract a wide Gaussian blur (sigma = fraction of the image side) and re-centre.

    The blur is computed at 1/4 resolution, which is indistinguishable at these sigmas and 10x cheaper.
    """
    if sigma_fraction <= 0:
        return x
    h, w = x.shape[-2:]
    small = F.interpolate(x, scale_factor=0.25, mode="area")
    sigma = sigma_fraction * min(h, w) / 4
    low = F.interpolate(gaussian_blur(small, sigma), size=(h, w), mode="bilinear", align_corners=False)
    return x - low + level


def standardize_contrast(x: torch.Tensor, mean: float = 0.45, std: float = 0.2) -> torch.Tensor:
    """Give every image the same global mean and standard deviation (all channels together, so
    colour ratios are kept)."""
    m = x.mean(dim=(1, 2, 3), keepdim=True)
    s = x.std(dim=(1, 2, 3), keepdim=True).clamp_min(1e-3)
    return (x - m) / s * std + mean
