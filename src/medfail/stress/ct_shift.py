"""CT stress tests for volumes, in Hounsfield units: HU calibration shift and low-dose noise.

Both act on native HU values (a volume read with its rescale slope/intercept applied), per voxel,
and clip the result to the volume's ``[lo, hi]``. The severities are written once, in
:data:`CT_SHIFTS`; docs/domain_shift.md and docs/stress_tests.md show them (checked by the
tests).

* ``hu_window_shift`` (domain shift): the scanner's HU scale is miscalibrated,
  ``x' = a·x + b`` with ``a = params["slope"]`` and ``b = params["offset_hu"]``: water (0 HU)
  reads ``b`` HU and every contrast is scaled by ``a`` around it. A model whose input window
  (say 40/400) was fitted to calibrated scanners sees its tissue classes moved. Deterministic.
* ``low_dose_noise`` (corruption): the scan is taken at a fraction ``f`` of the reference dose.
  CT quantum noise has ``σ ∝ 1/√dose``; if the clean volume carries ``σ₀`` HU of noise at full
  dose (``params["ref_noise_hu"]``), the noise at dose ``f`` is ``σ₀/√f``, so we *add*
  independent gaussian noise of ``σ = σ₀·√(1/f − 1)`` HU to every voxel (the two then add up to
  ``σ₀/√f``). This is a sinogram-free approximation: real low-dose noise is Poisson in the
  projections, so after filtered back-projection it is spatially correlated (finer grain with a
  sharp kernel), non-stationary (larger through the patient's long axis and near bone, streaks
  in the photon-starved limit) and not gaussian in the air; none of that is modelled here. What
  it does model is the right scale of the noise, in HU, as the dose falls.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch

from medfail.stress.spec import StressTest

__all__ = ["CT_SHIFTS", "added_noise_hu"]


def _clip(out: torch.Tensor, value_range: torch.Tensor) -> torch.Tensor:
    shape = (-1,) + (1,) * (out.ndim - 1)
    lo, hi = value_range[:, 0].reshape(shape), value_range[:, 1].reshape(shape)
    return torch.minimum(torch.maximum(out, lo), hi)


def _hu_window_shift(
    images: torch.Tensor,
    value_range: torch.Tensor,
    params: Mapping[str, Any],
    rngs: Sequence[np.random.Generator],
) -> torch.Tensor:
    """Linear HU miscalibration ``x' = slope·x + offset_hu`` (HU), clipped to ``[lo, hi]``."""
    out = images * float(params["slope"]) + float(params["offset_hu"])
    return _clip(out, value_range)


def added_noise_hu(dose_fraction: float, ref_noise_hu: float) -> float:
    """Std (HU) of the noise added to reach dose ``f``: ``σ₀·√(1/f − 1)``.

    ``added_noise_hu(0.25, 10.0)`` is ``10·√3 ≈ 17.3`` HU (total ``10/√0.25 = 20`` HU).
    """
    if not 0.0 < dose_fraction <= 1.0:
        raise ValueError(f"dose_fraction must be in (0, 1], got {dose_fraction}")
    return ref_noise_hu * math.sqrt(1.0 / dose_fraction - 1.0)


def _low_dose_noise(
    images: torch.Tensor,
    value_range: torch.Tensor,
    params: Mapping[str, Any],
    rngs: Sequence[np.random.Generator],
) -> torch.Tensor:
    """Add white gaussian noise of ``σ₀·√(1/f − 1)`` HU (see the module docstring)."""
    sigma = added_noise_hu(float(params["dose_fraction"]), float(params["ref_noise_hu"]))
    shape = tuple(images.shape[1:])
    noise = np.stack([rng.standard_normal(shape).astype(np.float32) for rng in rngs])
    n = torch.from_numpy(noise).to(device=images.device, dtype=images.dtype)
    return _clip(images + sigma * n, value_range)


_CT = ("CT",)

CT_SHIFTS: tuple[StressTest, ...] = (
    StressTest(
        name="hu_window_shift",
        family="domain_shift",
        taxonomy="data",
        modalities=_CT,
        severities=(
            {"offset_hu": 20.0, "slope": 1.0},
            {"offset_hu": 50.0, "slope": 0.95},
            {"offset_hu": 100.0, "slope": 0.9},
        ),
        description="CT HU miscalibration: x' = slope * x + offset (another scanner's HU scale).",
        unit="offset_hu: HU added (water reads offset_hu); slope: HU scale around 0 HU",
        apply=_hu_window_shift,
        dims=(3,),
    ),
    StressTest(
        name="low_dose_noise",
        family="corruption",
        taxonomy="data",
        modalities=_CT,
        severities=(
            {"dose_fraction": 0.5, "ref_noise_hu": 10.0},
            {"dose_fraction": 0.25, "ref_noise_hu": 10.0},
            {"dose_fraction": 0.1, "ref_noise_hu": 10.0},
        ),
        description="Low-dose CT: gaussian HU noise with total std ref/sqrt(dose fraction).",
        unit="dose_fraction: dose relative to the reference; ref_noise_hu: noise std (HU) at "
        "full dose; adds N(0, ref*sqrt(1/dose - 1)) HU per voxel (white, no sinogram)",
        apply=_low_dose_noise,
        dims=(3,),
    ),
)
