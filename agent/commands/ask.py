"""`looktwice ask IMAGE "question" [--refs DIR] [--brain ...] [--json] [--out DIR]`.

One inspection through the match-of-thought loop (`agent.inspection`), then the brain's answer. Writes
`<out>/<stem>.json` (the record, with the answer and the trace), the overlay and maps, and
`<stem>_trace.json` (the loop's steps alone). With `--json`, stdout is exactly one JSON object: the
record with `answer`, `pred_score`, `pred_label`, `regions`, `explanation`, `trace` (and the file
names); messages go to stderr. Exit codes: 0 answered, 1 the image could not be read, 2 usage errors
(bad references, brain or detector settings).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

# shared with `chat` and `serve`; re-exported here, where they lived first
from agent.conversation import SetupError, build_pipeline, save_outputs, trace_warnings

DESCRIPTION = """\
Ask a question about one image. The image is inspected (look, look twice at the suspicious regions,
match with the references), then the brain answers from that evidence.

brains:
  rule                                   templates over the measured regions (default; no weights)
  llava:<hub-id-or-folder>[?options]     the local LLaVA-OneVision, with the Look-Twice expert's tokens
                                         where the folder was trained with them (looktwice_expert.json);
                                         options: device=auto|cpu|cuda|cuda:N, dtype=auto|bf16|fp16|fp32,
                                         quant=none|4bit|8bit, attn=sdpa|eager|flash_attention_2,
                                         expert=auto|none|FILE (device auto: CUDA when present, else the
                                         CPU in float32); a model that is not here: exit 2 (--fallback:
                                         the rule brain)
  openai:<base-url>#<model>[?views=on]   an OpenAI-compatible server, e.g. vLLM:
                                         openai:http://127.0.0.1:8000/v1#Qwen/Qwen2-VL-2B-Instruct
  (LOOKTWICE_OPENAI_BASE_URL, LOOKTWICE_OPENAI_MODEL, LOOKTWICE_OPENAI_API_KEY fill in what is missing)"""

EXAMPLES = (
    'looktwice ask part_017.png "Is there a defect? Where?" --refs good_parts/',
    'looktwice ask part_017.png "How big is the defect?" --refs good_parts/ --json',
    'looktwice ask part_017.png "What could cause it?" --brain llava:/models/anomaly-ov',
    "looktwice ask part_017.png \"Is there a defect?\" --refs good_parts/ "
    "--brain 'llava:/models/anomaly-ov?device=cuda&dtype=bf16&quant=4bit'",
)


def add_brain_args(
    p: argparse.ArgumentParser, refs_help: str | None = None, max_megapixels: float | None = None
) -> None:
    """--refs, --brain, --sam, --max-megapixels, the detector and decision arguments (shared by `ask`, `chat` and
    `serve`; `refs_help` rewords --refs for a command that uses it differently, `max_megapixels` sets
    another default pixel limit)."""
    from agent.detector_flags import add_brain_arg, add_decision_args, add_detector_args
    from agent.images import add_max_megapixels_arg

    p.add_argument(
        "--refs",
        help=refs_help or "folder (or file) of good reference images; without it the zero-shot fallback runs",
    )
    add_brain_arg(p)
    p.add_argument("--sam", help="SAM model id or folder to refine the defect outlines (optional)")
    if max_megapixels is None:
        add_max_megapixels_arg(p)
    else:
        add_max_megapixels_arg(p, max_megapixels)
    add_detector_args(p)
    add_decision_args(p)


def add_parser(sub: argparse._SubParsersAction) -> None:
    """Add the `ask` sub-command to `sub` (the object `add_subparsers()` returned)."""
    from agent.commands import with_examples

    p = sub.add_parser(
        "ask",
        help="ask a question about one image: answer, verdict, overlay, trace",
        **with_examples(DESCRIPTION, EXAMPLES),
    )
    p.add_argument("image", help="the image to ask about")
    p.add_argument("question", help='the question, e.g. "Is there any defect in this image?"')
    p.add_argument("--json", action="store_true", help="print exactly one JSON object (the record) on stdout")
    p.add_argument("--out", default="looktwice-results", help="output folder (default looktwice-results)")
    add_brain_args(p)
    p.set_defaults(func=cmd_ask)


def cmd_ask(args: argparse.Namespace) -> int:
    """Run the command from parsed arguments; returns the exit code."""
    from agent.commands.common import report_missing
    from agent.console import EXIT_OK, EXIT_SOME_FAILED, EXIT_USAGE, error_line, info_line, usage_error
    from agent.images import limits_from_args, source_size
    from tools.image_io import ImageLoadError

    path = Path(args.image)
    if not args.question.strip():
        return usage_error("the question is empty")
    if report_missing([args.image], [args.refs]):
        return EXIT_USAGE
    try:
        limits = limits_from_args(args)
    except ValueError as err:
        return usage_error(err)
    try:
        image = limits.load(path, note=info_line)
    except (ImageLoadError, OSError) as err:
        msg = str(err) if isinstance(err, ImageLoadError) else f"cannot read image '{path}': {err}"
        error_line(msg)
        if args.json:
            print(json.dumps({"image_path": str(path), "error": msg}), flush=True)
        return EXIT_SOME_FAILED
    try:
        pipeline = build_pipeline(args)
    except SetupError as err:
        error_line(str(err))
        if args.json:
            print(json.dumps({"image_path": str(path), "error": str(err)}), flush=True)
        return EXIT_USAGE
    record = pipeline.inspect(str(path), image, question=args.question)
    record.source_size = source_size(image)
    for line in trace_warnings(record.trace):
        info_line(f"looktwice: warning: {line}")
    out = Path(args.out)
    files = save_outputs(record, image, out, set())
    if args.json:
        data = record.to_json_dict(files)
        data["overlay"] = files["overlay"]
        data["trace_file"] = files["trace"]
        data["output_dir"] = str(out)
        print(json.dumps(data), flush=True)
    else:
        print(record.answer)
        print(f"verdict: {record.verdict} (score {record.pred_score:.2f}, threshold {record.threshold:.2f})")
        print(f"overlay: {out / files['overlay']}")
        print(f"trace:   {out / files['trace']}")
    return EXIT_OK


def main(argv: list[str] | None = None) -> int:
    """`python -m agent.commands.ask ...` (the `ask` word is optional)."""
    from agent.commands import run_standalone

    return run_standalone("ask", add_parser, argv)


if __name__ == "__main__":
    raise SystemExit(main())
