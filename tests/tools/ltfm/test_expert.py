"""The LTFM anomaly expert as a plain torch module: sizes, shapes, determinism, gradients, learning."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch

from tools.ltfm.expert import (
    OFFICIAL_LAYER_INDICES,
    AnomalyExpert,
    ExpertConfig,
    assemble_image_map,
    balanced_bce_loss,
    default_layer_indices,
)

C, G = 32, 5  # tiny width and an odd grid, like SigLIP's 27x27


def tiny_config(**kw) -> ExpertConfig:
    base = {"hidden_size": C, "grid_size": G, "layer_indices": (1, 2, 3, 4), "embedding_dim": 16}
    base.update(kw)
    return ExpertConfig(class_dim=16, attention_dim=16, predictor_dim=16, **base)


def features(n: int, levels: int = 4, seed: int = 0) -> tuple[torch.Tensor, list[torch.Tensor]]:
    g = torch.Generator().manual_seed(seed)
    final = torch.randn(n, G * G, C, generator=g)
    return final, [torch.randn(n, G * G, C, generator=g) for _ in range(levels)]


def test_layer_indices_follow_the_official_ones():
    assert default_layer_indices(26) == OFFICIAL_LAYER_INDICES
    assert default_layer_indices(27) == OFFICIAL_LAYER_INDICES
    assert default_layer_indices(4) == (1, 2, 3, 4)
    small = default_layer_indices(12)
    assert list(small) == sorted(small) and all(1 <= i <= 12 for i in small)
    with pytest.raises(ValueError):
        default_layer_indices(0)


def test_config_from_vision_config():
    so400m = SimpleNamespace(hidden_size=1152, image_size=384, patch_size=14, num_hidden_layers=26)
    cfg = ExpertConfig.from_vision_config(so400m)
    assert (cfg.hidden_size, cfg.grid_size, cfg.num_patches) == (1152, 27, 729)
    assert cfg.layer_indices == (7, 13, 19, 25) and cfg.embedding_dim == 512
    tiny = SimpleNamespace(hidden_size=64, image_size=40, patch_size=8, num_hidden_layers=4)
    cfg = ExpertConfig.from_vision_config(tiny, embedding_dim=32)
    assert (cfg.hidden_size, cfg.grid_size, cfg.embedding_dim, cfg.layer_indices) == (64, 5, 32, (1, 2, 3, 4))
    assert ExpertConfig.from_dict(cfg.to_dict()) == cfg


def test_shapes_for_several_images():
    torch.manual_seed(0)
    expert = AnomalyExpert(tiny_config()).eval()
    final, levels = features(6)
    out = expert(final, levels, split_sizes=[5, 1])
    assert out.crop_maps.shape == (6, 1, G, G)
    assert out.level_maps.shape == (4, 6, 1, G, G)
    assert out.selected_tokens.shape == (6 * 4, C)
    assert out.token_significance.shape == (6, 4)
    assert out.crop_significance.shape == (6,)
    assert out.image_tokens.shape == (2, C)
    assert out.image_scores.shape == (2,) and torch.all((out.image_scores > 0) & (out.image_scores < 1))
    assert torch.all((out.crop_maps >= 0) & (out.crop_maps <= 1))
    maps, tokens = out.per_image(0)
    assert maps.shape == (5, 1, G, G) and tokens.shape == (5, 4, C)
    assert out.image_maps is None
    out = expert(final, levels, [5, 1], image_sizes=[(50, 90), (33, 21)], grid_shapes=[(2, 2), None])
    assert [tuple(m.shape) for m in out.image_maps] == [(50, 90), (33, 21)]


def test_deterministic_and_images_do_not_mix():
    torch.manual_seed(0)
    expert = AnomalyExpert(tiny_config()).eval()
    final, levels = features(4)
    a = expert(final, levels, [3, 1])
    b = expert(final, levels, [3, 1])
    assert torch.equal(a.image_scores, b.image_scores) and torch.equal(a.selected_tokens, b.selected_tokens)
    alone = expert(final[3:], [f[3:] for f in levels], [1])
    assert torch.allclose(alone.image_scores, a.image_scores[1:], atol=1e-6)
    first = expert(final[:3], [f[:3] for f in levels], [3])
    assert torch.allclose(first.image_scores, a.image_scores[:1], atol=1e-6)


def test_base_crop_conditions_the_prompts():
    torch.manual_seed(0)
    expert = AnomalyExpert(tiny_config()).eval()
    final, levels = features(3)
    a = expert(final, levels, [3])
    changed = final.clone()
    changed[0] += 1.0  # only the base crop's final tokens
    b = expert(changed, levels, [3])
    assert not torch.allclose(a.crop_maps[1:], b.crop_maps[1:])  # other crops' maps depend on crop 0


def test_rejects_wrong_sizes():
    expert = AnomalyExpert(tiny_config())
    final, levels = features(2)
    with pytest.raises(ValueError, match="expects"):
        expert(final[:, :-1], [f[:, :-1] for f in levels])
    with pytest.raises(ValueError, match="levels"):
        expert(final, levels[:3])
    with pytest.raises(ValueError, match="split_sizes"):
        expert(final, levels, [3])


def test_gradients_reach_every_parameter():
    torch.manual_seed(0)
    expert = AnomalyExpert(tiny_config())
    final, levels = features(4)
    out = expert(final, levels, [2, 2])
    balanced_bce_loss(out.image_logits, torch.tensor([0.0, 1.0])).backward()
    for name, p in expert.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
        assert p.grad.abs().sum() > 0, name


def test_balanced_bce_weights_classes_equally():
    logits = torch.tensor([0.0, 0.0, 0.0, 2.0])
    labels = torch.tensor([0.0, 0.0, 0.0, 1.0])
    loss = balanced_bce_loss(logits, labels)
    bce = torch.nn.functional.binary_cross_entropy_with_logits(logits, labels, reduction="none")
    expected = 0.5 * bce[:3].mean() + 0.5 * bce[3]
    assert torch.allclose(loss, expected)


def test_image_map_at_image_resolution():
    crop_maps = torch.rand(1 + 2 * 3, 1, G, G)
    m = assemble_image_map(crop_maps, (2, 3), (50, 90))
    assert m.shape == (50, 90) and float(m.min()) >= 0 and float(m.max()) <= 1
    single = assemble_image_map(crop_maps[:1], None, (31, 17))
    assert single.shape == (31, 17)
    with pytest.raises(ValueError):
        assemble_image_map(crop_maps, (2, 2), (50, 90))
    # a hot top-left grid crop shows up in the top-left of the image map
    hot = torch.zeros(1 + 4, 1, G, G)
    hot[1] = 1.0
    m = assemble_image_map(hot, (2, 2), (80, 80)).numpy()
    assert m[:30, :30].mean() > 0.4 and m[50:, 50:].mean() < 0.05


def _auroc(scores: np.ndarray, labels: np.ndarray) -> float:
    pos, neg = scores[labels == 1], scores[labels == 0]
    return float((pos[:, None] > neg[None, :]).mean() + 0.5 * (pos[:, None] == neg[None, :]).mean())


def test_learns_to_separate_injected_anomalies():
    """Stage-1 wiring check: BCE on image labels, anomalous crops carry an injected feature pattern."""
    torch.manual_seed(0)
    gen = torch.Generator().manual_seed(0)
    pattern = torch.randn(C, generator=gen) * 1.5
    layers = [torch.randn(C, C, generator=gen) / C**0.5 for _ in range(4)]

    def make(n: int) -> tuple[torch.Tensor, list[torch.Tensor], torch.Tensor]:
        final = torch.randn(n, G * G, C, generator=gen)
        labels = (torch.arange(n) % 2).float()
        for i in range(n):
            if labels[i] > 0:
                where = torch.randperm(G * G, generator=gen)[:3]
                final[i, where] += pattern
        levels = [torch.tanh(final @ w) + 0.1 * final for w in layers]
        return final, levels, labels

    expert = AnomalyExpert(tiny_config())
    opt = torch.optim.AdamW(expert.parameters(), lr=3e-3)
    for _ in range(200):
        final, levels, labels = make(16)
        loss = balanced_bce_loss(expert(final, levels).image_logits, labels)
        opt.zero_grad()
        loss.backward()
        opt.step()
    expert.eval()
    with torch.no_grad():
        final, levels, labels = make(128)
        scores = expert(final, levels).image_scores.numpy()
    assert _auroc(scores, labels.numpy()) > 0.95
