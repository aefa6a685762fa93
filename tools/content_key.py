"""Content keys: one hash of what an image (or a file) holds, for every cache and seeded draw.

Why one helper: the pipeline's evidence cache, the batch detector's partner draw, the MLLM's vision
cache and SAM's embedding cache must all agree on when two images are the same image, and an image's
size is part of what it is (the same bytes read as 100x40 or 40x100 are different images). Keys are
blake2b digests of the mode, the size and the pixels; `file_key` hashes a file's bytes, so a folder's
images can be keyed (and a seeded sample drawn from them) without decoding any of them.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterable, Sequence

from PIL import Image

#: bytes of a digest (hex keys are twice as long)
DIGEST_SIZE = 16


def image_key(image: Image.Image) -> str:
    """A key of the decoded image: its mode, size and pixels."""
    h = hashlib.blake2b(digest_size=DIGEST_SIZE)
    h.update(f"{image.mode}:{image.size[0]}x{image.size[1]};".encode())
    h.update(image.tobytes())
    return h.hexdigest()


def images_key(images: Iterable[Image.Image]) -> str:
    """One key for an ordered list of images (a set of references, say)."""
    h = hashlib.blake2b(digest_size=DIGEST_SIZE)
    for image in images:
        h.update(image_key(image).encode())
    return h.hexdigest()


def file_key(path: str | os.PathLike[str], chunk: int = 1 << 20) -> str:
    """A key of a file's bytes (raises OSError when it cannot be read)."""
    h = hashlib.blake2b(digest_size=DIGEST_SIZE)
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def seeded_rank(key: str, seed: int) -> int:
    """A number drawn from a key and a seed: sorting by it orders items reproducibly, whatever order
    they were listed in."""
    return int(hashlib.blake2b(f"{seed}:{key}".encode(), digest_size=8).hexdigest(), 16)


def seeded_sample(keys: Sequence[str], k: int, seed: int) -> list[int]:
    """Indices (sorted) of the `k` items with the smallest seeded ranks: the same items are drawn
    however the list is ordered (duplicates of one content rank together)."""
    order = sorted(range(len(keys)), key=lambda i: (seeded_rank(keys[i], seed), i))
    return sorted(order[: max(0, min(k, len(keys)))])


__all__ = ["DIGEST_SIZE", "file_key", "image_key", "images_key", "seeded_rank", "seeded_sample"]
