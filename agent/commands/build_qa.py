"""`looktwice data qa --data ROOT [--category C] --out DIR [--limit N] [--seed S]`.

Builds a VisA-D&R-style QA set (test_data.json, dr.json, meta.json; see instruct_data/qa/FORMAT.md)
from an MVTec-layout data set. Exit codes: 0 written, 2 usage errors (missing data, unknown category).
"""

from __future__ import annotations

import argparse
from pathlib import Path


def add_parser(sub: argparse._SubParsersAction) -> None:
    """Add the QA-set builder to `sub` (`looktwice data` registers it as `data qa`)."""
    from agent.commands import with_examples

    p = sub.add_parser(
        "build-qa",
        help="build a VisA-D&R-style QA set (detection + reasoning) from an MVTec-layout data set",
        **with_examples(
            "Writes <out>/test_data.json ([{image, anomaly, class}]), <out>/dr.json ([{image, class, "
            "defect_type, questions, answers}], anomalous images only, reference answers from the masks and "
            "defect types) and <out>/meta.json (data_root, counts). Image paths are relative to the data root. "
            "Evaluate a brain on it with `looktwice eval-dr --qa <out>`.",
            [
                "looktwice data qa --data mvtec_root --out qa/ --limit 120",
                "looktwice data qa --data mvtec_root --category bottle --out qa_bottle/ --seed 1",
            ],
        ),
    )
    p.add_argument("--data", required=True, help="data set root (MVTec layout)")
    p.add_argument("--category", help="one category (default: all categories under the root)")
    p.add_argument("--out", required=True, help="output folder of the QA set")
    p.add_argument(
        "--limit", type=int, help="at most N test images per category, about half anomalous (default: all)"
    )
    p.add_argument("--seed", type=int, default=0, help="seed of the --limit draw (default 0)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_build_qa)


def cmd_build_qa(args: argparse.Namespace) -> int:
    from agent.console import EXIT_OK, info_line, usage_error
    from agent.progress import progress_bar
    from instruct_data.datasets import DatasetError
    from instruct_data.qa import BuildSettings, QABuildError, build_qa_set

    settings = BuildSettings(
        data=args.data, out=args.out, category=args.category, limit=args.limit, seed=args.seed
    )
    try:
        with progress_bar(None, "qa", not args.quiet) as bar:
            meta = build_qa_set(settings, progress=bar.update)
    except (DatasetError, QABuildError) as err:
        return usage_error(err)
    c = meta["counts"]
    out = Path(args.out)
    print(
        f"QA set in {out}: {c['images']} images ({c['anomalous']} anomalous, {c['good']} good) in test_data.json, "
        f"{c['dr_items']} items / {c['questions']} questions in dr.json"
    )
    info_line(f"categories: {', '.join(meta['categories'])}; data root {meta['data_root']}")
    return EXIT_OK


def main(argv: list[str] | None = None) -> int:
    """`python -m agent.commands.build_qa ...` (the `build-qa` word is optional)."""
    from agent.commands import run_standalone

    return run_standalone("build-qa", add_parser, argv)


if __name__ == "__main__":
    raise SystemExit(main())
