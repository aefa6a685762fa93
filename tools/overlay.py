"""Pictures of what the detector saw: heatmap overlays, and maps and masks as PNG files.

Why a module of its own: reports, the chat and the benchmarks all show the same picture (image,
heatmap, predicted outline, ground-truth outline), and they all store maps beside the JSON results,
so one implementation keeps them identical and readable by anomalib-style tools.

Decisions, and why:

- The jet-like colormap is a few lines of numpy: no matplotlib dependency for one colormap.
- The heatmap is scaled from a fixed [vmin, vmax] (default [0, 1], the calibrated scale every detector
  speaks), never per image: a per-image stretch would paint a good part's noise as red as a crack.
- The predicted mask is outlined 2 px *inside* its edge in green, the ground truth 2 px *outside* its
  edge in dashed white: when the two agree both outlines stay visible side by side, and the dash
  tells them apart without relying on colour alone. Masks are outlined, not filled, so the defect
  itself stays visible under the line.
- Maps are stored as 16-bit greyscale PNG scaled from [vmin, vmax]: lossless, viewable, and precise to
  1/65535 of the range (8-bit would lose the detail that pixel AUROC needs). Values outside the range
  are clipped; NaN is stored as vmin.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from PIL import Image
from scipy import ndimage

from tools.image_io import image_to_array, unit_pixels

PRED_COLOR: tuple[int, int, int] = (0, 255, 0)
GT_COLOR: tuple[int, int, int] = (255, 255, 255)
OUTLINE_WIDTH = 2
_DASH = 4  # length of one dash (and one gap) of the ground-truth outline, in pixels
_CROSS = ndimage.generate_binary_structure(2, 1)


def jet_colormap(values: np.ndarray) -> np.ndarray:
    """HxWx3 float32 RGB in [0, 1] for values in [0, 1]: dark blue -> cyan -> yellow -> dark red."""
    v = np.clip(np.nan_to_num(np.asarray(values, dtype=np.float32), nan=0.0), 0.0, 1.0)[..., None]
    centres = np.array([3.0, 2.0, 1.0], dtype=np.float32) / 4.0  # where r, g, b peak
    return np.clip(1.5 - np.abs(4.0 * (v - centres)), 0.0, 1.0).astype(np.float32)


def _normalize(anomaly_map: np.ndarray, vmin: float, vmax: float) -> np.ndarray:
    if not vmax > vmin:
        raise ValueError(f"vmax must be greater than vmin, got vmin={vmin}, vmax={vmax}")
    amap = np.asarray(anomaly_map, dtype=np.float64)
    if amap.ndim != 2:
        raise ValueError(f"anomaly_map must be 2-D (HxW), got shape {amap.shape}")
    amap = np.nan_to_num(amap, nan=vmin, posinf=vmax, neginf=vmin)
    return np.clip((amap - vmin) / (vmax - vmin), 0.0, 1.0)


def _as_rgb_float(image: Image.Image | np.ndarray) -> np.ndarray:
    """HxWx3 float32 in [0, 1] from a PIL image (any mode) or an HxW / HxWxC uint8, uint16 or float array."""
    if isinstance(image, Image.Image):
        return image_to_array(image)
    arr = np.asarray(image)
    if arr.ndim == 3 and arr.shape[2] in (3, 4):
        arr = arr[..., :3]
    elif arr.ndim == 3 and arr.shape[2] == 1:
        arr = arr[..., 0]
    elif arr.ndim != 2:
        raise ValueError(f"image must be HxW or HxWx3, got shape {arr.shape}")
    out = unit_pixels(arr, np.float32)
    if out.ndim == 2:
        out = np.repeat(out[..., None], 3, axis=2)
    return np.clip(out, 0.0, 1.0)


def _resize_map(amap: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Bilinear resize of a float map to (w, h), for maps not at image resolution."""
    if amap.shape[::-1] == size:
        return amap
    img = Image.fromarray(amap.astype(np.float32))
    return np.asarray(img.resize(size, Image.Resampling.BILINEAR), dtype=np.float64)


def _resize_mask(mask: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    m = np.asarray(mask).astype(bool)
    if m.ndim != 2:
        raise ValueError(f"mask must be 2-D (HxW), got shape {m.shape}")
    if m.shape[::-1] == size:
        return m
    img = Image.fromarray(m.astype(np.uint8) * 255)
    return np.asarray(img.resize(size, Image.Resampling.NEAREST)) > 127


def inner_outline(mask: np.ndarray, width: int = OUTLINE_WIDTH) -> np.ndarray:
    """The band of `mask` pixels within `width` px of its edge (the image border counts as an edge)."""
    if not mask.any():
        return np.zeros_like(mask, dtype=bool)
    eroded = ndimage.binary_erosion(mask, structure=_CROSS, iterations=width, border_value=0)
    return mask & ~eroded


def outer_outline(mask: np.ndarray, width: int = OUTLINE_WIDTH) -> np.ndarray:
    """The band of pixels outside `mask` within `width` px of it."""
    if not mask.any():
        return np.zeros_like(mask, dtype=bool)
    dilated = ndimage.binary_dilation(mask, structure=_CROSS, iterations=width)
    return dilated & ~mask


def render_overlay(
    image: Image.Image | np.ndarray,
    anomaly_map: np.ndarray,
    pred_mask: np.ndarray | None,
    gt_mask: np.ndarray | None = None,
    alpha: float = 0.45,
    vmin: float = 0.0,
    vmax: float = 1.0,
) -> Image.Image:
    """The image with the heatmap blended in (`alpha` = heatmap weight) and the masks outlined.

    The result has the image's size; a map or mask of another size is resized to it (bilinear for the
    map, nearest for masks).
    """
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")
    rgb = _as_rgb_float(image)
    h, w = rgb.shape[:2]
    norm = _resize_map(_normalize(anomaly_map, vmin, vmax), (w, h))
    blended = (1.0 - alpha) * rgb + alpha * jet_colormap(norm)
    out = np.clip(np.rint(blended * 255.0), 0, 255).astype(np.uint8)
    if gt_mask is not None:
        band = outer_outline(_resize_mask(gt_mask, (w, h)))
        diagonal = np.arange(h)[:, None] + np.arange(w)[None, :]
        band &= (diagonal // _DASH) % 2 == 0
        out[band] = GT_COLOR
    if pred_mask is not None:
        out[inner_outline(_resize_mask(pred_mask, (w, h)))] = PRED_COLOR
    return Image.fromarray(out)


def save_map_png(
    path: str | os.PathLike[str],
    anomaly_map: np.ndarray,
    vmin: float = 0.0,
    vmax: float = 1.0,
    compress_level: int = 1,
) -> None:
    """Write the map as a 16-bit greyscale PNG, 0 = vmin and 65535 = vmax (outside values clipped).

    Fast compression by default: level 1 is several times quicker than Pillow's 6 and the files are
    only slightly larger, which matters when a batch report writes thousands of maps."""
    norm = _normalize(anomaly_map, vmin, vmax)
    data = np.rint(norm * 65535.0).astype(np.uint16)
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(data).save(p, format="PNG", compress_level=compress_level)


def load_map_png(path: str | os.PathLike[str], vmin: float = 0.0, vmax: float = 1.0) -> np.ndarray:
    """Read a map written by `save_map_png` back to float32 on [vmin, vmax] (8-bit PNGs also accepted)."""
    if not vmax > vmin:
        raise ValueError(f"vmax must be greater than vmin, got vmin={vmin}, vmax={vmax}")
    p = Path(path)
    with Image.open(p) as im:
        if im.mode not in ("I;16", "I;16B", "I;16L", "I", "L"):
            raise ValueError(f"'{p}' is not a greyscale map PNG (mode {im.mode!r})")
        full_scale = 255.0 if im.mode == "L" else 65535.0
        data = np.asarray(im, dtype=np.float64)
    return (np.clip(data / full_scale, 0.0, 1.0) * (vmax - vmin) + vmin).astype(np.float32)


def save_mask_png(path: str | os.PathLike[str], mask: np.ndarray) -> None:
    """Write a boolean mask as an 8-bit PNG, 0 = good and 255 = defect (what `load_mask` reads)."""
    m = np.asarray(mask)
    if m.ndim != 2:
        raise ValueError(f"mask must be 2-D (HxW), got shape {m.shape}")
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.where(m.astype(bool), 255, 0).astype(np.uint8)).save(p, format="PNG", compress_level=1)
