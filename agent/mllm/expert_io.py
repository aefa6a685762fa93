"""Moved to `tools.ltfm.expert_io` (the expert's weights are perception, DESIGN.md section 4).

Only `ExpertWeightsError` stays here, for `agent.commands.train`, until it imports it from
`tools.ltfm.expert_io`; then this module goes.
"""

from tools.ltfm.expert_io import ExpertWeightsError

__all__ = ["ExpertWeightsError"]
