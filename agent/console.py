"""What every `looktwice` command prints besides its results, and the exit codes it ends with.

Exit codes: 0 everything done; 1 some inputs failed (the others are still done); 2 usage errors.
Messages go to stderr so stdout stays clean for `--json` output.
"""

from __future__ import annotations

import sys

EXIT_OK, EXIT_SOME_FAILED, EXIT_USAGE = 0, 1, 2


def error_line(msg: str) -> None:
    """`looktwice: error: ...` on stderr, once per line of `msg` (one line per problem)."""
    for line in str(msg).splitlines() or [""]:
        print(f"looktwice: error: {line}", file=sys.stderr)


def usage_error(msg: object) -> int:
    """Say what was wrong with the call and give its exit code, so a command ends a usage problem with
    `return usage_error(err)`."""
    error_line(str(msg))
    return EXIT_USAGE


def info_line(msg: str) -> None:
    """A progress or status line on stderr."""
    print(msg, file=sys.stderr)


__all__ = ["EXIT_OK", "EXIT_SOME_FAILED", "EXIT_USAGE", "error_line", "info_line", "usage_error"]
