"""Issue 12 items 5-7: the report formats only (its maths live in analysis/, one function each),
one definition of resampled means, "harmful side of 0" and the coverage constant, the CIs of a
run against the documented bootstrap functions, and AURC under tied confidences."""

from __future__ import annotations

import ast
import itertools
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from medfail.analysis import aggregate, calibration, checklist, segmentation_calibration
from medfail.analysis.aggregate import harmful, harmful_side, mean_estimate, resample_counts
from medfail.analysis.calibration import (
    COVERAGE,
    DEFERRED,
    binary_decisions,
    calibration_table,
    decision_risk_coverage,
    pooled_decisions,
)
from medfail.analysis.segmentation_calibration import image_risk_coverage, signal_dice
from medfail.metrics.bootstrap import (
    bootstrap_indices,
    mean_ci,
    percentile_ci,
    resampled_mean,
    statistic_ci,
)
from medfail.metrics.detection import pooled_lesion_f1
from medfail.metrics.selective import aurc, eaurc, risk_coverage_curve

SRC = Path(__file__).resolve().parents[1] / "src" / "medfail"


def _private_imports(package: str) -> list[str]:
    """``file: from medfail.<package>... import _name`` anywhere in src/medfail."""
    found = []
    for path in sorted(SRC.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith(
                    f"medfail.{package}"):
                found += [f"{path.relative_to(SRC)}: {node.module}.{a.name}"
                          for a in node.names if a.name.startswith("_")]
    return found


@pytest.mark.parametrize("package", ["report", "analysis"])
def test_no_private_import_from_report_or_analysis(package: str) -> None:
    # was: report/compare.py imported _ci, _figure, _fmt from report/html.py
    assert _private_imports(package) == []


def test_report_html_does_no_decision_or_curve_maths() -> None:
    text = (SRC / "report" / "html.py").read_text(encoding="utf-8")
    for name in ("risk_coverage_curve", "binary_confidence", "class_log_odds", "def _pooled",
                 "apply_temperature_"):
        assert name not in text, name


def _multilabel_predictions(seed: int = 0, n: int = 40) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    rows = []
    for target, shift in (("disc", 1.0), ("bar", 0.3)):
        y = (rng.random(n) < 0.4).astype(float)
        z = rng.normal(size=n) + shift * (2 * y - 1)
        z[:6] = np.round(z[:6])  # some tied scores
        for i in range(n):
            rows.append({"condition": "clean", "test": "clean", "family": "clean",
                         "severity": 0, "id": f"im{i:03d}", "target": target,
                         "label": y[i], "prob": 1 / (1 + np.exp(-z[i])), "logit": z[i]})
    return pd.DataFrame(rows)


def test_pooled_decisions_are_calibration_tables_decisions() -> None:
    pred = _multilabel_predictions()
    thresholds, temps = {"disc": 0.4, "bar": 0.6}, {"disc": 1.7, "bar": 0.8}
    table = calibration_table(pred, True, thresholds, temps).set_index(
        ["target", "method", "metric"])["value"]
    pooled = pooled_decisions(pred, True, thresholds, temps)
    n = 40
    for k, target in enumerate(["disc", "bar"]):
        part = slice(k * n, (k + 1) * n)
        assert aurc(pooled.confidence[part], pooled.wrong[part]) == table[
            (target, "max_prob", "aurc")]
        sub = pred[pred["target"] == target].sort_values("id")
        _, wrong, conf = binary_decisions(sub["label"].to_numpy(), sub["prob"].to_numpy(),
                                          thresholds[target], sub["logit"].to_numpy())
        np.testing.assert_array_equal(pooled.wrong[part], wrong)
        np.testing.assert_array_equal(pooled.confidence[part], conf)
    assert set(pooled.probabilities) == {"max_prob", "temperature"}
    cov, risk = decision_risk_coverage(pred, True, thresholds, temps)
    ref_cov, ref_risk, _ = risk_coverage_curve(pooled.confidence, pooled.wrong)
    np.testing.assert_array_equal(cov, ref_cov)
    np.testing.assert_array_equal(risk, ref_risk)
    assert risk[-1] == pytest.approx(pooled.wrong.mean())


def test_pooled_decisions_multiclass_match_the_table() -> None:
    pred = _multilabel_predictions(1)
    disc = pred["target"] == "disc"
    label = pred[disc].set_index("id")["label"]
    prob = pred[disc].set_index("id")["prob"]  # two classes: p(bar) = 1 - p(disc)
    pred["label"] = np.where(disc, label.reindex(pred["id"]), 1 - label.reindex(pred["id"]))
    pred["prob"] = np.where(disc, prob.reindex(pred["id"]), 1 - prob.reindex(pred["id"]))
    pred = pred.drop(columns="logit")
    table = calibration_table(pred, False, 0.5, {"all": 1.3}).set_index(
        ["method", "metric"])["value"]
    pooled = pooled_decisions(pred, False, 0.5, {"all": 1.3})
    assert aurc(pooled.confidence, pooled.wrong) == table[("max_prob", "aurc")]
    np.testing.assert_array_equal(pooled.outcome, 1 - pooled.wrong)


def test_image_risk_coverage_aligns_signals_and_dice_by_id() -> None:
    ids = [f"im{i}" for i in range(6)]
    dice = np.array([0.9, 0.2, 0.7, 0.95, 0.5, 0.8])
    ps = pd.DataFrame({"condition": "clean", "target": "fg", "metric": "dice", "id": ids,
                       "value": dice})
    conf = np.array([0.8, 0.1, 0.6, 0.9, 0.3, 0.7])
    order = [3, 0, 5, 1, 4, 2]  # the confidence table in another order
    ct = pd.DataFrame({"target": "fg", "signal": "mask_confidence",
                       "id": [ids[i] for i in order], "value": conf[order]})
    (c, v), = signal_dice(ct, ps, "clean", "fg").values()
    np.testing.assert_array_equal(c, conf)
    np.testing.assert_array_equal(v, dice)
    cov, risk = image_risk_coverage(ct, ps, "clean", "fg")["mask_confidence"]
    ref = risk_coverage_curve(conf, 1 - dice)
    np.testing.assert_array_equal(cov, ref[0])
    np.testing.assert_array_equal(risk, ref[1])


def test_one_coverage_constant() -> None:
    assert COVERAGE == 0.8 and DEFERRED == 0.2  # exactly: 1 - 0.8 is 0.19999999999999996
    assert segmentation_calibration.COVERAGE is calibration.COVERAGE
    assert checklist.DEFER is calibration.DEFERRED
    for path in (SRC / "analysis" / "segmentation_calibration.py",
                 SRC / "analysis" / "mitigation.py", SRC / "analysis" / "checklist.py"):
        code = path.read_text(encoding="utf-8")
        assert "COVERAGE = 0.8" not in code and "DEFER = 0.2" not in code
        assert '"coverage": 0.8' not in code


def test_harmful_side_is_harmful_elementwise() -> None:
    lo = np.array([0.1, -0.2, np.nan, -0.3, 0.0])
    hi = np.array([0.2, -0.1, -0.1, 0.4, np.nan])
    for metric in ("dice", "hd95"):
        assert harmful_side(metric, lo, hi).tolist() == [
            harmful(metric, a, b) for a, b in zip(lo, hi, strict=True)]
    assert harmful_side("hd95", lo, hi).tolist() == [True, False, False, False, False]
    assert harmful_side("dice", lo, hi).tolist() == [False, True, True, False, False]
    # the ranking's "significant" is the same rule (was re-derived with a sign flip)
    code = (SRC / "analysis" / "ranking.py").read_text(encoding="utf-8")
    assert "harmful_side(" in code and "harmful_bound" not in code


def test_resampled_mean_is_the_one_mean_of_a_resample() -> None:
    rng = np.random.default_rng(3)
    v = rng.random(12)
    v[[2, 7]] = np.nan
    v[5] = np.inf  # left out, as metrics.parquet's per-image rows leave it out
    member = np.ones(12, bool)
    member[[0, 1]] = False
    idx = bootstrap_indices(12, 200, seed=4)
    est = mean_estimate(v, member, resample_counts(idx, 12))
    np.testing.assert_allclose(est.draws, resampled_mean(np.where(member, v, np.nan), idx),
                               rtol=1e-12, equal_nan=True)
    assert est.value == pytest.approx(np.mean(v[member & np.isfinite(v)]))
    assert mean_ci(v, idx) == percentile_ci(resampled_mean(v, idx))
    assert np.isfinite(mean_ci(v, idx)).all()  # was (nan, inf): inf drawn in most resamples
    assert aggregate.mean_estimate is mean_estimate


# ------------------------------------------------------------------- AURC under tied scores
def _fd_shifts_aurc(residual: np.ndarray, conf: np.ndarray) -> float:
    """FD-Shifts' ``rc_curve_stats`` + ``aurc`` (fd_shifts/analysis/metrics.py), transcribed:
    samples removed in ``np.argsort`` order, one curve point where the removed sample's
    confidence differs from the previous one, trapezoid area."""
    n = len(residual)
    idx = np.argsort(conf)
    error_sum = float(np.sum(residual))
    risks, weights, tmp = [error_sum / n], [], 0
    for i in range(n - 1):
        error_sum -= residual[idx[i]]
        tmp += 1
        if i == 0 or conf[idx[i]] != conf[idx[i - 1]]:
            risks.append(error_sum / (n - 1 - i))
            weights.append(tmp / n)
            tmp = 0
    return float(sum((risks[i] + risks[i + 1]) * 0.5 * weights[i] for i in range(len(weights))))


def test_aurc_is_invariant_to_input_order_under_ties_fd_shifts_is_not() -> None:
    conf = np.array([0.9, 0.9, 0.9, 0.5, 0.5, 0.1])
    wrong = np.array([1.0, 0.0, 0.0, 1.0, 0.0, 1.0])
    ours, theirs = set(), set()
    for perm in itertools.permutations(range(6)):
        p = list(perm)
        ours.add(round(aurc(conf[p], wrong[p]), 12))
        theirs.add(round(_fd_shifts_aurc(wrong[p], conf[p]), 12))
    assert ours == {round(aurc(conf, wrong), 12)}  # 0.379167 (docs/metrics.md)
    assert aurc(conf, wrong) == pytest.approx(0.3791666667)
    assert min(theirs) == pytest.approx(0.1708333333) and max(theirs) == pytest.approx(
        0.3166666667)  # 4 values, depending on the input order
    # a constant confidence is a random ranking: ours = mean residual, FD-Shifts' near 0
    w = np.array([0, 1, 0, 0, 1, 0, 0, 0, 0, 0.0])
    assert aurc(np.zeros(10), w) == pytest.approx(0.2)
    assert _fd_shifts_aurc(w, np.zeros(10)) == pytest.approx(0.0211111111)


def test_eaurc_never_negative_fd_shifts_can_be() -> None:
    from medfail.metrics.selective import optimal_aurc

    rng = np.random.default_rng(5)
    for _ in range(200):
        n = int(rng.integers(1, 30))
        conf = np.round(rng.random(n) * 3)  # many ties
        r = (rng.random(n) < 0.3).astype(float)
        assert eaurc(conf, r) >= -1e-15
    conf = np.arange(10.0)[::-1]
    wrong = np.r_[np.zeros(9), 1.0]  # a perfect ranking: ours 0 exactly
    assert eaurc(conf, wrong) == 0.0
    # FD-Shifts: trapezoid AURC minus the large-N optimum e + (1 - e) ln(1 - e)
    assert _fd_shifts_aurc(wrong, conf) - optimal_aurc(0.1) == pytest.approx(-1.7553591e-4)


# ------------------------------------------------ CIs of a run vs the documented functions
@pytest.fixture(scope="module")
def seg_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from test_outside_recomputation import B, segmentation_folder, segmenter

    from medfail.data.datasets import open_dataset
    from medfail.engine.runner import run_suite
    from medfail.engine.suite import SuiteConfig

    tmp = tmp_path_factory.mktemp("cis")
    return run_suite(segmenter(), open_dataset(segmentation_folder(tmp / "s", 10, 0),
                                               "segmentation"),
                     tmp / "run", SuiteConfig(tests=["gaussian_noise"], severities=[3],
                                              n_bootstrap=B, min_slice_n=5),
                     progress=False, render=False)


def test_metrics_cis_equal_the_documented_bootstrap_functions(seg_run: Path) -> None:
    import json

    from medfail.seeding import derive_seed

    run = Path(seg_run)
    info = json.loads((run / "run.json").read_text())
    metrics = pd.read_parquet(run / "metrics.parquet")
    ps = pd.read_parquet(run / "per_sample.parquet")
    ids = sorted(ps["id"].unique())
    idx = bootstrap_indices(len(ids), info["config"]["n_bootstrap"],
                            derive_seed(info["seed"], "bootstrap"))
    m = metrics[metrics["slice"] == "all"].set_index(["condition", "target", "metric"])
    target = next(t for t in ps["target"].unique() if t != "macro")
    checked = 0
    for cond in ("clean", "gaussian_noise@3"):
        for metric in ("dice", "nsd"):
            v = ps[(ps["condition"] == cond) & (ps["target"] == target)
                   & (ps["metric"] == metric)].set_index("id")["value"].reindex(ids)
            row = m.loc[(cond, target, metric)]
            np.testing.assert_allclose(mean_ci(v.to_numpy(float), idx),
                                       (row["ci_low"], row["ci_high"]), rtol=1e-12)
            if cond != "clean":
                c = ps[(ps["condition"] == "clean") & (ps["target"] == target)
                       & (ps["metric"] == metric)].set_index("id")["value"].reindex(ids)
                delta = resampled_mean(v.to_numpy(float), idx) - resampled_mean(
                    c.to_numpy(float), idx)
                np.testing.assert_allclose(percentile_ci(delta),
                                           (row["delta_ci_low"], row["delta_ci_high"]),
                                           rtol=1e-12)
            checked += 1
        counts = [ps[(ps["condition"] == cond) & (ps["target"] == target)
                     & (ps["metric"] == k)].set_index("id")["value"].reindex(ids).to_numpy()
                  for k in ("lesion_tp", "lesion_fn", "lesion_fp")]
        row = m.loc[(cond, target, "lesion_f1")]
        assert row["value"] == pooled_lesion_f1(np.stack(counts, axis=1).astype(int))
        ci = statistic_ci(lambda tp, fn, fp: pooled_lesion_f1(
            np.stack([tp, fn, fp], axis=1).astype(int)), tuple(counts), idx)
        np.testing.assert_allclose(ci, (row["ci_low"], row["ci_high"]), rtol=1e-12)
    assert checked == 4


# ------------------------------------- docs/metrics.md: pixel-boundary vs sub-voxel surfaces
def _monai_surface_dice(t: np.ndarray, p: np.ndarray, tol: float, spacing: tuple[float, ...],
                        subvoxels: bool) -> float:
    import torch
    from monai.metrics import compute_surface_dice

    def one_hot(m: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(np.stack([~m, m])[None].astype(np.float32))

    return float(compute_surface_dice(one_hot(p), one_hot(t), [tol, tol],
                                      include_background=True, spacing=spacing,
                                      use_subvoxels=subvoxels)[0, 1])


def test_documented_surface_gap_on_thin_anisotropic_slabs() -> None:
    from medfail.metrics.segmentation import nsd

    t = np.zeros((8, 16, 16), bool)
    t[3, 4:12, 4:12] = True  # a one-voxel slab
    p = np.zeros_like(t)
    p[4, 4:12, 4:12] = True  # the next slice, 2 mm away
    spacing = (2.0, 1.0, 1.0)
    # tau 1 mm < slice spacing: every pixel-boundary distance is 2 mm -> 0; sub-voxel 0.5
    assert nsd(t[None], p[None], tolerance=1.0, spacing=spacing)[0] == 0.0
    assert _monai_surface_dice(t, p, 1.0, spacing, False) == 0.0
    assert _monai_surface_dice(t, p, 1.0, spacing, True) == pytest.approx(0.5, abs=1e-3)
    # tau = the slice spacing: both definitions agree
    assert nsd(t[None], p[None], tolerance=2.0, spacing=spacing)[0] == 1.0
    assert _monai_surface_dice(t, p, 2.0, spacing, True) == pytest.approx(1.0)
    # 2-D blob shifted 3 px, tau 2 px: a gap of a few hundredths, as the table says
    yy, xx = np.mgrid[:96, :96]
    a = np.hypot(yy - 48, xx - 48) <= 25
    b = np.hypot(yy - 48, xx - 51) <= 26
    ours = float(nsd(a[None], b[None], tolerance=2.0, spacing=(1.0, 1.0))[0])
    assert ours == pytest.approx(_monai_surface_dice(a, b, 2.0, (1.0, 1.0), False), abs=1e-6)
    assert 0.0 < _monai_surface_dice(a, b, 2.0, (1.0, 1.0), True) - ours < 0.07


def test_pipeline_lesion_f1_is_pooled_lesion_f1_with_its_empty_set_value() -> None:
    from medfail.analysis.aggregate import pooled_lesion_estimates

    tp, fn, fp = np.zeros(4), np.zeros(4), np.array([0.0, 0.0, 1.0, 0.0])
    member = np.array([True, True, False, False])  # a slice: no lesion, nothing predicted
    idx = np.array([[0, 1, 2, 3], [2, 2, 3, 3], [0, 0, 2, 2]])
    est = pooled_lesion_estimates(tp, fn, fp, member, resample_counts(idx, 4))
    assert est["lesion_f1"].value == pooled_lesion_f1(np.zeros((2, 3), int)) == 1.0
    # a resample without a member image is undefined (NaN), not 1.0
    np.testing.assert_array_equal(est["lesion_f1"].draws, [1.0, np.nan, 1.0])
    assert np.isnan(est["lesion_sensitivity"].value) and np.isnan(est["lesion_precision"].value)


def test_classification_cis_equal_the_documented_bootstrap_functions(
        tmp_path: Path) -> None:
    import json

    from test_outside_recomputation import B, classification_folder, classifier

    from medfail.data.datasets import open_dataset
    from medfail.engine.runner import run_suite
    from medfail.engine.suite import SuiteConfig
    from medfail.metrics.bootstrap import auprc_bootstrap, auroc_bootstrap
    from medfail.metrics.classification import f1
    from medfail.seeding import derive_seed

    run = Path(run_suite(classifier(), open_dataset(
        classification_folder(tmp_path / "c", 20, 0), "classification",
        target_names=["disc", "bar"]), tmp_path / "run",
        SuiteConfig(tests=["contrast"], severities=[3], n_bootstrap=B), progress=False,
        render=False))
    info = json.loads((run / "run.json").read_text())
    m = pd.read_parquet(run / "metrics.parquet")
    m = m[m["slice"] == "all"].set_index(["condition", "target", "metric"])
    pred = pd.read_parquet(run / "predictions" / "clean.parquet")
    ids = sorted(pred["id"].unique())
    idx = bootstrap_indices(len(ids), B, derive_seed(info["seed"], "bootstrap"))
    thresholds = info["thresholds"]
    for target in ("disc", "bar"):
        sub = pred[pred["target"] == target].set_index("id").reindex(ids)
        y, p = sub["label"].to_numpy(float), sub["prob"].to_numpy(float)
        thr = thresholds[target] if isinstance(thresholds, dict) else thresholds
        for metric, draws in (("auroc", auroc_bootstrap(y, p, idx)),
                              ("auprc", auprc_bootstrap(y, p, idx))):
            row = m.loc[("clean", target, metric)]
            np.testing.assert_allclose(percentile_ci(draws), (row["ci_low"], row["ci_high"]),
                                       rtol=1e-12)
        d = (p >= thr).astype(float)
        row = m.loc[("clean", target, "f1")]
        np.testing.assert_allclose(statistic_ci(f1, (y, d), idx),
                                   (row["ci_low"], row["ci_high"]), rtol=1e-12)
