"""The runner and the run directory contract, with cheap deterministic models."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from medfail.analysis.aggregate import COLUMNS
from medfail.data.datasets import open_dataset
from medfail.engine.predictions import label_map
from medfail.engine.runner import run_suite
from medfail.engine.suite import SuiteConfig
from medfail.errors import MedfailInputError
from medfail.metrics.segmentation import dice
from medfail.models.adapters import Classifier, Segmenter
from medfail.models.spec import ModelSpec

METRIC_NAMES = {"dice", "jaccard", "boundary_f1", "hd95", "nsd", "lesion_f1", "auroc", "auprc",
                "sens_at_95spec", "f1", "ece", "brier", "nll", "aurc", "eaurc"}
FAST = {"n_bootstrap": 50}


def threshold_segmenter() -> Segmenter:
    """Foreground probability = sigmoid((x - 130) / 10): bright pixels are lesion."""
    spec = ModelSpec(task="segmentation", target_names=["lesion"], output="probabilities")

    def forward(x: torch.Tensor) -> torch.Tensor:
        fg = torch.sigmoid((x[:, :1] - 130.0) / 10.0)
        return torch.cat([1 - fg, fg], dim=1)

    return Segmenter(spec, forward)


def brightness_classifier() -> Classifier:
    """disc score from the image maximum, bar score from the top rows."""
    spec = ModelSpec(task="classification", target_names=["disc", "bar"], multi_label=True,
                     input_size=(32, 32), output="probabilities")

    def forward(x: torch.Tensor) -> torch.Tensor:
        disc = torch.sigmoid((x.amax(dim=(1, 2, 3)) - 190.0) / 10.0)
        bar = torch.sigmoid((x[:, :, 2:5].mean(dim=(1, 2, 3)) - 120.0) / 20.0)
        return torch.stack([disc, bar], dim=1)

    return Classifier(spec, forward)


def test_segmentation_run_directory_contract(seg_folder: Path, tmp_path: Path) -> None:
    ds = open_dataset(seg_folder, "segmentation")
    run = run_suite(threshold_segmenter(), ds, tmp_path / "run", SuiteConfig(**FAST),
                    progress=False)
    for name in ("run.json", "per_sample.parquet", "metrics.parquet", "report.html",
                 "predictions/index.parquet", "predictions/clean.npz", "figures"):
        assert (run / name).exists(), name
    metrics = pd.read_parquet(run / "metrics.parquet")
    assert list(metrics.columns) == COLUMNS
    assert set(metrics["metric"]) - {"lesion_sensitivity", "lesion_precision"} == {
        "dice", "jaccard", "boundary_f1", "nsd", "hd95", "lesion_f1"}
    assert set(metrics["metric"]) - {"lesion_sensitivity", "lesion_precision"} <= METRIC_NAMES
    conditions = SuiteConfig().conditions("segmentation", "")
    # every test that applies to unknown-modality data: corruptions and resolution shift
    assert {c.family for c in conditions} == {"clean", "corruption", "domain_shift"}
    stress = metrics[~metrics["family"].isin(["uncertainty", "mitigation"])]
    assert stress["condition"].nunique() == len(conditions) >= 1 + 11 * 3
    info = json.loads((run / "run.json").read_text())
    # extra-pass methods are stored conditions; MC dropout needs a torch model
    assert "tta" in set(metrics["condition"])
    assert "mc_dropout" in info["not_applicable"]
    worst = info["mitigation"]["worst_condition"]
    assert f"tta|{worst}" in set(metrics["condition"])
    mitigations = pd.read_parquet(run / "mitigations.parquet")
    assert {"tta", "selective_80"} <= set(mitigations["mitigation"])
    tta_row = mitigations[(mitigations["mitigation"] == "tta") & (mitigations["base"] == worst)
                          & (mitigations["metric"] == "dice") & (mitigations["slice"] == "all")]
    assert len(tta_row) == 1 and tta_row["forward_passes"].iloc[0] == 4
    assert (tta_row["ci_low"] <= tta_row["effect"]).all()
    assert {"meta.site=s1", "meta.site=s2", "gt.size=small", "gt.size=large",
            "gt.shape=solid"} <= set(metrics["slice"])
    per_sample = pd.read_parquet(run / "per_sample.parquet")
    # 8 rows per sample and condition: 5 per-image metrics + 3 lesion counts
    assert len(per_sample) == metrics["condition"].nunique() * len(ds) * 8
    # delta vs clean is value - clean value
    dice_m = metrics[(metrics["metric"] == "dice") & (metrics["slice"] == "all")
                     ].set_index("condition")
    np.testing.assert_allclose(dice_m["delta_vs_clean"], dice_m["value"] - dice_m.loc["clean",
                                                                                       "value"])
    # the noisiest condition must hurt a threshold model; the CI brackets the value
    assert dice_m.loc["gaussian_noise@3", "delta_vs_clean"] < 0
    assert (dice_m["ci_low"] <= dice_m["value"] + 1e-12).all()
    assert (dice_m["value"] <= dice_m["ci_high"] + 1e-12).all()
    assert not (metrics["ci_low"] > metrics["ci_high"] + 1e-12).any()
    html = (run / "report.html").read_text()
    figures = sorted(p.name for p in (run / "figures").glob("*.png"))
    assert html.count('src="data:image/png;base64,') == len(figures) >= 6
    for name in figures:
        assert f'data-file="figures/{name}"' in html
    assert "gaussian_noise@3" in html and "The model fails most" in html
    ranking = pd.read_parquet(run / "ranking.parquet")
    assert ranking["rank"].tolist() == list(range(1, len(ranking) + 1))
    assert set(ranking["kind"]) == {"condition", "slice"}
    run_info = json.loads((run / "run.json").read_text())
    assert {"config", "command", "seed", "packages", "hardware", "wall_clock_s"} <= set(run_info)
    assert str(seg_folder.parent) not in (run / "run.json").read_text()  # no absolute data path


def test_metrics_recompute_from_stored_predictions(seg_folder: Path, tmp_path: Path) -> None:
    ds = open_dataset(seg_folder, "segmentation")
    run = run_suite(threshold_segmenter(), ds, tmp_path / "run",
                    SuiteConfig(tests=["gaussian_blur"], severities=[2], **FAST), progress=False)
    index = pd.read_parquet(run / "predictions" / "index.parquet")
    stored = np.load(run / "predictions" / "gaussian_blur@2.npz")
    per_sample = pd.read_parquet(run / "per_sample.parquet")
    sel = per_sample[(per_sample["condition"] == "gaussian_blur@2")
                     & (per_sample["metric"] == "dice")].set_index("id")
    for row in index.itertuples():
        mask = np.array(Image.open(seg_folder / row.mask)) > 0
        pred = label_map(stored[row.id]) == 1
        assert stored[row.id].dtype == np.float16
        assert dice(mask[None], pred[None])[0] == pytest.approx(sel.loc[row.id, "value"])


def test_results_do_not_depend_on_batch_size(cls_folder: Path, tmp_path: Path) -> None:
    ds = open_dataset(cls_folder, "classification", target_names=["disc", "bar"])
    tables = []
    for bs in (3, 16):
        run = run_suite(brightness_classifier(), ds, tmp_path / f"bs{bs}",
                        SuiteConfig(batch_size=bs, tests=["gaussian_noise", "jpeg", "pixelate"],
                                    **FAST), progress=False, render=False)
        tables.append(pd.read_parquet(run / "metrics.parquet"))
    pd.testing.assert_frame_equal(tables[0], tables[1])
    macro = tables[0][(tables[0]["target"] == "macro") & (tables[0]["metric"] == "auroc")
                      & (tables[0]["slice"] == "all")]
    assert macro.set_index("condition").loc["clean", "value"] > 0.9


def test_rerun_with_added_test_computes_only_that_test(seg_folder: Path, tmp_path: Path) -> None:
    ds = open_dataset(seg_folder, "segmentation")
    only = {"uncertainty": [], "mitigate": False, **FAST}
    first = SuiteConfig(tests=["jpeg"], severities=[1], **only)
    model = {"name": "threshold", "sha256": "0" * 64}
    run_suite(threshold_segmenter(), ds, tmp_path / "run", first, model_info=model,
              progress=False, render=False)
    before = pd.read_parquet(tmp_path / "run" / "metrics.parquet")
    second = SuiteConfig(tests=["jpeg", "contrast"], severities=[1], **only)
    run_suite(threshold_segmenter(), ds, tmp_path / "run", second, model_info=model,
              progress=False, render=False)
    info = json.loads((tmp_path / "run" / "run.json").read_text())
    assert sorted(info["cached_conditions"]) == ["clean", "jpeg@1"]
    assert list(info["wall_clock_s"]["per_condition"]) == ["clean", "jpeg@1", "contrast@1"]
    assert info["wall_clock_s"]["stages"]["predict"] == pytest.approx(
        info["wall_clock_s"]["per_condition"]["contrast@1"])
    after = pd.read_parquet(tmp_path / "run" / "metrics.parquet")
    keep = after[after["condition"].isin(["clean", "jpeg@1"])].reset_index(drop=True)
    before = before[before["condition"].isin(["clean", "jpeg@1"])].reset_index(drop=True)
    pd.testing.assert_frame_equal(keep, before)
    # another model (other hash) invalidates everything
    run_suite(threshold_segmenter(), ds, tmp_path / "run", second,
              model_info={"name": "threshold", "sha256": "1" * 64}, progress=False, render=False)
    info = json.loads((tmp_path / "run" / "run.json").read_text())
    assert info["cached_conditions"] == []


def test_bad_data_stops_before_the_model_runs(seg_folder: Path, tmp_path: Path) -> None:
    Image.fromarray(np.zeros((20, 20), np.uint8)).save(seg_folder / "masks" / "case003.png")
    spec = ModelSpec(task="segmentation", target_names=["lesion"], output="probabilities")

    def forward(x: torch.Tensor) -> torch.Tensor:
        raise AssertionError("the model ran")

    with pytest.raises(MedfailInputError, match=r"case003\.png.*\(20, 20\)"):
        run_suite(Segmenter(spec, forward), open_dataset(seg_folder, "segmentation"),
                  tmp_path / "run", SuiteConfig(**FAST), progress=False)
    assert not (tmp_path / "run" / "predictions").exists()


def test_unknown_test_name_lists_valid_ones() -> None:
    with pytest.raises(MedfailInputError, match="gaussian_noise"):
        SuiteConfig(tests=["gausian_noise"])


def test_suite_yaml(tmp_path: Path) -> None:
    cfg = tmp_path / "suite.yaml"
    cfg.write_text("tests: [jpeg]\nseverities: [2, 3]\nn_bootstrap: 200\n")
    suite = SuiteConfig.from_yaml(cfg, seed=7)
    assert [c.name for c in suite.conditions()] == ["clean", "jpeg@2", "jpeg@3"]
    assert suite.seed == 7
    cfg.write_text("tests: [jpeg]\nseveritys: [2]\n")
    with pytest.raises(MedfailInputError, match=r"suite\.yaml: unknown option\(s\) severitys"):
        SuiteConfig.from_yaml(cfg)


def test_deep_ensemble_condition(seg_folder: Path, tmp_path: Path) -> None:
    ds = open_dataset(seg_folder, "segmentation")
    spec = ModelSpec(task="segmentation", target_names=["lesion"], output="probabilities")

    def shifted(level: float) -> Segmenter:
        def forward(x: torch.Tensor) -> torch.Tensor:
            fg = torch.sigmoid((x[:, :1] - level) / 10.0)
            return torch.cat([1 - fg, fg], dim=1)
        return Segmenter(spec, forward, name=f"level{level}")

    config = SuiteConfig(tests=["jpeg"], severities=[1], uncertainty=[], mitigate=False, **FAST)
    run = run_suite(threshold_segmenter(), ds, tmp_path / "run", config, progress=False,
                    render=False, ensemble=[shifted(100.0), shifted(160.0)])
    stored = np.load(run / "predictions" / "ensemble.npz")
    clean = np.load(run / "predictions" / "clean.npz")
    sid = ds.ids[0]
    image = ds.load(sid).image[0]
    expected = np.mean([1 / (1 + np.exp(-(image - lv) / 10.0)) for lv in (130.0, 100.0, 160.0)],
                       axis=0)
    np.testing.assert_allclose(stored[sid][0].astype(np.float32), expected, atol=2e-3)
    assert not np.array_equal(stored[sid], clean[sid])
    conf = pd.read_parquet(run / "predictions" / "ensemble.confidence.parquet")
    assert "sampling_agreement" in set(conf["signal"])
    info = json.loads((run / "run.json").read_text())
    assert info["model"]["ensemble"] == ["level100.0", "level160.0"]
    wrong = ModelSpec(task="segmentation", target_names=["other"], output="probabilities")
    with pytest.raises(MedfailInputError, match="ensemble members need"):
        run_suite(threshold_segmenter(), ds, tmp_path / "run2", config, progress=False,
                  render=False, ensemble=[Segmenter(wrong, lambda x: x)])


def test_device_default_and_checks() -> None:
    from medfail.models.adapters import resolve_device

    assert resolve_device() == ("cuda" if torch.cuda.is_available() else "cpu")
    assert resolve_device("cpu") == "cpu"
    with pytest.raises(MedfailInputError, match="unknown device"):
        resolve_device("tpu:9")
    if not torch.cuda.is_available():
        with pytest.raises(MedfailInputError, match="CUDA is not available"):
            resolve_device("cuda:0")


def _device_run(seg_folder: Path, out: Path, device: str,
                monkeypatch: pytest.MonkeyPatch) -> tuple[Path, set[str]]:
    """A small run on ``device``; returns it and the devices perturbations and the model saw."""
    import medfail.engine.predictor as predictor

    seen: set[str] = set()
    perturb = predictor.perturb_samples

    def spy(*args: object, device: str = "cpu", **kw: object) -> list[np.ndarray]:
        seen.add(f"perturb:{torch.device(device).type}")
        return perturb(*args, device=device, **kw)  # type: ignore[arg-type]

    def forward(x: torch.Tensor) -> torch.Tensor:
        seen.add(f"model:{x.device.type}")
        fg = torch.sigmoid((x[:, :1] - 130.0) / 10.0)
        return torch.cat([1 - fg, fg], dim=1)

    monkeypatch.setattr(predictor, "perturb_samples", spy)
    spec = ModelSpec(task="segmentation", target_names=["lesion"], output="probabilities")
    config = SuiteConfig(tests=["gaussian_noise"], severities=[2], uncertainty=[],
                         mitigate=False, **FAST)
    run = run_suite(Segmenter(spec, forward, device=device), open_dataset(seg_folder,
                    "segmentation"), out, config, progress=False, render=False)
    return run, seen


def test_model_and_perturbed_batches_on_the_adapter_device(
        seg_folder: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    run, seen = _device_run(seg_folder, tmp_path / "run", "cpu", monkeypatch)
    assert seen == {"perturb:cpu", "model:cpu"}
    assert json.loads((run / "run.json").read_text())["hardware"]["device"] == "cpu"


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_run_matches_cpu(seg_folder: Path, tmp_path: Path,
                              monkeypatch: pytest.MonkeyPatch) -> None:
    cpu, _ = _device_run(seg_folder, tmp_path / "cpu", "cpu", monkeypatch)
    cuda, seen = _device_run(seg_folder, tmp_path / "cuda", "cuda", monkeypatch)
    assert {"perturb:cuda", "model:cuda"} <= seen
    assert json.loads((cuda / "run.json").read_text())["hardware"]["device"] == "cuda"
    a, b = (pd.read_parquet(r / "metrics.parquet").query("metric == 'dice'") for r in (cpu, cuda))
    np.testing.assert_allclose(a["value"], b["value"], atol=1e-2)


def test_prefetch_keeps_order_bounds_read_ahead_and_reraises() -> None:
    import itertools
    import threading
    import time
    from collections.abc import Iterator

    from medfail.engine.prefetch import prefetch

    produced: list[int] = []

    def items(fail_at: int | None = None) -> Iterator[int]:
        for i in itertools.count():
            if i == fail_at:
                raise ValueError("bad sample")
            produced.append(i)
            yield i

    got = []
    for x in prefetch(itertools.islice(items(), 10), depth=2):
        time.sleep(0.005)  # let the reader run ahead as far as it may
        assert len(produced) <= x + 4  # queue of 2 + one being read + the current one
        got.append(x)
    assert got == list(range(10))
    with pytest.raises(ValueError, match="bad sample"):
        list(prefetch(items(fail_at=3)))
    endless = prefetch(items())
    next(endless)
    endless.close()  # stops the reader thread
    assert not any(t.name == "medfail-prefetch" for t in threading.enumerate())
