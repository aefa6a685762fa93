"""Detector registry. Entries are lazy: importing this package imports no torch model code.

Add a detector by writing a `Detector` subclass in its own module and one `register_lazy` line here.
"""

from __future__ import annotations

from tools.detectors.base import Detector, DetectorError, DetectorOutput, MissingModelError
from tools.registry import Registry

DETECTORS: Registry[Detector] = Registry("detector")

DETECTORS.register_lazy(
    "refmatch",
    "tools.detectors.reference_matching:ReferenceMatchingDetector",
    "few-shot reference matching on EfficientNet-Lite features (embedded default, no downloads)",
)
DETECTORS.register_lazy(
    "batch",
    "tools.detectors.batch:BatchDetector",
    "zero-shot on a batch of 8+ unlabeled images of one product (they score each other, MuSc); "
    "with references, both are used",
)
DETECTORS.register_lazy(
    "selfsim",
    "tools.detectors.self_similarity:SelfSimilarityDetector",
    "zero-shot fallback: how unlike the rest of the same image each patch is (no references)",
)
DETECTORS.register_lazy(
    "ltfm",
    "tools.detectors.ltfm:LTFMDetector",
    "Anomaly-OV expert (Look-Twice Feature Matching) on LLaVA-OneVision's vision tower, zero-shot",
)
DETECTORS.register_lazy(
    "winclip",
    "tools.detectors.winclip:WinCLIPDetector",
    "WinCLIP zero-shot on open_clip (prompt ensembles x windows; needs CLIP weights, no references)",
)
DETECTORS.register_lazy(
    "winclip+",
    "tools.detectors.winclip:WinCLIPPlusDetector",
    "WinCLIP+ few-shot: WinCLIP fused with visual association to good references (needs CLIP weights)",
)
DETECTORS.register_lazy(
    "fused",
    "tools.detectors.fused:FusedDetector",
    "reference matching + WinCLIP+ fused on calibrated logits (optional SAM mask refinement)",
)

__all__ = ["DETECTORS", "Detector", "DetectorError", "DetectorOutput", "MissingModelError"]
