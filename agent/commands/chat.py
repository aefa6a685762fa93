"""`looktwice chat IMAGE [--refs DIR] [--brain ...] [--out DIR]`: a terminal conversation about one image.

The image is inspected once (the match-of-thought loop), then every line read from stdin is a
question answered by the brain with the conversation so far. Commands:

    /heatmap        print the path of the overlay (heatmap + outline) of the current image
    /image PATH     inspect another image and talk about it (the history starts again)
    /save FILE      write the transcript (JSON when FILE ends in .json, else plain text)
    /help           list the commands
    /quit           end (so do /exit and end of input)

A brain that fails (server down, malformed reply) is reported on stderr and the RuleBrain answers
from the evidence, so the conversation goes on.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from agent.conversation import Conversation, SetupError, build_pipeline, trace_warnings

HELP = "commands: /heatmap (overlay path), /image PATH (switch image), /save FILE (transcript), /quit"


def add_parser(sub: argparse._SubParsersAction) -> None:
    """Add the `chat` sub-command to `sub` (the object `add_subparsers()` returned)."""
    from agent.commands import with_examples
    from agent.commands.ask import DESCRIPTION, add_brain_args

    p = sub.add_parser(
        "chat",
        help="talk about one image in the terminal (/heatmap, /image PATH, /save FILE, /quit)",
        **with_examples(
            "A conversation about one image; the history is kept and the image inspected once.\n"
            + HELP
            + "\n\n"
            + DESCRIPTION.split("\n\n", 1)[1],
            [
                "looktwice chat part_017.png --refs good_parts/",
                "looktwice chat part_017.png --refs good_parts/ --brain openai:http://127.0.0.1:8000/v1#Qwen/Qwen2-VL-2B-Instruct",
            ],
        ),
    )
    p.add_argument("image", help="the image to talk about")
    p.add_argument(
        "--out", default="looktwice-chat", help="folder for overlays and records (default looktwice-chat)"
    )
    add_brain_args(p)
    p.set_defaults(func=cmd_chat)


def line_editing(interactive: bool | None = None) -> bool:
    """Turn on line editing and history for `input()` (arrow keys, Ctrl-R) when reading from a
    terminal and Python has readline (not on every platform); True when it is on."""
    if not (sys.stdin.isatty() if interactive is None else interactive):
        return False
    try:
        import readline  # noqa: F401 - importing it is what makes input() edit lines
    except ImportError:
        return False
    return True


def _read_line(prompt: str) -> str | None:
    if sys.stdin.isatty():
        try:
            return input(prompt)
        except EOFError:
            return None
    line = sys.stdin.readline()
    return None if line == "" else line


def cmd_chat(args: argparse.Namespace) -> int:
    """Run the command from parsed arguments; returns the exit code."""
    from agent.commands.common import report_missing
    from agent.console import EXIT_OK, EXIT_SOME_FAILED, EXIT_USAGE, error_line, info_line, usage_error
    from agent.images import limits_from_args
    from tools.image_io import ImageLoadError

    if report_missing([args.image], [args.refs]):
        return EXIT_USAGE
    try:
        limits = limits_from_args(args)
        pipeline = build_pipeline(args)
    except (SetupError, ValueError) as err:
        return usage_error(err)
    session = Conversation(pipeline, Path(args.out), limits)
    try:
        print(session.open(args.image), flush=True)
    except (ImageLoadError, OSError) as err:
        error_line(str(err))
        return EXIT_SOME_FAILED
    print(HELP, flush=True)
    line_editing()
    while True:
        line = _read_line("you> ")
        if line is None:
            break
        text = line.strip()
        if not text:
            continue
        if text.startswith("/"):
            command, _, rest = text.partition(" ")
            rest = rest.strip()
            if command in ("/quit", "/exit"):
                break
            if command == "/help":
                print(HELP, flush=True)
            elif command == "/heatmap":
                print(session.overlay, flush=True)
            elif command == "/image":
                if not rest:
                    print("usage: /image PATH", flush=True)
                    continue
                try:
                    print(session.open(rest), flush=True)
                except (ImageLoadError, OSError) as err:
                    error_line(str(err))
                    print(f"still talking about {session.record.image_path}", flush=True)
            elif command == "/save":
                if not rest:
                    print("usage: /save FILE", flush=True)
                    continue
                try:
                    print(f"transcript saved to {session.save(rest)}", flush=True)
                except OSError as err:
                    error_line(f"cannot write '{rest}': {err}")
            else:
                print(f"unknown command {command}; {HELP}", flush=True)
            continue
        n_before = len(session.record.trace)
        answer = session.ask(text)
        for msg in trace_warnings(session.record.trace[n_before:]):
            info_line(f"looktwice: warning: {msg}")
        print(f"looktwice> {answer}", flush=True)
    return EXIT_OK


def main(argv: list[str] | None = None) -> int:
    """`python -m agent.commands.chat ...` (the `chat` word is optional)."""
    from agent.commands import run_standalone

    return run_standalone("chat", add_parser, argv)


if __name__ == "__main__":
    raise SystemExit(main())
