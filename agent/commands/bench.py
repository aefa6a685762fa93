"""`looktwice bench [--images DIR | --synthetic N] [--refs DIR] [--detector ...] [--brain ...]
[--device cpu|cuda] [--warmup 2] [--repeat 1] [--loop] [--out bench.jsonl]`.

Per-stage and end-to-end timings of an inspection set-up (`evals.bench.runner`): load, detector,
every step of the trace, generation tokens/s (when the brain reports it), peak memory, images/s.
Appends one JSON line with the machine description to `--out` and a markdown summary to the `.md`
file next to it; prints the summary (or, with `--json`, the JSON line). Exit codes: 0 done, 2 usage
errors (bad arguments, references, brain or detector settings, no CUDA for `--device cuda`).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

DESCRIPTION = """\
Time an inspection set-up: model/detector load and fit, the detector, each step of the trace (with
--loop: the match-of-thought loop and the brain's answer), generation tokens/s, peak memory and
images/s. Warm-up runs are excluded. Every run is appended to a JSONL file with the machine
description; a markdown summary is printed and written next to it (same name, .md)."""


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _non_negative(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more, got {value}")
    return value


def add_parser(sub: argparse._SubParsersAction) -> None:
    """Add the `bench` sub-command to `sub` (the object `add_subparsers()` returned)."""
    from agent.commands import with_examples
    from agent.detector_flags import add_brain_arg, add_detector_args

    p = sub.add_parser(
        "bench",
        help="speed benchmark: per-stage timings, tokens/s, peak memory, images/s (JSONL + markdown)",
        **with_examples(
            DESCRIPTION,
            [
                "looktwice bench --synthetic 40 --set resolution=96",
                "looktwice bench --images parts/ --refs good_parts/ --detector refmatch --loop --out bench.jsonl",
            ],
        ),
    )
    src = p.add_mutually_exclusive_group()
    src.add_argument("--images", help="folder (or file) of query images to time")
    src.add_argument(
        "--synthetic",
        type=_positive,
        metavar="N",
        help="time N generated brushed plates (every 5th scratched) against 4 generated references "
        "(default when --images is not given: 20)",
    )
    p.add_argument("--refs", help="folder of good references (synthetic mode: generated when not given)")
    p.add_argument(
        "--shots", type=_positive, default=4, help="generated references in synthetic mode (default 4)"
    )
    p.add_argument(
        "--size", type=_positive, default=256, help="side of the synthetic images in pixels (default 256)"
    )
    p.add_argument("--limit", type=_positive, help="time at most this many images of --images")
    add_brain_arg(p)
    p.add_argument("--warmup", type=_non_negative, default=2, help="untimed warm-up runs first (default 2)")
    p.add_argument("--repeat", type=_positive, default=1, help="timed passes over the images (default 1)")
    p.add_argument(
        "--loop", action="store_true", help="run the match-of-thought loop with a question per image"
    )
    p.add_argument("--question", help="question of --loop (default: 'Is there any defect in this image?')")
    p.add_argument(
        "--out", default="bench.jsonl", help="JSONL file the result is appended to (default bench.jsonl)"
    )
    p.add_argument("--json", action="store_true", help="print the JSON line instead of the markdown summary")
    p.add_argument("--threads", type=_non_negative, default=0, help="torch threads (0 = torch default)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    add_detector_args(p)
    p.set_defaults(func=cmd_bench)


def cmd_bench(args: argparse.Namespace) -> int:
    """Run the command from parsed arguments; returns the exit code."""
    from agent.brains.common import BrainError
    from agent.console import EXIT_OK, info_line, usage_error
    from agent.detector_flags import detector_options
    from agent.progress import bar_writer, progress_bar
    from evals.bench.runner import (
        DEFAULT_QUESTION,
        markdown_summary,
        run_bench,
        save_result,
        synthetic_images,
    )
    from tools.detectors import DetectorError
    from tools.image_io import load_image_set

    device = args.device
    if device is not None and device != "cpu" and not device.startswith("cuda"):
        return usage_error(f"--device must be cpu or cuda[:N], got {device!r}")
    if device and device.startswith("cuda"):
        import torch

        if not torch.cuda.is_available():
            return usage_error("--device cuda: no CUDA device is available")
    question = args.question if args.question is not None else DEFAULT_QUESTION
    if args.loop and not question.strip():
        return usage_error("the question is empty")
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    try:
        options = detector_options(args)
        if args.images:
            folder = Path(args.images)
            images = load_image_set(
                folder, "image", warn=lambda m: info_line(f"looktwice: warning: {m}"), limit=args.limit
            )
            references = load_image_set(args.refs, "reference", info_line) if args.refs else []
            source = str(folder)
        else:
            n = args.synthetic or 20
            images = synthetic_images(n, args.size, seed=1, scratch_every=5)
            if args.refs:
                references = load_image_set(args.refs, "reference", info_line)
            else:
                references = synthetic_images(args.shots, args.size, seed=0)
            source = f"synthetic {n} brushed plates {args.size}x{args.size}"
        bar = progress_bar(args.warmup + args.repeat * len(images), "bench", not args.quiet)
        with bar:
            result = run_bench(
                images,
                references,
                detector=args.detector,
                detector_options=options,
                brain=args.brain,
                device=device,
                loop=args.loop,
                warmup=args.warmup,
                repeat=args.repeat,
                question=question,
                source=source,
                warn=bar_writer(bar),
                progress=bar.update,
            )
    except (BrainError, DetectorError, ValueError, KeyError) as err:
        return usage_error(str(err).strip("'\""))
    path, md = save_result(result, args.out)
    if args.json:
        print(json.dumps(result), flush=True)
    else:
        print(markdown_summary(result))
        print(f"appended to {path}; summary in {md}")
    return EXIT_OK


def main(argv: list[str] | None = None) -> int:
    """`python -m agent.commands.bench ...` (the `bench` word is optional)."""
    from agent.commands import run_standalone

    return run_standalone("bench", add_parser, argv)


if __name__ == "__main__":
    raise SystemExit(main())
