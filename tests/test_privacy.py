"""Privacy: a run on DICOM files with patient tags, typed with absolute paths, leaks neither the
tags nor the paths into any file of the run directory or the console output."""

from __future__ import annotations

import base64
import io
import json
import os
import re
import subprocess
import sys
import zipfile
import zlib
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
from PIL import Image, PngImagePlugin

from medfail.data.datasets import open_dataset
from medfail.models.training import TrainConfig, train
from medfail.privacy import sanitize_command

PARENT = "zqxParentSecret7731"  # a distinctive folder above everything the user typed
TAGS = {
    "PatientName": "Doe^Jane",
    "PatientID": "PIDQX42917",
    "PatientBirthDate": "19310704",
    "InstitutionName": "Quetzal Memorial Hospital",
    "ReferringPhysicianName": "Zebulon^Hartwig",
}


def test_sanitize_command_keeps_options_and_base_names(tmp_path: Path) -> None:
    existing = tmp_path / "rel"
    existing.mkdir()
    cmd = ["/opt/venv/bin/medfail", "run", "--model", "/home/ana/models/m.pt", "--data",
           "/home/ana/scans/ct/", "--out=~/runs/x", "--task", "segmentation", "--seed", "1",
           "--model", "pkg.module:build", "~ana", "C:\\Users\\ana\\data", str(existing)]
    assert sanitize_command(cmd) == [
        "medfail", "run", "--model", "m.pt", "--data", "ct", "--out=x", "--task",
        "segmentation", "--seed", "1", "--model", "pkg.module:build", "~", "data", "rel"]
    assert sanitize_command(None)[0] == Path(sys.argv[0]).name


def _dicom_folder(root: Path, n: int, shift: int) -> Path:
    """CT slices (pydicom's example, rolled) carrying the patient tags, with threshold masks."""
    from pydicom import examples

    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    for k in range(n):
        ds = examples.ct
        for keyword, value in TAGS.items():
            setattr(ds, keyword, value)
        arr = np.roll(ds.pixel_array, shift=shift + 8 * k, axis=1)
        ds.PixelData = arr.astype(ds.pixel_array.dtype).tobytes()
        ds.save_as(root / "images" / f"slice{k}.dcm")
        hu = arr * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
        Image.fromarray((hu > 100).astype(np.uint8)).save(root / "masks" / f"slice{k}.png")
    return root


def _views(name: str, data: bytes) -> Iterator[tuple[str, bytes]]:
    """The raw bytes plus decoded views a compressed or encoded format could hide text in."""
    yield name, data
    if data[:4] == b"PK\x03\x04":  # .npz and other zips: member names and contents
        with zipfile.ZipFile(io.BytesIO(data)) as zf:
            for member in zf.namelist():
                yield from _views(f"{name}!{member}", member.encode() + zf.read(member))
    elif data[:4] == b"PAR1":  # parquet: every cell, column name and schema metadata
        table = pd.read_parquet(io.BytesIO(data))
        yield f"{name}:cells", table.to_csv().encode()
        yield f"{name}:schema", repr(pq.read_schema(io.BytesIO(data)).metadata).encode()
    elif data[:8] == b"\x89PNG\r\n\x1a\n":  # PNG text chunks (zTXt/iTXt are compressed)
        yield f"{name}:text", repr(Image.open(io.BytesIO(data)).info).encode()
    elif data[:5] == b"%PDF-":  # deflated streams (metadata, fonts) and the rendered text
        for i, match in enumerate(re.finditer(rb"stream\r?\n", data)):
            yield f"{name}#stream{i}", _inflate(data[match.end():])
        yield f"{name}:text", _pdf_text(data).encode()
    else:  # embedded images (data: URIs) in HTML, JSON or text
        for i, match in enumerate(re.finditer(rb"base64,([A-Za-z0-9+/=]+)", data)):
            yield from _views(f"{name}#data{i}", base64.b64decode(match.group(1)))


def _inflate(data: bytes) -> bytes:
    """A zlib stream's content (data after its end is ignored); empty when not zlib."""
    try:
        return zlib.decompressobj().decompress(data)
    except zlib.error:
        return b""


def _pdf_text(data: bytes) -> str:
    """The text a reader sees in a PDF (pypdfium2, when installed)."""
    try:
        import pypdfium2
    except ImportError:
        return ""
    pdf = pypdfium2.PdfDocument(data)
    return "\n".join(page.get_textpage().get_text_range() for page in pdf)


def _assert_clean(name: str, data: bytes, secrets: list[str]) -> None:
    for view, blob in _views(name, data):
        for secret in secrets:
            for form in {secret, json.dumps(secret)[1:-1], secret.replace("^", " ")}:
                assert form.encode() not in blob, f"{secret!r} leaked into {view}"


def test_leak_check_sees_through_compression_and_embedding() -> None:
    secret = "Doe^Jane"
    table = io.BytesIO()
    pd.DataFrame({"id": ["a", secret] * 50}).to_parquet(table, compression="snappy")
    arrays = io.BytesIO()
    np.savez_compressed(arrays, **{secret: np.zeros(3)})
    png = io.BytesIO()
    info = PngImagePlugin.PngInfo()
    info.add_text("Comment", secret, zip=True)
    Image.new("L", (4, 4)).save(png, format="PNG", pnginfo=info)
    html = b"<img src='data:image/png;base64," + base64.b64encode(png.getvalue()) + b"'>"
    for name, data in (("parquet", table.getvalue()), ("npz", arrays.getvalue()),
                       ("html", html)):
        with pytest.raises(AssertionError, match="leaked"):
            _assert_clean(name, data, [secret])
    _assert_clean("html", html, ["Zebulon"])


@pytest.mark.filterwarnings("ignore")
def test_run_directory_has_no_patient_tags_or_user_paths(tmp_path: Path) -> None:
    pytest.importorskip("pydicom")
    parent = tmp_path / PARENT
    test_dir = _dicom_folder(parent / "scans" / "ct_test", 4, 0)
    cal_dir = _dicom_folder(parent / "scans" / "ct_cal", 4, 3)
    model = parent / "models" / "seg.pt"
    train(open_dataset(cal_dir, "segmentation"),
          TrainConfig(task="segmentation", size=64, epochs=1, patches_per_image=1), model,
          progress=False)
    suite = parent / "suite.yaml"
    suite.write_text("tests: [gaussian_noise]\nseverities: [3]\nn_bootstrap: 50\n"
                     "uncertainty: [mc_dropout]\nmc_passes: 2\n")
    run_dir = parent / "runs" / "seg"
    proc = subprocess.run(
        [sys.executable, "-m", "medfail.cli", "run", "--model", str(model), "--data",
         str(test_dir), "--task", "segmentation", "--out", str(run_dir), "--config", str(suite),
         "--calibration", str(cal_dir)],
        capture_output=True, cwd=tmp_path, timeout=300, check=False,
        env={**os.environ, "OMP_NUM_THREADS": "1"})  # no thread spinning next to other tests
    assert proc.returncode == 0, proc.stderr.decode()[-3000:]
    assert (run_dir / "report.html").exists()

    info = json.loads((run_dir / "run.json").read_text())
    assert info["command"][1:] == [
        "run", "--model", "seg.pt", "--data", "ct_test", "--task", "segmentation", "--out",
        "seg", "--config", "suite.yaml", "--calibration", "ct_cal"]
    assert info["data"]["name"] == "ct_test"  # the data folder's own name is kept

    secrets = [*TAGS.values(), PARENT, str(tmp_path), str(parent)]
    files = [p for p in run_dir.rglob("*") if p.is_file()]
    assert len(files) > 10
    for path in files:
        _assert_clean(str(path.relative_to(run_dir)), path.read_bytes(), secrets)
    # the console: progress bars, warnings and messages (the `report:` line names the --out
    # path the user typed, which is the user's own folder, so it is checked for tags only)
    _assert_clean("stderr", proc.stderr, secrets)
    stdout = b"\n".join(line for line in proc.stdout.splitlines()
                        if not line.startswith(b"report: "))
    _assert_clean("stdout", stdout, secrets)
    _assert_clean("stdout", proc.stdout, list(TAGS.values()))
