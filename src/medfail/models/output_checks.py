"""Model outputs checked at the boundary (documented in docs/models.md, "Output checks").

Two places, one set of rules:

* :func:`check_output` - every forward call (``ModelAdapter._probs``): the raw output must be one
  floating-point tensor of shape ``(N, K)`` (classifier: batch, targets) or ``(N, C, h, w)``
  (segmenter: batch, 1 + foreground classes, the input window's own h, w - never resized; volumes
  ``(N, C, x, y, z)``), with
  finite values; with ``output="probabilities"`` every value lies in ``[0, 1]`` and, for softmax
  outputs (multi-class classification, segmentation), the values over dim 1 sum to 1, both
  within :func:`tolerance`. The cost is one min/max pass (NaN propagates), one sum over
  dim 1 for softmax probabilities, and one device sync.
* :func:`probe_models` - before a run writes anything: each model (main and ensemble members) runs
  on up to :data:`PROBE_SAMPLES` real samples of the dataset (a promptable model with their
  prompts); what comes back is checked by :func:`check_predictions`, and a model that raises is
  reported as :class:`~medfail.errors.MedfailModelError` naming the model and the input.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from medfail.errors import MedfailInputError, MedfailModelError, listing
from medfail.models.spec import ModelSpec

if TYPE_CHECKING:
    from medfail.data.datasets import Dataset
    from medfail.data.prompts import Prompt
    from medfail.data.sample import Sample
    from medfail.models.adapters import ModelAdapter

#: absolute tolerance on probabilities (range and softmax sums) for float32/float64 outputs
PROB_TOL = 1e-4
#: samples each model runs on before a run writes anything
PROBE_SAMPLES = 2
#: samples scanned for ones with prompts (promptable models)
PROBE_SCAN = 32


def tolerance(dtype: torch.dtype) -> float:
    """Absolute tolerance for probabilities of ``dtype``: ``max(1e-4, 8 * eps)`` (1e-4 for
    float32/float64, 7.8e-3 for float16, 0.0625 for bfloat16)."""
    try:
        return max(PROB_TOL, 8.0 * torch.finfo(dtype).eps)
    except TypeError:
        return PROB_TOL


def _softmax(spec: ModelSpec) -> bool:
    """Whether the outputs over dim 1 are a softmax (sum to 1)."""
    if spec.task == "classification":
        return not spec.multi_label and spec.n_classes > 1
    return True


def _role(spec: ModelSpec) -> str:
    return {"classification": "classifier", "segmentation": "segmenter",
            "promptable": "promptable segmenter"}[spec.task]


def _kind(obj: Any) -> str:
    if isinstance(obj, tuple | list):
        return f"a {type(obj).__name__} of {len(obj)} ({listing(type(o).__name__ for o in obj)})"
    if isinstance(obj, dict):
        return f"a dict with keys {list(obj)[:5]}"
    if isinstance(obj, np.ndarray):
        return f"a numpy array of dtype {obj.dtype}"
    return "None" if obj is None else f"a {type(obj).__name__}"


def _expected(spec: ModelSpec, x_shape: tuple[int, ...]) -> tuple[tuple[int, ...], str]:
    n = x_shape[0]
    if spec.task == "classification":
        return (n, spec.n_classes), "(batch, targets)"
    axes = "X, Y, Z" if len(x_shape) == 5 else "H, W"
    return (n, spec.n_classes, *x_shape[2:]), f"(batch, 1 + foreground classes, {axes})"


def _shape_hint(shape: tuple[int, ...], x_shape: tuple[int, ...], spec: ModelSpec) -> str:
    """Which part of the shape is wrong, in words."""
    n, k = x_shape[0], spec.n_classes
    names = ", ".join(spec.target_names)
    if spec.task == "classification":
        if len(shape) >= 4:
            return ("this looks like a segmentation output (per-pixel maps): run it with "
                    "--task segmentation and a segmentation spec")
        if len(shape) != 2:
            return f"a classifier returns one row of {k} scores per image"
        if shape[0] != n:
            return f"batch dimension {shape[0]} for a batch of {n} images"
        return f"{shape[1]} outputs per image but the spec has {k} targets ({names})"
    if len(shape) == 2:
        return ("this looks like a classifier output (one row per image), not per-pixel maps: "
                "run it with --task classification and a classification spec")
    if shape == (n, *x_shape[2:]):
        return ("the class dimension is missing (a label map or one foreground map?): return "
                "background first, then one map per foreground class")
    if len(shape) != len(x_shape):
        return "a segmenter returns per-pixel class maps"
    if shape[0] != n:
        return f"batch dimension {shape[0]} for a batch of {n} inputs"
    if shape[1] != k:
        single = (" (one sigmoid foreground map? return background 1 - p first, then p)"
                  if shape[1] == 1 and k == 2 else "")
        return (f"{shape[1]} channels but the spec has {k} = background + {k - 1} foreground "
                f"class(es) ({names}){single}")
    return (f"spatial size {tuple(shape[2:])} differs from its input window "
            f"{tuple(x_shape[2:])}; medfail never resizes outputs (upsample inside the model, "
            "or fix the spec's input_size)")


def check_output(out: Any, x: torch.Tensor, spec: ModelSpec, name: str) -> torch.Tensor:
    """``out`` (a forward's raw output for input ``x``) if usable, else ``MedfailModelError``.

    Checks type (one tensor), dtype (floating point), shape (see the module docstring),
    finiteness, and for ``output="probabilities"`` the range ``[0, 1]`` and softmax sums, within
    :func:`tolerance` of the output's dtype.
    """
    x_shape = tuple(x.shape)
    what = "probabilities" if spec.output == "probabilities" else "logits"
    if not isinstance(out, torch.Tensor):
        raise MedfailModelError(name, f"returned {_kind(out)} for a {x_shape} input, but a "
                                f"{_role(spec)} must return one tensor of {what}")
    if not out.is_floating_point():
        raise MedfailModelError(name, f"returned dtype {str(out.dtype).replace('torch.', '')} "
                                f"(shape {tuple(out.shape)}), but {what} must be floating point")
    shape = tuple(out.shape)
    want, meaning = _expected(spec, x_shape)
    if shape != want:
        raise MedfailModelError(
            name, f"returned shape {shape} but a {_role(spec)} must return {want} = {meaning} "
            f"for a {x_shape} input: {_shape_hint(shape, x_shape, spec)}")
    values = out.detach()
    if not values.numel():
        return out
    lo, hi = torch.aminmax(values)  # one pass; NaN propagates, inf shows
    stats = [lo.float(), hi.float()]
    softmax = spec.output == "probabilities" and _softmax(spec)
    if softmax:
        stats.append((values.sum(dim=1, dtype=torch.float32) - 1.0).abs().amax())
    got = torch.stack(stats).tolist()  # one device sync
    if not (np.isfinite(got[0]) and np.isfinite(got[1])):
        xr = x.detach().float()
        n_bad = int((~torch.isfinite(values)).sum())
        raise MedfailModelError(
            name, f"returned {n_bad} non-finite value(s) (NaN or inf) "
            f"of {values.numel()} in its {shape} output, for an input with values in "
            f"[{float(xr.amin()):.4g}, {float(xr.amax()):.4g}]")
    if spec.output == "probabilities":
        tol = tolerance(out.dtype)
        if got[0] < -tol or got[1] > 1.0 + tol:
            raise MedfailModelError(
                name, f"returned values in [{got[0]:.4g}, {got[1]:.4g}], but the spec says "
                f"output=\"probabilities\", which must lie in [0, 1] (tolerance {tol:g}); if "
                "these are logits, set \"output\": \"logits\" in the model spec")
        if softmax and got[2] > tol:
            fix = (" or \"multi_label\": true (independent sigmoid targets)"
                   if spec.task == "classification" else "")
            raise MedfailModelError(
                name, f"returned probabilities whose sum over the {shape[1]} classes (dim 1) is "
                f"off 1 by up to {got[2]:.3g} (tolerance {tol:g}), but softmax probabilities "
                f"must sum to 1; set \"output\": \"logits\" in the model spec{fix}")
    return out


def check_predictions(adapter: ModelAdapter, images: Sequence[np.ndarray],
                      outputs: Any) -> None:
    """An adapter's final ``predict_proba`` outputs for native ``images``: ``(N, K)`` (classifier)
    or one ``(C, H, W)`` per image at its native size, finite, in ``[0, 1]`` within
    :data:`PROB_TOL`."""
    spec, name, n = adapter.spec, adapter.name, len(images)
    k = spec.n_classes
    if spec.task == "classification":
        arr = np.asarray(outputs)
        if arr.shape != (n, k):
            raise MedfailModelError(name, f"predict_proba returned shape {arr.shape} for {n} "
                                    f"images, expected ({n}, {k}) = (images, targets)")
        per_image = list(arr)
    else:
        per_image = list(outputs)
        if len(per_image) != n:
            raise MedfailModelError(name, f"predict_proba returned {len(per_image)} maps for "
                                    f"{n} images")
    for i, (im, p) in enumerate(zip(images, per_image, strict=True)):
        p = np.asarray(p)
        if spec.task != "classification":
            want = (k, *np.shape(im)[1:])
            if p.shape != want:
                raise MedfailModelError(
                    name, f"predict_proba returned shape {p.shape} for image {i} of shape "
                    f"{np.shape(im)}, expected {want} = (1 + foreground classes, H, W)")
        if p.dtype.kind != "f" or not np.isfinite(p).all():
            raise MedfailModelError(name, f"predict_proba returned non-finite or non-float "
                                    f"values ({p.dtype}) for image {i}")
        if p.size and (p.min() < -PROB_TOL or p.max() > 1.0 + PROB_TOL):
            raise MedfailModelError(name, f"predict_proba returned values in [{p.min():.4g}, "
                                    f"{p.max():.4g}] for image {i}, outside [0, 1]")


def _probe_samples(dataset: Dataset, task: str, prompts: Callable[[Sample], list[Prompt]],
                   n: int) -> list[Sample]:
    """The first ``n`` samples (promptable: the first ``n`` with a prompt among the first
    :data:`PROBE_SCAN`, else the first ``n``)."""
    ids = list(dataset.ids)
    if task != "promptable":
        return [dataset.load(i) for i in ids[:n]]
    scanned = [dataset.load(i) for i in ids[:n]]
    chosen = [s for s in scanned if prompts(s)]
    for sid in ids[n:PROBE_SCAN]:
        if len(chosen) >= n:
            break
        s = dataset.load(sid)
        if prompts(s):
            chosen.append(s)
    return chosen[:n] or scanned


def probe_models(models: Sequence[ModelAdapter], dataset: Dataset,
                 prompts: Callable[[Sample], list[Prompt]], n: int = PROBE_SAMPLES) -> None:
    """Run each model on ``n`` real samples and check its outputs, before a run writes anything.

    Raises:
        MedfailModelError: a model's output breaks a rule of :func:`check_output` or
            :func:`check_predictions`, or the model raised on the input built from its spec.
    """
    if not models or not len(dataset):
        return
    if getattr(dataset, "spatial_dims", 2) == 3:
        n = 1  # volumes: one at a time, as the run feeds them (memory: one volume)
    samples = _probe_samples(dataset, models[0].spec.task, prompts, n)
    if samples and samples[0].image.ndim == 4:
        samples = samples[:1]
    images = [s.image for s in samples]
    for model in models:
        try:
            if model.spec.task == "promptable":
                out = model.predict_proba(images,  # type: ignore[call-arg]
                                          [prompts(s) for s in samples])
            elif "spacings" in inspect.signature(model.predict_proba).parameters:
                # the spacings the run passes: a model with spec.spacing is probed at its grid
                out = model.predict_proba(images, spacings=[s.spacing for s in samples])
            else:
                out = model.predict_proba(images)
        except MedfailInputError:
            raise
        except Exception as exc:  # the model's own error, on an input built from its spec
            detail = " ".join(str(exc).split()) or "(no message)"
            shapes = sorted({tuple(np.shape(im)) for im in images})
            raise MedfailModelError(
                model.name, f"failed on samples {[s.id for s in samples]} (native image "
                f"shape(s) {', '.join(map(str, shapes))}, spec in_channels "
                f"{model.spec.in_channels}, input_size {model.spec.input_size}): "
                f"{type(exc).__name__}: {detail[:400]}") from exc
        check_predictions(model, images, out)
