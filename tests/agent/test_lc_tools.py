"""LangChain tools and agent, driven offline by a scripted fake chat model: tool selection, argument
validation, tool errors and artifacts; and the agent over an OpenAI-compatible server (ChatOpenAI
against the scripted HTTP server of test_openai_brain)."""

from __future__ import annotations

import json
import sys

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("langchain")

from langchain_core.language_models.fake_chat_models import GenericFakeChatModel  # noqa: E402
from langchain_core.messages import AIMessage, ToolMessage  # noqa: E402

from agent.brains.common import BrainError  # noqa: E402
from agent.brains.openai import OpenAIBrain  # noqa: E402
from agent.brains.rule import RuleBrain  # noqa: E402
from agent.lc_models import openai_chat_model  # noqa: E402
from agent.lc_tools import InspectionSession, build_agent, chat_model_for, make_tools  # noqa: E402
from tests.agent import agent_case as case  # noqa: E402
from tests.openai_server import ScriptedServer, completion  # noqa: E402


class ScriptedChatModel(GenericFakeChatModel):
    """Replies from a script; tools are "bound" by ignoring them (the script already names them)."""

    def bind_tools(self, tools, **kwargs):
        return self


def _call(name: str, args: dict, i: int) -> dict:
    return {"name": name, "args": args, "id": f"call_{i}", "type": "tool_call"}


@pytest.fixture
def session():
    return InspectionSession(case.pipeline(), case.scratched(), "scratch.png")


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
    assert msg.artifact["ratio"] > 0 and msg.artifact["outcome"] in ("confirmed", "dismissed")
    msg = tools["compare_with_references"].invoke(_call("compare_with_references", {}, 3))
    assert "part(s)" in msg.content and "matching" in msg.artifact


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
    empty = InspectionSession(case.pipeline(case.MeanDiffDetector(), refs=[]))
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


# ------------------------------------------------------------------ OpenAI-compatible servers (ChatOpenAI)


def _tool_call_completion(calls: list[tuple[str, dict]], first: int = 0) -> dict:
    return {
        "id": "cmpl-tools",
        "object": "chat.completion",
        "created": 0,
        "model": "tiny",
        "choices": [
            {
                "index": 0,
                "message": {
                    "role": "assistant",
                    "content": None,
                    "tool_calls": [
                        {
                            "id": f"call_{i}",
                            "type": "function",
                            "function": {"name": n, "arguments": json.dumps(a)},
                        }
                        for i, (n, a) in enumerate(calls, first)
                    ],
                },
                "finish_reason": "tool_calls",
            }
        ],
        "usage": {"prompt_tokens": 50, "completion_tokens": 8, "total_tokens": 58},
    }


@pytest.mark.parametrize("how", ["spec", "brain"])
def test_agent_over_openai_compatible_server(session, how, monkeypatch):
    """The agent of `build_agent` over a (scripted) OpenAI-compatible server: the model's tool call
    runs our `detect`, its result goes back to the server, the server's final text is the answer."""
    pytest.importorskip("langchain_openai")
    monkeypatch.delenv("LOOKTWICE_OPENAI_API_KEY", raising=False)
    server = ScriptedServer()
    server.script = [
        (200, _tool_call_completion([("detect", {})]), 0.0),
        (200, _tool_call_completion([("regions", {"max_regions": 2})], first=1), 0.0),
        (200, completion("Defective: one dark scratch near the centre."), 0.0),
    ]
    try:
        spec = f"openai:{server.url}#tiny"
        model = spec if how == "spec" else OpenAIBrain(server.url, "tiny", api_key="k", timeout=5)
        agent = build_agent(model, make_tools(session))
        result = agent.invoke({"messages": [("user", "Is there a defect?")]})
    finally:
        server.close()
    assert result["messages"][-1].content == "Defective: one dark scratch near the centre."
    tool_msgs = {m.tool_call_id: m for m in result["messages"] if isinstance(m, ToolMessage)}
    assert tool_msgs["call_0"].status == "success" and "defective" in tool_msgs["call_0"].content
    assert tool_msgs["call_1"].status == "success" and tool_msgs["call_1"].content.startswith("0: ")
    assert session.record is not None and tool_msgs["call_0"].artifact["pred_label"] is True

    first, second, third = server.requests
    assert first["path"] == "/v1/chat/completions" and first["body"]["model"] == "tiny"
    expected_key = "EMPTY" if how == "spec" else "k"
    headers = {k.lower(): v for k, v in first["headers"].items()}
    assert headers["authorization"] == f"Bearer {expected_key}"
    names = {t["function"]["name"] for t in first["body"]["tools"]}
    assert names == {"detect", "regions", "zoom", "compare_with_references"}
    assert (
        first["body"]["messages"][0]["role"] == "system"
        and "LookTwice" in first["body"]["messages"][0]["content"]
    )
    sent_back = [m for m in third["body"]["messages"] if m["role"] == "tool"]
    assert [m["tool_call_id"] for m in sent_back] == ["call_0", "call_1"]
    assert sent_back[0]["content"].startswith("score ")  # the text, never the artifact (maps, crops)
    assert "anomaly_map" not in json.dumps(third["body"]) and second["body"]["model"] == "tiny"


def test_openai_chat_model_settings(monkeypatch):
    pytest.importorskip("langchain_openai")
    for var in ("LOOKTWICE_OPENAI_BASE_URL", "LOOKTWICE_OPENAI_MODEL", "LOOKTWICE_OPENAI_API_KEY"):
        monkeypatch.delenv(var, raising=False)
    with pytest.raises(BrainError, match="LOOKTWICE_OPENAI_BASE_URL"):
        openai_chat_model()
    monkeypatch.setenv("LOOKTWICE_OPENAI_BASE_URL", "http://127.0.0.1:9")
    with pytest.raises(BrainError, match="LOOKTWICE_OPENAI_MODEL"):
        openai_chat_model()
    monkeypatch.setenv("LOOKTWICE_OPENAI_MODEL", "org/model")
    monkeypatch.setenv("OPENAI_API_KEY", "sk-real-openai-key")
    chat = openai_chat_model(timeout=7)
    assert (chat.model_name, chat.openai_api_base) == ("org/model", "http://127.0.0.1:9/v1")
    assert chat.openai_api_key.get_secret_value() == "EMPTY"  # never the OpenAI key
    assert chat.request_timeout == 7.0 and chat.temperature == 0.0 and chat.max_retries == 0
    monkeypatch.setenv("LOOKTWICE_OPENAI_API_KEY", "local-key")
    assert openai_chat_model().openai_api_key.get_secret_value() == "local-key"

    brain_chat = chat_model_for(OpenAIBrain("http://10.1.2.3:8000", "m", timeout=3, max_tokens=64))
    assert (brain_chat.model_name, brain_chat.max_tokens, brain_chat.request_timeout) == ("m", 64, 3.0)
    assert chat_model_for("openai").model_name == "org/model"
    assert chat_model_for(chat) is chat
    with pytest.raises(BrainError, match="brain 'rule' cannot drive a tool-calling agent"):
        chat_model_for("rule")
    with pytest.raises(BrainError, match="cannot drive a tool-calling agent"):
        build_agent(RuleBrain(), [])

    monkeypatch.setitem(sys.modules, "langchain_openai", None)  # as if not installed
    with pytest.raises(BrainError, match=r"looktwice\[agent\]"):
        openai_chat_model()
