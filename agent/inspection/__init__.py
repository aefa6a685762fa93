"""One inspection pipeline for every command: look, look twice, match, decide, explain."""

from agent.inspection.pipeline import Evidence, Pipeline
from agent.inspection.settings import DecisionSettings, InspectionSettings, LookTwiceSettings, MatchSettings

__all__ = ["DecisionSettings", "Evidence", "InspectionSettings", "LookTwiceSettings", "MatchSettings", "Pipeline"]
