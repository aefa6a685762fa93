"""Validation sets for choosing detector settings honestly: good images plus synthetic defects.

Settings chosen on a test split flatter that split. A validation set here is built only from good
images the test split never sees (held back from a data set's `train/good`, or drawn procedurally by
`products`), with defects of several kinds pasted in by `anomalies` (each with its mask), and is
written in the MVTec layout so `looktwice eval --data ROOT --category NAME` reads it unchanged.

Decisions, and why:
- The defect kinds used here (`VALIDATION_KINDS`) are disjoint from the ones the learned head trains
  on (`tools`-side synthesis uses CutPaste and Perlin blends), so validation does not reward a head
  for recognising its own training defects.
- Real defects are often faint: each edit is blended back towards the clean image with a random
  strength in [0.5, 1], and an edit that changes the image by less than 2 grey levels inside its mask
  is drawn again (an invisible "defect" is label noise).
- A grey product stays grey: when the source is grey, the edited image is converted back to grey.
- Every image is written as PNG, good and defective alike, so the file format is no cue.
"""

from __future__ import annotations

import argparse
import random
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
from PIL import Image

from instruct_data.synthesis.layout import SetCounts

#: Defect kinds of validation sets (disjoint from the learned head's training synthesis).
VALIDATION_KINDS: tuple[str, ...] = ("crack", "hole", "scratch", "spots", "stain", "missing", "blur", "smear")
#: Products drawn procedurally (see `instruct_data.synthesis.products`).
PROCEDURAL = ("weave", "bracket")


def _to_uint8(rgb: np.ndarray) -> np.ndarray:
    return (np.clip(rgb, 0, 1) * 255).round().astype(np.uint8)


def _is_grey(image: np.ndarray) -> bool:
    return image.ndim == 2 or bool(np.all(image[..., 0] == image[..., 1]) and np.all(image[..., 1] == image[..., 2]))


def _synthesize_small(rgb: np.ndarray, kind: str, rng: np.random.Generator, scale: float) -> tuple[np.ndarray, np.ndarray]:
    """One defect drawn inside a random crop of `scale` times the image's sides, pasted back: the
    defect is `scale`^2 times as small a share of the image (small pits on a large part)."""
    from instruct_data.synthesis.anomalies import synthesize

    if scale >= 1.0:
        result = synthesize(rgb, kind, rng)
        return result.image, result.mask
    h, w = rgb.shape[:2]
    ch, cw = max(8, round(h * scale)), max(8, round(w * scale))
    y0, x0 = int(rng.integers(0, h - ch + 1)), int(rng.integers(0, w - cw + 1))
    result = synthesize(rgb[y0 : y0 + ch, x0 : x0 + cw], kind, rng)
    image, mask = rgb.copy(), np.zeros((h, w), bool)
    image[y0 : y0 + ch, x0 : x0 + cw] = result.image
    mask[y0 : y0 + ch, x0 : x0 + cw] = result.mask
    return image, mask


def faint_defect(
    clean: np.ndarray, kind: str, rng: np.random.Generator, min_change: float = 2.0, tries: int = 10,
    scale: float = 1.0,
) -> tuple[np.ndarray, np.ndarray]:
    """`clean` (uint8 HxW or HxWx3) with one defect of `kind` at a random strength, and its mask;
    `scale` < 1 draws it in a crop of that share of the sides (a smaller defect)."""
    from instruct_data.synthesis.anomalies import as_rgb_uint8

    grey = _is_grey(clean)
    rgb = as_rgb_uint8(clean)
    best: tuple[float, np.ndarray, np.ndarray] | None = None
    for _ in range(tries):
        drawn, drawn_mask = _synthesize_small(rgb, kind, rng, scale)
        strength = rng.uniform(0.5, 1.0)
        edited = rgb.astype(np.float64) + strength * (drawn.astype(np.float64) - rgb)
        out = np.clip(np.rint(edited), 0, 255).astype(np.uint8)
        if grey:
            out = np.asarray(Image.fromarray(out).convert("L"))
        before = np.asarray(Image.fromarray(rgb).convert("L"), dtype=np.float64)
        after = out if grey else np.asarray(Image.fromarray(out).convert("L"))
        change = float(np.abs(after.astype(np.float64) - before)[drawn_mask].mean())
        if change >= min_change:
            return out, drawn_mask
        if best is None or change > best[0]:
            best = (change, out, drawn_mask)
    assert best is not None
    return best[1], best[2]


def _save(image: np.ndarray, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(image).save(path)


def _write_set(
    root: Path,
    goods: Callable[[int], np.ndarray],
    train_good: int,
    test_good: int,
    test_bad: int,
    kinds: Sequence[str],
    seed: int,
    progress: Callable[[int], None] | None,
    defect_scale: float = 1.0,
    edit: Callable[[np.ndarray, str, np.random.Generator], tuple[np.ndarray, np.ndarray]] | None = None,
) -> SetCounts:
    """`goods(i)` gives the i-th clean good image; the first `train_good` are the reference pool, the
    next `test_good` the good test images, the rest receive one defect each (kinds cycled), drawn at
    `defect_scale` (see `faint_defect`), or by `edit(image, kind, rng)` when given."""
    counts = SetCounts(root=root)
    for i in range(train_good + test_good + test_bad):
        image = goods(i)
        if i < train_good:
            _save(image, root / "train" / "good" / f"{i:04d}.png")
            counts.train_good += 1
        elif i < train_good + test_good:
            _save(image, root / "test" / "good" / f"{i:04d}.png")
            counts.test_good += 1
        else:
            j = i - train_good - test_good
            kind = kinds[j % len(kinds)]
            rng = np.random.default_rng([seed, 7, j])
            defective, mask = edit(image, kind, rng) if edit else faint_defect(image, kind, rng, scale=defect_scale)
            _save(defective, root / "test" / kind / f"{i:04d}.png")
            _save(mask.astype(np.uint8) * 255, root / "ground_truth" / kind / f"{i:04d}_mask.png")
            counts.test_bad[kind] = counts.test_bad.get(kind, 0) + 1
        if progress:
            progress(1)
    return counts


def make_procedural_set(
    root: str | Path,
    product: str,
    train_good: int = 40,
    test_good: int = 100,
    test_bad: int = 100,
    size: int = 256,
    kinds: Sequence[str] = VALIDATION_KINDS,
    seed: int = 0,
    progress: Callable[[int], None] | None = None,
    whole_image: bool = False,
) -> SetCounts:
    """A validation set of a procedural product (`weave` or `bracket`) under `root/<product>` (with
    `whole_image`: `root/<product>_global`, whole-image changes instead of local defects)."""
    from instruct_data.synthesis.global_changes import VALIDATION_CHANGES
    from instruct_data.synthesis.products import PRODUCTS

    if product not in PRODUCTS:
        raise ValueError(f"unknown product {product!r}; available: {', '.join(PRODUCTS)}")
    draw = PRODUCTS[product]
    return _write_set(
        Path(root) / (product + "_global" if whole_image else product),
        lambda i: _to_uint8(draw(np.random.default_rng([seed, 11, i]), size)),
        train_good, test_good, test_bad, VALIDATION_CHANGES if whole_image else kinds, seed, progress,
        edit=whole_image_change if whole_image else None,
    )


def make_held_out_set(
    root: str | Path,
    good_images: Sequence[str | Path],
    name: str,
    train_good: int = 120,
    test_good: int | None = None,
    kinds: Sequence[str] = VALIDATION_KINDS,
    seed: int = 0,
    progress: Callable[[int], None] | None = None,
    defect_scale: float = 1.0,
    whole_image: bool = False,
) -> SetCounts:
    """A validation set from real good images (e.g. a data set's `train/good`), shuffled with `seed`:
    `train_good` become the reference pool, half of the rest stay good, the other half get a defect
    (drawn at `defect_scale`, see `faint_defect`), or, with `whole_image`, a change of the whole image
    (`global_changes`: colour, density, defocus, grain)."""
    from tools.image_io import load_image

    paths = sorted(Path(p) for p in good_images)
    random.Random(seed).shuffle(paths)
    rest = len(paths) - train_good
    if rest < 2:
        raise ValueError(f"{len(paths)} good images are too few for a reference pool of {train_good}")
    n_good = rest // 2 if test_good is None else min(test_good, rest)

    def load(i: int) -> np.ndarray:
        image = load_image(paths[i])
        arr = np.asarray(image)
        return arr[..., 0].copy() if _is_grey(arr) else arr

    if whole_image:
        from instruct_data.synthesis.global_changes import VALIDATION_CHANGES

        return _write_set(Path(root) / name, load, train_good, n_good, rest - n_good, VALIDATION_CHANGES, seed,
                          progress, edit=whole_image_change)
    return _write_set(Path(root) / name, load, train_good, n_good, rest - n_good, kinds, seed, progress, defect_scale)


def whole_image_change(clean: np.ndarray, kind: str, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """`clean` with the whole-image change `kind` (a grey product stays grey), and its (full) mask."""
    from instruct_data.synthesis.anomalies import as_rgb_uint8
    from instruct_data.synthesis.global_changes import change

    result = change(as_rgb_uint8(clean), kind, rng)
    out = np.asarray(Image.fromarray(result.image).convert("L")) if _is_grey(clean) else result.image
    return out, result.mask


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        description="Write validation sets (good images + synthetic defects, MVTec layout) for choosing settings.",
        epilog="example:\n  python -m instruct_data.synthesis.validation --out val/ "
        "--held-out ../shared/data/magnetic_tile/train/good --name magnetic_tile\n"
        "  python -m instruct_data.synthesis.validation --out val/ --products --held-out "
        "../shared/data/ball_screw/train/good --name ball_screw --train-good 20 --defect-scale 0.5",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--out", required=True, help="root folder; one category folder per product")
    p.add_argument("--products", nargs="*", default=list(PROCEDURAL), help=f"procedural products ({', '.join(PROCEDURAL)})")
    p.add_argument("--held-out", help="folder of real good images the test split never sees (e.g. train/good)")
    p.add_argument("--name", default="held_out", help="category name of the --held-out set")
    p.add_argument("--train-good", type=int, default=120, help="reference pool of the --held-out set")
    p.add_argument("--whole-image", action="store_true",
                   help="anomalies change the whole image (colour, density, defocus, grain); procedural sets "
                   "are named <product>_global")
    p.add_argument("--defect-scale", type=float, default=1.0,
                   help="draw each defect of the --held-out set in a crop of this share of the sides (0.5: "
                   "a quarter of the area; small defects on large images)")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    from tqdm import tqdm

    from tools.image_io import list_images

    with tqdm(desc="validation sets", unit="img") as bar:
        for product in args.products:
            c = make_procedural_set(args.out, product, seed=args.seed, progress=bar.update, whole_image=args.whole_image)
            bar.write(f"{c.root}: {c.train_good} reference pool, {c.test_good} good, {sum(c.test_bad.values())} defective")
        if args.held_out:
            goods = list_images(Path(args.held_out), recursive=True)
            c = make_held_out_set(args.out, goods, args.name, args.train_good, seed=args.seed, progress=bar.update,
                                  defect_scale=args.defect_scale, whole_image=args.whole_image)
            bar.write(f"{c.root}: {c.train_good} reference pool, {c.test_good} good, {sum(c.test_bad.values())} defective")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
