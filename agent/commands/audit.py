"""`looktwice audit draft --refs DIR [--out spec.yaml]`,
`looktwice audit run INPUT... --refs DIR [--spec spec.yaml] --out DIR [--resume]` and
`looktwice audit demo [--out DIR]` (a small logical case drawn and audited, to see what an audit gives).

Wire it into the main parser with `add_parser(subparsers)`; `python -m agent.commands.audit ...` runs the
same command on its own. Heavy modules are imported only when the command runs.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

DESCRIPTION = """\
Logical-anomaly audit: is everything there, in its place, in the right colour and size, and do the
parts that belong together match? A spec (YAML) lists the components (found by colour, region, a CLIP
text prompt or among SAM's automatic masks) and their rules: count, colour, position, area, pair rules.

  looktwice audit draft --refs good/ --out spec.yaml     derive a spec from good references
  looktwice audit run test/ --refs good/ --out audit/    check images (drafts a spec if --spec is not given)
  looktwice audit demo                                   draw a small case (good boxes, one with a part
                                                         missing, one with a wrong colour) and audit it

`run` writes the same report as `looktwice report` (results.db, index.html, results.jsonl/.csv, overlays
marking the offending components) plus the spec used (spec.yaml); every image's record holds each rule
with measured vs expected value. The score fuses the rules with the structural detector's (--detector,
default refmatch; --detector none checks the rules only); its boundary is set on the references, each
held out in turn, for --false-alarm-rate (default 0.05; n references promise no finer than 1/(n+1),
so 8 references promise 1/9), and each record's `decision` says what was promised. --sam MODEL segments with SAM (and drafts with
it); --clip MODEL runs the spec's clip_prompt finders; a model that is not here is warned once and its
components are reported as skipped. --resume continues an interrupted audit. Exit codes: 0 all done,
1 some inputs failed, 2 usage, spec or output-folder errors, 130 interrupted."""


def add_parser(sub: argparse._SubParsersAction) -> None:
    """Add the `audit` command (with `draft` and `run`) to `sub`."""
    from agent.commands import with_examples
    from agent.detector_flags import add_brain_arg, add_decision_args, add_detector_args
    from agent.images import add_max_megapixels_arg

    p = sub.add_parser(
        "audit",
        help="logical-anomaly audit: counts, places, colours, sizes, matching pairs (spec drafted from references)",
        **with_examples(DESCRIPTION, [DRAFT_EXAMPLE, RUN_EXAMPLE]),
    )
    asub = p.add_subparsers(dest="audit_command", required=True, metavar="{draft,run,demo}")
    d = asub.add_parser(
        "draft",
        help="derive a spec from good reference images",
        **with_examples(
            "Segment the good references, line up their components and write a YAML spec of counts, "
            "colours, positions, areas and pair rules, with tolerances from the references' spread.",
            [
                DRAFT_EXAMPLE,
                "looktwice audit draft --refs good_boxes/ --sam facebook/sam-vit-base --out spec.yaml",
            ],
        ),
    )
    d.add_argument("--refs", required=True, help="folder (or file) of good reference images")
    d.add_argument("--out", help="write the spec here (default: standard output)")
    d.add_argument("--segmenter", choices=SEGMENTERS, default="auto", help=SEGMENTER_HELP)
    add_brain_arg(d, BRAIN_HELP)
    d.add_argument("--sam", metavar="MODEL", help=SAM_HELP)
    d.add_argument("--device", help="cpu, cuda, cuda:1, ... for SAM (default cpu)")
    add_max_megapixels_arg(d)
    d.set_defaults(func=cmd_draft)
    r = asub.add_parser(
        "run",
        help="audit images against a spec and write a report",
        **with_examples(RUN_DESCRIPTION, [RUN_EXAMPLE, RESUME_EXAMPLE]),
    )
    r.add_argument(
        "inputs", nargs="+", metavar="INPUT", help="image files, folders, or list files (@list.txt)"
    )
    r.add_argument("--refs", required=True, help="folder (or file) of good reference images")
    r.add_argument("--spec", help="spec YAML (default: drafted from --refs and saved as spec.yaml in --out)")
    r.add_argument(
        "--out", required=True, help="output folder (new or empty, or an earlier audit with --resume)"
    )
    r.add_argument("--segmenter", choices=SEGMENTERS, default="auto", help=SEGMENTER_HELP + "; used when there is no --spec")
    add_brain_arg(r, BRAIN_HELP + "; used when there is no --spec")
    r.add_argument(
        "--resume",
        action="store_true",
        help="continue the audit in --out: skip what is done (reuses its spec.yaml)",
    )
    r.add_argument("--sam", metavar="MODEL", help=SAM_HELP)
    r.add_argument("--clip", metavar="MODEL", help=CLIP_HELP)
    r.add_argument("--quiet", action="store_true", help="no progress bar")
    add_max_megapixels_arg(r)
    r.add_argument(
        "--no-fsync", action="store_true", help="do not flush each image's files before committing it"
    )
    add_detector_args(r)
    add_decision_args(r)
    r.set_defaults(func=cmd_run)
    m = asub.add_parser(
        "demo",
        help="draw a small logical case and audit it",
        **with_examples(
            "Draw 4 good boxes (a bottle and its label of one flavour, a cap, a bar) as references and a "
            "test set of 2 good boxes, one with a part missing and one with a part of the wrong colour; "
            "draft a spec from the references, audit the test set and print each verdict with its "
            "explanation. The report, the spec and the pictures stay in --out.",
            [DEMO_EXAMPLE, DEMO_EXAMPLE + " --detector none"],
        ),
    )
    m.add_argument("--out", default="looktwice_audit_demo", help="folder for the drawn images and the audit (new or empty)")
    m.add_argument(
        "--detector", default="none",
        help="structural detector fused with the rules (default none: the rules only; auto fuses the embedded "
        "detector, whose boundary rests on only 4 references here)",
    )
    m.set_defaults(func=cmd_demo)


DRAFT_EXAMPLE = "looktwice audit draft --refs good_boxes/ --out spec.yaml"
DEMO_EXAMPLE = "looktwice audit demo --out audit_demo/"
RUN_EXAMPLE = "looktwice audit run line3/boxes/ --refs good_boxes/ --spec spec.yaml --out audit_1127/"
RESUME_EXAMPLE = "looktwice audit run line3/boxes/ --refs good_boxes/ --out audit_1127/ --resume"
RUN_DESCRIPTION = (
    "Check every image against the spec (drafted from --refs when --spec is not given) and write "
    "the same report as `looktwice report`, plus the spec used."
)

SEGMENTERS = ("auto", "colour", "regions")
SEGMENTER_HELP = (
    "how the draft finds parts: colour (blobs of one colour on a plain background, e.g. boxes on a tray), "
    "regions (the parts of one product on real photos, found by their look), or auto (colour, else regions "
    "when the colour draft is weak; default)"
)

BRAIN_HELP = (
    "drafting brain: rule (segmentation and statistics, default) or an LLM, llava:<id-or-folder> or "
    "openai:<base-url>#<model>, which also names the components and proposes pair rules (each checked on "
    "the references)"
)


SAM_HELP = (
    "SAM model (hub id or save_pretrained folder, see `looktwice models`) for SAM automatic masks: "
    "overrides the spec's sam.model; with no --spec the draft segments with SAM"
)
CLIP_HELP = (
    "open_clip model (ARCH:TAG, hf-hub:org/repo or a folder) for the spec's clip_prompt finders; "
    "overrides the spec's clip.model"
)


def cmd_draft(args: argparse.Namespace) -> int:
    from agent.audit.runner import get_spec, model_finders
    from agent.console import EXIT_OK, info_line, usage_error
    from agent.images import limits_from_args
    from agent.report.runner import ReportUsageError

    try:
        limits = limits_from_args(args)
    except ValueError as err:
        return usage_error(err)
    finders = model_finders(args.sam, None, args.device, info_line)
    try:
        spec, _ = get_spec(
            None, args.refs, warn=info_line, brain=args.brain, finders=finders, limits=limits, segmenter=args.segmenter
        )
    except ReportUsageError as err:
        return usage_error(err)
    text = spec.to_yaml()
    if args.out:
        try:
            Path(args.out).write_text(text, encoding="utf-8")
        except OSError as err:
            return usage_error(f"cannot write spec file '{args.out}': {err.strerror or err}")
        info_line(
            f"spec drafted: {len(spec.components)} component(s), {len(spec.pairs)} pair rule(s), "
            f"{len(spec.dropped)} rule(s) dropped; written to {args.out}"
        )
    else:
        sys.stdout.write(text)
    return EXIT_OK


def cmd_run(args: argparse.Namespace) -> int:
    from agent.audit.runner import AuditSettings, run_audit
    from agent.commands.common import batch_run_fields, settings_from_args
    from agent.console import info_line, usage_error
    from agent.detector_flags import decision_settings, detector_options
    from agent.images import limits_from_args
    from agent.report.runner import ReportUsageError, ReportWriteError, StoreError

    try:
        options = detector_options(args)
        limits = limits_from_args(args, options)
        decision = decision_settings(args)
    except ValueError as err:
        return usage_error(err)
    settings = settings_from_args(
        AuditSettings, args, detector_options=options, false_alarm_rate=decision.false_alarm_rate,
        review=decision.review, **batch_run_fields(args, limits),
    )
    try:
        summary = run_audit(settings, info=info_line)
    except (ReportUsageError, ReportWriteError, StoreError) as err:
        return usage_error(err)
    info_line(summary.line().replace("report", "audit", 1).replace("defective", "anomalous"))
    if summary.interrupted:
        info_line(f"interrupted; run the same command with --resume to finish the audit in '{settings.out}'")
    return summary.exit_code


def cmd_demo(args: argparse.Namespace) -> int:
    """Draw the demo case into --out, audit it, print the verdicts."""
    import json

    from agent.audit.runner import AuditSettings, run_audit
    from agent.console import info_line, usage_error
    from agent.report.runner import ReportUsageError, ReportWriteError, StoreError
    from instruct_data.synthesis.scenes import make_scene

    root = Path(args.out)
    if root.exists() and any(root.iterdir()):
        return usage_error(f"demo folder '{root}' is not empty: choose another --out")
    refs, test = root / "references", root / "test"
    try:
        refs.mkdir(parents=True)
        test.mkdir()
        for i in range(4):
            make_scene("box", "good", seed=100 + i, size=256, flavour=("orange", "purple")[i % 2]).image.save(refs / f"good_{i + 1}.png")
        for name, kind, seed in (("good_a", "good", 1), ("good_b", "good", 2), ("part_missing", "missing", 3), ("wrong_colour", "recoloured", 4)):
            make_scene("box", kind, seed=seed, size=256).image.save(test / f"{name}.png")
    except OSError as err:
        return usage_error(f"cannot write the demo into '{root}': {err.strerror or err}")
    settings = AuditSettings(inputs=[str(test)], out=root / "audit", refs=str(refs), detector=args.detector, progress=False)
    try:
        summary = run_audit(settings, info=info_line)
    except (ReportUsageError, ReportWriteError, StoreError) as err:
        return usage_error(err)
    for line in (root / "audit" / "results.jsonl").read_text(encoding="utf-8").splitlines():
        rec = json.loads(line)["record"]
        verdict = "anomalous" if rec["verdict"] == "defective" else rec["verdict"]
        print(f"{Path(rec['image_path']).name}: {verdict} (score {rec['pred_score']:.2f}) - {rec['explanation']}")
    info_line(
        f"references in {refs}, test images in {test}; spec: {root / 'audit' / 'spec.yaml'}; "
        f"report: {root / 'audit' / 'index.html'}"
    )
    return summary.exit_code


def main(argv: list[str] | None = None) -> int:
    """`python -m agent.commands.audit ...` (the `audit` word is optional)."""
    from agent.commands import run_standalone

    return run_standalone("audit", add_parser, argv)


if __name__ == "__main__":
    sys.exit(main())
