"""Models on volumes (C, X, Y, Z): the spec's 3D fields, the 3D sliding window, resampling to the
model spacing, TorchScript/ONNX/entry-point 3D models, and the light 3D U-Net baseline.

Volumes are tiny (16-24 voxels a side) so every test runs in seconds on one CPU thread.
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from monai.inferers import sliding_window_inference
from monai.metrics import compute_dice
from torch import nn
from typer.testing import CliRunner

from medfail.cli import app
from medfail.data.datasets import open_dataset
from medfail.data.sample import Sample
from medfail.errors import MedfailInputError, MedfailModelError
from medfail.models.adapters import Classifier, Segmenter
from medfail.models.bundle import read_training_log
from medfail.models.loading import _torch_forward, load_model
from medfail.models.networks import UNET_3D, build_network
from medfail.models.resample import model_grid
from medfail.models.spec import SLIDING_WINDOW_OVERLAP, ModelSpec
from medfail.models.training import (
    VOLUME_BATCH_SIZE,
    VOLUME_PATCH,
    VOLUME_PATCHES_PER_IMAGE,
    TrainConfig,
    _at_model_spacing,
    model_spacing,
    resolve_config,
    train,
    volume_patch,
)


class BoxFilter3D(nn.Module):
    """Foreground probability = sigmoid of a 3x3x3 (``k`` = 3) or 1x1x1 box mean of the input,
    zero-padded; background = 1 - it. ``calls`` records every input shape."""

    def __init__(self, k: int = 3) -> None:
        super().__init__()
        self.k = k
        self.calls: list[tuple[int, ...]] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls.append(tuple(x.shape))
        box = F.avg_pool3d(x, self.k, stride=1, padding=self.k // 2, count_include_pad=True)
        fg = torch.sigmoid(box[:, :1])
        return torch.cat([1 - fg, fg], dim=1)


def _spec(**kw: object) -> ModelSpec:
    base: dict[str, object] = {"task": "segmentation", "target_names": ["lesion"],
                               "output": "probabilities"}
    return ModelSpec(**{**base, **kw})  # type: ignore[arg-type]


def _volume(shape: tuple[int, int, int] = (20, 18, 22), seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).normal(0, 2, (1, *shape)).astype(np.float32)


def _ball(shape: tuple[int, int, int], spacing: tuple[float, float, float],
          radius_mm: float) -> np.ndarray:
    """A ball of ``radius_mm`` centred in the volume, as a 0/1 (X, Y, Z) mask (voxel centres)."""
    axes = [(np.arange(n) - (n - 1) / 2) * s for n, s in zip(shape, spacing, strict=True)]
    xx, yy, zz = np.meshgrid(*axes, indexing="ij")
    return (xx**2 + yy**2 + zz**2 <= radius_mm**2).astype(np.uint8)


# --- the spec ----------------------------------------------------------------------------------

def test_spec_round_trip_with_3d_fields() -> None:
    spec = _spec(input_size=(16, 16, 8), overlap=0.5, spacing=(1.0, 1.0, 2.5))
    assert spec.spatial_dims == 3  # inferred from input_size
    again = ModelSpec.from_dict(json.loads(json.dumps(spec.to_dict())))
    assert again == spec
    assert again.input_size == (16, 16, 8) and again.spacing == (1.0, 1.0, 2.5)
    assert again.overlap == 0.5 and again.spatial_dims == 3


def test_old_spec_without_the_fields_is_2d_with_the_default_overlap() -> None:
    spec = ModelSpec.from_dict({"task": "segmentation", "target_names": ["x"],
                                "input_size": [32, 32]})
    assert (spec.spatial_dims, spec.overlap, spec.spacing) == (2, SLIDING_WINDOW_OVERLAP, None)
    assert ModelSpec(task="segmentation", target_names=["x"]).spatial_dims == 2
    assert _spec(spatial_dims=3).input_size is None


@pytest.mark.parametrize(("fields", "message"), [
    ({"spatial_dims": 2, "input_size": (8, 8, 8)}, "input_size must be 2 positive integers"),
    ({"input_size": (8, 8, 8, 8)}, "spatial_dims must be 2 or 3"),
    ({"spatial_dims": 4}, "spatial_dims must be 2 or 3"),
    ({"overlap": 1.0}, r"overlap must be a number in \[0, 1\)"),
    ({"overlap": -0.1}, r"overlap must be a number in \[0, 1\)"),
    ({"input_size": (8, 8, 8), "spacing": (1.0, 1.0)}, "spacing must be 3 positive numbers"),
    ({"input_size": (8, 8, 8), "spacing": (1.0, 0.0, 1.0)}, "spacing must be 3 positive"),
])
def test_spec_refuses_inconsistent_3d_fields(fields: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        _spec(**fields)


# --- the sliding window ------------------------------------------------------------------------

def test_window_covering_the_volume_equals_the_module_on_the_whole_volume() -> None:
    vol = _volume()
    module = BoxFilter3D(k=3)
    whole = module(torch.from_numpy(vol[None]))[0].numpy()
    out = Segmenter(_spec(input_size=vol.shape[1:]), module).predict_proba([vol])[0]
    assert out.shape == (2, *vol.shape[1:])
    np.testing.assert_allclose(out, whole, atol=1e-6)
    assert np.abs(whole[1] - 0.5).max() > 0.05  # the filter does something


@pytest.mark.parametrize("overlap", [0.25, 0.5])
def test_sliding_window_matches_monai_and_a_voxelwise_module_exactly(overlap: float) -> None:
    vol = _volume((20, 18, 22))
    roi = (8, 8, 8)
    box = BoxFilter3D(k=3)
    out = Segmenter(_spec(input_size=roi, overlap=overlap), box).predict_proba([vol])[0]
    assert box.calls and all(c[2:] == roi for c in box.calls)  # windows of the ROI only
    assert all(c[0] <= 4 for c in box.calls)  # a few windows per forward, one volume
    ref = sliding_window_inference(torch.from_numpy(vol[None]), roi, 4, BoxFilter3D(k=3),
                                   overlap=overlap, mode="gaussian")
    np.testing.assert_allclose(out, ref[0].numpy(), atol=1e-6)
    # a voxel-wise module is stitched back exactly, whatever the windows
    point = Segmenter(_spec(input_size=roi, overlap=overlap), BoxFilter3D(k=1)).predict_proba(
        [vol])[0]
    np.testing.assert_allclose(point, BoxFilter3D(k=1)(torch.from_numpy(vol[None]))[0].numpy(),
                               atol=1e-6)


def test_volume_thinner_than_the_window_is_padded_and_cropped_back() -> None:
    vol = _volume((20, 18, 5))
    out = Segmenter(_spec(input_size=(8, 8, 8)), BoxFilter3D(k=1)).predict_proba([vol])[0]
    assert out.shape == (2, 20, 18, 5)
    np.testing.assert_allclose(out, BoxFilter3D(k=1)(torch.from_numpy(vol[None]))[0].numpy(),
                               atol=1e-6)


def test_volumes_of_different_shapes_run_one_at_a_time() -> None:
    vols = [_volume((16, 16, 16), 1), _volume((20, 18, 22), 2), _volume((16, 16, 16), 3)]
    box = BoxFilter3D(k=1)
    out = Segmenter(_spec(spatial_dims=3), box).predict_proba(vols)
    assert [o.shape[1:] for o in out] == [v.shape[1:] for v in vols]
    assert [c[0] for c in box.calls] == [1, 1, 1]


def test_dims_mismatch_and_3d_classification_are_refused_clearly() -> None:
    vol = _volume((16, 16, 16))
    with pytest.raises(MedfailInputError, match=r"takes 2D images.*spatial_dims 2.*\(1, 16, 16, "
                       r"16\)"):
        Segmenter(_spec(), BoxFilter3D()).predict_proba([vol])
    with pytest.raises(MedfailInputError, match=r"takes volumes \(C, X, Y, Z\)"):
        Segmenter(_spec(spatial_dims=3), BoxFilter3D()).predict_proba([vol[:, :, :, 0]])
    cls = ModelSpec(task="classification", target_names=["a"], spatial_dims=3)
    with pytest.raises(MedfailInputError, match="classification on volumes is not supported"):
        Classifier(cls, lambda x: x.mean(dim=(2, 3, 4))).predict_proba([vol])


def test_a_wrong_3d_output_shape_is_named() -> None:
    def drops_a_slice(x: torch.Tensor) -> torch.Tensor:
        return BoxFilter3D(k=1)(x)[..., :-1]

    with pytest.raises(MedfailModelError, match=r"\(batch, 1 \+ foreground classes, X, Y, Z\)"):
        Segmenter(_spec(spatial_dims=3), drops_a_slice).predict_proba([_volume((8, 8, 8))])


# --- resampling to the model spacing ---------------------------------------------------------

def test_model_grid_rule() -> None:
    assert model_grid((64, 64, 20), (1.0, 1.0, 5.0), (2.0, 2.0, 2.0)) == (32, 32, 50)
    assert model_grid((64, 64, 20), (1.0, 1.0, 5.0), None) is None
    assert model_grid((64, 64, 20), None, (1.0, 1.0, 1.0)) is None
    assert model_grid((10, 10, 10), (1.0, 1.0, 1.04), (1.0, 1.0, 1.0)) is None  # same shape


@pytest.mark.parametrize(("native", "model"), [((1.0, 1.0, 3.0), (1.5, 1.5, 1.5)),
                                               ((2.0, 2.0, 2.0), (1.0, 1.0, 1.0)),
                                               ((0.8, 0.8, 2.5), (1.0, 1.0, 1.0))])
def test_resampling_keeps_a_balls_volume_in_mm3(native: tuple[float, float, float],
                                                model: tuple[float, float, float]) -> None:
    radius = 12.0
    shape = tuple(round(40 / s) for s in native)
    ball = _ball(shape, native, radius)  # type: ignore[arg-type]
    image = (ball[None] * 40.0 - 20.0).astype(np.float32)  # sigmoid(+-20): a crisp ball
    box = BoxFilter3D(k=1)
    seg = Segmenter(_spec(spatial_dims=3, spacing=model), box)
    probs = seg.predict_proba([image], spacings=[native])[0]
    grid = model_grid(shape, native, model)
    assert grid is not None and box.calls == [(1, 1, *grid)]  # the model saw its own spacing
    assert probs.shape == (2, *shape)
    np.testing.assert_allclose(probs.sum(axis=0), 1.0, atol=1e-5)
    voxel_mm3 = float(np.prod(native))
    truth = 4 / 3 * np.pi * radius**3
    given = float(ball.sum()) * voxel_mm3
    for predicted in (float((probs[1] > 0.5).sum()) * voxel_mm3, float(probs[1].sum()) * voxel_mm3):
        assert abs(predicted - given) / given < 0.03, (predicted, given)
        assert abs(predicted - truth) / truth < 0.05, (predicted, truth)
    # unknown spacing: no resampling, the native grid goes in
    box.calls.clear()
    seg.predict_proba([image])
    assert box.calls == [(1, 1, *shape)]


def test_2d_model_with_a_spacing_resamples_images_bilinearly() -> None:
    seen: list[tuple[int, ...]] = []

    def voxelwise(x: torch.Tensor) -> torch.Tensor:
        seen.append(tuple(x.shape))
        fg = torch.sigmoid(x[:, :1])
        return torch.cat([1 - fg, fg], dim=1)

    rows, cols = np.mgrid[:20, :30]
    image = (np.sin(rows / 4) + np.cos(cols / 5) + 0.05 * rows)[None].astype(np.float32)
    seg = Segmenter(_spec(spacing=(0.5, 0.5)), voxelwise)
    out = seg.predict_proba([image, image], spacings=[(1.0, 1.0), None])
    assert seen == [(1, 1, 40, 60), (1, 1, 20, 30)]  # the second has no spacing: native grid
    assert out[0].shape == out[1].shape == (2, 20, 30)
    np.testing.assert_allclose(out[1][1], 1 / (1 + np.exp(-image[0])), atol=1e-6)
    diff = np.abs(out[0] - out[1]).max()  # up and back on a smooth image: close, not equal
    assert 1e-5 < diff < 0.03, diff


# --- TorchScript, ONNX and entry points on volumes ---------------------------------------------

def _unet3d() -> nn.Module:
    torch.manual_seed(0)
    return build_network("unet", 1, 2, **UNET_3D).eval()


UNET_SPEC = {"task": "segmentation", "target_names": ["lesion"], "input_size": [16, 16, 16],
             "normalisation": {"mean": [0.0], "std": [2.0]}, "output": "logits"}


def test_torchscript_and_onnx_3d_unets_match_torch(tmp_path: Path) -> None:
    onnx = pytest.importorskip("onnx")
    net = _unet3d()
    vols = [_volume((20, 18, 24), 4), _volume((16, 16, 16), 5)]
    ref = Segmenter(ModelSpec.from_dict(UNET_SPEC), _torch_forward(net, "cpu")).predict_proba(vols)
    ts = tmp_path / "unet3d.ts.pt"
    torch.jit.save(torch.jit.trace(net, torch.zeros(1, 1, 16, 16, 16)), str(ts),
                   _extra_files={"medfail_spec.json": json.dumps(UNET_SPEC)})
    onx = tmp_path / "unet3d.onnx"  # fixed 16^3 ROI, dynamic batch: fed by the sliding window
    torch.onnx.export(net, (torch.zeros(1, 1, 16, 16, 16),), str(onx), input_names=["x"],
                      output_names=["y"], dynamo=False,
                      dynamic_axes={"x": {0: "n"}, "y": {0: "n"}})
    proto = onnx.load(str(onx))
    entry = proto.metadata_props.add()
    entry.key, entry.value = "medfail_spec", json.dumps(UNET_SPEC)
    onnx.save(proto, str(onx))
    for path in (ts, onx):
        adapter = load_model(path, "segmentation")
        assert adapter.spec.spatial_dims == 3
        for got, want in zip(adapter.predict_proba(vols), ref, strict=True):
            assert got.shape == want.shape
            np.testing.assert_allclose(got, want, atol=1e-4)


def test_onnx_fixed_roi_must_match_the_spec(tmp_path: Path) -> None:
    pytest.importorskip("onnx")
    onx = tmp_path / "unet3d.onnx"
    torch.onnx.export(_unet3d(), (torch.zeros(1, 1, 16, 16, 16),), str(onx), input_names=["x"],
                      output_names=["y"], dynamo=False)
    (tmp_path / "unet3d.onnx.json").write_text(json.dumps({**UNET_SPEC,
                                                            "input_size": [16, 16, 24]}))
    with pytest.raises(MedfailInputError, match=r"input_size \[16, 16, 24\]"):
        load_model(onx, "segmentation")
    (tmp_path / "unet3d.onnx.json").write_text(json.dumps({**UNET_SPEC, "input_size": None}))
    with pytest.raises(MedfailInputError, match=r"feeds \(N, C, H, W\) images \(spec "
                       r"spatial_dims 2\); for a 3D model set \"spatial_dims\": 3"):
        load_model(onx, "segmentation")  # a 2D spec for a 5-D input


def test_entry_point_volume_model(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "vol_model.py").write_text(
        "import torch\n"
        "def make():\n"
        "    def predict(x):\n"
        "        fg = torch.sigmoid(x[:, :1])\n"
        "        return torch.cat([1 - fg, fg], dim=1)\n"
        "    return predict\n"
        "make.medfail_spec = {'task': 'segmentation', 'target_names': ['lesion'],\n"
        "                     'spatial_dims': 3, 'input_size': [8, 8, 8],\n"
        "                     'output': 'probabilities', 'spacing': [2.0, 2.0, 2.0]}\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "vol_model", raising=False)
    adapter = load_model("vol_model:make", "segmentation")
    vol = _volume((12, 12, 12))
    out = adapter.predict_proba([vol], spacings=[(1.0, 1.0, 1.0)])[0]  # resampled to 6^3, back
    assert out.shape == (2, 12, 12, 12)
    direct = adapter.predict_proba([vol])[0]  # no spacing: native grid
    np.testing.assert_allclose(direct[1], 1 / (1 + np.exp(-vol[0])), atol=1e-5)
    assert not np.allclose(out, direct, atol=1e-3)  # resampling happened


# --- the light 3D baseline ---------------------------------------------------------------------

def _write_spheres(root: Path, n: int = 4, shape: tuple[int, int, int] = (24, 24, 16),
                   spacing: tuple[float, float, float] = (1.0, 1.0, 1.5), seed: int = 0) -> Path:
    """``n`` NIfTI volumes (int16, RAS+ affine ``diag(spacing)``): noise around 60 with one
    bright ball (200) of radius 3-5 mm; the ball is the mask (label 1)."""
    import nibabel as nib

    rng = np.random.default_rng(seed)
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    affine = np.diag([*spacing, 1.0])
    grid = np.meshgrid(*[np.arange(k) * s for k, s in zip(shape, spacing, strict=True)],
                       indexing="ij")
    for i in range(n):
        image = rng.normal(60, 8, shape)
        centre = [rng.uniform(6, k * s - 6) for k, s in zip(shape, spacing, strict=True)]
        ball = sum((g - c) ** 2 for g, c in zip(grid, centre, strict=True)) <= rng.uniform(3, 5)**2
        image[ball] = 200
        nib.save(nib.Nifti1Image(image.astype(np.int16), affine),
                 root / "images" / f"case{i:03d}.nii.gz")
        nib.save(nib.Nifti1Image(ball.astype(np.uint8), affine),
                 root / "masks" / f"case{i:03d}.nii.gz")
    return root


def _volume_samples(shapes: list[tuple[int, int, int]],
                    spacings: list[tuple[float, float, float] | None]) -> list[Sample]:
    return [Sample(id=f"v{i}", image=np.zeros((1, *sh), np.float32), value_range=(0, 1),
                   mask=np.zeros(sh, np.int64), spacing=sp)
            for i, (sh, sp) in enumerate(zip(shapes, spacings, strict=True))]


def test_volume_patch_and_spacing_rules() -> None:
    samples = _volume_samples([(40, 40, 12), (48, 36, 10), (64, 44, 14)],
                              [(0.8, 0.8, 3.0), (1.0, 1.0, 2.5), (0.7, 0.7, 5.0)])
    config, why = resolve_config(TrainConfig(task="segmentation"), samples)
    assert (config.size, config.batch_size, config.patches_per_image) == (
        VOLUME_PATCH, VOLUME_BATCH_SIZE, VOLUME_PATCHES_PER_IMAGE)
    assert volume_patch(config.size, samples) == (32, 32, 16)  # z: median 12 -> 16
    assert "32x32x16" in why
    assert volume_patch(16, samples) == (16, 16, 16)
    assert volume_patch(32, _volume_samples([(5, 40, 40)], [None])) == (8, 32, 32)
    assert model_spacing(samples) == (0.8, 0.8, 3.0)  # per-axis median
    assert model_spacing(samples[:2] + _volume_samples([(8, 8, 8)], [None])) is None
    with pytest.raises(MedfailInputError, match="classification cannot train on volumes"):
        resolve_config(TrainConfig(task="classification"), samples)
    with pytest.raises(MedfailInputError, match="not a mix"):
        flat = Sample(id="flat", image=np.zeros((1, 8, 8), np.float32), value_range=(0, 1))
        resolve_config(TrainConfig(task="segmentation"), [*samples, flat])


def test_training_volumes_are_resampled_to_the_model_spacing() -> None:
    sample = _volume_samples([(8, 8, 6)], [(1.0, 1.0, 3.0)])[0]
    sample.mask[2:6, 2:6, 2:4] = 1
    spec = ModelSpec(task="segmentation", target_names=["x"], input_size=(8, 8, 8),
                     spacing=(1.0, 1.0, 1.5))
    image, mask = _at_model_spacing(sample, spec)
    assert image.shape == (1, 8, 8, 12) and mask.shape == (8, 8, 12)
    assert mask.sum() == 2 * sample.mask.sum()  # nearest voxel centre: each slice twice
    np.testing.assert_array_equal(mask[..., ::2], sample.mask)


def test_3d_unet_trains_on_spheres_through_the_cli(tmp_path: Path) -> None:
    data = _write_spheres(tmp_path / "spheres")
    model = tmp_path / "seg3d.pt"
    result = CliRunner().invoke(app, [
        "train", "--task", "segmentation", "--data", str(data), "--out", str(model),
        "--epochs", "2", "--val", str(data), "--patience", "1", "--quiet"])
    assert result.exit_code == 0, result.output
    assert "4 volumes of 24x24x16 -> unet (MONAI 3D U-Net 8-16-32-64, 0.15 M params) on " \
        "24x24x16 patches at spacing 1x1x1.5 mm (training median)" in result.output
    assert re.search(r"epoch 2/2: loss [\d.]+, val loss [\d.]+", result.output), result.output
    log = read_training_log(model)
    assert log["best_epoch"] in (1, 2) and log["n_examples_per_epoch"] == 4 * 8
    adapter = load_model(model, "segmentation")
    spec = adapter.spec
    assert (spec.spatial_dims, spec.input_size, spec.spacing) == (3, (24, 24, 16),
                                                                   (1.0, 1.0, 1.5))
    assert spec.arch_kwargs["spatial_dims"] == 3
    dices = []
    for s in open_dataset(data, "segmentation"):
        probs = adapter.predict_proba([s.image], spacings=[s.spacing])[0]
        pred = torch.from_numpy(probs.argmax(0) == 1)[None, None].float()
        gt = torch.from_numpy(s.mask > 0)[None, None].float()
        dices.append(float(compute_dice(pred, gt, include_background=True)))
    # an all-background prediction has Dice 0 on every volume (each has a ball)
    assert np.mean(dices) > 0.5, dices


def test_3d_training_is_reproducible(tmp_path: Path) -> None:
    data = _write_spheres(tmp_path / "spheres", n=2, shape=(16, 16, 16))
    states = []
    for k in range(2):
        path = train(open_dataset(data, "segmentation"),
                     TrainConfig(task="segmentation", epochs=1, seed=3), tmp_path / f"m{k}.pt",
                     progress=False)
        states.append(torch.load(path, weights_only=True)["state_dict"])
    assert states[0].keys() == states[1].keys()
    assert all(torch.equal(states[0][k], states[1][k]) for k in states[0])
