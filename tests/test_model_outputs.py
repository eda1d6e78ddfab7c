"""Model outputs checked at the boundary: one clear MedfailModelError per bad model kind, raised
by the probe before a run writes anything (or mid-run, keeping finished conditions)."""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn
from typer.testing import CliRunner

from medfail.cli import app
from medfail.data.datasets import open_dataset
from medfail.data.prompts import Prompt
from medfail.engine.runner import run_suite
from medfail.engine.suite import SuiteConfig
from medfail.errors import MedfailInputError, MedfailModelError
from medfail.models.adapters import Classifier, PromptableSegmenter, Segmenter
from medfail.models.loading import load_model
from medfail.models.output_checks import check_output, tolerance
from medfail.models.spec import ModelSpec
from tests.conftest import write_png_folder

MODULE = "medfail_test_bad_models"
SOURCE = '''
import numpy as np
import torch
import torch.nn.functional as F

LIMIT = 1e9  # set by the stress test: pixel-to-pixel noise level above which NaN comes back


def _seg(x):
    fg = torch.sigmoid((x[:, :1] - 130.0) / 10.0)
    return torch.cat([1 - fg, fg], dim=1)


def _cls(x):
    disc = torch.sigmoid((x.amax(dim=(1, 2, 3)) - 190.0) / 10.0)
    return torch.stack([disc, 1 - disc], dim=1)


def good_seg():
    return _seg

def nan_seg():
    return lambda x: _seg(x) * float("nan")

def inf_cls():
    return lambda x: _cls(x) / 0.0

def logits_as_probabilities():
    return lambda x: torch.cat([-(x[:, :1] - 130.0), x[:, :1] - 130.0], dim=1)

def unnormalised_seg():
    return lambda x: torch.cat([_seg(x)[:, :1], torch.full_like(x[:, :1], 0.9)], dim=1)

def unnormalised_cls():
    return lambda x: torch.full((x.shape[0], 2), 0.8)

def three_channel_seg():
    return lambda x: torch.cat([_seg(x), torch.zeros_like(x[:, :1])], dim=1)

def foreground_only_seg():
    return lambda x: _seg(x)[:, 1:]

def three_target_cls():
    return lambda x: torch.cat([_cls(x), torch.zeros(x.shape[0], 1)], dim=1) / 1.0

def half_resolution_seg():
    return lambda x: F.avg_pool2d(_seg(x), 2)

def classifier_model():
    return _cls

def segmenter_model():
    return _seg

def dict_output():
    return lambda x: {"out": _seg(x)}

def tuple_output():
    return lambda x: (_seg(x), _seg(x))

def integer_output():
    return lambda x: (_seg(x) > 0.5).long()

def numpy_output():
    return lambda x: _seg(x).numpy()

def first_image_only():
    return lambda x: _seg(x)[:1]

def wrong_input_channels():
    return lambda x: F.conv2d(x, torch.zeros(2, 3, 3, 3), padding=1)

def noisy_input_nan():
    def forward(x):
        level = (x[..., 1:] - x[..., :-1]).abs().flatten(1).median(dim=1).values
        out = _seg(x)
        return torch.where((level > LIMIT).view(-1, 1, 1, 1), float("nan"), out)
    return forward

def promptable_one_channel():
    return lambda x: torch.sigmoid(x[:, -2:-1])
'''
SEG = {"task": "segmentation", "target_names": ["lesion"], "output": "probabilities"}
CLS = {"task": "classification", "target_names": ["disc", "bar"], "multi_label": True,
       "input_size": [32, 32], "output": "probabilities"}
FAST = SuiteConfig(tests=["gaussian_noise"], severities=[3], uncertainty=[], mitigate=False,
                   n_bootstrap=50)


@pytest.fixture
def models(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    """The bad-model module, importable as ``medfail_test_bad_models``."""
    (tmp_path / f"{MODULE}.py").write_text(SOURCE)
    monkeypatch.syspath_prepend(str(tmp_path))
    sys.modules.pop(MODULE, None)
    import importlib

    yield importlib.import_module(MODULE)
    sys.modules.pop(MODULE, None)


def spec_file(tmp_path: Path, spec: dict[str, Any]) -> Path:
    tmp_path.mkdir(parents=True, exist_ok=True)
    path = tmp_path / f"spec{len(list(tmp_path.glob('spec*.json')))}.json"
    path.write_text(json.dumps(spec))
    return path


def refused(tmp_path: Path, model: str, spec: dict[str, Any], task: str | None = None,
            multi_class: bool = False) -> str:
    """Load ``model`` (entry point or file) and run it; the MedfailModelError's message. Asserts
    the run directory was never created."""
    task = task or spec["task"]
    adapter = load_model(model, task, spec_path=spec_file(tmp_path, spec))
    folder = write_png_folder(tmp_path / "data", task, n=4, multi_class=multi_class)
    names = list(spec["target_names"]) if task == "classification" else None
    ds = open_dataset(folder, task, target_names=names)
    with pytest.raises(MedfailModelError) as info:
        run_suite(adapter, ds, tmp_path / "run", FAST, progress=False, render=False)
    assert not (tmp_path / "run").exists()  # refused before any result was written
    return str(info.value)


def test_nan_and_inf_outputs(models: Any, tmp_path: Path) -> None:
    msg = refused(tmp_path, f"{MODULE}:nan_seg", SEG)
    assert msg.startswith(f"model {MODULE}:nan_seg: returned 4096 non-finite value(s)")
    assert "(2, 2, 32, 32) output" in msg and "input with values in [" in msg
    msg = refused(tmp_path / "c", f"{MODULE}:inf_cls", {**CLS, "output": "logits"})
    assert "non-finite value(s) (NaN or inf)" in msg


def test_probabilities_out_of_range_suggest_logits(models: Any, tmp_path: Path) -> None:
    msg = refused(tmp_path, f"{MODULE}:logits_as_probabilities", SEG)
    assert 'output="probabilities", which must lie in [0, 1] (tolerance 0.0001)' in msg
    assert '"output": "logits"' in msg
    # the same model declared as logits is fine: softmax makes probabilities of it
    adapter = load_model(f"{MODULE}:logits_as_probabilities", "segmentation",
                         spec_path=spec_file(tmp_path, {**SEG, "output": "logits"}))
    probs = adapter.predict_proba([np.full((1, 8, 8), 200.0, np.float32)])
    np.testing.assert_allclose(probs[0].sum(axis=0), 1.0, atol=1e-6)


def test_softmax_outputs_must_sum_to_one(models: Any, tmp_path: Path) -> None:
    msg = refused(tmp_path, f"{MODULE}:unnormalised_seg", SEG)
    assert "sum over the 2 classes (dim 1) is off 1" in msg and "must sum to 1" in msg
    multi_class = {**CLS, "target_names": ["disc", "none"], "multi_label": False}
    msg = refused(tmp_path / "c", f"{MODULE}:unnormalised_cls", multi_class, multi_class=True)
    assert "off 1 by up to 0.6" in msg and '"multi_label": true' in msg
    # the same outputs as independent multi-label probabilities are valid
    adapter = load_model(f"{MODULE}:unnormalised_cls", "classification",
                         spec_path=spec_file(tmp_path, CLS))
    np.testing.assert_allclose(adapter.predict_proba([np.zeros((1, 8, 8), np.float32)]), 0.8)


def test_wrong_number_of_classes(models: Any, tmp_path: Path) -> None:
    msg = refused(tmp_path, f"{MODULE}:three_channel_seg", SEG)
    assert ("returned shape (2, 3, 32, 32) but a segmenter must return (2, 2, 32, 32) = "
            "(batch, 1 + foreground classes, H, W)") in msg
    assert "3 channels but the spec has 2 = background + 1 foreground class(es) (lesion)" in msg
    msg = refused(tmp_path / "f", f"{MODULE}:foreground_only_seg", SEG)
    assert "1 channels but the spec has 2" in msg and "one sigmoid foreground map?" in msg
    msg = refused(tmp_path / "c", f"{MODULE}:three_target_cls", CLS)
    assert "returned shape (2, 3) but a classifier must return (2, 2) = (batch, targets)" in msg
    assert "3 outputs per image but the spec has 2 targets (disc, bar)" in msg


def test_half_resolution_segmenter_is_not_interpolated(models: Any, tmp_path: Path) -> None:
    msg = refused(tmp_path, f"{MODULE}:half_resolution_seg", {**SEG, "input_size": [16, 16]})
    # 2 images of 32 x 32 = 18 windows of 16 x 16 (overlap 0.25), one batch
    assert ("returned shape (18, 2, 8, 8) but a segmenter must return (18, 2, 16, 16) = "
            "(batch, 1 + foreground classes, H, W) for a (18, 1, 16, 16) input") in msg
    assert "spatial size (8, 8) differs from its input window (16, 16)" in msg
    assert "never resizes" in msg


def test_classifier_for_segmentation_and_the_reverse(models: Any, tmp_path: Path) -> None:
    msg = refused(tmp_path, f"{MODULE}:classifier_model", SEG)
    assert msg.startswith(f"model {MODULE}:classifier_model: returned shape (2, 2) but a "
                          "segmenter must return (2, 2, 32, 32)")
    assert "looks like a classifier output" in msg
    msg = refused(tmp_path / "c", f"{MODULE}:segmenter_model", CLS)
    assert "returned shape (2, 2, 32, 32) but a classifier must return (2, 2)" in msg
    assert "looks like a segmentation output" in msg and "--task segmentation" in msg


def test_non_tensor_wrong_dtype_and_wrong_batch(models: Any, tmp_path: Path) -> None:
    assert "returned a dict with keys ['out']" in refused(tmp_path, f"{MODULE}:dict_output", SEG)
    msg = refused(tmp_path / "t", f"{MODULE}:tuple_output", SEG)
    assert "returned a tuple of 2 (Tensor, Tensor)" in msg and "must return one tensor" in msg
    msg = refused(tmp_path / "i", f"{MODULE}:integer_output", SEG)
    assert "returned dtype int64 (shape (2, 2, 32, 32)), but probabilities must be floating" in msg
    msg = refused(tmp_path / "b", f"{MODULE}:first_image_only", SEG)
    assert "returned shape (1, 2, 32, 32)" in msg and "batch dimension 1 for a batch of 2" in msg
    # numpy outputs of a callable are fine
    adapter = load_model(f"{MODULE}:numpy_output", "segmentation",
                         spec_path=spec_file(tmp_path, SEG))
    assert adapter.predict_proba([np.zeros((1, 8, 8), np.float32)])[0].shape == (2, 8, 8)


def test_model_that_raises_on_the_probe_is_named(models: Any, tmp_path: Path) -> None:
    msg = refused(tmp_path, f"{MODULE}:wrong_input_channels", SEG)
    assert msg.startswith(f"model {MODULE}:wrong_input_channels: failed on samples "
                          "['case000', 'case001'] (native image shape(s) (1, 32, 32), spec "
                          "in_channels 1")
    assert "RuntimeError" in msg and "\n" not in msg


def test_promptable_probe_runs_with_prompts(models: Any, tmp_path: Path) -> None:
    spec = {"task": "promptable", "target_names": ["lesion"], "input_size": [16, 16],
            "output": "probabilities", "prompt_channels": ["box", "point"]}
    msg = refused(tmp_path, f"{MODULE}:promptable_one_channel", spec)
    assert "but a promptable segmenter must return" in msg
    assert "for a (2, 3, 16, 16) input" in msg  # image + box + point channels, 2 prompts
    assert "1 channels but the spec has 2" in msg


def test_bad_ensemble_member_is_named(models: Any, tmp_path: Path) -> None:
    spec = spec_file(tmp_path, SEG)
    good = load_model(f"{MODULE}:good_seg", "segmentation", spec_path=spec)
    bad = load_model(f"{MODULE}:nan_seg", "segmentation", spec_path=spec)
    ds = open_dataset(write_png_folder(tmp_path / "d", "segmentation", n=3), "segmentation")
    with pytest.raises(MedfailModelError, match=f"^model {MODULE}:nan_seg: returned"):
        run_suite(good, ds, tmp_path / "run", FAST, progress=False, render=False,
                  ensemble=[bad])
    assert not (tmp_path / "run").exists()


class HalfResolution(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        fg = torch.sigmoid((x[:, :1] - 130.0) / 10.0)
        return F.avg_pool2d(torch.cat([1 - fg, fg], dim=1), 2)


def test_torchscript_half_resolution(tmp_path: Path) -> None:
    path = tmp_path / "half.pt"
    torch.jit.save(torch.jit.script(HalfResolution()), str(path),
                   _extra_files={"medfail_spec.json": json.dumps(SEG)})
    adapter = load_model(path, "segmentation")
    ds = open_dataset(write_png_folder(tmp_path / "d", "segmentation", n=3), "segmentation")
    with pytest.raises(MedfailModelError) as info:
        run_suite(adapter, ds, tmp_path / "run", FAST, progress=False, render=False)
    assert str(info.value).startswith("model half.pt: returned shape (2, 2, 16, 16) but a "
                                      "segmenter must return (2, 2, 32, 32)")
    assert not (tmp_path / "run").exists()


class Flat(nn.Module):
    """A classifier whose linear layer only takes 16 x 16 inputs."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.fc = nn.Linear(256, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(x.flatten(1) / 255.0)


def export_onnx(module: nn.Module, path: Path, dynamic: dict[int, str] | None = None) -> Path:
    pytest.importorskip("onnx")
    torch.onnx.export(module.eval(), (torch.zeros(1, 1, 16, 16),), str(path),
                      input_names=["x"], output_names=["y"], dynamo=False,
                      dynamic_axes=None if dynamic is None else {"x": dynamic, "y": {0: "n"}})
    return path


def test_onnx_fixed_input_size_checked_at_load(tmp_path: Path) -> None:
    path = export_onnx(Flat(), tmp_path / "flat.onnx")  # fixed (1, 1, 16, 16)
    logits = {**CLS, "output": "logits"}
    with pytest.raises(MedfailInputError, match=r"flat\.onnx: the ONNX model takes inputs of "
                       r"shape \(1, 1, 16, 16\) but the spec says input_size \[32, 32\]"):
        load_model(path, "classification", spec_path=spec_file(tmp_path, logits))
    with pytest.raises(MedfailInputError, match=r'no input_size; add "input_size": \[16, 16\]'):
        load_model(path, "classification",
                   spec_path=spec_file(tmp_path, {**logits, "input_size": None}))
    with pytest.raises(MedfailInputError, match=r"takes 1 input channels .* in_channels 3"):
        load_model(path, "classification",
                   spec_path=spec_file(tmp_path, {**logits, "input_size": [16, 16],
                                                  "in_channels": 3}))


def test_onnx_runtime_shape_error_is_rephrased(tmp_path: Path) -> None:
    path = export_onnx(Flat(), tmp_path / "flat.onnx", {0: "n", 2: "h", 3: "w"})
    spec = {**CLS, "output": "logits", "input_size": None}
    msg = refused(tmp_path, str(path), spec)
    assert msg.startswith("model flat.onnx: ONNX Runtime refused a (2, 1, 32, 32) input (the "
                          "model's input 'x' has shape (?, 1, ?, ?)):")
    assert "\n" not in msg


def test_onnx_fixed_batch_is_fed_in_chunks(tmp_path: Path) -> None:
    path = export_onnx(Flat(), tmp_path / "flat.onnx")  # batch fixed at 1
    spec = spec_file(tmp_path, {**CLS, "output": "logits", "input_size": [16, 16]})
    adapter = load_model(path, "classification", spec_path=spec)
    images = [np.random.default_rng(i).uniform(0, 255, (1, 16, 16)).astype(np.float32)
              for i in range(5)]
    reference = Classifier(adapter.spec, Flat().eval()).predict_proba(images)
    np.testing.assert_allclose(adapter.predict_proba(images), reference, atol=1e-5)


def test_nan_only_under_stress_keeps_clean_results(models: Any, tmp_path: Path) -> None:
    ds = open_dataset(write_png_folder(tmp_path / "d", "segmentation", n=6), "segmentation")
    clean = max(float(np.median(np.abs(np.diff(ds.load(i).image.astype(np.float32), axis=-1))))
                for i in ds.ids)
    models.LIMIT = 2.0 * clean  # gaussian_noise@3 (sigma 0.12 of the range) is far above
    adapter = load_model(f"{MODULE}:noisy_input_nan", "segmentation",
                         spec_path=spec_file(tmp_path, SEG))
    run = tmp_path / "run"
    with pytest.raises(MedfailModelError, match=f"^model {MODULE}:noisy_input_nan: returned "
                       r"\d+ non-finite value"):
        run_suite(adapter, ds, run, FAST, progress=False, render=False)
    assert (run / ".parts" / "clean.parquet").exists()
    assert set(np.load(run / "predictions" / "clean.npz").files) == set(ds.ids)
    assert not (run / ".parts" / "gaussian_noise@3.parquet").exists()


def test_cli_prints_one_error_line(models: Any, tmp_path: Path) -> None:
    data = write_png_folder(tmp_path / "d", "segmentation", n=3)
    result = CliRunner().invoke(app, [
        "run", "--model", f"{MODULE}:half_resolution_seg", "--model-spec",
        str(spec_file(tmp_path, {**SEG, "input_size": [16, 16]})), "--data", str(data),
        "--task", "segmentation", "--out", str(tmp_path / "run"), "--quiet"])
    assert result.exit_code == 2, result.output
    lines = [ln for ln in result.output.splitlines() if ln.strip()]
    errors = [ln for ln in lines if ln.startswith("error: ")]
    assert len(errors) == 1 and "Traceback" not in result.output
    assert errors[0].startswith(f"error: model {MODULE}:half_resolution_seg: returned shape "
                                "(18, 2, 8, 8) but a segmenter must return (18, 2, 16, 16)")
    assert not (tmp_path / "run").exists()


class NanSam:
    """A SamPredictor-shaped fake whose logits are NaN."""

    def set_image(self, image: np.ndarray, image_format: str = "RGB") -> None:
        self.shape = image.shape[:2]

    def predict(self, point_coords: Any = None, point_labels: Any = None, box: Any = None,
                multimask_output: bool = True, return_logits: bool = False
                ) -> tuple[np.ndarray, np.ndarray, None]:
        return np.full((1, *self.shape), np.nan, np.float32), np.ones(1), None


def test_sam_predictor_nan_logits() -> None:
    from medfail.models.sam import wrap_sam

    adapter = wrap_sam(NanSam(), name="nan_sam")
    with pytest.raises(MedfailModelError, match=r"^model nan_sam: SAM predictor returned 64 "
                       r"non-finite mask logit\(s\)"):
        adapter.predict_proba([np.zeros((1, 8, 8), np.float32)], [[Prompt(box=(1, 1, 4, 4))]])


def test_tolerances_accept_valid_outputs() -> None:
    seg = ModelSpec(task="segmentation", target_names=["lesion"], output="probabilities")
    x = torch.zeros(2, 1, 4, 4)
    fg = torch.rand(2, 1, 4, 4, generator=torch.Generator().manual_seed(0))
    ok = torch.cat([1 - fg, fg], dim=1)
    assert check_output(ok, x, seg, "m") is ok
    check_output(ok.half(), x, seg, "m")  # float16 rounding is within 8 eps
    check_output(ok + 4e-5, x, seg, "m")  # sums off by 8e-5, within 1e-4
    assert tolerance(torch.float32) == 1e-4 and tolerance(torch.float16) == pytest.approx(7.8e-3,
                                                                                         rel=1e-2)
    with pytest.raises(MedfailModelError, match=r"off 1 by up to 0\.0004"):
        check_output(ok + 2e-4, x, seg, "m")
    prompt_seg = PromptableSegmenter(
        ModelSpec(task="promptable", target_names=["lesion"], output="probabilities"),
        lambda x: torch.cat([1 - torch.sigmoid(x[:, :1]), torch.sigmoid(x[:, :1])], dim=1))
    out = prompt_seg.predict_proba([np.zeros((1, 6, 6), np.float32)], [[Prompt(box=(1, 1, 3, 3))]])
    assert out[0].shape == (2, 6, 6)
    plain = Segmenter(seg, lambda x: torch.cat([1 - torch.sigmoid(x), torch.sigmoid(x)], dim=1))
    assert plain.predict_proba([np.zeros((1, 5, 7), np.float32)])[0].shape == (2, 5, 7)
