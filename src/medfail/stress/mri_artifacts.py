"""MRI stress tests for volumes: Rician noise, and TorchIO's artifacts at fixed severities.

TorchIO's ``Random*`` transforms draw their parameters from torch's global generator, so the
same seed need not give the same image across processes or versions. Here every parameter is
drawn from the per-image numpy generator at a fixed severity and handed to TorchIO's
*deterministic* transform (``tio.Ghosting``, ``tio.Motion``, ``tio.Spike``; the bias field is
``tio.BiasField``'s polynomial, evaluated faster; TorchIO pinned in requirements.txt): same
seed, same volume. The severities are written once,
in :data:`MRI_ARTIFACTS`; docs/domain_shift.md and docs/stress_tests.md show them.

All kernels work on the magnitude volume normalised to ``[0, 1]`` by its ``value_range`` and
return to native units clipped to ``[lo, hi]`` (:func:`~medfail.stress.corruptions.normalised`).
The volume goes to TorchIO as a ``ScalarImage`` ``(C, X, Y, Z)`` with the affine
``diag(spacing, 1)`` (so translations are in mm; voxels when the spacing is unknown), on the
CPU; the result returns to the batch's device.

* ``rician_noise`` (corruption, no TorchIO): ``√((x + n₁)² + n₂²)``, ``n₁, n₂ ~ N(0, σ)``
  independent per voxel, ``σ = fraction × p99(x)`` (the 99th percentile of the normalised
  volume, all channels; 1.0 if that is 0). Magnitude noise: zero background becomes Rayleigh.
* ``mri_bias_field_3d``: TorchIO's ``BiasField(order=3)`` field, ``x · exp(Σ c·xᵃyᵇzᶜ)``; the
  19 non-constant polynomial coefficients ``c ~ U(−1, 1)/degree`` (the constant term 0, so no
  global scale) are scaled so that ``max |log field| = max_log_amp`` over the volume's grid.
  The polynomial is evaluated separably in torch (:func:`bias_log_field`, checked equal to
  ``tio.BiasField`` by the tests): TorchIO's own evaluation takes seconds per volume.
* ``mri_ghosting_3d``: ``tio.Ghosting(num_ghosts, axis, intensity, restore=0.02)``: every
  ``num_ghosts``-th k-space plane along ``axis`` is scaled by ``1 − intensity`` (the central 2 %
  restored); ``num_ghosts ~ U{4..10}`` and ``axis`` uniform among the two non-slice axes
  (phase encoding is in-plane).
* ``mri_motion_3d``: ``tio.Motion`` with ``num_transforms`` rigid movements, each with Euler
  angles ``~ U(−degrees, degrees)`` (°) and a translation ``~ U(−translation_mm,
  translation_mm)`` (mm) per axis, at times ``k/(n + 1) ± 30 %`` of the step (as TorchIO's
  RandomMotion): the k-space of the moved volumes is stitched along the last axis.
* ``mri_spike_3d``: ``tio.Spike(spikes_positions, intensity)``: 1–3 spikes at uniform k-space
  positions other than DC, each of magnitude ``intensity × max |k-space|`` (one side, as in
  TorchIO): stripes of relative amplitude about ``intensity`` × the mean intensity.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from medfail.stress.corruptions import normalised
from medfail.stress.spec import StressTest, slice_axis

if TYPE_CHECKING:
    import torchio as tio

__all__ = [
    "BIAS_ORDER",
    "MRI_ARTIFACTS",
    "bias_coefficients",
    "bias_log_field",
    "ghosting_params",
    "motion_params",
    "spike_positions_3d",
]

#: Degree of TorchIO's polynomial bias field.
BIAS_ORDER = 3
#: Fraction of the k-space centre that tio.Ghosting restores (TorchIO's default).
GHOST_RESTORE = 0.02


def _tio() -> Any:
    import torchio

    return torchio


def _scalar_image(volume: torch.Tensor, spacing: np.ndarray) -> tio.ScalarImage:
    affine = np.diag([*(float(s) for s in spacing), 1.0])
    return _tio().ScalarImage(tensor=volume.detach().cpu(), affine=affine)


def _per_volume(x: torch.Tensor, spacing: np.ndarray, transforms: Sequence[Any]) -> torch.Tensor:
    """Run ``transforms[i]`` (a TorchIO transform) on volume ``i`` of ``x`` (N, C, X, Y, Z)."""
    out = [transforms[i](_scalar_image(x[i], spacing[i])).data for i in range(x.shape[0])]
    return torch.stack(out).to(device=x.device, dtype=x.dtype)


# ----------------------------------------------------------------------------- Rician noise


def _rician_noise(
    x: torch.Tensor, params: Mapping[str, Any], rngs: Sequence[np.random.Generator]
) -> torch.Tensor:
    """``√((x + n₁)² + n₂²)``, ``n ~ N(0, σ)``, ``σ = fraction · p99(x)`` per volume."""
    fraction = float(params["fraction"])
    x_np = x.detach().cpu().numpy()
    shape = tuple(x.shape[1:])
    real, imag = [], []
    for rng, vol in zip(rngs, x_np, strict=True):
        p99 = float(np.quantile(vol.astype(np.float64), 0.99))
        sigma = fraction * (p99 if p99 > 0 else 1.0)
        noise = rng.standard_normal((2, *shape)) * sigma
        real.append(noise[0].astype(np.float32))
        imag.append(noise[1].astype(np.float32))
    n1 = torch.from_numpy(np.stack(real)).to(device=x.device, dtype=x.dtype)
    n2 = torch.from_numpy(np.stack(imag)).to(device=x.device, dtype=x.dtype)
    return torch.sqrt((x + n1) ** 2 + n2**2)


# ----------------------------------------------------------------------------- TorchIO artifacts


def _bias_terms(order: int) -> list[tuple[int, int, int]]:
    """Exponents ``(a, b, c)`` of TorchIO's polynomial terms ``x^a y^b z^c``, in its order."""
    return [(xo, yo, zo) for xo in range(order + 1) for yo in range(order + 1 - xo)
            for zo in range(order + 1 - xo - yo)]


def _bias_axis(n: int) -> np.ndarray:
    """TorchIO's coordinates along an axis of ``n`` voxels: ``arange(−n/2, n/2) + 0.5``, divided
    by its maximum (so ``[−1, 1]``; ``[0]`` for one voxel)."""
    t = np.arange(-n / 2, n / 2) + 0.5
    return t / t.max() if t.max() > 0 else t


def bias_log_field(shape: Sequence[int], coefficients: Sequence[float],
                   order: int = BIAS_ORDER) -> torch.Tensor:
    """``log`` of ``tio.BiasField(coefficients, order).generate_bias_field`` on ``shape``
    (float64), computed separably: ``Σ_a x^a ⊗ (Σ_{b,c} c_abc · y^b ⊗ z^c)``.

    TorchIO evaluates every monomial on the full grid (about 8 s for 192² × 160 voxels); this is
    the same polynomial on the same grid in a fraction of that (tests check it against TorchIO).
    """
    gx, gy, gz = (torch.from_numpy(_bias_axis(int(n))) for n in shape)
    field = torch.zeros(tuple(int(n) for n in shape), dtype=torch.float64)
    terms = _bias_terms(order)
    for a in range(order + 1):
        plane = torch.zeros(field.shape[1:], dtype=torch.float64)
        for (xa, yb, zc), c in zip(terms, coefficients, strict=True):
            if xa == a and c != 0:
                plane += float(c) * torch.outer(gy**yb, gz**zc)
        field += (gx**a)[:, None, None] * plane
    return field


def bias_coefficients(rng: np.random.Generator, shape: Sequence[int],
                      max_log_amp: float) -> list[float]:
    """Coefficients for ``tio.BiasField(order=3)``: ``U(−1, 1)/degree`` (constant term 0),
    scaled so the log field peaks at ``max_log_amp`` in absolute value on ``shape``."""
    degrees = np.array([sum(t) for t in _bias_terms(BIAS_ORDER)], dtype=np.float64)
    draws = rng.uniform(-1.0, 1.0, size=degrees.size)
    coeffs = np.where(degrees > 0, draws / np.maximum(degrees, 1), 0.0)
    peak = float(bias_log_field(shape, coeffs.tolist()).abs().max())
    scale = max_log_amp / peak if peak > 0 else 0.0
    return (coeffs * scale).tolist()


def _mri_bias_field_3d(
    x: torch.Tensor, params: Mapping[str, Any], rngs: Sequence[np.random.Generator], *,
    spacing: np.ndarray,
) -> torch.Tensor:
    """``x · exp(log field)``: ``tio.BiasField`` with :func:`bias_coefficients` drawn per
    volume, its field computed by :func:`bias_log_field` (float32 ``exp``, as TorchIO)."""
    amp = float(params["max_log_amp"])
    shape = tuple(x.shape[2:])
    out = torch.empty_like(x)
    for i, rng in enumerate(rngs):
        field = torch.exp(bias_log_field(shape, bias_coefficients(rng, shape, amp))).float()
        out[i] = x[i] * field.to(device=x.device, dtype=x.dtype)
    return out


def ghosting_params(rng: np.random.Generator, spacing: Sequence[float]) -> tuple[int, int]:
    """``(num_ghosts ~ U{4..10}, axis)``, the axis uniform among the two non-slice axes."""
    num_ghosts = int(rng.integers(4, 11))
    in_plane = [a for a in range(3) if a != slice_axis(tuple(spacing))]
    return num_ghosts, int(in_plane[int(rng.integers(0, 2))])


def _mri_ghosting_3d(
    x: torch.Tensor, params: Mapping[str, Any], rngs: Sequence[np.random.Generator], *,
    spacing: np.ndarray,
) -> torch.Tensor:
    """``tio.Ghosting`` at ``params["intensity"]``, ghosts and axis drawn per volume."""
    tio_ = _tio()
    intensity = float(params["intensity"])
    transforms = []
    for i, rng in enumerate(rngs):
        num_ghosts, axis = ghosting_params(rng, spacing[i])
        transforms.append(tio_.Ghosting(num_ghosts=num_ghosts, axis=axis, intensity=intensity,
                                        restore=GHOST_RESTORE))
    return _per_volume(x, spacing, transforms)


def motion_params(rng: np.random.Generator, degrees: float, translation_mm: float,
                  num_transforms: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(degrees (n, 3), translation (n, 3), times (n,))`` for ``tio.Motion``, drawn as
    TorchIO's RandomMotion does (times ``k/(n + 1)`` perturbed by ``U(±0.3/(n + 1))``)."""
    n = int(num_transforms)
    angles = rng.uniform(-degrees, degrees, size=(n, 3))
    shifts = rng.uniform(-translation_mm, translation_mm, size=(n, 3))
    step = 1.0 / (n + 1)
    times = np.arange(1, n + 1) * step + rng.uniform(-0.3 * step, 0.3 * step, size=n)
    return angles, shifts, times


def _mri_motion_3d(
    x: torch.Tensor, params: Mapping[str, Any], rngs: Sequence[np.random.Generator], *,
    spacing: np.ndarray,
) -> torch.Tensor:
    """``tio.Motion`` with :func:`motion_params` drawn per volume (linear interpolation)."""
    tio_ = _tio()
    transforms = []
    for rng in rngs:
        angles, shifts, times = motion_params(rng, float(params["degrees"]),
                                              float(params["translation_mm"]),
                                              int(params["num_transforms"]))
        transforms.append(tio_.Motion(degrees=angles, translation=shifts, times=times,
                                      image_interpolation="linear"))
    return _per_volume(x, spacing, transforms)


def spike_positions_3d(rng: np.random.Generator, shape: Sequence[int]) -> np.ndarray:
    """1–3 spike positions for ``tio.Spike``: ``(n, 3)`` fractions of the (fft-shifted) k-space,
    at voxel centres, never DC (TorchIO puts DC at ``shape // 2``)."""
    dims = np.asarray(shape, dtype=np.int64)
    total = int(dims.prod())
    dc = int(np.ravel_multi_index(tuple(dims // 2), tuple(dims)))
    n = int(rng.integers(1, 4))
    flat = rng.integers(0, max(1, total - 1), size=n)
    if total > 1:
        flat = np.where(flat >= dc, flat + 1, flat)
    idx = np.stack(np.unravel_index(flat, tuple(dims)), axis=1)
    return (idx + 0.5) / dims


def _mri_spike_3d(
    x: torch.Tensor, params: Mapping[str, Any], rngs: Sequence[np.random.Generator], *,
    spacing: np.ndarray,
) -> torch.Tensor:
    """``tio.Spike`` at ``params["intensity"]``, 1–3 positions drawn per volume."""
    tio_ = _tio()
    intensity = float(params["intensity"])
    shape = tuple(x.shape[2:])
    transforms = [tio_.Spike(spikes_positions=spike_positions_3d(rng, shape), intensity=intensity)
                  for rng in rngs]
    return _per_volume(x, spacing, transforms)


# ----------------------------------------------------------------------------- the table

_MR = ("MR",)
_VOLUMES = (3,)

MRI_ARTIFACTS: tuple[StressTest, ...] = (
    StressTest(
        name="rician_noise",
        family="corruption",
        taxonomy="data",
        modalities=_MR,
        severities=({"fraction": 0.02}, {"fraction": 0.05}, {"fraction": 0.1}),
        description="MRI Rician noise: magnitude of the volume plus complex gaussian noise.",
        unit="fraction: noise std as a fraction of the volume's 99th percentile (normalised "
        "to [0, 1] by its range); sqrt((x + n1)^2 + n2^2)",
        apply=normalised(_rician_noise),
        dims=_VOLUMES,
    ),
    StressTest(
        name="mri_bias_field_3d",
        family="domain_shift",
        taxonomy="data",
        modalities=_MR,
        severities=({"max_log_amp": 0.2}, {"max_log_amp": 0.4}, {"max_log_amp": 0.6}),
        description="MRI intensity inhomogeneity in 3D (TorchIO BiasField, order 3).",
        unit="max_log_amp: max |log field| of a random degree-3 polynomial field (TorchIO)",
        apply=normalised(_mri_bias_field_3d),
        dims=_VOLUMES,
        uses_spacing=True,
    ),
    StressTest(
        name="mri_ghosting_3d",
        family="domain_shift",
        taxonomy="data",
        modalities=_MR,
        severities=({"intensity": 0.3}, {"intensity": 0.6}, {"intensity": 0.9}),
        description="MRI ghosting in 3D (TorchIO Ghosting along an in-plane axis).",
        unit="intensity: k-space planes scaled by 1 - intensity (every num_ghosts ~ U{4..10}-th "
        "plane along a random in-plane axis; 2 % of the centre restored)",
        apply=normalised(_mri_ghosting_3d),
        dims=_VOLUMES,
        uses_spacing=True,
    ),
    StressTest(
        name="mri_motion_3d",
        family="domain_shift",
        taxonomy="data",
        modalities=_MR,
        severities=(
            {"degrees": 2.0, "translation_mm": 2.0, "num_transforms": 2},
            {"degrees": 5.0, "translation_mm": 5.0, "num_transforms": 2},
            {"degrees": 10.0, "translation_mm": 10.0, "num_transforms": 2},
        ),
        description="MRI motion in 3D (TorchIO Motion: rigid moves during the acquisition).",
        unit="degrees / translation_mm: max |Euler angle| (deg) and |shift| (mm) per axis of "
        "each of num_transforms moves",
        apply=normalised(_mri_motion_3d),
        dims=_VOLUMES,
        uses_spacing=True,
    ),
    StressTest(
        name="mri_spike_3d",
        family="domain_shift",
        taxonomy="data",
        modalities=_MR,
        severities=({"intensity": 0.05}, {"intensity": 0.15}, {"intensity": 0.3}),
        description="MRI spike/herringbone artifact in 3D (TorchIO Spike, 1-3 spikes).",
        unit="intensity: spike magnitude as a fraction of max |k-space| (TorchIO Spike)",
        apply=normalised(_mri_spike_3d),
        dims=_VOLUMES,
        uses_spacing=True,
    ),
)
