"""Before/after pictures of the overlay (docs/overlays/): the demo case and a real magnetic tile.

"Before" is the overlay as it was drawn until issue 25 (a jet colour map blended at 0.45 over the
whole image, the predicted outline in green, no numbers, no legend), redrawn here from the same
record; "after" is `agent.outputs.record_overlay`, what `inspect`, `report` and `serve` write now.

    python -m evals.overlay_pictures --tile ../shared/data/magnetic_tile --out docs/overlays
"""

from __future__ import annotations

import argparse
import random
import sys
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

LABEL_HEIGHT = 22


def old_overlay(record, image: Image.Image) -> Image.Image:
    """The overlay as drawn before issue 25: jet over everything at 0.45, a green inner outline."""
    from tools.image_io import image_to_array
    from tools.overlay import _resize_map, inner_outline, jet_colormap

    rgb = image_to_array(image.convert("RGB"))
    h, w = rgb.shape[:2]
    norm = _resize_map(np.clip(np.nan_to_num(np.asarray(record.anomaly_map, np.float64)), 0, 1), (w, h))
    out = np.clip(np.rint((0.55 * rgb + 0.45 * jet_colormap(norm)) * 255), 0, 255).astype(np.uint8)
    if record.pred_mask is not None:
        out[inner_outline(np.asarray(record.pred_mask, bool))] = (0, 255, 0)
    return Image.fromarray(out)


def side_by_side(before: Image.Image, after: Image.Image, scale: float) -> Image.Image:
    from tools.overlay import _font

    size = (round(before.width * scale), round(before.height * scale))
    pair = Image.new("RGB", (2 * size[0] + 8, size[1] + LABEL_HEIGHT), "white")
    draw = ImageDraw.Draw(pair)
    font = _font(14)
    for i, (pic, label) in enumerate(((before, "before"), (after, "after"))):
        pair.paste(pic.resize(size, Image.Resampling.LANCZOS), (i * (size[0] + 8), LABEL_HEIGHT))
        draw.text((i * (size[0] + 8) + 4, 3), label, font=font, fill=(0, 0, 0))
    return pair


def main(argv: list[str] | None = None) -> int:
    from agent.brains.rule import RuleBrain
    from agent.inspection import InspectionSettings, Pipeline
    from agent.outputs import record_overlay
    from instruct_data.synthesis.demo_case import make_demo_case
    from tools.image_io import list_images, load_image, load_mask

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--tile", type=Path, help="the magnetic-tile root (MVTec layout)")
    p.add_argument("--defect", default="blowhole", help="defect folder of the tile image (default blowhole)")
    p.add_argument("--index", type=int, default=0, help="which image of that folder (sorted), default 0")
    p.add_argument("--out", type=Path, default=Path("docs/overlays"))
    args = p.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)

    work = args.out / ".case"
    case = make_demo_case(work, n_references=4, seed=0)  # the README's `looktwice demo`
    pipeline = Pipeline(brain=RuleBrain(), warn=lambda m: None).fit([load_image(r) for r in case.references])
    for query in case.queries:
        image = load_image(query)
        record = pipeline.inspect(str(query), image)
        name = f"demo_{Path(query).stem.replace('plate_', '')}.png"
        side_by_side(old_overlay(record, image), record_overlay(record, image), 1.5).save(args.out / name)
        print(f"{name}: {record.explanation}")
    for f in work.rglob("*"):
        if f.is_file():
            f.unlink()
    for d in sorted(work.rglob("*"), reverse=True):
        d.rmdir()
    work.rmdir()

    if args.tile is not None:
        refs = random.Random(0).sample(list_images(args.tile / "train" / "good"), 4)
        tiles = Pipeline(InspectionSettings(detector="refmatch"), brain=RuleBrain(), warn=lambda m: None)
        tiles.fit([load_image(r) for r in refs])
        path = list_images(args.tile / "test" / args.defect)[args.index]
        image = load_image(path)
        record = tiles.inspect(str(path), image)
        gt = args.tile / "ground_truth" / args.defect / f"{path.stem}_mask.png"
        if gt.exists():
            record.gt_mask = load_mask(gt)
        scale = max(1.0, 320 / max(image.size))
        name = f"tile_{args.defect}.png"
        side_by_side(old_overlay(record, image), record_overlay(record, image), scale).save(args.out / name)
        print(f"{name} ({path.name}): {record.explanation}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
