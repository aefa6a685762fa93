"""Training (agent/mllm/train): a real learning run on CPU, loss masking, checkpoints, resume, configs.

The learning test builds a tiny random LLaVA-OneVision (10 x 10 tokens per 40 px crop), draws a few
hundred 40 px plates with synthetic defects, trains stage 1 (expert) and stage 2 (projector + LLM)
briefly, and checks that the strict Yes/No answers on a held-out split go from chance to >= 0.85.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from agent.mllm.sequences import ANOMALY, IGNORE_INDEX, PHRASE, TEXT, VISUAL
from agent.mllm.train import TrainConfigError, apply_overrides, load_config, train_stage
from agent.mllm.train.data import (
    Conversation,
    TrainDataError,
    conversation_segments,
    labelled_images,
    micro_batches,
    read_llava_json,
)
from tests.agent.mllm.conftest import random_image


# ------------------------------------------------------------------------------------------ fixtures
@pytest.fixture(scope="module")
def plates(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Train and held-out plate sets (MVTec layout) and their detection conversations (LLaVA JSON)."""
    from instruct_data.instruct import InstructSettings, build_instruct
    from instruct_data.synthesis.plates import make_plate_dataset

    root = tmp_path_factory.mktemp("plates")
    make_plate_dataset(root / "train", train_good=200, test_good=0, test_bad=200, seed=1)
    make_plate_dataset(root / "held_out", train_good=20, test_good=30, test_bad=50, seed=2)
    for split in ("train", "held_out"):
        build_instruct(
            InstructSettings(out=str(root / f"{split}_instruct"), data=str(root / split), per_image=1)
        )
    return {
        "train": root / "train",
        "held_out": root / "held_out",
        "train_json": root / "train_instruct" / "instruct.json",
        "held_out_json": root / "held_out_instruct" / "instruct.json",
    }


@pytest.fixture(scope="module")
def tiny4_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from agent.mllm.testing import build_tiny_llava

    return build_tiny_llava(tmp_path_factory.mktemp("tiny_llava_p4"), patch_size=4, text_hidden_size=128)


def _cfg(name: str, stage: str, out: Path, **fields):
    cfg = load_config(name, stage=stage)
    return apply_overrides(cfg, {"out": str(out), "progress": False, **fields})


def _held_out_llm_cfg(out: Path, model: Path, plates: dict, **fields):
    """A tiny-llm stage-2 config on the held-out conversations, at lr 1e-3 (a few steps show a change)."""
    return _cfg("tiny-llm", "llm", out, model=str(model), data=[str(plates["held_out_json"])], lr=1e-3, **fields)


# ------------------------------------------------------------------------------------------ learning
def test_two_stages_learn_detection(tiny4_dir, plates, tmp_path):
    from agent.mllm.loading import load_model

    expert_cfg = _cfg(
        "tiny-expert", "expert", tmp_path / "expert", model=str(tiny4_dir), data=[str(plates["train"])]
    )
    stage1 = train_stage(expert_cfg)
    start1, end1 = stage1.loss_start_end()
    assert end1 < 0.5 * start1, stage1.losses[::50]
    expert_file = Path(stage1.artifacts["expert"])
    assert expert_file.is_file()

    llm_cfg = _cfg(
        "tiny-llm",
        "llm",
        tmp_path / "llm",
        model=str(tiny4_dir),
        expert=str(expert_file),
        data=[str(plates["train_json"])],
        eval_data=[str(plates["held_out_json"])],
    )
    stage2 = train_stage(llm_cfg)
    start2, end2 = stage2.loss_start_end()
    before, after = stage2.extra["eval_before"], stage2.extra["eval_after"]
    summary = json.loads((tmp_path / "llm" / "summary.json").read_text())
    print(
        f"\nstage 1: loss {start1:.3f} -> {end1:.3f} in {stage1.seconds:.1f} s; stage 2: loss {start2:.3f} -> "
        f"{end2:.3f} in {stage2.seconds:.1f} s; held-out before {before}, after {after}"
    )
    assert before["n"] == after["n"] == 100 and before["anomalous"] == 50
    assert 0.3 <= before["accuracy_p_yes"] <= 0.7  # chance: the untrained model has no idea
    assert after["accuracy"] >= 0.85 and after["answered_yes_no"] == 1.0
    assert end2 < 0.1 * start2
    assert summary["eval_after"]["accuracy"] == after["accuracy"]

    # the saved folder is a model load_model reads, expert included, and it still answers correctly
    model = load_model(tmp_path / "llm" / "model", dtype="float32")
    assert model.expert is not None
    from agent.mllm.train.evaluate import evaluate_detection

    again = evaluate_detection(model, read_llava_json(plates["held_out_json"])[:20], limit=20)
    assert again["accuracy"] >= 0.8


# ------------------------------------------------------------------------------------------ masking
def test_labels_only_on_assistant_answers(tiny_model):
    """Two rounds with an image, by hand: every label is -100 except the two answers and their end token."""
    conv = Conversation(
        id="x",
        image=None,
        turns=(
            ("user", "<image>\nAny defect? Answer Yes or No."),
            ("assistant", "Yes"),
            ("user", "Where is it?"),
            ("assistant", "The upper left."),
        ),
    )
    segments = conversation_segments(conv, system="You are a helpful assistant.")
    assert segments == [
        (
            "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n<image>\n"
            "Any defect? Answer Yes or No.<|im_end|>\n<|im_start|>assistant\n",
            False,
        ),
        ("Yes<|im_end|>", True),
        ("\n<|im_start|>user\nWhere is it?<|im_end|>\n<|im_start|>assistant\n", False),
        ("The upper left.<|im_end|>", True),
    ]
    image = random_image(36, 78, 5)
    inputs = tiny_model.build_segment_inputs([segments], [[image]], trainable=True)
    labels, kinds, ids = inputs.labels[0], inputs.token_kinds[0], inputs.input_ids[0]
    tok = tiny_model.tokenizer
    expected = (
        tok("Yes<|im_end|>", add_special_tokens=False)["input_ids"]
        + tok("The upper left.<|im_end|>", add_special_tokens=False)["input_ids"]
    )
    supervised = labels != IGNORE_INDEX
    assert labels[supervised].tolist() == expected
    assert torch.equal(labels[supervised], ids[supervised])  # each label sits on its own token
    assert (kinds[supervised] == TEXT).all()
    for k in (VISUAL, PHRASE, ANOMALY):  # image, phrase and expert tokens are never supervised
        assert (kinds == k).any() and not supervised[kinds == k].any()
    # the unsupervised text is the prompt, token for token: system, user turns and role headers
    text = tok.decode(ids[(kinds == TEXT) & ~supervised].tolist())
    assert text == segments[0][0].replace("<image>", "") + segments[2][0]
    assert torch.isfinite(tiny_model.forward(inputs).loss)


def test_answer_pieces_may_not_hold_images(tiny_model):
    with pytest.raises(ValueError, match="supervised"):
        tiny_model.build_segment_inputs([[("Q", False), ("<image> A", True)]], [[random_image(40, 40)]])


# ------------------------------------------------------------------------------------------ checkpoints
def test_expert_checkpoint_feeds_load_model(tiny_llava_dir, plates, tmp_path):
    from agent.mllm.loading import load_model

    cfg = _cfg(
        "tiny-expert",
        "expert",
        tmp_path,
        model=str(tiny_llava_dir),
        data=[str(plates["held_out"])],
        max_steps=3,
        mask_loss_weight=1.0,
        anyres=True,
        cache_features=False,
    )
    result = train_stage(cfg)
    assert result.steps == 3 and all(torch.isfinite(torch.tensor(result.losses)))
    model = load_model(tiny_llava_dir, expert=result.artifacts["expert"], dtype="float32")
    from safetensors.torch import load_file

    saved = load_file(result.artifacts["expert"])
    for name, value in model.expert.state_dict().items():
        assert torch.equal(value, saved[name])
    assert (tmp_path / "checkpoints" / "step-0000003" / "trainable.safetensors").is_file()
    assert [json.loads(line)["step"] for line in (tmp_path / "log.jsonl").read_text().splitlines()][-1] == 3


def _resume_pair(cfg_a, cfg_b, tmp_path, stage_dir):
    """Run A uninterrupted; run B from A's middle checkpoint; return both results."""
    a = train_stage(cfg_a)
    middle = tmp_path / "a" / "checkpoints" / stage_dir
    assert middle.is_dir()
    (tmp_path / "b" / "checkpoints").mkdir(parents=True)
    shutil.copytree(middle, tmp_path / "b" / "checkpoints" / stage_dir)
    shutil.copy(tmp_path / "a" / "log.jsonl", tmp_path / "b" / "log.jsonl")  # as if B had been A, interrupted
    b = train_stage(cfg_b, resume=True)
    steps = [json.loads(line)["step"] for line in (tmp_path / "b" / "log.jsonl").read_text().splitlines()]
    assert steps == sorted(set(steps)) and steps[-1] == b.steps  # the redone steps are logged once
    return a, b


def test_resume_gives_the_uninterrupted_result_expert(tiny_llava_dir, plates, tmp_path):
    from safetensors.torch import load_file

    common = dict(
        model=str(tiny_llava_dir),
        data=[str(plates["held_out"])],
        max_steps=6,
        save_every=3,
        batch_size=8,
        cache_features=False,
    )
    a, b = _resume_pair(
        _cfg("tiny-expert", "expert", tmp_path / "a", **common),
        _cfg("tiny-expert", "expert", tmp_path / "b", **common),
        tmp_path,
        "step-0000003",
    )
    assert b.start_step == 3 and b.steps == 6 and len(b.losses) == 6
    assert b.losses == pytest.approx(a.losses, rel=1e-5)
    wa, wb = load_file(a.artifacts["expert"]), load_file(b.artifacts["expert"])
    assert all(torch.allclose(wa[k], wb[k], atol=1e-6) for k in wa)


def test_resume_gives_the_uninterrupted_result_lora(tiny_llava_dir, plates, tmp_path):
    common = dict(
        model=str(tiny_llava_dir),
        expert="none",
        data=[str(plates["held_out_json"])],
        method="lora",
        max_steps=4,
        save_every=2,
        batch_size=4,
        lr=1e-3,
    )
    a, b = _resume_pair(
        _cfg("tiny-llm", "llm", tmp_path / "a", **common),
        _cfg("tiny-llm", "llm", tmp_path / "b", **common),
        tmp_path,
        "step-0000002",
    )
    assert b.start_step == 2 and b.steps == 4
    assert b.losses == pytest.approx(a.losses, rel=1e-4)
    from safetensors.torch import load_file

    wa = load_file(str(Path(a.artifacts["adapter"]) / "adapter_model.safetensors"))
    wb = load_file(str(Path(b.artifacts["adapter"]) / "adapter_model.safetensors"))
    assert wa.keys() == wb.keys() and all(torch.allclose(wa[k], wb[k], atol=1e-5) for k in wa)


def test_resume_without_checkpoint_is_one_line(tiny_llava_dir, plates, tmp_path):
    from agent.mllm.train import CheckpointError

    cfg = _cfg("tiny-expert", "expert", tmp_path, model=str(tiny_llava_dir), data=[str(plates["held_out"])])
    with pytest.raises(CheckpointError, match="nothing to resume") as err:
        train_stage(cfg, resume=True)
    assert "\n" not in str(err.value)


def _logits(model, conversations):
    from tools.image_io import load_image

    segments = [conversation_segments(c, "You are a helpful assistant.") for c in conversations]
    images = [[load_image(c.image)] for c in conversations]
    with torch.no_grad():
        return model.forward(model.build_segment_inputs(segments, images)).logits


@pytest.mark.parametrize("method", ["full", "lora"])
def test_llm_output_is_what_load_model_reads(tiny_llava_dir, plates, tmp_path, method):
    """The trained model (LoRA: still unmerged) and the saved folder (LoRA merged) give the same logits."""
    from agent.mllm.loading import load_model
    from agent.mllm.train.llm_stage import LLMStage
    from agent.mllm.train.loop import make_accelerator, run_training

    cfg = _held_out_llm_cfg(tmp_path, tiny_llava_dir, plates, expert="random", method=method, max_steps=3)
    task = LLMStage(cfg, "cpu")
    result = run_training(task, cfg, make_accelerator(cfg))
    task.model.llava.eval()
    conversations = task.conversations[:2]
    saved = load_model(result.artifacts["model"], dtype="float32")
    assert saved.expert is not None  # the random expert of the run, saved with the model
    assert torch.allclose(_logits(saved, conversations), _logits(task.model, conversations), atol=1e-4)
    if method == "lora":
        adapter = Path(result.artifacts["adapter"])
        assert (adapter / "adapter_config.json").is_file() and (
            adapter / "non_lora_trainables.safetensors"
        ).is_file()


def _bnb_4bit_cpu_reason() -> str | None:
    """None when a 4-bit layer runs on this CPU, else why not."""
    try:
        import bitsandbytes as bnb
    except ImportError:
        return "bitsandbytes is not installed"
    try:
        layer = bnb.nn.Linear4bit(64, 64, compute_dtype=torch.float32, quant_type="nf4")
        layer = layer.to("cpu")
        layer.weight = bnb.nn.Params4bit(torch.randn(64, 64), requires_grad=False, quant_type="nf4").to("cpu")
        layer(torch.randn(2, 64)).sum()
    except Exception as err:  # any backend failure means: no 4-bit on this CPU
        return f"bitsandbytes 4-bit does not run on this CPU: {type(err).__name__}: {str(err)[:80]}"
    return None


def test_qlora_trains_and_merges_on_cpu(tiny_llava_dir, plates, tmp_path):
    reason = _bnb_4bit_cpu_reason()
    if reason:
        pytest.skip(reason)
    from agent.mllm.loading import load_model

    cfg = _held_out_llm_cfg(tmp_path, tiny_llava_dir, plates, expert="none", method="qlora", max_steps=2)
    result = train_stage(cfg)
    assert all(torch.isfinite(torch.tensor(result.losses)))
    model = load_model(result.artifacts["model"], dtype="float32")  # merged, unquantized
    assert type(model.core.language_model.layers[0].self_attn.q_proj).__name__ == "Linear"


# ------------------------------------------------------------------------------------------ configs, data
def test_config_errors_name_file_and_field(tmp_path):
    cases = {
        "lr: fast\n": "field 'lr': expected a number, got 'fast'",
        "lora: {r: sixteen}\n": "field 'lora.r': expected an integer",
        "batch_sizee: 4\n": "unknown field 'batch_sizee'",
        "method: lorra\n": "field 'method': must be one of full, lora, qlora",
        "epochs: [1\n": "not valid YAML at line",
        "stage: expert\n": "field 'stage': this is a 'expert' config, not 'llm'",
    }
    for i, (text, message) in enumerate(cases.items()):
        path = tmp_path / f"c{i}.yaml"
        path.write_text("stage: llm\n" + text if not text.startswith("stage") else text)
        with pytest.raises(TrainConfigError) as err:
            load_config(str(path), stage="llm")
        assert message in str(err.value) and str(path) in str(err.value) and "\n" not in str(err.value)
    with pytest.raises(TrainConfigError, match="unknown field 'expert.embeding_dim'"):
        load_config("tiny-expert", overrides=["expert.embeding_dim=3"], stage="expert")
    with pytest.raises(TrainConfigError, match="not found"):
        load_config(str(tmp_path / "missing.yaml"))
    cfg = load_config("llm-lora", overrides=["lora.r=4", "lr=2e-3"], stage="llm")
    assert cfg.lora.r == 4 and cfg.lr == 0.002 and cfg.method == "lora"


def test_stage2_reader_rejects_malformed_items(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text(
        json.dumps(
            [
                {
                    "id": "a",
                    "image": "x.png",
                    "conversations": [
                        {"from": "gpt", "value": "Yes"},
                        {"from": "human", "value": "<image>\nQ"},
                    ],
                }
            ]
        )
    )
    with pytest.raises(TrainDataError, match="turns must alternate") as err:
        read_llava_json(bad)
    assert str(bad) in str(err.value)
    bad.write_text(
        json.dumps(
            [
                {
                    "id": "b",
                    "image": "x.png",
                    "conversations": [{"from": "human", "value": "Q"}, {"from": "gpt", "value": "A"}],
                }
            ]
        )
    )
    with pytest.raises(TrainDataError, match="<image> must stand once"):
        read_llava_json(bad)


def test_stage1_reads_synth_output(plates, tmp_path):
    from agent.cli import main

    good = plates["held_out"] / "plate" / "train" / "good"
    assert (
        main(["data", "synth", "--images", str(good), "--out", str(tmp_path / "synth"), "--kinds", "stain"])
        == 0
    )
    samples = labelled_images([str(tmp_path / "synth")])
    anomalous = [s for s in samples if s.anomalous]
    assert len(anomalous) == 20 and all(s.mask is not None and s.mask.is_file() for s in anomalous)
    assert sum(not s.anomalous for s in samples) == 20


def test_batch_order_is_seeded_and_sharded():
    a = micro_batches(10, 3, epoch=0, seed=1)
    assert a == micro_batches(10, 3, epoch=0, seed=1) != micro_batches(10, 3, epoch=1, seed=1)
    assert {i for b in a for i in b} == set(range(10)) and sum(len(b) for b in a) == 12  # last one filled up
    ranks = [micro_batches(10, 2, epoch=0, seed=1, world=2, rank=r) for r in (0, 1)]
    assert len(ranks[0]) == len(ranks[1]) == 3
    assert set(i for r in ranks for b in r for i in b) == set(range(10))


def test_data_group_reuses_the_commands():
    from agent.cli import build_parser
    from agent.commands.build_instruct import cmd_build_instruct
    from agent.commands.build_qa import cmd_build_qa
    from agent.commands.synth import cmd_synth

    parser = build_parser()
    new = parser.parse_args(["data", "instruct", "--data", "d", "--out", "o"])
    old = parser.parse_args(["build-instruct", "--data", "d", "--out", "o"])
    assert (
        new.func is old.func is cmd_build_instruct and vars(new).keys() - {"data_command"} == vars(old).keys()
    )
    assert parser.parse_args(["data", "qa", "--data", "d", "--out", "o"]).func is cmd_build_qa
    assert parser.parse_args(["data", "synth", "--images", "i", "--out", "o"]).func is cmd_synth
    assert parser.parse_args(["train", "llm", "--config", "llm-lora"]).stage == "llm"


def test_train_command_reports_config_errors_in_one_line(tmp_path, capsys):
    from agent.cli import main

    cfg = tmp_path / "bad.yaml"
    cfg.write_text("stage: expert\nepochs: many\n")
    assert main(["train", "expert", "--config", str(cfg)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("looktwice: error:") and "field 'epochs'" in err and len(err.splitlines()) == 1


def test_data_plates_command(tmp_path):
    from agent.cli import main

    assert (
        main(
            ["data", "plates", "--out", str(tmp_path), "--train-good", "2", "--test-bad", "4", "--seed", "3"]
        )
        == 0
    )
    root = tmp_path / "plate"
    assert len(list((root / "train" / "good").glob("*.png"))) == 2
    masks = list((root / "ground_truth").glob("*/*_mask.png"))
    assert len(masks) == 4
    from instruct_data.datasets import open_dataset

    samples = open_dataset(tmp_path).test_samples("plate")
    assert sum(s.gt_label for s in samples) == 4 and all(s.load_mask().any() for s in samples if s.gt_label)
