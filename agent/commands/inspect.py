"""`looktwice inspect` and `looktwice demo`: images in, a verdict, outlined defects and an explanation out.

One image, or a few without a batch, is judged against the references (references mode). A folder of
8 or more images is a batch: the boundary comes from the batch itself (batch mode, bounded by the
references held out), unless `--calibration references` says otherwise; with fewer than two
references the batch detector learns from the batch as well. For scripts on the
line, `--fail-on defective|review` ends with exit code 3 when any image got that outcome or worse.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from agent.console import EXIT_OK, EXIT_SOME_FAILED, EXIT_USAGE, info_line, usage_error
from agent.detector_flags import add_brain_arg, add_decision_args, add_detector_args, inspection_settings

#: exit code when an image got the `--fail-on` outcome or worse (documented beside 0, 1 and 2)
EXIT_FLAGGED = 3
_SEVERITY = {"good": 0, "review": 1, "defective": 2}

INSPECT_HELP = """\
Inspect images against good references. Writes <out>/<stem>.json (the record), <stem>_overlay.png,
<stem>_anomaly_map.png (16-bit, 0..1 = score) and <stem>_mask.png. Verdicts are defective, review
(uncertain: a person should look) or good; the boundary keeps the --false-alarm-rate on good parts.
Images larger than 4096 px are analysed reduced (the record keeps source_size).
Exit codes: 0 all images inspected; 1 some failed (the rest are done); 2 usage errors;
3 with --fail-on, some image got that outcome or worse (3 wins over 1)."""


def run_inspect(
    images: list[str],
    refs: str | None,
    out: Path,
    settings: Any = None,
    as_json: bool = False,
    limits: Any = None,
    progress: bool = True,
    fail_on: str | None = None,
) -> int:
    """Inspect each image; write `<out>/<stem>.json`, maps and overlay. Returns the exit code.

    A path that does not exist is a usage error: nothing is inspected and `out` is not created."""
    from agent.commands.common import report_missing
    from agent.images import ImageLimits, source_size
    from agent.inspection import InspectionSettings, Pipeline
    from agent.outputs import unique_stem, write_record
    from agent.progress import Stages, bar_writer, progress_bar
    from agent.report.step import ReportUsageError, fits_on_batch, learn_from_batch
    from tools.detectors import DetectorError
    from tools.image_io import ImageLoadError, list_images
    from tools.lazy_images import LazyImages

    limits = limits or ImageLimits()
    settings = settings or InspectionSettings()
    if report_missing(images, [refs]):
        return EXIT_USAGE
    paths: list[Path] = []
    for item in images:
        p = Path(item)
        paths.extend(list_images(p, recursive=True) if p.is_dir() else [p])
    if not paths:
        return usage_error(f"no input images found in: {', '.join(images)}")
    pipeline = Pipeline(settings, warn=info_line)
    stages = Stages(info_line if progress else None, "inspect: ")
    try:
        with stages.stage("read", f"reading the references in '{refs}'" if refs else ""):
            references = limits.references(refs, warn=info_line)
        what = settings.detector if settings.detector != "auto" else "the detector"
        with stages.stage("references", f"fitting {what} on {len(references)} reference(s)" if references else ""):
            pipeline.fit(references, n_images=len(paths))
        if fits_on_batch(pipeline, len(paths)):
            names = [str(p) for p in paths]
            learn_from_batch(pipeline, LazyImages(names, limits.load), names, stages, progress)
    except (DetectorError, ValueError, KeyError, RuntimeError, ReportUsageError) as err:
        return usage_error(err)
    out.mkdir(parents=True, exist_ok=True)
    taken: set[str] = set()
    failed, worst = 0, 0
    if len(paths) > 1 and stages.say is not None:
        stages.say(f"inspect: inspecting {len(paths)} image(s) with {pipeline.detector.name}")
    with stages.stage("inspect"), progress_bar(len(paths), "inspect", progress) as bar:
        say = bar_writer(bar)
        for p in paths:
            try:
                if p.is_dir() or (p.exists() and not p.is_file()):
                    raise ImageLoadError(p, "not a file")
                image = limits.load(p, note=say)
                record = pipeline.inspect(str(p), image)
                record.source_size = source_size(image)
                files = write_record(record, image, out, unique_stem(p, taken))
            except ImageLoadError as err:
                failed += 1
                msg = str(err)
            except OSError as err:  # e.g. the output folder became unwritable: report, go on with the rest
                failed += 1
                msg = f"cannot process '{p}': {err.strerror or err}"
            else:
                msg = ""
            bar.update(1)
            if msg:
                say(f"looktwice: error: {msg}")
                if as_json:
                    print(json.dumps({"image_path": str(p), "error": msg}), flush=True)
                continue
            worst = max(worst, _SEVERITY[record.verdict])
            if as_json:
                data = record.to_json_dict(files)
                data["output_dir"] = str(out)
                print(json.dumps(data), flush=True)
            else:
                print(f"{p}: {record.verdict} (score {record.pred_score:.2f})")
                print(f"  {record.explanation}")
                print(f"  -> {out / files['record']}, {out / files['overlay']}", flush=True)
    done = len(paths) - failed
    cal = pipeline.calibration
    if done == 0:
        info_line(f"inspected 0 of {len(paths)} image(s): none could be read (see the error{'s' * (failed > 1)} above)")
        return EXIT_SOME_FAILED
    promise = (
        f"; boundary from {cal.method}, false-alarm rate {cal.false_alarm_rate:.3g} ({cal.good_samples} good samples)"
        if cal is not None else ""
    )
    timing = f" in {stages.total():.1f} s ({stages.line()})" if progress and stages.line() else ""
    info_line(f"inspected {done} of {len(paths)} image(s) with {pipeline.detector.name}{promise}{timing}; results in {out}")
    if cal is not None and cal.note:
        info_line(cal.note)
    if fail_on is not None and worst >= _SEVERITY[fail_on]:
        return EXIT_FLAGGED
    return EXIT_OK if failed == 0 else EXIT_SOME_FAILED


def cmd_inspect(args: argparse.Namespace) -> int:
    from agent.images import limits_from_args

    try:
        settings = inspection_settings(args)
        limits = limits_from_args(args, settings.detector_options)
    except ValueError as err:
        return usage_error(err)
    return run_inspect(
        args.images, args.refs, Path(args.out), settings, args.json,
        limits=limits, progress=not args.quiet, fail_on=args.fail_on,
    )


def cmd_demo(args: argparse.Namespace) -> int:
    from instruct_data.synthesis.demo_case import make_demo_case

    root = Path(args.out)
    case = make_demo_case(root / "case", n_references=args.shots, seed=args.seed)
    info_line(
        f"demo case: {len(case.references)} good references in {root / 'case' / 'references'}, "
        f"{len(case.queries)} parts to inspect in {root / 'case' / 'queries'}"
    )
    code = run_inspect([str(q) for q in case.queries], str(root / "case" / "references"), root / "results")
    print(
        f"\nOutputs are in {root / 'results'}: <name>.json (verdict, score, regions, explanation), "
        "<name>_overlay.png (heat above the review band, numbered outlines, verdict and score), "
        "<name>_anomaly_map.png, <name>_mask.png"
    )
    return code


def add_parser(sub: Any) -> None:
    """Add the `inspect` and `demo` sub-commands to `sub`."""
    from agent.commands import with_examples
    from agent.images import add_max_megapixels_arg

    p = sub.add_parser(
        "demo",
        help="generate a small case (good plates, a scratch, a stain) and inspect it",
        **with_examples(
            "Draws good brushed-steel plates, a good plate to check, one with a scratch and one with a stain, "
            "inspects the three against the good ones and says where the outputs are.",
            [
                "looktwice demo                                  # case and results in ./looktwice-demo",
                "looktwice demo --out /tmp/demo --shots 6",
            ],
        ),
    )
    p.add_argument("--out", default="looktwice-demo", help="folder for the case and the results (default looktwice-demo)")
    p.add_argument("--shots", type=int, default=4, help="number of good references to generate (default 4)")
    p.add_argument("--seed", type=int, default=0, help="random seed of the generated case")
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser(
        "inspect",
        help="inspect images: verdict, outlined defects, heatmap, explanation",
        **with_examples(
            INSPECT_HELP,
            [
                "looktwice inspect part_017.png --refs good_parts/ --out results/",
                "looktwice inspect line3/ --refs good_parts/ --json > results.jsonl   # one JSON line per image",
                "looktwice inspect part_017.png --refs good_parts/ --false-alarm-rate 0.01   # flag fewer parts",
                "looktwice inspect line3/ --refs good_parts/ --fail-on defective --quiet   # exit 3: stop the line",
                "looktwice inspect part_017.png                   # no references: zero-shot fallback",
            ],
        ),
    )
    p.add_argument("images", nargs="+", help="image files or folders (searched recursively)")
    p.add_argument("--refs", help="folder (or file) of good reference images; without it the zero-shot fallback runs")
    p.add_argument("--out", default="looktwice-results", help="output folder (default looktwice-results)")
    add_brain_arg(p, "explanation writer (default rule: templates, no weights)")
    p.add_argument("--json", action="store_true", help="print one JSON record per image (JSON lines) on stdout")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.add_argument(
        "--fail-on", choices=("defective", "review"),
        help=f"exit with code {EXIT_FLAGGED} when any image gets this outcome or worse (review: review or defective)",
    )
    add_max_megapixels_arg(p)
    add_detector_args(p)
    add_decision_args(p, calibration=True)
    p.set_defaults(func=cmd_inspect)


__all__ = ["EXIT_FLAGGED", "add_parser", "cmd_demo", "cmd_inspect", "run_inspect"]
