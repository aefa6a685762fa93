"""Tiled backbone features: the same grid and (with enough context) the same features as the whole
image, so memory can stay bounded on large images without changing the scores."""

from __future__ import annotations

import pytest
import torch

from tools.detectors.patch_features import PatchFeatureExtractor
from tools.detectors.tiling import tile_starts, tiled_levels


def test_tile_starts_cover_the_length():
    assert tile_starts(100, 32) == [0, 32, 64, 96]
    assert tile_starts(64, 64) == [0]


def test_tiled_features_match_the_whole_image():
    torch.manual_seed(0)
    ex = PatchFeatureExtractor()
    x = torch.rand(1, 3, 192, 320)
    whole = ex.network(x)
    tiled = tiled_levels(ex.network, x, tile=64, context=128)
    for a, b in zip(whole, tiled, strict=True):
        assert a.shape == b.shape
        assert float((a - b).abs().mean() / a.abs().mean()) < 1e-2
    with pytest.raises(ValueError, match="multiples"):
        tiled_levels(ex.network, x, tile=50, context=0)


def test_the_extractor_tiles_large_inputs_on_the_same_grid():
    ex = PatchFeatureExtractor(tile=64, tile_context=128)
    whole = PatchFeatureExtractor()
    x = torch.rand(1, 3, 192, 448)
    (a,) = ex(x)
    (b,) = whole(x)
    assert a.shape == b.shape == (1, 24, 56, b.shape[-1])
    assert float((a - b).abs().mean() / b.abs().mean()) < 1e-2
