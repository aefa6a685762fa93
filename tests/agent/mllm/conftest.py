"""Fixtures: a tiny randomly initialised LLaVA-OneVision, saved once per test session and reloaded."""

from __future__ import annotations

from pathlib import Path

import pytest

from agent.mllm.testing import build_tiny_llava


@pytest.fixture(scope="session")
def tiny_llava_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_llava(tmp_path_factory.mktemp("tiny_llava"))


@pytest.fixture(scope="session")
def tiny_model(tiny_llava_dir: Path):
    """The tiny LLaVA-OneVision with a randomly initialised expert, loaded through `load_model`."""
    import torch

    from agent.mllm.loading import load_model

    torch.manual_seed(1)
    return load_model(tiny_llava_dir, expert="random", dtype="float32")


def random_image(height: int, width: int, seed: int = 0):
    """A deterministic noise image."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(seed)
    return Image.fromarray((rng.random((height, width, 3)) * 255).astype("uint8"))


@pytest.fixture(autouse=True, scope="session")
def _one_torch_thread():
    """Tiny models run fastest on one thread, and the CI machine's cores are shared."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
