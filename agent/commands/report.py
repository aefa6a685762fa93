"""`looktwice report INPUT... --out DIR [--refs DIR] [--brain ...] [--detector ...] [--resume]`.

Wire it into the main parser with `add_parser(subparsers)`; `python -m agent.commands.report ...` runs
the same command on its own. Heavy modules are imported only when the command runs.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

DESCRIPTION = """\
Inspect a batch of images and write a report: index.html (summary, score histogram, breakdowns, a
sortable and filterable table, a card per image with overlay thumbnail and explanation, failed inputs),
results.jsonl, results.csv, and per-image overlays, maps and records in images/.

Every result is committed to results.db the moment it is done. After a crash or Ctrl-C, run the same
command with --resume: finished images are kept, changed files (content hash) are redone, failed and
unfinished ones are processed. Without --resume a non-empty output folder is refused.

With --ray the images are inspected by Ray actors, on this machine or on a cluster (--ray-address
auto after `ray start`); the store, the files and the page stay here, and --resume works the same
(pip install 'looktwice[scale]').

INPUT is an image file, a folder (searched recursively), or a list file of paths, one per line
(@paths.txt, or any .txt file). Exit codes: 0 all done, 1 some inputs failed (the rest are done),
2 usage or output-folder errors, 130 interrupted."""


def add_parser(sub: argparse._SubParsersAction) -> None:
    """Add the `report` sub-command to `sub` (the object `add_subparsers()` returned)."""
    from agent.commands import with_examples
    from agent.detector_flags import add_decision_args, add_detector_args
    from agent.images import add_max_megapixels_arg

    p = sub.add_parser(
        "report",
        help="batch report: HTML page, JSONL/CSV and overlays for many images; resumable",
        **with_examples(
            DESCRIPTION,
            [
                "looktwice report line3/2026-11-27/ --refs good_parts/ --out report_1127/",
                "looktwice report line3/2026-11-27/ --refs good_parts/ --out report_1127/ --resume   # after Ctrl-C",
                "looktwice report @todo.txt --refs good_parts/ --out report_todo/   # a list of paths, one a line",
                "looktwice report line3/ --refs good_parts/ --out report_1127/ --ray --workers 4   # on Ray, here",
                "looktwice report line3/ --refs good_parts/ --out report_1127/ --ray --ray-address auto --workers 16",
            ],
        ),
    )
    p.add_argument(
        "inputs", nargs="+", metavar="INPUT", help="image files, folders, or list files (@list.txt)"
    )
    p.add_argument(
        "--out", required=True, help="output folder (new or empty, or an earlier report with --resume)"
    )
    p.add_argument(
        "--refs", help="folder (or file) of good reference images; without it the zero-shot fallback runs"
    )
    p.add_argument("--brain", default="rule", help="explanation writer (default rule: templates, no weights)")
    p.add_argument("--resume", action="store_true", help="continue the report in --out: skip what is done")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    add_max_megapixels_arg(p)
    p.add_argument(
        "--no-fsync",
        action="store_true",
        help="do not flush each image's files to disk before committing it (faster; a power loss may cost files)",
    )
    add_detector_args(p)
    add_decision_args(p, calibration=True)
    add_ray_args(p)
    p.set_defaults(func=cmd_report)


def add_ray_args(p: argparse.ArgumentParser) -> None:
    """`--ray` and its settings (Ray is the optional extra `looktwice[scale]`)."""
    g = p.add_argument_group("Ray (pip install 'looktwice[scale]')")
    g.add_argument(
        "--ray", action="store_true",
        help="inspect on Ray actors (this machine, or a cluster with --ray-address); store and page stay here",
    )
    g.add_argument(
        "--ray-address", metavar="ADDR",
        help="'auto' joins the cluster of `ray start --head`, or HOST:PORT / ray://HOST:PORT; default: start Ray here",
    )
    g.add_argument("--workers", type=int, default=2, metavar="N", help="Ray actors, each holding one pipeline (default 2)")
    g.add_argument("--cpus-per-worker", type=float, default=1.0, metavar="N", help="CPUs Ray reserves per actor (default 1)")
    g.add_argument("--gpus-per-worker", type=float, default=0.0, metavar="N", help="GPUs Ray reserves per actor (default 0)")


def cmd_report(args: argparse.Namespace) -> int:
    """Run the command from parsed arguments; returns the exit code."""
    from agent.console import EXIT_USAGE, error_line, info_line
    from agent.detector_flags import inspection_settings
    from agent.images import limits_from_args
    from agent.report.runner import (
        ReportSettings,
        ReportUsageError,
        ReportWriteError,
        StoreError,
        run_report,
    )

    try:
        inspection = inspection_settings(args)
        limits = limits_from_args(args, inspection.detector_options)
    except ValueError as err:
        error_line(str(err))
        return EXIT_USAGE
    settings = ReportSettings(
        inputs=list(args.inputs),
        out=Path(args.out),
        refs=args.refs,
        inspection=inspection,
        resume=args.resume,
        progress=not args.quiet,
        durable=not args.no_fsync,
        limits=limits,
    )
    inspector = None
    if args.ray or args.ray_address:
        from agent.report.ray_runner import RaySettings, import_ray, ray_inspector

        if args.workers < 1 or args.cpus_per_worker < 0 or args.gpus_per_worker < 0:
            error_line("--workers must be at least 1, --cpus-per-worker and --gpus-per-worker not negative")
            return EXIT_USAGE
        try:
            import_ray()
        except ReportUsageError as err:
            error_line(str(err))
            return EXIT_USAGE
        inspector = ray_inspector(
            RaySettings(args.ray_address, args.workers, args.cpus_per_worker, args.gpus_per_worker)
        )
    try:
        summary = run_report(settings, info=info_line, inspector=inspector)
    except (ReportUsageError, ReportWriteError, StoreError) as err:
        error_line(str(err))
        return EXIT_USAGE
    info_line(summary.line())
    if summary.interrupted:
        info_line(f"interrupted; run the same command with --resume to finish the report in '{settings.out}'")
    return summary.exit_code


def build_parser() -> argparse.ArgumentParser:
    """A parser with only the `report` command (for tests)."""
    from agent.commands import single_command_parser

    return single_command_parser(add_parser)


def main(argv: list[str] | None = None) -> int:
    """`python -m agent.commands.report ...` (the `report` word is optional)."""
    from agent.commands import run_standalone

    return run_standalone("report", add_parser, argv)


if __name__ == "__main__":
    sys.exit(main())
