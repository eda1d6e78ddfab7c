"""Read one 2D image or mask file into numpy, in native intensity units.

Supported suffixes: ``.png .jpg .jpeg .tif .tiff .dcm .nii .nii.gz .npy`` (case-insensitive).

Conventions (every reader follows them):

* Images come back as float32 ``(C, H, W)``; masks as int64 ``(H, W)``.
* ``value_range``: ``(0, 255)`` for 8-bit data; for every other type (16-bit, signed, float,
  rescaled DICOM such as CT in HU) the ``(min, max)`` of the image itself, with ``hi = lo + 1``
  when the image is constant. Boolean data gets ``(0, 1)``.
* ``integer``: the stored pixels are integers (for DICOM: after RescaleSlope/Intercept).
* ``spacing``: mm per spatial axis in array order ``(row, col)``, from the file header only
  (DICOM PixelSpacing, else ImagerPixelSpacing; NIfTI zooms); ``None`` for PNG/JPEG/TIFF/npy.
* Orientation: arrays are ``(rows, cols)`` as displayed. NIfTI stores ``(X, Y)`` voxel axes, so
  NIfTI arrays are transposed (``data.T``) and their zooms swapped to ``(dy, dx)``; no other
  reorientation (no flips to RAS) is applied.
* ``.npy`` layout: 2D ``(H, W)``; 3D ``(H, W, C)`` when the last axis is <= 4, else ``(C, H, W)``
  when the first axis is <= 4, else it is a volume and rejected.
* DICOM: RescaleSlope/Intercept (Modality LUT) are applied, so CT is in HU; MONOCHROME1 is
  inverted within the image's own ``(min, max)``; VOI LUT / windowing is NOT applied. Only pixel
  data, spacing and Modality are read: no patient tag leaves this module.
* Alpha channels are dropped; palette PNGs become RGB images (one channel when the palette is
  grey), while palette *masks* keep their palette indices as labels.
* ``modality`` is the DICOM Modality tag, ``"RGB"`` for 3-channel PNG/JPEG/TIFF, else ``""``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from medfail.errors import MedfailInputError

IMAGE_SUFFIXES: tuple[str, ...] = (
    ".png", ".jpg", ".jpeg", ".tif", ".tiff", ".dcm", ".nii", ".nii.gz", ".npy",
)
_PILLOW = (".png", ".jpg", ".jpeg")
_TIFF = (".tif", ".tiff")
_PIL_GREY = ("L", "I", "I;16", "I;16B", "I;16L", "F")


@dataclass
class ImageRead:
    """One decoded image: float32 ``(C, H, W)`` pixels plus what the header says about them."""

    array: np.ndarray
    value_range: tuple[float, float]
    integer: bool
    spacing: tuple[float, ...] | None
    modality: str


@dataclass
class _Raw:
    """Pixels in their stored dtype, shaped ``(C, H, W)``, before range/type conversion."""

    array: np.ndarray
    spacing: tuple[float, ...] | None = None
    modality: str = ""
    integer: bool | None = None  # overrides the dtype rule (rescaled DICOM)


def image_suffix(path: str | Path) -> str:
    """The lower-case suffix that selects the reader (``.nii.gz`` counts as one suffix)."""
    name = Path(path).name.lower()
    return ".nii.gz" if name.endswith(".nii.gz") else Path(name).suffix


def image_id(path: str | Path) -> str:
    """The sample id of a file: its name without the suffix (``case7.nii.gz`` -> ``case7``)."""
    name = Path(path).name
    if name.lower().endswith(".nii.gz"):
        return name[: -len(".nii.gz")]
    return Path(name).stem


def is_supported(path: str | Path) -> bool:
    """Whether ``path`` has one of :data:`IMAGE_SUFFIXES`."""
    return image_suffix(path) in IMAGE_SUFFIXES


def supported_list() -> str:
    return ", ".join(IMAGE_SUFFIXES)


def read_image(path: str | Path) -> ImageRead:
    """Read a 2D image file; any failure is a :class:`MedfailInputError` naming the file."""
    path = Path(path)
    raw = _read_raw(path, mask=False)
    value_range, integer = intensity_range(raw.array, path)
    if raw.integer is not None:
        integer = raw.integer
    return ImageRead(
        array=np.ascontiguousarray(raw.array, dtype=np.float32),
        value_range=value_range,
        integer=integer,
        spacing=raw.spacing,
        modality=raw.modality,
    )


def intensity_range(arr: np.ndarray, path: str | Path) -> tuple[tuple[float, float], bool]:
    """``(value_range, integer)`` of stored pixels, following the module conventions.

    Raises :class:`MedfailInputError` (naming ``path``) for NaN/inf or non-numeric pixels.
    """
    kind = arr.dtype.kind
    if kind == "b":
        return (0.0, 1.0), True
    if kind == "u" and arr.dtype.itemsize == 1:
        return (0.0, 255.0), True
    if kind not in "uif":
        raise MedfailInputError(path, f"cannot read image (unsupported pixel type {arr.dtype})")
    if kind == "f" and not np.all(np.isfinite(arr)):
        raise MedfailInputError(path, "image contains NaN or infinite values")
    lo, hi = float(arr.min()), float(arr.max())
    return (lo, hi if hi > lo else lo + 1.0), kind != "f"


def read_mask(path: str | Path) -> np.ndarray:
    """Read an integer label map (0 = background) as int64 ``(H, W)``."""
    path = Path(path)
    arr = _read_raw(path, mask=True).array
    if not all(np.array_equal(arr[0], arr[c]) for c in range(1, arr.shape[0])):
        raise MedfailInputError(
            path, f"mask has {arr.shape[0]} channels with different values; a mask must be "
            "a single-channel integer label map (0 = background)")
    arr = arr[0]
    kind = arr.dtype.kind
    if kind == "f":
        if not np.all(np.isfinite(arr)):
            raise MedfailInputError(path, "mask contains NaN or infinite values")
        bad = arr != np.round(arr)
        if bad.any():
            raise MedfailInputError(
                path, f"mask has non-integer values (e.g. {float(arr[bad][0])}); a mask must "
                "hold integer class labels (0 = background)")
    elif kind not in "bui":
        raise MedfailInputError(path, f"cannot read mask (unsupported pixel type {arr.dtype})")
    if kind != "b" and arr.size and arr.min() < 0:
        raise MedfailInputError(
            path, f"mask has negative values (min {arr.min()}); labels must be >= 0")
    return np.ascontiguousarray(arr, dtype=np.int64)


# --------------------------------------------------------------------------------------------
# dispatch


def _read_raw(path: Path, mask: bool) -> _Raw:
    what = "mask" if mask else "image"
    suffix = image_suffix(path)
    if suffix not in IMAGE_SUFFIXES:
        raise MedfailInputError(
            path, f"unsupported {what} file type '{suffix or path.name}' "
            f"(supported: {supported_list()})")
    try:
        if suffix in _PILLOW:
            raw = _read_pillow(path, mask)
        elif suffix in _TIFF:
            raw = _read_tiff(path, mask)
        elif suffix == ".dcm":
            raw = _read_dicom(path, mask)
        elif suffix == ".npy":
            raw = _read_npy(path, what)
        else:
            raw = _read_nifti(path, what)
    except MedfailInputError:
        raise
    except Exception as exc:
        raise MedfailInputError(path, f"cannot read {what} ({_reason(exc)})") from exc
    arr = raw.array
    if arr.ndim != 3 or min(arr.shape) < 1:
        raise MedfailInputError(path, f"cannot read {what} (empty or malformed array {arr.shape})")
    if not arr.dtype.isnative:
        raw.array = arr.astype(arr.dtype.newbyteorder("="))
    return raw


def _reason(exc: BaseException) -> str:
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    text = str(exc).strip() or type(exc).__name__
    return text.splitlines()[0]


def _channels_first(arr: np.ndarray) -> np.ndarray:
    """``(H, W)`` -> ``(1, H, W)``; ``(H, W, C)`` -> ``(C, H, W)``."""
    return arr[None] if arr.ndim == 2 else np.moveaxis(arr, -1, 0)


# --------------------------------------------------------------------------------------------
# formats


def _read_pillow(path: Path, mask: bool) -> _Raw:
    from PIL import Image

    with Image.open(path) as img:
        img.load()
        mode = img.mode
        if mask and mode in ("P", "PA", "LA", "1", *_PIL_GREY):
            arr = np.asarray(img)  # palette masks keep their indices as labels
            if arr.ndim == 3:  # PA / LA: drop alpha
                arr = arr[..., 0]
            return _Raw(_channels_first(arr))
        if mode in ("1", "LA", "La"):
            img = img.convert("L")
        elif mode not in (*_PIL_GREY, "RGB"):
            img = img.convert("RGB")  # palette, RGBA, CMYK, YCbCr...
        arr = np.asarray(img)
    arr = _channels_first(arr)
    if mode in ("P", "PA") and all(np.array_equal(arr[0], arr[c]) for c in (1, 2)):
        arr = arr[:1]  # grey palette
    return _Raw(arr, modality="RGB" if arr.shape[0] == 3 else "")


def _read_tiff(path: Path, mask: bool) -> _Raw:
    import tifffile

    with tifffile.TiffFile(path) as tif:
        series = tif.series[0]
        page = series.keyframe
        if page.photometric == tifffile.PHOTOMETRIC.PALETTE and not mask:
            return _read_pillow(path, mask)
        arr = series.asarray()
        axes = series.axes
        n_alpha = sum(1 for e in page.extrasamples if int(e) in (1, 2))  # (un)associated alpha
    keep = [i for i, (ax, n) in enumerate(zip(axes, arr.shape, strict=True)) if ax in "YX" or n > 1]
    arr = arr.reshape([arr.shape[i] for i in keep])
    axes = "".join(axes[i] for i in keep)
    other = [ax for ax in axes if ax not in "YX"]
    if "Y" not in axes or "X" not in axes or len(other) > 1 or (other and other[0] not in "SC"):
        raise MedfailInputError(
            path, f"multi-page/3D TIFF (shape {arr.shape}, axes {axes}) not supported yet; "
            "medfail reads 2D images")
    order = [axes.index(ax) for ax in (*other, "Y", "X")]
    arr = np.transpose(arr, order)
    if not other:
        arr = arr[None]
    elif 0 < n_alpha < arr.shape[0]:
        arr = arr[: arr.shape[0] - n_alpha]
    return _Raw(arr, modality="RGB" if arr.shape[0] == 3 else "")


def _read_dicom(path: Path, mask: bool) -> _Raw:
    import pydicom
    from pydicom.pixels import apply_rescale

    ds = pydicom.dcmread(path, force=True)
    if "PixelData" not in ds:
        what = "mask" if mask else "image"
        raise MedfailInputError(path, f"cannot read {what} (DICOM file has no pixel data)")
    frames = int(ds.get("NumberOfFrames", 1) or 1)
    samples = int(ds.get("SamplesPerPixel", 1) or 1)
    if frames > 1:
        raise MedfailInputError(
            path, f"3D/multi-frame DICOM not supported yet ({frames} frames); "
            "medfail reads single 2D slices")
    pixels = ds.pixel_array
    if pixels.ndim != (3 if samples > 1 else 2):
        raise MedfailInputError(
            path, f"3D/multi-frame DICOM not supported yet (pixel array {pixels.shape})")
    integer = pixels.dtype.kind in "bui"
    if not mask and samples == 1:
        pixels = np.asarray(apply_rescale(pixels, ds))  # Modality LUT / slope+intercept -> HU
        if integer and pixels.dtype.kind == "f":
            integer = bool(np.all(pixels == np.round(pixels)))
        if str(ds.get("PhotometricInterpretation", "")) == "MONOCHROME1":
            pixels = pixels.min() + pixels.max() - pixels
    modality = str(ds.get("Modality", "") or "")
    spacing = None
    for keyword in ("PixelSpacing", "ImagerPixelSpacing"):
        value = ds.get(keyword)
        if value is not None and len(value) == 2:
            spacing = (float(value[0]), float(value[1]))  # (row spacing, column spacing) in mm
            break
    del ds  # nothing but pixels, spacing and modality leaves this function
    return _Raw(_channels_first(pixels), spacing=spacing, modality=modality, integer=integer)


def _read_npy(path: Path, what: str) -> _Raw:
    arr = np.load(path, allow_pickle=False)
    if not isinstance(arr, np.ndarray):
        raise MedfailInputError(path, f"cannot read {what} (.npy file does not hold one array)")
    if arr.dtype.kind not in "buif":
        raise MedfailInputError(path, f"cannot read {what} (unsupported dtype {arr.dtype})")
    if arr.ndim == 2:
        return _Raw(arr[None])
    if arr.ndim == 3:
        if arr.shape[-1] <= 4:
            return _Raw(np.moveaxis(arr, -1, 0))
        if arr.shape[0] <= 4:
            return _Raw(arr)
    raise MedfailInputError(
        path, f"3D volume not supported yet (.npy shape {arr.shape}); expected (H, W), "
        "(H, W, C) or (C, H, W) with C <= 4")


def _read_nifti(path: Path, what: str) -> _Raw:
    import nibabel as nib

    img = nib.load(str(path))
    shape = tuple(int(n) for n in img.shape)
    if len(shape) < 2:
        raise MedfailInputError(path, f"cannot read {what} (NIfTI shape {shape} is not 2D)")
    if any(n != 1 for n in shape[2:]):
        raise MedfailInputError(
            path, f"3D NIfTI volume not supported yet (shape {shape}); medfail reads 2D images "
            "stored as (X, Y) or (X, Y, 1)")
    data = np.asanyarray(img.dataobj)
    if data.dtype.names is not None:
        raise MedfailInputError(path, f"cannot read {what} (RGB NIfTI not supported)")
    data = data.reshape(shape[:2]).T  # (X, Y) -> (rows, cols)
    header = img.header
    zooms = [float(z) for z in header.get_zooms()[:2]]
    unit = header.get_xyzt_units()[0] if hasattr(header, "get_xyzt_units") else "unknown"
    spacing: tuple[float, ...] | None
    if unit == "unknown" and zooms == [1.0, 1.0]:
        spacing = None  # the header default, not a measurement
    else:
        scale = {"meter": 1000.0, "micron": 0.001}.get(unit, 1.0)
        spacing = (zooms[1] * scale, zooms[0] * scale)
    return _Raw(np.ascontiguousarray(data[None]), spacing=spacing)
