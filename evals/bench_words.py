"""Do the rule brain's defect words name the real defect types? A word-vs-folder confusion table.

For every defect image of an MVTec-layout data set (`test/<defect>/`), the pipeline inspects it as
`looktwice inspect` does with K good references (references mode), and the word of its first mark
(`Region.kind`, from measured shape and tone: `tools.regions.defect_word`) is counted against the
folder it came from. A part the pipeline passed is counted by the word of its most suspicious place;
no place at all is "(none)". The words a folder should get (`EXPECTED`) are the ones a person would
use for it: blowhole -> hole, break -> broken area, crack -> crack, fray -> fray, uneven -> uneven
surface, pitting -> hole (a pit is a small cavity).

    python -m evals.bench_words --data ../shared/data/magnetic_tile --data ../shared/data/ball_screw \\
        --shots 4 --seed 0 --dump words-measured.json --json words.json

Each folder's images are split in two seeded halves: the rules' thresholds are chosen on the
"validation" half; the "test" half is reported, over all images and over those whose first mark
overlaps the ground truth (a word on the wrong place measures the detector, not the words). Prints one markdown table per data set and half (rows:
folders, columns: words) and the share of images whose word is the expected one. `--dump` keeps every
image's measurements, so `--from-dump` re-scores changed rules without inspecting again.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

#: the word(s) a person would use for each real defect folder
EXPECTED: dict[str, tuple[str, ...]] = {
    "blowhole": ("hole",),
    "break": ("broken area",),
    "crack": ("crack",),
    "fray": ("fray",),
    "uneven": ("uneven surface",),
    "pitting": ("hole",),
}
NONE = "(none)"


def first_place(record: Any) -> Any:
    """The record's first mark, else its most suspicious place, else None."""
    return record.regions[0] if record.regions else record.suspicious_place


def word_of(region: Any) -> str:
    from tools.regions import defect_word

    if region is None:
        return NONE
    return defect_word(region) if region.kind else (region.shape or NONE)


def splits(paths: list[Path], seed: int) -> dict[Path, str]:
    """Each folder's images in two seeded halves: 'validation' (rules chosen on it) and 'test'."""
    order = list(paths)
    random.Random(seed).shuffle(order)
    half = (len(order) + 1) // 2
    return {p: "validation" if i < half else "test" for i, p in enumerate(order)}


def measure(data: Path, shots: int, seed: int, limit: int | None = None) -> list[dict[str, Any]]:
    """Inspect every defect image; one row per image: folder, split, and its first place's measurements."""
    from agent.brains.rule import RuleBrain
    from agent.inspection import InspectionSettings, Pipeline
    from tools.image_io import list_images, load_image

    good = list_images(data / "train" / "good")
    refs = random.Random(seed).sample(good, shots)
    pipeline = Pipeline(InspectionSettings(detector="refmatch"), brain=RuleBrain(), warn=lambda m: None)
    pipeline.fit([load_image(p) for p in refs])
    rows = []
    for folder in sorted(p for p in (data / "test").iterdir() if p.is_dir() and p.name != "good"):
        paths = list_images(folder)
        if limit:
            paths = sorted(random.Random(seed).sample(paths, min(limit, len(paths))))
        half = splits(paths, seed)
        for path in paths:
            place = first_place(pipeline.inspect(str(path)))
            rows.append({"data": data.name, "folder": folder.name, "split": half[path], "path": str(path),
                         "region": None if place is None else place.to_dict()})
        print(f"{data.name}/{folder.name}: {len(paths)} images", file=sys.stderr, flush=True)
    return rows


def on_defect(row: dict[str, Any]) -> bool | None:
    """Whether the image's first place overlaps its ground-truth mask (None: no mask): a wrong word on
    the wrong place says nothing about the words, only about where the detector looked."""
    from tools.image_io import load_mask

    if row["region"] is None:
        return False
    path = Path(row["path"])
    mask_path = path.parents[2] / "ground_truth" / row["folder"] / f"{path.stem}_mask.png"
    if not mask_path.exists():
        return None
    x0, y0, x1, y1 = row["region"]["bbox"]
    return bool(load_mask(mask_path)[y0:y1, x0:x1].any())


def tables(rows: list[dict[str, Any]], split: str | None = None, placed: bool = False) -> dict[str, Any]:
    """Per data set: the word-vs-folder counts and the share of expected words, over `split` (or all);
    with `placed`, only the images whose first place is on the defect."""
    from tools.record import Region

    out: dict[str, Any] = {}
    for row in rows:
        if split is not None and row["split"] != split:
            continue
        if placed and not row.get("on_defect"):
            continue
        region = None if row["region"] is None else Region.from_dict(row["region"])
        entry = out.setdefault(row["data"], {"table": defaultdict(Counter), "images": 0, "right": 0})
        word = word_of(region)
        entry["table"][row["folder"]][word] += 1
        entry["images"] += 1
        entry["right"] += word in EXPECTED.get(row["folder"], ())
    return {
        name: {"images": e["images"], "expected_word_rate": round(e["right"] / e["images"], 3) if e["images"] else None,
               "table": {f: dict(c.most_common()) for f, c in e["table"].items()}}
        for name, e in out.items()
    }


def markdown(result: dict[str, Any]) -> str:
    """Rows: folders; columns: words (most used first); the expected cell of each row in bold."""
    table = result["table"]
    words = [w for w, _ in sum((Counter(r) for r in table.values()), Counter()).most_common()]
    lines = ["| folder \\ word | " + " | ".join(words) + " | expected word |", "|---" * (len(words) + 2) + "|"]
    for folder, row in table.items():
        total = sum(row.values())
        cells = []
        for w in words:
            c = row.get(w, 0)
            cells.append(f"**{c}**" if w in EXPECTED.get(folder, ()) else str(c))
        hit = sum(row.get(w, 0) for w in EXPECTED.get(folder, ()))
        lines.append(f"| {folder} ({total}) | " + " | ".join(cells) + f" | {hit / total:.0%} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", action="append", default=[], help="an MVTec-layout root (repeat for several)")
    p.add_argument("--shots", type=int, default=4)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--limit", type=int, help="at most this many images per defect folder (seeded)")
    p.add_argument("--dump", help="write every image's measurements here (JSON), to re-score words without inspecting")
    p.add_argument("--from-dump", help="re-score the words of an earlier --dump (no inspection)")
    p.add_argument("--json", help="write the tables here")
    args = p.parse_args(argv)
    t0 = time.perf_counter()
    if args.from_dump:
        rows = json.loads(Path(args.from_dump).read_text(encoding="utf-8"))
    else:
        if not args.data:
            p.error("give --data (or --from-dump)")
        rows = [row for d in args.data for row in measure(Path(d), args.shots, args.seed, args.limit)]
        if args.dump:
            Path(args.dump).write_text(json.dumps(rows), encoding="utf-8")
    for row in rows:
        row["on_defect"] = on_defect(row)
    results = {f"{split}{'_on_defect' if placed else ''}": tables(rows, split, placed)
               for placed in (False, True) for split in ("validation", "test")}
    for key, per_data in results.items():
        for name, r in per_data.items():
            where = ", first mark on the defect" if key.endswith("on_defect") else ""
            print(f"\n{name}, {key.split('_')[0]} half{where}: {r['images']} defect images, "
                  f"expected word {r['expected_word_rate']:.1%}\n")
            print(markdown(r))
    print(f"\n{time.perf_counter() - t0:.0f} s", file=sys.stderr)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2), encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
