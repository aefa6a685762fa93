"""The global rule's test copies of references (`tools.detectors.global_statistics`)."""

from __future__ import annotations


def test_a_tiled_reference_is_changed_at_its_working_size():
    """The global rule's test copy of a photo the backbone sees in tiles is drawn at the working size
    and brought back to the photo's size; a small reference is changed as it is."""
    import numpy as np
    from PIL import Image

    from tools.detectors.global_statistics import changed_copy

    seen: list[tuple[int, ...]] = []

    def brighter(a: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        seen.append(a.shape)
        return np.clip(a.astype(np.int16) + 20, 0, 255).astype(np.uint8)

    big = Image.new("RGB", (3000, 2000), (100, 100, 100))
    out = changed_copy(big, brighter, (1500, 2250), np.random.default_rng(0))  # (h, w) at half size
    assert seen[-1] == (1500, 2250, 3) and out.size == (3000, 2000) and out.getpixel((10, 10)) == (120, 120, 120)
    small = Image.new("RGB", (300, 200), (100, 100, 100))
    out = changed_copy(small, brighter, (200, 300), np.random.default_rng(0))
    assert seen[-1] == (200, 300, 3) and out.getpixel((0, 0)) == (120, 120, 120)
