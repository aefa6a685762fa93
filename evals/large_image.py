"""Write a very large brushed-steel JPEG with a dark scratch (default 10000 x 10000 = 100 MP) and good
references, to measure `inspect` on large images (BENCHMARKS.md, "Very large images"):

    python -m evals.large_image --out /tmp/lt-big                    # query/ and refs_small/ (1000 px)
    python -m evals.large_image --out /tmp/lt-big --big-refs         # also refs_big/ (4 x 100 MP)
    /usr/bin/time -v looktwice inspect /tmp/lt-big/query/big_scratch.jpg --refs /tmp/lt-big/refs_small
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw


def plate(side: int, seed: int, scratch: bool) -> Image.Image:
    """A grey plate brushed along x (row stripes), a slow gradient, fine noise; optionally a scratch."""
    rng = np.random.default_rng(seed)
    rows = np.convolve(rng.normal(0, 1, side), np.ones(9) / 9, mode="same").astype(np.float32)[:, None]
    x = np.linspace(0, 1, side, dtype=np.float32)[None, :]
    img = 150 + 12 * rows + 10 * x + rng.normal(0, 3, (side, side)).astype(np.float32)
    im = Image.fromarray(np.clip(img, 0, 255).astype(np.uint8), "L").convert("RGB")
    if scratch:
        ImageDraw.Draw(im).line(
            [(side * 0.3, side * 0.3), (side * 0.45, side * 0.42)], fill=(60, 60, 60), width=max(3, side // 300)
        )
    return im


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", required=True, help="folder to write query/, refs_small/ (and refs_big/) into")
    ap.add_argument("--side", type=int, default=10000, help="side of the query (and big references) in px")
    ap.add_argument("--big-refs", action="store_true", help="also four references of the query's size")
    args = ap.parse_args(argv)
    out = Path(args.out)
    for sub in ("query", "refs_small") + (("refs_big",) if args.big_refs else ()):
        (out / sub).mkdir(parents=True, exist_ok=True)
    plate(args.side, 99, True).save(out / "query" / "big_scratch.jpg", quality=90)
    for i in range(4):
        plate(1000, i, False).save(out / "refs_small" / f"ref{i}.jpg", quality=90)
        if args.big_refs:
            plate(args.side, i, False).save(out / "refs_big" / f"ref{i}.jpg", quality=90)
    print(f"wrote {out}/query/big_scratch.jpg ({args.side}x{args.side}) and the references")


if __name__ == "__main__":
    main()
