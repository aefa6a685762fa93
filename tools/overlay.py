"""Pictures of what the detector saw: overlays a person reads at a glance, and maps and masks as PNG files.

Why a module of its own: reports, the chat, the web page and the benchmarks all show the same picture
(image, heat, numbered outlines, ground truth, verdict), and they all store maps beside the JSON
results, so one implementation keeps them identical and readable by anomalib-style tools.

Decisions, and why:

- The part stays visible. Heat is drawn only where the map reaches `floor` (the start of the review
  band for an inspection record: below it nothing is suspicious, so nothing is tinted), translucent,
  and more opaque only as the score rises; everywhere else the image keeps its true colours.
- The colour map is perceptual and sequential: ColorBrewer's YlOrRd from its yellow on (lightness
  falls monotonically from yellow to dark red, so "hotter" always reads as "darker and redder", also
  in grey print and for the common colour-vision deficiencies). A few lines of numpy: no matplotlib.
- The heat is scaled from a fixed [vmin, vmax] (default [0, 1], the calibrated scale every detector
  speaks), never per image: a per-image stretch would paint a good part's noise as red as a crack.
- Each region is outlined 2 px *inside* its edge in cyan (a colour the heat map never uses) with its
  number in a tag beside it: the same number as in the explanation, the record's `regions` and the
  tables. The ground truth is outlined 2 px *outside* its edge in dashed white: when the two agree
  both outlines stay visible, and the dash tells them apart without relying on colour alone.
- A small legend (the heat scale from the floor to 1, with the boundary marked) and the verdict with
  its score go in the corner with the least heat, so they never cover the defect.
- Maps are stored as 16-bit greyscale PNG scaled from [vmin, vmax]: lossless, viewable, and precise to
  1/65535 of the range (8-bit would lose the detail that pixel AUROC needs). Values outside the range
  are clipped; NaN is stored as vmin.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont
from scipy import ndimage

from tools.image_io import image_to_array, unit_pixels
from tools.record import Region
from tools.regions import region_masks

PRED_COLOR: tuple[int, int, int] = (0, 229, 255)  # cyan: no heat colour is close to it
GT_COLOR: tuple[int, int, int] = (255, 255, 255)
VERDICT_COLORS: dict[str, tuple[int, int, int]] = {
    "defective": (255, 96, 80), "review": (255, 190, 60), "good": (120, 220, 110),
}
OUTLINE_WIDTH = 2
HEAT_ALPHA = (0.15, 0.45)  # opacity of the heat at the floor and at the top of the scale
_DASH = 4  # length of one dash (and one gap) of the ground-truth outline, in pixels
_CROSS = ndimage.generate_binary_structure(2, 1)
#: ColorBrewer YlOrRd from its yellow (#fed976) to its dark red (#800026), evenly spaced stops
_YLORRD = np.array(
    [[254, 217, 118], [254, 178, 76], [253, 141, 60], [252, 78, 42], [227, 26, 28], [189, 0, 38], [128, 0, 38]],
    dtype=np.float32,
) / 255.0


def jet_colormap(values: np.ndarray) -> np.ndarray:
    """HxWx3 float32 RGB in [0, 1] for values in [0, 1]: dark blue -> cyan -> yellow -> dark red.

    Kept for pictures of whole maps (a map on its own, not over an image); overlays use `heat_colormap`."""
    v = np.clip(np.nan_to_num(np.asarray(values, dtype=np.float32), nan=0.0), 0.0, 1.0)[..., None]
    centres = np.array([3.0, 2.0, 1.0], dtype=np.float32) / 4.0  # where r, g, b peak
    return np.clip(1.5 - np.abs(4.0 * (v - centres)), 0.0, 1.0).astype(np.float32)


def heat_colormap(values: np.ndarray) -> np.ndarray:
    """...x3 float32 RGB in [0, 1] for values in [0, 1]: yellow -> orange -> red -> dark red (YlOrRd)."""
    v = np.clip(np.nan_to_num(np.asarray(values, dtype=np.float32), nan=0.0), 0.0, 1.0)
    stops = np.linspace(0.0, 1.0, len(_YLORRD))
    out = np.empty(v.shape + (3,), dtype=np.float32)
    for c in range(3):  # one channel at a time: maps of tens of megapixels stay within a few arrays
        out[..., c] = np.interp(v, stops, _YLORRD[:, c])
    return out


def _normalize(anomaly_map: np.ndarray, vmin: float, vmax: float) -> np.ndarray:
    if not vmax > vmin:
        raise ValueError(f"vmax must be greater than vmin, got vmin={vmin}, vmax={vmax}")
    amap = np.asarray(anomaly_map, dtype=np.float32)  # float32: maps of tens of megapixels
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
    return np.asarray(img.resize(size, Image.Resampling.BILINEAR), dtype=np.float32)


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
    alpha: float = HEAT_ALPHA[1],
    vmin: float = 0.0,
    vmax: float = 1.0,
    *,
    floor: float | None = None,
    boundary: float | None = None,
    regions: Sequence[Region] | None = None,
    verdict: str | None = None,
    score: float | None = None,
    legend: bool = False,
) -> Image.Image:
    """The image with translucent heat where the map reaches `floor` (default `vmin`), the predicted
    mask outlined (per region, numbered, when `regions` are given), the ground truth dashed, and, with
    `legend`, the heat scale and the verdict with its score in the emptiest corner.

    `alpha` is the heat's opacity at the top of the scale (it fades to `HEAT_ALPHA[0]` at the floor);
    `boundary` marks the defect boundary on the legend. The result has the image's size; a map or mask
    of another size is resized to it (bilinear for the map, nearest for masks).
    """
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")
    rgb = _as_rgb_float(image)
    h, w = rgb.shape[:2]
    norm = _resize_map(_normalize(anomaly_map, vmin, vmax), (w, h))
    low = 0.0 if floor is None else float(np.clip((floor - vmin) / (vmax - vmin), 0.0, 1.0))
    hot = norm >= low if floor is not None else norm > 0.0
    t = np.clip((norm - np.float32(low)) / np.float32(max(1.0 - low, 1e-6)), 0.0, 1.0)
    a = np.where(hot, np.float32(min(HEAT_ALPHA[0], alpha)) + np.float32(alpha - min(HEAT_ALPHA[0], alpha)) * t, np.float32(0.0))[..., None]
    heat = heat_colormap(t)
    heat *= a
    rgb *= 1.0 - a
    rgb += heat  # in place, float32: a 37-megapixel overlay holds a few arrays at a time
    del heat
    rgb *= 255.0
    out = np.clip(np.rint(rgb, out=rgb), 0, 255).astype(np.uint8)
    if gt_mask is not None:
        band = outer_outline(_resize_mask(gt_mask, (w, h)))
        diagonal = np.arange(h)[:, None] + np.arange(w)[None, :]
        band &= (diagonal // _DASH) % 2 == 0
        out[band] = GT_COLOR
    tags: list[tuple[str, tuple[int, int, int, int]]] = []
    if pred_mask is not None:
        mask = _resize_mask(pred_mask, (w, h))
        if regions:
            own = np.asarray(pred_mask).astype(bool)
            sx, sy = w / own.shape[1], h / own.shape[0]
            for i, (region, pixels) in enumerate(zip(regions, region_masks(own, list(regions)), strict=True)):
                out[inner_outline(_resize_mask(pixels, (w, h)))] = PRED_COLOR
                x0, y0, x1, y1 = region.bbox
                box = (int(x0 * sx), int(y0 * sy), int(np.ceil(x1 * sx)), int(np.ceil(y1 * sy)))
                tags.append((str(region.number or i + 1), box))
        else:
            out[inner_outline(mask)] = PRED_COLOR
    picture = Image.fromarray(out)
    if tags or legend:
        draw = ImageDraw.Draw(picture, "RGBA")
        font = _font(max(9, min(28, round(min(w, h) / 20))))
        taken = [_draw_tag(draw, font, text, box, (w, h)) for text, box in tags]
        if legend and min(w, h) >= 96:
            busy = hot if pred_mask is None else hot | _resize_mask(pred_mask, (w, h))
            mark = None if boundary is None else (boundary - vmin) / (vmax - vmin)
            _draw_legend(draw, font, (w, h), busy, taken, low, mark, floor, verdict, score)
    return picture


def _font(size: int) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    """Pillow's own font at `size` px (no font files needed); its fixed bitmap font without FreeType."""
    try:
        return ImageFont.load_default(size=size)
    except (TypeError, OSError, ImportError):  # Pillow without FreeType
        return ImageFont.load_default()


def _text_size(draw: ImageDraw.ImageDraw, font: ImageFont.ImageFont, text: str) -> tuple[int, int]:
    x0, y0, x1, y1 = draw.textbbox((0, 0), text, font=font)
    return int(x1 - x0), int(y1 - y0)


def _draw_tag(
    draw: ImageDraw.ImageDraw, font: ImageFont.ImageFont, text: str, box: tuple[int, int, int, int], size: tuple[int, int]
) -> tuple[int, int, int, int]:
    """A region's number in a cyan tag at its box's upper-left corner, outside the box when there is
    room (so it covers none of the region), kept inside the image. Returns the tag's box."""
    w, h = size
    tw, th = _text_size(draw, font, text)
    pad = max(1, th // 4)
    bw, bh = tw + 2 * pad, th + 2 * pad
    x0, y0, x1, y1 = box
    tx = x0 - bw if x0 - bw >= 0 else x0
    ty = y0 - bh if y0 - bh >= 0 else (y1 if y1 + bh <= h else y0)
    tx, ty = int(min(max(tx, 0), w - bw)), int(min(max(ty, 0), h - bh))
    draw.rectangle((tx, ty, tx + bw - 1, ty + bh - 1), fill=PRED_COLOR + (235,))
    left, top = draw.textbbox((0, 0), text, font=font)[:2]
    draw.text((tx + pad - left, ty + pad - top), text, font=font, fill=(0, 0, 0, 255))
    return tx, ty, tx + bw, ty + bh


def _draw_legend(
    draw: ImageDraw.ImageDraw,
    font: ImageFont.ImageFont,
    size: tuple[int, int],
    busy: np.ndarray,
    taken: list[tuple[int, int, int, int]],
    low: float,
    boundary: float | None,
    floor: float | None,
    verdict: str | None,
    score: float | None,
) -> None:
    """Verdict and score on one line, the heat scale under it, in the corner with the least heat."""
    w, h = size
    title = verdict.upper() if verdict else ""
    if score is not None:
        title = f"{title} {score:.2f}".strip()
    lo_text = f"{floor:.2f}" if floor is not None else "0"
    tw, th = _text_size(draw, font, title or "0")
    lw, _ = _text_size(draw, font, lo_text)
    pad = max(2, th // 3)
    bar_w = max(tw, 4 * lw, w // 5)
    bar_h = max(4, th // 2)
    bw = bar_w + 2 * pad
    bh = (th + pad if title else 0) + bar_h + th + 3 * pad
    margin = max(2, min(w, h) // 60)
    corners = [(margin, margin), (w - bw - margin, margin), (margin, h - bh - margin), (w - bw - margin, h - bh - margin)]

    def cost(c: tuple[int, int]) -> float:
        x, y = c
        overlap = sum(max(0, min(x + bw, t[2]) - max(x, t[0])) * max(0, min(y + bh, t[3]) - max(y, t[1])) for t in taken)
        return float(busy[max(0, y):y + bh, max(0, x):x + bw].sum()) + overlap

    x, y = min(corners, key=cost)
    x, y = max(0, x), max(0, y)
    draw.rectangle((x, y, x + bw - 1, y + bh - 1), fill=(0, 0, 0, 170))
    cy = y + pad
    if title:
        left, top = draw.textbbox((0, 0), title, font=font)[:2]
        draw.text((x + pad - left, cy - top), title, font=font, fill=VERDICT_COLORS.get(verdict or "", (255, 255, 255)) + (255,))
        cy += th + pad
    colours = np.rint(heat_colormap(np.linspace(0.0, 1.0, bar_w)) * 255).astype(int)
    for i, (r, g, b) in enumerate(colours):
        draw.line((x + pad + i, cy, x + pad + i, cy + bar_h - 1), fill=(int(r), int(g), int(b), 255))
    if boundary is not None and low < boundary < 1.0:
        bx = x + pad + round((boundary - low) / max(1.0 - low, 1e-6) * (bar_w - 1))
        draw.line((bx, cy - 2, bx, cy + bar_h + 1), fill=(255, 255, 255, 255), width=1)
    cy += bar_h + pad // 2
    left, top = draw.textbbox((0, 0), lo_text, font=font)[:2]
    draw.text((x + pad - left, cy - top), lo_text, font=font, fill=(255, 255, 255, 255))
    hi_w, _ = _text_size(draw, font, "1")
    left, top = draw.textbbox((0, 0), "1", font=font)[:2]
    draw.text((x + pad + bar_w - hi_w - left, cy - top), "1", font=font, fill=(255, 255, 255, 255))


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
