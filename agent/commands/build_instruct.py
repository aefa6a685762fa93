"""`looktwice build-instruct (--data ROOT | --synth-from DIR) --out DIR [--per-image N] [--seed S] [--limit N]
[--exclude-from QA_DIR]`.

Builds Anomaly-Instruct-style conversations in LLaVA JSON (instruct_data/instruct/conversations.py).
Exit codes: 0 written, 2 usage errors (missing data, bad numbers, no images, images shared with the QA
set of --exclude-from).
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path
from typing import Any


def add_parser(sub: argparse._SubParsersAction) -> None:
    """Add the `build-instruct` sub-command to `sub`."""
    from agent.commands import with_examples
    from agent.commands.build_qa import add_split_args

    p = sub.add_parser(
        "build-instruct",
        help="build Anomaly-Instruct-style conversations (LLaVA JSON) from masked data or synthesis",
        **with_examples(
            "Writes <out>/instruct.json ([{id, image, conversations: [{from: human|gpt, value}]}], "
            "image paths relative to <out>) and <out>/stats.json (counts per turn type, normal/anomalous "
            "balance). Turn types: detection (Yes/No), description, cause, suggestion, multi-round. --data "
            "reads an MVTec-layout data set with masks; --synth-from synthesizes one anomalous copy of every "
            "good image (saved under <out>/images and <out>/masks). The same --seed gives the same output. "
            "--exclude-from QA_DIR refuses to build when an image would also be in that QA set (same file "
            "content), unless --allow-overlap.",
            [
                "looktwice data instruct --data mvtec_root --out instruct/ --per-image 4",
                "looktwice data instruct --synth-from mvtec_root --out instruct/ --exclude-from qa/",
                "looktwice data instruct --data mvtec_root --out instruct/ --rewrite openai:http://127.0.0.1:8000/v1#Qwen/Qwen2-7B-Instruct",
            ],
        ),
    )
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--data", help="data set root (MVTec layout, with ground-truth masks)")
    src.add_argument("--synth-from", help="folder of good images (or a data set root: its train/good images)")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument(
        "--per-image",
        type=int,
        default=2,
        help="conversations per image, the first a detection one (default 2)",
    )
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    p.add_argument(
        "--limit", type=int, help="at most N images per category (--data) or N source images (--synth-from)"
    )
    p.add_argument(
        "--rewrite",
        metavar="openai:<base-url>#<model>",
        help="optional: rephrase the template answers with an LLM (llava:<model> also works); each rewrite "
        "must keep the Yes/No, location words and numbers, else the template answer stays",
    )
    p.add_argument("--rewrite-cache", help="JSON-lines cache of rewrites (default <out>/rewrite_cache.jsonl)")
    add_split_args(p, "a QA set folder (from `looktwice data qa`) whose images the instruction data must not use")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_build_instruct)


def rewrite_chat(spec: str) -> tuple[Callable[..., str], dict[str, Any]]:
    """(chat function, its settings) of the `--rewrite` brain spec; a brain that cannot be built, or one
    without a language model, is a usage error."""
    from agent.brains.spec import BrainError, build_brain
    from instruct_data.instruct import InstructBuildError

    try:
        brain = build_brain(spec)
    except BrainError as err:
        raise InstructBuildError(f"--rewrite: {err}") from None
    if brain.name == "rule":
        raise InstructBuildError("--rewrite needs a language model: llava:<model> or openai:<base-url>#<model>")
    return brain.chat_text, brain.settings()


def cmd_build_instruct(args: argparse.Namespace) -> int:
    from agent.commands.build_qa import split_line
    from agent.commands.common import settings_from_args
    from agent.console import EXIT_OK, info_line, usage_error
    from agent.progress import progress_bar
    from instruct_data.datasets import DatasetError
    from instruct_data.instruct import InstructBuildError, InstructSettings, build_instruct
    from instruct_data.qa.overlap import SplitOverlapError

    settings = settings_from_args(InstructSettings, args)
    try:
        with progress_bar(None, "instruct", not args.quiet) as bar:
            stats = build_instruct(settings, progress=bar.update, chat_for=rewrite_chat)
    except (DatasetError, InstructBuildError, SplitOverlapError) as err:
        return usage_error(err)
    im = stats["images"]
    print(
        f"instruction data in {Path(args.out)}: {stats['conversations']} conversations, {stats['turns']} turns "
        f"on {im['normal'] + im['anomalous']} images ({im['anomalous']} anomalous, {im['normal']} normal)"
    )
    info_line("turn types: " + ", ".join(f"{k} {v}" for k, v in stats["turn_types"].items()))
    if line := split_line(stats.get("split_check")):
        info_line(line)
    rw = stats.get("rewrite")
    if rw:
        info_line(
            f"rewrites: {rw['rewritten']} new, {rw['from_cache']} from the cache, {rw['rejected']} rejected, "
            f"{rw['failed']} failed (template answers kept), {rw['kept_detection']} Yes/No answers kept"
        )
        if rw.get("endpoint_error"):
            info_line(f"rewriting stopped: {rw['endpoint_error']}")
    return EXIT_OK


def main(argv: list[str] | None = None) -> int:
    """`python -m agent.commands.build_instruct ...` (the `build-instruct` word is optional)."""
    from agent.commands import run_standalone

    return run_standalone("build-instruct", add_parser, argv)


if __name__ == "__main__":
    raise SystemExit(main())
