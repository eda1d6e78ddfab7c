"""Stress tests on volumes (issue 13 item 4): the ``dims`` field, the 3D apply contract with
spacings, and every test of ``names_for(3)`` on small phantoms (16 x 16 x 12).

Each volume test at each severity keeps shape, dtype and range, is deterministic given the seed,
and severity 3 moves the volume further from clean than severity 1. The geometry tests act on
the slice axis; ``flipped_affine`` changes the image only; blur is checked against scipy, the
noise tests against their formulas.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import scipy.ndimage as ndi
import torch
from typer.testing import CliRunner

from medfail.cli import app
from medfail.data.sample import Sample
from medfail.errors import MedfailInputError
from medfail.seeding import sample_rng
from medfail.stress import ct_shift, mri_artifacts, registry, volume_geometry
from medfail.stress.spec import slice_axis

SHAPE = (16, 16, 12)
ANISO = (1.0, 1.0, 2.5)
MR_RANGE = (0.0, 1000.0)
CT_RANGE = (-1024.0, 3071.0)
VOLUME_ONLY = sorted(t.name for t in registry.VOLUME_TESTS)
TORCHIO = ["mri_bias_field_3d", "mri_ghosting_3d", "mri_motion_3d", "mri_spike_3d"]
GEOMETRY = ["slice_thickness", "missing_slices", "duplicated_slices"]

#: The tests medfail had before volumes: names_for(2) must stay exactly this.
NAMES_2D = [
    "box_loose", "box_scale_jitter", "box_shift", "box_tight", "brightness", "contrast",
    "ct_window", "defocus", "extra_point", "gamma", "gaussian_blur", "gaussian_noise", "jpeg",
    "missing_point", "motion_blur", "mri_bias_field", "mri_ghosting", "mri_motion", "mri_spike",
    "pixelate", "point_background", "point_jitter", "point_neighbour", "poisson_noise",
    "resolution_shift", "speckle", "stain_he",
]


def phantom(kind: str = "mr", shape: tuple[int, int, int] = SHAPE) -> np.ndarray:
    """A float32 ``(1, X, Y, Z)`` volume with content in every slice, varying along every axis,
    nearly symmetric left-right (axis 0) but not anterior-posterior (axis 1).

    ``"mr"``: magnitude in [0, 1000]; ``"ct"``: HU in [-1024, 3071] (air, a body, a bone).
    """
    x, y, z = np.meshgrid(*[np.linspace(-1, 1, n) for n in shape], indexing="ij")
    if kind == "ct":
        v = np.full(shape, -1000.0)
        body = (x / 0.9) ** 2 + (y / 0.8) ** 2 < 1
        v[body] = 40 + 20 * np.sin(3 * z[body]) + 30 * y[body]
        v[((x - 0.1) ** 2 + (y + 0.4) ** 2 + (z / 2) ** 2) < 0.08] = 700
        lo, hi = CT_RANGE
    else:
        v = 150 + 80 * np.cos(2 * z) + 40 * y
        brain = (x / 0.8) ** 2 + (y / 0.9) ** 2 + (z / 1.1) ** 2 < 1
        v[brain] += 400 + 100 * np.sin(4 * z[brain]) + 80 * y[brain]
        v[((x - 0.15) ** 2 + (y + 0.5) ** 2 + z**2) < 0.06] = 950
        lo, hi = MR_RANGE
    return np.clip(v, lo, hi).astype(np.float32)[None]


def _kind(name: str) -> str:
    return "ct" if "CT" in registry.get(name).modalities else "mr"


def _batch(name: str, n: int = 3) -> tuple[torch.Tensor, torch.Tensor]:
    kind = _kind(name)
    x = torch.from_numpy(np.stack([phantom(kind)] * n))
    vr = torch.tensor([CT_RANGE if kind == "ct" else MR_RANGE] * n)
    return x, vr


def _run(name: str, sev: int, x: torch.Tensor, vr: torch.Tensor, seeds: list[int],
         spacing: object = None) -> torch.Tensor:
    rngs = [np.random.default_rng(s) for s in seeds]
    if spacing is None:
        spacing = [ANISO] * len(seeds)
    return registry.apply_corruption(x, vr, name, sev, rngs, spacing=spacing)


# ----------------------------------------------------------------------------- the catalogue


def test_names_for_2d_is_the_list_before_volumes() -> None:
    assert registry.names_for(2) == NAMES_2D


def test_names_for_3d_and_dims() -> None:
    vol = registry.names_for(3)
    per_voxel = {"gaussian_noise", "brightness", "contrast", "poisson_noise", "speckle", "gamma",
                 "ct_window"}
    assert set(vol) == per_voxel | set(VOLUME_ONLY)
    assert set(VOLUME_ONLY) == {
        "blur_3d", "rician_noise", "low_dose_noise", "hu_window_shift", *TORCHIO, *GEOMETRY,
        "flipped_affine"}
    for name in registry.names():
        dims = registry.get(name).dims
        assert dims in ((2,), (3,), (2, 3))
        assert (name in vol) == (3 in dims) and (name in NAMES_2D) == (2 in dims)
    assert set(registry.names_for(3, "corruption")) == {
        "gaussian_noise", "brightness", "contrast", "poisson_noise", "speckle", "gamma",
        "blur_3d", "rician_noise", "low_dose_noise"}
    assert registry.names_for(3, "prompt") == []
    assert set(registry.names_for(3, "domain_shift")) == {
        "ct_window", "hu_window_shift", *TORCHIO, *GEOMETRY, "flipped_affine"}
    for name in VOLUME_ONLY:
        assert registry.get(name).taxonomy == "data"
    with pytest.raises(MedfailInputError, match="dims must be 2 or 3"):
        registry.names_for(4)
    with pytest.raises(MedfailInputError, match="family"):
        registry.names_for(3, "noise")


def test_medfail_list_shows_dims() -> None:
    rows = {r["name"]: r for r in registry.list_rows()}
    assert rows["blur_3d"]["dims"] == "3D" and rows["jpeg"]["dims"] == "2D"
    assert rows["gamma"]["dims"] == "2D,3D"
    out = CliRunner().invoke(app, ["list"]).output
    line = next(x for x in out.splitlines() if x.split()[:1] == ["slice_thickness"])
    assert " 3D " in line and "factor=2/3/5" in line
    line = next(x for x in out.splitlines() if x.split()[:1] == ["gaussian_blur"])
    assert " 2D " in line


def test_a_test_refuses_the_other_dimensionality() -> None:
    img, vol = torch.zeros(1, 1, 8, 8), torch.zeros(1, 1, 8, 8, 4)
    vr, rngs = torch.tensor([[0.0, 1.0]]), [np.random.default_rng(0)]
    with pytest.raises(MedfailInputError, match="'blur_3d' applies to 3D volumes"):
        registry.apply_corruption(img, vr, "blur_3d", 1, rngs)
    with pytest.raises(MedfailInputError, match="'jpeg' applies to 2D images"):
        registry.apply_corruption(vol, vr, "jpeg", 1, rngs)
    sample = Sample("case7", np.zeros((1, 8, 8, 4), np.float32), (0.0, 1.0))
    with pytest.raises(MedfailInputError, match=r"sample case7: .*'pixelate' applies to 2D"):
        registry.perturb_samples([sample], "pixelate@1", run_seed=0)
    with pytest.raises(ValueError, match=r"\(N, C, X, Y, Z\)"):
        registry.apply_corruption(torch.zeros(1, 1, 2, 2, 2, 2), vr, "gamma", 1, rngs)


def test_spacing_is_checked() -> None:
    x, vr = torch.zeros(2, 1, 4, 4, 4), torch.tensor([[0.0, 1.0]] * 2)
    rngs = [np.random.default_rng(0), np.random.default_rng(1)]
    for bad, match in (([(1.0, 1.0)], "one spacing per image"),
                       ([(1.0, 1.0), None], "image 0: spacing must be 3 finite values"),
                       ([None, (1.0, -1.0, 2.0)], "image 1: spacing"),
                       ([None, (1.0, math.nan, 2.0)], "image 1: spacing")):
        with pytest.raises(MedfailInputError, match=match):
            registry.apply_corruption(x, vr, "slice_thickness", 1, rngs, spacing=bad)
    ones = registry.spacing_array([None, (0.5, 0.5, 3)], 2, 3)
    assert ones.tolist() == [[1.0, 1.0, 1.0], [0.5, 0.5, 3.0]]


def test_slice_axis_convention() -> None:
    assert slice_axis((0.8, 0.8, 5.0)) == 2
    assert slice_axis((3.0, 1.0, 1.0)) == 0
    assert slice_axis((1.0, 2.0, 1.0)) == 1
    assert slice_axis((1.0, 1.0, 1.0)) == 2 and slice_axis(None) == 2
    assert slice_axis((2.0, 2.0, 1.0)) == 1  # ties: the last of the tied axes


# ----------------------------------------------------------------------------- every 3D test


@pytest.mark.parametrize("sev", [1, 2, 3])
@pytest.mark.parametrize("name", registry.names_for(3))
def test_volume_shape_dtype_range_and_determinism(name: str, sev: int) -> None:
    x, vr = _batch(name)
    y = _run(name, sev, x, vr, [0, 1, 2])
    assert y.shape == x.shape and y.dtype == torch.float32
    assert torch.isfinite(y).all()
    lo, hi = float(vr[0, 0]), float(vr[0, 1])
    assert float(y.min()) >= lo and float(y.max()) <= hi
    assert not torch.equal(y, x)
    again = _run(name, sev, x.clone(), vr, [0, 1, 2])
    assert torch.equal(y, again)
    # per volume: alone or in a batch, first or last
    alone = _run(name, sev, x[2:], vr[2:], [2])
    assert torch.equal(alone[0], y[2])


@pytest.mark.parametrize("name", registry.names_for(3))
def test_volume_severity_3_is_further_from_clean_than_1(name: str) -> None:
    """Mean |y − x| / (hi − lo) over 4 seeds (CT: over the body, x > −500 HU, since ct_window
    sets air to −160 HU at every severity): severity 3 at least 1.3 × severity 1 (measured
    ratios 1.6 (motion) to 18 (flipped_affine) on these phantoms)."""
    x, vr = _batch(name, n=4)
    span = float(vr[0, 1] - vr[0, 0])
    where = x > -500.0 if _kind(name) == "ct" else torch.ones_like(x, dtype=torch.bool)
    d1 = float((_run(name, 1, x, vr, [0, 1, 2, 3]) - x).abs()[where].mean()) / span
    d3 = float((_run(name, 3, x, vr, [0, 1, 2, 3]) - x).abs()[where].mean()) / span
    assert d1 > 1e-4 and d3 > 1.3 * d1, (d1, d3)


DETERMINISTIC = ("blur_3d", "hu_window_shift", "slice_thickness", "flipped_affine")


@pytest.mark.parametrize("name", [n for n in VOLUME_ONLY if n not in DETERMINISTIC])
def test_random_volume_tests_depend_on_the_seed(name: str) -> None:
    x, vr = _batch(name, n=1)
    assert not torch.equal(_run(name, 2, x, vr, [0]), _run(name, 2, x, vr, [1]))


def test_deterministic_tests_draw_nothing() -> None:
    for name in DETERMINISTIC:
        x, vr = _batch(name, n=1)
        assert torch.equal(_run(name, 3, x, vr, [0]), _run(name, 3, x, vr, [1]))


def test_perturb_samples_threads_spacing_and_rounds_integers() -> None:
    vol = np.rint(phantom("mr"))
    samples = [Sample("a", vol, MR_RANGE, integer=True, spacing=(3.0, 1.0, 1.0)),
               Sample("b", vol.copy(), MR_RANGE, integer=True, spacing=None)]
    mask = (vol[0] > 500).astype(np.int64)
    samples[0].mask = mask.copy()
    for cond in ("missing_slices@3", "rician_noise@2", "blur_3d@2"):
        name, sev = registry.parse_condition(cond)
        out = registry.perturb_samples(samples, cond, run_seed=5)
        for s, o in zip(samples, out, strict=True):
            direct = registry.apply_corruption(
                torch.from_numpy(s.image[None]), torch.tensor([MR_RANGE]), name, sev,
                [sample_rng(5, cond, s.id)], spacing=[s.spacing])[0].numpy()
            assert np.array_equal(o, np.rint(direct))
    assert np.array_equal(samples[0].mask, mask) and np.array_equal(samples[0].image, vol)


def test_torchio_tests_same_seed_same_volume_across_processes() -> None:
    """The TorchIO-based tests at severity 2 give the same bytes in a fresh interpreter with the
    same torch thread count (their FFTs sum in a thread-dependent order, so bytes may differ in
    the last bit between thread counts; the reproducibility rule is per configuration)."""
    code = (
        "import hashlib, json, numpy as np, torch\n"
        "from medfail.stress import registry\n"
        "from tests.test_stress_volumes import TORCHIO, _batch, _run\n"
        "out = {}\n"
        "for n in TORCHIO:\n"
        "    x, vr = _batch(n, n=2)\n"
        "    out[n] = hashlib.sha256(_run(n, 2, x, vr, [3, 4]).numpy().tobytes()).hexdigest()\n"
        "print(json.dumps(out))\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          cwd=Path(__file__).resolve().parents[1], timeout=300,
                          env={**os.environ, "OMP_NUM_THREADS": str(torch.get_num_threads())})
    assert proc.returncode == 0, proc.stderr
    theirs = json.loads(proc.stdout.strip().splitlines()[-1])
    for n in TORCHIO:
        x, vr = _batch(n, n=2)
        ours = hashlib.sha256(_run(n, 2, x, vr, [3, 4]).numpy().tobytes()).hexdigest()
        assert theirs[n] == ours, n


# ----------------------------------------------------------------------------- geometry


def _changed_along(diff: np.ndarray, axis: int) -> np.ndarray:
    """Per index along ``axis`` of a (X, Y, Z) boolean map: how many voxels changed."""
    return diff.sum(axis=tuple(a for a in range(3) if a != axis))


@pytest.mark.parametrize("spacing,axis", [((1.0, 1.0, 2.5), 2), ((3.0, 1.0, 1.0), 0),
                                          ((1.0, 4.0, 1.0), 1), (None, 2)])
@pytest.mark.parametrize("name", ["missing_slices", "duplicated_slices"])
def test_slice_tests_change_whole_slices_along_the_slice_axis(name: str, spacing: object,
                                                              axis: int) -> None:
    x, vr = _batch(name, n=1)
    y = _run(name, 3, x, vr, [7], spacing=[spacing]).numpy()[0, 0]
    x0 = x.numpy()[0, 0]
    n = x0.shape[axis]
    per_slice = _changed_along(y != x0, axis)
    slice_size = x0.size // n
    changed = np.flatnonzero(per_slice)
    xs, ys = np.moveaxis(x0, axis, 0), np.moveaxis(y, axis, 0)
    if name == "missing_slices":
        # whole slices perpendicular to the slice axis change, the others not at all
        assert set(per_slice.tolist()) <= {0, slice_size}
        k = max(1, round(0.2 * n))
        assert changed.size == k and (ys[changed] == MR_RANGE[0]).all()
    else:
        k = min(n - 1, max(1, round(0.2 * n)))
        assert 1 <= changed.size <= k and 0 not in changed
        for i in changed:  # slice i := the original slice i - 1 (voxels equal there unchanged)
            assert np.array_equal(ys[i], xs[i - 1])


@pytest.mark.parametrize("spacing,axis", [((1.0, 1.0, 2.5), 2), ((3.0, 1.0, 1.0), 0), (None, 2)])
def test_slice_thickness_acts_on_the_slice_axis_only(spacing: object, axis: int) -> None:
    x, vr = _batch("slice_thickness", n=1)
    # constant along the slice axis: nothing to average; varying only along it: changed
    flat = x.numpy().copy()
    flat[0, 0] = np.repeat(np.take(flat[0, 0], [3], axis=axis), flat.shape[2 + axis], axis=axis)
    same = _run("slice_thickness", 3, torch.from_numpy(flat), vr, [0], spacing=[spacing])
    assert torch.allclose(same, torch.from_numpy(flat), atol=1e-3)
    y = _run("slice_thickness", 3, x, vr, [0], spacing=[spacing])
    assert float((y - x).abs().max()) > 10.0
    # the operator: rows sum to 1, factor 1 is the identity, a ramp between centres is kept
    op = volume_geometry.thick_slice_operator(12, 5)
    assert np.allclose(op.sum(axis=1), 1.0)
    assert np.allclose(volume_geometry.thick_slice_operator(7, 1), np.eye(7))
    ramp = op @ np.arange(12.0)
    assert np.allclose(ramp[2:10], np.arange(2.0, 10.0))  # centres 2, 7, 10.5
    assert np.allclose(ramp[:2], 2.0) and np.allclose(ramp[11:], 10.5)


def test_flipped_affine_flips_the_image_only() -> None:
    vol = phantom("mr")
    mask = (vol[0] > 500).astype(np.int64)
    s = Sample("v", vol.copy(), MR_RANGE, mask=mask.copy(), spacing=ANISO)
    flips = [registry.perturb_samples([s], f"flipped_affine@{k}", run_seed=0)[0]
             for k in (1, 2, 3)]
    assert np.array_equal(flips[0], vol[:, ::-1])  # L-R: axis 0
    assert np.array_equal(flips[1], vol[:, :, ::-1])  # A-P: axis 1
    assert np.array_equal(flips[2], np.rot90(vol, 1, axes=(1, 2)))  # in-plane (X, Y)
    assert np.array_equal(s.mask, mask) and np.array_equal(s.image, vol)  # ground truth kept


def test_flipped_affine_rot90_keeps_the_shape() -> None:
    vol = torch.arange(2 * 6 * 4 * 3, dtype=torch.float32).reshape(1, 2, 6, 4, 3) + 1.0
    vr = torch.tensor([[0.0, 1000.0]])
    y = _run("flipped_affine", 3, vol, vr, [0], spacing=[(1.0, 1.0, 3.0)])[0]
    turned = torch.rot90(vol[0], 1, dims=(1, 2))  # (2, 4, 6, 3)
    assert y.shape == vol.shape[1:]
    assert torch.equal(y[:, 1:5, :, :], turned[:, :, 1:5, :])  # centre crop of Y, pad of X
    assert (y[:, 0] == 0).all() and (y[:, 5] == 0).all()
    # slice axis 0 (sagittal): the turn is in the (Y, Z) plane
    cube = torch.rand(1, 1, 5, 6, 6)
    y0 = _run("flipped_affine", 3, cube, torch.tensor([[0.0, 1.0]]), [0],
              spacing=[(3.0, 1.0, 1.0)])
    assert torch.equal(y0[0], torch.rot90(cube[0], 1, dims=(2, 3)))


# ----------------------------------------------------------------------------- blur and noise


@pytest.mark.parametrize("spacing", [(1.0, 1.0, 4.0), (0.5, 2.0, 1.0), None])
def test_blur_3d_is_scipy_gaussian_in_mm(spacing: tuple[float, ...] | None) -> None:
    rng = np.random.default_rng(0)
    vol = rng.uniform(0.0, 1.0, (1, 1, 20, 18, 14)).astype(np.float32)
    y = _run("blur_3d", 2, torch.from_numpy(vol), torch.tensor([[0.0, 1.0]]), [0],
             spacing=[spacing]).numpy()[0, 0]
    sp = spacing or (1.0, 1.0, 1.0)
    ref = vol[0, 0].astype(np.float64)
    for axis, s in enumerate(sp):
        sigma = 2.0 / s  # severity 2: 2 mm
        ref = ndi.gaussian_filter1d(ref, sigma, axis=axis, mode="mirror",
                                    radius=max(1, math.ceil(3 * sigma)))
    np.testing.assert_allclose(y, ref, atol=2e-6)


def test_rician_noise_matches_its_formula() -> None:
    """Zero background becomes Rayleigh (mean σ√(π/2)); a bright plateau A gets mean
    ≈ √(A² + σ²) to first order; σ = fraction × p99 of the normalised volume."""
    vol = np.zeros((1, 1, 40, 40, 40), np.float32)
    vol[..., 20:, :, :] = 800.0  # half the volume at 0.8 of the range: p99 = 0.8
    y = _run("rician_noise", 3, torch.from_numpy(vol), torch.tensor([MR_RANGE]), [1]).numpy()
    sigma = 0.1 * 0.8 * 1000.0
    background = y[0, 0, :20]
    assert abs(background.mean() / (sigma * math.sqrt(math.pi / 2)) - 1) < 0.02
    assert abs(y[0, 0, 20:].mean() / math.sqrt(800.0**2 + sigma**2) - 1) < 0.01
    assert abs(y[0, 0, 20:].std() / sigma - 1) < 0.03


def test_low_dose_noise_std_in_hu() -> None:
    vol = np.full((1, 1, 32, 32, 32), 40.0, np.float32)
    for sev, added in ((1, 10.0), (2, 10.0 * math.sqrt(3)), (3, 30.0)):
        assert math.isclose(ct_shift.added_noise_hu(
            registry.get("low_dose_noise").params(sev)["dose_fraction"], 10.0), added)
        y = _run("low_dose_noise", sev, torch.from_numpy(vol), torch.tensor([CT_RANGE]), [2])
        assert abs(float((y - 40.0).std()) / added - 1) < 0.02
        assert abs(float((y - 40.0).mean())) < 0.5
    with pytest.raises(ValueError):
        ct_shift.added_noise_hu(0.0, 10.0)


def test_hu_window_shift_formula() -> None:
    x = torch.tensor([-1000.0, -100.0, 0.0, 40.0, 700.0, 3000.0]).reshape(1, 1, 6, 1, 1)
    vr = torch.tensor([CT_RANGE])
    for sev in (1, 2, 3):
        p = registry.get("hu_window_shift").params(sev)
        y = _run("hu_window_shift", sev, x, vr, [0], spacing=[None])
        want = (x * p["slope"] + p["offset_hu"]).clamp(*CT_RANGE)
        assert torch.allclose(y, want)
    water = _run("hu_window_shift", 3, x, vr, [0], spacing=[None]).flatten()[2]
    assert float(water) == 100.0


# ----------------------------------------------------------------------------- TorchIO draws


def test_bias_field_peak_is_max_log_amp() -> None:
    vol = np.full((1, 1, 16, 16, 12), 400.0, np.float32)  # 0.4 · e^0.6 < 1: no clipping
    for sev in (1, 2, 3):
        amp = registry.get("mri_bias_field_3d").params(sev)["max_log_amp"]
        y = _run("mri_bias_field_3d", sev, torch.from_numpy(vol), torch.tensor([MR_RANGE]), [4])
        log_field = np.log(y.numpy() / 400.0)
        assert abs(np.abs(log_field).max() - amp) < 1e-3
        assert abs(np.median(log_field)) < amp  # not a global scale


@pytest.mark.parametrize("shape", [(16, 16, 12), (15, 9, 1), (7, 1, 5)])
def test_bias_field_is_torchio_biasfield(shape: tuple[int, int, int]) -> None:
    """The registered test equals ``tio.BiasField`` with the same drawn coefficients."""
    import torchio as tio

    x = torch.rand(1, 1, *shape, generator=torch.Generator().manual_seed(0)) * 0.5
    coeffs = mri_artifacts.bias_coefficients(np.random.default_rng(3), shape, 0.4)
    ref = tio.BiasField(coefficients=coeffs, order=3)(tio.ScalarImage(tensor=x[0])).data
    ours = _run("mri_bias_field_3d", 2, x, torch.tensor([[0.0, 1.0]]), [3], spacing=[None])
    assert torch.equal(ours[0], ref.clamp(0.0, 1.0))
    assert abs(float(mri_artifacts.bias_log_field(shape, coeffs).abs().max()) - 0.4) < 1e-9


def test_ghosting_axis_is_in_plane_and_spikes_avoid_dc() -> None:
    for spacing, plane in (((1.0, 1.0, 3.0), {0, 1}), ((3.0, 1.0, 1.0), {1, 2}),
                           ((1.0, 1.0, 1.0), {0, 1})):
        axes = {mri_artifacts.ghosting_params(np.random.default_rng(s), spacing)[1]
                for s in range(40)}
        assert axes == plane
    for seed in range(50):
        pos = mri_artifacts.spike_positions_3d(np.random.default_rng(seed), (4, 4, 3))
        idx = np.floor(pos * np.array([4, 4, 3])).astype(int)
        assert 1 <= len(idx) <= 3 and not any((i == (2, 2, 1)).all() for i in idx)


def test_motion_params_follow_the_severity_bounds() -> None:
    angles, shifts, times = mri_artifacts.motion_params(np.random.default_rng(0), 5.0, 2.0, 2)
    assert angles.shape == shifts.shape == (2, 3) and times.shape == (2,)
    assert np.abs(angles).max() <= 5.0 and np.abs(shifts).max() <= 2.0
    assert np.all(np.diff(times) > 0) and times[0] > 0 and times[-1] < 1


# ----------------------------------------------------------------------------- the contract


def test_dims_and_spacing_contract_for_added_tests() -> None:
    """``dims`` is validated; a ``uses_spacing`` test gets ``spacing=`` (float64 (N, 3), 1.0
    where unknown), a four-argument test keeps its signature on volumes."""
    from medfail.stress.spec import StressTest

    for bad in ((4,), (), (2, 2)):
        with pytest.raises(ValueError, match="dims"):
            StressTest("x", "corruption", "data", ("any",), ({}, {}, {}), "d", "u",
                       lambda *a: a[0], dims=bad)
    seen: list[np.ndarray] = []

    def with_spacing(images, value_range, params, rngs, *, spacing):  # type: ignore[no-untyped-def]
        seen.append(spacing)
        return images.clone()

    def plain(images, value_range, params, rngs):  # type: ignore[no-untyped-def]
        return images + 0.0

    tests = [StressTest("tmp_spacing", "corruption", "data", ("any",), ({}, {}, {}), "d", "u",
                        with_spacing, dims=(3,), uses_spacing=True),
             StressTest("tmp_plain", "corruption", "data", ("any",), ({}, {}, {}), "d", "u",
                        plain, dims=(2, 3))]
    try:
        for t in tests:
            registry.register(t)
        assert "tmp_spacing" in registry.names_for(3) and "tmp_spacing" not in registry.names_for(2)
        x, vr = torch.zeros(2, 1, 4, 4, 4), torch.tensor([[0.0, 1.0]] * 2)
        rngs = [np.random.default_rng(0), np.random.default_rng(1)]
        registry.apply_corruption(x, vr, "tmp_spacing", 1, rngs, spacing=[(0.5, 0.5, 3), None])
        assert seen[0].dtype == np.float64 and seen[0].tolist() == [[0.5, 0.5, 3.0], [1, 1, 1]]
        assert torch.equal(registry.apply_corruption(x, vr, "tmp_plain", 2, rngs), x)
        assert torch.equal(registry.apply_corruption(x[..., 0], vr, "tmp_plain", 2, rngs),
                           x[..., 0])
    finally:
        for t in tests:
            registry.REGISTRY.pop(t.name, None)
