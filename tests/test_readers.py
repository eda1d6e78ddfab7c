"""Readers: every supported format written by the test itself, plus the bad-input errors."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import tifffile
from PIL import Image
from pydicom import examples

from medfail.data.readers import IMAGE_SUFFIXES, image_id, read_image, read_mask
from medfail.errors import MedfailInputError

RNG = np.random.default_rng(0)


def _gray8(h: int = 12, w: int = 10) -> np.ndarray:
    return RNG.integers(0, 256, (h, w), dtype=np.uint8)


def _error(fn, path: Path) -> str:
    with pytest.raises(MedfailInputError) as info:
        fn(path)
    msg = str(info.value)
    assert path.name in msg
    return msg


# ---------------------------------------------------------------------------- ids / suffixes


def test_image_id_handles_double_suffix() -> None:
    assert image_id("a/case7.nii.gz") == "case7"
    assert image_id("case.v2.PNG") == "case.v2"
    assert ".nii.gz" in IMAGE_SUFFIXES and ".npy" in IMAGE_SUFFIXES


# ---------------------------------------------------------------------------- Pillow formats


def test_png_gray8(tmp_path: Path) -> None:
    a = _gray8()
    Image.fromarray(a).save(tmp_path / "g.png")
    r = read_image(tmp_path / "g.png")
    assert r.array.shape == (1, 12, 10) and r.array.dtype == np.float32
    np.testing.assert_array_equal(r.array[0], a)
    assert r.value_range == (0.0, 255.0) and r.integer
    assert r.spacing is None and r.modality == ""


def test_png_16bit_scaled_by_bit_depth(tmp_path: Path) -> None:
    # was: per-image (min, max) range in raw counts; now 16-bit is put on the 8-bit full scale
    a = np.linspace(100, 40000, 120).astype(np.uint16).reshape(12, 10)
    img = Image.fromarray(a)
    assert img.mode == "I;16"
    img.save(tmp_path / "g16.png")
    r = read_image(tmp_path / "g16.png")
    np.testing.assert_allclose(r.array[0], a / 257.0, rtol=1e-6)
    assert r.value_range == (0.0, 255.0) and not r.integer


def test_constant_16bit_range_is_the_full_scale(tmp_path: Path) -> None:
    Image.fromarray(np.full((4, 4), 7, np.uint16)).save(tmp_path / "c.png")
    assert read_image(tmp_path / "c.png").value_range == (0.0, 255.0)


def test_rgb_jpeg(tmp_path: Path) -> None:
    a = np.zeros((16, 20, 3), np.uint8)
    a[..., 0] = 200
    Image.fromarray(a).save(tmp_path / "c.jpg", quality=95)
    r = read_image(tmp_path / "c.jpg")
    assert r.array.shape == (3, 16, 20)
    assert abs(r.array[0].mean() - 200) < 3 and r.array[2].mean() < 3
    assert r.value_range == (0.0, 255.0) and r.modality == "RGB"


def test_rgba_png_drops_alpha(tmp_path: Path) -> None:
    a = RNG.integers(0, 256, (8, 9, 4), dtype=np.uint8)
    Image.fromarray(a, "RGBA").save(tmp_path / "a.png")
    r = read_image(tmp_path / "a.png")
    assert r.array.shape == (3, 8, 9)
    np.testing.assert_array_equal(r.array, np.moveaxis(a[..., :3], -1, 0))


def test_palette_png_image_converted_mask_keeps_indices(tmp_path: Path) -> None:
    idx = np.array([[0, 1], [2, 1]], np.uint8)
    img = Image.fromarray(idx, "P")
    img.putpalette([0, 0, 0, 255, 0, 0, 0, 255, 0] + [0] * 759)
    img.save(tmp_path / "p.png")
    r = read_image(tmp_path / "p.png")
    assert r.array.shape == (3, 2, 2) and r.array[0, 0, 1] == 255 and r.array[1, 1, 0] == 255
    np.testing.assert_array_equal(read_mask(tmp_path / "p.png"), idx)


# ---------------------------------------------------------------------------- TIFF


def test_tiff_16bit(tmp_path: Path) -> None:
    a = np.arange(30, dtype=np.uint16).reshape(5, 6) * 1000
    tifffile.imwrite(tmp_path / "t.tif", a)
    r = read_image(tmp_path / "t.tif")
    np.testing.assert_allclose(r.array[0], a / 257.0, rtol=1e-6)  # BitsPerSample 16 -> 0..255
    assert r.value_range == (0.0, 255.0) and not r.integer


def test_tiff_float(tmp_path: Path) -> None:
    a = np.linspace(-1.5, 2.5, 30, dtype=np.float32).reshape(5, 6)
    tifffile.imwrite(tmp_path / "f.tiff", a)
    r = read_image(tmp_path / "f.tiff")
    np.testing.assert_allclose(r.array[0], a)
    assert r.value_range == (-1.5, 2.5) and not r.integer


def test_tiff_rgb_and_planar(tmp_path: Path) -> None:
    a = RNG.integers(0, 256, (5, 6, 3), dtype=np.uint8)
    tifffile.imwrite(tmp_path / "rgb.tif", a, photometric="rgb")
    tifffile.imwrite(tmp_path / "planar.tif", np.moveaxis(a, -1, 0), photometric="rgb",
                     planarconfig="separate")
    for name in ("rgb.tif", "planar.tif"):
        r = read_image(tmp_path / name)
        np.testing.assert_array_equal(r.array, np.moveaxis(a, -1, 0))
        assert r.modality == "RGB"


def test_tiff_stack_rejected(tmp_path: Path) -> None:
    tifffile.imwrite(tmp_path / "stack.tif", np.zeros((5, 8, 8), np.uint16))
    assert "3D" in _error(read_image, tmp_path / "stack.tif")


# ---------------------------------------------------------------------------- npy


def test_npy_layouts(tmp_path: Path) -> None:
    a = RNG.random((3, 7, 9)).astype(np.float32)
    np.save(tmp_path / "hw.npy", a[0])
    np.save(tmp_path / "chw.npy", a)
    np.save(tmp_path / "hwc.npy", np.moveaxis(a, 0, -1))
    np.testing.assert_array_equal(read_image(tmp_path / "hw.npy").array, a[:1])
    np.testing.assert_array_equal(read_image(tmp_path / "chw.npy").array, a)
    r = read_image(tmp_path / "hwc.npy")
    np.testing.assert_array_equal(r.array, a)
    assert not r.integer and r.value_range == (0.0, 1.0)  # floats within [0, 1]: unit scale
    np.save(tmp_path / "wide.npy", a * 3 - 1)  # other floats: the image's own range
    assert read_image(tmp_path / "wide.npy").value_range == (float((a * 3 - 1).min()),
                                                             float((a * 3 - 1).max()))


def test_npy_volume_rejected(tmp_path: Path) -> None:
    np.save(tmp_path / "vol.npy", np.zeros((16, 8, 8), np.int16))
    assert "3D volume not supported" in _error(read_image, tmp_path / "vol.npy")


def test_npy_nan_rejected(tmp_path: Path) -> None:
    np.save(tmp_path / "nan.npy", np.array([[0.0, np.nan]]))
    assert "NaN" in _error(read_image, tmp_path / "nan.npy")


# ---------------------------------------------------------------------------- NIfTI


def test_nifti_2d_spacing_and_orientation(tmp_path: Path) -> None:
    data = np.arange(12, dtype=np.int16).reshape(3, 4)  # (X, Y)
    img = nib.Nifti1Image(data, np.eye(4))
    img.header.set_zooms((0.5, 0.8))
    nib.save(img, tmp_path / "n.nii.gz")
    r = read_image(tmp_path / "n.nii.gz")
    assert r.array.shape == (1, 4, 3)  # (rows, cols) = (Y, X)
    np.testing.assert_array_equal(r.array[0], data.T)
    assert r.spacing == pytest.approx((0.8, 0.5))
    assert r.integer


def test_nifti_xy1_and_default_zooms(tmp_path: Path) -> None:
    nib.save(nib.Nifti1Image(np.ones((3, 4, 1), np.float32), np.eye(4)), tmp_path / "n.nii")
    r = read_image(tmp_path / "n.nii")
    assert r.array.shape == (1, 4, 3) and r.spacing is None


def test_nifti_4d_rejected(tmp_path: Path) -> None:  # 3D volumes: tests/test_volumes_io.py
    nib.save(nib.Nifti1Image(np.zeros((4, 4, 3, 2), np.int16), np.eye(4)), tmp_path / "v.nii.gz")
    assert "4D NIfTI image" in _error(read_image, tmp_path / "v.nii.gz")


# ---------------------------------------------------------------------------- DICOM


def _save_dicom(ds, path: Path) -> Path:
    ds.save_as(path)
    return path


def test_dicom_ct_in_hounsfield(tmp_path: Path) -> None:
    path = _save_dicom(examples.ct, tmp_path / "ct.dcm")
    r = read_image(path)
    assert r.array.shape == (1, 128, 128)
    assert r.modality == "CT"
    assert r.spacing == pytest.approx((0.661468, 0.661468))
    # raw stored minimum is 128; intercept -1024 puts air/background near -900 HU
    assert -1100 < r.array.min() < -800
    assert r.value_range == (float(r.array.min()), float(r.array.max()))
    assert r.integer


def test_dicom_mr(tmp_path: Path) -> None:
    r = read_image(_save_dicom(examples.mr, tmp_path / "mr.dcm"))
    assert r.array.shape == (1, 64, 64) and r.modality == "MR"
    assert r.spacing == pytest.approx((0.3125, 0.3125))


def test_dicom_monochrome1_inverted(tmp_path: Path) -> None:
    ds = examples.mr
    normal = read_image(_save_dicom(ds, tmp_path / "m2.dcm")).array
    ds.PhotometricInterpretation = "MONOCHROME1"
    inverted = read_image(_save_dicom(ds, tmp_path / "m1.dcm")).array
    np.testing.assert_array_equal(inverted, normal.min() + normal.max() - normal)


def test_dicom_multiframe_rejected(tmp_path: Path) -> None:
    ds = examples.ct
    ds.NumberOfFrames = 2
    path = _save_dicom(ds, tmp_path / "mf.dcm")
    assert "multi-frame DICOM not supported" in _error(read_image, path)


# ---------------------------------------------------------------------------- read errors


def test_truncated_png_names_file(tmp_path: Path) -> None:
    Image.fromarray(_gray8(64, 64)).save(tmp_path / "bad.png")
    data = (tmp_path / "bad.png").read_bytes()
    (tmp_path / "bad.png").write_bytes(data[: len(data) // 2])
    assert "cannot read image" in _error(read_image, tmp_path / "bad.png")


def test_garbage_dicom_names_file(tmp_path: Path) -> None:
    (tmp_path / "junk.dcm").write_bytes(b"not a dicom file at all")
    assert "cannot read image" in _error(read_image, tmp_path / "junk.dcm")


def test_missing_file(tmp_path: Path) -> None:
    assert "cannot read image" in _error(read_image, tmp_path / "gone.png")


def test_unknown_suffix_lists_supported(tmp_path: Path) -> None:
    (tmp_path / "x.bmp").write_bytes(b"BM")
    msg = _error(read_image, tmp_path / "x.bmp")
    assert "unsupported" in msg and ".png" in msg and ".nii.gz" in msg


# ---------------------------------------------------------------------------- masks


def test_mask_png_and_npy(tmp_path: Path) -> None:
    m = RNG.integers(0, 3, (6, 7)).astype(np.uint8)
    Image.fromarray(m).save(tmp_path / "m.png")
    np.save(tmp_path / "m.npy", m.astype(np.float32))
    for name in ("m.png", "m.npy"):
        out = read_mask(tmp_path / name)
        assert out.dtype == np.int64 and out.shape == (6, 7)
        np.testing.assert_array_equal(out, m)


def test_mask_rgb_with_equal_channels_ok(tmp_path: Path) -> None:
    m = RNG.integers(0, 2, (6, 7)).astype(np.uint8)
    Image.fromarray(np.stack([m] * 3, -1)).save(tmp_path / "m.png")
    np.testing.assert_array_equal(read_mask(tmp_path / "m.png"), m)


def test_mask_rgb_colours_rejected(tmp_path: Path) -> None:
    a = np.zeros((4, 4, 3), np.uint8)
    a[0, 0] = (255, 0, 0)
    Image.fromarray(a).save(tmp_path / "m.png")
    assert "channels with different values" in _error(read_mask, tmp_path / "m.png")


def test_mask_non_integer_rejected(tmp_path: Path) -> None:
    np.save(tmp_path / "m.npy", np.array([[0.0, 0.5], [1.0, 1.0]], np.float32))
    assert "non-integer values" in _error(read_mask, tmp_path / "m.npy")


def test_mask_negative_rejected(tmp_path: Path) -> None:
    np.save(tmp_path / "m.npy", np.array([[0, -1], [1, 1]], np.int16))
    assert "negative values" in _error(read_mask, tmp_path / "m.npy")


def test_mask_nifti_float_labels(tmp_path: Path) -> None:
    m = np.array([[0, 1, 2], [2, 1, 0]], np.float32)  # (X, Y)
    nib.save(nib.Nifti1Image(m, np.eye(4)), tmp_path / "m.nii.gz")
    np.testing.assert_array_equal(read_mask(tmp_path / "m.nii.gz"), m.T.astype(np.int64))
