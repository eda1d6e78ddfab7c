"""Resampling between an image's native grid and the grid a model expects (``ModelSpec.spacing``).

Rule (docs/models.md, "Volumes"): an image of shape ``n`` (per spatial axis) with native spacing
``s`` mm goes to the model spacing ``t`` mm on the grid of shape ``m = max(1, round(n * s / t))``
(same field of view up to half a voxel per side), with linear interpolation (trilinear for
volumes, bilinear for 2D images; ``F.interpolate(align_corners=False)``: voxel centres, not
corners, are aligned, so the field of view is kept exactly when ``n * s / t`` is an integer).
The model's class probabilities go back to the native grid the same way and are then clipped
at 0 and renormalised to sum 1 over the classes at every voxel. No resampling when the native
spacing is unknown, when the model has no spacing, or when ``m == n`` on every axis.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

#: probabilities are clipped at this before renormalising (no division by zero)
_EPS = 1e-12


def model_grid(shape: Sequence[int], spacing: Sequence[float] | None,
               target: Sequence[float] | None) -> tuple[int, ...] | None:
    """The grid shape ``max(1, round(n_i * s_i / t_i))`` at the model spacing ``target``, or
    ``None`` when nothing is to be resampled (unknown spacing, no model spacing, same shape).

    >>> model_grid((64, 64, 20), (1.0, 1.0, 5.0), (2.0, 2.0, 2.0))
    (32, 32, 50)
    >>> model_grid((64, 64, 20), None, (2.0, 2.0, 2.0)) is None
    True
    """
    if spacing is None or target is None:
        return None
    if len(spacing) != len(shape) or len(target) != len(shape):
        raise ValueError(f"spacing {tuple(spacing)} and model spacing {tuple(target)} must have "
                         f"one value per spatial axis of shape {tuple(shape)}")
    grid = tuple(max(1, round(n * s / t)) for n, s, t in zip(shape, spacing, target, strict=True))
    return None if grid == tuple(int(n) for n in shape) else grid


def resize(x: torch.Tensor, shape: Sequence[int]) -> torch.Tensor:
    """``(N, C, *spatial)`` -> ``(N, C, *shape)`` by linear interpolation (bi/trilinear,
    ``align_corners=False``)."""
    mode = {1: "linear", 2: "bilinear", 3: "trilinear"}[x.ndim - 2]
    return F.interpolate(x, size=tuple(int(n) for n in shape), mode=mode, align_corners=False)


def probabilities_back(probs: torch.Tensor, shape: Sequence[int]) -> torch.Tensor:
    """Class probabilities ``(N, K, *grid)`` back to the native ``shape``: linear
    interpolation, then ``p = max(p, 0) / sum_k max(p_k, 0)`` at every voxel."""
    p = resize(probs.float(), shape).clamp_min(0.0)
    return p / p.sum(dim=1, keepdim=True).clamp_min(_EPS)
