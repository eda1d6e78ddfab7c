"""TTA and MC dropout: different draws, reproducible with the same seed, injection when needed."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from medfail.data.prompts import Prompt
from medfail.models.adapters import Classifier, Segmenter
from medfail.models.loading import _torch_forward
from medfail.models.networks import build_network
from medfail.models.spec import ModelSpec
from medfail.uncertainty.sampling import (
    NotApplicable,
    _flip_prompt,
    mc_dropout_predict,
    tta_predict,
)


def _images(n: int = 3, size: int = 24) -> list[np.ndarray]:
    rng = np.random.default_rng(0)
    return [rng.uniform(0, 1, (1, size, size)).astype(np.float32) for _ in range(n)]


def _classifier() -> Classifier:
    torch.manual_seed(0)
    net = build_network("densenet121", 1, 2)  # MONAI default: no dropout -> injected
    spec = ModelSpec(task="classification", target_names=["a", "b"], multi_label=True,
                     input_size=(32, 32))
    return Classifier(spec, _torch_forward(net, "cpu"))


def test_mc_dropout_draws_differ_but_reproduce_with_the_same_seed() -> None:
    clf = _classifier()
    ids = ["x", "y", "z"]
    mean1, spread1 = mc_dropout_predict(clf, _images(), ids, seed=3, n_passes=6)
    mean2, _ = mc_dropout_predict(clf, _images(), ids, seed=3, n_passes=6)
    mean3, _ = mc_dropout_predict(clf, _images(), ids, seed=4, n_passes=6)
    np.testing.assert_array_equal(np.stack(mean1), np.stack(mean2))
    assert all((s > 0).any() for s in spread1)  # draws within a call differ
    assert not np.array_equal(np.stack(mean1), np.stack(mean3))
    # order/batch independence: one image alone gives the same draws
    alone, _ = mc_dropout_predict(clf, _images()[1:2], ["y"], seed=3, n_passes=6)
    np.testing.assert_allclose(alone[0], mean1[1], rtol=1e-6)
    # the injected dropout is removed afterwards: plain predictions are deterministic again
    np.testing.assert_array_equal(clf.predict_proba(_images()), clf.predict_proba(_images()))


def test_mc_dropout_uses_existing_dropout_and_refuses_non_torch() -> None:
    net = build_network("unet", 1, 2)
    spec = ModelSpec(task="segmentation", target_names=["lesion"], input_size=(16, 16))
    seg = Segmenter(spec, _torch_forward(net, "cpu"))
    mean, spread = mc_dropout_predict(seg, _images(2), ["a", "b"], seed=0, n_passes=4)
    assert mean[0].shape == (2, 24, 24) and spread[0].max() > 0
    assert not any(m.training for m in net.modules())  # back in eval mode
    callable_seg = Segmenter(spec, lambda x: torch.cat([x, 1 - x], dim=1))
    with pytest.raises(NotApplicable):
        mc_dropout_predict(callable_seg, _images(1), ["a"], seed=0)


def test_tta_is_deterministic_and_flips_back() -> None:
    spec = ModelSpec(task="segmentation", target_names=["lesion"], output="probabilities")

    def left_biased(x: torch.Tensor) -> torch.Tensor:
        ramp = torch.linspace(0.2, 0.8, x.shape[-1]).expand_as(x[:, :1])
        fg = torch.clamp(x[:, :1] * 0 + ramp, 0, 1)
        return torch.cat([1 - fg, fg], dim=1)

    seg = Segmenter(spec, left_biased)
    mean, spread = tta_predict(seg, _images(2))
    again, _ = tta_predict(seg, _images(2))
    np.testing.assert_array_equal(mean[0], again[0])
    # width flips average a left-right ramp to 0.5 everywhere; the spread shows the disagreement
    np.testing.assert_allclose(mean[0][1], 0.5, atol=1e-6)
    assert spread[0][1].max() > 0.2
    clf = _classifier()
    cmean, cspread = tta_predict(clf, _images(2))
    assert cmean[0].shape == (2,) and cspread[0].shape == (2,)


def test_prompts_flip_with_the_image() -> None:
    p = Prompt(box=(1.0, 2.0, 4.0, 6.0), points=((2.0, 3.0),), point_labels=(1,))
    f = _flip_prompt(p, (-1,), (10, 20))
    assert f.box == (15.0, 2.0, 18.0, 6.0) and f.points == ((17.0, 3.0),)
    assert _flip_prompt(_flip_prompt(p, (-2, -1), (10, 20)), (-2, -1), (10, 20)) == p
