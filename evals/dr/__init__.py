"""VisA-D&R-style benchmark: detection (strict Yes/No) and reasoning (ROUGE-L, SBERT) of a brain on a
QA set written by `looktwice data qa` (format: instruct_data/qa/FORMAT.md). Run it with `looktwice eval-dr`."""

from evals.dr.metrics import detection_metrics
from evals.dr.text import SbertScorer, SbertUnavailable, lcs_length, rouge_l, tokenize
from instruct_data.qa.reader import QAImage, QASet, QASetError, load_qa_set

__all__ = [
    "QAImage",
    "QASet",
    "QASetError",
    "SbertScorer",
    "SbertUnavailable",
    "detection_metrics",
    "lcs_length",
    "load_qa_set",
    "rouge_l",
    "tokenize",
]
