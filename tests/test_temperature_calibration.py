"""Temperature scaling and the per-condition calibration table."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import write_png_folder
from scipy.special import expit, softmax

from medfail.analysis.calibration import (
    calibration_table,
    fit_temperatures,
    selective_sensitivity,
)
from medfail.analysis.mitigation import _posthoc_rows
from medfail.data.datasets import open_dataset
from medfail.data.sample import Sample
from medfail.engine.predictor import Predictor
from medfail.engine.runner import run_suite
from medfail.engine.suite import Condition, SuiteConfig
from medfail.metrics.calibration import nll, nll_multiclass
from medfail.models.adapters import Classifier
from medfail.models.spec import ModelSpec
from medfail.report.html import _calibration_section
from medfail.uncertainty.temperature import (
    apply_temperature_binary,
    apply_temperature_multiclass,
    entropy_binary,
    fit_temperature_binary,
    fit_temperature_multiclass,
    log_odds,
    temperature_at_bound,
    temperature_warnings,
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


# --------------------------------------------------------------- issue 11: label-free deferral,
# no clipping ties, temperature on a bound of its search


def _aurc_by_hand(conf: np.ndarray, wrong: np.ndarray) -> float:
    """Geifman's AURC for distinct confidences: mean over k of the error rate of the k most
    confident cases (numpy only, no medfail code)."""
    assert np.unique(conf).size == conf.size
    r = wrong[np.argsort(-conf)]
    return float(np.mean(np.cumsum(r) / np.arange(1, r.size + 1)))


def _one_target(p: np.ndarray, y: np.ndarray, logit: np.ndarray | None = None,
                condition: str = "clean") -> pd.DataFrame:
    df = _long(y[:, None], p[:, None], condition, ["a"])
    if logit is not None:
        df["logit"] = logit
    return df


def _by_method(table: pd.DataFrame, target: str = "a") -> pd.DataFrame:
    return table[table["target"] == target].pivot(index="method", columns="metric",
                                                  values="value")


def test_sens_at_80_defers_the_least_confident_of_all_cases_not_of_the_positives() -> None:
    """Old code kept the 80 % most confident POSITIVES (4 of 5: 3 detected -> 0.75); a deferral
    rule cannot see the label: keep the 8 most confident of all 10 cases, which drops the
    positives at p = 0.45 and 0.6 and keeps 3 positives, 2 detected -> 2/3."""
    p = np.array([0.99, 0.98, 0.6, 0.45, 0.3, 0.01, 0.02, 0.03, 0.04, 0.05])
    y = np.array([1, 1, 1, 1, 1, 0, 0, 0, 0, 0], float)
    conf = np.abs(np.log(p) - np.log1p(-p))
    kept = np.argsort(-conf)[:8]  # ceil(0.8 * 10), no ties
    expected = float(((p[kept] >= 0.5) & (y[kept] == 1)).sum() / (y[kept] == 1).sum())
    assert expected == pytest.approx(2 / 3)
    table = calibration_table(_one_target(p, y), True, 0.5, {"a": 1.0})
    vals = _by_method(table)
    for method in ("max_prob", "temperature", "entropy"):
        assert vals.loc[method, "sens_at_80"] == pytest.approx(expected)
        assert vals.loc[method, "sens_all"] == pytest.approx(3 / 5)
    assert vals.loc["max_prob", "risk_at_80"] == pytest.approx(1 / 8)  # same kept set
    assert selective_sensitivity(conf, y, (p >= 0.5).astype(float)) == pytest.approx(expected)
    # the mitigation row reads the same label-free value
    rows = _posthoc_rows("classification", table, ["clean"], "a")
    sel = [r for r in rows if r["mitigation"] == "selective_80"]
    assert len(sel) == 1 and sel[0]["after"] == pytest.approx(2 / 3)
    assert sel[0]["before"] == pytest.approx(3 / 5)
    # no positive among the kept cases -> NaN, not 0
    assert np.isnan(selective_sensitivity(np.r_[np.full(9, 5.0), 0.1], np.r_[np.zeros(9), 1],
                                          np.ones(10)))


def test_saturated_probabilities_are_not_tied_by_a_clip() -> None:
    """p = 1 - k·1e-9 and p = k·1e-10 lie beyond the old clip [1e-7, 1 - 1e-7]: the old entropy
    and temperature confidences tied them all (AURC of a random ranking); their log-odds differ
    and every method ranks by them."""
    k = np.arange(1, 21, dtype=float)
    p = np.r_[1 - k * 1e-9, k * 1e-10]
    y = np.r_[(k % 3 != 0), (k % 4 == 0)].astype(float)  # mistakes at both ends
    wrong = ((p >= 0.5) != (y > 0.5)).astype(float)
    expected = _aurc_by_hand(np.abs(np.log(p) - np.log1p(-p)), wrong)
    assert abs(expected - wrong.mean()) > 0.02  # a tie would give the error rate
    cal = _one_target(np.r_[0.9, 0.2, 0.7, 0.1], np.array([1.0, 0.0, 0.0, 1.0]))
    temps = fit_temperatures(cal, multi_label=True)
    vals = _by_method(calibration_table(_one_target(p, y), True, 0.5, temps))
    for method in ("max_prob", "temperature", "entropy"):
        assert vals.loc[method, "aurc"] == pytest.approx(expected, abs=1e-15), method
    # distinct, ordered entropies (old: one clipped value for all of them)
    h = entropy_binary(np.array([0.0, 1e-12, 1e-9, 1e-7, 1 - 1e-9, 1.0]))
    assert h[0] == 0.0 and h[-1] == 0.0 and h[1] < h[2] < h[3] and h[4] > 0
    assert np.array_equal(log_odds(np.array([0.0, 1.0])), np.array([-np.inf, np.inf]))


def test_stored_logits_break_the_ties_of_float32_saturated_probabilities() -> None:
    """A float32 sigmoid rounds every logit above ~17.3 to p = 1.0: from probabilities these
    cases tie; the stored logits rank them (old code ignored the logit column)."""
    z = np.r_[np.linspace(18, 40, 12), -np.linspace(1, 5, 4)]
    p = (1 / (1 + np.exp(-z.astype(np.float32)))).astype(np.float32).astype(float)
    assert (p == 1.0).sum() == 12
    y = np.r_[np.tile([1.0, 0.0, 1.0], 4), np.array([0.0, 1.0, 0.0, 0.0])]
    wrong = ((p >= 0.5) != (y > 0.5)).astype(float)
    expected = _aurc_by_hand(np.abs(z), wrong)
    with_logits = _by_method(calibration_table(_one_target(p, y, z), True, 0.5, {"a": 0.05}))
    from_probs = _by_method(calibration_table(_one_target(p, y), True, 0.5, {"a": 0.05}))
    for method in ("max_prob", "temperature", "entropy"):
        assert with_logits.loc[method, "aurc"] == pytest.approx(expected, abs=1e-15)
    assert abs(from_probs.loc["max_prob", "aurc"] - expected) > 0.01  # tied: a different value
    # the temperature fit works on the logits too: a 3x overconfident model whose float32
    # probabilities saturate still gets T ~ 3 from its logits
    rng = np.random.default_rng(4)
    zt = rng.normal(0, 4, 3000)
    yt = (rng.random(3000) < expit(zt)).astype(float)
    z3 = 3 * zt
    p3 = expit(z3).astype(np.float32).astype(float)
    assert (p3 == 1.0).mean() > 0.05
    assert fit_temperature_binary(yt, p3, z3) == pytest.approx(3.0, rel=0.1)


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("temperature", [0.05, 0.3, 1.0, 7.0, 20.0])
def test_temperature_leaves_every_selective_metric_unchanged_exactly(seed: int,
                                                                     temperature: float) -> None:
    """Old code ranked by max(p_T, 1 - p_T), which rounds to 1.0 for most cases at T = 0.05
    (57 of 164 demo rows differed); the ranking of |z| / T is that of |z|, exactly."""
    rng = np.random.default_rng(seed)
    n = 200
    z = rng.normal(0, 8, n)
    z[: n // 4] *= 6  # saturated: p within 1e-16 of 0 / 1 for many
    y = (rng.random(n) < expit(z / 3)).astype(float)
    p = expit(z)
    selective = ["aurc", "eaurc", "augrc", "risk_at_80", "coverage_at_risk_5", "sens_at_80"]
    for logit in (None, z):
        vals = _by_method(calibration_table(_one_target(p, y, logit), True, 0.5,
                                            {"a": temperature}))
        for m in selective:
            assert vals.loc["temperature", m] == vals.loc["max_prob", m], m
            assert vals.loc["entropy", m] == vals.loc["max_prob", m], m
    # two-class softmax: the same invariance
    probs2 = np.stack([1 - p, p], axis=1)
    y2 = np.stack([1 - y, y], axis=1)
    df = _long(y2, probs2, "clean", ["neg", "pos"])
    vals = calibration_table(df, False, 0.5, {"all": temperature}).pivot(
        index="method", columns="metric", values="value")
    for m in ("aurc", "eaurc", "augrc", "risk_at_80"):
        assert vals.loc["temperature", m] == vals.loc["max_prob", m], m


def test_temperature_on_a_bound_of_its_search_is_reported() -> None:
    """A calibration split that the scores separate perfectly drives T to the lower bound 0.05
    (the NLL keeps falling as T shrinks): the run must say so (old code: silent)."""
    z = np.r_[np.linspace(0.5, 4, 20), -np.linspace(0.5, 4, 20)]
    y = np.r_[np.ones(20), np.zeros(20)]
    t = fit_temperature_binary(y, expit(z), z)
    assert t == pytest.approx(0.05, rel=1e-3)
    assert temperature_at_bound(t) == "lower"
    assert temperature_at_bound(20.0 * (1 - 1e-5)) == "upper"
    assert temperature_at_bound(1.0) is None and temperature_at_bound(0.06) is None
    warnings = temperature_warnings({"a": t, "b": 1.3})
    assert list(warnings) == ["a"] and "lower bound 0.05" in warnings["a"]
    assert temperature_warnings(None) == {}


def test_multiclass_confidence_is_the_log_odds_of_the_decision() -> None:
    """Top-class probabilities that round to 1.0 tie under max_k p_k (old code); their
    log-odds z_c - logsumexp_{k != c} z_k do not."""
    gaps = np.linspace(40, 60, 10)
    logits = np.stack([gaps, np.zeros(10), np.full(10, -3.0)], axis=1)
    probs = softmax(logits, axis=1)
    assert (probs.max(axis=1) == 1.0).all()
    labels = np.array([0, 1, 0, 0, 1, 0, 0, 0, 1, 0])
    y = np.eye(3)[labels]
    df = _long(y, probs, "clean", ["x", "y", "z"])
    df["logit"] = logits.reshape(-1)
    vals = calibration_table(df, False, 0.5, None).pivot(index="method", columns="metric",
                                                         values="value")
    wrong = (labels != 0).astype(float)
    expected = _aurc_by_hand(gaps, wrong)  # log-odds of class 0 grow with the gap
    assert vals.loc["max_prob", "aurc"] == pytest.approx(expected, abs=1e-12)
    assert abs(expected - wrong.mean()) > 0.02


def test_predictor_stores_logits_for_plain_conditions_only(tmp_path: Path) -> None:
    """``logit`` column: the raw output of an output="logits" model (prob = its float32
    sigmoid), NaN for averaged (TTA) predictions and for probability models."""
    images = [np.full((1, 8, 8), v, np.float32) for v in (0.0, 60.0, 200.0, 255.0)]
    batch = [Sample(id=f"s{i}", image=im, value_range=(0.0, 255.0), label=np.array([i % 2]))
             for i, im in enumerate(images)]

    def forward(x: torch.Tensor) -> torch.Tensor:
        return (x.mean(dim=(1, 2, 3)) - 100.0)[:, None]  # logits up to 155: p saturates

    for output, finite in (("logits", True), ("probabilities", False)):
        spec = ModelSpec(task="classification", target_names=["bright"], multi_label=True,
                         input_size=(8, 8), output=output)
        fwd = forward if output == "logits" else (lambda x: torch.sigmoid(forward(x)))
        predictor = Predictor([Classifier(spec, fwd)], SuiteConfig(), spacing_mm=False)
        plain = predictor.classify(batch, images, Condition("clean", "clean", "clean", 0))
        assert np.isfinite(plain["logit"]).all() == finite
        tta = predictor.classify(batch, images, Condition("tta", "tta", "uncertainty", 0,
                                                          method="tta"))
        assert tta["logit"].isna().all()
        if finite:
            np.testing.assert_array_equal(plain["logit"], [-100.0, -40.0, 100.0, 155.0])
            expected = torch.sigmoid(torch.tensor(plain["logit"].to_numpy(np.float32)))
            np.testing.assert_array_equal(plain["prob"], expected.numpy().astype(float))
            assert (plain["prob"].iloc[2:] == 1.0).all()  # saturated, the logits are not


def test_run_warns_when_a_temperature_sits_on_a_bound(tmp_path: Path,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    """Console, run.json and report all say so; the stored logits rank the cases, so the
    temperature's AURC equals max_prob's although T = 0.05 saturates p_T."""
    data = write_png_folder(tmp_path / "cls", "classification", n=12)
    cal = write_png_folder(tmp_path / "cal", "classification", n=12, seed=1)
    spec = ModelSpec(task="classification", target_names=["disc", "bar"], multi_label=True,
                     input_size=(32, 32), output="logits")

    def forward(x: torch.Tensor) -> torch.Tensor:  # bar: separable; disc: confident mistakes
        return torch.stack([x.amax(dim=(1, 2, 3)) - 130.0,
                            (x[:, :, 2:5].mean(dim=(1, 2, 3)) - 120.0) / 20.0], dim=1)

    config = SuiteConfig(tests=["gaussian_noise"], severities=[1], n_bootstrap=20,
                         uncertainty=[], mitigate=False, min_slice_n=2)
    run = run_suite(Classifier(spec, forward), open_dataset(data, "classification"),
                    tmp_path / "run", config, progress=False, render=False,
                    calibration=open_dataset(cal, "classification"))
    info = json.loads((run / "run.json").read_text())
    assert temperature_at_bound(info["temperatures"]["bar"]) == "lower"
    assert temperature_at_bound(info["temperatures"]["disc"]) == "upper"
    assert set(info["temperature_warnings"]) == {"bar", "disc"}
    err = [ln for ln in capsys.readouterr().err.splitlines() if ln.startswith("warning:")]
    assert sum("temperature for 'bar'" in ln and "lower bound 0.05" in ln for ln in err) == 1
    clean = pd.read_parquet(run / "predictions" / "clean.parquet")
    assert np.isfinite(clean["logit"]).all() and (clean["prob"] == 1.0).any()
    table = pd.read_parquet(run / "calibration.parquet")
    sel = table[table["metric"].isin(["aurc", "augrc", "risk_at_80", "sens_at_80"])]
    wide = sel.pivot_table(index=["condition", "target", "metric"], columns="method",
                           values="value")
    assert (wide["temperature"] == wide["max_prob"]).all()
    section = _calibration_section(run, info, None)
    assert section is not None
    assert "bar 0.05 (WARNING: on the lower bound" in section["temperatures"]
