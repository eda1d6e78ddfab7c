"""MONAI Model Zoo bundles (`--model path/to/bundle`): tiny bundles written by the tests."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from monai.bundle import ConfigParser
from typer.testing import CliRunner

from medfail.cli import app
from medfail.errors import MedfailInputError
from medfail.models.loading import describe_model, load_model
from medfail.models.monai_bundle import is_bundle_dir
from tests.conftest import write_png_folder

ROI = [16, 16]
INFERENCE: dict[str, Any] = {
    "imports": ["$import torch"],
    "bundle_root": ".",
    "network_def": {"_target_": "UNet", "spatial_dims": 2, "in_channels": 1, "out_channels": 2,
                    "channels": [8, 16], "strides": [2], "num_res_units": 1},
    "preprocessing": {"_target_": "Compose", "transforms": [
        {"_target_": "EnsureTyped", "keys": "image"},
        {"_target_": "ScaleIntensityRanged", "keys": "image", "a_min": 20.0, "a_max": 220.0,
         "b_min": 0.0, "b_max": 1.0, "clip": True}]},
    "inferer": {"_target_": "SlidingWindowInferer", "roi_size": ROI, "sw_batch_size": 4,
                "overlap": 0.5, "mode": "gaussian"},
    "postprocessing": {"_target_": "Compose", "transforms": [
        {"_target_": "Activationsd", "keys": "pred", "softmax": True},
        {"_target_": "AsDiscreted", "keys": "pred", "argmax": True}]},
}
METADATA: dict[str, Any] = {
    "name": "tiny_disc_segmentation", "version": "0.1.0",
    "network_data_format": {
        "inputs": {"image": {"type": "image", "format": "magnitude", "num_channels": 1,
                             "spatial_shape": ROI, "dtype": "float32", "value_range": [0, 255]}},
        "outputs": {"pred": {"type": "image", "format": "segmentation", "num_channels": 2,
                             "spatial_shape": ROI, "dtype": "float32", "value_range": [0, 1],
                             "channel_def": {"0": "background", "1": "disc"}}}},
}


def _network(inference: dict[str, Any]) -> torch.nn.Module:
    torch.manual_seed(0)
    net = ConfigParser(copy.deepcopy(inference)).get_parsed_content("network_def")
    with torch.no_grad():  # non-trivial weights: biases away from zero
        for p in net.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    return net.eval()


def write_bundle(root: Path, weights: str = "pt", inference: dict[str, Any] | None = None,
                 metadata: dict[str, Any] | None = None) -> Path:
    """A bundle directory: configs/{metadata,inference}.json and models/model.{pt,ts}."""
    (root / "configs").mkdir(parents=True)
    (root / "models").mkdir()
    (root / "configs" / "metadata.json").write_text(json.dumps(metadata or METADATA))
    (root / "configs" / "inference.json").write_text(json.dumps(inference or INFERENCE))
    net = _network(inference or INFERENCE)
    if weights == "pt":
        torch.save(net.state_dict(), root / "models" / "model.pt")
    elif weights == "ts":
        torch.jit.script(net).save(str(root / "models" / "model.ts"))
    return root


def monai_pipeline(bundle: Path, image: np.ndarray) -> np.ndarray:
    """The bundle run by MONAI itself: preprocessing, network, inferer, softmax."""
    parser = ConfigParser()
    parser.read_config(str(bundle / "configs" / "inference.json"))
    parser["bundle_root"] = str(bundle)
    net = parser.get_parsed_content("network_def")
    net.load_state_dict(torch.load(bundle / "models" / "model.pt", weights_only=True))
    net.eval()
    data = parser.get_parsed_content("preprocessing")({"image": torch.from_numpy(image)})
    with torch.no_grad():
        pred = parser.get_parsed_content("inferer")(torch.as_tensor(data["image"])[None], net)
    activations = parser.get_parsed_content("postprocessing").transforms[0]
    return np.asarray(activations({"pred": pred[0]})["pred"])


def _image(seed: int = 1, shape: tuple[int, int] = (40, 36)) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.uniform(0, 300, (1, *shape)).astype(np.float32)  # below a_min and above a_max


@pytest.mark.parametrize("weights", ["pt", "ts"])
def test_bundle_predicts_like_monai(weights: str, tmp_path: Path) -> None:
    reference = write_bundle(tmp_path / "ref", "pt")
    bundle = write_bundle(tmp_path / "bundle", weights)
    assert is_bundle_dir(bundle) and not is_bundle_dir(bundle / "configs")
    adapter = load_model(bundle)
    assert adapter.spec.task == "segmentation"
    assert adapter.spec.target_names == ["disc"]
    assert adapter.spec.input_size is None  # the bundle's own inferer windows whole images
    assert adapter.spec.output == "logits"
    image = _image()
    got = adapter.predict_proba([image])[0]
    want = monai_pipeline(reference, image)
    assert got.shape == want.shape == (2, *image.shape[1:])
    np.testing.assert_allclose(got, want, atol=1e-5)
    # the clip matters: without it (plain scaling) the prediction differs
    unclipped = copy.deepcopy(INFERENCE)
    unclipped["preprocessing"]["transforms"][1]["clip"] = False
    other = load_model(write_bundle(tmp_path / "noclip", weights, unclipped))
    assert np.abs(other.predict_proba([image])[0] - got).max() > 1e-3


def test_normalise_intensity_and_task_from_metadata(tmp_path: Path) -> None:
    inference = copy.deepcopy(INFERENCE)
    inference["preprocessing"]["transforms"][1] = {
        "_target_": "NormalizeIntensityd", "keys": "image", "subtrahend": 100.0,
        "divisor": 50.0}
    bundle = write_bundle(tmp_path / "b", inference=inference)
    adapter = load_model(bundle, "segmentation")
    assert adapter.spec.normalisation == {"mean": [100.0], "std": [50.0]}
    image = _image(2, (32, 32))
    np.testing.assert_allclose(adapter.predict_proba([image])[0],
                               monai_pipeline(bundle, image), atol=1e-5)
    with pytest.raises(MedfailInputError, match="segmentation model, but --task classification"):
        load_model(bundle, "classification")


def test_constant_blending_and_padding_like_monai(tmp_path: Path) -> None:
    """MONAI's default blending (constant) and an image smaller than the window (padded)."""
    inference = copy.deepcopy(INFERENCE)
    del inference["inferer"]["mode"]
    inference["inferer"]["overlap"] = 0.25
    bundle = write_bundle(tmp_path / "b", inference=inference)
    adapter = load_model(bundle)
    for image in (_image(4, (44, 28)), _image(5, (12, 20))):
        np.testing.assert_allclose(adapter.predict_proba([image])[0],
                                   monai_pipeline(bundle, image), atol=1e-5)


@pytest.mark.parametrize("transform", [
    {"_target_": "NormalizeIntensityd", "keys": "image", "nonzero": True},
    {"_target_": "RandFlipd", "keys": "image", "prob": 0.5},
    {"_target_": "ScaleIntensityd", "keys": "image"}])
def test_unsupported_transform_is_one_named_error(transform: dict[str, Any],
                                                  tmp_path: Path) -> None:
    inference = copy.deepcopy(INFERENCE)
    inference["preprocessing"]["transforms"].append(transform)
    with pytest.raises(MedfailInputError) as err:
        load_model(write_bundle(tmp_path / "b", inference=inference))
    text = str(err.value)
    assert "inference.json" in text and transform["_target_"] in text
    assert "ScaleIntensityRange(d)" in text  # says what is supported


def test_transforms_on_labels_are_not_the_images(tmp_path: Path) -> None:
    inference = copy.deepcopy(INFERENCE)
    inference["preprocessing"]["transforms"].append(
        {"_target_": "RandFlipd", "keys": "label", "prob": 0.5})
    assert load_model(write_bundle(tmp_path / "b", inference=inference)).spec.task == (
        "segmentation")


def test_missing_or_broken_bundle_files_are_named(tmp_path: Path) -> None:
    bundle = write_bundle(tmp_path / "none", weights="")
    with pytest.raises(MedfailInputError, match=r"models/model\.pt.*missing"):
        load_model(bundle)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(MedfailInputError, match=r"configs/metadata\.json.*missing"):
        load_model(empty)
    bad = write_bundle(tmp_path / "bad")
    (bad / "configs" / "inference.json").write_text('{"network_def": ')
    with pytest.raises(MedfailInputError, match=r"inference\.json.*invalid JSON"):
        load_model(bad)
    inference = copy.deepcopy(INFERENCE)
    broken = write_bundle(tmp_path / "broken")
    inference["network_def"]["channels"] = [8]  # MONAI's UNet needs two levels at least
    (broken / "configs" / "inference.json").write_text(json.dumps(inference))
    with pytest.raises(MedfailInputError, match=r"inference\.json.*network_def failed"):
        load_model(broken)


def test_classification_bundle(tmp_path: Path) -> None:
    meta = copy.deepcopy(METADATA)
    meta["network_data_format"]["outputs"]["pred"] = {
        "type": "probabilities", "format": "classes", "num_channels": 2, "spatial_shape": [1, 2],
        "channel_def": {"0": "no disc", "1": "disc"}}
    inference = copy.deepcopy(INFERENCE)
    inference["network_def"] = {"_target_": "DenseNet121", "spatial_dims": 2, "in_channels": 1,
                                "out_channels": 2, "init_features": 8, "growth_rate": 4,
                                "block_config": [2, 2]}
    inference["inferer"] = {"_target_": "SimpleInferer"}
    adapter = load_model(write_bundle(tmp_path / "c", inference=inference, metadata=meta))
    assert adapter.spec.task == "classification"
    assert adapter.spec.target_names == ["no disc", "disc"]  # every class, "0" included
    assert adapter.spec.input_size == tuple(ROI)
    probs = adapter.predict_proba([_image(3, (20, 24))])
    assert probs.shape == (1, 2) and np.allclose(probs.sum(1), 1, atol=1e-5)


def test_medfail_run_on_a_bundle(tmp_path: Path) -> None:
    data = write_png_folder(tmp_path / "data", "segmentation", n=6)
    cfg = tmp_path / "suite.yaml"
    cfg.write_text("tests: [gaussian_blur]\nseverities: [1]\nuncertainty: []\nmitigate: false\n"
                   "n_bootstrap: 20\n")
    bundle = write_bundle(tmp_path / "bundle")
    out = tmp_path / "run"
    result = CliRunner().invoke(app, ["run", "--model", str(bundle), "--data", str(data),
                                      "--out", str(out), "--config", str(cfg), "--quiet"])
    assert result.exit_code == 0, result.output
    assert "task: segmentation (from the model's spec)" in result.output
    info = json.loads((out / "run.json").read_text())
    assert info["task"] == "segmentation"
    # the folder's name only (never its path), and a hash of its configs and weights
    assert info["model"]["name"] == "bundle" and str(tmp_path) not in (out / "run.json").read_text()
    first = describe_model(bundle)["sha256"]
    assert info["model"]["sha256"] == first is not None
    weights = bundle / "models" / "model.pt"
    weights.write_bytes(weights.read_bytes() + b"\0")
    assert describe_model(bundle)["sha256"] != first


def test_volume_bundle_spacing_and_orientation(tmp_path: Path) -> None:
    """A 3D bundle: Orientationd RAS is accepted, Spacingd pixdim becomes the spec's spacing."""
    inference = copy.deepcopy(INFERENCE)
    inference["network_def"].update(spatial_dims=3)
    inference["inferer"]["roi_size"] = [16, 16, 8]
    inference["preprocessing"]["transforms"][:0] = [
        {"_target_": "Orientationd", "keys": "image", "axcodes": "RAS"},
        {"_target_": "Spacingd", "keys": "image", "pixdim": [1.5, 1.5, 2.0]}]
    meta = copy.deepcopy(METADATA)
    meta["network_data_format"]["inputs"]["image"]["spatial_shape"] = [16, 16, 8]
    adapter = load_model(write_bundle(tmp_path / "v", inference=inference, metadata=meta))
    assert adapter.spec.spatial_dims == 3 and adapter.spec.spacing == (1.5, 1.5, 2.0)
    volume = np.random.default_rng(6).uniform(0, 255, (1, 20, 18, 10)).astype(np.float32)
    probs = adapter.predict_proba([volume], spacings=[(1.5, 1.5, 2.0)])[0]
    assert probs.shape == (2, 20, 18, 10) and np.allclose(probs.sum(0), 1, atol=1e-5)
    inference["preprocessing"]["transforms"][0]["axcodes"] = "LPS"
    with pytest.raises(MedfailInputError, match=r"Orientationd.*axcodes 'LPS'"):
        load_model(write_bundle(tmp_path / "lps", inference=inference, metadata=meta))


def test_postprocessing_medfail_does_not_apply_is_named(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    inference = copy.deepcopy(INFERENCE)
    inference["postprocessing"]["transforms"].append(
        {"_target_": "KeepLargestConnectedComponentd", "keys": "pred", "applied_labels": [1]})
    load_model(write_bundle(tmp_path / "b", inference=inference))
    err = capsys.readouterr().err
    assert "KeepLargestConnectedComponentd not applied" in err and "AsDiscreted" not in err
