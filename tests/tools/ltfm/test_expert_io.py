"""Expert save/load (safetensors, strict) and the converter for official Anomaly-OV checkpoints."""

from __future__ import annotations

import pytest
import torch

from tools.ltfm.expert import AnomalyExpert, ExpertConfig
from tools.ltfm.expert_io import (
    ExpertWeightsError,
    convert_official_state_dict,
    infer_official_config,
    load_expert,
    load_official_expert,
    read_expert_config,
    save_expert,
)

C, G = 32, 5


def tiny_config() -> ExpertConfig:
    return ExpertConfig(
        hidden_size=C,
        grid_size=G,
        layer_indices=(7, 13, 19, 25),
        embedding_dim=16,
        class_dim=16,
        attention_dim=16,
        predictor_dim=16,
    )


def official_state_dict(
    hidden: int, patches: int, dim: int = 512, pred: int = 512
) -> dict[str, torch.Tensor]:
    """A synthetic state dict with the official key layout and shapes (embedding = class = attention dim)."""
    g = torch.Generator().manual_seed(0)

    def r(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=g) * 0.05

    sd = {
        "positive_embedding": r(1, dim),
        "negative_embedding": r(1, dim),
        "pooling_layer.0.weight": r(1, patches),
        "pooling_layer.0.bias": r(1),
        "class_predictor.0.weight": r(dim, hidden),
        "class_predictor.0.bias": r(dim),
        "class_predictor.2.weight": r(dim, dim),
        "class_predictor.2.bias": r(dim),
        "final_predictor.0.weight": r(pred, hidden),
        "final_predictor.0.bias": r(pred),
        "final_predictor.2.weight": r(1, pred),
        "final_predictor.2.bias": r(1),
        "q_former.query_proj.weight": r(dim, hidden),
        "q_former.query_proj.bias": r(dim),
        "q_former.key_proj.weight": r(dim, hidden),
        "q_former.key_proj.bias": r(dim),
    }
    for i in range(4):
        sd[f"siglip_adaptors.{i}.weight"] = r(dim, hidden)
        sd[f"siglip_adaptors.{i}.bias"] = r(dim)
        sd[f"prompt_adaptors.{i}.weight"] = r(dim, 2 * dim)
        sd[f"prompt_adaptors.{i}.bias"] = r(dim)
    return sd


def run(expert: AnomalyExpert, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    final = torch.randn(3, G * G, C, generator=g)
    levels = [torch.randn(3, G * G, C, generator=g) for _ in range(4)]
    with torch.no_grad():
        return expert.eval()(final, levels, [3])


def test_save_load_round_trip(tmp_path):
    torch.manual_seed(0)
    expert = AnomalyExpert(tiny_config())
    path = save_expert(expert, tmp_path / "sub" / "expert.safetensors")
    assert read_expert_config(path) == expert.config
    loaded = load_expert(path)
    for k, v in expert.state_dict().items():
        assert torch.equal(v, loaded.state_dict()[k]), k
    assert torch.equal(run(expert).image_scores, run(loaded).image_scores)


def test_load_is_strict(tmp_path):
    from safetensors.torch import load_file, save_file

    torch.manual_seed(0)
    path = save_expert(AnomalyExpert(tiny_config()), tmp_path / "e.safetensors")
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata()
    state = load_file(str(path))
    del state["score_head.2.bias"]
    state["extra.weight"] = torch.zeros(1)
    save_file(state, str(tmp_path / "bad.safetensors"), metadata=meta)
    with pytest.raises(ExpertWeightsError) as err:
        load_expert(tmp_path / "bad.safetensors")
    msg = str(err.value)
    assert "missing keys: score_head.2.bias" in msg and "unexpected keys: extra.weight" in msg
    with pytest.raises(ExpertWeightsError, match="not found"):
        load_expert(tmp_path / "nope.safetensors")
    other = ExpertConfig(**{**tiny_config().to_dict(), "embedding_dim": 8})
    with pytest.raises(ExpertWeightsError, match="shape mismatch"):
        load_expert(path, config=other)


def test_converter_maps_every_official_key():
    sd = official_state_dict(hidden=C, patches=G * G, dim=16, pred=16)
    converted = convert_official_state_dict(sd)
    expert = AnomalyExpert(tiny_config())
    assert set(converted) == set(expert.state_dict())
    assert torch.equal(converted["normal_prompt"], sd["positive_embedding"])
    assert torch.equal(converted["selector.key_proj.weight"], sd["q_former.key_proj.weight"])
    assert torch.equal(converted["feature_adapters.3.bias"], sd["siglip_adaptors.3.bias"])
    assert torch.equal(converted["token_pool.weight"], sd["pooling_layer.0.weight"])
    wrapped = convert_official_state_dict({"module." + k: v for k, v in sd.items()})
    assert set(wrapped) == set(converted)


def test_official_checkpoint_loads_strictly(tmp_path):
    sd = official_state_dict(hidden=C, patches=G * G, dim=16, pred=16)
    torch.save(sd, tmp_path / "pretrained_expert_tiny.pth")
    expert = load_official_expert(tmp_path / "pretrained_expert_tiny.pth", config=tiny_config())
    assert torch.equal(expert.anomalous_prompt, sd["negative_embedding"])
    inferred = load_official_expert(tmp_path / "pretrained_expert_tiny.pth")
    assert inferred.config == tiny_config()
    assert torch.equal(run(expert).image_scores, run(inferred).image_scores)


def test_official_converter_fails_with_the_key_list(tmp_path):
    sd = official_state_dict(hidden=C, patches=G * G, dim=16, pred=16)
    bad = dict(sd)
    bad["emotion_classifier.0.weight"] = bad.pop("class_predictor.0.weight")
    with pytest.raises(ExpertWeightsError, match=r"unexpected keys: emotion_classifier\.0\.weight"):
        convert_official_state_dict(bad)
    missing = dict(sd)
    del missing["q_former.query_proj.bias"], missing["siglip_adaptors.2.weight"]
    torch.save(missing, tmp_path / "missing.pth")
    with pytest.raises(ExpertWeightsError) as err:
        load_official_expert(tmp_path / "missing.pth", config=tiny_config())
    assert "missing keys: feature_adapters.2.weight, selector.query_proj.bias" in str(err.value)
    wrong = official_state_dict(hidden=C, patches=36, dim=16, pred=16)  # a 6x6 tower's checkpoint
    torch.save(wrong, tmp_path / "wrong.pth")
    with pytest.raises(ExpertWeightsError, match=r"shape mismatch: token_pool\.weight"):
        load_official_expert(tmp_path / "wrong.pth", config=tiny_config())
    (tmp_path / "junk.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(ExpertWeightsError, match="cannot read"):
        load_official_expert(tmp_path / "junk.pth")


def test_full_size_official_layout_gives_so400m_sizes():
    sd = official_state_dict(hidden=1152, patches=729)
    cfg = infer_official_config(sd)
    assert (cfg.hidden_size, cfg.grid_size, cfg.num_patches, cfg.embedding_dim) == (1152, 27, 729, 512)
    assert cfg.layer_indices == (7, 13, 19, 25)
    expert = AnomalyExpert(cfg)
    expert.load_state_dict(convert_official_state_dict(sd), strict=True)
