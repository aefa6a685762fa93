"""Strict reading of the Yes/No answer to a detection question, the answer format of the data built here.

Why in `instruct_data`: the instruction and QA data of this package answer the detection question with a
leading "Yes" or "No", and three readers of that format sit at or above this layer: the answer rewriting
here (a rewrite must keep the Yes/No), the trainer's held-out check (agent.mllm.train) and the D&R
benchmark (evals). `tools` is perception and holds no language; `prompts` holds data, not code.

Only the leading word counts: "Yes.", "yes, there is a scratch", "**No** defects" parse; "The eyes ..."
(yes inside a word), "I think yes" (not leading), "Nope" and "" do not (None). Benchmarks that search
for "yes" anywhere reward rambling answers; the VisA-D&R prompt asks for a Yes or a No, so that is
what is read.
"""

from __future__ import annotations

import re

_LEADING = re.compile(r"^[\W_]*(yes|no)(?![A-Za-z0-9])", re.IGNORECASE)


def parse_yes_no(text: str | None) -> bool | None:
    """True for a leading "yes", False for a leading "no", None otherwise (punctuation and markup
    before the word, such as quotes, '*' or '-', are skipped)."""
    if not text:
        return None
    m = _LEADING.match(text.strip())
    if m is None:
        return None
    return m.group(1).lower() == "yes"
