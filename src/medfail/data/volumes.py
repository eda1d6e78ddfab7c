"""Read 3D volumes: NIfTI files and DICOM series, in canonical RAS+ order with their geometry.

Conventions (docs/data.md, "Volumes"; :mod:`medfail.data.geometry`):

* An image comes back as :class:`~medfail.data.readers.ImageRead` with float32 ``(1, X, Y, Z)``
  pixels in canonical RAS+ voxel order (``nibabel.as_closest_canonical``: permutation and flips
  only, never resampled), ``spacing = (sx, sy, sz)`` in mm in that order and ``geometry`` (the
  canonical and original affines). A mask comes back as int64 ``(X, Y, Z)`` through the same
  reorientation.
* Intensities keep their stored values: NIfTI after ``scl_slope``/``scl_inter``, DICOM after
  RescaleSlope/Intercept per slice (CT in HU). ``value_range`` and ``integer`` follow
  :func:`~medfail.data.readers.intensity_range` on the whole volume (the volume's own (min, max)
  for anything but uint8/bool/[0, 1] floats), like 2D files.
* NIfTI: a file is a volume when its third axis has more than one voxel; axes after the third
  must be 1 (a trailing singleton, e.g. ``(X, Y, Z, 1)``). Spacing = the header zooms in mm
  (``xyzt_units`` meter/micron converted; unknown = mm; ``None`` only for the header default:
  units unknown, every zoom 1 and neither sform nor qform set); the affines are converted to mm
  likewise.
* DICOM series: a folder ``images/<id>/`` of single-frame slices (any file names). Only pixel
  data, the geometry tags, rescale and Modality are parsed (``pydicom.dcmread`` with
  ``specific_tags``): no patient tag is ever read. Slices are sorted by their position along the
  slice normal ``n = row cosines x column cosines`` (``s_k = ImagePositionPatient_k . n``);
  spacing = PixelSpacing plus the median gap between consecutive ``s_k`` (not SliceThickness).
  The voxel array is ``(column, row, slice)`` with the LPS affine ``[r * dc, c * dr, n * dz, P_0]``
  (``r``, ``c``: row and column direction cosines, ``dr, dc`` = PixelSpacing, ``P_0`` the first
  slice's position), converted to RAS by ``diag(-1, -1, 1, 1)`` and then brought to canonical
  order like NIfTI.
  Refused (naming the folder): mixed SeriesInstanceUID, differing orientation, size or pixel
  spacing, duplicate positions, gaps differing from the median by more than
  :data:`GAP_TOLERANCE` of it, positions drifting sideways from the normal (gantry tilt), a
  single slice, multi-frame or colour slices.
* Size limit: the declared size (NIfTI header; Rows x Columns x slices) is checked against
  :func:`~medfail.data.readers.max_image_bytes` before any pixel is decoded.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from nibabel import orientations

from medfail.data.geometry import (
    LPS_TO_RAS,
    VolumeGeometry,
    canonical_orientation,
    to_canonical,
    voxel_sizes,
)
from medfail.data.readers import (
    ImageRead,
    check_declared_size,
    check_labels,
    image_suffix,
    intensity_range,
)
from medfail.errors import MedfailInputError, listing

NIFTI_SUFFIXES: tuple[str, ...] = (".nii", ".nii.gz")
#: largest difference between a slice gap and the median gap, as a fraction of the median
GAP_TOLERANCE = 0.01
#: image and mask affines may differ by this much (mm) and still be the same grid
AFFINE_TOLERANCE_MM = 1e-3
#: two slice positions closer than this (mm) are duplicates
DUPLICATE_MM = 1e-3
#: the only DICOM tags a series read parses: geometry, rescale, modality and pixel description
GEOMETRY_TAGS: tuple[str, ...] = (
    "SeriesInstanceUID", "Modality", "ImagePositionPatient", "ImageOrientationPatient",
    "PixelSpacing", "Rows", "Columns", "NumberOfFrames", "SamplesPerPixel", "BitsAllocated",
)
PIXEL_TAGS: tuple[str, ...] = (
    "Rows", "Columns", "NumberOfFrames", "SamplesPerPixel", "BitsAllocated", "BitsStored",
    "HighBit", "PixelRepresentation", "PhotometricInterpretation", "PlanarConfiguration",
    "RescaleSlope", "RescaleIntercept", "RescaleType", "ModalityLUTSequence", "PixelData",
)
_UNIT_MM = {"meter": 1000.0, "micron": 0.001}


# --------------------------------------------------------------------------------------------
# NIfTI


def load_nifti(path: str | Path, mask: bool = False) -> Any:
    """``nibabel.load`` (header only; pixels stay on disk), failures as MedfailInputError."""
    import nibabel as nib

    what = "mask" if mask else "image"
    try:
        return nib.load(str(path))
    except Exception as exc:
        raise MedfailInputError(path, f"cannot read {what} ({_reason(exc)})") from exc


def nifti_is_volume(shape: tuple[int, ...], path: str | Path, mask: bool = False) -> bool:
    """Whether a NIfTI of this shape is a 3D volume (third axis > 1); refuses axes after the
    third that are not 1 (4D series, vector images)."""
    shape = tuple(int(n) for n in shape)
    extra = shape[3:]
    if any(n != 1 for n in extra):
        what = "mask" if mask else "image"
        raise MedfailInputError(
            path, f"{len(shape)}D NIfTI {what} (shape {shape}) not supported: medfail reads one "
            "2D image or 3D volume per file (axes after the third must be 1)")
    return len(shape) >= 3 and shape[2] > 1


def is_volume_path(path: str | Path) -> bool:
    """Whether ``path`` is a volume, from headers only: a folder (DICOM series) or a NIfTI file
    whose third axis has more than one voxel."""
    path = Path(path)
    if path.is_dir():
        return True
    if image_suffix(path) not in NIFTI_SUFFIXES:
        return False
    return nifti_is_volume(load_nifti(path).shape, path)


def _unit_scale(header: Any) -> float:
    unit = header.get_xyzt_units()[0] if hasattr(header, "get_xyzt_units") else "unknown"
    return _UNIT_MM.get(unit, 1.0)


def nifti_geometry(img: Any, path: str | Path) -> tuple[VolumeGeometry, tuple[float, ...] | None]:
    """``(geometry, spacing)`` of a NIfTI volume from its header (no pixel is read). Spacing:
    the zooms in mm permuted to canonical order; ``None`` for the header default (module
    docstring)."""
    shape = tuple(int(n) for n in img.shape[:3])
    header = img.header
    unit = header.get_xyzt_units()[0] if hasattr(header, "get_xyzt_units") else "unknown"
    scale = _unit_scale(header)
    affine = np.array(img.affine, dtype=np.float64)
    affine[:3, :] *= scale
    if not np.all(np.isfinite(affine)) or abs(np.linalg.det(affine[:3, :3])) < 1e-12:
        raise MedfailInputError(path, f"NIfTI affine is singular or not finite:\n{img.affine}")
    ornt = canonical_orientation(affine)
    canonical = affine @ orientations.inv_ornt_aff(ornt, shape)
    geometry = VolumeGeometry(canonical, affine, (shape[0], shape[1], shape[2]), "nifti")
    zooms = [float(z) for z in header.get_zooms()[:3]]
    if unit == "unknown" and zooms == [1.0, 1.0, 1.0] and not _has_space(header):
        return geometry, None
    spacing = [0.0, 0.0, 0.0]
    for axis, zoom in enumerate(zooms):  # float32 header value -> its shortest decimal
        spacing[int(ornt[axis, 0])] = float(str(np.float32(zoom))) * scale
    return geometry, tuple(spacing)


def _has_space(header: Any) -> bool:
    """Whether the header places the voxels in a space (sform or qform code > 0)."""
    try:
        return int(header["sform_code"]) > 0 or int(header["qform_code"]) > 0
    except (KeyError, ValueError, TypeError):
        return False


def _nifti_array(img: Any, path: Path, mask: bool) -> np.ndarray:
    """The stored array (scaling applied) as ``(X, Y, Z)``, size checked first."""
    what = "mask" if mask else "image"
    shape = tuple(int(n) for n in img.shape)
    check_declared_size(path, shape, np.dtype(img.get_data_dtype()).itemsize, mask)
    try:
        data = np.asanyarray(img.dataobj)
    except Exception as exc:
        raise MedfailInputError(path, f"cannot read {what} ({_reason(exc)})") from exc
    if data.dtype.names is not None:
        raise MedfailInputError(path, f"cannot read {what} (RGB NIfTI not supported)")
    data = data.reshape(shape[:3])
    if not data.dtype.isnative:
        data = data.astype(data.dtype.newbyteorder("="))
    return data


def read_nifti_volume(path: str | Path, img: Any = None) -> ImageRead:
    """A 3D NIfTI image as float32 ``(1, X, Y, Z)`` canonical RAS+ (module docstring)."""
    path = Path(path)
    img = load_nifti(path) if img is None else img
    geometry, spacing = nifti_geometry(img, path)
    data = _nifti_array(img, path, mask=False)
    value_range, integer = intensity_range(data, path)
    data, _ = to_canonical(data.astype(np.float32, copy=False), geometry.original_affine)
    return ImageRead(array=data[None], value_range=value_range, integer=integer,
                     spacing=spacing, modality="", geometry=geometry)


def read_nifti_mask(path: str | Path, img: Any = None) -> tuple[np.ndarray, VolumeGeometry]:
    """A 3D NIfTI label map as int64 ``(X, Y, Z)`` canonical RAS+, with its geometry (labels
    checked like 2D masks: integers >= 0, finite)."""
    path = Path(path)
    img = load_nifti(path, mask=True) if img is None else img
    geometry, _ = nifti_geometry(img, path)
    data = check_labels(_nifti_array(img, path, mask=True), path)
    data, _ = to_canonical(data, geometry.original_affine)
    return data, geometry


def mask_geometry(path: str | Path) -> VolumeGeometry | None:
    """The geometry of a mask file from its header (``None`` for a 2D mask or a non-NIfTI
    file): what :func:`check_same_grid` compares without decoding the mask."""
    path = Path(path)
    if image_suffix(path) not in NIFTI_SUFFIXES:
        return None
    img = load_nifti(path, mask=True)
    if not nifti_is_volume(img.shape, path, mask=True):
        return None
    return nifti_geometry(img, path)[0]


def check_same_grid(mask_path: str | Path, mask: VolumeGeometry | None, image_path: str | Path,
                    image: VolumeGeometry, mask_name: str | None = None,
                    image_name: str | None = None) -> None:
    """Refuse a mask whose canonical shape or affine differs from its image's (affines: any
    entry by more than :data:`AFFINE_TOLERANCE_MM`), naming both files (``mask_name`` /
    ``image_name``: how to show them, e.g. relative paths) and the difference."""
    shown_mask = mask_name or str(mask_path)
    shown_image = image_name or str(image_path)
    both = f"{shown_mask} vs {shown_image}"
    if mask is None:
        raise MedfailInputError(
            mask_path, f"the mask of a volume must be a 3D NIfTI file (.nii/.nii.gz) on the "
            f"image's grid: {both}")
    if mask.shape != image.shape:
        raise MedfailInputError(
            mask_path, f"mask shape {mask.shape} does not match image shape {image.shape} "
            f"(canonical RAS order): {both}")
    diff = float(np.max(np.abs(mask.affine - image.affine)))
    if diff > AFFINE_TOLERANCE_MM:
        raise MedfailInputError(
            mask_path, f"mask affine differs from image affine (max {diff:.3g} mm): {both}; "
            "the mask must be drawn on the image's voxel grid (resample it onto the image, "
            "e.g. with nearest-neighbour interpolation)")


# --------------------------------------------------------------------------------------------
# DICOM series


@dataclass
class _Slice:
    path: Path
    position: np.ndarray
    orientation: np.ndarray  # (6,) row cosines then column cosines
    pixel_spacing: tuple[float, float]  # (between rows, between columns) mm
    size: tuple[int, int]  # (rows, columns)
    series: str
    modality: str
    bits: int


def series_files(folder: str | Path) -> list[Path]:
    """The slice files of a DICOM series folder: every visible regular file (any name)."""
    folder = Path(folder)
    files = []
    for entry in sorted(folder.iterdir()):
        if entry.name.startswith(".") or entry.name.upper() == "DICOMDIR":
            continue
        if entry.is_dir():
            raise MedfailInputError(
                entry, "unexpected folder inside a DICOM series folder (one folder per series, "
                "slices directly inside)")
        files.append(entry)
    return files


def looks_like_dicom(path: str | Path) -> bool:
    """Cheap check: the ``DICM`` magic at byte 128, or a ``.dcm`` suffix / no suffix."""
    path = Path(path)
    try:
        with path.open("rb") as fh:
            head = fh.read(132)
    except OSError:
        return False
    return head[128:132] == b"DICM" or path.suffix.lower() in (".dcm", "")


def _header(path: Path, folder: Path) -> _Slice:
    import pydicom

    try:
        ds = pydicom.dcmread(path, force=True, specific_tags=list(GEOMETRY_TAGS))
    except Exception as exc:
        raise MedfailInputError(
            path, f"cannot read DICOM slice of series {folder.name}/ ({_reason(exc)})") from exc
    missing = [t for t in ("ImagePositionPatient", "ImageOrientationPatient", "PixelSpacing",
                           "Rows", "Columns") if ds.get(t) is None]
    if missing:
        raise MedfailInputError(
            path, f"not a slice of a DICOM series (no {', '.join(missing)}); a folder in images/"
            " must hold the DICOM slices of one series")
    frames = int(ds.get("NumberOfFrames", 1) or 1)
    samples = int(ds.get("SamplesPerPixel", 1) or 1)
    if frames > 1 or samples > 1:
        what = f"{frames} frames" if frames > 1 else f"{samples} samples per pixel"
        raise MedfailInputError(
            path, f"DICOM series slices must be single-frame greyscale ({what})")
    try:
        position = np.array([float(v) for v in ds.ImagePositionPatient], dtype=np.float64)
        orientation = np.array([float(v) for v in ds.ImageOrientationPatient], dtype=np.float64)
        spacing = tuple(float(v) for v in ds.PixelSpacing)
    except (TypeError, ValueError) as exc:
        raise MedfailInputError(path, f"bad DICOM geometry tag ({_reason(exc)})") from exc
    if position.shape != (3,) or orientation.shape != (6,) or len(spacing) != 2 or not (
            np.all(np.isfinite(position)) and np.all(np.isfinite(orientation))
            and all(s > 0 for s in spacing)):
        raise MedfailInputError(
            path, "bad DICOM geometry (ImagePositionPatient needs 3 values, "
            "ImageOrientationPatient 6, PixelSpacing 2 positive values)")
    return _Slice(path=path, position=position, orientation=orientation,
                  pixel_spacing=(spacing[0], spacing[1]),
                  size=(int(ds.Rows), int(ds.Columns)),
                  series=str(ds.get("SeriesInstanceUID", "") or ""),
                  modality=str(ds.get("Modality", "") or ""),
                  bits=int(ds.get("BitsAllocated", 16) or 16))


def _check_consistent(folder: Path, slices: list[_Slice]) -> None:
    first = slices[0]
    for s in slices[1:]:
        pair = f"{first.path.name} vs {s.path.name}"
        if s.series != first.series:
            raise MedfailInputError(
                folder, f"holds more than one DICOM series (SeriesInstanceUID differs: {pair}); "
                "put each series in its own folder images/<id>/")
        if not np.allclose(s.orientation, first.orientation, atol=1e-4):
            raise MedfailInputError(
                folder, f"slices have different orientations (ImageOrientationPatient: {pair})")
        if s.size != first.size:
            raise MedfailInputError(
                folder, f"slices have different sizes ({first.size[0]}x{first.size[1]} vs "
                f"{s.size[0]}x{s.size[1]} rows x columns: {pair})")
        if not np.allclose(s.pixel_spacing, first.pixel_spacing, rtol=1e-4, atol=1e-6):
            raise MedfailInputError(
                folder, f"slices have different PixelSpacing ({first.pixel_spacing} vs "
                f"{s.pixel_spacing}: {pair})")


def series_geometry(folder: str | Path) -> tuple[list[Path], np.ndarray, tuple[int, int, int],
                                                  str, int]:
    """Headers of a DICOM series folder, checked: ``(files sorted along the slice normal,
    RAS affine of the (column, row, slice) array, its shape, Modality, BitsAllocated)``."""
    folder = Path(folder)
    files = series_files(folder)
    if len(files) < 2:
        raise MedfailInputError(
            folder, f"a DICOM series needs at least 2 slices, found {len(files)}; store a single"
            " slice as images/<id>.dcm (a 2D image)")
    slices = [_header(p, folder) for p in files]
    _check_consistent(folder, slices)
    row_cos, col_cos = slices[0].orientation[:3], slices[0].orientation[3:]
    normal = np.cross(row_cos, col_cos)
    norm = float(np.linalg.norm(normal))
    if norm < 1e-3:
        raise MedfailInputError(
            folder, f"ImageOrientationPatient of {slices[0].path.name} has parallel row and "
            "column directions")
    normal /= norm
    along = np.array([float(s.position @ normal) for s in slices])
    order = np.argsort(along, kind="stable")
    slices = [slices[i] for i in order]
    along = along[order]
    gaps = np.diff(along)
    dup = np.flatnonzero(gaps < DUPLICATE_MM)
    if len(dup):
        i = int(dup[0])
        raise MedfailInputError(
            folder, f"duplicate slice position {along[i]:.3f} mm along the slice normal: "
            f"{slices[i].path.name} and {slices[i + 1].path.name} ({len(dup)} duplicate(s)); "
            "one series per folder, each slice once")
    gap = float(np.median(gaps))
    bad = np.flatnonzero(np.abs(gaps - gap) > GAP_TOLERANCE * gap)
    if len(bad):
        pairs = [f"{slices[i].path.name} -> {slices[i + 1].path.name} ({gaps[i]:.3f} mm)"
                 for i in bad]
        raise MedfailInputError(
            folder, f"non-uniform slice gaps (median {gap:.3f} mm; these differ by more than "
            f"{GAP_TOLERANCE:.0%}): {listing(pairs, 3)}; missing slices or a mixed series?")
    span = slices[-1].position - slices[0].position
    drift = float(np.linalg.norm(span - normal * (along[-1] - along[0])))
    if drift > GAP_TOLERANCE * gap * (len(slices) - 1):
        raise MedfailInputError(
            folder, f"slice positions drift {drift:.2f} mm sideways from the slice normal "
            f"between {slices[0].path.name} and {slices[-1].path.name} (gantry tilt or a "
            "sheared series); resample it to an orthogonal grid first (e.g. dcm2niix)")
    d_row, d_col = slices[0].pixel_spacing
    lps = np.eye(4)
    lps[:3, 0] = row_cos * d_col  # array axis 0 = column index: along the row direction
    lps[:3, 1] = col_cos * d_row  # array axis 1 = row index: along the column direction
    lps[:3, 2] = normal * gap
    lps[:3, 3] = slices[0].position
    rows, cols = slices[0].size
    shape = (cols, rows, len(slices))
    return [s.path for s in slices], LPS_TO_RAS @ lps, shape, slices[0].modality, slices[0].bits


def read_dicom_series(folder: str | Path) -> ImageRead:
    """A DICOM series folder as float32 ``(1, X, Y, Z)`` canonical RAS+ (module docstring)."""
    import pydicom
    from pydicom.pixels import apply_rescale

    folder = Path(folder)
    files, affine, shape, modality, bits = series_geometry(folder)
    check_declared_size(folder, shape, -(-bits // 8))
    volume = np.empty(shape, dtype=np.float32)
    integer = True
    all_uint8 = True
    invert = False
    for k, path in enumerate(files):
        try:
            ds = pydicom.dcmread(path, force=True, specific_tags=list(PIXEL_TAGS))
            pixels = ds.pixel_array
            stored_integer = pixels.dtype.kind in "bui"
            pixels = np.asarray(apply_rescale(pixels, ds))
        except Exception as exc:
            raise MedfailInputError(
                path, f"cannot read DICOM slice of series {folder.name}/ ({_reason(exc)})"
            ) from exc
        if pixels.shape != (shape[1], shape[0]):
            raise MedfailInputError(
                path, f"pixel array {pixels.shape} does not match Rows x Columns "
                f"{shape[1]}x{shape[0]}")
        if pixels.dtype.kind == "f" and not np.all(np.isfinite(pixels)):
            raise MedfailInputError(path, "image contains NaN or infinite values")
        integer = integer and stored_integer and bool(np.all(pixels == np.round(pixels)))
        all_uint8 = all_uint8 and pixels.dtype == np.uint8
        invert = invert or str(ds.get("PhotometricInterpretation", "")) == "MONOCHROME1"
        volume[:, :, k] = pixels.T  # (rows, columns) -> (column, row)
        del ds
    if invert:
        volume = volume.min() + volume.max() - volume
    value_range = (0.0, 255.0) if all_uint8 else intensity_range(volume, folder)[0]
    canonical, canonical_affine = to_canonical(volume, affine)
    geometry = VolumeGeometry(canonical_affine, affine, shape, "dicom")
    return ImageRead(array=canonical[None], value_range=value_range, integer=integer,
                     spacing=voxel_sizes(canonical_affine), modality=modality,
                     geometry=geometry)


def _reason(exc: BaseException) -> str:
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    text = str(exc).strip() or type(exc).__name__
    return text.splitlines()[0]
