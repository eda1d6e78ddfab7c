"""Test-time augmentation (TTA) and Monte-Carlo dropout: several forward passes per image.

All return the mean probability and the per-element standard deviation across passes (the
"spread", an uncertainty signal); the cost is ``n_passes`` forward passes per image. A deep
ensemble (:func:`ensemble_predict`) does the same over several models.

* TTA: flips along width, height and both (plus the identity), predictions flipped back;
  prompts are flipped with the image. Deterministic.
* MC dropout (Gal & Ghahramani 2016): dropout layers are switched to training mode for
  ``n_passes`` passes; a model without dropout gets ``p = 0.1`` dropout injected on the input of
  its last ``nn.Linear`` (classifiers) or last convolution (segmenters) for the duration of the
  call. Each image's passes run as one batch of ``n_passes`` copies under
  ``torch.manual_seed(derive_seed(seed, "mc_dropout", id))``, so draws are reproducible and do
  not depend on batch size. Only torch models qualify (``NotApplicable`` otherwise).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from medfail.data.prompts import Prompt
from medfail.models.adapters import ModelAdapter, PromptableSegmenter
from medfail.seeding import derive_seed

TTA_FLIPS: tuple[tuple[int, ...], ...] = ((), (-1,), (-2,), (-2, -1))
INJECTED_DROPOUT = 0.1


class NotApplicable(RuntimeError):
    """The method cannot run on this model (reported as not applicable, not as a failure)."""


def _flip_prompt(p: Prompt, axes: tuple[int, ...], shape: tuple[int, int]) -> Prompt:
    h, w = shape

    def fx(x: float) -> float:
        return (w - 1 - x) if -1 in axes else x

    def fy(y: float) -> float:
        return (h - 1 - y) if -2 in axes else y

    box = None
    if p.box is not None:
        x0, y0, x1, y1 = p.box
        box = (min(fx(x0), fx(x1)), min(fy(y0), fy(y1)), max(fx(x0), fx(x1)),
               max(fy(y0), fy(y1)))
    return Prompt(box=box, points=tuple((fx(x), fy(y)) for x, y in p.points),
                  point_labels=p.point_labels)


def _predict(adapter: ModelAdapter, images: Sequence[np.ndarray],
             prompts: Sequence[Sequence[Prompt]] | None) -> list[np.ndarray]:
    if isinstance(adapter, PromptableSegmenter):
        return list(adapter.predict_proba(images, prompts or [[] for _ in images]))
    return list(adapter.predict_proba(images))


def tta_predict(adapter: ModelAdapter, images: Sequence[np.ndarray],
                prompts: Sequence[Sequence[Prompt]] | None = None
                ) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Mean and spread of predictions over the flips in ``TTA_FLIPS``."""
    draws: list[list[np.ndarray]] = [[] for _ in images]
    segmentation = adapter.task != "classification"
    for axes in TTA_FLIPS:
        flipped = [np.ascontiguousarray(np.flip(im, axis=axes)) if axes else im for im in images]
        fprompts = None if prompts is None else [
            [_flip_prompt(p, axes, im.shape[1:]) for p in plist]
            for plist, im in zip(prompts, images, strict=True)]
        for i, out in enumerate(_predict(adapter, flipped, fprompts)):
            draws[i].append(np.flip(out, axis=axes) if (axes and segmentation) else out)
    return _summarise(draws)


def ensemble_predict(adapters: Sequence[ModelAdapter], images: Sequence[np.ndarray],
                     prompts: Sequence[Sequence[Prompt]] | None = None
                     ) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Deep ensemble: mean and spread of the members' predictions (one pass per member)."""
    draws: list[list[np.ndarray]] = [[] for _ in images]
    for adapter in adapters:
        for i, out in enumerate(_predict(adapter, images, prompts)):
            draws[i].append(out)
    return _summarise(draws)


def _summarise(draws: list[list[np.ndarray]]) -> tuple[list[np.ndarray], list[np.ndarray]]:
    stacks = [np.stack(d) for d in draws]
    return [s.mean(axis=0) for s in stacks], [s.std(axis=0) for s in stacks]


@contextmanager
def mc_dropout_enabled(module: nn.Module, task: str) -> Iterator[bool]:
    """Dropout layers in training mode (or dropout injected); yields whether it was injected."""
    dropouts = [m for m in module.modules() if isinstance(m, nn.modules.dropout._DropoutNd)
                and m.p > 0]
    handle = None
    if not dropouts:
        kinds = (nn.Linear,) if task == "classification" else (nn.Conv2d, nn.ConvTranspose2d)
        layers = [m for m in module.modules() if isinstance(m, kinds)]
        if not layers:
            raise NotApplicable("no dropout layer and no layer to inject dropout before")
        handle = layers[-1].register_forward_pre_hook(
            lambda _m, args: (F.dropout(args[0], INJECTED_DROPOUT, training=True), *args[1:]))
    for m in dropouts:
        m.train()
    try:
        yield handle is not None
    finally:
        for m in dropouts:
            m.eval()
        if handle is not None:
            handle.remove()


def mc_dropout_predict(adapter: ModelAdapter, images: Sequence[np.ndarray], ids: Sequence[str],
                       seed: int, n_passes: int = 8,
                       prompts: Sequence[Sequence[Prompt]] | None = None
                       ) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Mean and spread over ``n_passes`` dropout draws per image (reproducible per id)."""
    module = getattr(adapter.forward, "module", None)
    if not isinstance(module, nn.Module):
        raise NotApplicable("MC dropout needs a torch model (not ONNX or a plain callable)")
    draws: list[list[np.ndarray]] = []
    with mc_dropout_enabled(module, adapter.task):
        for i, (im, sid) in enumerate(zip(images, ids, strict=True)):
            torch.manual_seed(derive_seed(seed, "mc_dropout", sid) % (2**63))
            plist = None if prompts is None else [prompts[i]] * n_passes
            draws.append(_predict(adapter, [im] * n_passes, plist))
    return _summarise(draws)
