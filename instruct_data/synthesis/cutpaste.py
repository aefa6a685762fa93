"""CutPaste and CutPaste-scar: a patch (or a long thin strip) of the same image, colour-jittered, pasted
elsewhere, sometimes rotated."""

from __future__ import annotations

import math

import numpy as np
from PIL import Image

from instruct_data.synthesis.base import ANOMALIES, SynthResult, describe, tone_of
from instruct_data.synthesis.drawing import jitter


def _paste_rotated(
    image: np.ndarray, patch: np.ndarray, angle: float, centre: tuple[int, int]
) -> tuple[np.ndarray, np.ndarray]:
    """Paste float `patch` rotated by `angle` degrees with its centre at `centre` (y, x)."""
    h, w = image.shape[:2]
    ph, pw = patch.shape[:2]
    pim = Image.fromarray(np.clip(np.rint(patch), 0, 255).astype(np.uint8))
    mim = Image.new("L", (pw, ph), 255)
    if angle:
        pim = pim.rotate(angle, resample=Image.Resampling.BILINEAR, expand=True)
        mim = mim.rotate(angle, resample=Image.Resampling.NEAREST, expand=True)
    rp = np.asarray(pim)
    rm = np.asarray(mim) > 127
    y0, x0 = centre[0] - rp.shape[0] // 2, centre[1] - rp.shape[1] // 2
    sy0, sx0 = max(0, -y0), max(0, -x0)
    ty0, tx0 = max(0, y0), max(0, x0)
    ty1, tx1 = min(h, y0 + rp.shape[0]), min(w, x0 + rp.shape[1])
    out = image.copy()
    mask = np.zeros((h, w), bool)
    if ty1 > ty0 and tx1 > tx0:
        sub_m = rm[sy0 : sy0 + ty1 - ty0, sx0 : sx0 + tx1 - tx0]
        sub_p = rp[sy0 : sy0 + ty1 - ty0, sx0 : sx0 + tx1 - tx0]
        region = out[ty0:ty1, tx0:tx1]
        region[sub_m] = sub_p[sub_m]
        mask[ty0:ty1, tx0:tx1] = sub_m
    if not mask.any():  # pasted entirely off the image (cannot happen with in-image centres)
        cy, cx = min(h - 1, max(0, centre[0])), min(w - 1, max(0, centre[1]))
        mask[cy, cx] = True
        out[cy, cx] = np.clip(np.rint(patch[ph // 2, pw // 2]), 0, 255).astype(np.uint8)
    return out, mask


def _cutpaste(image: np.ndarray, rng: np.random.Generator, scar: bool) -> SynthResult:
    h, w = image.shape[:2]
    if scar:
        pw = max(2, int(round(rng.uniform(2, 12) * min(h, w) / 256)))
        ph = max(4, int(round(rng.uniform(0.12, 0.3) * min(h, w))))
        angle = float(rng.uniform(-60, 60))
    else:
        area = rng.uniform(0.02, 0.08) * h * w
        ratio = rng.uniform(0.4, 2.5)
        pw = max(2, min(w - 1, int(round(math.sqrt(area * ratio)))))
        ph = max(2, min(h - 1, int(round(math.sqrt(area / ratio)))))
        angle = float(rng.choice([0.0, rng.uniform(-45, 45)]))
    pw, ph = min(pw, w - 1), min(ph, h - 1)
    sy, sx = int(rng.integers(0, h - ph + 1)), int(rng.integers(0, w - pw + 1))
    patch = image[sy : sy + ph, sx : sx + pw].astype(np.float64)
    patch, tone = jitter(patch, rng, 0.35 if scar else 0.2)
    # the target centre: far enough from the source that the copy is not pasted onto itself
    for _ in range(20):
        ty, tx = int(rng.integers(ph // 2, h - ph // 2)), int(rng.integers(pw // 2, w - pw // 2))
        if abs(ty - (sy + ph // 2)) > ph or abs(tx - (sx + pw // 2)) > pw:
            break
    out, mask = _paste_rotated(image, patch, angle, (ty, tx))
    tone = tone or tone_of(image, out, mask)
    if scar:
        kind, words = "cutpaste_scar", f"thin {tone} stripe of displaced texture"
    else:
        shape = "rotated rectangular" if angle else "rectangular"
        kind, words = "cutpaste", f"{shape} patch of displaced texture, {tone}"
    return SynthResult(out, mask, describe(kind, "cutpaste", mask, words.replace(", similar brightness", "")))


@ANOMALIES.register("cutpaste")
def cutpaste(image: np.ndarray, rng: np.random.Generator) -> SynthResult:
    """CutPaste: a rectangle of the image, colour-jittered, pasted elsewhere (sometimes rotated)."""
    return _cutpaste(image, rng, scar=False)


@ANOMALIES.register("cutpaste_scar")
def cutpaste_scar(image: np.ndarray, rng: np.random.Generator) -> SynthResult:
    """CutPaste-scar: a long thin strip of the image, jittered and rotated, pasted elsewhere."""
    return _cutpaste(image, rng, scar=True)
