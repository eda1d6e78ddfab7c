"""SamAdapter against a fake SamPredictor: call shapes, conversion and prompt combination."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from medfail.data.prompts import Prompt
from medfail.models.adapters import PromptableSegmenter
from medfail.models.sam import SamAdapter, is_sam_predictor, to_uint8_rgb, wrap_sam


class FakeSamPredictor:
    """Records calls; returns logits of a disc (radius 5) around the box centre or first point."""

    def __init__(self, radius: float = 5.0, as_torch: bool = False) -> None:
        self.radius = radius
        self.as_torch = as_torch
        self.images: list[np.ndarray] = []
        self.formats: list[str] = []
        self.calls: list[dict[str, Any]] = []

    def set_image(self, image: np.ndarray, image_format: str = "RGB") -> None:
        self.images.append(image)
        self.formats.append(image_format)

    def predict(self, point_coords: np.ndarray | None = None,
                point_labels: np.ndarray | None = None, box: np.ndarray | None = None,
                mask_input: np.ndarray | None = None, multimask_output: bool = True,
                return_logits: bool = False) -> tuple[Any, np.ndarray, np.ndarray]:
        self.calls.append({"point_coords": point_coords, "point_labels": point_labels,
                           "box": box, "multimask_output": multimask_output,
                           "return_logits": return_logits})
        h, w = self.images[-1].shape[:2]
        if box is not None:
            cx, cy = (box[0] + box[2]) / 2, (box[1] + box[3]) / 2
        else:
            assert point_coords is not None
            cx, cy = point_coords[0]
        yy, xx = np.mgrid[:h, :w]
        logits = (self.radius - np.sqrt((xx - cx) ** 2 + (yy - cy) ** 2)).astype(np.float32)
        masks = logits[None] if return_logits else (logits[None] > 0)
        out = torch.from_numpy(masks) if self.as_torch else masks
        return out, np.array([0.9], np.float32), np.zeros((1, 256, 256), np.float32)


H, W = 32, 40
PA = Prompt(box=(4.0, 6.0, 14.0, 16.0), points=((9.0, 11.0),), point_labels=(1,))
PB = Prompt(box=(24.0, 14.0, 34.0, 24.0))


def _images() -> list[np.ndarray]:
    rng = np.random.default_rng(0)
    grey = rng.normal(-200.0, 300.0, (1, H, W))          # CT-like native units
    rgb = rng.uniform(0, 1, (3, H + 4, W - 4))
    return [grey, rgb]


def test_duck_typing_and_spec() -> None:
    fake = FakeSamPredictor()
    assert is_sam_predictor(fake)
    assert not is_sam_predictor(object())
    assert not is_sam_predictor(FakeSamPredictor)
    adapter = wrap_sam(fake, name="medsam")
    assert isinstance(adapter, PromptableSegmenter) and isinstance(adapter, SamAdapter)
    assert adapter.task == "promptable" and adapter.name == "medsam"
    assert adapter.spec.task == "promptable" and adapter.spec.target_names == ["object"]
    assert adapter.spec.output == "probabilities" and adapter.spec.n_classes == 2
    with pytest.raises(TypeError):
        wrap_sam(object())


def test_call_shapes_dtypes_and_encoder_once_per_image() -> None:
    fake = FakeSamPredictor()
    adapter = wrap_sam(fake)
    images = _images()
    probs = adapter.predict_proba(images, [[PA, PB], [PA]])
    assert len(fake.images) == 2 and fake.formats == ["RGB", "RGB"]
    for im, native in zip(fake.images, images, strict=True):
        assert im.dtype == np.uint8 and im.shape == (*native.shape[1:], 3)
        assert im.flags["C_CONTIGUOUS"] and im.min() == 0 and im.max() == 255
    assert np.array_equal(fake.images[0][..., 0], fake.images[0][..., 2])  # grey repeated
    assert len(fake.calls) == 3
    first, second = fake.calls[0], fake.calls[1]
    assert first["point_coords"].shape == (1, 2) and first["point_coords"].dtype.kind == "f"
    assert first["point_labels"].shape == (1,) and first["point_labels"].dtype.kind == "i"
    assert first["box"].shape == (4,) and first["box"].dtype.kind == "f"
    assert second["point_coords"] is None and second["point_labels"] is None
    assert all(c["multimask_output"] is False and c["return_logits"] is True
               for c in fake.calls)
    for p, native in zip(probs, images, strict=True):
        assert p.shape == (2, *native.shape[1:]) and p.dtype == np.float32
        assert np.allclose(p.sum(0), 1.0, atol=1e-6)
        assert p.min() >= 0 and p.max() <= 1


def test_probability_is_sigmoid_and_max_over_prompts() -> None:
    fake = FakeSamPredictor()
    adapter = wrap_sam(fake)
    image = _images()[0]
    (both,) = adapter.predict_proba([image], [[PA, PB]])
    (only_a,) = adapter.predict_proba([image], [[PA]])
    (only_b,) = adapter.predict_proba([image], [[PB]])
    assert np.allclose(both[1], np.maximum(only_a[1], only_b[1]))
    assert both[1, 11, 9] > 0.99 and both[1, 19, 29] > 0.99     # both disc centres
    assert both[1, 0, 0] < 1e-3
    # exact sigmoid of the fake's logits at the box centre of PA (logit = radius)
    assert only_a[1, 11, 9] == pytest.approx(1 / (1 + np.exp(-5.0)), rel=1e-5)


def test_images_without_prompts_are_background_and_not_encoded() -> None:
    fake = FakeSamPredictor()
    adapter = wrap_sam(fake)
    images = _images()
    probs = adapter.predict_proba(images, [[], [PB]])
    assert len(fake.images) == 1 and fake.images[0].shape == (H + 4, W - 4, 3)
    assert np.all(probs[0][0] == 1.0) and np.all(probs[0][1] == 0.0)
    probs = adapter.predict_proba(images[:1], [[Prompt(None)]])
    assert len(fake.calls) == 1 and np.all(probs[0][0] == 1.0)
    with pytest.raises(ValueError):
        adapter.predict_proba(images, [[PA]])


def test_torch_outputs_and_uint8_conversion() -> None:
    adapter = wrap_sam(FakeSamPredictor(as_torch=True))
    (p,) = adapter.predict_proba([_images()[0]], [[PA]])
    assert p.shape == (2, H, W) and p[1, 11, 9] > 0.99
    flat = to_uint8_rgb(np.full((1, 4, 5), 7.0))
    assert flat.shape == (4, 5, 3) and flat.dtype == np.uint8 and not flat.any()
    ramp = to_uint8_rgb(np.linspace(-1000, 3000, 20).reshape(1, 4, 5))
    assert ramp[0, 0, 0] == 0 and ramp[-1, -1, 0] == 255
    with pytest.raises(ValueError):
        to_uint8_rgb(np.zeros((2, 4, 5)))


def test_entry_point_returning_a_sam_predictor_is_wrapped(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from medfail.errors import MedfailInputError
    from medfail.models.loading import load_model

    (tmp_path / "my_sam.py").write_text(
        "from tests.test_sam_adapter import FakeSamPredictor\n"
        "def make():\n    return FakeSamPredictor()\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    adapter = load_model("my_sam:make", "promptable")
    assert isinstance(adapter, SamAdapter) and adapter.name == "my_sam:make"
    with pytest.raises(MedfailInputError, match="SAM-style promptable model, but --task"):
        load_model("my_sam:make", "segmentation")
