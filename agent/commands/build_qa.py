"""`looktwice data qa --data ROOT [--category C] --out DIR [--limit N] [--seed S] [--exclude-from INSTRUCT]`.

Builds a VisA-D&R-style QA set (test_data.json, dr.json, meta.json; see instruct_data/qa/FORMAT.md)
from an MVTec-layout data set. Exit codes: 0 written, 2 usage errors (missing data, unknown category,
images shared with the instruction data of --exclude-from).
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any


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
            "Evaluate a brain on it with `looktwice eval-dr --qa <out>`. --exclude-from INSTRUCT refuses "
            "to build when an image would also be in that instruction data (same file content), unless "
            "--allow-overlap.",
            [
                "looktwice data qa --data mvtec_root --out qa/ --limit 120 --exclude-from instruct/instruct.json",
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
    add_split_args(p, "instruction data (its instruct.json or folder) whose images the QA set must not use")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_build_qa)


def add_split_args(p: argparse.ArgumentParser, other: str) -> None:
    """--exclude-from and --allow-overlap, the split guard's flags (`instruct_data.qa.overlap`)."""
    p.add_argument("--exclude-from", metavar="PATH", help=f"{other}; compared by file content")
    p.add_argument(
        "--allow-overlap",
        action="store_true",
        help="build even when images are shared with --exclude-from (the count is recorded)",
    )


def split_line(check: dict[str, Any] | None) -> str | None:
    """The status line of the split check, or None without --exclude-from."""
    if check is None:
        return None
    if not check["in_common"]:
        return f"no image in common with the {check['kind']} '{check['exclude_from']}'"
    return (
        f"{check['in_common']} of {check['images_compared']} images in common with the {check['kind']} "
        f"'{check['exclude_from']}' (--allow-overlap)"
    )


def cmd_build_qa(args: argparse.Namespace) -> int:
    from agent.commands.common import settings_from_args
    from agent.console import EXIT_OK, info_line, usage_error
    from agent.progress import progress_bar
    from instruct_data.datasets import DatasetError
    from instruct_data.qa import BuildSettings, QABuildError, build_qa_set
    from instruct_data.qa.overlap import SplitOverlapError

    settings = settings_from_args(BuildSettings, args)
    try:
        with progress_bar(None, "qa", not args.quiet) as bar:
            meta = build_qa_set(settings, progress=bar.update)
    except (DatasetError, QABuildError, SplitOverlapError) as err:
        return usage_error(err)
    c = meta["counts"]
    out = Path(args.out)
    print(
        f"QA set in {out}: {c['images']} images ({c['anomalous']} anomalous, {c['good']} good) in test_data.json, "
        f"{c['dr_items']} items / {c['questions']} questions in dr.json"
    )
    info_line(f"categories: {', '.join(meta['categories'])}; data root {meta['data_root']}")
    if line := split_line(meta.get("split_check")):
        info_line(line)
    return EXIT_OK


def main(argv: list[str] | None = None) -> int:
    """`python -m agent.commands.build_qa ...` (the `build-qa` word is optional)."""
    from agent.commands import run_standalone

    return run_standalone("build-qa", add_parser, argv)


if __name__ == "__main__":
    raise SystemExit(main())
