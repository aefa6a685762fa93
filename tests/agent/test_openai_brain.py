"""OpenAIBrain over real HTTP: a small scripted OpenAI-format server (http.server in a thread) answers
with canned JSON, errors, garbage or silence; the brain must send the right request and turn every
failure into a one-line `BrainError`. Also the `--brain` spec parser."""

from __future__ import annotations

import base64
import io
import json
import socket
import time

import pytest
from PIL import Image

from agent.brains.common import BrainError
from agent.brains.endpoint import normalize_base_url
from agent.brains.openai import OpenAIBrain
from agent.brains.spec import build_brain, parse_brain_spec
from tests.agent import agent_case as case
from tests.openai_server import ScriptedServer, completion
from tools.record import InspectionRecord, Region


@pytest.fixture
def server():
    s = ScriptedServer()
    yield s
    s.close()


def _record(path: str = "part.png") -> InspectionRecord:
    region = Region(
        (10, 12, 30, 20), 120, 0.012, (20.0, 16.0), 4.2, 0.8, 0.95, -0.2, "upper-left", "elongated"
    )
    return InspectionRecord(path, 0.93, True, 0.5, regions=[region], image_size=(96, 96))


def test_explain_and_answer_send_image_evidence_and_history(server, tmp_path):
    server.script = [
        (200, completion("Defective: a scratch at the upper left."), 0.0),
        (200, completion("About 1%."), 0.0),
    ]
    brain = OpenAIBrain(server.url, "tiny-vlm", api_key="secret", timeout=5)
    image = Image.new("RGB", (96, 96), (120, 130, 140))
    brain.use_image("part.png", image)
    record = _record()
    assert brain.explain(record) == "Defective: a scratch at the upper left."
    assert brain.last_call["usage"]["total_tokens"] == 13
    req = server.requests[0]
    assert req["path"] == "/v1/chat/completions"
    assert req["headers"]["Authorization"] == "Bearer secret"
    body = req["body"]
    assert body["model"] == "tiny-vlm" and body["temperature"] == 0.0 and body["max_tokens"] == 256
    system, user = body["messages"]
    assert system["role"] == "system" and "inspection" in system["content"]
    image_part, text_part = user["content"]  # one image, as the model was trained: no label before it
    url = image_part["image_url"]["url"]
    assert url.startswith("data:image/png;base64,")
    decoded = Image.open(io.BytesIO(base64.b64decode(url.split(",", 1)[1])))
    assert decoded.size == (96, 96) and decoded.getpixel((0, 0)) == (120, 130, 140)
    assert "anomaly score 0.93" in text_part["text"] and "upper-left" in text_part["text"]

    history = [("Is it defective?", "Yes.")]
    assert brain.answer("How big is it?", record, history) == "About 1%."
    msgs = server.requests[1]["body"]["messages"]
    assert [m["role"] for m in msgs] == ["system", "user", "assistant", "user"]
    assert msgs[2]["content"] == "Yes." and msgs[3]["content"] == "How big is it?"
    assert history == [("Is it defective?", "Yes.")]  # not mutated


def test_image_read_from_disk_and_text_only_when_missing(server, tmp_path):
    path = tmp_path / "p.png"
    Image.new("RGB", (20, 10), (5, 5, 5)).save(path)
    brain = OpenAIBrain(server.url, "m")
    brain.explain(_record(str(path)))
    assert server.requests[0]["body"]["messages"][1]["content"][0]["type"] == "image_url"
    brain.explain(_record(str(tmp_path / "missing.png")))
    assert isinstance(server.requests[1]["body"]["messages"][1]["content"], str)
    assert "Authorization" not in server.requests[1]["headers"]


@pytest.mark.parametrize(
    ("status", "payload", "message"),
    [
        (
            500,
            {"error": {"message": "CUDA out of memory", "type": "InternalServerError"}},
            "HTTP 500: CUDA out of memory",
        ),
        (404, b"<html>Not Found</html>", "HTTP 404: <html>Not Found</html>"),
        (200, b"{not json", "did not answer with JSON"),
        (200, {"object": "chat.completion", "choices": []}, "without choices[0].message.content"),
        (200, {"choices": [{"message": {"content": [1, 2]}}]}, "non-text message content"),
    ],
)
def test_server_faults_are_one_line_brain_errors(server, status, payload, message):
    server.script = [(status, payload, 0.0)]
    with pytest.raises(BrainError) as err:
        OpenAIBrain(server.url, "m", timeout=5).explain(_record())
    assert message in str(err.value) and "\n" not in str(err.value)


def test_timeout_and_refused_connection(server):
    server.script = [(200, completion("late"), 1.5)]
    t0 = time.perf_counter()
    with pytest.raises(BrainError, match=r"did not answer within 0.3 s"):
        OpenAIBrain(server.url, "m", timeout=0.3).explain(_record())
    assert time.perf_counter() - t0 < 1.4
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(BrainError, match=r"cannot reach http://127.0.0.1:\d+/v1/chat/completions"):
        OpenAIBrain(f"http://127.0.0.1:{port}", "m", timeout=2).explain(_record())


def test_settings_from_environment_and_url_normalisation(monkeypatch):
    assert normalize_base_url("http://host:8000") == "http://host:8000/v1"
    assert normalize_base_url("http://host:8000/v1/") == "http://host:8000/v1"
    assert normalize_base_url("https://api.example.com/openai/v1") == "https://api.example.com/openai/v1"
    with pytest.raises(BrainError, match="invalid OpenAI base URL"):
        normalize_base_url("localhost:8000")
    for var in ("LOOKTWICE_OPENAI_BASE_URL", "LOOKTWICE_OPENAI_MODEL", "LOOKTWICE_OPENAI_API_KEY"):
        monkeypatch.delenv(var, raising=False)
    with pytest.raises(BrainError, match="LOOKTWICE_OPENAI_BASE_URL"):
        OpenAIBrain()
    monkeypatch.setenv("LOOKTWICE_OPENAI_BASE_URL", "http://10.0.0.1:8000")
    with pytest.raises(BrainError, match="LOOKTWICE_OPENAI_MODEL"):
        OpenAIBrain()
    monkeypatch.setenv("LOOKTWICE_OPENAI_MODEL", "Qwen/Qwen2-VL-2B-Instruct")
    monkeypatch.setenv("LOOKTWICE_OPENAI_API_KEY", "k")
    brain = build_brain("openai")
    assert (brain.base_url, brain.model, brain.api_key) == (
        "http://10.0.0.1:8000/v1",
        "Qwen/Qwen2-VL-2B-Instruct",
        "k",
    )
    assert build_brain("openai:http://127.0.0.1:9/v1").model == "Qwen/Qwen2-VL-2B-Instruct"


def test_brain_specs():
    assert parse_brain_spec("openai:http://127.0.0.1:8000/v1#org/model") == (
        "openai",
        {"base_url": "http://127.0.0.1:8000/v1", "model": "org/model"},
    )
    assert parse_brain_spec("llava:/models/anomaly-ov") == ("llava", {"model": "/models/anomaly-ov"})
    assert parse_brain_spec(" RULE ") == ("rule", {})
    assert build_brain("rule").name == "rule"
    llava = build_brain("llava:/nowhere/model")
    assert llava.name == "llava" and llava.model_id == "/nowhere/model"  # loads lazily
    for bad, msg in (("", "empty"), ("rule:x", "takes no"), ("gpt", "unknown brain")):
        with pytest.raises(BrainError, match=msg):
            build_brain(bad)


def test_loop_with_openai_brain_rules_and_fallback(server):
    detector = case.MeanDiffDetector()
    detector.fit(case.references())
    bad = completion("Rules: count of dark holes is four")
    fixed = completion(
        '```json\n{"rules": [{"kind": "count", "colour_class": 0, "min": 0, "max": 9, "description": "holes"}]}\n```'
    )
    server.script = [
        (200, bad, 0.0),  # rules (the match step): prose
        (200, fixed, 0.0),  # rules: repaired
        (200, completion("Yes"), 0.0),  # P(Yes): recorded, not fused (brain_weight 0)
        (200, completion("First look: a dark scratch."), 0.0),  # first opinion
        (500, {"error": {"message": "overloaded"}}, 0.0),  # explain fails -> RuleBrain
        (200, completion("Yes, near the center."), 0.0),  # answer
    ]
    brain = OpenAIBrain(server.url, "m", timeout=5)
    loop = case.pipeline(detector, brain=brain, first_opinion=True, brain_weight=0.0)
    record = loop.inspect("scratch.png", case.scratched(), question="Is there a defect?")
    steps = {e["step"]: e for e in record.trace}
    assert steps["first_opinion"]["summary"] == "First look: a dark scratch."
    assert steps["first_opinion"]["model_call"]["model"] == "m"
    assert steps["propose_rules"]["status"] == "repaired"
    repair_msgs = server.requests[1]["body"]["messages"]
    assert repair_msgs[-2]["content"] == "Rules: count of dark holes is four"
    assert "no JSON object" in repair_msgs[-1]["content"]
    assert "HTTP 500: overloaded" in steps["explain"]["error"] and record.explanation.startswith("Defective")
    assert record.answer == "Yes, near the center."
    assert steps["brain_judgement"]["p_yes"] == 1.0 and record.decision["brain_fusion"].startswith("recorded, not fused")
    assert server.requests[3]["body"]["messages"][1]["content"][0]["type"] == "image_url"


def test_text_only_model_gets_the_evidence_without_the_image(server):
    """vLLM answers HTTP 400 "<model> is not a multimodal model" to an image: the brain asks again
    without it, says so in `last_call`, and sends no image from then on; other 400s stay errors."""
    refused = {"error": {"message": "tiny is not a multimodal model", "type": "BadRequestError", "code": 400}}
    server.script = [
        (400, refused, 0.0),
        (200, completion("Defective."), 0.0),
        (200, completion("About 1%."), 0.0),
        (400, {"error": {"message": "max_tokens is too large"}}, 0.0),
    ]
    brain = OpenAIBrain(server.url, "tiny", timeout=5)
    brain.use_image("part.png", Image.new("RGB", (32, 32)))
    assert brain.explain(_record()) == "Defective."
    assert brain.last_call["image_dropped"] == "tiny is not a multimodal model" and not brain.send_image
    first, second = (r["body"]["messages"][1]["content"] for r in server.requests)
    assert first[0]["type"] == "image_url" and second == first[1]["text"]
    assert brain.answer("How big?", _record()) == "About 1%."
    assert isinstance(server.requests[2]["body"]["messages"][1]["content"], str)
    assert "image_dropped" not in brain.last_call
    with pytest.raises(BrainError, match="HTTP 400: max_tokens is too large"):
        brain.explain(_record())
    assert len(server.requests) == 4


def _with_logprobs(text: str, top: list[tuple[str, float]]) -> dict:
    body = completion(text)
    body["choices"][0]["logprobs"] = {
        "content": [{"token": text, "logprob": top[0][1], "top_logprobs": [{"token": t, "logprob": lp} for t, lp in top]}]
    }
    return body


def _p_yes_or_text(p_yes: float, text: str):
    """A server that answers P(Yes) requests (logprobs asked for) with `p_yes`, others with `text`."""
    import math

    def answer(body: dict) -> tuple[int, dict, float]:
        if body.get("logprobs"):
            return 200, _with_logprobs("No", [("No", math.log(1 - p_yes)), ("Yes", math.log(p_yes))]), 0.0
        return 200, completion(text), 0.0

    return answer


def test_p_yes_is_asked_blind_and_recorded_not_fused_by_default(server):
    """P(Yes) carries the image and the detection question alone (no verdict, no score, no regions), is
    recorded in the decision, and leaves the verdict alone (brain_weight 0 by default)."""
    from agent.inspection import InspectionSettings, MatchSettings
    from prompts import load_prompts

    assert InspectionSettings().brain_weight == 0.0
    server.responder = _p_yes_or_text(0.05, "Defective: a scratch.")
    brain = OpenAIBrain(server.url, "m", timeout=5)
    plain = case.pipeline(match=MatchSettings(ask_rules=False)).inspect("scratch.png", case.scratched())
    record = case.pipeline(brain=brain, match=MatchSettings(ask_rules=False)).inspect("scratch.png", case.scratched())
    assert (record.verdict, record.pred_score) == (plain.verdict, plain.pred_score)
    assert record.decision["brain_p_yes"] == pytest.approx(0.05, abs=1e-3)
    assert record.decision["brain_fusion"] == "recorded, not fused into the score (brain_weight 0)"
    judged = next(e for e in record.trace if e["step"] == "brain_judgement")
    assert judged["changed"].startswith("nothing") and judged["model_call"]["images_sent"] == ["the whole image"]
    asked = next(r["body"] for r in server.requests if r["body"].get("logprobs"))
    system, user = asked["messages"]
    assert system["content"] == "You are a helpful assistant."  # the training system prompt
    image_part, question = user["content"]
    assert image_part["type"] == "image_url" and question["text"] == load_prompts("agent")["detection"].strip()
    assert asked["top_logprobs"] == 20


def test_views_only_when_asked_for(server):
    """By default the brain sees the inspected image alone; `views=on` adds the zoomed place and the
    nearest reference's same place, and the trace lists what each request carried."""
    from agent.inspection import MatchSettings

    server.responder = _p_yes_or_text(0.5, "Good: nothing stands out.")
    one = build_brain(f"openai:{server.url}#m")
    record = case.pipeline(brain=one, match=MatchSettings(ask_rules=False)).inspect("scratch.png", case.scratched())
    explain = next(e for e in record.trace if e["step"] == "explain")
    assert explain["images"] == ["the whole image"]
    three = build_brain(f"openai:{server.url}#m?views=on")
    record = case.pipeline(brain=three, match=MatchSettings(ask_rules=False)).inspect("scratch.png", case.scratched())
    explain = next(e for e in record.trace if e["step"] == "explain")
    assert explain["images"][0] == "the whole image" and "zoomed in" in explain["images"][1]
    assert explain["images"][2] == "the same place on the nearest good reference"
    parts = server.requests[-1]["body"]["messages"][1]["content"]
    assert [p["type"] for p in parts].count("image_url") == 3
    with pytest.raises(BrainError, match="views 'maybe' is not allowed"):
        build_brain(f"openai:{server.url}#m?views=maybe")


def test_fused_p_yes_gets_its_own_boundary_on_the_references(server):
    """With brain_weight > 0 the references' P(Yes) are asked at set-up, and the fused score's boundary
    is set on the references' fused held-out scores: the record states that boundary's rate."""
    from agent.inspection import MatchSettings

    server.responder = _p_yes_or_text(0.05, "Good: nothing stands out.")
    brain = OpenAIBrain(server.url, "m", timeout=5)
    loop = case.pipeline(brain=brain, brain_weight=1.0, show_verdict_to_brain=False, match=MatchSettings(ask_rules=False))
    at_setup = [r for r in server.requests if r["body"].get("logprobs")]
    assert len(at_setup) == len(loop.references)  # one P(Yes) per reference, asked once
    record = loop.inspect("scratch.png", case.scratched())
    judged = next(e for e in record.trace if e["step"] == "brain_judgement")
    assert judged["source"] == "logprobs" and judged["p_yes"] == pytest.approx(0.05, abs=1e-3)
    assert "fused with the brain's P(Yes)" in record.decision["method"]
    assert record.decision["brain_fusion"].startswith("fused with weight 1")
    # every reference said 0.05 and so did the part: under the fused boundary the part is not defective
    assert record.verdict != "defective"
    body = server.requests[-1]["body"]
    assert "detector calls the part" not in json.dumps(body) and "region" not in body["messages"][1]["content"][-1]["text"]


def test_p_yes_without_logprobs_is_the_parsed_answer(server):
    server.script = [(200, completion("Yes, there is a crack."), 0.0)]
    brain = OpenAIBrain(server.url, "m", timeout=5)
    assert brain.p_yes(_record()) == (1.0, "parsed answer")
