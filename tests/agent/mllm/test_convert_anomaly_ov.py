"""The official Anomaly-OV stage-2 converter, on a checkpoint in the official layout.

The layout is what the public Anomaly-OV code saves (github.com/honda-research-institute/
Anomaly-OneVision: `LlavaQwenForCausalLM` with the expert attached as `anomaly_encoder`): the tiny test
model's weights are written under those key names (`model.layers.*`, `model.vision_tower.vision_tower.
vision_model.*`, `model.mm_projector.{0,2}.*`, `model.image_newline`, `anomaly_encoder.*` with
`AnomalyOV`'s own parameter names) and shapes (projector LLM-width x tower-width, `image_newline` of
the LLM's width, the expert's 512-wide adapters), with a `llava_qwen` config. Converted, the folder
must give the same logits as the model it came from, with the expert's tokens.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from agent.mllm.chat_format import format_question
from agent.mllm.convert_anomaly_ov import ConversionError, convert_anomaly_ov
from tests.agent.mllm.conftest import random_image
from tools.ltfm.expert_io import _OFFICIAL_RENAMES

#: transformers LLaVA-OneVision name -> the official (LLaVA-NeXT llava_qwen) name
TO_OFFICIAL = (
    ("model.language_model.", "model."),
    ("model.vision_tower.", "model.vision_tower.vision_tower.vision_model."),
    ("model.multi_modal_projector.linear_1.", "model.mm_projector.0."),
    ("model.multi_modal_projector.linear_2.", "model.mm_projector.2."),
    ("model.image_newline", "model.image_newline"),
    ("lm_head.", "lm_head."),
)


def _official(name: str) -> str:
    for new, old in TO_OFFICIAL:
        if name.startswith(new):
            return old + name[len(new) :]
    raise AssertionError(name)


def _official_expert(name: str) -> str:
    for old, new in _OFFICIAL_RENAMES:
        if name == new or (new.endswith(".") and name.startswith(new)):
            return old + name[len(new) :]
    raise AssertionError(name)


def write_official(model, folder: Path, with_expert: bool = True) -> Path:
    """The tiny model as the official training saves a stage-2 checkpoint (two shards, llava_qwen)."""
    from safetensors.torch import save_file

    folder.mkdir(parents=True)
    # LLaVA-NeXT's SigLIP has no pooling head (the tiny transformers tower keeps one, unused)
    state = {
        _official(k): v.detach().clone().contiguous()
        for k, v in model.llava.state_dict().items()
        if ".head." not in k
    }
    if with_expert:
        state.update(
            {"anomaly_encoder." + _official_expert(k): v.clone() for k, v in model.expert.state_dict().items()}
        )
    keys = sorted(state)
    half = len(keys) // 2
    save_file({k: state[k] for k in keys[:half]}, str(folder / "model-00001-of-00002.safetensors"))
    save_file({k: state[k] for k in keys[half:]}, str(folder / "model-00002-of-00002.safetensors"))
    text = model.llava.config.text_config.to_dict()
    config = {
        **{k: v for k, v in text.items() if k not in ("architectures", "model_type", "transformers_version")},
        "architectures": ["LlavaQwenForCausalLM"],
        "model_type": "llava_qwen",
        "mm_vision_tower": "tiny-siglip-for-tests",
        "mm_hidden_size": model.llava.config.vision_config.hidden_size,
        "mm_projector_type": "mlp2x_gelu",
        "mm_vision_select_layer": -2,
        "mm_patch_merge_type": "spatial_unpad",
        "image_aspect_ratio": "anyres_max_9",
        "image_grid_pinpoints": [list(p) for p in model.llava.config.image_grid_pinpoints],
        "tie_word_embeddings": True,
    }
    (folder / "config.json").write_text(json.dumps(config), encoding="utf-8")
    model.tokenizer.save_pretrained(folder)
    return folder


def test_official_layout_has_the_official_names_and_shapes(tiny_model, tmp_path):
    from safetensors import safe_open

    src = write_official(tiny_model, tmp_path / "official")
    shapes = {}
    for file in src.glob("*.safetensors"):
        with safe_open(str(file), framework="pt") as f:
            shapes.update({k: tuple(f.get_slice(k).get_shape()) for k in list(f.keys())})
    text, vision = tiny_model.llava.config.text_config, tiny_model.llava.config.vision_config
    assert shapes["model.mm_projector.0.weight"] == (text.hidden_size, vision.hidden_size)
    assert shapes["model.mm_projector.2.weight"] == (text.hidden_size, text.hidden_size)
    assert shapes["model.image_newline"] == (text.hidden_size,)
    assert shapes["model.embed_tokens.weight"][1] == text.hidden_size
    assert "model.vision_tower.vision_tower.vision_model.embeddings.patch_embedding.weight" in shapes
    assert not any(".head." in k for k in shapes)  # LLaVA-NeXT removes SigLIP's head
    grid = (vision.image_size // vision.patch_size) ** 2
    assert shapes["anomaly_encoder.pooling_layer.0.weight"] == (1, grid)
    assert shapes["anomaly_encoder.positive_embedding"] == (1, 512)
    assert shapes["anomaly_encoder.q_former.query_proj.weight"] == (512, vision.hidden_size)
    assert shapes["anomaly_encoder.prompt_adaptors.3.weight"] == (512, 1024)


def test_converted_folder_is_the_model_with_its_expert(tiny_model, tmp_path):
    from agent.mllm.loading import load_model
    from tools.ltfm.expert_marker import check_expert_marker

    src = write_official(tiny_model, tmp_path / "official")
    out = convert_anomaly_ov(src, tmp_path / "looktwice", vision=tiny_model.llava.config.vision_config)
    assert check_expert_marker(out).marker is not None
    converted = load_model(out, dtype="float32")
    assert converted.expert_tokens and "convert anomaly-ov" in converted.expert_note
    # the source model with the converted folder's preprocessing (SigLIP's 0.5 mean and std, as the
    # official processor; the tiny model's own processor normalizes like CLIP)
    from agent.mllm.model import LookTwiceModel

    source = LookTwiceModel(tiny_model.llava, converted.image_processor, tiny_model.tokenizer, expert=tiny_model.expert)
    image = random_image(36, 78, 5)
    prompt = format_question("Is there any defect?")
    with torch.no_grad():
        a = source.forward(source.build_inputs([prompt], [[image]])).logits
        b = converted.forward(converted.build_inputs([prompt], [[image]])).logits
    assert a.shape == b.shape and torch.allclose(a, b, atol=1e-5)
    # the processor of the folder expands <image> as the model counts it (what vLLM reads)
    from transformers import AutoProcessor

    processor = AutoProcessor.from_pretrained(str(out))
    ids = processor(text="<image>", images=[image], return_tensors="pt")["input_ids"]
    assert int((ids == converted.llava.config.image_token_id).sum()) == converted.encode_images([image])[0].visual_embeds.shape[0]


def test_expert_from_the_official_pth_when_the_checkpoint_has_none(tiny_model, tmp_path):
    src = write_official(tiny_model, tmp_path / "official", with_expert=False)
    with pytest.raises(ConversionError, match="--expert"):
        convert_anomaly_ov(src, tmp_path / "a", vision=tiny_model.llava.config.vision_config)
    pth = tmp_path / "pretrained_expert_tiny.pth"
    torch.save({_official_expert(k): v for k, v in tiny_model.expert.state_dict().items()}, pth)
    out = convert_anomaly_ov(src, tmp_path / "b", expert=pth, vision=tiny_model.llava.config.vision_config)
    from agent.mllm.loading import load_model

    converted = load_model(out, dtype="float32")
    source = converted.expert.state_dict()
    assert all(torch.equal(source[k], v) for k, v in tiny_model.expert.state_dict().items())
    assert converted.expert_tokens


def test_not_the_official_layout_is_refused(tiny_model, tmp_path):
    from safetensors.torch import save_file

    src = write_official(tiny_model, tmp_path / "official")
    save_file({"something.else.weight": torch.zeros(2)}, str(src / "extra.safetensors"))
    with pytest.raises(ConversionError, match="something.else.weight"):
        convert_anomaly_ov(src, tmp_path / "x", vision=tiny_model.llava.config.vision_config)
    config = json.loads((src / "config.json").read_text())
    with pytest.raises(ConversionError, match="not one this converter knows"):
        convert_anomaly_ov(src, tmp_path / "y")
    assert config["model_type"] == "llava_qwen"
