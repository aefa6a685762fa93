"""The one data contract every detector, brain and report speaks (DESIGN.md section 2).

Field names follow anomalib (`pred_score`, `pred_label`, `anomaly_map`, `pred_mask`, `gt_label`,
`gt_mask`) so its metrics and visualizers read our output unchanged. Arrays stay numpy in memory; on
disk they are PNG files beside the JSON (see `agent.outputs`).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np


@dataclass
class Region:
    """One connected anomalous area of the predicted mask, measured in words a person can use."""

    bbox: tuple[int, int, int, int]  # x0, y0, x1, y1 in image pixels, x1/y1 exclusive
    area_px: int
    area_fraction: float  # of the whole image
    centroid: tuple[float, float]  # x, y in image pixels
    elongation: float  # major / minor axis length of the pixel cloud, >= 1
    mean_score: float  # mean anomaly-map value inside the region
    max_score: float
    intensity_contrast: float  # mean grey level inside minus a ring around it, in [-1, 1]
    location: str  # "upper-left", "center", ...
    shape: str = ""  # "elongated", "compact", "diffuse": filled by the region measurer
    touches_border: bool = False  # the region reaches the image's edge (a break or a frayed edge)
    kind: str = ""  # a defect word from shape and tone ("crack", "hole", ...): `tools.regions.defect_word`
    reference_contrast: float | None = None  # mean grey inside minus the references' there (None: unknown)
    number: int = 0  # 1, 2, ...: the number on the overlay, in the explanation and the tables (0: not numbered)
    texture_contrast: float = 0.0  # grey spread (std) inside minus a ring around it (0.0: not measured)
    border_contact: float = 0.0  # share of the region's outline on the image's edge, 0..1

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["bbox"] = [int(v) for v in self.bbox]
        d["centroid"] = [round(float(v), 2) for v in self.centroid]
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Region:
        d = {k: v for k, v in d.items() if k in _REGION_FIELDS}
        d["bbox"] = tuple(d["bbox"])
        d["centroid"] = tuple(d["centroid"])
        return cls(**d)


_REGION_FIELDS = frozenset(Region.__dataclass_fields__)

#: the three outcomes of an inspection: `pred_label` is True only for "defective"
VERDICTS = ("good", "review", "defective")


@dataclass
class InspectionRecord:
    """What one inspection of one image produced."""

    image_path: str
    pred_score: float  # higher = more anomalous; 0..1 for calibrated detectors
    pred_label: bool
    threshold: float  # the pred_score above which the image is called defective
    anomaly_map: np.ndarray | None = None  # HxW float32 at image resolution, same scale as pred_score
    pred_mask: np.ndarray | None = None  # HxW bool
    regions: list[Region] = field(default_factory=list)
    gt_label: bool | None = None
    gt_mask: np.ndarray | None = None
    explanation: str = ""
    answer: str | None = None
    detector: str = ""
    brain: str = ""
    image_size: tuple[int, int] | None = None  # width, height as analysed (maps, masks, region pixels)
    source_size: tuple[int, int] | None = None  # width, height of the file when it was analysed reduced
    trace: list[dict[str, Any]] = field(default_factory=list)
    suspicious_place: Region | None = None  # the place the loop found most suspicious, whatever the verdict
    verdict: str = ""  # "defective", "review" or "good"; from pred_label when not given
    decision: dict[str, Any] = field(default_factory=dict)  # the promise behind the verdict (false-alarm rate, ...)

    def __post_init__(self) -> None:
        if not self.verdict:
            self.verdict = "defective" if self.pred_label else "good"
        if self.verdict not in VERDICTS:
            raise ValueError(f"verdict must be one of {', '.join(VERDICTS)}, got {self.verdict!r}")

    def to_json_dict(self, files: dict[str, str] | None = None) -> dict[str, Any]:
        """JSON-ready dict; arrays are replaced by the file names in `files` (e.g. anomaly_map PNG)."""
        files = files or {}
        out: dict[str, Any] = {
            "image_path": self.image_path,
            "image_size": list(self.image_size) if self.image_size else None,
            "source_size": list(self.source_size) if self.source_size else None,
            "detector": self.detector,
            "brain": self.brain,
            "pred_score": round(float(self.pred_score), 6),
            "pred_label": bool(self.pred_label),
            "verdict": self.verdict,
            "threshold": round(float(self.threshold), 6),
            "decision": self.decision,
            "gt_label": None if self.gt_label is None else bool(self.gt_label),
            "regions": [r.to_dict() for r in self.regions],
            "suspicious_place": self.suspicious_place.to_dict() if self.suspicious_place is not None else None,
            "explanation": self.explanation,
            "answer": self.answer,
            "trace": self.trace,
        }
        for key in ("anomaly_map", "pred_mask", "gt_mask"):
            if key in files:
                out[key] = files[key]
        return out
