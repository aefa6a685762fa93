"""A small, self-made inspection case so `looktwice demo` needs no data: brushed-metal plates.

Each plate is a procedural texture (brushing streaks, grain, a mild light gradient, four screw
holes), different in every sample like real parts are; one copy gets a drawn scratch, one a stain.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image
from scipy import ndimage


@dataclass(frozen=True)
class DemoCase:
    references: list[Path]
    queries: list[Path]
    masks: dict[str, Path]  # query file name -> ground-truth mask


def brushed_plate(rng: np.random.Generator, size: int = 256) -> np.ndarray:
    """float32 HxWx3 in [0, 1]: a brushed steel plate with screw holes near the corners."""
    streaks = ndimage.gaussian_filter1d(rng.normal(0, 1, (size, size)), sigma=size / 6, axis=1)
    streaks = streaks / (streaks.std() + 1e-6) * 0.035
    grain = ndimage.gaussian_filter(rng.normal(0, 0.02, (size, size)), 0.7)
    yy, xx = np.mgrid[0:size, 0:size] / size
    light = 0.06 * (xx - 0.5) * rng.uniform(-1, 1) + 0.04 * (yy - 0.5) * rng.uniform(-1, 1)
    grey = 0.58 + streaks + grain + light
    for cy, cx in ((0.15, 0.15), (0.15, 0.85), (0.85, 0.15), (0.85, 0.85)):
        r = np.hypot(yy - cy, xx - cx) * size
        grey = np.where(r < 9, 0.18, grey)
        grey = np.where((r >= 9) & (r < 12), grey + 0.12, grey)
    rgb = np.stack([grey * 0.98, grey, grey * 1.03], axis=-1)
    return np.clip(rgb, 0, 1).astype(np.float32)


def draw_scratch(img: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """A thin dark curved scratch; returns the new image and its mask."""
    h, w = img.shape[:2]
    t = np.linspace(0, 1, 400)
    x0, y0 = rng.uniform(0.3, 0.45) * w, rng.uniform(0.3, 0.4) * h
    xs = x0 + t * 0.3 * w
    ys = y0 + t * 0.25 * h + 6 * np.sin(t * 3.0)
    mask = np.zeros((h, w), bool)
    mask[np.clip(ys.astype(int), 0, h - 1), np.clip(xs.astype(int), 0, w - 1)] = True
    mask = ndimage.binary_dilation(mask, iterations=1)
    out = img.copy()
    out[mask] *= 0.45
    return out, mask


def draw_stain(img: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """A brownish, soft-edged stain; returns the new image and its mask."""
    h, w = img.shape[:2]
    yy, xx = np.mgrid[0:h, 0:w]
    cy, cx = rng.uniform(0.55, 0.7) * h, rng.uniform(0.3, 0.6) * w
    blob = np.exp(-(((yy - cy) / 14) ** 2 + ((xx - cx) / 20) ** 2))
    out = img.copy()
    tint = np.array([0.55, 0.42, 0.25], np.float32)
    out = out * (1 - 0.55 * blob[..., None]) + tint * 0.55 * blob[..., None]
    return out.astype(np.float32), blob > 0.3


def _save(arr: np.ndarray, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray((np.clip(arr, 0, 1) * 255).round().astype(np.uint8)).save(path)
    return path


def make_demo_case(folder: str | Path, n_references: int = 4, seed: int = 0, size: int = 256) -> DemoCase:
    """Write references/, queries/ (good, scratch, stain) and masks/ under `folder`."""
    root = Path(folder)
    rng = np.random.default_rng(seed)
    refs = [_save(brushed_plate(rng, size), root / "references" / f"good_{i}.png") for i in range(n_references)]
    good = brushed_plate(rng, size)
    scratched, scratch_mask = draw_scratch(brushed_plate(rng, size), rng)
    stained, stain_mask = draw_stain(brushed_plate(rng, size), rng)
    queries = [
        _save(good, root / "queries" / "plate_good.png"),
        _save(scratched, root / "queries" / "plate_scratch.png"),
        _save(stained, root / "queries" / "plate_stain.png"),
    ]
    masks = {}
    for name, m in (("plate_scratch.png", scratch_mask), ("plate_stain.png", stain_mask)):
        p = root / "masks" / name
        p.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(m.astype(np.uint8) * 255).save(p)
        masks[name] = p
    return DemoCase(references=refs, queries=queries, masks=masks)
