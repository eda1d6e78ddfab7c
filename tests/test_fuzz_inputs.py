"""Fuzz table: malformed and hostile inputs through the command line, as a user meets them.

Every case builds one broken input (file, labels, mask, metadata, model, config, output folder)
next to otherwise valid ones and runs ``medfail`` in-process. An error case must end with exit
code 2, exactly one ``error:`` line that names the culprit, no traceback, and no result files;
an ``ok`` case must finish with exit 0. The table in docs/reliability.md lists these cases.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from medfail.cli import app
from medfail.models.spec import ModelSpec
from tests.conftest import write_png_folder

runner = CliRunner()
SUITE = "tests: [gaussian_noise]\nseverities: [1]\nn_bootstrap: 20\nuncertainty: []\n" \
        "mitigate: false\n"
RESULT_FILES = ("metrics.parquet", "per_sample.parquet", "report.html")


class Threshold(torch.nn.Module):
    """Segmenter: foreground probability = sigmoid((x - 130) / 10)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        fg = torch.sigmoid((x[:, :1] - 130.0) / 10.0)
        return torch.cat([1 - fg, fg], dim=1)


class Brightness(torch.nn.Module):
    """Classifier (disc, bar): scores from the image maximum and the top rows."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        disc = torch.sigmoid((x.amax(dim=(1, 2, 3)) - 190.0) / 10.0)
        bar = torch.sigmoid((x[:, :, 2:5].mean(dim=(1, 2, 3)) - 120.0) / 20.0)
        return torch.stack([disc, bar], dim=1)


class NaNSegmenter(torch.nn.Module):
    """Segmenter whose every output is NaN."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        nan = torch.full_like(x[:, :1], float("nan"))
        return torch.cat([nan, nan], dim=1)


class HalfResolution(torch.nn.Module):
    """Segmenter that returns maps at half the input's resolution."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        fg = torch.sigmoid((x[:, :1, ::2, ::2] - 130.0) / 10.0)
        return torch.cat([1 - fg, fg], dim=1)


def scripted(module: torch.nn.Module, spec: ModelSpec, path: Path) -> Path:
    torch.jit.save(torch.jit.script(module), str(path),
                   _extra_files={"medfail_spec.json": json.dumps(spec.to_dict())})
    return path


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("models")
    return {
        "segmentation": scripted(Threshold(), ModelSpec(
            task="segmentation", target_names=["lesion"], output="probabilities"),
            root / "seg.pt"),
        "classification": scripted(Brightness(), ModelSpec(
            task="classification", target_names=["disc", "bar"], multi_label=True,
            input_size=(32, 32), output="probabilities"), root / "cls.pt"),
    }


# ---------------------------------------------------------------------------------- breakers
# Each breaker damages a valid folder (or writes a file) and returns (task, extra CLI options).

Case = Callable[[Path, Path], tuple[str, list[str]]]


def _png(path: Path, arr: np.ndarray) -> None:
    Image.fromarray(arr).save(path)


def _seg(tmp: Path) -> Path:
    return write_png_folder(tmp / "data", "segmentation", n=6)


def _cls(tmp: Path) -> Path:
    return write_png_folder(tmp / "data", "classification", n=6)


def truncated_png(tmp: Path, data: Path) -> tuple[str, list[str]]:
    path = _seg(tmp) / "images" / "case001.png"
    path.write_bytes(path.read_bytes()[:40])
    return "segmentation", []


def empty_png(tmp: Path, data: Path) -> tuple[str, list[str]]:
    (_seg(tmp) / "images" / "case002.png").write_bytes(b"")
    return "segmentation", []


def text_as_png(tmp: Path, data: Path) -> tuple[str, list[str]]:
    (_seg(tmp) / "images" / "case002.png").write_text("not an image\n")
    return "segmentation", []


def unsupported_suffix(tmp: Path, data: Path) -> tuple[str, list[str]]:
    (_seg(tmp) / "images" / "extra.bmp").write_bytes(b"BM")
    return "segmentation", []


def folder_in_images(tmp: Path, data: Path) -> tuple[str, list[str]]:
    (_seg(tmp) / "images" / "sub").mkdir()
    return "segmentation", []


def duplicate_id(tmp: Path, data: Path) -> tuple[str, list[str]]:
    root = _seg(tmp)
    np.save(root / "images" / "case001.npy", np.zeros((32, 32), np.float32))
    return "segmentation", []


def no_images(tmp: Path, data: Path) -> tuple[str, list[str]]:
    root = tmp / "data"
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    return "segmentation", []


def missing_mask(tmp: Path, data: Path) -> tuple[str, list[str]]:
    (_seg(tmp) / "masks" / "case003.png").unlink()
    return "segmentation", []


def mask_shape_mismatch(tmp: Path, data: Path) -> tuple[str, list[str]]:
    _png(_seg(tmp) / "masks" / "case003.png", np.zeros((16, 16), np.uint8))
    return "segmentation", []


def fractional_mask(tmp: Path, data: Path) -> tuple[str, list[str]]:
    root = _seg(tmp)
    (root / "masks" / "case003.png").unlink()
    np.save(root / "masks" / "case003.npy", np.full((32, 32), 0.5, np.float32))
    return "segmentation", []


def negative_mask(tmp: Path, data: Path) -> tuple[str, list[str]]:
    root = _seg(tmp)
    (root / "masks" / "case003.png").unlink()
    np.save(root / "masks" / "case003.npy", -np.ones((32, 32), np.int16))
    return "segmentation", []


def nan_image(tmp: Path, data: Path) -> tuple[str, list[str]]:
    root = _seg(tmp)
    (root / "images" / "case004.png").unlink()
    img = np.full((32, 32), 60.0, np.float32)
    img[3, 3] = np.nan
    np.save(root / "images" / "case004.npy", img)
    return "segmentation", []


def volume_npy(tmp: Path, data: Path) -> tuple[str, list[str]]:
    root = _seg(tmp)
    (root / "images" / "case004.png").unlink()
    np.save(root / "images" / "case004.npy", np.zeros((8, 32, 32), np.float32))
    return "segmentation", []


def labels_missing(tmp: Path, data: Path) -> tuple[str, list[str]]:
    (_cls(tmp) / "labels.csv").unlink()
    return "classification", []


def _edit_labels(tmp: Path, text: Callable[[str], str]) -> Path:
    path = _cls(tmp) / "labels.csv"
    path.write_text(text(path.read_text()))
    return path


def labels_no_id(tmp: Path, data: Path) -> tuple[str, list[str]]:
    _edit_labels(tmp, lambda t: t.replace("id,", "name,", 1))
    return "classification", []


def labels_unknown_id(tmp: Path, data: Path) -> tuple[str, list[str]]:
    _edit_labels(tmp, lambda t: t + "ghost,1,0\n")
    return "classification", []


def labels_missing_row(tmp: Path, data: Path) -> tuple[str, list[str]]:
    _edit_labels(tmp, lambda t: "\n".join(t.splitlines()[:-1]) + "\n")
    return "classification", []


def labels_not_binary(tmp: Path, data: Path) -> tuple[str, list[str]]:
    _edit_labels(tmp, lambda t: t.replace("case001,0", "case001,2", 1))
    return "classification", []


def labels_duplicate_row(tmp: Path, data: Path) -> tuple[str, list[str]]:
    _edit_labels(tmp, lambda t: t + t.splitlines()[1] + "\n")
    return "classification", []


def labels_ragged_row(tmp: Path, data: Path) -> tuple[str, list[str]]:
    _edit_labels(tmp, lambda t: t.replace("case002,1,", "case002,1,1,", 1))
    return "classification", []


def labels_empty(tmp: Path, data: Path) -> tuple[str, list[str]]:
    _edit_labels(tmp, lambda t: "")
    return "classification", []


def labels_latin1(tmp: Path, data: Path) -> tuple[str, list[str]]:
    path = _cls(tmp) / "labels.csv"
    path.write_bytes(path.read_bytes().replace(b"disc", b"d\xe9sc", 1))
    return "classification", []


def labels_missing_target(tmp: Path, data: Path) -> tuple[str, list[str]]:
    path = _cls(tmp) / "labels.csv"
    pd.read_csv(path).drop(columns="bar").to_csv(path, index=False)
    return "classification", []


def metadata_bad_spacing(tmp: Path, data: Path) -> tuple[str, list[str]]:
    path = _seg(tmp) / "metadata.csv"
    frame = pd.read_csv(path)
    frame["pixel_spacing"] = ["0.7"] * (len(frame) - 1) + ["-1"]
    frame.to_csv(path, index=False)
    return "segmentation", []


def metadata_unknown_id(tmp: Path, data: Path) -> tuple[str, list[str]]:
    path = _seg(tmp) / "metadata.csv"
    path.write_text(path.read_text() + "ghost,s1\n")
    return "segmentation", []


def metadata_duplicate_id(tmp: Path, data: Path) -> tuple[str, list[str]]:
    path = _seg(tmp) / "metadata.csv"
    path.write_text(path.read_text() + path.read_text().splitlines()[1] + "\n")
    return "segmentation", []


def model_missing(tmp: Path, data: Path) -> tuple[str, list[str]]:
    _seg(tmp)
    return "segmentation", ["--model", str(tmp / "nope.pt")]


def model_garbage(tmp: Path, data: Path) -> tuple[str, list[str]]:
    _seg(tmp)
    (tmp / "junk.pt").write_bytes(b"\x00garbage" * 10)
    return "segmentation", ["--model", str(tmp / "junk.pt")]


def model_garbage_onnx(tmp: Path, data: Path) -> tuple[str, list[str]]:
    _seg(tmp)
    (tmp / "junk.onnx").write_bytes(b"\x00garbage" * 10)
    return "segmentation", ["--model", str(tmp / "junk.onnx")]


def model_pickle(tmp: Path, data: Path) -> tuple[str, list[str]]:
    _seg(tmp)
    torch.save(Threshold(), tmp / "pickled.pt")
    return "segmentation", ["--model", str(tmp / "pickled.pt")]


def model_bad_entry_point(tmp: Path, data: Path) -> tuple[str, list[str]]:
    _seg(tmp)
    return "segmentation", ["--model", "no_such_package.module:make_model"]


def model_wrong_task(tmp: Path, data: Path) -> tuple[str, list[str]]:
    _seg(tmp)
    return "segmentation", ["--model", str(data / "cls.pt")]


def config_missing(tmp: Path, data: Path) -> tuple[str, list[str]]:
    _seg(tmp)
    return "segmentation", ["--config", str(tmp / "none.yaml")]


def bad_config(text: str) -> Case:
    """A breaker that writes ``text`` as the suite config."""

    def breaker(tmp: Path, data: Path) -> tuple[str, list[str]]:
        _seg(tmp)
        (tmp / "bad.yaml").write_text(text)
        return "segmentation", ["--config", str(tmp / "bad.yaml")]

    return breaker


def png_bomb(tmp: Path, data: Path) -> tuple[str, list[str]]:
    from tests.test_input_limits import _png_bomb

    root = _seg(tmp)
    _png_bomb(root / "images" / "case005.png")
    return "segmentation", []


def unknown_mask_label(tmp: Path, data: Path) -> tuple[str, list[str]]:
    root = _seg(tmp)
    mask = np.asarray(Image.open(root / "masks" / "case002.png")).copy()
    mask[:2, :2] = 3  # a class the one-class model does not know
    _png(root / "masks" / "case002.png", mask)
    return "segmentation", []


def ambiguous_mask_value(tmp: Path, data: Path) -> tuple[str, list[str]]:
    root = _seg(tmp)
    for path in (root / "masks").iterdir():
        _png(path, (np.asarray(Image.open(path)) * 2).astype(np.uint8))  # every mask 0/2
    return "segmentation", []


def out_is_a_file(tmp: Path, data: Path) -> tuple[str, list[str]]:
    _seg(tmp)
    (tmp / "taken.txt").write_text("mine\n")
    return "segmentation", ["--out", str(tmp / "taken.txt")]


def out_is_a_user_folder(tmp: Path, data: Path) -> tuple[str, list[str]]:
    _seg(tmp)
    (tmp / "thesis").mkdir()
    (tmp / "thesis" / "chapter1.tex").write_text("\\section{Intro}\n")
    return "segmentation", ["--out", str(tmp / "thesis")]


def nan_model(tmp: Path, data: Path) -> tuple[str, list[str]]:
    _seg(tmp)
    spec = ModelSpec(task="segmentation", target_names=["lesion"], output="probabilities")
    return "segmentation", ["--model", str(scripted(NaNSegmenter(), spec, tmp / "nan.pt"))]


def half_resolution_model(tmp: Path, data: Path) -> tuple[str, list[str]]:
    _seg(tmp)
    spec = ModelSpec(task="segmentation", target_names=["lesion"], output="probabilities")
    return "segmentation", ["--model", str(scripted(HalfResolution(), spec, tmp / "half.pt"))]


# name -> (breaker, pattern the error line must match)
ERRORS: dict[str, tuple[Case, str]] = {
    "truncated png": (truncated_png, r"case001\.png"),
    "zero-byte png": (empty_png, r"case002\.png"),
    "text file named .png": (text_as_png, r"case002\.png"),
    "unsupported suffix": (unsupported_suffix, r"extra\.bmp.*unsupported"),
    "folder inside images/": (folder_in_images, r"sub.*unexpected folder"),
    "duplicate id": (duplicate_id, r"duplicate id 'case001'"),
    "empty images/": (no_images, r"no image files"),
    "missing mask": (missing_mask, r"no mask for 1 image"),
    "mask of another size": (mask_shape_mismatch, r"case003\.png.*does not match"),
    "fractional mask": (fractional_mask, r"case003\.npy.*non-integer"),
    "negative mask": (negative_mask, r"case003\.npy.*negative"),
    "NaN in image": (nan_image, r"case004\.npy.*NaN"),
    "3D .npy in a 2D folder": (volume_npy, r"case004\.npy"),
    "labels.csv missing": (labels_missing, r"labels\.csv.*missing"),
    "labels.csv without id": (labels_no_id, r"labels\.csv.*no 'id' column"),
    "labels.csv unknown id": (labels_unknown_id, r"labels\.csv.*unknown id 'ghost'"),
    "labels.csv missing row": (labels_missing_row, r"labels\.csv.*no label for 1 image"),
    "labels.csv value 2": (labels_not_binary, r"labels\.csv.*not 0/1"),
    "labels.csv duplicate row": (labels_duplicate_row, r"labels\.csv.*duplicate id"),
    "labels.csv ragged row": (labels_ragged_row, r"labels\.csv.*fields"),
    "labels.csv empty": (labels_empty, r"labels\.csv.*empty"),
    "labels.csv latin-1": (labels_latin1, r"labels\.csv"),
    "labels.csv lacks a model target": (labels_missing_target, r"labels\.csv.*bar"),
    "metadata bad spacing": (metadata_bad_spacing, r"metadata\.csv.*pixel_spacing"),
    "metadata unknown id": (metadata_unknown_id, r"metadata\.csv.*unknown id 'ghost'"),
    "metadata duplicate id": (metadata_duplicate_id, r"metadata\.csv.*duplicate id"),
    "model missing": (model_missing, r"nope\.pt"),
    "model garbage bytes": (model_garbage, r"junk\.pt"),
    "onnx garbage bytes": (model_garbage_onnx, r"junk\.onnx"),
    "pickled module": (model_pickle, r"pickled\.pt.*trust-pickle"),
    "entry point not importable": (model_bad_entry_point, r"no_such_package"),
    "model of another task": (model_wrong_task, r"cls\.pt.*classification"),
    "config missing": (config_missing, r"none\.yaml"),
    "config is a list": (bad_config("- gaussian_noise\n"), r"bad\.yaml.*mapping"),
    "config unknown option": (bad_config("sevrities: [1]\n"), r"bad\.yaml.*sevrities"),
    "config unknown test": (bad_config("tests: [gaussian_nois]\n"), r"bad\.yaml.*gaussian_nois"),
    "config not YAML": (bad_config("tests: [a, b\n"), r"bad\.yaml"),
    "config severity 4": (bad_config("severities: [4]\n"), r"bad\.yaml.*severit"),
    "PNG declaring 40000x40000": (png_bomb, r"case005\.png.*40000"),
    "mask label the model does not know": (unknown_mask_label, r"case002\.png"),
    "every mask 0/2 (ambiguous)": (ambiguous_mask_value, r"mask-mode"),
    "--out is a file": (out_is_a_file, r"taken\.txt"),
    "--out is a user's non-empty folder": (out_is_a_user_folder, r"thesis.*--overwrite"),
    "model returns NaN": (nan_model, r"nan\.pt.*non-finite"),
    "model returns half-resolution maps": (half_resolution_model, r"half\.pt.*spatial size"),
    "config severities: 2": (bad_config("severities: 2\n"), r"bad\.yaml.*severities.*got 2"),
    "config tests: a string": (bad_config("tests: gaussian_noise\n"), r"bad\.yaml.*tests"),
    "config threshold NaN": (bad_config("threshold: .nan\n"), r"bad\.yaml.*threshold"),
    "config unknown check metric": (bad_config("checks: [{metric: dise, max_drop: 0.05}]\n"),
                                    r"bad\.yaml.*checks\[0\]"),
    "config negative min_slice_n": (bad_config("min_slice_n: -1\n"), r"bad\.yaml.*min_slice_n"),
}


def run_cli(tmp: Path, models: dict[str, Path], task: str, extra: list[str]
            ) -> tuple[int, str, BaseException | None]:
    (tmp / "suite.yaml").write_text(SUITE)
    args = ["run", "--model", str(models[task]), "--data", str(tmp / "data"), "--task", task,
            "--out", str(tmp / "run"), "--config", str(tmp / "suite.yaml"), "--quiet"]
    for option, value in zip(extra[::2], extra[1::2], strict=True):
        if option in args:
            args[args.index(option) + 1] = value
        else:
            args += [option, value]
    result = runner.invoke(app, args)
    return result.exit_code, result.output, result.exception


def assert_one_error_line(code: int, output: str, exc: BaseException | None,
                          pattern: str) -> None:
    assert exc is None or isinstance(exc, SystemExit), f"uncaught {exc!r}:\n{output}"
    assert "Traceback" not in output, output
    assert code == 2, output
    lines = [ln for ln in output.splitlines() if ln.startswith("error:")]
    assert len(lines) == 1, output
    assert re.search(pattern, lines[0]), lines[0]


@pytest.mark.parametrize("name", list(ERRORS))
def test_bad_input_is_one_clear_error_before_the_model_runs(
        name: str, tmp_path: Path, models: dict[str, Path]) -> None:
    breaker, pattern = ERRORS[name]
    task, extra = breaker(tmp_path, models["segmentation"].parent)
    code, output, exc = run_cli(tmp_path, models, task, extra)
    assert_one_error_line(code, output, exc, pattern)
    for name_ in RESULT_FILES:
        assert not (tmp_path / "run" / name_).exists(), name_


def test_hidden_files_are_ignored(tmp_path: Path, models: dict[str, Path]) -> None:
    root = _seg(tmp_path)
    (root / "images" / ".DS_Store").write_bytes(b"\x00\x01")
    (root / "masks" / "._case001.png").write_bytes(b"\x00\x01")
    code, output, exc = run_cli(tmp_path, models, "segmentation", [])
    assert code == 0 and exc is None, output
    assert pd.read_parquet(tmp_path / "run" / "per_sample.parquet")["id"].nunique() == 6


# ------------------------------------------------------------- same data, shipped differently
# Each re-encoder rewrites the valid 8-bit 0/1 folder the way public datasets ship it; the run
# must give exactly the per-image metrics of the original folder.


def masks_0_255(root: Path) -> None:
    for path in (root / "masks").iterdir():
        _png(path, (np.asarray(Image.open(path)) * 255).astype(np.uint8))


def masks_instances(root: Path) -> None:
    from scipy import ndimage

    for k, path in enumerate(sorted((root / "masks").iterdir())):
        labels, _ = ndimage.label(np.asarray(Image.open(path)))
        _png(path, (labels * (k + 7)).astype(np.uint16))  # ids not starting at 1, uint16 PNG


def masks_bool_npy(root: Path) -> None:
    for path in list((root / "masks").iterdir()):
        np.save(path.with_suffix(".npy"), np.asarray(Image.open(path)) > 0)
        path.unlink()


def images_16bit_png(root: Path) -> None:
    for path in (root / "images").iterdir():
        _png(path, np.asarray(Image.open(path)).astype(np.uint16) * 257)


SHIPPED: dict[str, tuple[Callable[[Path], None], list[str]]] = {
    "0/255 masks": (masks_0_255, []),
    # one object per image with per-image ids reads as classes in auto mode (<= 20 labels): the
    # user says what the ids are (auto-detection of crowded instance maps: test_mask_modes.py)
    "instance-labelled uint16 masks": (masks_instances, ["--mask-mode", "instances"]),
    "boolean .npy masks": (masks_bool_npy, []),
    "16-bit PNG images": (images_16bit_png, []),
}


@pytest.fixture(scope="module")
def reference_run(tmp_path_factory: pytest.TempPathFactory, models: dict[str, Path]
                  ) -> pd.DataFrame:
    tmp = tmp_path_factory.mktemp("reference")
    _seg(tmp)
    code, output, _ = run_cli(tmp, models, "segmentation", [])
    assert code == 0, output
    return pd.read_parquet(tmp / "run" / "per_sample.parquet")


@pytest.mark.parametrize("name", list(SHIPPED))
def test_same_data_shipped_differently_scores_the_same(
        name: str, tmp_path: Path, models: dict[str, Path], reference_run: pd.DataFrame) -> None:
    reencode, options = SHIPPED[name]
    reencode(_seg(tmp_path))
    code, output, exc = run_cli(tmp_path, models, "segmentation", options)
    assert code == 0 and exc is None, output
    per_sample = pd.read_parquet(tmp_path / "run" / "per_sample.parquet")
    assert (reference_run.query("metric == 'dice'")["value"] > 0.5).all()
    pd.testing.assert_frame_equal(per_sample, reference_run)
