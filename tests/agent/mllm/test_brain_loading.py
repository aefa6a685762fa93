"""The LLaVA brain as a user runs it: options in the `--brain` spec, the expert only where it was trained,
one model for detector and brain, a missing model as one complete usage error."""

from __future__ import annotations

import importlib.util
import io
import json
import shutil
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path

import pytest
import torch

from agent.brains.common import BrainError
from agent.brains.spec import build_brain
from agent.mllm.chat_format import format_question
from agent.mllm.sequences import ANOMALY
from tests.agent.mllm.conftest import random_image
from tools.ltfm.checkpoints import EXPERT_FILENAME
from tools.ltfm.expert_marker import MARKER_FILENAME


@pytest.fixture(scope="module")
def marked_dir(tmp_path_factory) -> Path:
    """A folder whose LLM was (as far as the marker says) trained with its expert; the tiny model
    speaks (`build_tiny_llava(speaks=True)`), so its answers are words, not blanks."""
    from agent.mllm.loading import load_model
    from agent.mllm.testing import build_tiny_llava

    root = tmp_path_factory.mktemp("marked")
    torch.manual_seed(1)
    model = load_model(build_tiny_llava(root / "tiny", speaks=True), expert="random", dtype="float32")
    model.save_pretrained(str(root / "model"), trained_by="test: stage 2 stand-in")
    return root / "model"


@pytest.fixture(scope="module")
def unmarked_dir(marked_dir, tmp_path_factory) -> Path:
    """The same files with the expert copied in but no marker: a model nobody trained with the expert."""
    folder = tmp_path_factory.mktemp("unmarked") / "model"
    shutil.copytree(marked_dir, folder)
    (folder / MARKER_FILENAME).unlink()
    return folder


def _anomaly_tokens(model, image) -> int:
    inputs = model.build_inputs([format_question("Any defect?")], [[image]])
    return int((inputs.token_kinds == ANOMALY).sum())


# ------------------------------------------------------------------------------------------ options
def spy_from_pretrained(monkeypatch) -> list[dict]:
    """Record the keyword arguments `LlavaOnevisionForConditionalGeneration.from_pretrained` is given
    (it still loads, unchanged)."""
    from transformers import LlavaOnevisionForConditionalGeneration as Llava

    calls: list[dict] = []
    original = Llava.from_pretrained.__func__

    def spy(cls, *args, **kwargs):
        calls.append(kwargs)
        return original(cls, *args, **kwargs)

    monkeypatch.setattr(Llava, "from_pretrained", classmethod(spy))
    return calls


def test_spec_options_reach_from_pretrained(tiny_llava_dir, monkeypatch):
    calls = spy_from_pretrained(monkeypatch)
    brain = build_brain(f"llava:{tiny_llava_dir}?device=cpu&dtype=bf16&attn=eager")
    model = brain.load().llava
    assert calls[-1]["device_map"] == {"": "cpu"} and calls[-1]["dtype"] is torch.bfloat16
    assert calls[-1]["attn_implementation"] == "eager" and "quantization_config" not in calls[-1]
    assert next(model.parameters()).dtype == torch.bfloat16
    assert model.config._attn_implementation == "eager"
    assert brain.last_call == {} and brain.settings()["device"] == "cpu"
    fp32 = build_brain(f"llava:{tiny_llava_dir}?device=cpu&dtype=float32").load().llava
    assert calls[-1]["dtype"] is torch.float32 and next(fp32.parameters()).dtype == torch.float32


def test_cuda_asked_for_without_a_gpu(tiny_llava_dir):
    if torch.cuda.is_available():
        pytest.skip("a GPU is here")
    with pytest.raises(BrainError, match="torch sees no CUDA GPU"):
        build_brain(f"llava:{tiny_llava_dir}?device=cuda:1").load()


@pytest.mark.skipif(importlib.util.find_spec("bitsandbytes") is None, reason="bitsandbytes not installed")
def test_spec_quantization_reaches_from_pretrained(tiny_llava_dir, monkeypatch):
    import bitsandbytes as bnb

    calls = spy_from_pretrained(monkeypatch)
    model = build_brain(f"llava:{tiny_llava_dir}?device=cpu&quant=4bit").load()
    assert calls[-1]["quantization_config"].load_in_4bit and calls[-1]["device_map"] == {"": "cpu"}
    assert isinstance(model.core.language_model.layers[0].mlp.up_proj, bnb.nn.Linear4bit)


def test_device_auto_is_the_cpu_here_in_float32(tiny_llava_dir):
    if torch.cuda.is_available():
        pytest.skip("a GPU is here: auto means cuda")
    notes: list[str] = []
    brain = build_brain(f"llava:{tiny_llava_dir}")
    brain.note = notes.append
    model = brain.load()
    assert model.device.type == "cpu" and model.embed_dtype == torch.float32
    assert any("no CUDA GPU here" in n and "float32" in n for n in notes)


@pytest.mark.parametrize(
    ("option", "said"),
    [("device=gpu", "device 'gpu' is not allowed"), ("quant=3bit", "quant '3bit' is not allowed"),
     ("colour=red", "unknown llava option 'colour'"), ("dtype=fp8", "dtype 'fp8' is not allowed")],
)
def test_bad_option_is_a_usage_error(tiny_llava_dir, tmp_path, option, said):
    from agent.cli import main
    from tests.agent import agent_case as case

    files = case.write_case(tmp_path / "case")
    err = io.StringIO()
    with redirect_stderr(err), redirect_stdout(io.StringIO()):
        code = main(["ask", str(files["scratch"]), "Is there a defect?", "--brain", f"llava:{tiny_llava_dir}?{option}",
                     "--out", str(tmp_path / "o")])
    assert code == 2
    text = err.getvalue()
    assert said in text and text.count("\n") == 1 and "allowed" in text


def test_ask_with_brain_options(marked_dir, tmp_path):
    """`looktwice ask IMG "..." --refs R --brain 'llava:<folder>?device=cpu&dtype=float32'` answers with the
    model (no fallback), one AnyRes image with the expert's tokens, and records the request."""
    from agent.cli import main
    from tests.agent import agent_case as case

    files = case.write_case(tmp_path / "case")
    out = io.StringIO()
    with redirect_stdout(out), redirect_stderr(io.StringIO()):
        code = main(["ask", str(files["scratch"]), "Is there a defect?", "--refs", str(files["refs"]),
                     "--brain", f"llava:{marked_dir}?device=cpu&dtype=float32", "--json", "--out", str(tmp_path / "o"),
                     "--resolution", "96"])
    assert code == 0
    data = json.loads(out.getvalue())
    steps = {e["step"]: e for e in data["trace"]}
    assert data["brain"] == "llava" and "fallback" not in steps["answer"] and "fallback" not in steps["explain"]
    call = steps["answer"]["model_call"]
    assert call["images_sent"] == ["the whole image"] and call["expert_tokens"] > 0 and call["new_tokens"] > 0
    assert "trained with ltfm_expert.safetensors" in call["expert"]  # the trace says why the tokens are there


# ------------------------------------------------------------------------------------------ the expert
def test_expert_tokens_only_with_the_marker(marked_dir, unmarked_dir, tmp_path):
    from agent.mllm.loading import load_model

    image = random_image(36, 78, 11)
    marked = load_model(marked_dir, dtype="float32")
    assert marked.expert_tokens and _anomaly_tokens(marked, image) > 0
    plain = load_model(unmarked_dir, dtype="float32")
    assert plain.expert is not None and not plain.expert_tokens  # a detector, not tokens for the LLM
    assert _anomaly_tokens(plain, image) == 0 and "plain LLaVA-OneVision" in plain.expert_note
    # an expert swapped after training does not match the marker: plain again, and said why
    swapped = tmp_path / "swapped"
    shutil.copytree(marked_dir, swapped)
    from tools.ltfm.expert_io import load_expert, save_expert

    expert = load_expert(swapped / EXPERT_FILENAME)
    with torch.no_grad():
        expert.normal_prompt.add_(1.0)
    save_expert(expert, swapped / EXPERT_FILENAME)
    changed = load_model(swapped, dtype="float32")
    assert not changed.expert_tokens and "SHA-256" in changed.expert_note


def test_brain_and_models_listing_say_which(unmarked_dir, marked_dir):
    notes: list[str] = []
    brain = build_brain(f"llava:{unmarked_dir}?device=cpu&dtype=float32")
    brain.note = notes.append
    brain.load()
    assert brain.settings()["expert_tokens"] is False and "plain LLaVA-OneVision" in brain.settings()["expert_note"]
    assert any("plain LLaVA-OneVision" in n for n in notes)
    from tools.model_catalog import describe_llava_folder

    assert "plain LLaVA-OneVision" in describe_llava_folder(unmarked_dir)
    assert "trained with the expert" in describe_llava_folder(marked_dir)


# ------------------------------------------------------------------------------------------ one model
def test_detector_and_brain_on_one_checkpoint_load_it_once(marked_dir, unmarked_dir):
    from agent.inspection.detector_setup import fitted_detector

    for folder in (marked_dir, unmarked_dir):
        brain = build_brain(f"llava:{folder}?device=cpu&dtype=float32")
        said: list[str] = []
        det = fitted_detector("ltfm", {"model": str(folder)}, [], 1, said.append, brain=brain)
        shared = det._model
        model = brain.model
        assert shared is model or shared.vision is model.vision  # the brain's model, not a second copy
        assert any("loaded once" in s for s in said)
        image = random_image(40, 40, 12)
        assert det.predict([image])[0].pred_score == pytest.approx(
            model.encode_images([image])[0].score if shared is model else shared.encode_images([image])[0].score
        )
        assert model.expert_tokens is (folder == marked_dir)  # sharing never switches the tokens on


# ------------------------------------------------------------------------------------------ missing
def test_missing_model_is_one_complete_brain_error(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty"))
    brain = build_brain("llava:looktwice-test/no-such-model")
    with pytest.raises(BrainError) as err:
        brain.load()
    msg = str(err.value)
    assert "\n" not in msg and "looktwice-test/no-such-model" in msg
    assert "huggingface-cli download looktwice-test/no-such-model" in msg and msg.endswith(").")


# ------------------------------------------------------------------------------------------ training
def test_train_takes_the_same_spellings():
    """`looktwice train` reads device and dtype as the brain's spec does (stored in one form)."""
    from agent.mllm.train import TrainConfigError, apply_overrides, load_config

    cfg = apply_overrides(load_config("tiny-llm", stage="llm"), {"device": "CUDA:1", "dtype": "bf16"})
    assert (cfg.device, cfg.dtype) == ("cuda:1", "bfloat16")
    with pytest.raises(TrainConfigError, match="field 'dtype': 'fp8' is not allowed; use one of: auto, bf16"):
        apply_overrides(cfg, {"dtype": "fp8"})
    with pytest.raises(TrainConfigError, match="field 'device': 'gpu' is not allowed"):
        load_config("tiny-expert", overrides=["device=gpu"], stage="expert")


def test_the_detection_question_is_one_training_template():
    """P(Yes) asks what stage 2 taught: the question of prompts/agent.yaml is one of the training
    templates (and `chat_format` holds no other)."""
    import agent.mllm.chat_format as chat_format
    from agent.mllm.chat_format import detection_question
    from prompts import load_prompts

    templates = load_prompts("instruct_templates")["questions"]["detection"]
    assert detection_question() in [t.format(object="object") for t in templates]
    assert not hasattr(chat_format, "DETECTION_QUESTION")
