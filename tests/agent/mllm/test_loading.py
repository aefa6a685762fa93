"""Loading: local folders, missing models, expert files, save/reload, 4-bit on CPU, the `ltfm` detector."""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest
import torch

from agent.mllm.loading import load_model
from tests.agent.mllm.conftest import random_image
from tests.helpers import fresh_python
from tools.ltfm.checkpoints import EXPERT_FILENAME, ModelNotFoundError
from tools.ltfm.expert_io import save_expert


def test_import_is_light():
    code = (
        "import sys, agent.mllm; light = 'torch' not in sys.modules; import tools.ltfm.expert, "
        "agent.mllm.model, agent.mllm.loading; print(light, 'transformers' in sys.modules, "
        "agent.mllm.load_model is agent.mllm.loading.load_model)"
    )
    assert fresh_python(code) == "True False True"


def test_missing_hub_model_gives_one_line(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    with pytest.raises(ModelNotFoundError) as err:
        load_model("looktwice-test/no-such-model")
    msg = str(err.value)
    assert "\n" not in msg
    assert "'looktwice-test/no-such-model'" in msg and "HF_HUB_OFFLINE is set" in msg
    assert "huggingface-cli download looktwice-test/no-such-model" in msg
    assert err.value.__cause__ is None and err.value.__suppress_context__


def test_save_and_reload_folder_with_expert(tiny_model, tmp_path):
    folder = tmp_path / "saved"
    tiny_model.save_pretrained(str(folder))
    assert (folder / EXPERT_FILENAME).is_file()
    reloaded = load_model(folder, dtype="float32")  # expert="auto" finds the saved expert
    assert reloaded.expert is not None
    image = random_image(36, 78, 51)
    a = tiny_model.encode_images([image])[0]
    b = reloaded.encode_images([image])[0]
    assert a.score == pytest.approx(b.score, abs=1e-6)
    assert torch.allclose(a.anomaly_embeds, b.anomaly_embeds, atol=1e-5)
    bare = load_model(folder, expert=None, dtype="float32")
    enc = bare.encode_images([image])[0]
    assert bare.expert is None and enc.anomaly_embeds is None and enc.score is None
    inputs = bare.build_inputs(["<image>\nAny defect?"], [[image]])
    assert int((inputs.token_kinds == 3).sum()) == 0  # no anomaly tokens without the expert
    save_expert(tiny_model.expert, tmp_path / "e.safetensors")
    explicit = load_model(folder, expert=tmp_path / "e.safetensors", dtype="float32")
    assert explicit.encode_images([image])[0].score == pytest.approx(a.score, abs=1e-6)


@pytest.mark.skipif(importlib.util.find_spec("bitsandbytes") is None, reason="bitsandbytes not installed")
def test_4bit_load_on_cpu(tiny_llava_dir):
    import bitsandbytes as bnb

    model = load_model(tiny_llava_dir, expert="random", dtype="float32", quantization="4bit")
    core = model.core
    assert isinstance(core.language_model.layers[0].mlp.up_proj, bnb.nn.Linear4bit)
    assert not isinstance(core.multi_modal_projector.linear_1, bnb.nn.Linear4bit)
    assert not any(isinstance(m, bnb.nn.Linear4bit) for m in core.vision_tower.modules())
    assert model.expert is not None and model.expert.dtype == torch.float32
    p = model.yes_probability([random_image(40, 40, 61)])
    assert 0 <= p[0] <= 1


def test_ltfm_detector(tiny_model, tmp_path):
    from tools.detectors import DETECTORS, DetectorError

    assert "ltfm" in DETECTORS.names()
    cls = DETECTORS.get("ltfm")
    assert cls.name == "ltfm" and cls.requires_references is False
    folder = tmp_path / "with_expert"
    tiny_model.save_pretrained(str(folder))
    det = DETECTORS.build("ltfm", model=str(folder), dtype="float32")
    det.fit([])
    images = [random_image(50, 90, 71), random_image(40, 40, 72)]
    outs = det.predict(images)
    assert len(outs) == 2
    for out, im in zip(outs, images, strict=True):
        assert out.anomaly_map.shape == (im.height, im.width) and out.anomaly_map.dtype == np.float32
        assert 0.0 <= out.pred_score <= 1.0
        assert float(out.anomaly_map.min()) >= 0.0 and float(out.anomaly_map.max()) <= 1.0
    reused = cls(loaded=tiny_model).predict(images[:1])[0]
    assert reused.pred_score == pytest.approx(outs[0].pred_score, abs=1e-5)
    bare = tmp_path / "bare"
    tiny_model.llava.save_pretrained(bare)
    tiny_model.image_processor.save_pretrained(bare)
    tiny_model.tokenizer.save_pretrained(bare)
    with pytest.raises(DetectorError, match="no expert weights"):
        cls(model=str(bare)).predict(images[:1])
    with pytest.raises(DetectorError, match="not found"):
        cls(model=str(tmp_path / "nowhere")).fit([])


def test_full_size_config_gives_official_expert_sizes():
    from agent.mllm.bench import build_full_size
    from agent.mllm.testing import llava_ov_05b_config
    from tools.ltfm.expert import ExpertConfig

    config = llava_ov_05b_config()
    cfg = ExpertConfig.from_vision_config(config.vision_config)
    assert (cfg.hidden_size, cfg.grid_size, cfg.num_patches) == (1152, 27, 729)
    assert cfg.layer_indices == (7, 13, 19, 25)
    assert config.text_config.hidden_size == 896 and len(config.image_grid_pinpoints) == 36
    assert callable(build_full_size)
