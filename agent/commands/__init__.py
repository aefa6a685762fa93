"""Sub-commands of `looktwice` that live in their own modules; each has `add_parser(sub)`.

`run_standalone` lets each module also run as `python -m agent.commands.<name>` without repeating the
parser plumbing in every file.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import textwrap
from collections.abc import Callable, Sequence
from typing import Any

AddParser = Callable[[Any], None]

#: What a shell reports for a program killed by SIGPIPE (`seq 1 1000000 | head -1` under pipefail).
EXIT_CLOSED_PIPE = 128 + int(getattr(signal, "SIGPIPE", 13))


def run_command(func: Callable[[argparse.Namespace], int], args: argparse.Namespace) -> int:
    """Run a parsed command; Ctrl-C exits with 130, a closed stdout (`looktwice ... | head -1`) ends the
    command quietly, as coreutils do, instead of a `BrokenPipeError` traceback."""
    try:
        return int(func(args))
    except KeyboardInterrupt:
        print("looktwice: error: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        _silence_stdout()
        return EXIT_CLOSED_PIPE


def _silence_stdout() -> None:
    """Point stdout at /dev/null, so the interpreter's final flush of what is still buffered cannot
    fail a second time ("Exception ignored ... BrokenPipeError") on the way out."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (OSError, ValueError):  # stdout without a file descriptor (e.g. captured in tests)
        pass


EXAMPLES_HEADER = "examples:"


def with_examples(
    description: str | None, examples: Sequence[str], epilog: str | None = None
) -> dict[str, Any]:
    """`add_parser` keyword arguments that make a sub-command's help end with runnable examples.

    `description`: paragraphs written on one line are wrapped at 100 columns, laid-out ones are kept;
    `epilog`: optional text before the examples; `examples`: command lines, each optionally followed by
    `  # what it does`, shown under a line `examples:` (a test parses every one with the real parser).
    """
    paragraphs = (description or "").split("\n\n")
    text = "\n\n".join(p if "\n" in p.strip() else textwrap.fill(p.strip(), 100) for p in paragraphs)
    block = EXAMPLES_HEADER + "\n" + "\n".join(f"  {line}" for line in examples)
    return {
        "description": text or None,
        "epilog": f"{epilog.rstrip()}\n\n{block}" if epilog else block,
        "formatter_class": argparse.RawDescriptionHelpFormatter,
    }


def single_command_parser(add_parser: AddParser) -> argparse.ArgumentParser:
    """A `looktwice` parser holding only the sub-command that `add_parser` adds."""
    parser = argparse.ArgumentParser(prog="looktwice")
    add_parser(parser.add_subparsers(dest="command", required=True))
    return parser


def run_standalone(command: str, add_parser: AddParser, argv: list[str] | None = None) -> int:
    """Parse `argv` (the command word is optional) and run the command (see `run_command`)."""
    args_list = list(sys.argv[1:] if argv is None else argv)
    if not args_list or args_list[0] != command:
        args_list.insert(0, command)
    args = single_command_parser(add_parser).parse_args(args_list)
    return run_command(args.func, args)
