"""Effective bit depth: 16-bit PNG/TIFF holding 8- or 12-bit values get the stress scale of the
bits they use (like DICOM BitsStored), decided once per dataset; the model input is unchanged."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import tifffile
import torch
from PIL import Image

import medfail.data.folder as folder_module
from medfail.data.datasets import open_dataset
from medfail.data.folder import decide_bit_depth
from medfail.data.readers import effective_bits, effective_range, read_image
from medfail.engine.runner import run_suite
from medfail.engine.suite import SuiteConfig
from medfail.models.adapters import Segmenter
from medfail.models.intensity import check_intensity
from medfail.models.spec import ModelSpec
from medfail.stress.registry import perturb_samples
from tests.conftest import dsb2018

SIZE = 32
UNIT = 255 / 65535  # one 16-bit step on medfail's 8-bit scale


def _picture(top: int, seed: int = 0) -> np.ndarray:
    """A 0..top integer picture (a bright disc on a ramp) holding exactly ``top``."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:SIZE, :SIZE]
    disc = (yy - 12 - seed % 5) ** 2 + (xx - 15) ** 2 < 60
    pic = 0.25 * top * xx / SIZE + 0.55 * top * disc + rng.normal(0, 0.04 * top, (SIZE, SIZE))
    pic = np.clip(np.rint(pic), 0, top).astype(np.int64)
    pic[0, 0] = top
    return pic


def _save(pic: np.ndarray, path: Path, wide: bool) -> None:
    """``pic`` as an 8-bit or (``wide``) 16-bit PNG or TIFF, values unchanged."""
    arr = pic.astype(np.uint16 if wide else np.uint8)
    if path.suffix == ".tif":
        tifffile.imwrite(path, arr)
    else:
        Image.fromarray(arr).save(path)


def _folder(root: Path, pics: list[np.ndarray], suffix: str, wide: bool = True,
            name: str = "img") -> Path:
    """``images/<name><i><suffix>`` (16-bit when ``wide``) and 0/1 masks."""
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    for i, pic in enumerate(pics):
        _save(pic, root / "images" / f"{name}{i}{suffix}", wide)
        Image.fromarray((pic > pic.max() * 0.45).astype(np.uint8)).save(
            root / "masks" / f"{name}{i}.png")
    return root


def _bit_lines(out: str) -> list[str]:
    return [ln for ln in out.splitlines() if ln.startswith("images:")]


# ---------------------------------------------------------------------------- the rule


def test_effective_bits_rule() -> None:
    assert effective_bits(235, 16) == 8
    assert effective_bits(4095, 16) == 12
    assert effective_bits(4096, 16) == 13
    assert effective_bits(40000, 16) == 16
    assert effective_bits(20, 16) == 8  # never below 8: dark 16-bit images read like 8-bit ones
    assert effective_bits(100, 8) == 8 and effective_bits(1, 1) == 1  # 8-bit and lower: e = b
    assert effective_range(16, 16) == effective_range(8, 8) == (0.0, 255.0)
    assert effective_range(16, 8) == (0.0, 255 * 255 / 65535)
    assert effective_range(16, 12) == (0.0, 255 * 4095 / 65535)


@pytest.mark.parametrize("suffix,top,e,line", [
    (".tif", 235, 8, "images: 16-bit files holding 8-bit values (max 235) -> stress scale "
     "0..255 raw (0..0.99 on medfail's 8-bit scale) [data]"),
    (".png", 235, 8, "images: 16-bit files holding 8-bit values (max 235) -> stress scale "
     "0..255 raw (0..0.99 on medfail's 8-bit scale) [data]"),
    (".tif", 4095, 12, "images: 16-bit files holding 12-bit values (max 4095) -> stress scale "
     "0..4095 raw (0..15.93 on medfail's 8-bit scale) [data]"),
    (".png", 4095, 12, "images: 16-bit files holding 12-bit values (max 4095) -> stress scale "
     "0..4095 raw (0..15.93 on medfail's 8-bit scale) [data]"),
    (".png", 40000, 16, None),
])
def test_16bit_files_get_the_scale_of_the_bits_they_use(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], suffix: str, top: int, e: int,
        line: str | None) -> None:
    root = _folder(tmp_path / "data", [_picture(top, s) for s in range(3)], suffix)
    raw = read_image(root / "images" / f"img0{suffix}")
    assert (raw.bits, raw.raw_max, raw.value_range) == (16, top, (0.0, 255.0))  # the file alone
    data = open_dataset(root, "segmentation")
    data.validate(progress=False)
    hi = 255.0 * (2**e - 1) / 65535
    info = data.intensity_info
    assert info["depths"] == [{"bits": 16, "effective_bits": e, "raw_max": top, "n_images": 3,
                               "value_range": [0.0, pytest.approx(hi)]}]
    for sample in data:
        assert sample.value_range == pytest.approx((0.0, hi))
        np.testing.assert_allclose(sample.image.max(), top * UNIT, rtol=1e-6)  # input unchanged
    assert _bit_lines(capsys.readouterr().out) == ([line] if line else [])
    assert info["message"] == (line[: -len(" [data]")] if line else None)


def test_8bit_files_unchanged(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A dark 8-bit folder (max 100, which 7 bits would hold) keeps (0, 255): e = b = 8."""
    root = _folder(tmp_path / "data", [_picture(100, s) for s in range(3)], ".png", wide=False)
    assert (read_image(root / "images" / "img0.png").bits,
            read_image(root / "images" / "img0.png").raw_max) == (8, 100)
    data = open_dataset(root, "segmentation")
    assert data.load("img0").value_range == (0.0, 255.0)
    assert data.intensity_info == {"depths": [], "message": None}
    assert _bit_lines(capsys.readouterr().out) == []


def test_dataset_max_decides_for_every_image(tmp_path: Path,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    """Images of max 200, 1000 and 3000 in one folder: all get the 12-bit scale of the max."""
    pics = [_picture(200, 0), _picture(3000, 1), _picture(1000, 2)]
    root = _folder(tmp_path / "data", pics, ".tif")
    data = open_dataset(root, "segmentation")
    ranges = {s.id: s.value_range for s in data}
    assert set(ranges.values()) == {(0.0, 255 * 4095 / 65535)}
    assert data.intensity_info["depths"][0]["raw_max"] == 3000
    assert len(_bit_lines(capsys.readouterr().out)) == 1


def test_mixed_containers_are_judged_per_bit_depth(tmp_path: Path) -> None:
    """An 8-bit PNG next to 16-bit TIFFs: the 8-bit file keeps 0..255, the TIFFs get 8 bits."""
    root = _folder(tmp_path / "data", [_picture(235, 0), _picture(200, 1)], ".tif")
    _save(_picture(250, 2), root / "images" / "eight.png", wide=False)
    Image.fromarray((_picture(250, 2) > 100).astype(np.uint8)).save(root / "masks" / "eight.png")
    data = open_dataset(root, "segmentation")
    assert data.load("eight").value_range == (0.0, 255.0)
    assert data.load("img1").value_range == (0.0, 255 * 255 / 65535)
    assert decide_bit_depth([(8, 250), (16, 235), (16, 200)])["depths"][0]["n_images"] == 2


def test_same_decision_whichever_path_decides(tmp_path: Path,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    """validate() first, load() first (lazy), or a pickled copy (Ray workers): one value; the
    lazy path decodes only the files whose header allows more than 8 bits."""
    pics = [_picture(4095, 0), _picture(900, 1)]
    root = _folder(tmp_path / "data", pics, ".png")
    for i in range(3):
        _save(_picture(255, i), root / "images" / f"eight{i}.png", wide=False)
        Image.fromarray((_picture(255, i) > 100).astype(np.uint8)).save(
            root / "masks" / f"eight{i}.png")
    validated = open_dataset(root, "segmentation")
    validated.validate(progress=False)
    decoded: list[str] = []
    real = folder_module.read_image

    def counting(path: str | Path) -> object:
        decoded.append(Path(path).name)
        return real(path)

    monkeypatch.setattr(folder_module, "read_image", counting)
    lazy = open_dataset(root, "segmentation")
    lazy_range = lazy.load("img1").value_range
    assert sorted(decoded) == ["img0.png", "img1.png"]  # 8-bit files: header only
    worker = pickle.loads(pickle.dumps(open_dataset(root, "segmentation")))
    decoded.clear()
    worker_range = worker.load("img1").value_range
    assert decoded == ["img1.png"]  # decided before pickling: the worker decodes no more
    assert validated.intensity_info == lazy.intensity_info == worker.intensity_info
    assert validated.load("img1").value_range == lazy_range == worker_range == (
        0.0, 255 * 4095 / 65535)


# ---------------------------------------------------------------------------- stress strength


def _stardist_tile(root: Path) -> Path:
    """Two 256x256 tiles of stardist's real DSB2018 nuclei image (uint16 holding 0..235), with
    their instance masks as 0/1 PNGs."""
    image, instances = dsb2018()
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    for i in range(2):
        tile = np.s_[:256, i * 256:(i + 1) * 256]
        tifffile.imwrite(root / "images" / f"tile{i}.tif", image[tile])
        Image.fromarray((instances[tile] > 0).astype(np.uint8)).save(
            root / "masks" / f"tile{i}.png")
    return root


def test_gaussian_noise_sigma_is_a_fraction_of_the_effective_range(tmp_path: Path) -> None:
    """DSB2018 (uint16 holding 0..235): gaussian_noise@1 has sigma = 0.04 x 0.992, not
    0.04 x 255 (old code: the tile drowned in noise 257x stronger than its severity says)."""
    sample = open_dataset(_stardist_tile(tmp_path / "dsb"), "segmentation").load("tile0")
    lo, hi = sample.value_range
    assert (lo, hi) == pytest.approx((0.0, 255 * 255 / 65535))
    noisy = perturb_samples([sample], "gaussian_noise@1", run_seed=0)[0]  # the engine's call
    clean = sample.image
    inside = (clean > 0.2 * hi) & (clean < 0.8 * hi)  # >= 5 sigma from both clipping bounds
    assert inside.sum() > 2000
    sigma = float(np.std((noisy - clean)[inside]))
    assert sigma == pytest.approx(0.04 * hi, rel=0.05)
    assert noisy.min() >= lo and noisy.max() <= hi


def test_span_warning_gone_for_dsb_tile_kept_for_dark_images(tmp_path: Path) -> None:
    unit = ModelSpec(task="segmentation", target_names=["foreground"])
    info = check_intensity(unit, open_dataset(_stardist_tile(tmp_path / "dsb"), "segmentation"),
                           warn=False)
    assert info["warning"] is None and info["test_range_fill"] > 0.5  # old code: 0.4 %, warned
    # genuinely dark: 8-bit images holding 0..20, or 16-bit images far below the brightest file
    dark8 = _folder(tmp_path / "dark8", [_picture(20, s) for s in range(3)], ".png", wide=False)
    dark8_info = check_intensity(unit, open_dataset(dark8, "segmentation"), warn=False)
    assert "span only" in dark8_info["warning"]
    pics = [_picture(300, s) for s in range(4)] + [_picture(60000, 9)]
    outlier = _folder(tmp_path / "outlier", pics, ".tif")
    outlier_info = check_intensity(unit, open_dataset(outlier, "segmentation"), warn=False)
    assert "span only" in outlier_info["warning"]


# ---------------------------------------------------------------------------- end to end


def _hard_threshold(level: float) -> Segmenter:
    """Foreground where x > level (a half-integer in 8-bit steps, so rounding the perturbed
    8-bit image never changes a decision)."""
    spec = ModelSpec(task="segmentation", target_names=["foreground"], output="probabilities")

    def forward(x: torch.Tensor) -> torch.Tensor:
        fg = (x[:, :1] > level).to(x.dtype)
        return torch.cat([1 - fg, fg], dim=1)

    return Segmenter(spec, forward)


def test_8bit_png_and_16bit_tiff_with_the_same_values_stress_identically(
        tmp_path: Path) -> None:
    """The same 0..235 tiles as 8-bit PNG and as uint16 TIFF: identical per-sample metrics under
    gaussian_noise@1 (old code: the TIFF's noise was 257x stronger)."""
    pics = [_picture(235, s) for s in range(4)]
    config = SuiteConfig(tests=["gaussian_noise", "brightness"], severities=[1], n_bootstrap=10,
                         uncertainty=[], mitigate=False, min_slice_n=2)
    per_sample = {}
    for kind, suffix, unit in (("png8", ".png", 1.0), ("tif16", ".tif", UNIT)):
        root = _folder(tmp_path / kind, pics, suffix, wide=kind == "tif16", name="tile")
        run = run_suite(_hard_threshold(130.5 * unit), open_dataset(root, "segmentation"),
                        tmp_path / f"run_{kind}", config, progress=False, render=False)
        table = pd.read_parquet(run / "per_sample.parquet")
        per_sample[kind] = table.sort_values(["condition", "id", "metric"]).reset_index(drop=True)
        bit_depth = json.loads((run / "run.json").read_text())["data"]["bit_depth"]
        if kind == "tif16":
            assert bit_depth["depths"][0]["effective_bits"] == 8
        else:
            assert bit_depth == {"depths": [], "message": None}
    eight, sixteen = per_sample["png8"], per_sample["tif16"]
    assert set(eight["condition"]) == {"clean", "gaussian_noise@1", "brightness@1"}
    pd.testing.assert_frame_equal(eight, sixteen)
    dice = eight[eight["metric"] == "dice"].set_index(["condition", "id"])["value"]
    assert (dice["gaussian_noise@1"] - dice["clean"]).abs().min() > 0.001  # noise matters
