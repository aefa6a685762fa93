"""One inspection pipeline for every command: look, zoom re-check, match, decide, explain."""

from agent.inspection.evidence import Evidence
from agent.inspection.pipeline import Pipeline
from agent.inspection.settings import DecisionSettings, InspectionSettings, MatchSettings, ZoomRecheckSettings

__all__ = ["DecisionSettings", "Evidence", "InspectionSettings", "MatchSettings", "Pipeline", "ZoomRecheckSettings"]
