"""The stress-test catalogue: every perturbation medfail can apply, by name, and the entry points.

The kernel modules define tests and their severities and import nothing from here:
:data:`~medfail.stress.corruptions.CORRUPTIONS`, :data:`~medfail.stress.domain_shift.DOMAIN_SHIFTS`
and :data:`~medfail.stress.prompt_perturbations.PROMPT_PERTURBATIONS` (2D; the per-voxel ones also
apply to volumes), and the volume-only tables collected in :data:`VOLUME_TESTS`
(``VOLUME_CORRUPTIONS`` of :mod:`~medfail.stress.corruptions`, :mod:`~medfail.stress.mri_artifacts`,
:mod:`~medfail.stress.ct_shift`, :mod:`~medfail.stress.volume_geometry`). Every test has ``dims``
(2, 3 or both): :func:`names_for` picks the tests of 2D images or of volumes. This module collects
them into :data:`REGISTRY` (name → test) when it is imported, and owns everything that looks a test
up by name: :func:`get`, :func:`names`, conditions (:func:`condition_name`,
:func:`parse_condition`), ``medfail list`` (:func:`list_rows`) and the generic entry points
:func:`apply_corruption`, :func:`corrupt`, :func:`perturb_samples` (image tests) and
:func:`perturb_prompts` (prompt tests). The imports only go down: ``spec`` ← kernels ← ``registry``.

A *condition* is a test at a severity, written ``"<test>@<severity>"`` (``"gaussian_noise@2"``);
severity 0 of every test is the single condition ``"clean"``. The two test types and the
signatures of their ``apply`` functions are in :mod:`medfail.stress.spec`.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Callable, Sequence
from typing import Any, overload

import numpy as np
import torch

from medfail.data.prompts import Prompt, objects
from medfail.data.sample import Sample
from medfail.errors import MedfailInputError
from medfail.seeding import sample_rng
from medfail.stress.corruptions import CORRUPTIONS, VOLUME_CORRUPTIONS
from medfail.stress.ct_shift import CT_SHIFTS
from medfail.stress.domain_shift import DOMAIN_SHIFTS
from medfail.stress.mri_artifacts import MRI_ARTIFACTS
from medfail.stress.prompt_perturbations import PROMPT_PERTURBATIONS, as_2d
from medfail.stress.spec import (
    CLEAN,
    FAMILIES,
    IMAGE_FAMILIES,
    N_SEVERITIES,
    PROMPT_FAMILY,
    SPATIAL_DIMS,
    TAXONOMIES,
    Perturbation,
    PromptTest,
    StressTest,
    check_severity,
)
from medfail.stress.uint8_fast import FAST_UINT8
from medfail.stress.volume_geometry import VOLUME_GEOMETRY

__all__ = [
    "CLEAN",
    "FAMILIES",
    "N_SEVERITIES",
    "REGISTRY",
    "TAXONOMIES",
    "VOLUME_TESTS",
    "AnyTest",
    "Perturbation",
    "PromptTest",
    "StressTest",
    "apply_corruption",
    "condition_name",
    "corrupt",
    "get",
    "list_rows",
    "names",
    "names_for",
    "parse_condition",
    "perturb_prompts",
    "perturb_samples",
    "register",
    "severity_summary",
    "spacing_array",
]

#: A registered test of either type.
AnyTest = StressTest | PromptTest

#: name → test: the built-in tests (filled below) and any added with :func:`register`.
REGISTRY: dict[str, AnyTest] = {}


@overload
def register(test: AnyTest, /) -> AnyTest: ...


@overload
def register(test: None = None, /, **fields: Any) -> Callable[[Any], Any]: ...


def register(test: AnyTest | None = None, /, **fields: Any) -> AnyTest | Callable[[Any], Any]:
    """Add a stress test to :data:`REGISTRY`.

    Either call it with a ready :class:`StressTest` or :class:`PromptTest` (returns it), or use it
    as a decorator on the ``apply`` function, passing every other field as keywords (a
    :class:`PromptTest` when ``family="prompt"``, else a :class:`StressTest`)::

        @register(name="my_test", family="corruption", taxonomy="data", modalities=("any",),
                  severities=({"k": 1}, {"k": 2}, {"k": 3}), description="...", unit="...")
        def _my_test(images, value_range, params, rngs): ...

    Raises:
        ValueError: a test with the same name is already registered.
    """
    if test is not None:
        if fields:
            raise TypeError("register() takes either a test or keyword fields, not both")
        if not isinstance(test, StressTest | PromptTest):
            raise TypeError(f"register() takes a StressTest or PromptTest, got {type(test)}")
        if test.name in REGISTRY:
            raise ValueError(f"stress test {test.name!r} is already registered")
        REGISTRY[test.name] = test
        return test

    def decorator(fn: Any) -> Any:
        kind = PromptTest if fields.get("family") == PROMPT_FAMILY else StressTest
        register(kind(apply=fn, **fields))
        return fn

    return decorator


#: The tests made for volumes only (``dims=(3,)``), from their kernel modules.
VOLUME_TESTS: tuple[StressTest, ...] = (*VOLUME_CORRUPTIONS, *MRI_ARTIFACTS, *CT_SHIFTS,
                                        *VOLUME_GEOMETRY)

for _test in (*CORRUPTIONS, *DOMAIN_SHIFTS, *PROMPT_PERTURBATIONS, *VOLUME_TESTS):
    register(_test)


def names() -> list[str]:
    """Sorted names of all registered stress tests."""
    return sorted(REGISTRY)


def names_for(dims: int, family: str | None = None) -> list[str]:
    """Sorted names of the tests that apply to ``dims``-D images (2: images, 3: volumes).

    ``family`` (``"corruption"``, ``"domain_shift"`` or ``"prompt"``) keeps that family only.
    ``names_for(2)`` is every test medfail had before volumes; the engine takes ``names_for(3)``
    as the default tests of a volume dataset.
    """
    if dims not in SPATIAL_DIMS:
        raise MedfailInputError(None, f"dims must be 2 or 3, got {dims!r}")
    if family is not None and family not in FAMILIES:
        raise MedfailInputError(None, f"family must be one of {FAMILIES}, got {family!r}")
    return sorted(n for n, t in REGISTRY.items()
                  if dims in t.dims and (family is None or t.family == family))


def get(name: str) -> AnyTest:
    """The registered test called ``name``.

    Raises:
        MedfailInputError: (a ``ValueError``) unknown name; the message lists the valid names.
    """
    try:
        return REGISTRY[name]
    except KeyError:
        valid = ", ".join(sorted(REGISTRY)) or "(none)"
        raise MedfailInputError(
            None, f"unknown stress test {name!r}; valid names: {valid}"
        ) from None


def _image_test(name: str) -> StressTest:
    test = get(name)
    if not isinstance(test, StressTest):
        raise MedfailInputError(
            None, f"{name!r} is a {test.family} test, not an image test "
            f"({', '.join(IMAGE_FAMILIES)})"
        )
    return test


def condition_name(test: Perturbation | str, severity: int) -> str:
    """``"<test>@<severity>"`` (e.g. ``"gaussian_noise@2"``), or ``"clean"`` for severity 0."""
    sev = check_severity(severity)
    name = get(test).name if isinstance(test, str) else test.name
    return CLEAN if sev == 0 else f"{name}@{sev}"


def parse_condition(name: str) -> tuple[str, int]:
    """Inverse of :func:`condition_name`: ``"gaussian_noise@2"`` -> ``("gaussian_noise", 2)``.

    ``"clean"`` parses to ``("clean", 0)``.

    Raises:
        MedfailInputError: malformed condition, unknown test or severity outside 1..3.
    """
    if name == CLEAN:
        return CLEAN, 0
    test_name, sep, sev = name.partition("@")
    if not sep or not sev.isdigit():
        raise MedfailInputError(
            None, f"bad condition {name!r}: expected 'clean' or '<test>@<severity 1..3>'"
        )
    severity = int(sev)
    if not 1 <= severity <= N_SEVERITIES:
        raise MedfailInputError(None, f"bad condition {name!r}: severity must be 1..{N_SEVERITIES}")
    return get(test_name).name, severity


def _fmt(value: Any) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


def severity_summary(test: Perturbation) -> str:
    """Compact text of the three severities, e.g. ``"sigma=0.04/0.08/0.12"``."""
    keys = list(dict.fromkeys(k for p in test.severities for k in p))
    parts = [f"{k}=" + "/".join(_fmt(p.get(k, "-")) for p in test.severities) for k in keys]
    return ", ".join(parts)


def list_rows() -> list[dict[str, str]]:
    """One row per registered test (sorted by family, then name) for ``medfail list``."""
    tests = sorted(REGISTRY.values(), key=lambda t: (FAMILIES.index(t.family), t.name))
    return [
        {
            "name": t.name,
            "family": t.family,
            "taxonomy": t.taxonomy,
            "modalities": ",".join(t.modalities),
            "dims": ",".join(f"{d}D" for d in t.dims),
            "severities": severity_summary(t),
            "unit": t.unit,
            "description": t.description,
        }
        for t in tests
    ]


# ------------------------------------------------------------------- entry points: images


def _dims_name(dims: int) -> str:
    return "2D images (C, H, W)" if dims == 2 else "3D volumes (C, X, Y, Z)"


def _check_dims(test: StressTest, dims: int, where: str | None = None) -> None:
    if dims not in test.dims:
        wanted = " and ".join(_dims_name(d) for d in test.dims)
        raise MedfailInputError(where, f"stress test {test.name!r} applies to {wanted}, "
                                f"not to {_dims_name(dims)}")


def spacing_array(spacing: Sequence[Sequence[float] | None] | np.ndarray | None, n: int,
                  dims: int) -> np.ndarray:
    """Per-image spacings as float64 ``(n, dims)`` in mm, rows of 1.0 where unknown (``None``).

    Raises:
        MedfailInputError: wrong count or length, or a spacing that is not finite and > 0.
    """
    if spacing is None:
        return np.ones((n, dims), dtype=np.float64)
    rows = list(spacing)
    if len(rows) != n:
        raise MedfailInputError(None, f"need one spacing per image: {n} images, "
                                f"{len(rows)} spacings")
    out = np.ones((n, dims), dtype=np.float64)
    for i, row in enumerate(rows):
        if row is None:
            continue
        values = np.asarray(row, dtype=np.float64).reshape(-1)
        if values.shape != (dims,) or not (np.isfinite(values).all() and (values > 0).all()):
            raise MedfailInputError(None, f"image {i}: spacing must be {dims} finite values "
                                    f"> 0 (mm), got {tuple(np.asarray(row).tolist())}")
        out[i] = values
    return out


def apply_corruption(
    images: torch.Tensor,
    value_range: torch.Tensor,
    name: str,
    severity: int,
    rngs: Sequence[np.random.Generator],
    spacing: Sequence[Sequence[float] | None] | np.ndarray | None = None,
) -> torch.Tensor:
    """Apply a registered stress test to a batch, on the batch's device.

    Args:
        images: ``(N, C, H, W)`` images or ``(N, C, X, Y, Z)`` volumes, float, native units.
        value_range: ``(N, 2)`` per-image ``(lo, hi)`` (a ``(2,)`` tensor is broadcast).
        name: registered image test name (see :data:`REGISTRY`); its ``dims`` must include the
            images' (2 or 3).
        severity: 0 (identity, returns a copy) to 3.
        rngs: one numpy generator per image; the only source of randomness.
        spacing: each image's spacing in mm (one value per spatial axis, ``None`` when unknown;
            ``None`` alone: all unknown). Only tests with ``uses_spacing`` read it (3D blur and
            the geometry tests: unknown spacing means voxels and slice axis 2).

    Returns:
        A new float32 tensor of the input's shape in native units, clipped to each ``[lo, hi]``.
    """
    test = _image_test(name)
    params = test.params(severity)
    if images.ndim not in (4, 5):
        raise ValueError("images must be (N, C, H, W) or (N, C, X, Y, Z), got shape "
                         f"{tuple(images.shape)}")
    dims = images.ndim - 2
    _check_dims(test, dims)
    images = images.to(torch.float32)
    n = images.shape[0]
    vr = torch.as_tensor(value_range, dtype=torch.float32, device=images.device)
    if vr.shape == (2,):
        vr = vr.expand(n, 2)
    if vr.shape != (n, 2):
        raise ValueError(f"value_range must be ({n}, 2), got shape {tuple(vr.shape)}")
    if len(rngs) != n:
        raise ValueError(f"need one generator per image: {n} images, {len(rngs)} generators")
    spacings = spacing_array(spacing, n, dims)
    if severity == 0:
        return images.clone()
    if test.uses_spacing:
        return test.apply(images, vr, params, rngs, spacing=spacings)
    return test.apply(images, vr, params, rngs)


def corrupt(
    image: np.ndarray,
    name: str,
    severity: int,
    seed: int = 0,
    value_range: tuple[float, float] | None = None,
) -> np.ndarray:
    """Corrupt one image (``imagecorruptions``-style helper).

    Args:
        image: ``(H, W)`` or ``(H, W, C)`` array of any integer or float dtype.
        name: corruption name, e.g. ``"gaussian_noise"``.
        severity: 0 (identity) to 3.
        seed: seed of the numpy generator used for any randomness.
        value_range: intensity range ``(lo, hi)``; default ``(0, 255)`` for uint8, otherwise the
            image's own ``(min, max)`` (``hi = lo + 1`` for a constant image).

    Returns:
        An array with the same shape and dtype; integer outputs are rounded and clipped to the
        dtype's range.
    """
    arr = np.asarray(image)
    if arr.ndim not in (2, 3):
        raise ValueError(f"image must be (H, W) or (H, W, C), got shape {arr.shape}")
    is_int = np.issubdtype(arr.dtype, np.integer)
    if not (is_int or np.issubdtype(arr.dtype, np.floating)):
        raise ValueError(f"image dtype must be integer or float, got {arr.dtype}")
    params = _image_test(name).params(severity)  # validate before any work
    if severity == 0:
        return arr.copy()

    if value_range is None:
        if arr.dtype == np.uint8:
            lo, hi = 0.0, 255.0
        else:
            lo, hi = float(arr.min()), float(arr.max())
            if hi <= lo:
                hi = lo + 1.0
    else:
        lo, hi = float(value_range[0]), float(value_range[1])

    if arr.dtype == np.uint8 and (lo, hi) == (0.0, 255.0) and name in FAST_UINT8:
        fast = FAST_UINT8[name](arr, params)  # same output as below (stress/uint8_fast.py)
        if fast is not None:
            return fast
    # channels first in the input dtype (a small copy), then float32 on a contiguous array
    chw = arr[None] if arr.ndim == 2 else np.ascontiguousarray(arr.transpose(2, 0, 1))
    x = torch.from_numpy(chw.astype(np.float32))[None]
    vr = torch.tensor([[lo, hi]], dtype=torch.float32)
    y = apply_corruption(x, vr, name, severity, [np.random.default_rng(seed)])[0].numpy()
    if is_int:
        info = np.iinfo(arr.dtype)
        y = np.clip(np.rint(y, out=y), info.min, info.max, out=y)
    out = y.astype(arr.dtype, copy=False)
    if arr.ndim == 2:
        return np.ascontiguousarray(out[0])
    hwc = np.empty(arr.shape, dtype=arr.dtype)
    for c in range(arr.shape[2]):  # channel by channel: faster than a strided transpose copy
        hwc[..., c] = out[c]
    return hwc


def perturb_samples(
    samples: Sequence[Sample],
    condition: str,
    run_seed: int,
    *,
    batch_size: int = 256,
    device: str | torch.device = "cpu",
) -> list[np.ndarray]:
    """Perturbed copies of the samples' images under ``condition`` (engine helper).

    Images ``(C, H, W)`` and volumes ``(C, X, Y, Z)`` (the test's ``dims`` must include them); each
    sample's ``spacing`` goes to the tests that use it. Same-shape images are batched together (at
    most ``batch_size`` per batch, on ``device``); sample ``s`` draws from ``sample_rng(run_seed,
    condition, s.id)``, so results do not depend on batching or order. Images of ``integer`` samples
    are rounded (and kept in range).

    Returns:
        New float32 arrays of the samples' shapes, in the order of ``samples``.
    """
    test_name, severity = parse_condition(condition)
    if severity == 0:
        return [np.array(s.image, dtype=np.float32, copy=True) for s in samples]
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    canonical = condition_name(test_name, severity)

    test = _image_test(test_name)
    groups: dict[tuple[int, ...], list[int]] = defaultdict(list)
    for i, s in enumerate(samples):
        if s.image.ndim not in (3, 4):
            raise MedfailInputError(
                None, f"sample {s.id}: stress tests need a (C, H, W) image or a (C, X, Y, Z) "
                f"volume, got {s.image.shape}"
            )
        try:
            _check_dims(test, s.image.ndim - 1)
        except MedfailInputError as err:
            raise MedfailInputError(None, f"sample {s.id}: {err.problem}") from None
        groups[tuple(s.image.shape)].append(i)

    results: list[np.ndarray | None] = [None] * len(samples)
    for indices in groups.values():
        for start in range(0, len(indices), batch_size):
            chunk = indices[start : start + batch_size]
            batch = [samples[i] for i in chunk]
            x = torch.from_numpy(np.stack([np.asarray(s.image, dtype=np.float32) for s in batch]))
            vr = torch.tensor([s.value_range for s in batch], dtype=torch.float32)
            rngs = [sample_rng(run_seed, canonical, s.id) for s in batch]
            y = apply_corruption(x.to(device), vr.to(device), test_name, severity, rngs,
                                 spacing=[s.spacing for s in batch])
            y_np = y.cpu().numpy()
            for j, (i, s) in enumerate(zip(chunk, batch, strict=True)):
                img = y_np[j]
                if s.integer:
                    img = np.rint(img)
                    lo, hi = math.ceil(s.value_range[0]), math.floor(s.value_range[1])
                    if lo <= hi:
                        img = np.clip(img, lo, hi)
                results[i] = np.ascontiguousarray(img, dtype=np.float32)
    return [r for r in results if r is not None]


# ------------------------------------------------------------------ entry points: prompts


def perturb_prompts(prompts_per_image: Sequence[Sequence[Prompt]], masks: Sequence[np.ndarray],
                    ids: Sequence[str], condition: str, run_seed: int) -> list[list[Prompt]]:
    """Apply a prompt condition (``"box_shift@2"``, or ``"clean"``) to every image's prompts.

    ``prompts_per_image[i][k]`` must be the prompt of ``objects(masks[i])[k]`` (the order of
    :func:`~medfail.data.prompts.prompts_from_mask`). Object ``k`` of sample ``id`` draws from
    ``sample_rng(run_seed, condition, f"{id}#{k}")``.

    Raises:
        MedfailInputError: unknown condition, or a test that is not in the ``prompt`` family.
        ValueError: mismatched lengths, or more prompts than objects in a mask.
    """
    if not len(prompts_per_image) == len(masks) == len(ids):
        raise ValueError(f"{len(prompts_per_image)} prompt lists, {len(masks)} masks and "
                         f"{len(ids)} ids")
    if condition == CLEAN:
        return [list(p) for p in prompts_per_image]
    name, severity = parse_condition(condition)
    test = get(name)
    if not isinstance(test, PromptTest):
        raise MedfailInputError(None, f"{name!r} is a {test.family} test, not a prompt test")
    params = test.params(severity)
    apply = test.apply
    out: list[list[Prompt]] = []
    for plist, mask, sid in zip(prompts_per_image, masks, ids, strict=True):
        label_map = as_2d(mask, "mask")
        objs = objects(label_map)
        if len(plist) > len(objs):
            raise ValueError(f"sample {sid!r}: {len(plist)} prompts but {len(objs)} objects")
        out.append([apply(p, objs[k], label_map, params,
                          sample_rng(run_seed, condition, f"{sid}#{k}"))
                    for k, p in enumerate(plist)])
    return out
