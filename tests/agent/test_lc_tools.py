"""LangChain tools and agent, driven offline by a scripted fake chat model: tool selection, argument
validation, tool errors and artifacts."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("langchain")

from langchain_core.language_models.fake_chat_models import GenericFakeChatModel  # noqa: E402
from langchain_core.messages import AIMessage, ToolMessage  # noqa: E402

from agent.lc_tools import InspectionSession, build_agent, make_tools  # noqa: E402
from agent.loop import MatchOfThought  # noqa: E402
from tests.agent import agent_case as case  # noqa: E402


class ScriptedChatModel(GenericFakeChatModel):
    """Replies from a script; tools are "bound" by ignoring them (the script already names them)."""

    def bind_tools(self, tools, **kwargs):
        return self


def _call(name: str, args: dict, i: int) -> dict:
    return {"name": name, "args": args, "id": f"call_{i}", "type": "tool_call"}


@pytest.fixture
def session():
    detector = case.MeanDiffDetector()
    detector.fit(case.references())
    loop = MatchOfThought(detector, case.references())
    return InspectionSession(loop, case.scratched(), "scratch.png")


def test_tool_schemas_and_artifacts(session):
    tools = {t.name: t for t in make_tools(session)}
    assert set(tools) == {"detect", "regions", "zoom", "compare_with_references"}
    assert all(t.response_format == "content_and_artifact" for t in tools.values())
    schema = tools["zoom"].tool_call_schema.model_json_schema()
    assert schema["required"] == ["region"] and schema["properties"]["margin"]["maximum"] == 2.0

    msg = tools["detect"].invoke(_call("detect", {}, 0))
    assert isinstance(msg, ToolMessage) and msg.status == "success" and "defective" in msg.content
    assert isinstance(msg.artifact["anomaly_map"], np.ndarray) and msg.artifact["pred_label"] is True
    msg = tools["regions"].invoke(_call("regions", {"max_regions": 3}, 1))
    assert msg.content.startswith("0: ") and msg.artifact[0]["bbox"]
    msg = tools["zoom"].invoke(_call("zoom", {"region": 0, "margin": 0.25}, 2))
    assert "zoomed" in msg.content and isinstance(msg.artifact["crop"], Image.Image)
    assert msg.artifact["zoom_score"] >= 0
    msg = tools["compare_with_references"].invoke(_call("compare_with_references", {}, 3))
    assert "component(s)" in msg.content and "matching" in msg.artifact


def test_agent_picks_tools_and_recovers_from_errors(session, tmp_path):
    (tmp_path / "bad.png").write_bytes(b"garbage")
    script = iter(
        [
            AIMessage(content="", tool_calls=[_call("regions", {}, 0)]),  # before detect: tool error
            AIMessage(content="", tool_calls=[_call("detect", {"image_path": str(tmp_path / "bad.png")}, 1)]),
            AIMessage(content="", tool_calls=[_call("detect", {}, 2)]),
            AIMessage(
                content="",
                tool_calls=[
                    _call("zoom", {"region": -1}, 3),  # validation: ge=0
                    _call("zoom", {"region": "first"}, 4),  # validation: not an int
                    _call("zoom", {"region": 7}, 5),  # tool error: out of range
                    _call("zoom", {"region": 0}, 6),
                ],
            ),
            AIMessage(
                content="", tool_calls=[_call("compare_with_references", {}, 7), _call("segment", {}, 8)]
            ),
            AIMessage(content="Defective: a dark scratch in the center, confirmed at a closer look."),
        ]
    )
    agent = build_agent(ScriptedChatModel(messages=script), make_tools(session))
    result = agent.invoke({"messages": [("user", "Is there a defect?")]})
    tool_msgs = [m for m in result["messages"] if isinstance(m, ToolMessage)]
    by_id = {m.tool_call_id: m for m in tool_msgs}
    assert by_id["call_0"].status == "error" and "call detect first" in by_id["call_0"].content
    assert by_id["call_1"].status == "error" and "bad.png" in by_id["call_1"].content
    assert by_id["call_2"].status == "success" and by_id["call_2"].artifact["pred_score"] > 0.5
    assert (
        by_id["call_3"].status == "error"
        and "region: Input should be greater than or equal to 0" in by_id["call_3"].content
    )
    assert by_id["call_4"].status == "error" and "invalid arguments: region" in by_id["call_4"].content
    assert by_id["call_5"].status == "error" and "no region 7" in by_id["call_5"].content
    assert by_id["call_6"].status == "success" and by_id["call_6"].artifact["box"]
    assert by_id["call_7"].status == "success"
    assert by_id["call_8"].status == "error" and "not a valid tool" in by_id["call_8"].content
    assert result["messages"][-1].content.startswith("Defective")
    # the session image was not replaced by the unreadable file
    assert session.image_path == "scratch.png"


def test_tools_without_image_or_references():
    detector = case.MeanDiffDetector()
    detector.fit([])
    empty = InspectionSession(MatchOfThought(detector, []))
    tools = {t.name: t for t in make_tools(empty)}
    assert "no image" in tools["detect"].invoke(_call("detect", {}, 0)).content
    empty.image = case.good()
    assert (
        "nothing to compare"
        in tools["compare_with_references"].invoke(_call("compare_with_references", {}, 1)).content
    )
    assert tools["detect"].invoke(_call("detect", {}, 2)).status == "success"
    msg = tools["regions"].invoke(_call("regions", {}, 3))
    assert msg.status == "success" and isinstance(msg.artifact, list)
