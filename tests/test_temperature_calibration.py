"""Temperature scaling and the per-condition calibration table."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from scipy.special import expit, softmax

from medfail.analysis.calibration import calibration_table, fit_temperatures
from medfail.metrics.calibration import nll, nll_multiclass
from medfail.uncertainty.temperature import (
    apply_temperature_binary,
    apply_temperature_multiclass,
    fit_temperature_binary,
    fit_temperature_multiclass,
)


def _overconfident_binary(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    z = rng.normal(0, 1.5, n)
    y = (rng.random(n) < expit(z)).astype(float)  # calibrated truth
    return y, expit(3.0 * z)  # the model is 3x overconfident


def test_temperature_scaling_fixes_an_overconfident_binary_model() -> None:
    y_cal, p_cal = _overconfident_binary(4000, 0)
    t = fit_temperature_binary(y_cal, p_cal)
    assert t == pytest.approx(3.0, rel=0.15)
    y_test, p_test = _overconfident_binary(4000, 1)
    assert nll(y_test, apply_temperature_binary(p_test, t)) < nll(y_test, p_test) - 0.05
    assert fit_temperature_binary(np.ones(10), np.full(10, 0.9)) == 1.0  # one class: identity


def test_temperature_scaling_multiclass() -> None:
    rng = np.random.default_rng(0)
    logits = rng.normal(0, 1.5, (3000, 4))
    labels = np.array([rng.choice(4, p=p) for p in softmax(logits, axis=1)])
    over = softmax(2.5 * logits, axis=1)
    t = fit_temperature_multiclass(labels, over)
    assert t == pytest.approx(2.5, rel=0.15)
    assert nll_multiclass(labels, apply_temperature_multiclass(over, t)) < nll_multiclass(
        labels, over)


def _long(y: np.ndarray, p: np.ndarray, condition: str, targets: list[str]) -> pd.DataFrame:
    rows = []
    for i in range(len(y)):
        for k, t in enumerate(targets):
            rows.append({"id": f"s{i}", "condition": condition, "test": condition,
                         "family": "clean", "severity": 0, "target": t,
                         "prob": p[i, k], "label": y[i, k]})
    return pd.DataFrame(rows)


def test_calibration_table_methods_and_invariants() -> None:
    ys, ps = zip(*[_overconfident_binary(600, s) for s in (2, 3)], strict=True)
    y, p = np.stack(ys, axis=1), np.stack(ps, axis=1)
    cal = _long(*[np.stack(a, axis=1) for a in zip(*[_overconfident_binary(600, s)
                                                     for s in (4, 5)], strict=True)],
                "clean", ["a", "b"])
    temps = fit_temperatures(cal, multi_label=True)
    table = calibration_table(_long(y, p, "clean", ["a", "b"]), True, 0.5, temps)
    pivot = table[table["target"] == "macro"].pivot(index="method", columns="metric",
                                                    values="value")
    assert pivot.loc["temperature", "nll"] < pivot.loc["max_prob", "nll"]
    assert pivot.loc["temperature", "ece"] < pivot.loc["max_prob", "ece"]
    # a monotone transform of |logit| cannot change the ranking
    assert pivot.loc["temperature", "aurc"] == pytest.approx(pivot.loc["max_prob", "aurc"])
    assert pivot.loc["entropy", "aurc"] == pytest.approx(pivot.loc["max_prob", "aurc"])
    assert (pivot.loc["max_prob", "eaurc"] >= 0) and pivot.loc["max_prob", "sens_at_80"] > 0
    assert set(table["target"]) == {"a", "b", "macro"}
    no_cal = calibration_table(_long(y, p, "clean", ["a", "b"]), True, 0.5, None)
    assert "temperature" not in set(no_cal["method"])
