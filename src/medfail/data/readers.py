"""Read one image or mask file into numpy, in medfail's intensity units.

Supported suffixes: ``.png .jpg .jpeg .tif .tiff .dcm .nii .nii.gz .npy`` (case-insensitive).
Volumes (3D NIfTI files, and folders holding a DICOM series) are read by
:mod:`medfail.data.volumes` through the same :func:`read_image` / :func:`read_mask`: float32
``(1, X, Y, Z)`` / int64 ``(X, Y, Z)`` in canonical RAS+ order, with ``ImageRead.geometry``. The
rest of this docstring is about 2D files.

Conventions (every reader follows them):

* Images come back as float32 ``(C, H, W)``; masks as int64 ``(H, W)``.
* Intensity units (docs/data.md, "Intensities"). Formats without physical units (PNG, JPEG,
  TIFF) holding unsigned integers of bit depth ``b`` (PNG bit depth, TIFF BitsPerSample; JPEG
  and Pillow's 8-bit modes are 8) are put on one full scale, 8-bit grey levels:
  ``x * 255 / (2**b - 1)``, with ``value_range = (0, 255)``. So the same picture saved as 8-bit
  or 16-bit PNG/TIFF reaches a model the same (within 8-bit quantisation), whatever was used
  for training; 8-bit files are unchanged. Bilevel TIFFs become 0/255 like 1-bit PNGs.
  ``ImageRead.bits`` (``b``) and ``ImageRead.raw_max`` (the largest stored integer) let a
  dataset narrow ``value_range`` to the bits its files actually use (the *effective bit depth*
  ``e``, like DICOM BitsStored): :func:`effective_bits` and :func:`effective_range`, applied by
  :class:`~medfail.data.folder.FolderDataset`; the pixels themselves are never changed by it.
  Everything else keeps its stored values: DICOM after the Modality LUT (CT in HU), NIfTI after
  ``scl_slope``/``scl_inter``, ``.npy`` arrays (an array dump states no bit depth, and often
  holds HU or other units), signed or float TIFFs. Their ``value_range``: ``(0, 255)`` for
  uint8, ``(0, 1)`` for boolean data and for floats that all lie in ``[0, 1]`` (the usual
  normalised export), else the ``(min, max)`` of the image itself (``hi = lo + 1`` when
  constant): these files declare no display scale (BitsStored often overstates the range used,
  e.g. 12-bit MR in 16 bits), so the image's own range is the only reference one file gives.
* ``integer``: the pixels as returned are integers, so stress tests round perturbed images back
  (for DICOM: after RescaleSlope/Intercept; 16-bit PNG/TIFF on the 0..255 scale are not).
* Size limit: the declared size is checked from the header before any pixel is decoded (Pillow
  header, tifffile page shape, DICOM Rows/Columns/NumberOfFrames/SamplesPerPixel/
  BitsAllocated, NIfTI header, ``.npy`` header). An image or mask that would hold more than
  :func:`max_image_bytes` once decoded (elements x max(stored bytes, 4 for images / 8 for
  masks)) is refused with :class:`MedfailInputError`. The limit is ``MEDFAIL_MAX_IMAGE_BYTES``
  (bytes, or with a K/M/G/T suffix; ``0`` = no limit), else 1/64 of the machine's memory (the
  cgroup limit when lower). Pillow's own ``Image.MAX_IMAGE_PIXELS`` check still applies.
* ``spacing``: mm per spatial axis in array order ``(row, col)``, from the file header only
  (DICOM PixelSpacing, else ImagerPixelSpacing; NIfTI zooms); ``None`` for PNG/JPEG/TIFF/npy.
* Orientation: arrays are ``(rows, cols)`` as displayed. NIfTI stores ``(X, Y)`` voxel axes, so
  NIfTI arrays are transposed (``data.T``) and their zooms swapped to ``(dy, dx)``; no other
  reorientation (no flips to RAS) is applied.
* NIfTI: ``(X, Y)`` and ``(X, Y, 1[, 1...])`` are 2D images; a third axis over 1 is a volume.
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

import functools
import math
import os
import re
import struct
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO

import numpy as np

from medfail.errors import MedfailInputError

if TYPE_CHECKING:
    from PIL.Image import Image as PILImage

    from medfail.data.geometry import VolumeGeometry

IMAGE_SUFFIXES: tuple[str, ...] = (
    ".png", ".jpg", ".jpeg", ".tif", ".tiff", ".dcm", ".nii", ".nii.gz", ".npy",
)
_PILLOW = (".png", ".jpg", ".jpeg")
_TIFF = (".tif", ".tiff")
_NIFTI = (".nii", ".nii.gz")
_PIL_GREY = ("L", "I", "I;16", "I;16B", "I;16L", "F")
_PIL_16BIT = ("I;16", "I;16B", "I;16L")
#: environment variable overriding :func:`max_image_bytes`
MAX_BYTES_ENV = "MEDFAIL_MAX_IMAGE_BYTES"
#: default limit: this fraction of the machine's memory
MEMORY_FRACTION = 1 / 64
FULL_SCALE = 255.0  # the common unit of PNG/JPEG/TIFF unsigned integers: 8-bit grey levels
#: the effective bit depth of a wider container is never taken below this (dark 16-bit images
#: are read as 8-bit content, exactly like their 8-bit copies)
MIN_EFFECTIVE_BITS = 8
_PIL_8BIT = ("1", "L", "LA", "La", "P", "PA", "RGB", "RGBA", "RGBa", "RGBX", "CMYK", "YCbCr",
             "LAB", "HSV")


@dataclass
class ImageRead:
    """One decoded image: float32 ``(C, H, W)`` pixels plus what the header says about them.

    ``bits``: the container bit depth ``b`` of unsigned PNG/JPEG/TIFF pixels put on the 0..255
    scale (PNG bit depth, TIFF BitsPerSample, 8 for JPEG and Pillow's 8-bit modes, 1 for bilevel
    TIFF); ``None`` for every other file. ``raw_max``: the largest stored integer of those
    pixels (before scaling, over all channels); ``None`` when ``bits`` is. ``geometry``: the
    affines of a volume (``array`` is then ``(1, X, Y, Z)``); ``None`` for 2D images.
    """

    array: np.ndarray
    value_range: tuple[float, float]
    integer: bool
    spacing: tuple[float, ...] | None
    modality: str
    bits: int | None = None
    raw_max: int | None = None
    geometry: VolumeGeometry | None = None


@dataclass
class _Raw:
    """Pixels in their stored dtype, shaped ``(C, H, W)``, before range/type conversion."""

    array: np.ndarray
    spacing: tuple[float, ...] | None = None
    modality: str = ""
    integer: bool | None = None  # overrides the dtype rule (rescaled DICOM)
    full_scale: float | None = None  # 2**bits - 1 of unsigned PNG/JPEG/TIFF pixels, else None


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


# --------------------------------------------------------------------------------------------
# size limit

_BYTES = re.compile(r"^\s*(\d+(?:\.\d*)?)\s*([kmgt]?)(?:i?b)?\s*$", re.IGNORECASE)


@functools.lru_cache(maxsize=1)
def memory_bytes() -> int | None:
    """This machine's memory in bytes (psutil if installed, else ``os.sysconf``), lowered to the
    cgroup (container) memory limit when there is one; ``None`` when it cannot be told."""
    total: int | None = None
    try:
        import psutil

        total = int(psutil.virtual_memory().total)
    except Exception:  # psutil is optional
        try:
            total = int(os.sysconf("SC_PHYS_PAGES")) * int(os.sysconf("SC_PAGE_SIZE"))
        except (AttributeError, ValueError, OSError):
            total = None
    for cgroup in ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes"):
        try:
            text = Path(cgroup).read_text().strip()
        except OSError:
            continue
        if text.isdigit() and int(text) > 0:
            total = int(text) if total is None else min(total, int(text))
    return total if total and total > 0 else None


def max_image_bytes() -> int | None:
    """Largest decoded image/mask medfail accepts, in bytes; ``None`` = no limit.

    ``MEDFAIL_MAX_IMAGE_BYTES`` when set (``2000000000``, ``500M``, ``2G``, ``1.5GiB``; ``0``
    disables the check), else :data:`MEMORY_FRACTION` of :func:`memory_bytes` (256 MiB when
    the memory cannot be told).
    """
    text = os.environ.get(MAX_BYTES_ENV, "").strip()
    if text:
        match = _BYTES.match(text)
        if match is None:
            raise MedfailInputError(
                MAX_BYTES_ENV, f"{text!r} is not a byte count (examples: 2000000000, 500M, 2G; "
                "0 = no limit)")
        power = " kmgt".index(match.group(2).lower() or " ")
        limit = int(float(match.group(1)) * 1024**power)
        return None if limit == 0 else limit
    memory = memory_bytes()
    return 256 * 1024**2 if memory is None else int(memory * MEMORY_FRACTION)


def _size(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"  # pragma: no cover


def check_declared_size(path: str | Path, shape: tuple[int, ...], itemsize: int,
                        mask: bool = False) -> None:
    """Refuse a file whose header declares more than :func:`max_image_bytes` once decoded.

    ``shape``: the declared array shape (any axis order); ``itemsize``: stored bytes per
    element. Held bytes = elements x max(itemsize, 4 for float32 images, 8 for int64 masks).
    """
    limit = max_image_bytes()
    if limit is None:
        return
    elements = math.prod(int(n) for n in shape)
    held = elements * max(int(itemsize), 8 if mask else 4)
    if held <= limit:
        return
    what = "mask" if mask else "image"
    dims = " x ".join(str(int(n)) for n in shape)
    source = f"{MAX_BYTES_ENV}={os.environ[MAX_BYTES_ENV].strip()}" if os.environ.get(
        MAX_BYTES_ENV, "").strip() else f"default: 1/{round(1 / MEMORY_FRACTION)} of this " \
        "machine's memory"
    raise MedfailInputError(
        path, f"declares a {dims} {what} ({_size(held)} once decoded), over medfail's limit of "
        f"{_size(limit)} ({source}); downsample or crop it, or raise the limit with "
        f"{MAX_BYTES_ENV} (e.g. {MAX_BYTES_ENV}=8G) on a machine with the memory")


def read_image(path: str | Path) -> ImageRead:
    """Read an image file (or a DICOM series folder); any failure is a
    :class:`MedfailInputError` naming the file. Volumes: see :mod:`medfail.data.volumes`."""
    path = Path(path)
    if path.is_dir():
        from medfail.data.volumes import read_dicom_series

        return read_dicom_series(path)
    if image_suffix(path) in _NIFTI:
        from medfail.data.volumes import load_nifti, nifti_is_volume, read_nifti_volume

        img = load_nifti(path)
        if nifti_is_volume(img.shape, path):
            return read_nifti_volume(path, img)
    raw = _read_raw(path, mask=False)
    bits = raw_max = None
    if raw.full_scale is not None:  # display formats: onto the 0..255 scale by bit depth
        bits = round(math.log2(raw.full_scale + 1))
        raw_max = int(raw.array.max())
        array = np.asarray(raw.array, dtype=np.float32)
        if raw.full_scale != FULL_SCALE:
            array = (raw.array.astype(np.float64) * (FULL_SCALE / raw.full_scale)).astype(
                np.float32)
        value_range, integer = (0.0, FULL_SCALE), FULL_SCALE % raw.full_scale == 0
    else:
        array = raw.array
        value_range, integer = intensity_range(raw.array, path)
        if raw.integer is not None:
            integer = raw.integer
    return ImageRead(
        array=np.ascontiguousarray(array, dtype=np.float32),
        value_range=value_range,
        integer=integer,
        spacing=raw.spacing,
        modality=raw.modality,
        bits=bits,
        raw_max=raw_max,
    )


def effective_bits(raw_max: int, bits: int) -> int:
    """The effective bit depth ``e`` of ``bits``-bit unsigned pixels whose largest stored value
    (over a whole dataset) is ``raw_max``: the bits that value needs, at least
    :data:`MIN_EFFECTIVE_BITS`, never more than ``bits``; containers of 8 bits or fewer keep
    ``e = bits`` (e.g. 16-bit with max 235 -> 8, 4095 -> 12, 40000 -> 16)."""
    if bits <= MIN_EFFECTIVE_BITS:
        return bits
    return min(bits, max(MIN_EFFECTIVE_BITS, int(raw_max).bit_length()))


def effective_range(bits: int, effective: int) -> tuple[float, float]:
    """``value_range`` on the 0..255 scale of ``bits``-bit pixels holding ``effective``-bit
    values: ``(0, 255 * (2**e - 1) / (2**b - 1))``, exactly ``(0, 255)`` when ``e >= b``."""
    if effective >= bits:
        return (0.0, FULL_SCALE)
    return (0.0, FULL_SCALE * (2**effective - 1) / (2**bits - 1))


def may_exceed_8_bits(path: str | Path) -> bool:
    """Whether :func:`read_image` may report ``bits > 8`` for this file, from its header only
    (Pillow mode, TIFF sample dtype). ``False`` is certain (8-bit PNG/JPEG/TIFF, DICOM, NIfTI,
    ``.npy``); an unreadable header answers ``True`` (decoding then says what is wrong)."""
    path = Path(path)
    suffix = image_suffix(path)
    if suffix not in (*_PILLOW, *_TIFF) or path.is_dir():
        return False
    try:
        if suffix in _TIFF:
            import tifffile

            with tifffile.TiffFile(path) as tif:
                dtype = np.dtype(tif.series[0].dtype)
                palette = tif.series[0].keyframe.photometric == tifffile.PHOTOMETRIC.PALETTE
            return dtype.kind == "u" and dtype.itemsize > 1 and not palette
        from PIL import Image

        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(path) as img:
                return img.mode not in _PIL_8BIT
    except Exception:
        return True


def intensity_range(arr: np.ndarray, path: str | Path) -> tuple[tuple[float, float], bool]:
    """``(value_range, integer)`` of pixels that keep their stored values (module conventions:
    uint8 -> ``(0, 255)``; bool and floats within ``[0, 1]`` -> ``(0, 1)``; else own min/max).

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
    if kind == "f" and lo >= 0.0 and hi <= 1.0:
        return (0.0, 1.0), False
    return (lo, hi if hi > lo else lo + 1.0), kind != "f"


def read_mask(path: str | Path) -> np.ndarray:
    """Read an integer label map (0 = background) as int64 ``(H, W)``; a 3D NIfTI mask as int64
    ``(X, Y, Z)`` in canonical RAS+ order (:func:`medfail.data.volumes.read_nifti_mask`)."""
    path = Path(path)
    if path.is_dir():
        raise MedfailInputError(
            path, "a mask must be one file (a volume's mask: masks/<id>.nii.gz), not a folder")
    if image_suffix(path) in _NIFTI:
        from medfail.data.volumes import load_nifti, nifti_is_volume, read_nifti_mask

        img = load_nifti(path, mask=True)
        if nifti_is_volume(img.shape, path, mask=True):
            return read_nifti_mask(path, img)[0]
    arr = _read_raw(path, mask=True).array
    if not all(np.array_equal(arr[0], arr[c]) for c in range(1, arr.shape[0])):
        raise MedfailInputError(
            path, f"mask has {arr.shape[0]} channels with different values; a mask must be "
            "a single-channel integer label map (0 = background)")
    return check_labels(arr[0], path)


def check_labels(arr: np.ndarray, path: str | Path) -> np.ndarray:
    """A raw mask array (any shape) as contiguous int64 labels; refuses NaN/inf, non-integer,
    negative or non-numeric values, naming ``path``."""
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


def spatial_dims(path: str | Path) -> int:
    """2 or 3: whether ``path`` is a volume (a DICOM series folder, a NIfTI file whose third axis
    has more than one voxel), from headers only; other files count as 2D."""
    from medfail.data.volumes import is_volume_path

    return 3 if is_volume_path(path) else 2


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
            raw = _read_npy(path, mask)
        else:
            raw = _read_nifti(path, mask)
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


def _open_pillow(fp: BinaryIO, path: Path, mask: bool) -> PILImage:
    """Open with Pillow (header only) and check the declared size before anything is decoded.

    PNG and JPEG are opened by their Pillow plugins directly, so medfail's limit (with its
    message) replaces Pillow's ``MAX_IMAGE_PIXELS`` bomb check; other formats, and every format
    when medfail's limit is off, go through ``Image.open`` and its check.
    """
    from PIL import Image

    img = None
    if max_image_bytes() is not None:
        Image.preinit()
        prefix = fp.read(16)
        for fmt in ("PNG", "JPEG"):
            factory, accept = Image.OPEN.get(fmt, (None, None))
            if factory is not None and (accept is None or accept(prefix) is True):
                fp.seek(0)
                try:
                    img = factory(fp, str(path))
                except (SyntaxError, IndexError, TypeError, struct.error):
                    img = None  # not this format after all: Image.open tries the others
                break
        fp.seek(0)
    if img is None:
        with warnings.catch_warnings():  # medfail's own limit below replaces this warning
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            try:
                img = Image.open(path)
            except Image.DecompressionBombError as exc:
                raise MedfailInputError(
                    path, f"cannot read {'mask' if mask else 'image'} ({_reason(exc)}); Pillow "
                    "refuses images over 2 x PIL.Image.MAX_IMAGE_PIXELS: downsample or crop "
                    "it") from exc
    try:
        w, h = img.size
        bands = 3 if img.mode in ("P", "PA") and not mask else len(img.getbands())
        itemsize = 2 if img.mode in _PIL_16BIT else 4 if img.mode in ("I", "F") else 1
        check_declared_size(path, (h, w, bands), itemsize, mask)
    except BaseException:
        img.close()
        raise
    return img


def _read_pillow(path: Path, mask: bool) -> _Raw:
    with open(path, "rb") as fp, _open_pillow(fp, path, mask) as img:
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
    full_scale = 65535.0 if mode in _PIL_16BIT else 255.0 if arr.dtype == np.uint8 else None
    return _Raw(arr, modality="RGB" if arr.shape[0] == 3 else "", full_scale=full_scale)


def _read_tiff(path: Path, mask: bool) -> _Raw:
    import tifffile

    with tifffile.TiffFile(path) as tif:
        series = tif.series[0]
        page = series.keyframe
        if page.photometric == tifffile.PHOTOMETRIC.PALETTE and not mask:
            return _read_pillow(path, mask)
        shape, axes, dtype = tuple(series.shape), series.axes, np.dtype(series.dtype)
        keep = [i for i, (ax, n) in enumerate(zip(axes, shape, strict=True))
                if ax in "YX" or n > 1]
        shape = tuple(shape[i] for i in keep)
        axes = "".join(axes[i] for i in keep)
        other = [ax for ax in axes if ax not in "YX"]
        if "Y" not in axes or "X" not in axes or len(other) > 1 or (
                other and other[0] not in "SC"):
            raise MedfailInputError(
                path, f"multi-page/3D TIFF (shape {shape}, axes {axes}) not supported yet; "
                "medfail reads 2D images")
        check_declared_size(path, shape, dtype.itemsize, mask)
        bits = int(page.bitspersample)
        arr = series.asarray().reshape(shape)
        n_alpha = sum(1 for e in page.extrasamples if int(e) in (1, 2))  # (un)associated alpha
    order = [axes.index(ax) for ax in (*other, "Y", "X")]
    arr = np.transpose(arr, order)
    if not other:
        arr = arr[None]
    elif 0 < n_alpha < arr.shape[0]:
        arr = arr[: arr.shape[0] - n_alpha]
    full_scale = None  # signed and float TIFFs keep their values
    if arr.dtype.kind == "b":
        full_scale = 1.0
    elif arr.dtype.kind == "u":
        full_scale = float(2 ** min(bits, 8 * arr.dtype.itemsize) - 1)
    return _Raw(arr, modality="RGB" if arr.shape[0] == 3 else "", full_scale=full_scale)


def _read_dicom(path: Path, mask: bool) -> _Raw:
    import pydicom
    from pydicom.pixels import apply_rescale

    ds = pydicom.dcmread(path, force=True, defer_size="64 KB")  # pixel data read on use only
    if "PixelData" not in ds:
        what = "mask" if mask else "image"
        raise MedfailInputError(path, f"cannot read {what} (DICOM file has no pixel data)")
    frames = int(ds.get("NumberOfFrames", 1) or 1)
    samples = int(ds.get("SamplesPerPixel", 1) or 1)
    rows, cols = int(ds.get("Rows", 0) or 0), int(ds.get("Columns", 0) or 0)
    bits = int(ds.get("BitsAllocated", 16) or 16)
    if frames > 1:
        raise MedfailInputError(
            path, f"3D/multi-frame DICOM not supported yet ({frames} frames); "
            "medfail reads single 2D slices")
    check_declared_size(path, (rows, cols, samples), -(-bits // 8), mask)
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


def _npy_header(path: Path) -> tuple[tuple[int, ...], np.dtype] | None:
    """``(shape, dtype)`` from a ``.npy`` header without reading the data; ``None`` when the file
    is not a plain ``.npy`` array (``np.load`` then says what it is)."""
    fmt = np.lib.format
    try:
        with open(path, "rb") as f:
            version = fmt.read_magic(f)
            read = fmt.read_array_header_1_0 if version == (1, 0) else fmt.read_array_header_2_0
            shape, _, dtype = read(f)
    except (ValueError, OSError, SyntaxError):
        return None
    return tuple(int(n) for n in shape), np.dtype(dtype)


def _read_npy(path: Path, mask: bool) -> _Raw:
    what = "mask" if mask else "image"
    header = _npy_header(path)
    if header is not None:
        check_declared_size(path, header[0], header[1].itemsize, mask)
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


def _read_nifti(path: Path, mask: bool) -> _Raw:
    import nibabel as nib

    what = "mask" if mask else "image"
    img = nib.load(str(path))
    shape = tuple(int(n) for n in img.shape)
    if len(shape) < 2:
        raise MedfailInputError(path, f"cannot read {what} (NIfTI shape {shape} is not 2D)")
    if any(n != 1 for n in shape[2:]):  # volumes go to medfail.data.volumes (read_image)
        raise MedfailInputError(
            path, f"cannot read {what} as 2D (NIfTI shape {shape}); 2D images are stored as "
            "(X, Y) or (X, Y, 1)")
    check_declared_size(path, shape, np.dtype(img.get_data_dtype()).itemsize, mask)
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
