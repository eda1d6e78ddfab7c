"""Model loaders: medfail files, TorchScript, ONNX, entry points, pickle refusal, task checks."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from medfail.errors import MedfailInputError
from medfail.models.adapters import Classifier, PromptableSegmenter, Segmenter
from medfail.models.bundle import save_model
from medfail.models.loading import describe_model, load_model
from medfail.models.networks import build_network
from medfail.models.spec import ModelSpec

CLS_SPEC = {"task": "classification", "target_names": ["a", "b"], "multi_label": True,
            "input_size": [16, 16], "in_channels": 1,
            "normalisation": {"mean": [100.0], "std": [50.0]}, "output": "logits"}


class TinyClassifier(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Conv2d(1, 4, 3, padding=1)
        self.fc = nn.Linear(4, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.relu(self.conv(x)).mean(dim=(2, 3)))


def _images(n: int = 5, size: int = 20) -> list[np.ndarray]:
    rng = np.random.default_rng(0)
    return [rng.uniform(0, 255, (1, size, size)).astype(np.float32) for _ in range(n)]


def _reference(images: list[np.ndarray]) -> np.ndarray:
    adapter = Classifier(ModelSpec.from_dict(CLS_SPEC), TinyClassifier().eval())
    return adapter.predict_proba(images)


def test_medfail_bundle_roundtrip(tmp_path: Path) -> None:
    spec = ModelSpec(task="segmentation", target_names=["lesion"], input_size=(16, 16),
                     normalisation={"mean": [0.0], "std": [1.0]}, arch="unet")
    net = build_network("unet", 1, 2)
    path = save_model(tmp_path / "seg.pt", spec, net, {"epochs": []})
    adapter = load_model(path, "segmentation")
    assert isinstance(adapter, Segmenter)
    probs = adapter.predict_proba(_images(3, size=40))  # larger than the window: sliding window
    assert probs[0].shape == (2, 40, 40)
    np.testing.assert_allclose(probs[0].sum(axis=0), 1.0, atol=1e-5)
    with pytest.raises(MedfailInputError, match="segmentation model, but --task classification"):
        load_model(path, "classification")
    assert describe_model(path)["name"] == "seg.pt"
    assert len(describe_model(path)["sha256"]) == 64


def test_promptable_bundle_takes_prompts(tmp_path: Path) -> None:
    from medfail.data.prompts import Prompt

    spec = ModelSpec(task="promptable", target_names=["lesion"], input_size=(16, 16),
                     arch="prompt_unet", prompt_channels=["box", "point"])
    path = save_model(tmp_path / "p.pt", spec, build_network("prompt_unet", 3, 2), {})
    adapter = load_model(path, "promptable")
    assert isinstance(adapter, PromptableSegmenter)
    imgs = _images(2, size=24)
    prompts = [[Prompt(box=(2, 2, 10, 10), points=((5.0, 5.0),), point_labels=(1,))], []]
    out = adapter.predict_proba(imgs, prompts)
    assert out[0].shape == (2, 24, 24)
    np.testing.assert_array_equal(out[1][1], 0.0)  # no prompt -> background everywhere


def test_torchscript_with_embedded_spec(tmp_path: Path) -> None:
    scripted = torch.jit.trace(TinyClassifier().eval(), torch.zeros(1, 1, 16, 16))
    path = tmp_path / "model.ts.pt"
    torch.jit.save(scripted, str(path), _extra_files={"medfail_spec.json": json.dumps(CLS_SPEC)})
    adapter = load_model(path, "classification")
    imgs = _images()
    np.testing.assert_allclose(adapter.predict_proba(imgs), _reference(imgs), atol=1e-6)


def test_torchscript_without_spec_names_the_fix(tmp_path: Path) -> None:
    scripted = torch.jit.trace(TinyClassifier().eval(), torch.zeros(1, 1, 16, 16))
    path = tmp_path / "model.pt"
    torch.jit.save(scripted, str(path))
    with pytest.raises(MedfailInputError, match=r"model\.pt: no model spec.*--model-spec"):
        load_model(path, "classification")
    (tmp_path / "model.pt.json").write_text(json.dumps(CLS_SPEC))  # sidecar
    assert isinstance(load_model(path, "classification"), Classifier)


def test_onnx_runtime_matches_torch(tmp_path: Path) -> None:
    onnx = pytest.importorskip("onnx")
    path = tmp_path / "model.onnx"
    torch.onnx.export(TinyClassifier().eval(), (torch.zeros(1, 1, 16, 16),), str(path),
                      input_names=["x"], output_names=["y"], dynamo=False,
                      dynamic_axes={"x": {0: "n"}, "y": {0: "n"}})
    proto = onnx.load(str(path))
    entry = proto.metadata_props.add()
    entry.key, entry.value = "medfail_spec", json.dumps(CLS_SPEC)
    onnx.save(proto, str(path))
    adapter = load_model(path, "classification")
    imgs = _images()
    np.testing.assert_allclose(adapter.predict_proba(imgs), _reference(imgs), atol=1e-5)


def test_entry_point_callable(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "my_models.py").write_text(
        "import torch\n"
        "def make():\n"
        "    def predict(x):\n"
        "        return torch.stack([x.mean(dim=(1, 2, 3)), -x.mean(dim=(1, 2, 3))], 1)\n"
        "    return predict\n")
    spec_file = tmp_path / "spec.json"
    spec_file.write_text(json.dumps({**CLS_SPEC, "normalisation": None}))
    monkeypatch.syspath_prepend(str(tmp_path))
    adapter = load_model("my_models:make", "classification", spec_path=spec_file)
    probs = adapter.predict_proba([np.full((1, 8, 8), 0.5, np.float32)])
    np.testing.assert_allclose(probs, [[1 / (1 + np.exp(-0.5)), 1 / (1 + np.exp(0.5))]],
                               rtol=1e-5)
    with pytest.raises(MedfailInputError, match="my_models:make: no model spec"):
        load_model("my_models:make", "classification")
    with pytest.raises(MedfailInputError, match="cannot import entry point"):
        load_model("no_such_module_xyz:make", "classification")
    sys.modules.pop("my_models", None)


def test_pickled_module_refused_unless_trusted(tmp_path: Path) -> None:
    model = TinyClassifier()
    model.medfail_spec = CLS_SPEC
    path = tmp_path / "pickled.pt"
    torch.save(model, path)
    with pytest.raises(MedfailInputError, match=r"pickled\.pt: contains pickled.*--trust-pickle"):
        load_model(path, "classification")
    adapter = load_model(path, "classification", trust_pickle=True)
    imgs = _images()
    np.testing.assert_allclose(adapter.predict_proba(imgs), _reference(imgs), atol=1e-6)


def test_bare_state_dict_and_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "weights.pt"
    torch.save(TinyClassifier().state_dict(), path)
    with pytest.raises(MedfailInputError, match="bare state_dict"):
        load_model(path, "classification")
    with pytest.raises(MedfailInputError, match="model file not found"):
        load_model(tmp_path / "nope.pt", "classification")


def test_prompt_region_covers_the_prompt_and_one_window(tmp_path: Path) -> None:
    from medfail.data.prompts import Prompt

    spec = ModelSpec(task="promptable", target_names=["lesion"], input_size=(16, 16),
                     arch="prompt_unet", prompt_channels=["box", "point"])
    adapter = PromptableSegmenter(spec, lambda x: x)
    r0, r1, c0, c1 = adapter.prompt_region(Prompt(box=(30, 30, 33, 33)), (64, 64))
    assert (r1 - r0, c1 - c0) == (16, 16) and r0 <= 30 and r1 > 33 and c0 <= 30 and c1 > 33
    r0, r1, c0, c1 = adapter.prompt_region(Prompt(box=(0, 60, 2, 63)), (64, 64))
    assert (r0, r1, c0, c1) == (48, 64, 0, 16)  # clipped at the border, still one window
    r0, r1, c0, c1 = adapter.prompt_region(Prompt(box=(10, 10, 50, 40)), (64, 64))
    assert r0 <= 10 - 4 and r1 >= 41 + 4 and c0 <= 6 and c1 >= 55  # a quarter window margin
    assert adapter.prompt_region(Prompt(box=None), (64, 64)) == (0, 64, 0, 64)
    tiny = adapter.prompt_region(Prompt(box=(2, 2, 4, 4)), (10, 12))
    assert tiny == (0, 10, 0, 12)  # image smaller than a window: the whole image
