"""Logical anomalies: edits of whole segmented components (remove, duplicate, move, recolour).

Structural defects (scratches, stains) damage a surface; logical ones are a part that is missing, extra,
misplaced or of the wrong colour while every pixel of it looks fine. Components are found without any
model: the grey image is split at its Otsu threshold and the connected pieces of either class that are
neither specks nor background-sized (0.05% to 10% of the image) are candidates, e.g. the screw holes of
the demo plates. A component is taken with a few pixels of margin, so rims and shadows travel with it.

When an image has no such component (a flat or pure-texture image), a Perlin blob stands in for one, so
every kind still returns a non-empty mask; on a flat image the edit may then change little.
The mask of `logical_move` covers both the emptied place and the new one.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from instruct_data.synthesis.base import ANOMALIES, SynthResult, describe
from instruct_data.synthesis.drawing import blend, luminance, rough_blob, roundish, soften
from tools.regions import location_words

MIN_AREA, MAX_AREA = 0.0005, 0.10
MARGIN = 4
_SQUARE = np.ones((3, 3), bool)

_COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (200, 40, 40),
    "green": (50, 170, 60),
    "blue": (50, 80, 200),
    "yellow": (220, 200, 40),
    "orange": (230, 130, 30),
    "purple": (140, 60, 170),
}


def _otsu(grey: np.ndarray) -> float:
    hist, edges = np.histogram(grey, bins=256, range=(0, 256))
    p = hist.astype(np.float64) / max(1, hist.sum())
    omega = np.cumsum(p)
    mu = np.cumsum(p * np.arange(256))
    between = (mu[-1] * omega - mu) ** 2 / np.maximum(omega * (1 - omega), 1e-12)
    return float(edges[int(np.argmax(between)) + 1])


def _component(image: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, str]:
    """(component mask, component with margin, words like 'dark round component')."""
    h, w = image.shape[:2]
    grey = luminance(image)
    t = _otsu(grey)
    candidates: list[tuple[np.ndarray, str]] = []
    for cls, tone in ((grey < t, "dark"), (grey >= t, "bright")):
        labels, n = ndimage.label(cls)
        if n == 0:
            continue
        areas = np.bincount(labels.ravel(), minlength=n + 1) / (h * w)
        border = np.unique(np.concatenate([labels[0], labels[-1], labels[:, 0], labels[:, -1]]))
        for lab in range(1, n + 1):
            if MIN_AREA <= areas[lab] <= MAX_AREA and lab not in border:
                candidates.append((labels == lab, tone))
    if candidates:
        comp, tone = candidates[int(rng.integers(len(candidates)))]
        shape = "round" if roundish(comp) else "irregular"
        words = f"{tone} {shape} component"
    else:
        comp = rough_blob((h, w), rng, area=(0.005, 0.03), roughness=0.3)
        words = "region"
    grown = ndimage.binary_dilation(comp, structure=_SQUARE, iterations=MARGIN)
    return comp, grown, words


def _foreground(image: np.ndarray) -> np.ndarray:
    """Pixels of the minority Otsu class, grown: where pasting or sampling background must not happen."""
    grey = luminance(image)
    cls = grey < _otsu(grey)
    if cls.mean() > 0.5:
        cls = ~cls
    return ndimage.binary_dilation(cls, structure=_SQUARE, iterations=MARGIN + 1)


def _shifted(mask: np.ndarray, dy: int, dx: int) -> np.ndarray | None:
    """`mask` moved by (dy, dx), or None when part of it would leave the image."""
    ys, xs = np.nonzero(mask)
    h, w = mask.shape
    if ys.min() + dy < 0 or xs.min() + dx < 0 or ys.max() + dy >= h or xs.max() + dx >= w:
        return None
    out = np.zeros_like(mask)
    out[ys + dy, xs + dx] = True
    return out


def _free_offset(
    grown: np.ndarray, blocked: np.ndarray, rng: np.random.Generator, tries: int = 60
) -> tuple[int, int] | None:
    """A random shift that puts `grown` fully inside the image and off `blocked` (and off itself)."""
    h, w = grown.shape
    ys, xs = np.nonzero(grown)
    bh, bw = ys.max() - ys.min() + 1, xs.max() - xs.min() + 1
    blocked = ndimage.binary_dilation(blocked, structure=_SQUARE, iterations=MARGIN)  # keep a clearance
    edge = np.zeros_like(grown)
    edge[:MARGIN], edge[-MARGIN:], edge[:, :MARGIN], edge[:, -MARGIN:] = True, True, True, True
    for _ in range(tries):
        dy = int(rng.integers(-ys.min(), h - ys.max())) if h > bh else 0
        dx = int(rng.integers(-xs.min(), w - xs.max())) if w > bw else 0
        if abs(dy) < bh and abs(dx) < bw:
            continue
        moved = _shifted(grown, dy, dx)
        if moved is not None and not (moved & (blocked | grown)).any() and not (moved & edge).any():
            return dy, dx
    return None


def _fill_background(image: np.ndarray, grown: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """`image` with the `grown` area covered by background texture from elsewhere (or the ring's median)."""
    blocked = _foreground(image) | grown
    offset = _free_offset(grown, blocked, rng)
    if offset is not None:
        source = np.roll(image, (-offset[0], -offset[1]), axis=(0, 1)).astype(np.float64)
        ring = ndimage.binary_dilation(grown, iterations=4) & ~blocked
        if ring.any():  # match the local brightness (light gradients), so no ghost of the part remains
            source += image[ring].mean(axis=0) - source[grown].mean(axis=0)
    else:
        ring = ndimage.binary_dilation(grown, iterations=3) & ~grown
        colour = np.median(image[ring], axis=0) if ring.any() else np.median(image.reshape(-1, 3), axis=0)
        source = np.broadcast_to(colour, image.shape)
    alpha = np.maximum(soften(grown, 1.0), grown)
    return blend(image, source, alpha)


def _paste(
    base: np.ndarray, image: np.ndarray, grown: np.ndarray, offset: tuple[int, int]
) -> tuple[np.ndarray, np.ndarray]:
    """`base` with the `grown` area of `image` copied to `grown` shifted by `offset`; and that footprint."""
    dy, dx = offset
    target = _shifted(grown, dy, dx)
    assert target is not None
    ys, xs = np.nonzero(grown)
    out = base.copy()
    out[ys + dy, xs + dx] = image[ys, xs]
    return out, target


def _where(mask: np.ndarray) -> str:
    ys, xs = np.nonzero(mask)
    return location_words(float(xs.mean()), float(ys.mean()), mask.shape[1], mask.shape[0])


@ANOMALIES.register("logical_remove")
def logical_remove(image: np.ndarray, rng: np.random.Generator) -> SynthResult:
    """A component (e.g. a hole or a part) removed and covered with background texture."""
    _, grown, words = _component(image, rng)
    out = _fill_background(image, grown, rng)
    desc = describe("logical_remove", "logical", grown, f"missing {words}: background where it should be")
    return SynthResult(out, grown, desc)


@ANOMALIES.register("logical_duplicate")
def logical_duplicate(image: np.ndarray, rng: np.random.Generator) -> SynthResult:
    """An extra copy of a component, placed where there is only background."""
    _, grown, words = _component(image, rng)
    offset = _free_offset(grown, _foreground(image), rng) or _free_offset(grown, np.zeros_like(grown), rng)
    if offset is None:  # no room anywhere: the copy is mirrored onto its own place
        out = image.copy()
        out[grown] = image[::-1, ::-1][grown]
        target = grown
    else:
        out, target = _paste(image, image, grown, offset)
    desc = describe("logical_duplicate", "logical", target, f"extra {words} that should not be there")
    return SynthResult(out, target, desc)


@ANOMALIES.register("logical_move")
def logical_move(image: np.ndarray, rng: np.random.Generator) -> SynthResult:
    """A component moved out of place: background where it was, the component somewhere else."""
    _, grown, words = _component(image, rng)
    emptied = _fill_background(image, grown, rng)
    offset = _free_offset(grown, _foreground(image), rng) or _free_offset(grown, np.zeros_like(grown), rng)
    if offset is None:
        return SynthResult(emptied, grown, describe("logical_move", "logical", grown, f"missing {words}"))
    out, target = _paste(emptied, image, grown, offset)
    mask = grown | target
    desc = describe(
        "logical_move",
        "logical",
        mask,
        f"misplaced {words}: moved from the {_where(grown)} to the {_where(target)}",
        location=_where(target),
        from_location=_where(grown),
    )
    return SynthResult(out, mask, desc)


@ANOMALIES.register("logical_recolour")
def logical_recolour(image: np.ndarray, rng: np.random.Generator) -> SynthResult:
    """A component in the wrong colour (shading kept)."""
    comp, _, words = _component(image, rng)
    names = sorted(_COLOURS)
    name = names[int(rng.integers(len(names)))]
    colour = np.array(_COLOURS[name], dtype=np.float64)
    shade = luminance(image)[..., None] / 255.0
    target = colour * (0.5 + shade)
    strength = rng.uniform(0.6, 0.85)
    out = blend(image, target, comp * strength)
    desc = describe("logical_recolour", "logical", comp, f"{words} in the wrong colour ({name})", colour=name)
    return SynthResult(out, comp, desc)
