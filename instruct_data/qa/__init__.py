"""VisA-D&R-style QA sets (detection + reasoning) built from any MVTec-layout data set; see FORMAT.md."""

from instruct_data.qa.builder import (
    DR_FILE,
    META_FILE,
    TEST_FILE,
    BuildSettings,
    QABuildError,
    build_qa_set,
    describe_defect,
    explain_cause,
)

__all__ = [
    "DR_FILE",
    "META_FILE",
    "TEST_FILE",
    "BuildSettings",
    "QABuildError",
    "build_qa_set",
    "describe_defect",
    "explain_cause",
]
