"""A logical-anomaly validation set made from real good photos of a labelled bottle (MVTec LOCO's
juice bottle kind of product: one bottle, a liquid filled to a level, a top label whose print matches
the liquid, a bottom label).

Why: logical audits were only measured on drawn scenes, and the real anomalies of such a product are
not available to the project. Edits of real good photos give anomalies with the photos' own light,
glass, reflections and print, so settings chosen on them are chosen on what real photos look like.
This set is for choosing settings: keep it apart from the structural validation sets and from any
test split you report.

The edits (each with its mask and a description):

- `missing_top`, `missing_bottom`: a label removed, its place filled with what surrounds it (each
  column interpolated between the rows just above and just below the label, with the photo's grain);
- `moved`: a label cut out and pasted higher or lower (and a little sideways), its old place filled;
- `swapped`: the two labels exchanged (each pasted centred on the other's place);
- `rotated`: a label turned by 8-30 degrees in place;
- `fill_low`, `fill_high`: the liquid's surface moved down or up by 6-15 % of the bottle's height
  (rows of the empty glass just above the surface repeated downwards, or the liquid's top rows
  repeated upwards, inside the bottle's silhouette);
- `recoloured`: the liquid's hue turned to a colour none of the kinds has (green, blue, purple),
  shading kept;
- `mismatch`: the top label replaced by the top label of a photo whose liquid is of another kind.

The labels and the liquid's surface are found by what this product is known to look like (paper of
a warm, bright colour; a liquid below glass), not by the audit under test: the validation set must
not share the method's blind spots. `label_boxes` and `fill_row` are checked on all 50 shared photos
(tests/instruct_data/test_logical_photos.py draws them).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image
from scipy import ndimage

KINDS: tuple[str, ...] = (
    "missing_top",
    "missing_bottom",
    "moved",
    "swapped",
    "rotated",
    "fill_low",
    "fill_high",
    "recoloured",
    "mismatch",
)
BACKGROUND_MAX = 0.12  # brightest channel of the black backdrop (0..1)


@dataclass(frozen=True)
class Bottle:
    """Where the product's parts are on one photo, in pixels of that photo."""

    box: tuple[int, int, int, int]  # bottle bounding box x0, y0, x1, y1
    top_label: tuple[int, int, int, int]
    bottom_label: tuple[int, int, int, int]
    fill: int  # row of the liquid's surface
    silhouette: np.ndarray  # HxW bool

    @property
    def height(self) -> int:
        return self.box[3] - self.box[1]


def _arr(image: Image.Image) -> np.ndarray:
    return np.asarray(image.convert("RGB"), dtype=np.float64) / 255.0


def _silhouette(px: np.ndarray) -> np.ndarray:
    fg = px.max(-1) > BACKGROUND_MAX
    fg = ndimage.binary_opening(fg, structure=np.ones((5, 5), bool))
    labels, n = ndimage.label(fg)
    if n == 0:
        raise ValueError("no bottle found: the photo is all backdrop")
    biggest = int(np.argmax(np.bincount(labels.ravel())[1:])) + 1
    return ndimage.binary_fill_holes(labels == biggest)


def _paper(px: np.ndarray) -> np.ndarray:
    """Label paper: warm and grainy (a liquid of the same colour is smooth); print and outlines are
    filled in afterwards."""
    r, b = px[..., 0], px[..., 2]
    grey = px.mean(-1)
    grain = ndimage.uniform_filter(np.abs(grey - ndimage.uniform_filter(grey, 3)), 15)
    return (r > 0.55) & (r - b > 0.2) & (grain > 0.0045)


def _run(profile: np.ndarray, threshold: float, around: int) -> tuple[int, int] | None:
    """The contiguous run of `profile >= threshold` nearest to index `around` (start, end exclusive)."""
    on = profile >= threshold
    labels, n = ndimage.label(on)
    if n == 0:
        return None
    best, best_d = None, None
    for k in range(1, n + 1):
        idx = np.nonzero(labels == k)[0]
        d = 0 if idx[0] <= around < idx[-1] + 1 else min(abs(idx[0] - around), abs(idx[-1] - around))
        if best_d is None or d < best_d or (d == best_d and len(idx) > best[1] - best[0]):
            best, best_d = (int(idx[0]), int(idx[-1]) + 1), d
    return best


def _label(px: np.ndarray, box: tuple[int, int, int, int], band: tuple[float, float]) -> tuple[int, int, int, int]:
    """The label in a band of the bottle's height: rows where the middle of the bottle is paper but its
    outer columns are not (a liquid of the paper's colour fills the whole width), then its columns."""
    x0, y0, x1, y1 = box
    h, w = y1 - y0, x1 - x0
    paper = ndimage.binary_fill_holes(ndimage.binary_closing(_paper(px), structure=np.ones((5, 5), bool)))
    r0, r1 = y0 + int(band[0] * h), y0 + int(band[1] * h)
    mid = paper[r0:r1, x0 + int(0.3 * w) : x1 - int(0.3 * w)].mean(1)
    outer = np.concatenate(
        [paper[r0:r1, x0 + int(0.02 * w) : x0 + int(0.08 * w)], paper[r0:r1, x1 - int(0.08 * w) : x1 - int(0.02 * w)]], 1
    ).mean(1)
    rows = _run(np.where(outer < 0.5, mid, 0.0), 0.5, (r1 - r0) // 2)
    if rows is None:
        raise ValueError("no label found in its band of the bottle")
    ly0, ly1 = r0 + rows[0], r0 + rows[1]
    cols = _run(paper[ly0:ly1, x0:x1].mean(0), 0.5, w // 2)
    if cols is None:
        raise ValueError("no label columns found")
    return x0 + cols[0], ly0, x0 + cols[1], ly1


def fill_row(px: np.ndarray, box: tuple[int, int, int, int], top_label_y: int) -> int:
    """Row of the liquid's surface, in the middle of the bottle between its neck and the top label.

    Each row's median colour there is called liquid when it is nearer the liquid's colour (the rows
    just above the top label, always under the surface on a good bottle) than the empty neck's (the
    rows just below the cap's threads); the surface is the top of the unbroken run of liquid rows that
    reaches down to the label (short breaks, a glint or the surface's foam, are closed first). A
    single strongest colour step is not enough: the neck's ring and the light on the shoulder are
    stronger steps than the surface of a dark liquid."""
    x0, y0, x1, y1 = box
    w, h = x1 - x0, y1 - y0
    rows = np.median(px[:, x0 + int(0.3 * w) : x1 - int(0.3 * w)], axis=1)
    lo, hi = y0 + int(0.12 * h), top_label_y - 10  # below the cap and its threads
    liquid = np.median(rows[max(lo, hi - int(0.15 * h)) : hi], axis=0)
    glass = np.median(rows[lo : lo + max(1, int(0.05 * h))], axis=0)
    seg = rows[lo:hi]
    like = np.linalg.norm(seg - liquid, axis=1) < np.linalg.norm(seg - glass, axis=1)
    like = ndimage.median_filter(like.astype(np.uint8), 9, mode="nearest") > 0
    empty = np.nonzero(~like)[0]
    return lo + (int(empty[-1]) + 1 if empty.size else 0)


def find_bottle(image: Image.Image) -> Bottle:
    """The bottle, its two labels and the liquid's surface on one photo."""
    px = _arr(image)
    sil = _silhouette(px)
    ys, xs = np.nonzero(sil)
    box = (int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1)
    top = _label(px, box, (0.33, 0.74))
    bottom = _label(px, box, (0.74, 0.98))
    return Bottle(box, top, bottom, fill_row(px, box, top[1]), sil)


# ---------------------------------------------------------------------------------------------- edits


def _grain(px: np.ndarray, box: tuple[int, int, int, int], rng: np.random.Generator) -> np.ndarray:
    """Noise with the strength of the photo's grain (from the high frequencies around the box)."""
    x0, y0, x1, y1 = box
    patch = px[max(0, y0 - 8) : y1 + 8, max(0, x0 - 8) : x1 + 8]
    hf = patch - ndimage.uniform_filter(patch, (3, 3, 1))
    sigma = float(np.clip(hf.std(), 0.003, 0.03))
    return rng.normal(0.0, sigma, (y1 - y0, x1 - x0, 3))


def fill_box(px: np.ndarray, box: tuple[int, int, int, int], rng: np.random.Generator, margin: int = 4) -> np.ndarray:
    """`px` with the box filled from what surrounds it: each column interpolated between the rows just
    above and just below (averaged over a few rows), plus grain."""
    out = px.copy()
    x0, y0, x1, y1 = box
    y0m, y1m = max(margin + 3, y0 - margin), min(px.shape[0] - margin - 3, y1 + margin)
    above = px[y0m - 3 : y0m].mean(0)[x0:x1]
    below = px[y1m : y1m + 3].mean(0)[x0:x1]
    t = ((np.arange(y0m, y1m) - y0m + 0.5) / (y1m - y0m))[:, None, None]
    fill = (1 - t) * above[None] + t * below[None]
    out[y0m:y1m, x0:x1] = np.clip(fill + _grain(px, (x0, y0m, x1, y1m), rng), 0, 1)
    return out


def _paste(dst: np.ndarray, patch: np.ndarray, alpha: np.ndarray, centre: tuple[float, float]) -> np.ndarray:
    h, w = patch.shape[:2]
    x0, y0 = int(round(centre[0] - w / 2)), int(round(centre[1] - h / 2))
    out = dst.copy()
    sy0, sx0 = max(0, -y0), max(0, -x0)
    dy0, dx0 = max(0, y0), max(0, x0)
    dy1, dx1 = min(dst.shape[0], y0 + h), min(dst.shape[1], x0 + w)
    if dy1 <= dy0 or dx1 <= dx0:
        return out
    p = patch[sy0 : sy0 + dy1 - dy0, sx0 : sx0 + dx1 - dx0]
    a = alpha[sy0 : sy0 + dy1 - dy0, sx0 : sx0 + dx1 - dx0, None]
    out[dy0:dy1, dx0:dx1] = a * p + (1 - a) * out[dy0:dy1, dx0:dx1]
    return out


def _box_mask(shape: tuple[int, int], box: tuple[int, int, int, int], pad: int = 3) -> np.ndarray:
    m = np.zeros(shape, bool)
    m[max(0, box[1] - pad) : box[3] + pad, max(0, box[0] - pad) : box[2] + pad] = True
    return m


def _centre(box: tuple[int, int, int, int]) -> tuple[float, float]:
    return (box[0] + box[2]) / 2, (box[1] + box[3]) / 2


def _cut(px: np.ndarray, box: tuple[int, int, int, int]) -> np.ndarray:
    return px[box[1] : box[3], box[0] : box[2]].copy()


def remove_label(px: np.ndarray, bottle: Bottle, which: str, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    box = bottle.top_label if which == "top" else bottle.bottom_label
    return fill_box(px, box, rng), _box_mask(px.shape[:2], box)


def move_label(px: np.ndarray, bottle: Bottle, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, str]:
    which = "top" if rng.random() < 0.6 else "bottom"
    box = bottle.top_label if which == "top" else bottle.bottom_label
    patch = _cut(px, box)
    out = fill_box(px, box, rng)
    h = bottle.height
    # the top label may go up or down; the bottom one only up (below it is the bottle's base)
    dy = (rng.choice([-1, 1]) * rng.uniform(0.07, 0.13) if which == "top" else -rng.uniform(0.06, 0.12)) * h
    dx = rng.uniform(-0.06, 0.06) * (bottle.box[2] - bottle.box[0])
    c = _centre(box)
    new = (c[0] + dx, c[1] + dy)
    out = _paste(out, patch, np.ones(patch.shape[:2]), new)
    nb = (int(new[0] - patch.shape[1] / 2), int(new[1] - patch.shape[0] / 2), 0, 0)
    nb = (nb[0], nb[1], nb[0] + patch.shape[1], nb[1] + patch.shape[0])
    return out, _box_mask(px.shape[:2], box) | _box_mask(px.shape[:2], nb), f"the {which} label moved by {dy / h:+.0%} of the bottle"


def swap_labels(px: np.ndarray, bottle: Bottle, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    top, bottom = _cut(px, bottle.top_label), _cut(px, bottle.bottom_label)
    out = fill_box(fill_box(px, bottle.top_label, rng), bottle.bottom_label, rng)
    out = _paste(out, bottom, np.ones(bottom.shape[:2]), _centre(bottle.top_label))
    out = _paste(out, top, np.ones(top.shape[:2]), _centre(bottle.bottom_label))
    shape = px.shape[:2]
    return out, _box_mask(shape, bottle.top_label) | _box_mask(shape, bottle.bottom_label)


def rotate_label(px: np.ndarray, bottle: Bottle, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, str]:
    which = "top" if rng.random() < 0.6 else "bottom"
    box = bottle.top_label if which == "top" else bottle.bottom_label
    angle = float(rng.choice([-1, 1]) * rng.uniform(8, 30))
    patch = _cut(px, box)
    img = Image.fromarray((patch * 255).astype(np.uint8)).rotate(angle, Image.BILINEAR, expand=True)
    alpha = Image.fromarray(np.full(patch.shape[:2], 255, np.uint8)).rotate(angle, Image.BILINEAR, expand=True)
    out = fill_box(px, box, rng)
    out = _paste(out, np.asarray(img, np.float64) / 255, np.asarray(alpha, np.float64) / 255, _centre(box))
    grow = (img.size[0] - patch.shape[1]) // 2 + 2
    return out, _box_mask(px.shape[:2], box, pad=grow), f"the {which} label turned by {angle:.0f} degrees"


def change_fill(px: np.ndarray, bottle: Bottle, rng: np.random.Generator, lower: bool) -> tuple[np.ndarray, np.ndarray, str]:
    """The surface moved by 6-15 % of the bottle's height (down: empty glass rows repeated; up: the
    liquid's top rows repeated), inside the silhouette."""
    h = bottle.height
    shift = int(rng.uniform(0.06, 0.15) * h)
    f = bottle.fill
    out = px.copy()
    sil = bottle.silhouette
    x0, _, x1, _ = bottle.box
    if lower:
        stop = min(f + shift, bottle.top_label[1] - 6)
        band = max(6, int(0.02 * h))
        for y in range(f - 2, stop):
            src = f - 4 - ((y - f + 2) % band)
            row = sil[y, x0:x1]
            out[y, x0:x1][row] = px[src, x0:x1][row]
        # the surface's bright line travels down with it
        for k in range(6):
            if stop - 3 + k < bottle.top_label[1] - 2 and f - 3 + k >= 0:
                row = sil[stop - 3 + k, x0:x1]
                out[stop - 3 + k, x0:x1][row] = px[f - 3 + k, x0:x1][row]
        mask_rows = (max(0, f - 4), stop + 4)
        words = f"the liquid {(stop - f) / h:.0%} of the bottle lower than it should be"
    else:
        start = max(bottle.box[1] + int(0.04 * h), f - shift)
        for y in range(start, f + 4):
            src = y + (f - start)
            row = sil[y, x0:x1] & sil[src, x0:x1]
            out[y, x0:x1][row] = px[src, x0:x1][row]
        mask_rows = (start - 4, f + 4)
        words = f"the liquid {(f - start) / h:.0%} of the bottle higher than it should be"
    mask = np.zeros(px.shape[:2], bool)
    mask[mask_rows[0] : mask_rows[1]] = True
    return out, mask & sil, words


def liquid_mask(px: np.ndarray, bottle: Bottle) -> np.ndarray:
    """The liquid: inside the silhouette, below the surface, outside the labels, away from the rim."""
    m = bottle.silhouette.copy()
    m[: bottle.fill] = False
    for b in (bottle.top_label, bottle.bottom_label):
        m[b[1] : b[3], b[0] : b[2]] = False
    m = ndimage.binary_erosion(m, structure=np.ones((5, 5), bool), iterations=2)
    return m & (px.max(-1) > 0.08)


def _hsv_to_rgb(h: np.ndarray, s: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Vectorized `colorsys.hsv_to_rgb` (N,) x3 -> (N, 3)."""
    i = np.floor(h * 6.0).astype(np.int64) % 6
    f = h * 6.0 - np.floor(h * 6.0)
    p, q, t = v * (1 - s), v * (1 - s * f), v * (1 - s * (1 - f))
    table = np.stack([np.stack(c, -1) for c in ((v, t, p), (q, v, p), (p, v, t), (p, q, v), (t, p, v), (v, p, q))])
    return table[i, np.arange(len(h))]


def recolour_liquid(px: np.ndarray, bottle: Bottle, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, str]:
    names = {"green": 0.33, "blue": 0.6, "purple": 0.78}
    name = str(rng.choice(list(names)))
    mask = liquid_mask(px, bottle)
    out = px.copy()
    sel = out[mask]
    value = sel.max(-1)
    sat = np.clip(np.maximum(1.0 - sel.min(-1) / np.maximum(value, 1e-6), 0.35) * rng.uniform(0.9, 1.2), 0, 1)
    hue = names[name] + rng.uniform(-0.03, 0.03)
    out[mask] = _hsv_to_rgb(np.full(len(sel), hue), sat, value)
    soft = ndimage.gaussian_filter(mask.astype(float), 1.5)[..., None]
    out = soft * out + (1 - soft) * px
    return out, mask, f"the liquid recoloured {name}"


def swap_top_label(px: np.ndarray, bottle: Bottle, donor_px: np.ndarray, donor: Bottle) -> tuple[np.ndarray, np.ndarray]:
    """The top label replaced by `donor`'s (resized to this label's box)."""
    patch = _cut(donor_px, donor.top_label)
    x0, y0, x1, y1 = bottle.top_label
    img = Image.fromarray((patch * 255).astype(np.uint8)).resize((x1 - x0, y1 - y0), Image.BILINEAR)
    out = px.copy()
    out[y0:y1, x0:x1] = np.asarray(img, np.float64) / 255
    return out, _box_mask(px.shape[:2], bottle.top_label)


def liquid_kind(px: np.ndarray, bottle: Bottle) -> tuple[float, float, float]:
    """Median colour of the liquid (what tells its kind)."""
    med = np.median(px[liquid_mask(px, bottle)], axis=0)
    return float(med[0]), float(med[1]), float(med[2])


# ---------------------------------------------------------------------------------------------- the set


def _save(px: np.ndarray, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray((np.clip(px, 0, 1) * 255).round().astype(np.uint8)).save(path, compress_level=1)


def write_logical_photo_set(
    photos: Sequence[str | Path], out: str | Path, kinds: Sequence[str] = KINDS, seed: int = 0
) -> dict[str, dict]:
    """Write `good/<name>.png` (the photos themselves) and `<kind>/<name>.png` (one edit of every photo
    per kind, with `ground_truth/<kind>/<name>_mask.png`) under `out`; return and write `labels.json`
    {relative path: {label, kind, description}}. Photos whose labels cannot be found are skipped (and
    listed under the key "skipped")."""
    root = Path(out)
    rng = np.random.default_rng(seed)
    bad = [k for k in kinds if k not in KINDS]
    if bad:
        raise ValueError(f"unknown kind(s) {bad}; choose from {', '.join(KINDS)}")
    loaded: list[tuple[str, np.ndarray, Bottle]] = []
    skipped: list[str] = []
    for p in photos:
        path = Path(p)
        with Image.open(path) as im:
            px = _arr(im)
        try:
            loaded.append((path.stem, px, find_bottle(Image.fromarray((px * 255).astype(np.uint8)))))
        except ValueError as err:
            skipped.append(f"{path.name}: {err}")
    kinds_of = [liquid_kind(px, b) for _, px, b in loaded]
    labels: dict[str, dict] = {}
    for i, (name, px, bottle) in enumerate(loaded):
        _save(px, root / "good" / f"{name}.png")
        labels[f"good/{name}.png"] = {"label": 0, "kind": "good", "description": "a good bottle"}
        for kind in kinds:
            words = kind.replace("_", " ")
            if kind in ("missing_top", "missing_bottom"):
                which = kind.split("_")[1]
                edited, mask = remove_label(px, bottle, which, rng)
                words = f"the {which} label is missing"
            elif kind == "moved":
                edited, mask, words = move_label(px, bottle, rng)
            elif kind == "swapped":
                edited, mask = swap_labels(px, bottle, rng)
                words = "the two labels swapped"
            elif kind == "rotated":
                edited, mask, words = rotate_label(px, bottle, rng)
            elif kind in ("fill_low", "fill_high"):
                edited, mask, words = change_fill(px, bottle, rng, lower=kind == "fill_low")
            elif kind == "recoloured":
                edited, mask, words = recolour_liquid(px, bottle, rng)
            else:  # mismatch: a top label from a photo whose liquid is of another kind
                others = [j for j in range(len(loaded)) if np.linalg.norm(np.subtract(kinds_of[j], kinds_of[i])) > 0.15]
                if not others:
                    continue
                j = int(rng.choice(others))
                edited, mask = swap_top_label(px, bottle, loaded[j][1], loaded[j][2])
                words = f"a top label from {loaded[j][0]} (another kind of liquid)"
            rel = f"{kind}/{name}.png"
            _save(edited, root / rel)
            m = root / "ground_truth" / kind / f"{name}_mask.png"
            m.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(mask.astype(np.uint8) * 255).save(m)
            labels[rel] = {"label": 1, "kind": kind, "description": words, "mask": str(m.relative_to(root))}
    labels_out = dict(labels)
    if skipped:
        labels_out["skipped"] = skipped  # type: ignore[assignment]
    (root / "labels.json").write_text(json.dumps(labels_out, indent=1), encoding="utf-8")
    return labels


__all__ = [
    "KINDS",
    "Bottle",
    "fill_box",
    "fill_row",
    "find_bottle",
    "liquid_kind",
    "liquid_mask",
    "write_logical_photo_set",
]
