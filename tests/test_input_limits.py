"""Decompression bombs and huge inputs (issue 10 item 5): the declared size is checked from the
header before decoding. Every file here is tiny but DECLARES a huge image; the limit is set
explicitly (MEDFAIL_MAX_IMAGE_BYTES) so nothing depends on this machine's memory."""

from __future__ import annotations

import io
import struct
import zlib
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
from PIL import Image
from typer.testing import CliRunner

from medfail.cli import app
from medfail.data import readers
from medfail.data.datasets import open_dataset
from medfail.data.readers import MAX_BYTES_ENV, max_image_bytes, read_image, read_mask
from medfail.errors import MedfailInputError

BIG = 40000  # 40000 x 40000 = 1.6 G pixels
NIFTI_BIG = 30000


@pytest.fixture(autouse=True)
def _limit(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(MAX_BYTES_ENV, "64M")


def _png_bomb(path: Path, w: int = BIG, h: int = BIG, depth: int = 8, colour: int = 0) -> Path:
    """A valid PNG header (IHDR) declaring ``w x h``, one empty IDAT chunk, no pixel data."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(
            ">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", w, h, depth, colour, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr)
                     + chunk(b"IDAT", zlib.compress(b"")) + chunk(b"IEND", b""))
    return path


def _jpeg_bomb(path: Path, w: int = 60000, h: int = 60000) -> Path:
    buf = io.BytesIO()
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(buf, "JPEG")
    data = bytearray(buf.getvalue())
    sof = data.index(b"\xff\xc0")  # baseline SOF0: length(2) precision(1) height(2) width(2)
    data[sof + 5:sof + 9] = struct.pack(">HH", h, w)
    path.write_bytes(bytes(data))
    return path


def _tiff_bomb(path: Path, w: int = BIG, h: int = BIG) -> Path:
    """A little-endian baseline TIFF whose one IFD declares ``w x h`` uint16 and a 2-byte strip."""
    entries = [(256, 4, w), (257, 4, h), (258, 3, 16), (259, 3, 1), (262, 3, 1),
               (273, 4, 8), (277, 3, 1), (278, 4, h), (279, 4, 2)]
    ifd_offset = 10
    ifd = struct.pack("<H", len(entries)) + b"".join(
        struct.pack("<HHI", tag, typ, 1) + (struct.pack("<HH", val, 0) if typ == 3
                                             else struct.pack("<I", val))
        for tag, typ, val in entries) + struct.pack("<I", 0)
    path.write_bytes(b"II*\x00" + struct.pack("<I", ifd_offset) + b"\x00\x00" + ifd)
    return path


def _nifti_bomb(path: Path) -> Path:
    header = nib.Nifti1Header()
    header.set_data_shape((NIFTI_BIG, NIFTI_BIG))  # NIfTI-1 dims are int16
    header.set_data_dtype(np.int16)
    header["vox_offset"] = 352
    path.write_bytes(header.binaryblock + b"\x00" * 4)  # header + empty extension flag, no data
    return path


def _npy_bomb(path: Path) -> Path:
    with open(path, "wb") as f:
        np.lib.format.write_array_header_1_0(
            f, {"descr": "<u2", "fortran_order": False, "shape": (BIG, BIG)})
    return path


def _dicom_bomb(path: Path) -> Path:
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, generate_uid()
    ds.Modality = "OT"
    ds.Rows, ds.Columns = BIG, BIG
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
    ds.PixelData = b"\x00\x00"
    ds.save_as(path, enforce_file_format=True)
    return path


BOMBS = {".png": _png_bomb, ".jpg": _jpeg_bomb, ".tif": _tiff_bomb, ".nii": _nifti_bomb,
         ".npy": _npy_bomb, ".dcm": _dicom_bomb}


def _message(fn, path: Path) -> str:
    with pytest.raises(MedfailInputError) as info:
        fn(path)
    return str(info.value)


@pytest.mark.parametrize("suffix", sorted(BOMBS))
def test_declared_huge_image_refused_before_decoding(tmp_path: Path, suffix: str) -> None:
    path = BOMBS[suffix](tmp_path / f"bomb{suffix}")
    assert path.stat().st_size < 2000  # tiny file, huge declaration
    msg = _message(read_image, path)
    side = {".jpg": 60000, ".nii": NIFTI_BIG}.get(suffix, BIG)
    dims = f"{side} x {side}"
    assert str(path) in msg and dims in msg
    assert "64.0 MiB" in msg and f"{MAX_BYTES_ENV}=64M" in msg  # the limit and where it came from
    assert "downsample or crop" in msg and "raise the limit" in msg  # the fix


def test_mask_bomb_refused_too(tmp_path: Path) -> None:
    msg = _message(read_mask, _png_bomb(tmp_path / "m.png"))
    assert "mask" in msg and f"{BIG} x {BIG}" in msg


def test_limit_is_exact_in_float32_bytes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    Image.fromarray(np.zeros((12, 10), np.uint8)).save(tmp_path / "s.png")
    monkeypatch.setenv(MAX_BYTES_ENV, str(12 * 10 * 4))  # exactly the float32 image
    assert read_image(tmp_path / "s.png").array.shape == (1, 12, 10)
    monkeypatch.setenv(MAX_BYTES_ENV, str(12 * 10 * 4 - 1))
    assert "12 x 10" in _message(read_image, tmp_path / "s.png")
    # masks are held as int64: 8 bytes per pixel
    monkeypatch.setenv(MAX_BYTES_ENV, str(12 * 10 * 8 - 1))
    assert "mask" in _message(read_mask, tmp_path / "s.png")


def test_pillow_own_limit_is_an_input_error(tmp_path: Path,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(MAX_BYTES_ENV, "0")  # medfail's limit off: Pillow's bomb check remains
    path = _png_bomb(tmp_path / "p.png", 20000, 20000)  # 400 Mpx > 2 x MAX_IMAGE_PIXELS
    msg = _message(read_image, path)
    assert str(path) in msg and "MAX_IMAGE_PIXELS" in msg


def test_env_var_forms(monkeypatch: pytest.MonkeyPatch) -> None:
    for text, value in (("2G", 2 * 1024**3), ("500m", 500 * 1024**2), ("1.5GiB", 1536 * 1024**2),
                        ("123456", 123456), ("0", None)):
        monkeypatch.setenv(MAX_BYTES_ENV, text)
        assert max_image_bytes() == value, text
    monkeypatch.setenv(MAX_BYTES_ENV, "lots")
    with pytest.raises(MedfailInputError, match=f"{MAX_BYTES_ENV}: 'lots' is not a byte count"):
        max_image_bytes()


def test_default_limit_is_a_fraction_of_memory(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(MAX_BYTES_ENV)
    monkeypatch.setattr(readers, "memory_bytes", lambda: 64 * 1024**3)
    assert max_image_bytes() == 1024**3
    monkeypatch.setattr(readers, "memory_bytes", lambda: None)  # memory unknown
    assert max_image_bytes() == 256 * 1024**2


def test_real_memory_is_read() -> None:
    memory = readers.memory_bytes()
    assert memory is None or memory > 0


def test_cli_prints_one_error_line(tmp_path: Path) -> None:
    root = tmp_path / "data"
    (root / "images").mkdir(parents=True)
    for i in range(2):
        Image.fromarray(np.full((8, 8), 40 * i, np.uint8)).save(root / "images" / f"ok{i}.png")
    _png_bomb(root / "images" / "bomb.png")
    pd.DataFrame({"id": ["ok0", "ok1", "bomb"], "finding": [0, 1, 1]}).to_csv(
        root / "labels.csv", index=False)
    with pytest.raises(MedfailInputError, match=r"bomb\.png"):
        open_dataset(root, "classification").validate(progress=False)
    result = CliRunner().invoke(app, ["train", "--task", "classification", "--data", str(root),
                                      "--out", str(tmp_path / "m.pt"), "--quiet"])
    assert result.exit_code == 2
    errors = [ln for ln in result.output.splitlines() if ln.startswith("error:")]
    assert len(errors) == 1 and "bomb.png" in errors[0] and f"{BIG} x {BIG}" in errors[0]
    assert "Traceback" not in result.output


def test_other_formats_and_broken_headers_behind_a_png_suffix(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    Image.fromarray(np.zeros((40, 40), np.uint8)).save(tmp_path / "gif.png", format="GIF")
    assert read_image(tmp_path / "gif.png").array.shape == (1, 40, 40)  # sniffed, not by suffix
    monkeypatch.setenv(MAX_BYTES_ENV, "1K")
    assert "40 x 40" in _message(read_image, tmp_path / "gif.png")  # limit still applies
    (tmp_path / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0" + b"\x00" * 20)
    assert "cannot identify image file" in _message(read_image, tmp_path / "broken.jpg")
