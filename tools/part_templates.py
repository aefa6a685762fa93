"""Finding a part by its look: zero-mean normalized cross-correlation (NCC) of a colour template,
over a search window, at a few angles and scales.

Why: on real photos a part's pixels are not one colour and its edges are not always sharp (a label
over a liquid of nearly its colour, print on the label, reflections), so segmenting it and counting
pieces is fragile. Its *pattern* is stable: the label's outline, frame line, gradient and print
correlate with the same label on the good references whatever the pixels around it do. NCC is
invariant to the brightness and contrast of each colour channel in the window, so a change of light
or of the liquid behind does not move the peak; the peak value says how much the place looks like the
part (presence), its location where the part is (position), the best angle its orientation and the
best scale its size.

Computation: one FFT correlation of all channels at once for the numerator, the window's local sums
from integral images for the normalization: one template over one window costs three FFTs.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image
from scipy import ndimage

_EPS = 1e-9
DIRECT_PLACES = 64  # up to this many places, correlate directly instead of by FFT


@dataclass
class TemplateMatch:
    """The best place of a template in a window."""

    score: float  # NCC at the peak, -1..1
    x: float  # centre of the matched template, pixels of the searched image
    y: float
    angle: float  # degrees, counter-clockwise, of the template that matched best
    scale: float  # size of that template relative to the original


def _box_sums(img: np.ndarray, h: int, w: int) -> np.ndarray:
    """Sums of every h x w box of an HxWxC array (integral image), (H - h + 1, W - w + 1, C)."""
    c = np.zeros((img.shape[0] + 1, img.shape[1] + 1) + img.shape[2:])
    c[1:, 1:] = img.cumsum(0).cumsum(1)
    return c[h:, w:] - c[:-h, w:] - c[h:, :-w] + c[:-h, :-w]


def ncc_map(window: np.ndarray, template: np.ndarray) -> np.ndarray:
    """(H - h + 1, W - w + 1) NCC of an hxwxC template at every place inside an HxWxC window: the
    channels' zero-mean correlations summed, over the product of their norms. One batched FFT
    correlation for the numerator; the window's local sums from an integral image."""
    win = np.asarray(window, dtype=np.float64)
    tpl = np.asarray(template, dtype=np.float64)
    if win.ndim == 2:
        win, tpl = win[..., None], tpl[..., None]
    h, w = tpl.shape[:2]
    big_h, big_w = win.shape[:2]
    if big_h < h or big_w < w:
        return np.full((1, 1), -1.0)
    n = float(h * w)
    t = tpl - tpl.mean(axis=(0, 1), keepdims=True)
    var_t = float((t**2).sum())
    places = (big_h - h + 1) * (big_w - w + 1)
    if places <= DIRECT_PLACES:  # a few places (a refinement): direct dot products beat three FFTs
        views = np.lib.stride_tricks.sliding_window_view(win, (h, w), axis=(0, 1))  # (oh, ow, C, h, w)
        num = np.einsum("ijchw,hwc->ij", views, t)
    else:
        shape = (big_h + h - 1, big_w + w - 1)
        fw = np.fft.rfft2(win, s=shape, axes=(0, 1))
        ft = np.fft.rfft2(t[::-1, ::-1], s=shape, axes=(0, 1))
        num = np.fft.irfft2((fw * ft).sum(-1), s=shape)[h - 1 : big_h, w - 1 : big_w]
    s1 = _box_sums(win, h, w)
    s2 = _box_sums(win**2, h, w)
    var_w = np.maximum(s2 - s1**2 / n, 0.0).sum(-1)
    return np.clip(num / np.sqrt(np.maximum(var_w * var_t, _EPS)), -1.0, 1.0)


def rotated(template: np.ndarray, angle: float, scale: float = 1.0) -> np.ndarray:
    """The template turned by `angle` degrees (counter-clockwise) and resized by `scale`, cropped to
    its original box scaled (the corners it loses are a small share of a compact template)."""
    h, w = template.shape[:2]
    img = Image.fromarray(np.clip(template * 255.0, 0, 255).astype(np.uint8))
    if angle:
        img = img.rotate(angle, resample=Image.BILINEAR, expand=False, fillcolor=None)
    if scale != 1.0:
        img = img.resize((max(3, round(w * scale)), max(3, round(h * scale))), Image.BILINEAR)
    out = np.asarray(img, dtype=np.float64) / 255.0
    if angle:  # the corners rotated in from outside are blank: use the inner box that stays filled
        m = _inner(h, w, angle, scale)
        out = out[m[1] : out.shape[0] - m[1], m[0] : out.shape[1] - m[0]]
    return out


def _inner(h: int, w: int, angle: float, scale: float) -> tuple[int, int]:
    """Margins (x, y) in pixels that keep only what the rotation filled from the template."""
    a = abs(np.radians(angle))
    mx = int(np.ceil(scale * h / 2 * np.sin(a))) if a else 0
    my = int(np.ceil(scale * w / 2 * np.sin(a))) if a else 0
    return min(mx, int(scale * w) // 3), min(my, int(scale * h) // 3)


def locate(
    px: np.ndarray,
    template: np.ndarray,
    centre: tuple[float, float],
    search: tuple[float, float],
    angles: tuple[float, ...] = (0.0,),
    scales: tuple[float, ...] = (1.0,),
) -> TemplateMatch:
    """The best match of `template` (hxwxC, 0..1) whose centre lies within `search` (half-widths x, y,
    pixels) of `centre` (x, y) in the image `px`, over the given angles and scales."""
    best = TemplateMatch(-1.0, centre[0], centre[1], 0.0, 1.0)
    hh, ww = px.shape[:2]
    for scale in scales:
        for angle in angles:
            tpl = rotated(template, angle, scale) if (angle or scale != 1.0) else template
            th, tw = tpl.shape[:2]
            x0 = int(np.floor(centre[0] - search[0] - tw / 2))
            y0 = int(np.floor(centre[1] - search[1] - th / 2))
            x1 = int(np.ceil(centre[0] + search[0] + tw / 2))
            y1 = int(np.ceil(centre[1] + search[1] + th / 2))
            cx0, cy0, cx1, cy1 = max(0, x0), max(0, y0), min(ww, x1), min(hh, y1)
            if cx1 - cx0 < tw or cy1 - cy0 < th:
                continue
            scores = ncc_map(px[cy0:cy1, cx0:cx1], tpl)
            k = int(np.argmax(scores))
            sy, sx = divmod(k, scores.shape[1])
            if scores[sy, sx] > best.score:
                best = TemplateMatch(float(scores[sy, sx]), cx0 + sx + tw / 2, cy0 + sy + th / 2, angle, scale)
    return best


def crop(px: np.ndarray, centre: tuple[float, float], size: tuple[int, int]) -> np.ndarray:
    """The size (w, h) box of `px` centred at `centre`, edge pixels repeated where it leaves the image."""
    w, h = size
    x0 = int(round(centre[0] - w / 2))
    y0 = int(round(centre[1] - h / 2))
    ys = np.clip(np.arange(y0, y0 + h), 0, px.shape[0] - 1)
    xs = np.clip(np.arange(x0, x0 + w), 0, px.shape[1] - 1)
    return px[np.ix_(ys, xs)]


def edge_angle(px: np.ndarray) -> tuple[float, float]:
    """(dominant edge direction in degrees, modulo 90, in [-45, 45); its strength 0..1) of a crop: 0
    for an upright rectangle (a label's edges, its print), its tilt for a tilted one. The strength is
    the share of gradient energy within 5 degrees of the peak (about 0.11 when no direction leads).
    Sub-degree: the circular mean of the directions near the peak."""
    gray = np.asarray(px, dtype=np.float64)
    gray = gray.mean(-1) if gray.ndim == 3 else gray
    gy = ndimage.sobel(gray, axis=0)
    gx = ndimage.sobel(gray, axis=1)
    mag = np.hypot(gx, gy)[1:-1, 1:-1].ravel()
    if mag.size == 0 or mag.sum() <= 1e-9:
        return 0.0, 0.0
    # image rows grow downwards: negate y so that a counter-clockwise tilt is a positive angle
    ang = np.degrees(np.arctan2(-gy[1:-1, 1:-1].ravel(), gx[1:-1, 1:-1].ravel())) % 90.0
    hist = np.bincount(np.round(ang).astype(np.int64) % 90, weights=mag, minlength=90)
    kernel = np.exp(-0.5 * (np.arange(-6, 7) / 2.0) ** 2)
    smooth = np.convolve(np.concatenate([hist[-6:], hist, hist[:6]]), kernel, mode="same")[6:-6]
    peak = int(np.argmax(smooth))
    near = np.abs(((np.arange(90) - peak + 45) % 90) - 45) <= 5
    strength = float(hist[near].sum() / hist.sum())
    theta = np.radians(np.arange(90) * 4.0)  # period 90 -> full circle
    w = hist * near
    mean = np.degrees(np.arctan2(float((w * np.sin(theta)).sum()), float((w * np.cos(theta)).sum()))) / 4.0
    return float(((mean + 45.0) % 90.0) - 45.0), strength


def half(px: np.ndarray) -> np.ndarray:
    """The image at half size (2x2 means): the coarse level of a search."""
    h, w = (px.shape[0] // 2) * 2, (px.shape[1] // 2) * 2
    p = px[:h, :w]
    return 0.25 * (p[0::2, 0::2] + p[1::2, 0::2] + p[0::2, 1::2] + p[1::2, 1::2])


def similarity(a: np.ndarray, b: np.ndarray) -> float:
    """NCC of two crops of the same size (1: the same pattern)."""
    return float(ncc_map(a, b)[0, 0]) if a.shape == b.shape else -1.0


__all__ = ["TemplateMatch", "crop", "edge_angle", "half", "locate", "ncc_map", "rotated", "similarity"]
