"""Morphology post-processing: each operation on hand-built maps, and the calibration choice."""

from __future__ import annotations

import numpy as np

from medfail.uncertainty.postprocess import PostProcess, apply, choose_params


def _map() -> np.ndarray:
    p = np.zeros((20, 20), np.float32)
    p[2:10, 2:10] = 0.9  # large object with a hole
    p[5:7, 5:7] = 0.1
    p[15, 15] = 0.8  # one-pixel speck
    return p


def test_operations() -> None:
    p = _map()
    assert (apply(p, PostProcess()) == p).all()
    no_speck = apply(p, PostProcess(min_size=4))
    assert no_speck[15, 15] < 0.5 and (no_speck[2:10, 2:10] > 0.5).sum() == 60
    filled = apply(p, PostProcess(fill_holes=True))
    assert (filled[5:7, 5:7] > 0.5).all() and filled[15, 15] > 0.5
    largest = apply(p, PostProcess(keep_largest=True))
    assert largest[15, 15] < 0.5 and (largest > 0.5).sum() == 60


def test_choose_params_on_calibration_maps() -> None:
    gt = np.zeros((20, 20), np.uint8)
    gt[2:10, 2:10] = 1  # solid truth: filling the hole and removing the speck both help
    best, score = choose_params([_map()] * 3, [gt] * 3)
    assert best.fill_holes and best.min_size > 0
    assert score == 1.0
    clean = (gt * 0.9).astype(np.float32)
    ident, _ = choose_params([clean], [gt])
    assert ident == PostProcess()  # nothing to fix: the simplest candidate wins ties
