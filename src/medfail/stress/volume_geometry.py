"""Geometry stress tests for volumes: slice thickness, missing/duplicated slices, wrong orientation.

Every test keeps the volume's shape ``(C, X, Y, Z)`` (canonical RAS+ axes), so the ground-truth
mask and every metric stay aligned with it: what changes is the image data only, as when a
pipeline reads a series wrongly and nobody notices. The severities are written once, in
:data:`VOLUME_GEOMETRY`; docs/domain_shift.md shows them (checked by the tests).

The *slice axis* of a volume is the axis with the largest spacing (:func:`slice_axis`; ties
and unknown spacing: the last axis, 2). The tests receive each volume's spacing (``spacing``,
rows of 1.0 where unknown) and act on it:

* ``slice_thickness``: thicker slices. Along the slice axis, consecutive blocks of ``factor``
  slices are averaged (a last partial block averages its real slices), then the block means,
  placed at their blocks' centres, are linearly interpolated back to every original slice
  position (constant beyond the first and last centre). One linear operator ``M = W·A``
  (``n × n``) along the axis.
* ``missing_slices``: ``k = max(1, round(fraction · n))`` distinct slices (uniform draw) are
  replaced by the volume's ``lo`` (air in CT, 0 in MRI): a dropped DICOM file written as an
  empty slice. (Filling with the neighbour would be ``duplicated_slices``.)
* ``duplicated_slices``: at ``k = min(n − 1, max(1, round(fraction · n)))`` distinct places
  ``i`` (uniform in ``0..n−2``) slice ``i + 1`` is replaced by the original slice ``i``: a series
  with a repeated file, so everything above it is off by one slice there.
* ``flipped_affine``: the image data is reoriented while the ground truth is not, which is what
  a wrong header orientation (or a reader that ignores it) does. Severity 1 flips left-right
  (axis 0), 2 flips anterior-posterior (axis 1), 3 rotates 90° in the plane of the two
  non-slice axes ``(a, b)``, ``a < b``, from ``a`` towards ``b`` (``torch.rot90(k=1)``); if those
  two sizes differ the rotated volume is centre-cropped / padded with ``lo`` back to the
  original shape. Deterministic: no random draws.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch

from medfail.stress.spec import StressTest, slice_axis

__all__ = ["VOLUME_GEOMETRY", "fit_shape", "slice_axis", "thick_slice_operator"]


def _axis_of(spacing: np.ndarray, i: int) -> int:
    return slice_axis(tuple(float(v) for v in spacing[i]), ndim=spacing.shape[1])


def thick_slice_operator(n: int, factor: int) -> np.ndarray:
    """The ``n × n`` matrix of ``slice_thickness`` along one axis: block average, then linear
    interpolation from the block centres back to the ``n`` positions (rows sum to 1)."""
    if factor < 1:
        raise ValueError(f"factor must be >= 1, got {factor}")
    starts = list(range(0, n, factor))
    average = np.zeros((len(starts), n))
    centres = np.empty(len(starts))
    for j, s in enumerate(starts):
        idx = np.arange(s, min(s + factor, n))
        average[j, idx] = 1.0 / idx.size
        centres[j] = idx.mean()
    interp = np.zeros((n, len(starts)))
    for i in range(n):
        if i <= centres[0]:
            interp[i, 0] = 1.0
        elif i >= centres[-1]:
            interp[i, -1] = 1.0
        else:
            j = int(np.searchsorted(centres, i, side="right")) - 1
            t = (i - centres[j]) / (centres[j + 1] - centres[j])
            interp[i, j], interp[i, j + 1] = 1.0 - t, t
    return interp @ average


def _slice_thickness(
    images: torch.Tensor,
    value_range: torch.Tensor,
    params: Mapping[str, Any],
    rngs: Sequence[np.random.Generator],
    *,
    spacing: np.ndarray,
) -> torch.Tensor:
    """Average ``factor`` slices along the slice axis, interpolate back linearly."""
    factor = int(params["factor"])
    out = torch.empty_like(images)
    for i in range(images.shape[0]):
        dim = 1 + _axis_of(spacing, i)  # in the (C, X, Y, Z) volume
        op = thick_slice_operator(images.shape[dim + 1], factor)
        m = torch.from_numpy(op.T.astype(np.float32)).to(images.device)
        y = torch.movedim(images[i], dim, -1) @ m
        out[i] = torch.movedim(y, -1, dim)
    lo, hi = value_range[:, 0], value_range[:, 1]
    shape = (-1,) + (1,) * (images.ndim - 1)
    return torch.minimum(torch.maximum(out, lo.reshape(shape)), hi.reshape(shape))


def _count(fraction: float, n: int, most: int) -> int:
    return min(most, max(1, round(fraction * n)))


def _missing_slices(
    images: torch.Tensor,
    value_range: torch.Tensor,
    params: Mapping[str, Any],
    rngs: Sequence[np.random.Generator],
    *,
    spacing: np.ndarray,
) -> torch.Tensor:
    """Set ``k`` random slices along the slice axis to ``lo``."""
    fraction = float(params["fraction"])
    out = images.clone()
    for i, rng in enumerate(rngs):
        dim = 1 + _axis_of(spacing, i)
        n = images.shape[dim + 1]
        idx = np.sort(rng.choice(n, size=_count(fraction, n, n), replace=False))
        view = torch.movedim(out[i], dim, 0)  # a view: writes go to out
        view[torch.from_numpy(idx).to(images.device)] = value_range[i, 0]
    return out


def _duplicated_slices(
    images: torch.Tensor,
    value_range: torch.Tensor,
    params: Mapping[str, Any],
    rngs: Sequence[np.random.Generator],
    *,
    spacing: np.ndarray,
) -> torch.Tensor:
    """At ``k`` random places ``i``, slice ``i + 1`` := original slice ``i`` (slice axis)."""
    fraction = float(params["fraction"])
    out = images.clone()
    for i, rng in enumerate(rngs):
        dim = 1 + _axis_of(spacing, i)
        n = images.shape[dim + 1]
        if n < 2:
            continue
        at = torch.from_numpy(np.sort(rng.choice(n - 1, size=_count(fraction, n, n - 1),
                                                 replace=False))).to(images.device)
        src = torch.movedim(images[i], dim, 0)
        torch.movedim(out[i], dim, 0)[at + 1] = src[at]
    return out


def fit_shape(volume: torch.Tensor, shape: Sequence[int], fill: float) -> torch.Tensor:
    """``volume`` ``(C, *spatial)`` centre-cropped / padded with ``fill`` to ``(C, *shape)``.

    On an axis of size ``s`` and target ``t``: crop from ``(s − t) // 2`` when ``s > t``, pad
    ``(t − s) // 2`` before (the rest after) when ``s < t``.
    """
    out = volume.new_full((volume.shape[0], *shape), fill)
    src, dst = [slice(None)], [slice(None)]
    for s, t in zip(volume.shape[1:], shape, strict=True):
        if s >= t:
            start = (s - t) // 2
            src.append(slice(start, start + t))
            dst.append(slice(None))
        else:
            start = (t - s) // 2
            src.append(slice(None))
            dst.append(slice(start, start + s))
    out[tuple(dst)] = volume[tuple(src)]
    return out


def _flipped_affine(
    images: torch.Tensor,
    value_range: torch.Tensor,
    params: Mapping[str, Any],
    rngs: Sequence[np.random.Generator],
    *,
    spacing: np.ndarray,
) -> torch.Tensor:
    """Flip L-R (axis 0) / A-P (axis 1) and/or rotate 90° in-plane (see the module docstring)."""
    out = images.clone()
    if int(params["flip_lr"]):
        out = out.flip(2)
    if int(params["flip_ap"]):
        out = out.flip(3)
    if int(params["rot90"]):
        for i in range(out.shape[0]):
            a, b = (1 + ax for ax in range(3) if ax != _axis_of(spacing, i))
            turned = torch.rot90(out[i], 1, dims=(a, b))
            out[i] = fit_shape(turned, out.shape[2:], float(value_range[i, 0]))
    return out


_ANY = ("any",)
_VOLUMES = (3,)

VOLUME_GEOMETRY: tuple[StressTest, ...] = (
    StressTest(
        name="slice_thickness",
        family="domain_shift",
        taxonomy="data",
        modalities=_ANY,
        severities=({"factor": 2}, {"factor": 3}, {"factor": 5}),
        description="Thicker slices: factor slices averaged along the slice axis, linear back.",
        unit="factor: slices averaged into one along the slice axis (largest spacing), then "
        "linear interpolation back to the original slices",
        apply=_slice_thickness,
        dims=_VOLUMES,
        uses_spacing=True,
    ),
    StressTest(
        name="missing_slices",
        family="domain_shift",
        taxonomy="data",
        modalities=_ANY,
        severities=({"fraction": 0.05}, {"fraction": 0.1}, {"fraction": 0.2}),
        description="Missing slices: random slices of the series replaced by empty ones (lo).",
        unit="fraction: share of the slices (slice axis) set to lo, at least 1",
        apply=_missing_slices,
        dims=_VOLUMES,
        uses_spacing=True,
    ),
    StressTest(
        name="duplicated_slices",
        family="domain_shift",
        taxonomy="data",
        modalities=_ANY,
        severities=({"fraction": 0.05}, {"fraction": 0.1}, {"fraction": 0.2}),
        description="Duplicated slices: slice i+1 := slice i at random places (slice axis).",
        unit="fraction: share of the slices (slice axis) overwritten by their predecessor, "
        "at least 1",
        apply=_duplicated_slices,
        dims=_VOLUMES,
        uses_spacing=True,
    ),
    StressTest(
        name="flipped_affine",
        family="domain_shift",
        taxonomy="data",
        modalities=_ANY,
        severities=(
            {"flip_lr": 1, "flip_ap": 0, "rot90": 0},
            {"flip_lr": 0, "flip_ap": 1, "rot90": 0},
            {"flip_lr": 0, "flip_ap": 0, "rot90": 1},
        ),
        description="Wrong orientation: image flipped L-R / A-P or turned 90 deg in-plane, "
        "ground truth not.",
        unit="flip_lr: flip axis 0 (R-L); flip_ap: flip axis 1 (A-P); rot90: quarter turn in "
        "the plane of the two non-slice axes (centre crop/pad with lo)",
        apply=_flipped_affine,
        dims=_VOLUMES,
        uses_spacing=True,
    ),
)
