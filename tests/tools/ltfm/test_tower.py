"""The vision tower alone: the `ltfm` detector and stage-1 training never read the language model.

The proof is a checkpoint whose language model lives in a shard of its own, deleted: the tower loads
and gives the full model's features, the expert detector scores as it does on the whole folder, and
the full model no longer loads.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from tests.agent.mllm.conftest import random_image
from tools.ltfm.checkpoints import EXPERT_FILENAME
from tools.ltfm.tower import SAFETENSORS_INDEX, load_expert_vision, load_vision_tower, tower_key


def split_off_the_llm(folder: Path) -> Path:
    """Re-shard `folder`'s model.safetensors: the tower in one file, everything else in another (the
    index says which holds which); returns the second file."""
    from safetensors import safe_open
    from safetensors.torch import save_file

    single = folder / "model.safetensors"
    with safe_open(str(single), framework="pt") as f:
        state = {k: f.get_tensor(k) for k in list(f.keys())}
    tower = {k: v for k, v in state.items() if tower_key(k) is not None}
    rest = {k: v for k, v in state.items() if k not in tower}
    save_file(tower, str(folder / "model-00001-of-00002.safetensors"), metadata={"format": "pt"})
    save_file(rest, str(folder / "model-00002-of-00002.safetensors"), metadata={"format": "pt"})
    weight_map = {k: "model-00001-of-00002.safetensors" for k in tower}
    weight_map |= {k: "model-00002-of-00002.safetensors" for k in rest}
    (folder / SAFETENSORS_INDEX).write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    single.unlink()
    return folder / "model-00002-of-00002.safetensors"


@pytest.fixture(scope="module")
def sharded(tiny_model, tmp_path_factory):
    """The tiny model (with its random expert) saved, re-sharded, with the language model's shard gone."""
    folder = tmp_path_factory.mktemp("tower") / "model"
    tiny_model.save_pretrained(str(folder))
    llm_shard = split_off_the_llm(folder)
    assert any("language_model" in k for k in json.loads((folder / SAFETENSORS_INDEX).read_text())["weight_map"])
    llm_shard.unlink()
    return folder


def test_tower_loads_without_the_language_model(tiny_model, sharded):
    vision = load_vision_tower(sharded, dtype="float32")
    assert sum(p.numel() for p in vision.tower.parameters()) == sum(
        p.numel() for p in tiny_model.core.vision_tower.parameters()
    )
    image = random_image(36, 78, 3)
    layers = tiny_model.expert.config.layer_indices
    ours = vision.features([image], layers=layers)
    theirs = tiny_model.vision.features([image], layers=layers)
    assert ours.split_sizes == theirs.split_sizes and set(ours.layers) == set(theirs.layers)
    for index in ours.layers:
        assert torch.allclose(ours.layers[index], theirs.layers[index], atol=1e-6)
    # only the layers asked for are kept, not every hidden state
    assert set(ours.layers) == {vision.feature_layers[-1], *layers}
    # the whole model needs the shard that is gone
    from agent.mllm.loading import load_model

    with pytest.raises((OSError, FileNotFoundError, RuntimeError, ValueError)):
        load_model(sharded, dtype="float32")


def test_ltfm_detector_reads_only_the_tower(tiny_model, sharded):
    from tools.detectors import DETECTORS

    assert (sharded / EXPERT_FILENAME).is_file()
    det = DETECTORS.build("ltfm", model=str(sharded), device="cpu", dtype="float32")
    det.fit([])
    image = random_image(50, 90, 4)
    out = det.predict([image])[0]
    assert out.pred_score == pytest.approx(tiny_model.encode_images([image])[0].score, abs=1e-5)
    assert load_expert_vision(sharded, dtype="float32") is not None


def test_stage1_reads_only_the_tower(sharded, tmp_path):
    """One step of stage 1 on the folder whose language model is gone."""
    from agent.mllm.train import apply_overrides, load_config, train_stage
    from instruct_data.synthesis.plates import make_plate_dataset

    data = tmp_path / "plates"
    make_plate_dataset(data, train_good=4, test_good=0, test_bad=4, seed=3)
    cfg = apply_overrides(
        load_config("tiny-expert", stage="expert"),
        {"model": str(sharded), "data": [str(data)], "out": str(tmp_path / "run"), "max_steps": 1,
         "batch_size": 2, "progress": False},
    )
    result = train_stage(cfg)
    assert result.steps == 1 and Path(result.artifacts["expert"]).is_file()
