"""Candidate blobs of an audit image: the image at work size, white-balanced against its border, its
foreground and the 8-connected pieces of each main foreground colour (`find_blobs`).

Why its own module: the checking (`agent.audit.check`), the SAM path (`agent.audit.segment`), the CLIP
finder (`agent.audit.clip_finder`) and the drafting (`agent.audit.draft`) all work on these blobs, and
none of them needs the others to get one.
"""

from __future__ import annotations

import colorsys
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from PIL import Image
from scipy import ndimage

WORK_SIZE = 256  # long side the image is measured at
EIGHT = np.ones((3, 3), bool)


@dataclass
class Blob:
    mask: np.ndarray  # HxW bool at work resolution
    area: float  # fraction of the image
    centroid: tuple[float, float]  # x, y normalized
    rgb: tuple[float, float, float]  # mean colour 0..1
    owner: str | None = None

    @property
    def hue(self) -> float:
        return colorsys.rgb_to_hsv(*self.rgb)[0]

    @property
    def hsv(self) -> tuple[float, float, float]:
        return colorsys.rgb_to_hsv(*self.rgb)


def work_pixels(image: Image.Image) -> np.ndarray:
    img = image.convert("RGB")
    scale = WORK_SIZE / max(img.size)
    if scale < 1:
        img = img.resize(
            (max(1, round(img.width * scale)), max(1, round(img.height * scale))), Image.BILINEAR
        )
    return np.asarray(img, dtype=np.float64) / 255.0


def border_colour(px: np.ndarray, width: int = 2) -> np.ndarray:
    """Median colour of the outer frame of `width` pixels."""
    frame = np.concatenate(
        [
            px[:width].reshape(-1, 3),
            px[-width:].reshape(-1, 3),
            px[:, :width].reshape(-1, 3),
            px[:, -width:].reshape(-1, 3),
        ]
    )
    return np.median(frame, axis=0)


def white_balance(px: np.ndarray, background: Sequence[float]) -> np.ndarray:
    """Colours corrected per channel so that the image's border (assumed background) has the spec's
    background colour: cancels a global gain and colour cast of the light (gain clipped to 0.7..1.4)."""
    gain = np.clip(np.asarray(background, float) / np.maximum(border_colour(px), 1e-3), 0.7, 1.4)
    return np.clip(px * gain, 0.0, 1.0)


SPLIT_COLOUR = 0.2  # foreground colours this far apart (RGB 0..1) are different parts, even touching


def colour_modes(colours: np.ndarray, tolerance: float = SPLIT_COLOUR, min_pixels: int = 8) -> np.ndarray:
    """The main colours of foreground pixels (N x 3, 0..1): peaks of a coarse colour histogram (8 levels
    per channel), largest first, a peak closer than `tolerance` to a kept one merged into it."""
    if len(colours) == 0:
        return np.zeros((0, 3))
    q = np.clip((colours * 8).astype(np.int64), 0, 7)
    keys = q[:, 0] * 64 + q[:, 1] * 8 + q[:, 2]
    counts = np.bincount(keys, minlength=512)
    centres: list[np.ndarray] = []
    for k in np.argsort(-counts, kind="stable"):
        if counts[k] < min_pixels:
            break
        mean = colours[keys == k].mean(0)
        if all(np.linalg.norm(mean - c) > tolerance for c in centres):
            centres.append(mean)
    return np.array(centres) if centres else colours.mean(0, keepdims=True)


def foreground(px: np.ndarray, background: Sequence[float], tolerance: float) -> np.ndarray:
    """HxW bool: pixels farther than `tolerance` from the background colour, specks opened away."""
    dist = np.sqrt(((px - np.asarray(background, float)) ** 2).sum(-1))
    return ndimage.binary_opening(dist > tolerance, structure=np.ones((2, 2), bool))


def find_blobs(px: np.ndarray, background: Sequence[float], tolerance: float, min_area: float) -> list[Blob]:
    """Foreground blobs, largest first: 8-connected pieces of one main colour, so parts that touch (a
    clamp on a cable, a label on a bottle) are still separate blobs."""
    h, w = px.shape[:2]
    fg = foreground(px, background, tolerance)
    colours = px[fg]
    centres = colour_modes(colours)
    if len(centres) > 1:
        nearest = np.argmin(((colours[:, None, :] - centres[None]) ** 2).sum(-1), axis=1)
        layers = np.full((h, w), -1)
        layers[fg] = nearest
        masks = [
            ndimage.binary_opening(layers == i, structure=np.ones((2, 2), bool)) for i in range(len(centres))
        ]
    else:
        masks = [fg]
    blobs = []
    total = float(h * w)
    for layer in masks:
        labels, _ = ndimage.label(layer, structure=EIGHT)
        for i, sl in enumerate(ndimage.find_objects(labels), start=1):
            if sl is None:
                continue
            m = labels[sl] == i
            area = m.sum() / total
            if area < min_area:
                continue
            ys, xs = np.nonzero(m)
            full = np.zeros((h, w), bool)
            full[sl] = m
            rgb = px[sl][m].mean(0)
            blobs.append(
                Blob(
                    full,
                    float(area),
                    (float((xs.mean() + sl[1].start + 0.5) / w), float((ys.mean() + sl[0].start + 0.5) / h)),
                    (float(rgb[0]), float(rgb[1]), float(rgb[2])),
                )
            )
    blobs.sort(key=lambda b: -b.area)
    return blobs
