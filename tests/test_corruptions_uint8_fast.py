"""The 8-bit fast paths of ``corrupt`` (jpeg, pixelate) give exactly the general path's output."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from medfail.stress import registry
from medfail.stress.registry import apply_corruption, corrupt


def _general(arr: np.ndarray, name: str, severity: int) -> np.ndarray:
    """``corrupt`` as it was before the fast paths (uint8, range (0, 255)): the reference."""
    chw = arr[None] if arr.ndim == 2 else np.ascontiguousarray(arr.transpose(2, 0, 1))
    x = torch.from_numpy(chw.astype(np.float32))[None]
    vr = torch.tensor([[0.0, 255.0]], dtype=torch.float32)
    y = apply_corruption(x, vr, name, severity, [np.random.default_rng(0)])[0].numpy()
    y = np.clip(np.rint(y), 0, 255).astype(np.uint8)
    return y[0] if arr.ndim == 2 else y.transpose(1, 2, 0)


def _images() -> list[np.ndarray]:
    rng = np.random.default_rng(3)
    yy, xx = np.mgrid[:37, :50]
    smooth = (127 + 100 * np.sin(xx / 5.0) * np.cos(yy / 7.0)).astype(np.uint8)
    noisy = rng.integers(0, 256, (33, 28), dtype=np.uint8)
    extremes = np.where(rng.random((16, 16)) < 0.5, 0, 255).astype(np.uint8)
    rgb = np.stack([smooth, 255 - smooth, noisy[:1].repeat(37, 0)[:, :1].repeat(50, 1)], -1)
    return [smooth, noisy, extremes, rgb, rng.integers(0, 256, (31, 29, 3), dtype=np.uint8)]


@pytest.mark.parametrize("name", ["jpeg", "pixelate"])
@pytest.mark.parametrize("severity", [1, 2, 3])
def test_fast_path_equals_general_path(name: str, severity: int) -> None:
    for img in _images():
        fast = corrupt(img, name, severity)
        assert fast.dtype == np.uint8 and fast.shape == img.shape
        np.testing.assert_array_equal(fast, _general(img, name, severity))


def test_fast_path_taken_only_for_8bit_default_range(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[str] = []

    def spy(fn):
        def wrapped(image, params):
            calls.append(str(image.dtype))
            return fn(image, params)
        return wrapped

    for key in ("jpeg", "pixelate"):
        monkeypatch.setitem(registry.FAST_UINT8, key, spy(registry.FAST_UINT8[key]))
    img = _images()[0]
    corrupt(img, "pixelate", 2)
    corrupt(img, "jpeg", 2)
    assert calls == ["uint8", "uint8"]
    calls.clear()
    corrupt(img.astype(np.float32) / 255, "pixelate", 2, value_range=(0.0, 1.0))
    corrupt(img.astype(np.uint16) * 257, "jpeg", 2)
    corrupt(img, "pixelate", 2, value_range=(10.0, 200.0))
    corrupt(np.repeat(img[..., None], 4, -1), "jpeg", 1)  # 4 channels: general path
    assert calls == ["uint8"]  # only the 4-channel jpeg was offered, and it declined


def test_general_path_float_and_uint16_match_kernel() -> None:
    img = _images()[0]
    f = img.astype(np.float32) / 255
    out = corrupt(f, "pixelate", 2, value_range=(0.0, 1.0))
    ref = _general(img, "pixelate", 2).astype(np.float32) / 255
    np.testing.assert_allclose(out, ref, atol=0.5 / 255 + 1e-6)
    u16 = corrupt(img.astype(np.uint16) * 257, "jpeg", 2, value_range=(0.0, 65535.0))
    assert u16.dtype == np.uint16
    np.testing.assert_array_equal(u16, _general(img, "jpeg", 2).astype(np.uint16) * 257)


@pytest.mark.parametrize("shape", [(256, 256), (250, 251, 3), (101, 77), (64, 64, 3), (5, 3)])
def test_pixelate_fast_path_sizes(shape: tuple[int, ...]) -> None:
    img = np.random.default_rng(len(shape)).integers(0, 256, shape, dtype=np.uint8)
    for severity in (1, 2, 3):
        np.testing.assert_array_equal(corrupt(img, "pixelate", severity),
                                      _general(img, "pixelate", severity))
