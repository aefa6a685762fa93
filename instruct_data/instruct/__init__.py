"""Anomaly-Instruct-style conversations (LLaVA JSON) from masked data or synthesized anomalies."""

from instruct_data.instruct.build import build_instruct
from instruct_data.instruct.conversations import (
    INSTRUCT_FILE,
    STATS_FILE,
    InstructBuildError,
    InstructSettings,
    validate,
)

__all__ = [
    "INSTRUCT_FILE",
    "STATS_FILE",
    "InstructBuildError",
    "InstructSettings",
    "build_instruct",
    "validate",
]
