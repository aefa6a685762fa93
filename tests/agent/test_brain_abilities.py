"""Optional brain abilities are typed interfaces (agent.brains.abilities), declared by each brain."""

from __future__ import annotations

from agent.brains.abilities import DrivesTools, ProposesRules, ReportsModelCalls, SeesImages
from agent.brains.llava import LlavaBrain
from agent.brains.openai import OpenAIBrain
from agent.brains.rule import RuleBrain

ABILITIES = (SeesImages, ProposesRules, DrivesTools, ReportsModelCalls)


def abilities(brain: object) -> set[str]:
    return {a.__name__ for a in ABILITIES if isinstance(brain, a)}


def test_each_brain_has_the_abilities_it_declares():
    openai = OpenAIBrain("http://127.0.0.1:9", "m")
    llava = LlavaBrain("/nowhere/model")  # the model loads on first use, never here
    assert abilities(RuleBrain()) == set()
    assert abilities(openai) == {"SeesImages", "ProposesRules", "DrivesTools", "ReportsModelCalls"}
    assert abilities(llava) == {"SeesImages", "ProposesRules", "ReportsModelCalls"}  # last_call: tokens, images
    for brain in (openai, llava):
        declared = {c.__name__ for c in type(brain).__mro__}
        assert abilities(brain) <= declared, "a brain inherits the abilities it has"


def test_a_stand_in_with_the_methods_has_the_ability():
    class Proposer:
        def propose_rules(self, components_text: str) -> str:
            return "{}"

        def repair_rules(self, components_text: str, previous: str, error: str) -> str:
            return "{}"

    assert isinstance(Proposer(), ProposesRules) and not isinstance(Proposer(), SeesImages)
