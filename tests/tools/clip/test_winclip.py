"""WinCLIP compute: windows, harmonic aggregation (vs. a slow loop reference), masked forwards."""

from __future__ import annotations

import numpy as np
import pytest
import torch

pytest.importorskip("open_clip")

from tests.tools.clip.tiny import tiny_clip_bundle  # noqa: E402
from tools.clip.winclip import (  # noqa: E402
    WinCLIP,
    class_scores,
    harmonic_aggregation,
    upsample_maps,
    visual_association,
    window_masks,
)


def slow_harmonic_aggregation(window_scores, masks, grid):
    """The obvious loops: for every patch, the harmonic mean of the windows that contain it."""
    gh, gw = grid
    out = np.zeros((window_scores.shape[0], gh, gw))
    for b in range(window_scores.shape[0]):
        for r in range(gh):
            for c in range(gw):
                p = r * gw + c
                covering = [w for w in range(masks.shape[0]) if p in masks[w].tolist()]
                vals = [float(window_scores[b, w]) for w in covering]
                out[b, r, c] = len(vals) / sum(1.0 / v for v in vals)
    return out


def slow_window_masks(grid, scale):
    gh, gw = grid
    return [
        [(r + i) * gw + (c + j) for i in range(scale) for j in range(scale)]
        for r in range(gh - scale + 1)
        for c in range(gw - scale + 1)
    ]


@pytest.mark.parametrize("grid", [(4, 5), (6, 6), (3, 7)])
@pytest.mark.parametrize("scale", [1, 2, 3])
def test_window_masks_match_slow_enumeration(grid, scale):
    masks = window_masks(grid, scale)
    assert masks.dtype == torch.long
    assert masks.tolist() == slow_window_masks(grid, scale)


def test_window_masks_edge_cases():
    assert window_masks((2, 2), 3).shape == (0, 9)
    m = window_masks((5, 5), 2, stride=2)  # starts 0, 2 and the border window 3
    covered = set(m.flatten().tolist())
    assert covered == set(range(25))
    with pytest.raises(ValueError):
        window_masks((4, 4), 0)


@pytest.mark.parametrize(
    "grid,scale,stride", [((6, 6), 2, 1), ((6, 6), 3, 1), ((5, 7), 3, 1), ((7, 5), 2, 2)]
)
def test_harmonic_aggregation_matches_loops(grid, scale, stride):
    g = torch.Generator().manual_seed(1)
    masks = window_masks(grid, scale, stride)
    scores = torch.rand(3, masks.shape[0], generator=g, dtype=torch.float64) * 0.98 + 0.01
    fast = harmonic_aggregation(scores, masks, grid)
    slow = slow_harmonic_aggregation(scores.numpy(), masks.numpy(), grid)
    np.testing.assert_allclose(fast.numpy(), slow, rtol=1e-10)


def test_harmonic_aggregation_constant_and_zero():
    masks = window_masks((4, 4), 2)
    const = harmonic_aggregation(torch.full((1, masks.shape[0]), 0.3), masks, (4, 4))
    torch.testing.assert_close(const, torch.full((1, 4, 4), 0.3))
    s = torch.full((1, masks.shape[0]), 0.5)
    s[0, 0] = 0.0  # window at the top-left corner; patch 0 is covered by it only
    out = harmonic_aggregation(s, masks, (4, 4))
    assert out[0, 0, 0] < 1e-5 and torch.isfinite(out).all()


def test_visual_association_and_class_scores():
    g = torch.Generator().manual_seed(0)
    e = torch.nn.functional.normalize(torch.randn(2, 5, 8, generator=g), dim=-1)
    assert visual_association(e, e.reshape(-1, 8)).abs().max() < 1e-6
    opposite = visual_association(e[:1, :1], -e[0, :1])
    assert torch.allclose(opposite, torch.ones(1, 1))
    text = torch.nn.functional.normalize(torch.randn(2, 8, generator=g), dim=-1)
    p = class_scores(e, text, 0.07)
    assert p.shape == (2, 5) and ((p >= 0) & (p <= 1)).all()
    logits = (e @ text.T) / 0.07
    torch.testing.assert_close(p, torch.sigmoid(logits[..., 1] - logits[..., 0]))


@pytest.fixture(scope="module")
def engine():
    return WinCLIP(tiny_clip_bundle(), token_budget=200)


@pytest.fixture(scope="module")
def images():
    rng = np.random.default_rng(0)
    from PIL import Image

    return [Image.fromarray(rng.integers(0, 255, (40 + 7 * i, 56, 3), dtype=np.uint8)) for i in range(3)]


def test_encode_shapes_normalized_deterministic(engine, images):
    assert engine.grid == (6, 6) and engine.scales == (2, 3)
    enc = engine.encode_images(images)
    assert enc.image.shape == (3, 32)
    assert [w.shape for w in enc.windows] == [(3, 25, 32), (3, 16, 32)]
    assert enc.patches.shape == (3, 36, 32)
    for t in [enc.image, enc.patches, *enc.windows]:
        torch.testing.assert_close(t.norm(dim=-1), torch.ones(t.shape[:-1]), atol=1e-5, rtol=0)
    again = engine.encode_images(images)
    torch.testing.assert_close(again.windows[1], enc.windows[1])


def test_full_forward_matches_open_clip(engine, images):
    x = engine.preprocess(images)
    with torch.no_grad():
        ref = torch.nn.functional.normalize(engine.model.encode_image(x), dim=-1)
    torch.testing.assert_close(engine.encode_images(x).image, ref, atol=1e-5, rtol=1e-5)


def test_window_embedding_is_masked_forward(engine, images):
    """A window's embedding = the tower run on [class token, its patches] alone, as its own sequence."""
    x = engine.preprocess(images[:1])
    enc = engine.encode_images(x)
    v = engine.visual
    with torch.no_grad():
        t = v.conv1(x).flatten(2).transpose(1, 2)
        t = torch.cat([v.class_embedding.expand(1, 1, -1), t], 1) + v.positional_embedding
        t = v.ln_pre(t)
        for s, masks in enumerate(engine.masks):
            w = 4 if s == 0 else 7
            keep = [0] + [int(i) + 1 for i in masks[w]]
            out = v.ln_post(v.transformer(t[:, keep]))[:, 0] @ v.proj
            torch.testing.assert_close(
                enc.windows[s][0, w], torch.nn.functional.normalize(out, dim=-1)[0], atol=1e-5, rtol=1e-5
            )


def test_token_budget_does_not_change_results(engine, images):
    small = engine.encode_images(images)
    engine.token_budget = 10**6
    try:
        big = engine.encode_images(images)
    finally:
        engine.token_budget = 200
    torch.testing.assert_close(small.windows[0], big.windows[0], atol=1e-5, rtol=1e-5)


def test_text_embeddings_cached_per_object(engine):
    a = engine.text_embeddings("metal_nut")
    assert a.shape == (2, 32)
    assert engine.text_embeddings("metal nut") is a
    assert engine.text_embeddings("screw") is not a


def test_zero_and_few_shot_maps(engine, images):
    enc = engine.encode_images(images)
    image, zmap = engine.zero_shot(enc, engine.text_embeddings("bottle"))
    assert image.shape == (3,) and zmap.shape == (3, 6, 6)
    assert ((zmap > 0) & (zmap < 1)).all()
    fmap = engine.few_shot(enc, enc.select([0, 1]))
    assert fmap.shape == (3, 6, 6)
    assert fmap[:2].abs().max() < 1e-5  # the references themselves are nowhere anomalous
    assert fmap[2].max() > 1e-4
    maps = upsample_maps(fmap, [(im.height, im.width) for im in images])
    assert [m.shape for m in maps] == [(im.height, im.width) for im in images]
    assert all(m.dtype == np.float32 for m in maps)


def test_truncated_text_encoder_matches_open_clip(engine):
    normal, anomalous = engine.prompts.expand("metal nut")
    tokens = engine.bundle.tokenizer(normal[:5] + anomalous[-5:])
    with torch.no_grad():
        full = engine.model.encode_text(tokens)
        cut = engine._encode_text(tokens)
    torch.testing.assert_close(cut, full, atol=1e-5, rtol=1e-5)
