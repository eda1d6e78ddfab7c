"""A re-run reuses the stages after the conditions (``cached_stages``) byte-identically, and a
change to what a stage reads recomputes it (engine/stage_cache.py, Manifest stage records)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pandas as pd

from medfail.data.datasets import open_dataset
from medfail.engine.runner import run_suite
from medfail.engine.suite import SuiteConfig
from tests.conftest import write_png_folder
from tests.test_engine import brightness_classifier, threshold_segmenter

MODEL = {"name": "threshold", "sha256": "0" * 64}
#: rewritten by every run: timings and what was reused
VOLATILE = {"run.json", ".medfail/manifest.json"}


def _digests(run: Path) -> dict[str, str]:
    return {p.relative_to(run).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(run.rglob("*")) if p.is_file()
            and p.relative_to(run).as_posix() not in VOLATILE
            and not p.name.endswith(".seconds")}


def _info(run: Path) -> dict:
    return json.loads((run / "run.json").read_text())


def test_segmentation_rerun_reuses_every_stage_byte_identically(tmp_path: Path) -> None:
    """Second identical run: every condition (the second site's included), the mitigation
    choice, the analysis, the evidence and the report are reused and every file is unchanged;
    a new test recomputes the analysis; a damaged table is rebuilt equal."""
    data = {split: open_dataset(write_png_folder(tmp_path / split, "segmentation", n=8,
                                                 seed=seed), "segmentation")
            for split, seed in (("test", 0), ("cal", 1), ("shift", 2))}
    cfg = SuiteConfig(tests=["jpeg", "contrast"], severities=[2], uncertainty=[],
                      n_bootstrap=20)
    run = tmp_path / "run"

    def go(config: SuiteConfig) -> dict:
        run_suite(threshold_segmenter(), data["test"], run, config, model_info=MODEL,
                  progress=False, calibration=data["cal"], shift=data["shift"])
        return _info(run)

    first = go(cfg)
    assert first["cached_stages"] == [] and first["cached_conditions"] == []
    before = _digests(run)
    second = go(cfg)
    assert sorted(second["cached_stages"]) == ["analyse", "embeddings", "evidence",
                                               "mitigation_choice", "report"]
    assert "shift_data" in second["cached_conditions"]
    assert sorted(second["cached_conditions"]) == sorted(first["conditions"])
    assert _digests(run) == before
    assert second["mitigation"] == first["mitigation"]
    for key in ("thresholds", "undefined_targets", "analysis", "config"):
        assert second[key] == first[key]

    (run / "metrics.parquet").write_bytes(b"damaged")  # an output no longer as recorded
    third = go(cfg)
    assert "analyse" not in third["cached_stages"] and "report" in third["cached_stages"]
    assert _digests(run) == before

    added = go(SuiteConfig(tests=["jpeg", "contrast", "pixelate"], severities=[2],
                           uncertainty=[], n_bootstrap=20))
    assert "analyse" not in added["cached_stages"]
    assert "mitigation_choice" not in added["cached_stages"]
    assert "pixelate@2" in set(pd.read_parquet(run / "metrics.parquet")["condition"])


def test_classification_rerun_reuses_calibration_and_a_check_change_rerenders(
        tmp_path: Path) -> None:
    """The calibration split's predictions are reused; a changed pass/fail check (read by the
    analysis and the report, not by inference) recomputes those stages, not the conditions."""
    test = open_dataset(write_png_folder(tmp_path / "test", "classification", n=12),
                        "classification", target_names=["disc", "bar"])
    cal = open_dataset(write_png_folder(tmp_path / "cal", "classification", n=12, seed=1),
                       "classification", target_names=["disc", "bar"])
    run = tmp_path / "run"

    def go(config: SuiteConfig) -> dict:
        run_suite(brightness_classifier(), test, run, config, model_info=MODEL,
                  progress=False, render=False, calibration=cal)
        return _info(run)

    cfg = SuiteConfig(tests=["jpeg"], severities=[2], uncertainty=[], mitigate=False,
                      n_bootstrap=20)
    go(cfg)
    before = _digests(run)
    again = go(cfg)
    assert sorted(again["cached_stages"]) == ["analyse", "calibration", "embeddings",
                                              "evidence"]
    assert _digests(run) == before
    checked = go(SuiteConfig(tests=["jpeg"], severities=[2], uncertainty=[], mitigate=False,
                             n_bootstrap=20, checks=[{"metric": "auroc", "max_drop": 0.01}]))
    assert checked["cached_stages"] == ["calibration", "embeddings"]
    assert sorted(checked["cached_conditions"]) == ["clean", "jpeg@2"]
