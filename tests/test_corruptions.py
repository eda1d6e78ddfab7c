"""Corruption stress tests: shapes, ranges, identity, monotonicity, determinism, registry."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from skimage import data as skdata

from medfail.data.sample import Sample
from medfail.seeding import sample_rng
from medfail.stress.corruptions import (
    CORRUPTIONS,
    _disk_kernel,
    _motion_kernel,
    _poisson_noise,
    _speckle,
)
from medfail.stress.registry import (
    REGISTRY,
    StressTest,
    apply_corruption,
    condition_name,
    corrupt,
    get,
    list_rows,
    parse_condition,
    perturb_samples,
    register,
)

NAMES = [t.name for t in CORRUPTIONS]
SEVERITIES = [1, 2, 3]


def _camera(size: int = 128) -> np.ndarray:
    img = skdata.camera()
    step = img.shape[0] // size
    return np.ascontiguousarray(img[::step, ::step])


def _rgb(size: int = 64) -> np.ndarray:
    return np.ascontiguousarray(skdata.astronaut()[:: 512 // size, :: 512 // size])


def _images() -> dict[str, tuple[np.ndarray, tuple[float, float] | None]]:
    cam = _camera(64)
    rng = np.random.default_rng(1)
    u16 = (cam.astype(np.float64) / 255 * 4095).astype(np.uint16)
    hu = (cam.astype(np.float32) / 255 * 4095 - 1024).astype(np.float32)
    hu += rng.normal(0, 5, hu.shape).astype(np.float32)
    hu = np.clip(hu, -1024, 3071).astype(np.float32)
    return {
        "uint8_gray": (cam, None),
        "uint8_rgb": (_rgb(64), None),
        "uint16_gray": (u16, (0.0, 4095.0)),
        "uint16_gray_auto": (u16, None),
        "float32_hu": (hu, (-1024.0, 3071.0)),
        "tiny_28": (np.ascontiguousarray(_camera(128)[::4, ::4][:28, :28]), None),
    }


IMAGES = _images()


@pytest.mark.parametrize("kind", sorted(IMAGES))
@pytest.mark.parametrize("name", NAMES)
def test_shape_dtype_range(kind: str, name: str) -> None:
    img, vr = IMAGES[kind]
    if vr is None:
        lo, hi = (0.0, 255.0) if img.dtype == np.uint8 else (float(img.min()), float(img.max()))
    else:
        lo, hi = vr
    for sev in SEVERITIES:
        out = corrupt(img, name, sev, seed=3, value_range=vr)
        assert out.shape == img.shape
        assert out.dtype == img.dtype
        assert np.isfinite(out).all()
        assert out.min() >= lo and out.max() <= hi, (kind, name, sev, out.min(), out.max())
        assert not np.array_equal(out, img), f"{name}@{sev} did nothing on {kind}"


@pytest.mark.parametrize("name", NAMES)
def test_severity_zero_is_identity(name: str) -> None:
    for img, vr in IMAGES.values():
        out = corrupt(img, name, 0, value_range=vr)
        assert out.dtype == img.dtype
        np.testing.assert_array_equal(out, img)
    x = torch.rand(3, 1, 16, 16) * 255
    vr = torch.tensor([[0.0, 255.0]] * 3)
    y = apply_corruption(x, vr, name, 0, [np.random.default_rng(i) for i in range(3)])
    assert torch.equal(x, y) and y is not x


@pytest.mark.parametrize("name", NAMES)
def test_severities_are_monotone(name: str) -> None:
    cam = _camera(128)
    changes = [
        np.abs(corrupt(cam, name, s, seed=0).astype(np.float64) - cam).mean() for s in (0, 1, 2, 3)
    ]
    assert changes[0] == 0
    assert changes[0] < changes[1] < changes[2] < changes[3], changes


def _samples(n: int = 10) -> list[Sample]:
    cam = _camera(128).astype(np.float32)
    out = []
    for i in range(n):
        img = np.roll(cam, 7 * i, axis=1)[None, :48, :48]
        out.append(
            Sample(
                id=f"case{i}", image=np.ascontiguousarray(img), value_range=(0, 255), integer=True
            )
        )
    # a second shape and a float HU-like sample in the same call
    out.append(
        Sample(
            id="rgb",
            image=_rgb(32).transpose(2, 0, 1).astype(np.float32),
            value_range=(0, 255),
            integer=True,
        )
    )
    hu = IMAGES["float32_hu"][0][None, :40, :40].copy()
    out.append(Sample(id="ct", image=hu, value_range=(-1024, 3071), integer=False))
    return out


@pytest.mark.parametrize("name", NAMES)
def test_batch_size_and_order_independence(name: str) -> None:
    samples = _samples()
    cond = condition_name(name, 2)
    batched = perturb_samples(samples, cond, run_seed=7)
    reversed_ = perturb_samples(samples[::-1], cond, run_seed=7)[::-1]
    singles = [perturb_samples([s], cond, run_seed=7)[0] for s in samples]
    small = perturb_samples(samples, cond, run_seed=7, batch_size=3)
    for a, b, c, d, s in zip(batched, reversed_, singles, small, samples, strict=True):
        assert a.dtype == np.float32 and a.shape == s.image.shape
        np.testing.assert_array_equal(a, b)
        np.testing.assert_array_equal(a, c)
        np.testing.assert_array_equal(a, d)
        if s.integer:
            np.testing.assert_array_equal(a, np.rint(a))
        lo, hi = s.value_range
        assert a.min() >= lo and a.max() <= hi
    # inputs are not modified
    for s, s0 in zip(samples, _samples(), strict=True):
        np.testing.assert_array_equal(s.image, s0.image)


def test_seeds() -> None:
    samples = _samples(4)
    cond = "gaussian_noise@1"
    a = perturb_samples(samples, cond, run_seed=1)
    b = perturb_samples(samples, cond, run_seed=1)
    c = perturb_samples(samples, cond, run_seed=2)
    for x, y, z in zip(a, b, c, strict=True):
        np.testing.assert_array_equal(x, y)
        assert not np.array_equal(x, z)
    # different samples get different noise, even with identical images
    twins = [
        Sample(id=f"t{i}", image=np.full((1, 32, 32), 128, np.float32), value_range=(0, 255))
        for i in range(2)
    ]
    t0, t1 = perturb_samples(twins, cond, run_seed=1)
    assert not np.array_equal(t0, t1)
    # the per-sample generator is sample_rng(run_seed, condition, id)
    x = torch.from_numpy(np.stack([s.image for s in twins]))
    rngs = [sample_rng(1, cond, s.id) for s in twins]
    direct = apply_corruption(x, torch.tensor([[0.0, 255.0]] * 2), "gaussian_noise", 1, rngs)
    np.testing.assert_array_equal(direct.numpy(), np.stack([t0, t1]))
    # corrupt(): same seed -> same output, different seed -> different noise
    cam = _camera(64)
    np.testing.assert_array_equal(
        corrupt(cam, "gaussian_noise", 2, seed=5), corrupt(cam, "gaussian_noise", 2, seed=5)
    )
    assert not np.array_equal(
        corrupt(cam, "gaussian_noise", 2, seed=5), corrupt(cam, "gaussian_noise", 2, seed=6)
    )
    # deterministic corruptions ignore the seed
    for name in ("jpeg", "defocus", "pixelate", "gamma"):
        np.testing.assert_array_equal(corrupt(cam, name, 2, seed=5), corrupt(cam, name, 2, seed=6))
    # random ones use the seed
    for name in ("poisson_noise", "speckle", "motion_blur"):
        assert not np.array_equal(corrupt(cam, name, 2, seed=5), corrupt(cam, name, 2, seed=6))


@pytest.mark.parametrize("severity,sigma", [(1, 0.04), (2, 0.08), (3, 0.12)])
def test_gaussian_noise_std(severity: int, sigma: float) -> None:
    lo, hi = -1024.0, 3071.0
    flat = np.full((256, 256), (lo + hi) / 2, np.float32)
    out = corrupt(flat, "gaussian_noise", severity, seed=11, value_range=(lo, hi))
    diff = out.astype(np.float64) - flat
    assert abs(diff.mean()) < 0.01 * sigma * (hi - lo)
    assert diff.std() == pytest.approx(sigma * (hi - lo), rel=0.02)


def test_fixed_effects() -> None:
    flat = np.full((32, 32), 100, np.uint8)
    assert (corrupt(flat, "brightness", 2) == 100 + 51).all()  # 0.2 * 255 = 51
    ramp = np.tile(np.linspace(0, 1, 32, dtype=np.float32), (32, 1))
    out = corrupt(ramp, "contrast", 2, value_range=(0.0, 1.0))
    np.testing.assert_allclose(out - ramp.mean(), 0.5 * (ramp - ramp.mean()), atol=1e-6)
    np.testing.assert_allclose(
        corrupt(ramp, "gaussian_blur", 3, value_range=(0, 1)).mean(), ramp.mean(), atol=1e-3
    )


def test_gaussian_blur_tiny_and_flat() -> None:
    for size in (1, 2, 3, 5):
        img = np.arange(size * size, dtype=np.float32).reshape(size, size)
        out = corrupt(img, "gaussian_blur", 3, value_range=(0, max(1, size * size - 1)))
        assert out.shape == img.shape and np.isfinite(out).all()
    flat = np.full((28, 28), 77, np.uint8)
    np.testing.assert_array_equal(corrupt(flat, "gaussian_blur", 3), flat)


def test_corrupt_value_range_defaults_and_multichannel() -> None:
    const = np.full((16, 16), 500, np.uint16)  # lo == hi -> hi = lo + 1
    out = corrupt(const, "gaussian_noise", 3)
    assert out.dtype == np.uint16 and out.min() >= 500 and out.max() <= 501
    two = np.stack([_camera(64), 255 - _camera(64)], axis=-1)  # 2 channels -> per-channel JPEG
    out = corrupt(two, "jpeg", 3)
    assert out.shape == two.shape and out.dtype == np.uint8
    with pytest.raises(ValueError):
        corrupt(np.zeros((2, 2, 2, 2)), "jpeg", 1)
    with pytest.raises(ValueError):
        corrupt(_camera(64), "jpeg", 4)


def test_registry() -> None:
    assert set(NAMES) <= set(REGISTRY)
    with pytest.raises(ValueError) as err:
        get("gausian_noise")
    for name in NAMES:
        assert name in str(err.value)
    for test in CORRUPTIONS:
        assert test.family == "corruption" and test.taxonomy == "data"
        assert len(test.severities) == 3
        for sev in SEVERITIES:
            cond = condition_name(test, sev)
            assert cond == f"{test.name}@{sev}"
            assert parse_condition(cond) == (test.name, sev)
            assert condition_name(test.name, sev) == cond
        assert condition_name(test, 0) == "clean"
    assert parse_condition("clean") == ("clean", 0)
    for bad in ("jpeg", "jpeg@0", "jpeg@4", "jpeg@x", "nope@1"):
        with pytest.raises(ValueError):
            parse_condition(bad)
    rows = list_rows()
    assert {r["name"] for r in rows} >= set(NAMES)
    row = next(r for r in rows if r["name"] == "gaussian_noise")
    assert row["severities"] == "sigma=0.04/0.08/0.12"
    assert {"family", "taxonomy", "modalities", "unit", "description"} <= set(row)
    with pytest.raises(ValueError):
        register(CORRUPTIONS[0])  # duplicate
    with pytest.raises(ValueError):
        StressTest("x", "corruption", "data", ("any",), ({}, {}), "d", "u", lambda *a: a[0])


# ------------------------------------------------------------------ poisson_noise .. gamma

NEW_PARAMS = {
    "poisson_noise": ("photons", (60, 25, 10)),
    "speckle": ("sigma", (0.15, 0.3, 0.5)),
    "motion_blur": ("length_px", (5, 9, 15)),
    "defocus": ("radius_px", (1.5, 3.0, 5.0)),
    "pixelate": ("factor", (2, 3, 4)),
    "gamma": ("gamma", (1.5, 2.0, 3.0)),
}


def test_new_corruption_tables() -> None:
    by_name = {t.name: t for t in CORRUPTIONS}
    rows = {r["name"]: r for r in list_rows()}
    for name, (key, values) in NEW_PARAMS.items():
        test = by_name[name]
        assert REGISTRY[name] is test
        assert (test.family, test.taxonomy, test.modalities) == ("corruption", "data", ("any",))
        assert tuple(test.params(s) for s in SEVERITIES) == tuple({key: v} for v in values)
        assert rows[name]["severities"] == f"{key}=" + "/".join(f"{v:g}" for v in values)
        assert rows[name]["family"] == "corruption" and rows[name]["unit"].startswith(key)


def _flat(value: float, shape: tuple[int, ...] = (1, 1, 256, 256)) -> torch.Tensor:
    return torch.full(shape, value, dtype=torch.float32)


@pytest.mark.parametrize("severity,lam", [(1, 60), (2, 25), (3, 10)])
def test_poisson_noise_variance(severity: int, lam: int) -> None:
    # the kernel itself (before clipping): mean x, variance x / lambda
    out = _poisson_noise(_flat(0.5), {"photons": lam}, [np.random.default_rng(4)]).double()
    assert out.mean().item() == pytest.approx(0.5, abs=0.005)
    assert out.var().item() == pytest.approx(0.5 / lam, rel=0.03)
    counts = out.numpy() * lam
    np.testing.assert_allclose(counts, np.rint(counts), atol=1e-4)  # whole photon counts
    # through the registry at a level where clipping at hi is negligible, in native units
    lo, hi = -1024.0, 3071.0
    x = _flat(lo + 0.25 * (hi - lo))
    vr = torch.tensor([[lo, hi]])
    y = apply_corruption(x, vr, "poisson_noise", severity, [np.random.default_rng(5)]).double()
    assert ((y - lo) / (hi - lo)).var().item() == pytest.approx(0.25 / lam, rel=0.03)
    # randomness comes only from the per-sample generator, not from torch's global RNG
    torch.manual_seed(0)
    a = apply_corruption(x, vr, "poisson_noise", severity, [np.random.default_rng(5)])
    torch.manual_seed(1)
    b = apply_corruption(x, vr, "poisson_noise", severity, [np.random.default_rng(5)])
    assert torch.equal(a, b) and torch.equal(a, y.float())


@pytest.mark.parametrize("sigma", [0.15, 0.3, 0.5])
def test_speckle_is_multiplicative(sigma: float) -> None:
    x = torch.cat([_flat(0.5), _flat(0.0)])
    out = _speckle(x, {"sigma": sigma}, [np.random.default_rng(i) for i in range(2)]).double()
    assert out[0].std().item() == pytest.approx(sigma * 0.5, rel=0.03)
    assert out[0].mean().item() == pytest.approx(0.5, abs=0.01)
    assert torch.equal(out[1], torch.zeros_like(out[1]))  # black stays black


def _block_means(img: np.ndarray, f: int) -> np.ndarray:
    """Reference: top-left aligned block means (partial edge blocks over their real pixels)."""
    h, w = img.shape[-2:]
    out = np.empty_like(img, dtype=np.float64)
    for i in range(0, h, f):
        for j in range(0, w, f):
            block = img[..., i : i + f, j : j + f]
            out[..., i : i + f, j : j + f] = block.mean(axis=(-2, -1), keepdims=True)
    return out


@pytest.mark.parametrize("severity,factor", [(1, 2), (2, 3), (3, 4)])
@pytest.mark.parametrize("shape", [(28, 28), (13, 10), (3, 3), (1, 1)])
def test_pixelate_piecewise_constant(severity: int, factor: int, shape: tuple[int, int]) -> None:
    rng = np.random.default_rng(2)
    img = rng.random((2, 3, *shape)).astype(np.float32)
    vr = torch.tensor([[0.0, 1.0]] * 2)
    out = apply_corruption(torch.from_numpy(img), vr, "pixelate", severity, [rng, rng]).numpy()
    assert out.shape == img.shape
    np.testing.assert_allclose(out, _block_means(img, factor), atol=1e-6)
    h, w = shape
    rows, cols = np.arange(h) // factor * factor, np.arange(w) // factor * factor
    np.testing.assert_array_equal(out, out[..., rows[:, None], cols[None, :]])


def test_pixelate_odd_size_uint8() -> None:
    tiny = IMAGES["tiny_28"][0]
    for sev in SEVERITIES:
        out = corrupt(tiny, "pixelate", sev)
        assert out.shape == (28, 28) and out.dtype == np.uint8


def test_motion_and_disk_kernels() -> None:
    horizontal = _motion_kernel(5, 0.0)
    assert horizontal.shape == (7, 7)
    assert horizontal.sum() == pytest.approx(1.0)
    assert np.count_nonzero(horizontal.sum(axis=1)) == 1  # one row
    np.testing.assert_allclose(_motion_kernel(5, 90.0), horizontal.T, atol=1e-12)
    for length in (5, 9, 15):
        for angle in (0.0, 17.0, 45.0, 123.4, 179.9):
            k = _motion_kernel(length, angle)
            assert k.sum() == pytest.approx(1.0) and (k >= 0).all()
            np.testing.assert_allclose(k, k[::-1, ::-1], atol=1e-12)  # centred
            rows, cols = np.nonzero(k > 1e-3)
            centre = k.shape[0] // 2
            extent = np.hypot(rows - centre, cols - centre).max()
            assert length / 2 - 1.5 <= extent <= length / 2 + 1.5
    for radius, size in ((1.5, 3), (3.0, 7), (5.0, 11)):
        d = _disk_kernel(radius)
        assert d.shape == (size, size) and d.sum() == pytest.approx(1.0)
        np.testing.assert_allclose(d, d.T)
        np.testing.assert_allclose(d, d[::-1, ::-1])
        c = size // 2
        assert d[c, c] == d.max() and 0 < d[c, 0] < d[c, c]  # anti-aliased rim


@pytest.mark.parametrize("name", ["motion_blur", "defocus"])
def test_blurs_preserve_flat_regions(name: str) -> None:
    for sev in SEVERITIES:
        flat = np.full((28, 28), 77, np.uint8)
        np.testing.assert_array_equal(corrupt(flat, name, sev, seed=sev), flat)
        # a flat region far enough from the edge keeps its value and mean
        img = np.full((64, 64), 40.0, np.float32)
        img[:, 40:] = 200.0
        out = corrupt(img, name, sev, seed=sev, value_range=(0.0, 255.0))
        np.testing.assert_allclose(out[:, :30], 40.0, atol=1e-3)
        np.testing.assert_allclose(out[:, 50:], 200.0, atol=1e-3)
        # a reflect-padded blur of a left/right step conserves the image mean
        assert out.mean() == pytest.approx(img.mean(), rel=0.02)


def test_motion_blur_angle_per_sample() -> None:
    impulse = np.zeros((1, 33, 33), np.float32)
    impulse[0, 16, 16] = 1.0
    samples = [Sample(id=f"m{i}", image=impulse.copy(), value_range=(0.0, 1.0)) for i in range(6)]
    cond = "motion_blur@3"
    out = perturb_samples(samples, cond, run_seed=3)
    again = perturb_samples(samples[::-1], cond, run_seed=3)[::-1]
    other = perturb_samples(samples, cond, run_seed=4)
    for i, (a, b, c, s) in enumerate(zip(out, again, other, samples, strict=True)):
        np.testing.assert_array_equal(a, b)  # same (seed, condition, id) -> same angle
        assert not np.array_equal(a, c)
        # the impulse response is the kernel at the angle drawn from the sample's generator
        angle = sample_rng(3, cond, s.id).uniform(0.0, 180.0)
        np.testing.assert_allclose(a[0, 8:25, 8:25], _motion_kernel(15, angle), atol=1e-6)
        for j in range(i):
            assert not np.allclose(a, out[j], atol=1e-4)  # different ids -> different angles


@pytest.mark.parametrize("name", list(NEW_PARAMS))
def test_new_corruptions_on_tiny_images(name: str) -> None:
    for size in (1, 2, 3, 4, 5):
        for channels in (1, 3):
            img = np.arange(size * size * channels, dtype=np.float32).reshape(size, size, -1)
            img = img[..., 0] if channels == 1 else img
            hi = float(max(1, img.max()))
            for sev in SEVERITIES:
                out = corrupt(img, name, sev, seed=size, value_range=(0.0, hi))
                assert out.shape == img.shape and out.dtype == img.dtype
                assert np.isfinite(out).all() and out.min() >= 0 and out.max() <= hi
    one = np.full((1, 1), 9, np.uint8)
    for name_ in ("motion_blur", "defocus", "pixelate"):
        np.testing.assert_array_equal(corrupt(one, name_, 3), one)


def test_gamma_values() -> None:
    ramp = np.linspace(0, 1, 65, dtype=np.float32).reshape(5, 13)
    lo, hi = -1024.0, 3071.0
    native = lo + ramp * (hi - lo)
    for sev, g in zip(SEVERITIES, NEW_PARAMS["gamma"][1], strict=True):
        out = corrupt(native, "gamma", sev, value_range=(lo, hi))
        np.testing.assert_allclose((out - lo) / (hi - lo), ramp.astype(np.float64) ** g, atol=1e-5)
        assert out.flat[0] == lo and out.flat[-1] == hi  # lo and hi are fixed points
        assert (out <= native + 1e-3).all()  # darkens
