"""SAM (transformers `SamModel`) as a tool: prompts from anomaly regions -> crisp masks, and automatic masks.

- `SamTool.refine(image, region_mask, anomaly_map)`: each connected region of a predicted mask becomes
  one prompt (its bounding box plus a positive point at the map's peak inside it). SAM's mask replaces
  the region only when the two roughly agree; when SAM's answer is wildly different (far smaller or
  larger, little overlap, or most of the image) the original region is kept and the reason recorded.
  SAM snaps to object boundaries, and a defect is often *not* an object, so the check matters.
- `SamTool.automatic_masks(image)`: a grid of single-point prompts, best of SAM's three masks per point,
  filtered by predicted IoU and stability, de-duplicated by mask IoU (greedy NMS). Used to segment
  components (screws, wires, ...) for the logical audits.
- Image embeddings (the expensive part: SAM's ViT) are cached per image content, so refining several
  regions, then running automatic masks on the same image, embeds it once.

Model loading goes through `tools.models.load_sam` (offline-aware, clear missing-model message);
tests pass a tiny random `SamModel` and `SamProcessor` directly.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from PIL import Image
from scipy import ndimage

from tools.content_key import image_key

EIGHT_CONNECTED = np.ones((3, 3), dtype=bool)


@dataclass
class RegionRefinement:
    """What happened to one region: the mask used and why."""

    bbox: tuple[int, int, int, int]  # x0, y0, x1, y1 (exclusive) of the original region
    kept: str  # "sam" or "original"
    reason: str
    iou: float  # IoU of SAM's mask with the original region
    area_ratio: float  # SAM mask area / original region area
    sam_score: float  # SAM's predicted IoU for its mask
    mask: np.ndarray = field(repr=False, default_factory=lambda: np.zeros((0, 0), bool))

    def to_dict(self) -> dict[str, Any]:
        return {
            "bbox": [int(v) for v in self.bbox],
            "kept": self.kept,
            "reason": self.reason,
            "iou": round(self.iou, 4),
            "area_ratio": round(self.area_ratio, 4),
            "sam_score": round(self.sam_score, 4),
        }


def mask_iou(a: np.ndarray, b: np.ndarray) -> float:
    union = np.logical_or(a, b).sum()
    return float(np.logical_and(a, b).sum() / union) if union else 0.0


def decide_region(
    region: np.ndarray,
    sam_mask: np.ndarray,
    min_area_ratio: float = 0.25,
    max_area_ratio: float = 4.0,
    min_iou: float = 0.1,
    max_image_fraction: float = 0.5,
) -> tuple[bool, str, float, float]:
    """(use SAM's mask?, reason, iou, area ratio) for one region and SAM's mask for it."""
    region_area = int(region.sum())
    sam_area = int(sam_mask.sum())
    iou = mask_iou(region, sam_mask)
    ratio = sam_area / region_area if region_area else float("inf")
    if sam_area == 0:
        return False, "SAM returned an empty mask", iou, ratio
    if sam_area > max_image_fraction * sam_mask.size:
        return False, f"SAM mask covers {sam_area / sam_mask.size:.0%} of the image", iou, ratio
    if ratio < min_area_ratio:
        return False, f"SAM mask is {ratio:.2f}x the region's area (< {min_area_ratio})", iou, ratio
    if ratio > max_area_ratio:
        return False, f"SAM mask is {ratio:.2f}x the region's area (> {max_area_ratio})", iou, ratio
    if iou < min_iou:
        return False, f"SAM mask overlaps the region little (IoU {iou:.2f} < {min_iou})", iou, ratio
    return True, "SAM mask agrees with the region", iou, ratio


def mask_nms(masks: np.ndarray, scores: np.ndarray, iou_threshold: float = 0.7) -> list[int]:
    """Greedy NMS by mask IoU: indices kept, best score first. masks: (N, H, W) bool."""
    n = len(masks)
    if n == 0:
        return []
    flat = masks.reshape(n, -1).astype(np.float32)
    inter = flat @ flat.T
    area = flat.sum(1)
    union = area[:, None] + area[None, :] - inter
    iou = np.divide(inter, union, out=np.zeros_like(inter), where=union > 0)
    order = np.argsort(-np.asarray(scores), kind="stable")
    keep: list[int] = []
    suppressed = np.zeros(n, bool)
    for i in order:
        if suppressed[i]:
            continue
        keep.append(int(i))
        suppressed |= iou[i] > iou_threshold
    return keep


@dataclass
class _Embedded:
    embeddings: Any  # torch (1, C, h, w)
    original_size: tuple[int, int]  # H, W
    reshaped_size: tuple[int, int]  # H, W as fed to the model (before padding)


class SamTool:
    """Box/point prompts -> masks, region refinement and automatic masks with a SAM model."""

    def __init__(
        self,
        model: str | None = None,
        device: str = "cpu",
        *,
        name: str = "sam",
        sam_model: Any = None,
        processor: Any = None,
        cache_size: int = 4,
        min_area_ratio: float = 0.25,
        max_area_ratio: float = 4.0,
        min_iou: float = 0.1,
        max_image_fraction: float = 0.5,
    ) -> None:
        if (sam_model is None) != (processor is None):
            raise ValueError("pass both sam_model and processor, or neither")
        self.model_id = model
        self.registry_name = name
        self.device = device
        self._model = sam_model.to(device).eval() if sam_model is not None else None
        self._processor = processor
        self.cache_size = max(1, int(cache_size))
        self._cache: OrderedDict[str, _Embedded] = OrderedDict()
        self.min_area_ratio = min_area_ratio
        self.max_area_ratio = max_area_ratio
        self.min_iou = min_iou
        self.max_image_fraction = max_image_fraction
        self.embed_calls = 0  # how many times the image encoder ran (cache misses)

    # ---- model and embeddings -------------------------------------------------------------------

    def _load(self) -> None:
        if self._model is None:
            from tools.models import load_sam

            self._model, self._processor = load_sam(
                self.model_id, device=self.device, name=self.registry_name
            )

    def embed(self, image: Image.Image) -> _Embedded:
        """SAM image embeddings, cached per image content (LRU of `cache_size` images)."""
        import torch

        self._load()
        image = image.convert("RGB")
        key = image_key(image)
        if key in self._cache:
            self._cache.move_to_end(key)
            return self._cache[key]
        inputs = self._processor(images=image, return_tensors="pt")
        with torch.no_grad():
            emb = self._model.get_image_embeddings(inputs["pixel_values"].to(self.device))
        self.embed_calls += 1
        entry = _Embedded(
            emb,
            tuple(int(v) for v in inputs["original_sizes"][0].tolist()),
            tuple(int(v) for v in inputs["reshaped_input_sizes"][0].tolist()),
        )
        self._cache[key] = entry
        while len(self._cache) > self.cache_size:
            self._cache.popitem(last=False)
        return entry

    def _scale(self, e: _Embedded) -> tuple[float, float]:
        return e.reshaped_size[1] / e.original_size[1], e.reshaped_size[0] / e.original_size[0]

    def _postprocess(self, e: _Embedded, low_res: Any) -> np.ndarray:
        """(N, h, w) low-res logits -> (N, H, W) bool masks at the image's size."""
        import torch

        masks = self._processor.image_processor.post_process_masks(
            [low_res[None].float().cpu()], [list(e.original_size)], [list(e.reshaped_size)]
        )[0]
        return (
            masks[0].numpy().astype(bool) if isinstance(masks, torch.Tensor) else np.asarray(masks[0], bool)
        )

    def _run(self, e: _Embedded, **prompts: Any) -> tuple[Any, Any]:
        import torch

        with torch.no_grad():
            out = self._model(
                image_embeddings=e.embeddings,
                multimask_output=prompts.pop("multimask_output"),
                **{k: v.to(self.device) for k, v in prompts.items() if v is not None},
            )
        return out.pred_masks[0], out.iou_scores[0]  # (N, M, h, w), (N, M)

    # ---- prompts -> masks -----------------------------------------------------------------------

    def masks_from_boxes(
        self,
        image: Image.Image,
        boxes: Sequence[Sequence[float]],
        points: Sequence[Sequence[float] | None] | None = None,
    ) -> tuple[np.ndarray, np.ndarray]:
        """One mask per box (x0, y0, x1, y1 in image pixels), optionally with a positive point each.

        Returns (masks (N, H, W) bool, SAM's predicted IoU (N,)).
        """
        import torch

        e = self.embed(image)
        if len(boxes) == 0:
            return np.zeros((0, *e.original_size), bool), np.zeros(0, np.float32)
        sx, sy = self._scale(e)
        b = torch.tensor(
            [[x0 * sx, y0 * sy, x1 * sx, y1 * sy] for x0, y0, x1, y1 in boxes], dtype=torch.float32
        )
        kwargs: dict[str, Any] = {"input_boxes": b[None], "multimask_output": False}
        if points is not None and all(p is not None for p in points):
            pts = torch.tensor([[[p[0] * sx, p[1] * sy]] for p in points], dtype=torch.float32)
            kwargs["input_points"] = pts[None]
            kwargs["input_labels"] = torch.ones(1, len(points), 1, dtype=torch.long)
        low, scores = self._run(e, **kwargs)
        return self._postprocess(e, low[:, 0]), scores[:, 0].float().cpu().numpy()

    def masks_from_points(
        self,
        image: Image.Image,
        points: Sequence[Sequence[Sequence[float]]],
        labels: Sequence[Sequence[int]] | None = None,
    ) -> tuple[np.ndarray, np.ndarray]:
        """One mask per prompt; each prompt is a list of (x, y) points (labels 1 = object, 0 = background).

        All prompts must have the same number of points. SAM's best of three masks is kept per prompt.
        """
        import torch

        e = self.embed(image)
        if len(points) == 0:
            return np.zeros((0, *e.original_size), bool), np.zeros(0, np.float32)
        sx, sy = self._scale(e)
        pts = torch.tensor([[[x * sx, y * sy] for x, y in prompt] for prompt in points], dtype=torch.float32)
        lab = torch.tensor(labels if labels is not None else [[1] * len(p) for p in points], dtype=torch.long)
        low, scores = self._run(e, input_points=pts[None], input_labels=lab[None], multimask_output=True)
        best = scores.argmax(dim=1)
        idx = torch.arange(len(points))
        return self._postprocess(e, low[idx, best]), scores[idx, best].float().cpu().numpy()

    # ---- anomaly regions ------------------------------------------------------------------------

    def refine(
        self, image: Image.Image, region_mask: np.ndarray, anomaly_map: np.ndarray | None = None
    ) -> tuple[np.ndarray, list[RegionRefinement]]:
        """Refined HxW bool mask and one `RegionRefinement` per connected region of `region_mask`."""
        mask = np.asarray(region_mask).astype(bool)
        if mask.shape != (image.height, image.width):
            raise ValueError(
                f"region mask shape {mask.shape} differs from image size {(image.height, image.width)}"
            )
        labels, n = ndimage.label(mask, structure=EIGHT_CONNECTED)
        if n == 0:
            return mask.copy(), []
        objects = ndimage.find_objects(labels)
        boxes, points, regions = [], [], []
        amap = (
            None
            if anomaly_map is None
            else np.nan_to_num(np.asarray(anomaly_map, dtype=np.float64), nan=-np.inf)
        )
        for i, sl in enumerate(objects, start=1):
            region = labels == i
            y0, y1, x0, x1 = sl[0].start, sl[0].stop, sl[1].start, sl[1].stop
            boxes.append((x0, y0, x1, y1))
            if amap is not None:
                flat = np.where(region, amap, -np.inf)
                py, px = np.unravel_index(int(np.argmax(flat)), flat.shape)
            else:
                ys, xs = np.nonzero(region)
                k = int(
                    np.argmin((ys - ys.mean()) ** 2 + (xs - xs.mean()) ** 2)
                )  # the pixel nearest the centroid
                py, px = ys[k], xs[k]
            points.append((float(px) + 0.5, float(py) + 0.5))
            regions.append(region)
        sam_masks, sam_scores = self.masks_from_boxes(image, boxes, points)
        out = np.zeros_like(mask)
        results = []
        for box, region, sam_mask, score in zip(boxes, regions, sam_masks, sam_scores, strict=True):
            use, reason, iou, ratio = decide_region(
                region,
                sam_mask,
                self.min_area_ratio,
                self.max_area_ratio,
                self.min_iou,
                self.max_image_fraction,
            )
            chosen = sam_mask if use else region
            out |= chosen
            results.append(
                RegionRefinement(box, "sam" if use else "original", reason, iou, ratio, float(score), chosen)
            )
        return out, results

    # ---- automatic masks ------------------------------------------------------------------------

    def automatic_masks(
        self,
        image: Image.Image,
        points_per_side: int = 16,
        min_score: float = 0.7,
        min_stability: float = 0.8,
        nms_iou: float = 0.7,
        min_area_fraction: float = 0.0005,
        max_area_fraction: float = 0.95,
        points_per_batch: int = 64,
    ) -> list[dict[str, Any]]:
        """Masks of the image's parts from a grid of point prompts, best first.

        Each entry: {"mask": HxW bool, "score": SAM's predicted IoU, "stability": float,
        "bbox": (x0, y0, x1, y1), "area": int}.
        """
        import torch

        e = self.embed(image)
        h, w = e.original_size
        sx, sy = self._scale(e)
        n = max(1, int(points_per_side))
        xs = (np.arange(n) + 0.5) / n * w
        ys = (np.arange(n) + 0.5) / n * h
        grid = np.stack(np.meshgrid(xs, ys), -1).reshape(-1, 2)
        kept_low, kept_scores, kept_stab = [], [], []
        for start in range(0, len(grid), points_per_batch):
            chunk = grid[start : start + points_per_batch]
            pts = torch.tensor(chunk[:, None, :] * [sx, sy], dtype=torch.float32)
            lab = torch.ones(len(chunk), 1, dtype=torch.long)
            low, scores = self._run(e, input_points=pts[None], input_labels=lab[None], multimask_output=True)
            best = scores.argmax(dim=1)
            idx = torch.arange(len(chunk))
            logits, score = low[idx, best].float(), scores[idx, best].float()
            # stability: the mask barely changes when the logit threshold moves by +-1
            hi = (logits > 1.0).flatten(1).sum(1).float()
            lo = (logits > -1.0).flatten(1).sum(1).float().clamp_min(1.0)
            stability = hi / lo
            ok = (score >= min_score) & (stability >= min_stability)
            kept_low.append(logits[ok].cpu())
            kept_scores.append(score[ok].cpu())
            kept_stab.append(stability[ok].cpu())
        low_all = torch.cat(kept_low) if kept_low else torch.zeros(0)
        if low_all.numel() == 0:
            return []
        scores_all = torch.cat(kept_scores).numpy()
        stab_all = torch.cat(kept_stab).numpy()
        masks = self._postprocess(e, low_all)
        areas = masks.reshape(len(masks), -1).sum(1)
        ok = (areas >= min_area_fraction * h * w) & (areas <= max_area_fraction * h * w)
        masks, scores_all, stab_all, areas = masks[ok], scores_all[ok], stab_all[ok], areas[ok]
        # NMS on a downsampled copy (IoU barely changes, memory does)
        step = max(1, int(np.ceil(max(h, w) / 256)))
        keep = mask_nms(masks[:, ::step, ::step], scores_all, nms_iou)
        out = []
        for i in keep:
            ys_i, xs_i = np.nonzero(masks[i])
            out.append(
                {
                    "mask": masks[i],
                    "score": float(scores_all[i]),
                    "stability": float(stab_all[i]),
                    "bbox": (int(xs_i.min()), int(ys_i.min()), int(xs_i.max()) + 1, int(ys_i.max()) + 1),
                    "area": int(areas[i]),
                }
            )
        return out
