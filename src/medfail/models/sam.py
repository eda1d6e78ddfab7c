"""Adapter for SAM-family promptable segmenters (segment-anything's ``SamPredictor`` call shape).

Any object with these two methods works (SAM, SAM-HQ, MobileSAM, MedSAM predictors...)::

    set_image(image: np.ndarray (H, W, 3) uint8, image_format="RGB") -> None
    predict(point_coords: (P, 2) float | None, point_labels: (P,) int | None,
            box: (4,) float | None, multimask_output: bool, return_logits: bool)
        -> (masks (K, H, W), scores (K,), low_res_logits)

medfail never imports segment-anything: build the predictor yourself and call :func:`wrap_sam`.

Conversion rules:

* the native ``(C, H, W)`` image is scaled to uint8 by its own min/max (a constant image becomes
  0); a grey image is repeated to three channels, RGBA loses alpha; other channel counts are an
  error. Because the scaling is per image, a global brightness shift is largely undone before the
  model sees it;
* ``set_image`` (the expensive encoder) runs once per image that has at least one prompt; images
  without prompts are all background and are not encoded;
* each prompt is one ``predict(..., multimask_output=False, return_logits=True)``; its foreground
  probability is ``sigmoid(logits)`` at full resolution (the best-scoring mask if several come
  back), and an image's foreground is the pixel-wise maximum over its prompts. A prompt with
  neither box nor points contributes nothing.

The output per image is ``(2, H, W)``: background ``1 − fg`` and foreground ``fg``.
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from scipy.special import expit

from medfail.data.prompts import Prompt
from medfail.errors import MedfailModelError
from medfail.models.adapters import PromptableSegmenter
from medfail.models.spec import ModelSpec

__all__ = ["SamAdapter", "is_sam_predictor", "sam_spec", "to_uint8_rgb", "wrap_sam"]


def sam_spec() -> ModelSpec:
    """The spec of a wrapped SAM predictor: one promptable ``object`` class, probabilities out."""
    return ModelSpec(task="promptable", target_names=["object"], in_channels=3,
                     output="probabilities")


def to_uint8_rgb(image: np.ndarray) -> np.ndarray:
    """A native ``(C, H, W)`` image as contiguous ``(H, W, 3)`` uint8 RGB, min/max scaled."""
    im = np.asarray(image, dtype=np.float64)
    if im.ndim == 2:
        im = im[None]
    if im.ndim != 3:
        raise ValueError(f"expected a (C, H, W) image, got shape {im.shape}")
    c = im.shape[0]
    if c == 1:
        im = np.repeat(im, 3, axis=0)
    elif c == 4:
        im = im[:3]
    elif c != 3:
        raise ValueError(f"SAM needs a grey, RGB or RGBA image, got {c} channels")
    finite = np.isfinite(im)
    lo = float(im[finite].min()) if finite.any() else 0.0
    hi = float(im[finite].max()) if finite.any() else 0.0
    scaled = np.zeros_like(im) if hi <= lo else (np.nan_to_num(im, nan=lo) - lo) / (hi - lo)
    out = np.rint(np.clip(scaled, 0.0, 1.0) * 255.0).astype(np.uint8)
    return np.ascontiguousarray(out.transpose(1, 2, 0))


def is_sam_predictor(obj: Any) -> bool:
    """Whether ``obj`` looks like a ``SamPredictor``: callable ``set_image`` and ``predict``, and
    a ``predict`` that accepts ``point_coords`` and ``box`` (or ``**kwargs``) when inspectable."""
    if isinstance(obj, type):
        return False
    set_image, predict = getattr(obj, "set_image", None), getattr(obj, "predict", None)
    if not (callable(set_image) and callable(predict)):
        return False
    try:
        params = inspect.signature(predict).parameters
    except (TypeError, ValueError):
        return True
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return True
    return {"point_coords", "box"} <= set(params)


def _no_forward(x: torch.Tensor) -> torch.Tensor:
    raise NotImplementedError("a SAM adapter has no tensor forward; use predict_proba")


class SamAdapter(PromptableSegmenter):
    """A :class:`PromptableSegmenter` backed by a ``SamPredictor``-like object.

    Attributes:
        predictor: the wrapped predictor (``set_image`` / ``predict``).
        spec: :func:`sam_spec` unless given (must be a promptable spec with one target).
    """

    def __init__(self, predictor: Any, spec: ModelSpec | None = None, name: str = "sam",
                 device: str = "cpu") -> None:
        if not is_sam_predictor(predictor):
            raise TypeError(f"{type(predictor).__name__} does not look like a SamPredictor "
                            "(needs set_image(image, image_format) and predict(point_coords, "
                            "point_labels, box, multimask_output, return_logits))")
        spec = spec if spec is not None else sam_spec()
        if spec.n_classes != 2:
            raise ValueError(f"a SAM adapter predicts one object class, spec has "
                             f"{spec.n_classes - 1}")
        super().__init__(spec, _no_forward, device=device, batch_size=1, name=name)
        self.predictor = predictor

    def predict_proba(self, images: Sequence[np.ndarray],  # type: ignore[override]
                      prompts: Sequence[Sequence[Prompt]]) -> list[np.ndarray]:
        """Per-image ``(2, H, W)`` float32 probabilities (background, object) at native size."""
        if len(prompts) != len(images):
            raise ValueError(f"{len(images)} images but {len(prompts)} prompt lists")
        out = []
        for im, plist in zip(images, prompts, strict=True):
            h, w = np.shape(im)[-2:]
            fg = np.zeros((h, w), np.float32)
            usable = [p for p in plist if p.box is not None or p.points]
            if usable:
                self.predictor.set_image(to_uint8_rgb(im), image_format="RGB")
                for p in usable:
                    np.maximum(fg, self._foreground(p, (h, w)), out=fg)
            out.append(np.stack([1.0 - fg, fg]).astype(np.float32))
        return out

    def _foreground(self, prompt: Prompt, shape: tuple[int, int]) -> np.ndarray:
        """Foreground probability ``(H, W)`` of one prompt on the current image."""
        coords = labels = None
        if prompt.points:
            coords = np.asarray(prompt.points, dtype=np.float32).reshape(-1, 2)
            labels = np.asarray(prompt.point_labels, dtype=np.int32).reshape(-1)
        box = None if prompt.box is None else np.asarray(prompt.box, dtype=np.float32)
        masks, scores, _ = self.predictor.predict(point_coords=coords, point_labels=labels,
                                                  box=box, multimask_output=False,
                                                  return_logits=True)
        raw = _numpy(masks)
        # A predictor that ignores return_logits gives bool masks: use them as 0/1 probabilities.
        logits = np.where(raw, 50.0, -50.0) if raw.dtype == bool else raw.astype(np.float32)
        if logits.ndim == 2:
            logits = logits[None]
        if logits.ndim != 3 or logits.shape[-2:] != tuple(shape):
            raise MedfailModelError(self.name, f"SAM predictor returned masks of shape "
                                    f"{logits.shape}, expected (K, {shape[0]}, {shape[1]})")
        if not np.isfinite(logits).all():
            raise MedfailModelError(self.name, f"SAM predictor returned "
                                    f"{int((~np.isfinite(logits)).sum())} non-finite mask "
                                    f"logit(s) (NaN or inf) of {logits.size}")
        k = int(np.argmax(_numpy(scores).reshape(-1))) if logits.shape[0] > 1 else 0
        return expit(logits[k]).astype(np.float32)


def _numpy(x: Any) -> np.ndarray:
    """A numpy view of a numpy array or (any-device) torch tensor."""
    if isinstance(x, torch.Tensor):
        return x.detach().float().cpu().numpy()
    return np.asarray(x)


def wrap_sam(obj: Any, name: str = "sam", spec: ModelSpec | None = None) -> SamAdapter:
    """Wrap a ``SamPredictor``-like object as a medfail promptable adapter.

    Raises:
        TypeError: ``obj`` has not the ``SamPredictor`` call shape (see :func:`is_sam_predictor`).
    """
    return SamAdapter(obj, spec=spec, name=name)
