"""`looktwice` command line. Heavy modules (torch, models) are imported inside the commands, so
`looktwice --help` answers at once.

Exit codes: 0 everything done; 1 some inputs failed (the others are still done); 2 usage errors;
130 interrupted; 141 stdout was closed early (`looktwice inspect ... --json | head -1`), as for coreutils.
"""

from __future__ import annotations

import argparse
import importlib
import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from agent.images import ImageLimits

EXIT_OK, EXIT_SOME_FAILED, EXIT_USAGE = 0, 1, 2

#: Modules that add further subcommands with `add_parser(subparsers)`; they import nothing heavy at top.
COMMAND_MODULES: tuple[str, ...] = (
    "agent.commands.synth",
    "agent.commands.ask",
    "agent.commands.chat",
    "agent.commands.report",
    "agent.commands.eval_dr",
    "agent.commands.audit",
    "agent.commands.export",
    "agent.commands.build_instruct",
    "agent.commands.bench",
    "agent.commands.serve",
    "agent.commands.train",
    "agent.commands.data",
)

DESCRIPTION = """\
LookTwice: a local defect-inspection agent. Give it product images and a few images of good parts;
it finds defects, outlines them and explains them in plain words. Everything runs offline.
`looktwice COMMAND --help` shows each command's options and examples."""

QUICK_START = (
    "looktwice demo                                     # make a small case, inspect it, show the outputs",
    "looktwice inspect part.png --refs good/ --out results/",
    'looktwice ask part.png "Is there a defect? Where?" --refs good/',
    "looktwice report line3/ --refs good/ --out report/   # HTML report of a folder",
)


def _err(msg: str) -> None:
    """`looktwice: error: ...` on stderr, once per line of `msg` (one line per problem)."""
    for line in str(msg).splitlines() or [""]:
        print(f"looktwice: error: {line}", file=sys.stderr)


def _info(msg: str) -> None:
    print(msg, file=sys.stderr)


def _parse_value(text: str) -> Any:
    import yaml

    return yaml.safe_load(text)


def detector_options(args: argparse.Namespace) -> dict[str, Any]:
    """Detector settings from --config (YAML/JSON mapping), then --resolution, then --set KEY=VALUE,
    checked against what the --detector declares (`tools.settings`): a `ValueError` holds one line per
    bad setting (name, value given, what is allowed)."""
    opts: dict[str, Any] = {}
    if getattr(args, "config", None):
        import yaml

        path = Path(args.config)
        if not path.is_file():
            raise ValueError(f"config file '{path}' does not exist")
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        if not isinstance(data, dict):
            raise ValueError(f"config file '{path}' must hold a mapping of detector settings")
        opts.update(data)
    if getattr(args, "resolution", None):
        opts["resolution"] = args.resolution
    for flag, key in (("model", "model"), ("device", "device"), ("object", "object_name")):
        if getattr(args, flag, None):
            opts[key] = getattr(args, flag)
    for item in getattr(args, "set", None) or []:
        if "=" not in item:
            raise ValueError(f"--set expects KEY=VALUE, got {item!r}")
        key, value = item.split("=", 1)
        opts[key.strip()] = _parse_value(value)
    _check_settings(getattr(args, "detector", None), opts)
    return opts


def _check_settings(detector: str | None, opts: dict[str, Any]) -> None:
    from tools.detectors import DETECTORS
    from tools.settings import setting_problems

    if not detector or detector not in DETECTORS:
        return  # an unknown name is reported where the detector is built, with the list of names
    try:
        factory = DETECTORS.get(detector)
    except ImportError:
        return  # its extra is missing: building it says which
    problems = setting_problems(detector, factory, opts)
    if problems:
        raise ValueError("\n".join(problems))


def _add_detector_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--detector", default="refmatch", help="detector name (see `looktwice detectors`); default refmatch")
    p.add_argument("--resolution", type=int, help="working resolution of the detector (multiple of 32)")
    p.add_argument("--config", help="YAML/JSON file of detector settings")
    p.add_argument("--model", help="model of model-based detectors: hub id or local folder (see `looktwice models`)")
    p.add_argument("--device", help="cpu, cuda, cuda:1, ... (default cpu)")
    p.add_argument("--object", help="object name for text prompts of CLIP detectors, e.g. 'metal plate'")
    p.add_argument(
        "--set", action="append", metavar="KEY=VALUE", help="one detector setting, e.g. --set blur_sigma=3 (repeatable)"
    )


# ---------------------------------------------------------------------------------------------- inspect
def run_inspect(
    images: list[str],
    refs: str | None,
    out: Path,
    detector: str = "refmatch",
    options: dict[str, Any] | None = None,
    brain: str = "rule",
    as_json: bool = False,
    limits: ImageLimits | None = None,
    progress: bool = True,
) -> int:
    """Inspect each image; write `<out>/<stem>.json`, maps and overlay. Returns the exit code.

    `limits` (`agent.images.ImageLimits`): pixel limit and analysis size, default the defaults.
    A path that does not exist is a usage error: nothing is inspected and `out` is not created."""
    from agent.images import ImageLimits, missing_message, missing_paths, source_size
    from agent.inspector import Inspector
    from agent.outputs import unique_stem, write_record
    from agent.progress import bar_writer, progress_bar
    from tools.detectors import DetectorError
    from tools.image_io import ImageLoadError, list_images

    limits = limits or ImageLimits()
    missing = missing_paths(images + ([refs] if refs else []))
    if missing:
        _err(missing_message(missing, "path"))
        return EXIT_USAGE
    paths: list[Path] = []
    for item in images:
        p = Path(item)
        if p.is_dir():
            paths.extend(list_images(p, recursive=True))
        else:
            paths.append(p)
    if not paths:
        _err("no input images found")
        return EXIT_USAGE
    try:
        references = limits.references(refs, warn=_info)
        inspector = Inspector(detector, references, options, brain=brain, warn=_info)
    except (DetectorError, ValueError, KeyError, RuntimeError) as err:
        _err(str(err))
        return EXIT_USAGE
    del references  # fitted: the detector keeps what it needs
    out.mkdir(parents=True, exist_ok=True)
    taken: set[str] = set()
    failed = 0
    with progress_bar(len(paths), "inspect", progress) as bar:
        say = bar_writer(bar)
        for p in paths:
            try:
                if p.is_dir() or (p.exists() and not p.is_file()):
                    raise ImageLoadError(p, "not a file")
                image = limits.load(p, note=say)
                record = inspector.inspect(p, image)
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
            if as_json:
                data = record.to_json_dict(files)
                data["output_dir"] = str(out)
                print(json.dumps(data), flush=True)
            else:
                print(f"{p}: {record.verdict} (score {record.pred_score:.2f})")
                print(f"  {record.explanation}")
                print(f"  -> {out / files['record']}, {out / files['overlay']}", flush=True)
    done = len(paths) - failed
    _info(f"inspected {done} of {len(paths)} image(s) with {inspector.detector.name}; results in {out}")
    return EXIT_OK if failed == 0 else EXIT_SOME_FAILED


def cmd_inspect(args: argparse.Namespace) -> int:
    from agent.images import limits_from_args

    try:
        options = detector_options(args)
        limits = limits_from_args(args, options)
    except ValueError as err:
        _err(str(err))
        return EXIT_USAGE
    return run_inspect(
        args.images,
        args.refs,
        Path(args.out),
        args.detector,
        options,
        args.brain,
        args.json,
        limits=limits,
        progress=not args.quiet,
    )


# ---------------------------------------------------------------------------------------------- demo
def cmd_demo(args: argparse.Namespace) -> int:
    from instruct_data.synthesis.demo_case import make_demo_case

    root = Path(args.out)
    case = make_demo_case(root / "case", n_references=args.shots, seed=args.seed)
    _info(f"demo case: {len(case.references)} good references in {root / 'case' / 'references'}, "
          f"{len(case.queries)} parts to inspect in {root / 'case' / 'queries'}")
    code = run_inspect([str(q) for q in case.queries], str(root / "case" / "references"), root / "results")
    print(f"\nOutputs are in {root / 'results'}: <name>.json (verdict, score, regions, explanation), "
          "<name>_overlay.png (heatmap + outline), <name>_anomaly_map.png, <name>_mask.png")
    return code


# ---------------------------------------------------------------------------------------------- eval
def _format_table(result: dict[str, Any]) -> str:
    keys = ("image_AUROC", "pixel_AUROC", "pixel_AUPRO", "image_F1Max", "pixel_F1Max", "throughput_ips")
    lines = ["category".ljust(20) + "".join(k.rjust(16) for k in keys)]
    for c in result["categories"]:
        lines.append(c["category"][:20].ljust(20) + "".join(f"{c[k]:16.3f}" for k in keys))
    if len(result["categories"]) > 1:
        lines.append("mean".ljust(20) + "".join(f"{result[k]:16.3f}" for k in keys))
    for c in result["categories"]:
        per = ", ".join(f"{d} {v:.3f}" for d, v in c["per_defect_image_AUROC"].items())
        lines.append(f"{c['category']}: image AUROC per defect type: {per}")
    return "\n".join(lines)


def cmd_eval(args: argparse.Namespace) -> int:
    from agent.progress import wants_progress
    from evals.detection import DetectionBenchmarkSettings, run_detection_benchmark
    from instruct_data.datasets import DatasetError
    from tools.detectors import DetectorError

    try:
        settings = DetectionBenchmarkSettings(
            data=args.data,
            category=args.category,
            shots=args.shots,
            seed=args.seed,
            detector=args.detector,
            detector_options=detector_options(args),
            metric_size=args.metric_size,
        )
        result = run_detection_benchmark(settings, show_progress=wants_progress(not args.quiet))
    except (DatasetError, DetectorError, ValueError, KeyError) as err:
        _err(str(err))
        return EXIT_USAGE
    print(_format_table(result))
    if args.out:
        out = Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(result, indent=2), encoding="utf-8")
        _info(f"wrote {out}")
    return EXIT_OK


# ---------------------------------------------------------------------------------------------- detectors
def cmd_detectors(args: argparse.Namespace) -> int:
    from tools.detectors import DETECTORS

    for name in DETECTORS.names():
        print(f"{name:12s} {DETECTORS.describe(name)}")
    return EXIT_OK


def cmd_models(args: argparse.Namespace) -> int:
    from tools.models import list_models

    rows = list_models()
    if args.json:
        print(json.dumps(rows, indent=2))
        return EXIT_OK
    pad = " " * 19
    for r in rows:
        state = f"here: {r['where']}" if r["available"] else f"not here; looked in: {r['where']}"
        print(f"{r['name']:18s} {r['id']}")
        print(f"{pad}{r['description']} ({r['size']})")
        print(f"{pad}{state}")
        if not r["available"] and r.get("fetch"):
            print(f"{pad}get it: {r['fetch']}")
    print(
        "\nThe default (refmatch with the rule brain) needs only efficientnet-lite0, which ships with LookTwice. "
        "Hub models: fetch them on a machine with internet, copy the Hugging Face cache (or a save_pretrained "
        "folder) here, and pass the folder (--model, --sam, --brain llava:<folder>) or set LOOKTWICE_MODEL_CLIP / "
        "LOOKTWICE_MODEL_SAM."
    )
    return EXIT_OK


def build_parser() -> argparse.ArgumentParser:
    from agent.commands import with_examples
    from agent.images import add_max_megapixels_arg

    parser = argparse.ArgumentParser(prog="looktwice", **with_examples(DESCRIPTION, QUICK_START))
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

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
            "Inspect images against good references. Writes <out>/<stem>.json (the record), "
            "<stem>_overlay.png, <stem>_anomaly_map.png (16-bit, 0..1 = score) and <stem>_mask.png. "
            "Images larger than 4096 px are analysed reduced (the record keeps source_size). Exit 0 when "
            "all images were inspected, 1 when some failed (the rest are done), 2 on usage errors.",
            [
                "looktwice inspect part_017.png --refs good_parts/ --out results/",
                "looktwice inspect line3/ --refs good_parts/ --json > results.jsonl   # one JSON line per image",
                "looktwice inspect part_017.png --refs good_parts/ --set sigmas=2     # flag fewer parts",
                "looktwice inspect part_017.png                   # no references: zero-shot fallback",
            ],
        ),
    )
    p.add_argument("images", nargs="+", help="image files or folders (searched recursively)")
    p.add_argument("--refs", help="folder (or file) of good reference images; without it the zero-shot fallback runs")
    p.add_argument("--out", default="looktwice-results", help="output folder (default looktwice-results)")
    p.add_argument("--brain", default="rule", help="explanation writer (default rule: templates, no weights)")
    p.add_argument("--json", action="store_true", help="print one JSON record per image (JSON lines) on stdout")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    add_max_megapixels_arg(p)
    _add_detector_args(p)
    p.set_defaults(func=cmd_inspect)

    p = sub.add_parser(
        "eval",
        help="detection benchmark on an MVTec-layout data set (AUROC, AUPRO, F1-max, throughput)",
        **with_examples(
            "k-shot references are drawn from train/good with --seed; all test images are scored.",
            [
                "looktwice eval --data mvtec_root --category bottle --shots 4 --seed 0 --out bottle.json",
                "looktwice eval --data mvtec_root --shots 1 --set augment=[hflip,vflip] --quiet",
            ],
        ),
    )
    p.add_argument("--data", required=True, help="data set root (MVTec layout, or good/ + bad/ folders)")
    p.add_argument("--category", help="one category (default: all categories under the root)")
    p.add_argument("--shots", type=int, default=4, help="number of good references (default 4)")
    p.add_argument("--seed", type=int, default=0, help="seed for drawing the references (default 0)")
    p.add_argument("--metric-size", type=int, default=256, help="long side of maps/masks for pixel metrics")
    p.add_argument("--out", help="write the full results as JSON here")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    _add_detector_args(p)
    p.set_defaults(func=cmd_eval)

    p = sub.add_parser(
        "detectors",
        help="list the available detectors",
        **with_examples("The detectors --detector accepts, with a line on each.", ["looktwice detectors"]),
    )
    p.set_defaults(func=cmd_detectors)

    p = sub.add_parser(
        "models",
        help="list every model LookTwice can use, where each is looked for and how to get it",
        **with_examples(
            "Every model LookTwice can use: the embedded EfficientNet-Lite (shipped), CLIP, SAM, LLaVA-OneVision, "
            "the Look-Twice expert weights and the SBERT model of eval-dr; whether each is on this machine, "
            "where it was looked for, and how to get it.",
            ["looktwice models", "looktwice models --json"],
        ),
    )
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=cmd_models)

    for module_name in COMMAND_MODULES:
        importlib.import_module(module_name).add_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return EXIT_USAGE
    from agent.commands import run_command

    return run_command(args.func, args)


if __name__ == "__main__":
    sys.exit(main())
