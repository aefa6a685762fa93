"""Do the rule brain's defect words name the real defect types? A word-vs-folder confusion table.

For every defect image of an MVTec-layout data set (`test/<defect>/`), the pipeline inspects it as
`looktwice inspect` does with K good references (references mode), and the word of its first mark
(`Region.kind`, from measured shape and tone: `tools.regions.defect_word`) is counted against the
folder it came from. A part the pipeline passed is counted by the word of its most suspicious place;
no place at all is "(none)". The words a folder should get (`EXPECTED`) are the ones a person would
use for it: blowhole -> hole, break -> broken area, crack -> crack, fray -> fray, uneven -> uneven
surface, pitting -> hole (a pit is a small cavity).

    python -m evals.bench_words --data ../shared/data/magnetic_tile --data ../shared/data/ball_screw \\
        --shots 4 --seed 0 --json words.json

Prints one markdown table per data set (rows: folders, columns: words) and the share of images whose
word is the expected one. No setting is chosen from it: it measures the rules as they are.
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


def first_word(record: Any) -> str:
    """The word of the record's first mark, else of its most suspicious place, else '(none)'."""
    from tools.regions import defect_word

    region = record.regions[0] if record.regions else record.suspicious_place
    if region is None:
        return NONE
    return defect_word(region) if region.kind else (region.shape or NONE)


def run(data: Path, shots: int, seed: int, limit: int | None = None) -> dict[str, Any]:
    from agent.brains.rule import RuleBrain
    from agent.inspection import InspectionSettings, Pipeline
    from tools.image_io import list_images, load_image

    good = list_images(data / "train" / "good")
    refs = random.Random(seed).sample(good, shots)
    pipeline = Pipeline(InspectionSettings(detector="refmatch"), brain=RuleBrain(), warn=lambda m: None)
    pipeline.fit([load_image(p) for p in refs])
    table: dict[str, Counter[str]] = defaultdict(Counter)
    t0 = time.perf_counter()
    n = 0
    for folder in sorted(p for p in (data / "test").iterdir() if p.is_dir() and p.name != "good"):
        paths = list_images(folder)
        if limit:
            paths = random.Random(seed).sample(paths, min(limit, len(paths)))
        for path in paths:
            table[folder.name][first_word(pipeline.inspect(str(path)))] += 1
            n += 1
        print(f"{data.name}/{folder.name}: {sum(table[folder.name].values())} images", file=sys.stderr, flush=True)
    right = sum(c for f, row in table.items() for w, c in row.items() if w in EXPECTED.get(f, ()))
    return {
        "data": str(data), "shots": shots, "seed": seed, "images": n, "seconds": round(time.perf_counter() - t0, 1),
        "expected_word_rate": round(right / n, 3) if n else None,
        "table": {f: dict(row.most_common()) for f, row in table.items()},
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
    p.add_argument("--data", action="append", required=True, help="an MVTec-layout root (repeat for several)")
    p.add_argument("--shots", type=int, default=4)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--limit", type=int, help="at most this many images per defect folder (seeded)")
    p.add_argument("--json", help="write the results here")
    args = p.parse_args(argv)
    results = [run(Path(d), args.shots, args.seed, args.limit) for d in args.data]
    for r in results:
        print(f"\n{Path(r['data']).name}: {r['images']} defect images, {r['shots']} references (seed {r['seed']}), "
              f"expected word {r['expected_word_rate']:.1%}, {r['seconds']} s\n")
        print(markdown(r))
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2), encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
