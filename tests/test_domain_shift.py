"""Domain-shift stress tests: contract (shape, range, identity, determinism, monotone severities)
and the physics of each test (CT window, H&E deconvolution, k-space artifacts, resolution)."""

from __future__ import annotations

import math
from collections.abc import Iterator

import numpy as np
import pytest
import torch
from skimage import color as skcolor
from skimage import data as skdata

from medfail.data.sample import Sample
from medfail.seeding import sample_rng
from medfail.stress import domain_shift as ds
from medfail.stress.registry import (
    REGISTRY,
    apply_corruption,
    condition_name,
    get,
    names,
    perturb_samples,
)

names()  # load the built-in tests
DS_TESTS = sorted(t.name for t in REGISTRY.values()  # the 2D ones: volumes in test_stress_volumes
                  if t.family == "domain_shift" and 2 in t.dims)
MRI = ["mri_bias_field", "mri_ghosting", "mri_motion", "mri_spike"]
RANDOM = ["stain_he", "mri_bias_field", "mri_motion", "mri_spike", "resolution_shift"]
HU_RANGE = (-1024.0, 3071.0)


@pytest.fixture(autouse=True)
def _one_thread() -> Iterator[None]:
    """The images are tiny: one intra-op thread avoids thread start-up/contention dominating."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


# ----------------------------------------------------------------------------- inputs


def _grid(size: int) -> tuple[np.ndarray, np.ndarray]:
    return np.mgrid[-1 : 1 : size * 1j, -1 : 1 : size * 1j]


def _ellipse(
    yy: np.ndarray, xx: np.ndarray, cy: float, cx: float, ry: float, rx: float
) -> np.ndarray:
    return ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1


def ct_phantom(size: int = 128, seed: int = 0) -> np.ndarray:
    """A float HU chest/abdomen slice (1, size, size): air, fat, soft tissue, lungs, liver, bone."""
    yy, xx = _grid(size)
    img = np.full((size, size), -1000.0)
    img[_ellipse(yy, xx, 0, 0, 0.8, 0.95)] = -100.0  # subcutaneous fat
    img[_ellipse(yy, xx, 0, 0, 0.72, 0.87)] = 40.0  # soft tissue
    for cx in (-0.42, 0.42):
        img[_ellipse(yy, xx, -0.1, cx, 0.45, 0.3)] = -850.0  # lungs
    img[_ellipse(yy, xx, 0.45, 0.3, 0.2, 0.3)] = 60.0  # liver
    img[_ellipse(yy, xx, 0.55, 0.0, 0.12, 0.12)] = 700.0  # vertebra
    img[_ellipse(yy, xx, 0.55, 0.0, 0.05, 0.05)] = 1500.0  # cortical bone
    img += np.random.default_rng(seed).normal(0, 10, img.shape)
    return np.clip(img, *HU_RANGE).astype(np.float32)[None]


def mr_phantom(size: int = 128, seed: int = 0) -> np.ndarray:
    """A brain-like MR magnitude slice (1, size, size) on (0, 1000), with Rician noise."""
    yy, xx = _grid(size)
    img = np.zeros((size, size))
    img[_ellipse(yy, xx, 0, 0, 0.88, 0.72)] = 500.0  # scalp
    img[_ellipse(yy, xx, 0, 0, 0.8, 0.64)] = 350.0  # grey matter
    img[_ellipse(yy, xx, 0.02, 0, 0.62, 0.46)] = 250.0  # white matter
    for cx in (-0.12, 0.12):
        img[_ellipse(yy, xx, -0.05, cx, 0.25, 0.07)] = 800.0  # ventricles (T2-like)
    rng = np.random.default_rng(seed)
    img = np.abs(img + rng.normal(0, 8, img.shape) + 1j * rng.normal(0, 8, img.shape))
    return np.clip(img, 0, 1000).astype(np.float32)[None]


def ihc(size: int = 64) -> np.ndarray:
    """skimage's immunohistochemistry image downscaled to (3, size, size), 0..255."""
    img = skdata.immunohistochemistry()[:: 512 // size, :: 512 // size]
    return np.ascontiguousarray(img.transpose(2, 0, 1), dtype=np.float32)


def gray(size: int) -> np.ndarray:
    cam = skdata.camera()
    step = cam.shape[0] // 128
    return np.ascontiguousarray(cam[::step, ::step][:: 128 // size][:size, :size], np.float32)[None]


#: Suitable inputs per test: (image (C, H, W) float32, value_range, integer source pixels).
Input = tuple[np.ndarray, tuple[float, float], bool]
CT: list[Input] = [(ct_phantom(128), HU_RANGE, False)]
HIST: list[Input] = [(ihc(64), (0.0, 255.0), True)]
MR: list[Input] = [
    (mr_phantom(128), (0.0, 1000.0), False),
    (mr_phantom(28, 1), (0.0, 1000.0), False),
]
GRAY: list[Input] = [(gray(64), (0.0, 255.0), True), (gray(28), (0.0, 255.0), True)]
INPUTS: dict[str, list[Input]] = {
    "ct_window": CT,
    "stain_he": HIST,
    **dict.fromkeys(MRI, MR),
    "resolution_shift": [*GRAY, (ihc(32), (0.0, 255.0), True)],
}


def run(name: str, img: np.ndarray, vr: tuple[float, float], sev: int, seed: int = 0) -> np.ndarray:
    """One image (C, H, W) through the registered test at ``sev``."""
    x = torch.from_numpy(img)[None]
    y = apply_corruption(x, torch.tensor([vr]), name, sev, [np.random.default_rng(seed)])
    return y[0].numpy()


def run_params(
    name: str, img: np.ndarray, vr: tuple[float, float], params: dict, seed: int = 0
) -> np.ndarray:
    """One image through the test's ``apply`` with explicit ``params``."""
    x = torch.from_numpy(img)[None]
    return get(name).apply(x, torch.tensor([vr]), params, [np.random.default_rng(seed)])[0].numpy()


# ----------------------------------------------------------------------------- registry contract


def test_registered_family() -> None:
    assert sorted(t.name for t in ds.DOMAIN_SHIFTS) == DS_TESTS
    assert set(DS_TESTS) == {"ct_window", "stain_he", *MRI, "resolution_shift"}
    expected = {"ct_window": ("CT",), "stain_he": ("histology", "SM"), "resolution_shift": ("any",)}
    for name in DS_TESTS:
        t = get(name)
        assert t.taxonomy == "data" and len(t.severities) == 3 and t.params(0) == {}
        assert t.modalities == expected.get(name, ("MR",))
        assert condition_name(name, 2) == f"{name}@2"
    assert set(INPUTS) == set(DS_TESTS)


@pytest.mark.parametrize("name", DS_TESTS)
def test_shape_dtype_range(name: str) -> None:
    for img, vr, _ in INPUTS[name]:
        for sev in (1, 2, 3):
            out = run(name, img, vr, sev, seed=sev)
            assert out.shape == img.shape and out.dtype == np.float32
            assert np.isfinite(out).all()
            assert out.min() >= vr[0] and out.max() <= vr[1], (name, sev, out.min(), out.max())
            assert not np.allclose(out, img), f"{name}@{sev} did nothing"


@pytest.mark.parametrize("name", DS_TESTS)
@pytest.mark.parametrize("hw", [(1, 1), (1, 5), (3, 2), (7, 9)])
def test_tiny_and_odd_images(name: str, hw: tuple[int, int]) -> None:
    img = np.random.default_rng(0).uniform(0, 255, (3, *hw)).astype(np.float32)
    for sev in (1, 3):
        out = run(name, img, (0.0, 255.0), sev)
        assert out.shape == img.shape and np.isfinite(out).all()
        assert out.min() >= 0 and out.max() <= 255


@pytest.mark.parametrize("name", DS_TESTS)
def test_severity_zero_is_identity(name: str) -> None:
    img, vr, _ = INPUTS[name][0]
    x = torch.from_numpy(img)[None].repeat(2, 1, 1, 1)
    rngs = [np.random.default_rng(i) for i in (0, 1)]
    y = apply_corruption(x, torch.tensor([vr] * 2), name, 0, rngs)
    assert torch.equal(x, y) and y is not x
    np.testing.assert_array_equal(run(name, img, vr, 0), img)


@pytest.mark.parametrize("name", DS_TESTS)
def test_batch_size_and_order_independence(name: str) -> None:
    samples = []
    for k, (img, vr, integer) in enumerate(INPUTS[name]):
        for i in range(4):
            rolled = np.ascontiguousarray(np.roll(img, 5 * i, axis=-1))
            samples.append(Sample(id=f"s{k}_{i}", image=rolled, value_range=vr, integer=integer))
    cond = condition_name(name, 2)
    batched = perturb_samples(samples, cond, run_seed=7)
    reversed_ = perturb_samples(samples[::-1], cond, run_seed=7)[::-1]
    small = perturb_samples(samples, cond, run_seed=7, batch_size=3)
    singles = [perturb_samples([s], cond, run_seed=7)[0] for s in samples]
    for a, b, c, d, s in zip(batched, reversed_, small, singles, samples, strict=True):
        np.testing.assert_array_equal(a, b)
        np.testing.assert_array_equal(a, c)
        np.testing.assert_array_equal(a, d)
        assert a.shape == s.image.shape and a.min() >= s.value_range[0]
    # the raw batched apply with sample_rng equals the per-sample apply
    test = get(name)
    same = [s for s in samples if s.image.shape == samples[0].image.shape]
    x = torch.from_numpy(np.stack([s.image for s in same]))
    vr = torch.tensor([s.value_range for s in same], dtype=torch.float32)
    rngs = [sample_rng(3, cond, s.id) for s in same]
    out = test.apply(x, vr, test.params(2), rngs)
    for i, s in enumerate(same):
        one = test.apply(x[i : i + 1], vr[i : i + 1], test.params(2), [sample_rng(3, cond, s.id)])
        assert torch.equal(out[i], one[0])


@pytest.mark.parametrize("name", RANDOM)
def test_seeds(name: str) -> None:
    img, vr, _ = INPUTS[name][0]
    a, b, c = (run(name, img, vr, 2, seed=s) for s in (1, 1, 2))
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)


@pytest.mark.parametrize("name", DS_TESTS)
def test_severities_are_monotone(name: str) -> None:
    img, vr, _ = INPUTS[name][0]
    changes = [
        np.mean([np.abs(run(name, img, vr, sev, seed) - img).mean() for seed in range(4)])
        for sev in (0, 1, 2, 3)
    ]
    assert changes[0] == 0
    assert changes[0] < changes[1] < changes[2] < changes[3], changes


def test_inputs_are_not_modified() -> None:
    for name in DS_TESTS:
        img, vr, _ = INPUTS[name][0]
        before = img.copy()
        run(name, img, vr, 3)
        np.testing.assert_array_equal(img, before)


# ----------------------------------------------------------------------------- ct_window


def test_ct_window_formula_soft_tissue_and_air() -> None:
    hu = np.array([-1024, -1000, -850, -100, 0, 40, 60, 100, 200, 700, 3071], np.float32)
    img = np.broadcast_to(hu, (1, 4, hu.size)).copy()
    ref_level, ref_width = ds.CT_REFERENCE_WINDOW
    for sev in (1, 2, 3):
        p = get("ct_window").params(sev)
        level, width = ref_level + p["level_shift_hu"], ref_width * p["width_factor"]
        out = run("ct_window", img, HU_RANGE, sev)[0, 0]
        expected = (np.clip(hu, level - width / 2, level + width / 2) - (level - width / 2)) * (
            ref_width / width
        ) + (ref_level - ref_width / 2)
        np.testing.assert_allclose(out, expected, atol=1e-3)
        # air (and lung) sit at the bottom of the reference window, bone at its top
        np.testing.assert_allclose(out[:3], -160.0)
        np.testing.assert_allclose(out[-2:], 240.0)
    # soft tissue (muscle/liver/enhanced, 40..100 HU) is changed at every severity
    soft = (hu >= 40) & (hu <= 100)
    outs = [run("ct_window", img, HU_RANGE, s)[0, 0] for s in (1, 2, 3)]
    for out in outs:
        assert np.all(np.abs(out[soft] - hu[soft]) >= 5)
    # at severity 1 the window [-100, 220] HU still separates fat, water and muscle
    assert outs[0][3] < outs[0][4] < outs[0][5] < outs[0][6] < outs[0][7]


def test_ct_window_clips_to_value_range() -> None:
    img = ct_phantom(32)
    out = run("ct_window", img, (-100.0, 200.0), 3)
    assert out.min() >= -100.0 and out.max() <= 200.0


# ----------------------------------------------------------------------------- stain_he


def test_torch_deconvolution_matches_skimage() -> None:
    rgb = skdata.immunohistochemistry()[::4, ::4]
    hed_sk = skcolor.rgb2hed(rgb)
    x = torch.from_numpy(rgb.transpose(2, 0, 1).astype(np.float32) / 255.0)[None]
    hed = ds.rgb_to_hed(x)
    np.testing.assert_allclose(hed[0].numpy().transpose(1, 2, 0), hed_sk, atol=2e-6)
    back = ds.hed_to_rgb(hed)
    np.testing.assert_allclose(
        back[0].numpy().transpose(1, 2, 0), skcolor.hed2rgb(hed_sk), atol=2e-5
    )
    np.testing.assert_allclose(ds.HED_FROM_RGB, skcolor.hed_from_rgb, atol=1e-12)
    np.testing.assert_allclose(ds.RGB_FROM_HED, skcolor.rgb_from_hed, atol=1e-12)


def test_stain_identity_and_known_perturbation() -> None:
    img = ihc(64)
    x01 = torch.from_numpy(img / 255.0)[None].float()
    ones, zeros = torch.ones(1, 3), torch.zeros(1, 3)
    ident = ds._stain_kernel(x01, ones, zeros)
    np.testing.assert_allclose(ident.numpy(), x01.numpy(), atol=1e-5)
    out = run_params("stain_he", img, (0.0, 255.0), {"alpha": 0.0, "beta": 0.0})
    np.testing.assert_allclose(out, img, atol=3e-3)
    # a known alpha/beta equals skimage's hed2rgb(alpha * hed + beta), with the concentrations
    # left unclipped (rgb2hed sets negative ones to 0, which would break the identity above)
    alpha, beta = torch.tensor([[1.2, 0.9, 1.1]]), torch.tensor([[0.01, -0.02, 0.005]])
    ours = ds._stain_kernel(x01, alpha, beta)[0].numpy().transpose(1, 2, 0)
    rgb = img.transpose(1, 2, 0).astype(np.float64) / 255.0
    hed = (np.log(np.maximum(rgb, 1e-6)) / np.log(1e-6)) @ skcolor.hed_from_rgb
    np.testing.assert_allclose(np.maximum(hed, 0), skcolor.rgb2hed(rgb), atol=1e-12)
    ref = skcolor.hed2rgb(hed * alpha.numpy()[0] + beta.numpy()[0])
    np.testing.assert_allclose(ours, ref, atol=1e-4)
    assert np.abs(ours - rgb).mean() > 0.01


def test_stain_needs_rgb() -> None:
    for c in (1, 4):
        img = np.random.default_rng(c).uniform(0, 255, (c, 16, 16)).astype(np.float32)
        np.testing.assert_array_equal(run("stain_he", img, (0.0, 255.0), 3), img)


def test_stain_draws_are_within_bounds() -> None:
    # with beta = 0 a white (unstained) pixel stays white; the hue change scales with alpha
    img = ihc(32)
    img[:, :4, :4] = 255.0
    out = run_params("stain_he", img, (0.0, 255.0), {"alpha": 0.3, "beta": 0.0})
    np.testing.assert_allclose(out[:, :4, :4], 255.0, atol=1e-3)


# ----------------------------------------------------------------------------- MRI


def test_bias_field_amplitude_and_smoothness() -> None:
    img = np.full((1, 64, 64), 300.0, np.float32)  # dim, so exp(0.6) never saturates
    for sev in (1, 2, 3):
        amp = get("mri_bias_field").params(sev)["max_log_amp"]
        out = run("mri_bias_field", img, (0.0, 1000.0), sev, seed=sev)
        log_field = np.log(out[0] / img[0])
        assert abs(np.abs(log_field).max() - amp) < 1e-4
        assert np.abs(np.diff(log_field, axis=0)).max() < 8 * amp / 64  # smooth, low order


def test_ghosting_is_a_half_fov_ghost() -> None:
    img, vr, _ = MR[0]
    x01 = img / vr[1]
    for sev in (1, 2, 3):
        g = get("mri_ghosting").params(sev)["ghost"]
        out = run("mri_ghosting", img, vr, sev) / vr[1]
        expected = (1 - g) * x01 + g * np.roll(x01, x01.shape[1] // 2, axis=1)
        np.testing.assert_allclose(out, np.clip(expected, 0, 1), atol=1e-5)
        assert abs(out.mean() - x01.mean()) < 1e-5  # mean preserved


def test_motion_without_translation_is_identity() -> None:
    img, vr, _ = MR[0]
    out = run_params("mri_motion", img, vr, {"line_fraction": 0.3, "max_shift_px": 0.0})
    np.testing.assert_allclose(out, img, atol=0.05)


@pytest.mark.parametrize("seed", range(3))
def test_spike_adds_energy_at_the_spike_frequency(seed: int) -> None:
    img, vr, _ = MR[0]
    x01 = img[0] / vr[1]
    k_in = np.fft.fft2(x01)
    for sev in (1, 2, 3):
        intensity = get("mri_spike").params(sev)["intensity"]
        out = run("mri_spike", img, vr, sev, seed=seed)[0] / vr[1]
        k_out = np.fft.fft2(out)
        spikes = ds.spike_positions(np.random.default_rng(seed), *x01.shape)
        expected = intensity * np.abs(k_in).max()
        h, w = x01.shape
        mirrored = [((-int(r)) % h, (-int(c)) % w) for r, c, _ in spikes]
        at_spikes = [(int(r), int(c)) for r, c, _ in spikes] + mirrored
        d = np.abs(k_out) - np.abs(k_in)
        # the magnitude image keeps the real part of the spike's grating, split between (r, c)
        # and the mirrored (-r, -c); rectification in the dark background takes a bit more
        for rr, cc in at_spikes:
            assert d[rr, cc] > 0.15 * expected, (sev, rr, cc, d[rr, cc], expected)
        rest = np.ones_like(d, dtype=bool)
        rest[0, 0] = False
        for rr, cc in at_spikes:
            rest[rr, cc] = False
        assert min(d[rr, cc] for rr, cc in at_spikes) > 20 * np.abs(d[rest]).mean()


# ----------------------------------------------------------------------------- resolution


@pytest.mark.parametrize("size", [64, 28])
def test_resolution_shift_of_a_constant_stays_constant(size: int) -> None:
    img = np.full((1, size, size), 120.0, np.float32)
    for sev in (1, 2, 3):
        p = get("resolution_shift").params(sev)
        out = run("resolution_shift", img, (0.0, 255.0), sev, seed=sev)
        assert abs(out.mean() - 120.0) < 0.02 * 255
        assert out.std() < 2 * p["noise_std"] * 255
        clean = run_params("resolution_shift", img, (0.0, 255.0), {**p, "noise_std": 0.0})
        np.testing.assert_allclose(clean, 120.0, atol=1e-3)


def test_resolution_shift_noise_std_and_correlation() -> None:
    img = np.full((1, 256, 256), 0.5, np.float32)
    out = run_params("resolution_shift", img, (0.0, 1.0), {"factor": 2.0, "noise_std": 0.03})[0]
    noise = out - 0.5
    assert abs(noise.std() - 0.03) < 0.003
    lag1 = np.corrcoef(noise[:, :-1].ravel(), noise[:, 1:].ravel())[0, 1]
    assert math.isclose(lag1, math.exp(-0.25), abs_tol=0.05)  # gaussian sigma=1: exp(-1/4)


def test_resolution_shift_block_average() -> None:
    # a 2x2 checkerboard averages to grey at factor 2: fine detail is lost
    img = np.zeros((1, 32, 32), np.float32)
    img[0, ::2, ::2] = img[0, 1::2, 1::2] = 1.0
    out = run_params("resolution_shift", img, (0.0, 1.0), {"factor": 2.0, "noise_std": 0.0})
    np.testing.assert_allclose(out, 0.5, atol=1e-6)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("name", DS_TESTS)
def test_cuda_matches_cpu(name: str) -> None:
    img, vr, _ = INPUTS[name][0]
    x = torch.from_numpy(np.stack([img, img[..., ::-1].copy()]))
    v = torch.tensor([vr, vr])
    cpu = apply_corruption(x, v, name, 2, [np.random.default_rng(i) for i in (0, 1)])
    gpu = apply_corruption(x.cuda(), v.cuda(), name, 2, [np.random.default_rng(i) for i in (0, 1)])
    assert gpu.device.type == "cuda" and gpu.dtype == torch.float32
    tol = 1e-3 * (vr[1] - vr[0])
    np.testing.assert_allclose(gpu.cpu().numpy(), cpu.numpy(), atol=tol)
