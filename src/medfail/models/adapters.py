"""Model adapters: one protocol per task, whatever the model format.

A *forward* maps a preprocessed (N, C, H, W) float tensor to a raw (N, K) or (N, K, H, W) output
(logits or probabilities, as the spec says). Adapters add preprocessing and output activation:

* :class:`Classifier` -> ``predict_proba(images) -> (N, K)`` probabilities;
* :class:`Segmenter` -> ``predict_proba(images, spacings=None) -> [(C, H, W)]`` per-pixel class
  probabilities at each image's native size (class 0 = background), sliding window of
  ``input_size``. Volumes ``(C, X, Y, Z)`` (``spec.spatial_dims == 3``) run one at a time, their
  windows :data:`SW_BATCH_3D` at a time; with ``spec.spacing`` and a known spacing, an image is
  resampled to the model spacing first and its probabilities back
  (:mod:`medfail.models.resample`);
* :class:`PromptableSegmenter` -> ``predict_proba(images, prompts)``: one forward per prompt on a
  crop around the prompt (see :meth:`PromptableSegmenter.prompt_region`), and the image's
  foreground probability is the pixel-wise maximum over its prompts (2D only).

Images must have the spec's number of spatial dims (``image.ndim - 1 == spec.spatial_dims``);
classifiers take 2D images only for now. Both are refused with a ``MedfailInputError``.

Every forward output is checked before use (shape, dtype, finite, probability range:
:mod:`medfail.models.output_checks`); a bad one raises ``MedfailModelError`` naming the model.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Sequence

import numpy as np
import torch
from monai.inferers import sliding_window_inference

from medfail.data.prompts import Prompt
from medfail.errors import MedfailInputError
from medfail.models.output_checks import check_output
from medfail.models.preprocess import prompt_channels, to_tensor
from medfail.models.resample import model_grid, probabilities_back, resize
from medfail.models.spec import SLIDING_WINDOW_OVERLAP, ModelSpec

Forward = Callable[[torch.Tensor], torch.Tensor]
__all__ = ["SLIDING_WINDOW_OVERLAP"]  # the default of ModelSpec.overlap, re-exported
#: windows per forward of a 3D sliding window (one volume at a time), at most ``batch_size``
SW_BATCH_3D = 4


def resolve_device(device: str | None = None) -> str:
    """The torch device to run on: ``device`` checked (``cpu``, ``cuda``, ``cuda:1``...), or by
    default ``cuda`` when a GPU is available, else ``cpu``."""
    if device is None:
        return "cuda" if torch.cuda.is_available() else "cpu"
    try:
        dev = torch.device(device)
    except RuntimeError as exc:
        raise MedfailInputError(None, f"unknown device {device!r} ({exc})") from exc
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise MedfailInputError(None, f"device {device!r} requested but CUDA is not available")
    if dev.type == "cuda" and (dev.index or 0) >= torch.cuda.device_count():
        raise MedfailInputError(None, f"device {device!r} requested but only "
                                f"{torch.cuda.device_count()} CUDA device(s) exist")
    return str(dev)


def _groups_by_shape(images: Sequence[np.ndarray]) -> dict[tuple[int, ...], list[int]]:
    groups: dict[tuple[int, ...], list[int]] = defaultdict(list)
    for i, im in enumerate(images):
        groups[tuple(im.shape)].append(i)
    return groups


class ModelAdapter:
    """Shared parts: the spec, the forward, the device and output activation."""

    task = ""

    def __init__(self, spec: ModelSpec, forward: Forward, device: str = "cpu",
                 batch_size: int = 32, name: str = "model") -> None:
        if spec.task != self.task:
            raise ValueError(f"{type(self).__name__} needs a {self.task} spec, got {spec.task}")
        self.spec = spec
        self.forward = forward
        self.device = device
        self.batch_size = batch_size
        self.name = name

    def activate(self, out: torch.Tensor) -> torch.Tensor:
        """Raw output -> probabilities (sigmoid for multi-label, softmax over dim 1 otherwise)."""
        out = out.float()
        if self.spec.output == "probabilities":
            return out
        if self.spec.task == "classification" and self.spec.multi_label:
            return torch.sigmoid(out)
        return torch.softmax(out, dim=1)

    @torch.no_grad()
    def _probs(self, x: torch.Tensor) -> torch.Tensor:
        """Checked forward (:func:`~medfail.models.output_checks.check_output`), activated."""
        return self.activate(check_output(self.forward(x), x, self.spec, self.name))

    def _check_dims(self, images: Sequence[np.ndarray], volumes: bool = True) -> None:
        """Every image has the spec's spatial dims (``ndim - 1``); ``volumes=False``: 2D only."""
        want = int(self.spec.spatial_dims or 2)
        for i, im in enumerate(images):
            dims = np.ndim(im) - 1
            if dims == want and (volumes or dims == 2):
                continue
            if dims == 3 and not volumes:
                raise MedfailInputError(
                    None, f"model {self.name}: {self.task} on volumes is not supported yet "
                    f"(image {i} has shape {np.shape(im)}); use a 2D model on 2D images")
            kind = {2: "2D images (C, H, W)", 3: "volumes (C, X, Y, Z)"}
            raise MedfailInputError(
                None, f"model {self.name} takes {kind.get(want, f'{want}D inputs')} "
                f"(spec spatial_dims {want}) but image {i} has shape {np.shape(im)}; "
                f"set spatial_dims and input_size in the model spec to match the data")


class Classifier(ModelAdapter):
    task = "classification"

    def predict_proba(self, images: Sequence[np.ndarray]) -> np.ndarray:
        """Probabilities (N, K) for native (C, H, W) images (resized by the documented rule)."""
        self._check_dims(images, volumes=False)
        out = np.zeros((len(images), self.spec.n_classes), np.float32)
        for idx in _groups_by_shape(images).values():
            for s in range(0, len(idx), self.batch_size):
                chunk = idx[s:s + self.batch_size]
                x = to_tensor([images[i] for i in chunk], self.spec, self.device, resize=True)
                out[chunk] = self._probs(x).cpu().numpy()
        return out


class Segmenter(ModelAdapter):
    task = "segmentation"

    def _window(self, x: torch.Tensor) -> torch.Tensor:
        """Probabilities of a (N, C, *spatial) batch: MONAI ``sliding_window_inference`` with
        windows of ``input_size``, ``spec.overlap`` and gaussian blending (the whole input in one
        forward when ``input_size`` is ``None``)."""
        if self.spec.input_size is None:
            return self._probs(x)
        windows = self.batch_size if x.ndim == 4 else max(1, min(self.batch_size, SW_BATCH_3D))
        return sliding_window_inference(
            x, roi_size=self.spec.input_size, sw_batch_size=windows,
            predictor=self._probs, overlap=self.spec.overlap, mode="gaussian")

    def _resampled(self, x: torch.Tensor, spacing: Sequence[float] | None) -> torch.Tensor:
        """:meth:`_window` of one (1, C, *spatial) input at ``spec.spacing`` (the rule of
        :mod:`medfail.models.resample`), probabilities on the input's own grid."""
        native = tuple(x.shape[2:])
        grid = model_grid(native, spacing, self.spec.spacing)
        if grid is None:
            return self._window(x)
        return probabilities_back(self._window(resize(x, grid)), native)

    def predict_proba(self, images: Sequence[np.ndarray],
                      spacings: Sequence[Sequence[float] | None] | None = None,
                      ) -> list[np.ndarray]:
        """Per-pixel class probabilities (C, *spatial) at each image's native size.

        ``spacings``: each image's spacing in mm (one per spatial axis) or ``None``; used only
        when ``spec.spacing`` is set (then images are resampled one at a time). Volumes always
        run one at a time."""
        self._check_dims(images)
        if spacings is not None and len(spacings) != len(images):
            raise ValueError(f"{len(images)} images but {len(spacings)} spacings")
        out: list[np.ndarray] = [np.empty(0)] * len(images)
        if self.spec.spatial_dims == 3 or (self.spec.spacing is not None and spacings):
            for i, im in enumerate(images):
                x = to_tensor([im], self.spec, self.device)
                spacing = _spacing(spacings[i] if spacings else None, im, i)
                out[i] = self._resampled(x, spacing)[0].cpu().numpy()
            return out
        for idx in _groups_by_shape(images).values():
            for s in range(0, len(idx), self.batch_size):
                chunk = idx[s:s + self.batch_size]
                x = to_tensor([images[i] for i in chunk], self.spec, self.device)
                probs = self._window(x).cpu().numpy()
                for j, i in enumerate(chunk):
                    out[i] = probs[j]
        return out


class PromptableSegmenter(Segmenter):
    task = "promptable"

    def predict_proba(self, images: Sequence[np.ndarray],  # type: ignore[override]
                      prompts: Sequence[Sequence[Prompt]]) -> list[np.ndarray]:
        """Per-pixel (C, H, W) probabilities given each image's prompts (max over prompts)."""
        self._check_dims(images, volumes=False)
        if len(prompts) != len(images):
            raise ValueError(f"{len(images)} images but {len(prompts)} prompt lists")
        inputs, owner = [], []
        for i, (im, plist) in enumerate(zip(images, prompts, strict=True)):
            norm = to_tensor([im], self.spec)[0].numpy()
            for p in plist:
                r0, r1, c0, c1 = self.prompt_region(p, im.shape[1:])
                full = np.concatenate([norm, prompt_channels(p, im.shape[1:])])
                inputs.append(full[:, r0:r1, c0:c1])
                owner.append((i, r0, r1, c0, c1))
        out = []
        for im in images:
            empty = np.zeros((self.spec.n_classes, *im.shape[1:]), np.float32)
            empty[0] = 1.0
            out.append(empty)
        for idx in _groups_by_shape(inputs).values():
            for s in range(0, len(idx), self.batch_size):
                chunk = idx[s:s + self.batch_size]
                x = torch.from_numpy(np.stack([inputs[k] for k in chunk])).to(self.device)
                probs = self._window(x).cpu().numpy()
                for j, k in enumerate(chunk):
                    i, r0, r1, c0, c1 = owner[k]
                    fg = out[i][1:]
                    fg[:, r0:r1, c0:c1] = np.maximum(fg[:, r0:r1, c0:c1], probs[j][1:])
                    out[i][0] = 1.0 - fg.sum(0)
        return out

    def prompt_region(self, prompt: Prompt, shape: tuple[int, ...]) -> tuple[int, int, int, int]:
        """Rows/cols ``(r0, r1, c0, c1)`` the model looks at for one prompt.

        The box and points, expanded by a quarter window on each side and grown to at least one
        window, clipped to the image; outside it the prompt predicts background. The whole image
        when the model has no window size or the prompt is empty.
        """
        h, w = int(shape[0]), int(shape[1])
        xs = [x for x, _ in prompt.points] + ([prompt.box[0], prompt.box[2]] if prompt.box else [])
        ys = [y for _, y in prompt.points] + ([prompt.box[1], prompt.box[3]] if prompt.box else [])
        if self.spec.input_size is None or not xs:
            return 0, h, 0, w
        wh, ww = self.spec.input_size

        def span(lo: float, hi: float, window: int, size: int) -> tuple[int, int]:
            a, b = int(np.floor(lo)) - window // 4, int(np.ceil(hi)) + 1 + window // 4
            if b - a < window:
                extra = window - (b - a)
                a, b = a - extra // 2, b + extra - extra // 2
            if a < 0:
                a, b = 0, b - a
            if b > size:
                a, b = max(a - (b - size), 0), size
            return a, b

        r0, r1 = span(min(ys), max(ys), wh, h)
        c0, c1 = span(min(xs), max(xs), ww, w)
        return r0, r1, c0, c1


def _spacing(spacing: Sequence[float] | None, image: np.ndarray,
             index: int) -> tuple[float, ...] | None:
    """An image's spacing checked: one positive finite value per spatial axis, or ``None``."""
    if spacing is None:
        return None
    sp = tuple(float(v) for v in spacing)
    if len(sp) != np.ndim(image) - 1 or not all(np.isfinite(v) and v > 0 for v in sp):
        raise MedfailInputError(None, f"image {index} (shape {np.shape(image)}) has spacing "
                                f"{sp}; expected {np.ndim(image) - 1} positive values in mm")
    return sp


ADAPTERS: dict[str, type[ModelAdapter]] = {
    "classification": Classifier,
    "segmentation": Segmenter,
    "promptable": PromptableSegmenter,
}
