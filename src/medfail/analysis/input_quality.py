"""Cheap input-quality signals, and the monitoring thresholds they give.

Every feature is computed on the first channel scaled to [0, 1] by the sample's value range, so
thresholds transfer between images of one protocol:

* ``mean_intensity`` — mean of the scaled image;
* ``contrast`` — standard deviation of the scaled image;
* ``dynamic_range`` — 99th − 1st percentile;
* ``noise_sigma`` — Immerkær's fast noise estimate,
  σ = √(π/2) / (6 (H−2)(W−2)) · Σ |I * N| with N = [[1,−2,1],[−2,4,−2],[1,−2,1]]
  (J. Immerkær, CVIU 1996); robust to edges, zero for a constant image;
* ``sharpness`` — variance of the 4-neighbour Laplacian (low = blurred or pixelated).

Volumes: the same features, noise and sharpness in-plane slice by slice (:func:`quality_features`).

A monitor flags an image when a feature leaves the range seen on clean images: the threshold is
the clean 1st percentile (features that fall under a corruption) or the 99th percentile (features
that rise), so about 1 % of clean images raise a false alarm by construction.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy import ndimage

from medfail.stress.spec import slice_axis

FEATURES = ("mean_intensity", "contrast", "dynamic_range", "noise_sigma", "sharpness")
_NOISE_KERNEL = np.array([[1, -2, 1], [-2, 4, -2], [1, -2, 1]], dtype=np.float64)
_LAPLACE = np.array([[0, 1, 0], [1, -4, 1], [0, 1, 0]], dtype=np.float64)


def scaled(image: np.ndarray, value_range: tuple[float, float]) -> np.ndarray:
    """First channel of a (C, *spatial) image scaled to [0, 1] by ``value_range`` (not
    clipped)."""
    lo, hi = value_range
    span = hi - lo if hi > lo else 1.0
    return (np.asarray(image, dtype=np.float64)[0] - lo) / span


def _in_plane(kernel: np.ndarray, ndim: int, axis: int) -> np.ndarray:
    """A 2D kernel applied within planes: a singleton axis inserted at ``axis`` (volumes)."""
    return kernel if ndim == 2 else np.expand_dims(kernel, axis)


def quality_features(image: np.ndarray, value_range: tuple[float, float],
                     spacing: Sequence[float] | None = None) -> dict[str, float]:
    """The five features of the module docstring for one (C, H, W) image.

    Volumes (C, X, Y, Z): mean, contrast and dynamic range over every voxel; ``noise_sigma``
    and ``sharpness`` in-plane, each slice across the slice axis (largest ``spacing``, else
    the last axis) filtered with the 2D kernels: σ = √(π/2) / (6 Σ_slices (H−2)(W−2)) ·
    Σ |I * N| over every slice's interior, and the variance of every voxel's in-plane
    Laplacian; so a 2D image and a one-slice volume give the same values.
    """
    x = scaled(image, value_range)
    axis = slice_axis(spacing, x.ndim) if x.ndim == 3 else -1
    plane = [n for i, n in enumerate(x.shape) if i != axis] if x.ndim == 3 else list(x.shape)
    h, w = plane
    p1, p99 = np.percentile(x, [1, 99])
    if h > 2 and w > 2:
        conv = ndimage.convolve(x, _in_plane(_NOISE_KERNEL, x.ndim, axis), mode="reflect")
        inner = tuple(slice(None) if i == axis else slice(1, -1) for i in range(x.ndim))
        slices = x.shape[axis] if x.ndim == 3 else 1
        noise = float(np.sqrt(np.pi / 2) * np.abs(conv[inner]).sum()
                      / (6 * (h - 2) * (w - 2) * slices))
    else:
        noise = 0.0
    lap = ndimage.convolve(x, _in_plane(_LAPLACE, x.ndim, axis), mode="reflect")
    return {"mean_intensity": float(x.mean()), "contrast": float(x.std()),
            "dynamic_range": float(p99 - p1), "noise_sigma": noise,
            "sharpness": float(lap.var())}


@dataclass(frozen=True)
class Monitor:
    """One input check: flag an image when ``feature`` is above (``direction`` = ">") or below
    (``<``) ``threshold``; ``detection`` and ``false_alarm`` are measured fractions."""

    condition: str
    feature: str
    direction: str
    threshold: float
    detection: float
    false_alarm: float
    n: int

    def describe(self) -> str:
        return (f"{self.feature} {self.direction} {self.threshold:.4g} flags "
                f"{100 * self.detection:.0f}% of {self.condition} images "
                f"({100 * self.false_alarm:.0f}% false alarms on clean)")


def best_monitor(quality: pd.DataFrame, condition: str,
                 features: tuple[str, ...] = FEATURES) -> Monitor | None:
    """The feature that best separates ``condition``'s images from clean ones (``quality``:
    long table ``id, condition, feature, value``), with its 1 %/99 % clean threshold."""
    best: Monitor | None = None
    for feature in features:
        clean = quality[(quality["condition"] == "clean") & (quality["feature"] == feature)]
        shifted = quality[(quality["condition"] == condition) & (quality["feature"] == feature)]
        if clean.empty or shifted.empty:
            continue
        c, s = clean["value"].to_numpy(), shifted["value"].to_numpy()
        rises = np.median(s) >= np.median(c)
        threshold = float(np.percentile(c, 99 if rises else 1))
        flagged = (s > threshold) if rises else (s < threshold)
        false = (c > threshold) if rises else (c < threshold)
        cand = Monitor(condition, feature, ">" if rises else "<", threshold,
                       float(flagged.mean()), float(false.mean()), len(s))
        if best is None or cand.detection > best.detection:
            best = cand
    return best
