"""One inspection pipeline for every command: look, zoom re-check, match, decide, explain.

Importing this package is cheap (the settings are plain dataclasses); the pipeline and its steps
load numpy, PIL and the detectors when first used.
"""

from __future__ import annotations

from agent.mllm.lazy_exports import lazy_exports

_EXPORTS = {
    "agent.inspection.evidence": ("Evidence",),
    "agent.inspection.pipeline": ("Pipeline",),
    "agent.inspection.settings": ("DecisionSettings", "InspectionSettings", "MatchSettings", "ZoomRecheckSettings"),
}

__getattr__, __dir__, __all__ = lazy_exports(__name__, _EXPORTS, globals())
