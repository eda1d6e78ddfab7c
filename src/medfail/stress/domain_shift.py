"""Domain-shift stress tests: CT windowing, H&E stain, MRI artifacts, scanner resolution.

Each test mimics data from another site, scanner or protocol. All are family ``domain_shift``,
taxonomy ``data``, with three fixed severities (severity 0 is the identity). The severities are
written once, in :data:`DOMAIN_SHIFTS` below; the catalogue :mod:`medfail.stress.registry`
collects them, ``medfail list`` prints them and tests/test_stress_catalogue.py checks the table
of docs/domain_shift.md against them.

* ``ct_window`` works on native Hounsfield units: with the reference soft-tissue window
  (L₀, W₀) = (40, 400) HU and the shifted window L = L₀ + ΔL, W = f·W₀,
  ``out = L₀ − W₀/2 + (clip(x, L − W/2, L + W/2) − (L − W/2)) · W₀/W``: the data was windowed
  with (L, W) and read back as if it had been windowed with (L₀, W₀). The shifted windows are
  [−100, 220], [−30, 210] and [60, 220] HU. Everything below the shifted window (air, lung,
  fat) becomes L₀ − W₀/2 = −160 HU and everything above it L₀ + W₀/2 = 240 HU, at every
  severity; the result is clipped to [lo, hi].
* ``stain_he`` deconvolves rgb = (x − lo)/(hi − lo) into H, E, D concentrations with the
  Ruifrok–Johnston matrix M (identical to ``skimage.color.rgb2hed``):
  ``c = (−log(max(rgb, 1e-6)) / log(1e6)) · M⁻¹``, perturbs ``c'ₖ = αₖ·cₖ + βₖ`` with
  αₖ ~ U(1 − a, 1 + a), βₖ ~ U(−b, b) drawn per image and stain, and recombines
  ``rgb' = exp(−log(1e6) · c'·M)``. Concentrations are not clipped at 0, so α = 1, β = 0 is the
  identity. Images with C ≠ 3 are returned unchanged.
* MRI tests act on the magnitude image normalised to [0, 1] by ``value_range``.
  ``mri_bias_field`` multiplies it by a smooth field; the k-space tests (ghosting, motion,
  spike) edit the 2D FFT of the last two axes (phase-encode direction: rows, H) and keep the
  magnitude of the inverse FFT. Results are mapped back to native units and clipped to [lo, hi].
* Only ``ct_window`` (per voxel) also applies to volumes (``dims=(2, 3)``); the others are 2D
  (``dims=(2,)``): the 3D MRI artifacts are in :mod:`medfail.stress.mri_artifacts`.
* ``resolution_shift`` area-averages down by ``factor``, resizes back bilinearly to the exact
  original size and adds white noise blurred by a σ = 1 px gaussian, scaled so that its std is
  ``noise_std``·(hi − lo).

All randomness comes from the per-image generators (drawn per image, then stacked) and every
operation is per image, so results never depend on batch size or order.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from medfail.stress.corruptions import blur_axis, normalised
from medfail.stress.spec import StressTest

__all__ = [
    "CT_REFERENCE_WINDOW",
    "DOMAIN_SHIFTS",
    "HED_FROM_RGB",
    "RGB_FROM_HED",
    "hed_to_rgb",
    "rgb_to_hed",
    "spike_positions",
]

#: Reference CT window (level, width) in HU: the abdominal soft-tissue window.
CT_REFERENCE_WINDOW: tuple[float, float] = (40.0, 400.0)

#: Ruifrok & Johnston (2001) stain OD vectors (rows: haematoxylin, eosin, DAB), as in skimage.
RGB_FROM_HED: np.ndarray = np.array(
    [[0.65, 0.70, 0.29], [0.07, 0.99, 0.11], [0.27, 0.57, 0.78]], dtype=np.float64
)
#: Its inverse: optical density (row vector) → stain concentrations.
HED_FROM_RGB: np.ndarray = np.linalg.inv(RGB_FROM_HED)

_EPS = 1e-6  # skimage's floor on the transmitted light before the log
_LOG_ADJUST = -math.log(_EPS)  # log(1e6): skimage's concentration unit


# ----------------------------------------------------------------------------- helpers


def _per_image(value_range: torch.Tensor, ndim: int) -> tuple[torch.Tensor, torch.Tensor]:
    shape = (-1,) + (1,) * (ndim - 1)
    return value_range[:, 0].reshape(shape), value_range[:, 1].reshape(shape)


def _stack(arrays: Sequence[np.ndarray], like: torch.Tensor) -> torch.Tensor:
    """Per-image numpy draws → one tensor on ``like``'s device and dtype."""
    return torch.from_numpy(np.stack(arrays)).to(device=like.device, dtype=like.dtype)


def _mix(x: torch.Tensor, matrix: torch.Tensor) -> torch.Tensor:
    """Row-vector product over the channel axis: ``out[:, k] = Σⱼ x[:, j] · matrix[j, k]``.

    Written as explicit element-wise sums (no GEMM), so each pixel's result is bit-identical
    whatever the batch size.
    """
    cols = []
    for k in range(matrix.shape[1]):
        acc = x[:, 0] * matrix[0, k]
        for j in range(1, matrix.shape[0]):
            acc = acc + x[:, j] * matrix[j, k]
        cols.append(acc)
    return torch.stack(cols, dim=1)


def _freqs(n: int, like: torch.Tensor) -> torch.Tensor:
    """Signed integer frequencies of an ``n``-point FFT (``fftfreq(n) · n``)."""
    return torch.fft.fftfreq(n, device=like.device, dtype=like.dtype) * n


def _kspace_magnitude(kspace: torch.Tensor) -> torch.Tensor:
    return torch.fft.ifft2(kspace).abs()


# ----------------------------------------------------------------------------- CT windowing


def _ct_window(
    images: torch.Tensor,
    value_range: torch.Tensor,
    params: Mapping[str, Any],
    rngs: Sequence[np.random.Generator],
) -> torch.Tensor:
    """Window with (L₀ + ΔL, f·W₀) and read back with the reference window (L₀, W₀), in HU.

    ``out = L₀ − W₀/2 + (clip(x, L − W/2, L + W/2) − (L − W/2)) · W₀/W``, clipped to [lo, hi].
    """
    ref_level, ref_width = CT_REFERENCE_WINDOW
    level = ref_level + float(params["level_shift_hu"])
    width = ref_width * float(params["width_factor"])
    low = level - width / 2
    out = (images.clamp(low, low + width) - low) * (ref_width / width) + (ref_level - ref_width / 2)
    lo, hi = _per_image(value_range, images.ndim)
    return torch.minimum(torch.maximum(out, lo), hi)


# ----------------------------------------------------------------------------- H&E stain


def _optical_density(rgb01: torch.Tensor) -> torch.Tensor:
    """``−log(max(rgb, 1e-6)) / log(1e6)``: OD in skimage's unit (0 for white, 1 at the floor)."""
    return torch.log(rgb01.clamp(_EPS, 1.0)) / -_LOG_ADJUST


def _matrix(m: np.ndarray, like: torch.Tensor) -> torch.Tensor:
    return torch.as_tensor(m, dtype=like.dtype, device=like.device)


def rgb_to_hed(rgb01: torch.Tensor) -> torch.Tensor:
    """Colour deconvolution of ``(N, 3, H, W)`` RGB in [0, 1] into H, E, D concentrations.

    Same definition as ``skimage.color.rgb2hed`` (negative concentrations set to 0), batched in
    torch on the input's device.
    """
    conc = _mix(_optical_density(rgb01), _matrix(HED_FROM_RGB, rgb01))
    return conc.clamp_min(0.0)


def hed_to_rgb(hed: torch.Tensor) -> torch.Tensor:
    """Inverse of :func:`rgb_to_hed` (as ``skimage.color.hed2rgb``): RGB in [0, 1]."""
    od = _mix(hed, _matrix(RGB_FROM_HED, hed))
    return torch.exp(-_LOG_ADJUST * od).clamp(0.0, 1.0)


def _stain_kernel(x: torch.Tensor, alpha: torch.Tensor, beta: torch.Tensor) -> torch.Tensor:
    """``rgb' = hed_to_rgb(α·c + β)`` with unclipped concentrations ``c`` (so α=1, β=0 is the
    identity up to float rounding and the 1e-6 floor). ``alpha``/``beta``: ``(N, 3)``."""
    conc = _mix(_optical_density(x), _matrix(HED_FROM_RGB, x))
    conc = conc * alpha[:, :, None, None] + beta[:, :, None, None]
    return hed_to_rgb(conc)


def _stain_he_kernel(
    x: torch.Tensor, params: Mapping[str, Any], rngs: Sequence[np.random.Generator]
) -> torch.Tensor:
    """H&E stain variation: per-image, per-stain αₖ ~ U(1 − a, 1 + a), βₖ ~ U(−b, b)."""
    a, b = float(params["alpha"]), float(params["beta"])
    draws = [rng.uniform(-1.0, 1.0, size=6) for rng in rngs]
    alpha = 1.0 + a * _stack([d[:3] for d in draws], x)
    beta = b * _stack([d[3:] for d in draws], x)
    return _stain_kernel(x, alpha, beta)


_stain_he_rgb = normalised(_stain_he_kernel)


def _stain_he(
    images: torch.Tensor,
    value_range: torch.Tensor,
    params: Mapping[str, Any],
    rngs: Sequence[np.random.Generator],
) -> torch.Tensor:
    """H&E stain variation on RGB images; images with C ≠ 3 are returned unchanged (a copy)."""
    if images.shape[1] != 3:
        return images.clone()
    return _stain_he_rgb(images, value_range, params, rngs)


# ----------------------------------------------------------------------------- MRI artifacts

#: Exponents (p, q) of the bias-field polynomial terms Pₚ(y)·P_q(x), total degree 1..3.
_BIAS_TERMS: tuple[tuple[int, int], ...] = tuple(
    (p, d - p) for d in (1, 2, 3) for p in range(d, -1, -1)
)


def _legendre(n: int, t: torch.Tensor) -> torch.Tensor:
    if n == 0:
        return torch.ones_like(t)
    if n == 1:
        return t
    if n == 2:
        return 0.5 * (3 * t**2 - 1)
    return 0.5 * (5 * t**3 - 3 * t)


def _axis(n: int, like: torch.Tensor) -> torch.Tensor:
    if n == 1:
        return torch.zeros(1, device=like.device, dtype=like.dtype)
    return torch.linspace(-1.0, 1.0, n, device=like.device, dtype=like.dtype)


def _mri_bias_field(
    x: torch.Tensor, params: Mapping[str, Any], rngs: Sequence[np.random.Generator]
) -> torch.Tensor:
    """Smooth multiplicative field ``x · exp(f)``, ``f = s · Σ c_pq Pₚ(y) P_q(x)`` (Legendre,
    1 ≤ p + q ≤ 3, ``c_pq ~ U(−1, 1)/(p + q)`` per image), scaled so ``max|f| = max_log_amp``.

    The same field multiplies every channel.
    """
    amp = float(params["max_log_amp"])
    h, w = x.shape[-2:]
    ty, tx = _axis(h, x), _axis(w, x)
    coeffs = _stack([rng.uniform(-1.0, 1.0, size=len(_BIAS_TERMS)) for rng in rngs], x)
    field = torch.zeros((x.shape[0], h, w), device=x.device, dtype=x.dtype)
    for k, (p, q) in enumerate(_BIAS_TERMS):
        basis = _legendre(p, ty)[:, None] * _legendre(q, tx)[None, :]
        field = field + (coeffs[:, k] / (p + q))[:, None, None] * basis
    peak = field.abs().amax(dim=(-2, -1), keepdim=True)
    field = torch.where(peak > 0, field * (amp / peak.clamp_min(1e-12)), field)
    return x * torch.exp(field)[:, None]


def _mri_ghosting(
    x: torch.Tensor, params: Mapping[str, Any], rngs: Sequence[np.random.Generator]
) -> torch.Tensor:
    """N/2 ghosting: odd phase-encode lines (rows) of k-space scaled by ``1 − 2g``.

    For even H this is exactly ``(1 − g)·x + g·roll(x, H/2)`` along the rows: one ghost of
    relative intensity g shifted by half the field of view; the mean intensity is unchanged.
    Deterministic (no random draws).
    """
    g = float(params["ghost"])
    h = x.shape[-2]
    odd = (torch.arange(h, device=x.device) % 2 == 1)[:, None]
    scale = torch.where(odd, 1.0 - 2.0 * g, 1.0).to(x.dtype)
    return _kspace_magnitude(torch.fft.fft2(x) * scale)


def _mri_motion(
    x: torch.Tensor, params: Mapping[str, Any], rngs: Sequence[np.random.Generator]
) -> torch.Tensor:
    """Rigid in-plane motion during acquisition: a random fraction of phase-encode lines is
    acquired with the object translated by (dy, dx) ~ U(−t, t)² px (drawn per line), i.e.
    ``K'[r, c] = K[r, c] · exp(−2πi (kᵧ(r)·dy/H + kₓ(c)·dx/W))`` on those lines.

    ``n = max(1, round(line_fraction · H))`` distinct lines are chosen per image.
    """
    frac, t = float(params["line_fraction"]), float(params["max_shift_px"])
    h, w = x.shape[-2:]
    n_lines = min(h, max(1, round(frac * h)))
    shifts = []
    for rng in rngs:
        d = np.zeros((2, h), dtype=np.float64)
        rows = rng.choice(h, size=n_lines, replace=False)
        d[:, rows] = rng.uniform(-t, t, size=(2, n_lines))
        shifts.append(d)
    dy, dx = _stack(shifts, x).unbind(dim=1)  # (N, H) each
    ky, kx = _freqs(h, x) / h, _freqs(w, x) / w
    phase = (-2.0 * math.pi) * (
        ky[None, :, None] * dy[:, :, None] + kx[None, None, :] * dx[:, :, None]
    )
    ramp = torch.polar(torch.ones_like(phase), phase)[:, None]  # (N, 1, H, W)
    return _kspace_magnitude(torch.fft.fft2(x) * ramp)


def spike_positions(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """Draw the spikes of :func:`_mri_spike` for one image: ``(n, 3)`` rows ``(row, col, phase)``.

    1–3 spikes at uniformly random k-space positions other than DC (row/col are FFT indices),
    each with a random phase in [0, 2π).
    """
    n = int(rng.integers(1, 4))
    # flat index 0 is DC: never hit, except in a 1-pixel image where nothing else exists
    flat = rng.integers(1, h * w, size=n) if h * w > 1 else np.zeros(n, dtype=np.int64)
    phase = rng.uniform(0.0, 2.0 * math.pi, size=n)
    return np.stack([flat // w, flat % w, phase], axis=1)


def _mri_spike(
    x: torch.Tensor, params: Mapping[str, Any], rngs: Sequence[np.random.Generator]
) -> torch.Tensor:
    """k-space spikes (herringbone): ``K[r, c] += intensity · max|K| · e^{iφ}`` per spike (per
    channel), at 1–3 random non-DC positions per image (see :func:`spike_positions`).

    Each spike is a complex grating of amplitude ``intensity · max|K| / (H·W)`` (= intensity ×
    the image mean for non-negative images); the magnitude image keeps its real part, split
    between the frequencies (r, c) and (−r, −c).
    """
    intensity = float(params["intensity"])
    n, _, h, w = x.shape
    add = np.zeros((n, h, w), dtype=np.complex128)
    for i, rng in enumerate(rngs):
        for r, c, phi in spike_positions(rng, h, w):
            add[i, int(r), int(c)] += np.exp(1j * phi)
    kspace = torch.fft.fft2(x)
    peak = kspace.abs().amax(dim=(-2, -1), keepdim=True)
    spikes = torch.from_numpy(add).to(device=x.device, dtype=kspace.dtype)[:, None]
    return _kspace_magnitude(kspace + (intensity * peak) * spikes)


# ----------------------------------------------------------------------------- resolution


def _resolution_shift(
    x: torch.Tensor, params: Mapping[str, Any], rngs: Sequence[np.random.Generator]
) -> torch.Tensor:
    """Coarser scanner: area-average to ``round(H/f) × round(W/f)`` (at least 1), bilinear back
    to ``H × W``, plus gaussian-correlated noise: white N(0, 1) blurred by a σ = 1 px gaussian
    (radius 3, reflect padding) and scaled to std ``noise_std`` (``÷ Σₖ wₖ²`` of the 1D kernel).
    """
    factor, std = float(params["factor"]), float(params["noise_std"])
    h, w = x.shape[-2:]
    small = (max(1, round(h / factor)), max(1, round(w / factor)))
    y = F.interpolate(x, size=small, mode="area")
    y = F.interpolate(y, size=(h, w), mode="bilinear", align_corners=False)
    taps = np.exp(-0.5 * np.arange(-3.0, 4.0) ** 2)
    taps /= taps.sum()
    weights = torch.from_numpy(taps).to(device=x.device, dtype=x.dtype)
    shape = tuple(x.shape[1:])
    white = _stack([rng.standard_normal(shape).astype(np.float32) for rng in rngs], x)
    noise = blur_axis(blur_axis(white, weights, -1), weights, -2)
    return y + noise * (std / float(np.sum(taps**2)))


# ----------------------------------------------------------------------------- registration

DOMAIN_SHIFTS: tuple[StressTest, ...] = (
    StressTest(
        name="ct_window",
        family="domain_shift",
        taxonomy="data",
        modalities=("CT",),
        severities=(
            {"level_shift_hu": 20.0, "width_factor": 0.8},
            {"level_shift_hu": 50.0, "width_factor": 0.6},
            {"level_shift_hu": 100.0, "width_factor": 0.4},
        ),
        description="CT window/HU calibration shift: data windowed with another level/width.",
        unit="level_shift_hu: window level shift (HU) from L=40; width_factor: x W=400 "
        "(read back with the 40/400 window; outside values -> -160/240 HU)",
        apply=_ct_window,
        dims=(2, 3),  # per-voxel: CT slices and CT volumes alike
    ),
    StressTest(
        name="stain_he",
        family="domain_shift",
        taxonomy="data",
        modalities=("histology", "SM"),
        severities=(
            {"alpha": 0.05, "beta": 0.02},
            {"alpha": 0.15, "beta": 0.05},
            {"alpha": 0.3, "beta": 0.1},
        ),
        description="H&E stain variation (colour deconvolution, per-stain scale and shift).",
        unit="alpha: H/E/D concentration scale in 1 +- alpha; beta: shift in +- beta "
        "(skimage rgb2hed units); RGB only",
        apply=_stain_he,
    ),
    StressTest(
        name="mri_bias_field",
        family="domain_shift",
        taxonomy="data",
        modalities=("MR",),
        severities=({"max_log_amp": 0.2}, {"max_log_amp": 0.4}, {"max_log_amp": 0.6}),
        description="MRI intensity inhomogeneity (smooth multiplicative bias field).",
        unit="max_log_amp: max |log field| of a random degree-3 polynomial field",
        apply=normalised(_mri_bias_field),
    ),
    StressTest(
        name="mri_ghosting",
        family="domain_shift",
        taxonomy="data",
        modalities=("MR",),
        severities=({"ghost": 0.1}, {"ghost": 0.25}, {"ghost": 0.45}),
        description="MRI N/2 ghosting (odd k-space lines scaled).",
        unit="ghost: relative intensity of the N/2 ghost (odd rows of k-space x (1 - 2 ghost))",
        apply=normalised(_mri_ghosting),
    ),
    StressTest(
        name="mri_motion",
        family="domain_shift",
        taxonomy="data",
        modalities=("MR",),
        severities=(
            {"line_fraction": 0.05, "max_shift_px": 2.0},
            {"line_fraction": 0.15, "max_shift_px": 4.0},
            {"line_fraction": 0.3, "max_shift_px": 8.0},
        ),
        description="MRI motion artifact (random translation phase on some k-space lines).",
        unit="line_fraction: fraction of phase-encode lines moved; max_shift_px: max translation",
        apply=normalised(_mri_motion),
    ),
    StressTest(
        name="mri_spike",
        family="domain_shift",
        taxonomy="data",
        modalities=("MR",),
        severities=({"intensity": 0.05}, {"intensity": 0.15}, {"intensity": 0.3}),
        description="MRI spike/herringbone artifact (1-3 k-space spikes).",
        unit="intensity: spike magnitude as a fraction of max |k-space|",
        apply=normalised(_mri_spike),
    ),
    StressTest(
        name="resolution_shift",
        family="domain_shift",
        taxonomy="data",
        modalities=("any",),
        severities=(
            {"factor": 1.5, "noise_std": 0.01},
            {"factor": 2.0, "noise_std": 0.02},
            {"factor": 3.0, "noise_std": 0.03},
        ),
        description="Coarser scanner resolution and another reconstruction kernel.",
        unit="factor: pixel spacing multiplier (area down, bilinear up); noise_std: correlated "
        "noise std as a fraction of (hi - lo)",
        apply=normalised(_resolution_shift),
    ),
)
