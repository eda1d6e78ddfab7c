"""Reading volumes (issue 13 item 1): 3D NIfTI and DICOM series in canonical RAS+ order, with the
geometry to write predictions back in the original orientation, and every refusal naming its
file. Expected canonical arrays are written out by hand (transposes/flips), not by nibabel."""

from __future__ import annotations

import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from medfail.data.folder import FolderDataset
from medfail.data.geometry import VolumeGeometry
from medfail.data.readers import read_image, read_mask, spatial_dims
from medfail.errors import MedfailInputError

SHAPE = (12, 10, 8)
COLIN = Path("/usr/share/mricron/templates")
CT_SOP_CLASS = "1.2.840.10008.5.1.4.1.1.2"  # CT Image Storage


def _volume(seed: int = 0, shape: tuple[int, ...] = SHAPE) -> np.ndarray:
    return np.random.default_rng(seed).integers(-1000, 1500, shape).astype(np.int16)


def _save_nifti(data: np.ndarray, affine: np.ndarray, path: Path, unit: str = "mm") -> Path:
    img = nib.Nifti1Image(data, affine)
    img.header.set_xyzt_units(unit)
    nib.save(img, str(path))
    return path


def _error(fn, *args) -> str:
    with pytest.raises(MedfailInputError) as info:
        fn(*args)
    return str(info.value)


# file axis 0 -> world -x (towards Left, 0.7 mm), axis 1 -> +z (Superior, 2.5 mm),
# axis 2 -> -y (Posterior, 0.8 mm): swapped and flipped
PERMUTED = np.array([[-0.7, 0.0, 0.0, 10.0],
                     [0.0, 0.0, -0.8, 5.0],
                     [0.0, 2.5, 0.0, -3.0],
                     [0.0, 0.0, 0.0, 1.0]])


def _permuted_expected(a: np.ndarray) -> np.ndarray:
    """The canonical (R, A, S) array of a file with the PERMUTED affine, by hand: R = file axis 0
    flipped, A = file axis 2 flipped, S = file axis 1."""
    return a[::-1, :, ::-1].transpose(0, 2, 1)


# ---------------------------------------------------------------------------- NIfTI


def test_nifti_permuted_affine_is_canonical(tmp_path: Path) -> None:
    a = _volume()
    r = read_image(_save_nifti(a, PERMUTED, tmp_path / "v.nii.gz"))
    assert r.array.dtype == np.float32 and r.array.shape == (1, 12, 8, 10)
    np.testing.assert_array_equal(r.array[0], _permuted_expected(a))
    assert r.spacing == (0.7, 0.8, 2.5)  # follows the canonical axes
    assert r.value_range == (float(a.min()), float(a.max())) and r.integer and r.modality == ""
    g = r.geometry
    assert isinstance(g, VolumeGeometry) and g.source == "nifti"
    assert g.original_shape == SHAPE and g.shape == (12, 8, 10)
    np.testing.assert_allclose(g.original_affine, PERMUTED)
    # the canonical affine is diagonal positive (RAS+) and maps every canonical voxel to the same
    # world point as the file voxel it came from
    assert np.all(np.diag(g.affine)[:3] > 0)
    np.testing.assert_allclose(g.affine[:3, :3], np.diag([0.7, 0.8, 2.5]), atol=1e-6)
    for i, j, k in [(0, 0, 0), (3, 7, 2), (11, 9, 7)]:  # file voxel (i, j, k)
        canon = (11 - i, 7 - k, j)
        np.testing.assert_allclose(g.affine @ [*canon, 1], PERMUTED @ [i, j, k, 1], atol=1e-5)
        assert r.array[(0, *canon)] == a[i, j, k]
    ref = nib.as_closest_canonical(nib.load(tmp_path / "v.nii.gz"))  # nibabel agrees
    np.testing.assert_array_equal(r.array[0], ref.get_fdata())
    np.testing.assert_allclose(g.affine, ref.affine, atol=1e-6)


def test_nifti_lps_affine_flips_x_and_y(tmp_path: Path) -> None:
    a = _volume(1)
    lps_like = np.diag([-0.9, -0.9, 3.0, 1.0])
    r = read_image(_save_nifti(a, lps_like, tmp_path / "v.nii"))
    np.testing.assert_array_equal(r.array[0], a[::-1, ::-1, :])
    assert r.spacing == (0.9, 0.9, 3.0)
    m = read_mask(_save_nifti((a > 0).astype(np.uint8), lps_like, tmp_path / "m.nii"))
    assert m.dtype == np.int64
    np.testing.assert_array_equal(m, (a > 0)[::-1, ::-1, :])


def test_to_original_round_trips_and_save_nifti_overlays(tmp_path: Path) -> None:
    a = _volume(2)
    src = _save_nifti(a, PERMUTED, tmp_path / "scan.nii.gz")
    r = read_image(src)
    g = r.geometry
    assert g is not None
    np.testing.assert_array_equal(g.to_original(r.array[0]), a)  # exact, no resampling
    probs = np.stack([r.array[0], -r.array[0]], axis=-1)  # trailing axes follow
    np.testing.assert_array_equal(g.to_original(probs)[..., 1], -a)
    prediction = (r.array[0] > 300).astype(np.int64)  # a "prediction" on the canonical array
    out = nib.load(g.save_nifti(prediction, tmp_path / "pred.nii.gz"))
    assert out.shape == SHAPE and out.get_data_dtype() == np.uint8
    np.testing.assert_allclose(out.affine, PERMUTED, atol=1e-6)
    np.testing.assert_array_equal(np.asarray(out.dataobj), a > 300)  # voxel for voxel
    with pytest.raises(ValueError, match="canonical shape"):
        g.to_original(np.zeros(SHAPE))


def test_nifti_scaling_units_and_trailing_singleton(tmp_path: Path) -> None:
    a = _volume(3, (6, 5, 4))
    img = nib.Nifti1Image(a[..., None], np.diag([0.002, 0.002, 0.005, 1.0]))  # (X, Y, Z, 1)
    img.header.set_xyzt_units("meter")
    img.header.set_slope_inter(2.0, -1024.0)
    nib.save(img, str(tmp_path / "s.nii.gz"))
    r = read_image(tmp_path / "s.nii.gz")
    assert r.array.shape == (1, 6, 5, 4)
    np.testing.assert_array_equal(r.array[0], a * 2.0 - 1024.0)
    assert r.spacing == pytest.approx((2.0, 2.0, 5.0))  # metres -> mm
    np.testing.assert_allclose(r.geometry.affine[:3, :3], np.diag([2.0, 2.0, 5.0]), atol=1e-4)
    assert not r.integer  # float after scaling
    assert r.value_range == (float(a.min() * 2 - 1024), float(a.max() * 2 - 1024))


def test_nifti_default_header_spacing_unknown(tmp_path: Path) -> None:
    nib.save(nib.Nifti1Image(_volume(4, (4, 4, 3)), None), str(tmp_path / "d.nii"))
    r = read_image(tmp_path / "d.nii")  # no units, zooms 1, neither sform nor qform
    assert r.spacing is None and r.geometry is not None
    nib.save(nib.Nifti1Image(_volume(4, (4, 4, 3)), np.eye(4)), str(tmp_path / "s.nii"))
    assert read_image(tmp_path / "s.nii").spacing == (1.0, 1.0, 1.0)  # sform set: a real grid


def test_2d_nifti_unchanged(tmp_path: Path) -> None:
    data = np.arange(12, dtype=np.int16).reshape(3, 4)
    for shape in ((3, 4), (3, 4, 1), (3, 4, 1, 1)):
        path = _save_nifti(data.reshape(shape), np.diag([0.5, 0.8, 1.0, 1.0]),
                           tmp_path / f"n{len(shape)}.nii.gz")
        r = read_image(path)
        assert r.geometry is None and r.array.shape == (1, 4, 3)
        np.testing.assert_array_equal(r.array[0], data.T)
        assert r.spacing == pytest.approx((0.8, 0.5)) and spatial_dims(path) == 2


def test_volume_size_checked_from_header(tmp_path: Path, monkeypatch) -> None:
    path = _save_nifti(_volume(5), np.eye(4), tmp_path / "big.nii.gz")
    monkeypatch.setenv("MEDFAIL_MAX_IMAGE_BYTES", "1K")
    assert "big.nii.gz" in (msg := _error(read_image, path)) and "12 x 10 x 8" in msg


# ---------------------------------------------------------------------------- DICOM series


def write_dicom_series(folder: Path, hu: np.ndarray, spacing: tuple[float, float, float] = (
        0.7, 0.7, 2.5), origin: tuple[float, float, float] = (-40.0, -30.0, 100.0),
        seed: int = 0, series_uid: str = "1.2.3.4.5", positions: list[float] | None = None,
        ) -> Path:
    """Axial CT slices of ``hu`` (array ``(column, row, slice)``, i.e. (x, y, z) in LPS voxel
    order) with RescaleIntercept -1024 and a slope that alternates 1 / 2 per slice, saved under
    shuffled random file names (half ``.dcm``, half without suffix). Patient tags are set."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    n = hu.shape[2]
    names = [f"IM{v:05d}" + (".dcm" if v % 2 else "") for v in rng.permutation(n) * 7 + 11]
    for k in range(n):
        slope = 1.0 + k % 2
        stored = np.round((hu[:, :, k].T + 1024.0) / slope).astype(np.uint16)  # (rows, cols)
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = CT_SOP_CLASS
        meta.MediaStorageSOPInstanceUID = f"1.2.3.4.6.{k}"
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds = Dataset()
        ds.file_meta = meta
        ds.SOPClassUID, ds.SOPInstanceUID = CT_SOP_CLASS, f"1.2.3.4.6.{k}"
        ds.PatientName, ds.PatientID = "Doe^Jane", "PIDQX42917"
        ds.Modality, ds.SeriesInstanceUID = "CT", series_uid
        z = origin[2] + k * spacing[2] if positions is None else positions[k]
        ds.ImagePositionPatient = [origin[0], origin[1], z]
        ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
        ds.PixelSpacing = [spacing[1], spacing[0]]  # (between rows, between columns)
        ds.SliceThickness = 5.0  # deliberately not the gap
        ds.Rows, ds.Columns = stored.shape
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
        ds.RescaleSlope, ds.RescaleIntercept = slope, -1024.0
        ds.PixelData = stored.tobytes()
        ds.save_as(folder / names[k], enforce_file_format=True)
    return folder


def _ct(seed: int = 0, shape: tuple[int, ...] = SHAPE) -> np.ndarray:
    """HU values representable with slope 2 (even) and 1."""
    return (np.random.default_rng(seed).integers(-500, 1000, shape) * 2).astype(np.float64)


def _lps_nifti_affine(spacing, origin) -> np.ndarray:
    """The RAS affine of the (x, y, z) LPS voxel array of an axial series, written out."""
    return np.array([[-spacing[0], 0, 0, -origin[0]],
                     [0, -spacing[1], 0, -origin[1]],
                     [0, 0, spacing[2], origin[2]],
                     [0, 0, 0, 1.0]])


def test_dicom_series_equals_equivalent_nifti(tmp_path: Path) -> None:
    hu = _ct()
    series = write_dicom_series(tmp_path / "images" / "case1", hu)
    ref = read_image(_save_nifti(hu.astype(np.int16), _lps_nifti_affine((0.7, 0.7, 2.5), (
        -40.0, -30.0, 100.0)), tmp_path / "case1.nii.gz"))
    r = read_image(series)
    assert r.array.shape == (1, 12, 10, 8) and r.modality == "CT" and r.integer
    np.testing.assert_array_equal(r.array, ref.array)
    np.testing.assert_array_equal(r.array[0], hu[::-1, ::-1, :])  # LPS -> RAS: flip x and y
    assert r.spacing == pytest.approx((0.7, 0.7, 2.5))  # the gap, not SliceThickness 5.0
    assert ref.spacing == pytest.approx(r.spacing)
    np.testing.assert_allclose(r.geometry.affine, ref.geometry.affine, atol=1e-5)
    assert r.geometry.source == "dicom" and r.geometry.original_shape == SHAPE
    assert r.value_range == (float(hu.min()), float(hu.max()))
    assert spatial_dims(series) == 3


def test_dicom_series_sorted_by_position_not_name(tmp_path: Path) -> None:
    hu = _ct(1)
    z = [100.0 - 2.5 * k for k in range(8)]  # instance order runs feet-wards
    r = read_image(write_dicom_series(tmp_path / "s", hu, positions=z))
    np.testing.assert_array_equal(r.array[0], hu[::-1, ::-1, ::-1])
    assert r.spacing == pytest.approx((0.7, 0.7, 2.5))


def test_dicom_series_reads_no_patient_tag(tmp_path: Path, monkeypatch) -> None:
    import pydicom

    series = write_dicom_series(tmp_path / "s", _ct(2, (4, 3, 3)))
    calls: list[dict] = []
    real = pydicom.dcmread

    def spy(*args, **kwargs):
        calls.append(kwargs)
        ds = real(*args, **kwargs)
        assert "PatientName" not in ds and "PatientID" not in ds
        return ds

    monkeypatch.setattr(pydicom, "dcmread", spy)
    read_image(series)
    assert len(calls) == 6 and all(c.get("specific_tags") for c in calls)


def _series_error(folder: Path) -> str:
    msg = _error(read_image, folder)
    assert str(folder) in msg
    return msg


def test_dicom_series_refusals_name_the_folder(tmp_path: Path) -> None:
    import pydicom

    hu = _ct(3, (4, 3, 5))
    # mixed series
    mixed = write_dicom_series(tmp_path / "mixed", hu)
    other = write_dicom_series(tmp_path / "other", hu[:, :, :1], series_uid="9.9.9",
                               positions=[150.0])
    shutil.copy(next(other.iterdir()), mixed / "extra.dcm")
    assert "more than one DICOM series" in _series_error(mixed)
    # differing orientation
    bent = write_dicom_series(tmp_path / "bent", hu)
    path = sorted(bent.iterdir())[0]
    ds = pydicom.dcmread(path)
    ds.ImageOrientationPatient = [1, 0, 0, 0, 0.8, 0.6]
    ds.save_as(path)
    assert "different orientations" in _series_error(bent)
    # differing size
    sized = write_dicom_series(tmp_path / "sized", hu)
    path = sorted(sized.iterdir())[0]
    ds = pydicom.dcmread(path)
    ds.Rows, ds.PixelData = 2, ds.PixelData[: 2 * 4 * 2]
    ds.save_as(path)
    assert "different sizes" in _series_error(sized)
    # duplicate positions
    dup = write_dicom_series(tmp_path / "dup", hu, positions=[0.0, 2.5, 2.5, 5.0, 7.5])
    msg = _series_error(dup)
    assert "duplicate slice position" in msg and "2.500 mm" in msg
    # non-uniform gaps: the slice at 5.0 is missing, which slices are named
    gap = write_dicom_series(tmp_path / "gap", hu, positions=[0.0, 2.5, 7.5, 10.0, 12.5])
    msg = _series_error(gap)
    ds = {p.name: float(pydicom.dcmread(p).ImagePositionPatient[2]) for p in gap.iterdir()}
    before = next(n for n, z in ds.items() if z == 2.5)
    after = next(n for n, z in ds.items() if z == 7.5)
    assert "non-uniform slice gaps" in msg and f"{before} -> {after} (5.000 mm)" in msg
    # a single slice
    single = write_dicom_series(tmp_path / "single", hu[:, :, :1])
    assert "at least 2 slices" in _series_error(single)


def test_dicom_series_gantry_tilt_refused(tmp_path: Path) -> None:
    import pydicom

    tilted = write_dicom_series(tmp_path / "tilt", _ct(5, (4, 3, 5)))
    for path in tilted.iterdir():  # y shifts 0.5 mm per 2.5 mm slice: an 11 degree tilt
        ds = pydicom.dcmread(path)
        x, y, z = (float(v) for v in ds.ImagePositionPatient)
        ds.ImagePositionPatient = [x, y + 0.2 * (z - 100.0), z]
        ds.save_as(path)
    assert "gantry tilt" in _series_error(tilted)


def test_dicom_series_tiny_gap_jitter_accepted(tmp_path: Path) -> None:
    z = [0.0, 2.5, 5.01, 7.5, 10.0]  # 0.4 % off: rounding in real headers
    r = read_image(write_dicom_series(tmp_path / "j", _ct(4, (4, 3, 5)), positions=z))
    assert r.spacing == pytest.approx((0.7, 0.7, 2.5))


# ---------------------------------------------------------------------------- folder datasets


def _nifti_folder(root: Path, n: int = 3, affine: np.ndarray = PERMUTED) -> Path:
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    for i in range(n):
        a = _volume(10 + i)
        _save_nifti(a, affine, root / "images" / f"case{i}.nii.gz")
        _save_nifti((a > 800).astype(np.uint8), affine, root / "masks" / f"case{i}.nii.gz")
    return root


def test_folder_dataset_of_nifti_volumes(tmp_path: Path) -> None:
    root = _nifti_folder(tmp_path / "d")
    ds = FolderDataset(root, "segmentation")
    assert ds.spatial_dims == 3
    ds.validate(progress=False)
    s = ds.load("case1")
    a = _volume(11)
    assert s.image.shape == (1, 12, 8, 10) and s.spacing == (0.7, 0.8, 2.5)
    np.testing.assert_array_equal(s.image[0], _permuted_expected(a))
    np.testing.assert_array_equal(s.mask, _permuted_expected(a > 800))
    assert s.geometry is not None and s.geometry.original_shape == SHAPE
    assert ds.mask_mode_info["mode"] == "binary"
    assert [x.id for x in ds] == ["case0", "case1", "case2"]


def test_folder_dataset_of_dicom_series(tmp_path: Path) -> None:
    root = tmp_path / "d"
    origin = (-40.0, -30.0, 100.0)
    for i in range(2):
        hu = _ct(20 + i)
        write_dicom_series(root / "images" / f"ct{i}", hu, seed=i)
        (root / "masks").mkdir(exist_ok=True)
        _save_nifti((hu > 500).astype(np.uint8), _lps_nifti_affine((0.7, 0.7, 2.5), origin),
                    root / "masks" / f"ct{i}.nii.gz")
    ds = FolderDataset(root, "segmentation")
    assert ds.spatial_dims == 3 and ds.ids == ["ct0", "ct1"]
    assert ds.image_relpath("ct0") == "images/ct0"
    ds.validate(progress=False)
    s = ds.load("ct1")
    assert s.modality == "CT" and s.spacing == pytest.approx((0.7, 0.7, 2.5))
    assert s.geometry is not None and s.geometry.source == "dicom"
    np.testing.assert_array_equal(s.mask, (_ct(21) > 500)[::-1, ::-1, :])
    out = nib.load(s.geometry.save_nifti(s.mask, tmp_path / "pred.nii.gz"))  # series' grid
    np.testing.assert_array_equal(np.asarray(out.dataobj), _ct(21) > 500)
    np.testing.assert_allclose(out.affine, _lps_nifti_affine((0.7, 0.7, 2.5), origin),
                               atol=1e-5)
    before = ds.content_hash()
    path = sorted((root / "images" / "ct1").iterdir())[3]  # any one slice changes the hash
    path.write_bytes(path.read_bytes()[:-2] + b"\x01\x00")
    assert FolderDataset(root, "segmentation").content_hash() != before


def test_mask_with_shifted_affine_names_both_files(tmp_path: Path) -> None:
    root = _nifti_folder(tmp_path / "d", n=2)
    shifted = PERMUTED.copy()
    shifted[0, 3] += 2.0
    _save_nifti((_volume(11) > 800).astype(np.uint8), shifted, root / "masks" / "case1.nii.gz")
    ds = FolderDataset(root, "segmentation")
    for fn in (ds.validate, lambda: ds.load("case1")):
        msg = _error(fn)
        assert "mask affine differs from image affine (max 2 mm)" in msg
        assert "masks/case1.nii.gz vs images/case1.nii.gz" in msg


def test_mask_in_another_orientation_same_grid_accepted(tmp_path: Path) -> None:
    """A mask stored LPS-flipped over the same world grid is the same mask after
    canonicalisation."""
    root = _nifti_folder(tmp_path / "d", n=1)
    a = _volume(10)
    m = (a > 800).astype(np.uint8)[::-1]  # file axis 0 reversed...
    flipped = PERMUTED.copy()
    flipped[:, 0] *= -1  # ...so it runs the other way
    flipped[:3, 3] = PERMUTED[:3, :3] @ [11, 0, 0] + PERMUTED[:3, 3]
    _save_nifti(m, flipped, root / "masks" / "case0.nii.gz")
    s = FolderDataset(root, "segmentation").load("case0")
    np.testing.assert_array_equal(s.mask, _permuted_expected(a > 800))


def test_mask_shape_and_kind_refused_naming_both(tmp_path: Path) -> None:
    root = _nifti_folder(tmp_path / "d", n=1)
    _save_nifti(np.zeros((12, 10, 7), np.uint8), PERMUTED, root / "masks" / "case0.nii.gz")
    msg = _error(lambda: FolderDataset(root, "segmentation").load("case0"))
    assert "does not match image shape" in msg and "masks/case0.nii.gz vs images/case0" in msg
    (root / "masks" / "case0.nii.gz").unlink()
    from PIL import Image

    Image.fromarray(np.zeros((10, 12), np.uint8)).save(root / "masks" / "case0.png")
    msg = _error(lambda: FolderDataset(root, "segmentation").validate(progress=False))
    assert "must be a 3D NIfTI" in msg and "masks/case0.png vs images/case0.nii.gz" in msg


def test_mixed_2d_and_3d_refused(tmp_path: Path) -> None:
    root = _nifti_folder(tmp_path / "d", n=1)
    _save_nifti(np.zeros((12, 10), np.uint8), np.eye(4), root / "images" / "flat.nii.gz")
    _save_nifti(np.zeros((12, 10), np.uint8), np.eye(4), root / "masks" / "flat.nii.gz")
    msg = _error(FolderDataset, root, "segmentation")
    assert "mixes 2D images and 3D volumes" in msg
    assert "images/flat.nii.gz is 2D" in msg and "images/case0.nii.gz is 3D" in msg


def test_non_dicom_folder_in_images_refused(tmp_path: Path) -> None:
    root = _nifti_folder(tmp_path / "d", n=1)
    (root / "images" / "sub").mkdir()
    (root / "images" / "sub" / "x.png").write_bytes(b"png")
    msg = _error(FolderDataset, root, "segmentation")
    assert "sub" in msg and "unexpected folder" in msg


def test_volume_metadata_spacing(tmp_path: Path) -> None:
    root = tmp_path / "d"
    (root / "images").mkdir(parents=True)
    nib.save(nib.Nifti1Image(_volume(0, (4, 4, 3)), None), str(root / "images" / "a.nii"))
    (root / "metadata.csv").write_text("id,pixel_spacing\na,0.5x0.5x3\n")
    (root / "labels.csv").write_text("id,x\na,1\n")
    ds = FolderDataset(root, "classification")
    assert ds.load("a").spacing == (0.5, 0.5, 3.0)  # the header states none (default zooms)
    (root / "metadata.csv").write_text("id,pixel_spacing\na,0.5x0.5\n")
    assert "x y z" in _error(FolderDataset, root, "classification")


# ---------------------------------------------------------------------------- a real scan


def test_colin27_real_volume_and_brain_mask(tmp_path: Path) -> None:
    """The Colin27 T1 template (mricron-data) read like nibabel's canonical image; its
    brain-extracted copy ch2bet, thresholded > 0, is a mask on the same grid."""
    if not (COLIN / "ch2.nii.gz").is_file() or not (COLIN / "ch2bet.nii.gz").is_file():
        pytest.skip(f"{COLIN}/ch2.nii.gz and ch2bet.nii.gz (Debian package mricron-data) absent")
    ref = nib.as_closest_canonical(nib.load(COLIN / "ch2.nii.gz"))
    r = read_image(COLIN / "ch2.nii.gz")
    np.testing.assert_array_equal(r.array[0], ref.get_fdata(dtype=np.float32))
    np.testing.assert_allclose(r.geometry.affine, ref.affine, atol=1e-5)
    assert r.spacing == pytest.approx(tuple(float(z) for z in ref.header.get_zooms()[:3]))
    root = tmp_path / "colin"
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    shutil.copy(COLIN / "ch2.nii.gz", root / "images" / "ch2.nii.gz")
    bet = nib.load(COLIN / "ch2bet.nii.gz")
    brain = (np.asanyarray(bet.dataobj) > 0).astype(np.uint8)
    nib.save(nib.Nifti1Image(brain, bet.affine), str(root / "masks" / "ch2.nii.gz"))
    s = FolderDataset(root, "segmentation").load("ch2")
    assert s.mask.shape == s.image.shape[1:] and 0.05 < s.mask.mean() < 0.5
    assert s.image[0][s.mask == 1].mean() > s.image[0][s.mask == 0].mean()


# ---------------------------------------------------------------------------- masks and memory


def test_3d_instance_masks_use_3d_connected_components(tmp_path: Path) -> None:
    """The auto mask-mode rule counts pieces in 3D with full (26-)connectivity: 25 objects that
    are staircases along z, their voxels touching only at edges (8 pieces each with face
    connectivity, 1 with full) -> instance maps, each object one piece."""
    root = tmp_path / "d"
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    inst = np.zeros((16, 10, 8), np.uint16)
    for n in range(25):
        i, j = 3 * (n % 5), 2 * (n // 5)
        for t in range(8):
            inst[i + t % 2, j, t] = n + 1
    _save_nifti(_volume(0, (16, 10, 8)), np.eye(4), root / "images" / "a.nii.gz")
    _save_nifti(inst, np.eye(4), root / "masks" / "a.nii.gz")
    ds = FolderDataset(root, "segmentation")
    assert ds.mask_mode_info["mode"] == "instances"
    assert "each one connected object" in ds.mask_mode_info["message"]
    s = ds.load("a")
    assert s.instances is not None and len(np.unique(s.instances)) == 26


def _peak_validate_and_load(root: Path) -> int:
    import tracemalloc

    ds = FolderDataset(root, "segmentation")
    tracemalloc.start()
    ds.validate(progress=False)
    for sample in ds:
        del sample
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    return peak


def test_memory_holds_one_volume(tmp_path: Path) -> None:
    """Validating and iterating 8 volumes peaks at most 1.2x the memory of 1 volume."""
    shape = (48, 40, 32)
    for n in (1, 8):
        (tmp_path / f"n{n}" / "images").mkdir(parents=True)
        (tmp_path / f"n{n}" / "masks").mkdir()
        for i in range(n):
            a = _volume(i, shape)
            _save_nifti(a, PERMUTED, tmp_path / f"n{n}" / "images" / f"v{i}.nii.gz")
            _save_nifti((a > 900).astype(np.uint8), PERMUTED,
                        tmp_path / f"n{n}" / "masks" / f"v{i}.nii.gz")
    one, eight = (_peak_validate_and_load(tmp_path / f"n{n}") for n in (1, 8))
    assert eight <= 1.2 * one, (one, eight)
