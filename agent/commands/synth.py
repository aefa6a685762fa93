"""`looktwice synth --images DIR --out DIR [--kinds ...] [--per-image N] [--seed S] [--contact-sheet PNG]`.

Wire it into the main parser with `add_parser(subparsers)`; `python -m agent.commands.synth ...` runs
the same command on its own. Heavy modules are imported only when the command runs.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

DESCRIPTION = """\
Synthesize anomalies on good images: for every image in --images, --per-image copies with a random
kind (from --kinds, default all) each. Writes <out>/images/<stem>_<n>_<kind>.png, the defect mask
<out>/masks/<stem>_<n>_<kind>.png (0 = good, 255 = defect) and one JSON line per sample in
<out>/descriptions.jsonl (image, mask, source, kind, description: type, location, size, appearance).
The same --seed gives the same files. --contact-sheet also writes a grid PNG of originals and
results with the masks outlined, to look at. Exit codes: 0 all done, 1 some images could not be read
(the rest are done), 2 usage errors."""


def add_parser(sub: argparse._SubParsersAction) -> None:
    """Add the `synth` sub-command to `sub` (the object `add_subparsers()` returned)."""
    from agent.commands import with_examples

    p = sub.add_parser(
        "synth",
        help="synthesize anomalies (cutpaste, perlin, scratch, stain, hole, blur, ...) with masks and descriptions",
        **with_examples(
            DESCRIPTION,
            [
                "looktwice data synth --images good_parts/ --out synth/ --per-image 4 --contact-sheet synth/sheet.png",
                "looktwice data synth --images good_parts/ --out synth/ --kinds scratch,stain --seed 1",
            ],
        ),
    )
    p.add_argument("--images", required=True, help="folder of good images (searched recursively)")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument(
        "--kinds",
        nargs="+",
        metavar="KIND",
        help="anomaly kinds to draw from (space- or comma-separated; default all registered kinds)",
    )
    p.add_argument("--per-image", type=int, default=1, help="synthesized samples per image (default 1)")
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    p.add_argument("--contact-sheet", metavar="PNG", help="also write a contact sheet PNG here")
    p.add_argument("--sheet-max-rows", type=int, default=20, help="at most this many images on the sheet")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_synth)


def _parse_kinds(values: list[str] | None) -> list[str]:
    if not values:
        return []
    return [k.strip() for v in values for k in v.split(",") if k.strip()]


def cmd_synth(args: argparse.Namespace) -> int:
    """Run the command from parsed arguments; returns the exit code."""
    import json

    import numpy as np
    from PIL import Image

    from agent.console import EXIT_OK, EXIT_SOME_FAILED, info_line, usage_error
    from agent.progress import bar_writer, progress_bar
    from instruct_data.synthesis.anomalies import ANOMALIES, synthesize_random
    from instruct_data.synthesis.contact_sheet import Tile, save_contact_sheet
    from tools.image_io import ImageLoadError, list_images, load_image
    from tools.overlay import save_mask_png

    kinds = _parse_kinds(args.kinds)
    unknown = [k for k in kinds if k not in ANOMALIES]
    if unknown:
        return usage_error(f"unknown anomaly kind(s) {', '.join(unknown)}; available: {', '.join(ANOMALIES.names())}")
    if args.per_image < 1:
        return usage_error("--per-image must be at least 1")
    try:
        paths = list_images(args.images, recursive=True)
    except (FileNotFoundError, NotADirectoryError) as e:
        return usage_error(e)
    if not paths:
        return usage_error(f"no images found in '{args.images}'")

    out = Path(args.out)
    (out / "images").mkdir(parents=True, exist_ok=True)
    (out / "masks").mkdir(parents=True, exist_ok=True)
    root = Path(args.images)
    failed = 0
    written = 0
    sheet_rows: list[list[Tile]] = []
    with open(out / "descriptions.jsonl", "w", encoding="utf-8") as jf, progress_bar(
        len(paths), "synth", not args.quiet
    ) as bar:
        say = bar_writer(bar)
        for index, path in enumerate(paths):
            bar.update(1)
            try:
                image = np.asarray(load_image(path, mode="RGB"))
            except ImageLoadError as e:
                say(f"looktwice: error: {e}")
                failed += 1
                continue
            rel = path.relative_to(root)
            stem = "_".join(rel.with_suffix("").parts)
            row = [Tile(image, f"original {rel}")]
            for n in range(args.per_image):
                rng = np.random.default_rng([args.seed, index, n])  # one stream per sample: reproducible
                result = synthesize_random(image, rng, kinds or None)
                kind = result.description["type"]
                name = f"{stem}_{n}_{kind}.png"
                Image.fromarray(result.image).save(out / "images" / name, format="PNG")
                save_mask_png(out / "masks" / name, result.mask)
                record = {
                    "image": f"images/{name}",
                    "mask": f"masks/{name}",
                    "source": str(path),
                    "kind": kind,
                    "seed": [args.seed, index, n],
                    "description": result.description,
                }
                jf.write(json.dumps(record) + "\n")
                written += 1
                if len(sheet_rows) < args.sheet_max_rows:
                    row.append(Tile(result.image, f"{kind} {result.description['location']}", result.mask))
            if args.contact_sheet and len(sheet_rows) < args.sheet_max_rows:
                sheet_rows.append(row)
    if args.contact_sheet and sheet_rows:
        info_line(f"contact sheet: {save_contact_sheet(args.contact_sheet, sheet_rows)}")
    info_line(f"synthesized {written} anomalies from {len(paths) - failed} images into '{out}'")
    return EXIT_OK if failed == 0 else EXIT_SOME_FAILED


def main(argv: list[str] | None = None) -> int:
    """`python -m agent.commands.synth ...` (the `synth` word is optional)."""
    from agent.commands import run_standalone

    return run_standalone("synth", add_parser, argv)


if __name__ == "__main__":
    sys.exit(main())
