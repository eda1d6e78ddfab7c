"""What a stress test is: the two test types, their families and the severity rule.

The bottom of ``medfail.stress``: it imports nothing of the package, so the kernel modules
(:mod:`~medfail.stress.corruptions`, :mod:`~medfail.stress.domain_shift`,
:mod:`~medfail.stress.prompt_perturbations`) describe their tests with these types and the
catalogue (:mod:`medfail.stress.registry`) collects them, without an import cycle.

Every test names a perturbation, files it in a family and a failure taxonomy, and carries exactly
three parameter dicts for severities 1..3. Severity 0 is always the identity (the clean
condition). The two types differ only in what their ``apply`` works on:

:class:`StressTest` (families ``"corruption"`` and ``"domain_shift"``) perturbs a batch of images::

    apply(images, value_range, params, rngs) -> images
    apply(images, value_range, params, rngs, spacing=spacing) -> images   # uses_spacing tests
        images:      torch.Tensor float32 in native units, on any device: (N, C, H, W) for 2D
                     images, (N, C, X, Y, Z) for volumes (canonical RAS+ axes)
        value_range: torch.Tensor (N, 2) with each image's (lo, hi), same device
        params:      the severity's parameter dict
        rngs:        N numpy generators, one per image (all randomness comes from them)
        spacing:     numpy float64 (N, d), d = number of spatial dims: each image's spacing in mm
                     (rows of 1.0 where unknown, so "mm" then means voxels). Passed only to
                     tests with ``uses_spacing=True`` (3D blur, the geometry tests, which need
                     the *slice axis*: :func:`slice_axis`); every other ``apply`` keeps the
                     four-argument signature.

and returns a new tensor of the same shape, device and dtype, in native units within ``[lo, hi]``.
A test's ``dims`` says which images it takes: ``(2,)`` (2D only, the default), ``(3,)``
(volumes only) or ``(2, 3)``; the entry points refuse the others by name.

:class:`PromptTest` (family ``"prompt"``) perturbs ONE prompt and never touches the image::

    apply(prompt, obj, label_map, params, rng) -> Prompt
        prompt:    the clean :class:`~medfail.data.prompts.Prompt` of one object
        obj:       bool (H, W) mask of that object (a component from ``objects(label_map)``)
        label_map: int (H, W) ground truth of the whole image, 0 = background
        params:    the severity's parameter dict
        rng:       numpy generator (all randomness comes from it)
"""

from __future__ import annotations

import operator
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from medfail.errors import MedfailInputError

if TYPE_CHECKING:
    import numpy as np
    import torch

    from medfail.data.prompts import Prompt

    ApplyFn = Callable[..., torch.Tensor]
    PromptApply = Callable[
        [Prompt, np.ndarray, np.ndarray, Mapping[str, Any], np.random.Generator], Prompt
    ]

FAMILIES: tuple[str, ...] = ("corruption", "domain_shift", "prompt")
IMAGE_FAMILIES: tuple[str, ...] = ("corruption", "domain_shift")
PROMPT_FAMILY = "prompt"
TAXONOMIES: tuple[str, ...] = ("data", "model", "evaluation", "human_factors")
N_SEVERITIES = 3
CLEAN = "clean"

_NAME_RE = re.compile(r"^[a-z][a-z0-9_]*$")

#: The spatial dimensionalities a test can apply to: 2D images and 3D volumes.
SPATIAL_DIMS: tuple[int, ...] = (2, 3)


def slice_axis(spacing: Sequence[float] | None, ndim: int = 3) -> int:
    """The *slice axis* of a volume: the axis with the largest spacing.

    Ties and unknown spacing (``None``) give the last of the tied axes, so an isotropic or
    unknown volume has slice axis ``ndim - 1`` (2). ``slice_axis((0.8, 0.8, 5.0)) == 2``,
    ``slice_axis((3.0, 1.0, 1.0)) == 0``.
    """
    if spacing is None:
        return ndim - 1
    values = [float(v) for v in spacing]
    if len(values) != ndim:
        raise ValueError(f"spacing needs {ndim} values, got {len(values)}")
    top = max(values)
    return max(i for i, v in enumerate(values) if v == top)


def check_severity(severity: int) -> int:
    """``severity`` as an int, checked to be 0..3.

    Raises:
        MedfailInputError: not an int (bools refused) or outside 0..3.
    """
    try:
        if isinstance(severity, bool):
            raise TypeError
        sev = operator.index(severity)
    except TypeError:
        raise MedfailInputError(
            None, f"severity must be an int 0..{N_SEVERITIES}, got {severity!r}"
        ) from None
    if not 0 <= sev <= N_SEVERITIES:
        raise MedfailInputError(None, f"severity must be 0..{N_SEVERITIES}, got {sev}")
    return sev


@dataclass(frozen=True)
class Perturbation:
    """The fields every stress test has (the base of :class:`StressTest` and :class:`PromptTest`).

    Attributes:
        name: unique snake_case id (``"gaussian_noise"``).
        family: ``"corruption"``, ``"domain_shift"`` or ``"prompt"``.
        taxonomy: failure taxonomy: ``"data"``, ``"model"``, ``"evaluation"`` or
            ``"human_factors"``.
        modalities: modalities it applies to, ``("any",)`` for all.
        severities: exactly three parameter dicts, for severities 1, 2 and 3.
        description: one line for ``medfail list`` and the report.
        unit: what the parameter means (``"noise std as a fraction of (hi - lo)"``).
        dims: the spatial dims it applies to: ``(2,)`` (the default), ``(3,)`` or ``(2, 3)``
            (keyword only).
    """

    name: str
    family: str
    taxonomy: str
    modalities: tuple[str, ...]
    severities: tuple[dict[str, Any], ...] = field(hash=False)
    description: str
    unit: str
    dims: tuple[int, ...] = field(default=(2,), kw_only=True)

    #: the families this type accepts (overridden by the subclasses)
    allowed_families = FAMILIES

    def __post_init__(self) -> None:
        if not _NAME_RE.match(self.name) or self.name == CLEAN:
            raise ValueError(f"invalid stress test name {self.name!r} (snake_case, not 'clean')")
        if self.family not in self.allowed_families:
            raise ValueError(
                f"{self.name}: a {type(self).__name__}'s family must be one of "
                f"{self.allowed_families}, got {self.family!r}"
            )
        if self.taxonomy not in TAXONOMIES:
            raise ValueError(
                f"{self.name}: taxonomy must be one of {TAXONOMIES}, got {self.taxonomy!r}"
            )
        if len(self.severities) != N_SEVERITIES:
            raise ValueError(
                f"{self.name}: needs exactly {N_SEVERITIES} severities, got {len(self.severities)}"
            )
        dims = tuple(sorted(set(self.dims)))
        if not dims or not set(dims) <= set(SPATIAL_DIMS) or len(dims) != len(self.dims):
            raise ValueError(f"{self.name}: dims must be (2,), (3,) or (2, 3), got {self.dims!r}")
        object.__setattr__(self, "dims", dims)
        # Freeze the containers we were given (copies, so callers cannot mutate them later).
        object.__setattr__(self, "modalities", tuple(self.modalities))
        object.__setattr__(self, "severities", tuple(dict(p) for p in self.severities))
        if not callable(getattr(self, "apply", None)):
            raise ValueError(f"{self.name}: apply must be callable")

    def params(self, severity: int) -> dict[str, Any]:
        """A copy of the parameter dict for ``severity`` 1..3 (empty for severity 0)."""
        sev = check_severity(severity)
        return {} if sev == 0 else dict(self.severities[sev - 1])


@dataclass(frozen=True)
class StressTest(Perturbation):
    """An image test (family ``"corruption"`` or ``"domain_shift"``).

    Attributes:
        apply: the batched torch function (see the module docstring for its signature).
        uses_spacing: ``apply`` takes the keyword ``spacing`` (keyword only, default False).
    """

    apply: ApplyFn = field(compare=False, repr=False)
    uses_spacing: bool = field(default=False, kw_only=True)

    allowed_families = IMAGE_FAMILIES


@dataclass(frozen=True)
class PromptTest(Perturbation):
    """A prompt test (family ``"prompt"``): perturbs one object's prompt, not the image.

    Attributes:
        apply: the per-prompt function (see the module docstring for its signature).
    """

    apply: PromptApply = field(compare=False, repr=False)

    allowed_families = (PROMPT_FAMILY,)
