"""`ltfm`: the Anomaly-OV expert (Look-Twice Feature Matching) alone, as a zero-shot detector.

It loads and runs the LLaVA-OneVision vision tower and the expert only (`tools.ltfm.tower`: the
language model's weights are never read): the image score
is the expert's anomaly probability (sigmoid of its BCE-trained head, so 0.5 is the boundary) and the
anomaly map is the expert's per-token anomaly probability (softmax of normal vs anomalous prompts, 0.5
the boundary too), assembled from the AnyRes crops at the input image's own resolution.

Needs the model (hub id or local folder) and trained expert weights: a `ltfm_expert.safetensors` in the
model folder, or `expert=` a safetensors file or an official `pretrained_expert_*.pth`. References are
not used (`fit` only records how many were given). `device` and `dtype` take the spellings of
`tools.ltfm.options` (default auto: CUDA when present, else the CPU in float32). With `--brain llava`
on the same checkpoint the detector reads the brain's model (`loaded`), so it is loaded once.

torch and transformers are imported when the model is loaded.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np
from PIL import Image

from tools.detectors.base import Detector, DetectorError, DetectorOutput, MissingModelError

if TYPE_CHECKING:
    from tools.ltfm.vision import EncodesWithExpert

DEFAULT_MODEL = "llava-hf/llava-onevision-qwen2-0.5b-ov-hf"


class LTFMDetector(Detector):
    """Anomaly-OV expert: zero-shot image score and map from LLaVA-OneVision's vision tower."""

    name: ClassVar[str] = "ltfm"
    requires_references: ClassVar[bool] = False
    learns_from_references: ClassVar[bool] = False

    def __init__(
        self,
        model: str = DEFAULT_MODEL,
        expert: str | None = None,
        device: str = "auto",
        dtype: str = "auto",
        loaded: EncodesWithExpert | None = None,
    ) -> None:
        """
        Args:
            model: hub id or local folder of a LLaVA-OneVision model.
            expert: expert weights (safetensors from `save_expert`, or an official `.pth`); default: the
                model folder's `ltfm_expert.safetensors`.
            device: "auto" (CUDA when present, else the CPU), "cpu", "cuda", "cuda:0", ...
            dtype: weights dtype of the tower ("auto": bfloat16 on a GPU, float32 on the CPU; "bf16", ...).
            loaded: an already loaded model with its expert to reuse, an `ExpertVision` or the
                LLaVA-OneVision wrapper of `agent.mllm` (then the other arguments are ignored).
        """
        from tools.ltfm.options import OptionError, normalize_device, normalize_dtype

        try:
            self.device = normalize_device(device, "ltfm device")
            self.dtype = normalize_dtype(dtype, "ltfm dtype")
        except OptionError as err:
            raise DetectorError(str(err)) from None
        self.model_name = model
        self.expert_path = expert
        self._model = loaded
        self._num_references = 0
        if self._model is not None and self._model.expert is None:
            raise DetectorError("ltfm: the given model has no anomaly expert attached")

    def _load(self) -> EncodesWithExpert:
        if self._model is None:
            from tools.ltfm.checkpoints import ModelNotFoundError
            from tools.ltfm.expert_io import ExpertWeightsError
            from tools.ltfm.options import OptionError, resolve_device, resolve_dtype
            from tools.ltfm.tower import load_expert_vision

            try:
                device = resolve_device(self.device)
                model = load_expert_vision(
                    self.model_name,
                    expert=self.expert_path if self.expert_path else "auto",
                    dtype=resolve_dtype(self.dtype, device),
                    device=device,
                )
            except ModelNotFoundError as err:
                raise MissingModelError(f"ltfm: {err}") from None
            except (ExpertWeightsError, OptionError) as err:
                raise DetectorError(f"ltfm: {err}") from None
            if model is None:
                raise DetectorError(
                    f"ltfm: no expert weights for {self.model_name}: pass expert=<file> "
                    "(ltfm_expert.safetensors or an official pretrained_expert_*.pth)"
                )
            self._model = model
        return self._model

    def fit(self, references: Sequence[Image.Image]) -> None:
        """Zero-shot: references are not needed; loading happens here so timing excludes it."""
        self._num_references = len(references)
        self._load()

    def predict(self, images: Sequence[Image.Image]) -> list[DetectorOutput]:
        model = self._load()
        outputs = []
        for enc in model.encode_images(list(images)):
            amap = enc.anomaly_map()
            assert amap is not None and enc.score is not None
            outputs.append(
                DetectorOutput(
                    anomaly_map=np.asarray(amap, dtype=np.float32),
                    pred_score=float(enc.score),
                    raw_score=float(enc.score),
                    extras={"grid_shape": enc.grid_shape},
                )
            )
        return outputs

    def settings(self) -> dict[str, Any]:
        return {
            "detector": self.name,
            "model": self.model_name,
            "expert": self.expert_path or "ltfm_expert.safetensors in the model folder",
            "device": self.device,
            "dtype": str(self.dtype),
        }

    def calibration(self) -> dict[str, Any]:
        return {
            "threshold": self.threshold,
            "source": "expert head trained with balanced BCE: sigmoid output, 0.5 separates the classes; "
            "map values are softmax(normal, anomalous) probabilities",
        }
