"""``peer_pipeline_speedup``: the failure suite written with the peers ÷ ``medfail run``.

Per task (segmentation: the demo U-Net; classification: the demo DenseNet121; each from
``runs/demo/models`` when ``make demo`` wrote it, else the same architecture untrained with
seeded weights) on a phantom test split:

* medfail: ``run_suite`` in-process, the whole run a user gets (prediction, metrics, slices,
  ranking, case studies, the HTML report), timed end to end;
* peer: :func:`benchmarks.peer_suite.run_peer` with imagecorruptions (medfail's function where
  imagecorruptions has no such corruption), the same conditions, batch size and bootstrap
  resamples, timed end to end (reading the folder included).

Ratio = peer seconds / medfail seconds; the headline is the minimum over the two tasks. Both run
after an untimed warm-up on 8 images (imports, first forward pass), torch on :data:`THREADS`
thread.

Agreement, asserted: (1) in the timed pair, every row of the conditions whose inputs are
bit-identical (clean, and each :data:`~benchmarks.peer_suite.IC_MATCH` corruption marked exact
whose imagecorruptions output equals medfail's on every image: JPEG); (2) untimed, the peer run
again with medfail's corruptions (:func:`~benchmarks.peer_suite.medfail_corruptor`): every row of
every condition. Both compare ``value``, ``ci_low`` and ``ci_high`` with the ``slice == "all"``
rows of medfail's ``metrics.parquet`` within :data:`TOLERANCE`. The segmentation data has its
``pixel_spacing`` column removed from ``metadata.csv``, so medfail's NSD (τ 2 px) and HD95 are
in px, as MONAI's are; the peer binarises with medfail's stored-float16 rule
(:func:`~benchmarks.peer_suite.stored_mask`, same cost as an argmax).
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks import peer_suite
from benchmarks.common import bench_model, ratio

THREADS = 1
WARMUP_N = 8
SEED = 0
BATCH_SIZE = 16
#: (absolute, relative) tolerance of a peer value vs medfail's: |Δ| <= abs + rel * |medfail|.
#: Classification: both in float64 on the same probabilities. Segmentation: MONAI computes
#: Dice, NSD and HD95 in float32 (relative error ~1e-7 per image).
TOLERANCE = {"classification": (1e-9, 0.0), "segmentation": (1e-9, 1e-6)}
COLUMNS = ("value", "ci_low", "ci_high")


@dataclass(frozen=True)
class TaskConfig:
    """One task's benchmark: split size, corruptions, resamples (the model: the demo's)."""

    n: int
    tests: tuple[str, ...]
    n_bootstrap: int


@dataclass(frozen=True)
class Tables:
    """The run's tables the peer's rows are compared with."""

    metrics: Any  # metrics.parquet
    calibration: Any  # calibration.parquet (brier)


TESTS = ("gaussian_noise", "gaussian_blur", "contrast", "jpeg")
#: 1000 resamples: medfail's default n_bootstrap, what a user's run does
TASKS = {
    "segmentation": TaskConfig(64, TESTS, 1000),
    "classification": TaskConfig(96, TESTS, 1000),
}


def make_data(tmp: Path, task: str, n: int) -> Path:
    """A phantom test split of ``n`` images; segmentation: without ``pixel_spacing`` (px units)."""
    import pandas as pd

    from medfail.data.phantoms import PhantomConfig, write_split

    root = write_split(tmp / f"data_{task}_{n}", "test", n, PhantomConfig())
    if task == "segmentation":
        meta = pd.read_csv(root / "metadata.csv")
        meta.drop(columns=["pixel_spacing"]).to_csv(root / "metadata.csv", index=False)
    return root


def run_medfail(model: Path, task: str, data: Path, out: Path, tests: Sequence[str],
                n_bootstrap: int, render: bool = True) -> tuple[Tables, float, dict[str, float]]:
    """``run_suite`` as ``medfail run`` calls it: (its metrics and calibration tables,
    wall-clock seconds, ``run.json`` stage seconds)."""
    import json

    import pandas as pd

    from medfail.data.datasets import open_dataset
    from medfail.engine.runner import run_suite
    from medfail.engine.suite import SuiteConfig
    from medfail.models.loading import describe_model, load_model
    from medfail.rundir import CALIBRATION, METRICS, RUN_JSON, table

    config = SuiteConfig(tests=list(tests), severities=[peer_suite.SEVERITY], uncertainty=[],
                         mitigate=False, n_bootstrap=n_bootstrap, batch_size=BATCH_SIZE,
                         seed=SEED)
    t0 = time.perf_counter()
    run = run_suite(load_model(model, task), open_dataset(data, task), out, config,
                    model_info=describe_model(model), progress=False, render=render)
    seconds = time.perf_counter() - t0
    stages = json.loads(table(run, RUN_JSON).read_text())["wall_clock_s"]["stages"]
    tables = Tables(pd.read_parquet(table(run, METRICS)), pd.read_parquet(table(run, CALIBRATION)))
    return tables, seconds, stages


def run_peer(model: Path, task: str, data: Path, tests: Sequence[str], n_bootstrap: int,
             corruptor: peer_suite.Corruptor) -> tuple[list[dict[str, Any]], float]:
    """The peer script (model loading outside the timing, as for medfail's adapter)."""
    from medfail.models.loading import load_model

    return peer_suite.run_peer(load_model(model, task), data, task, tests, corruptor,
                               n_bootstrap, SEED, BATCH_SIZE, peer_suite.stored_mask)


def _medfail_row(tables: Tables, key: tuple[str, str, str]) -> dict[str, float] | None:
    """medfail's row of a peer key: metrics.parquet ``slice == "all"``; ``brier`` (a point
    value) from calibration.parquet."""
    condition, target, metric = key
    if metric == "brier":
        t = tables.calibration
        hit = t[(t["condition"] == condition) & (t["target"] == target) & (t["metric"] == metric)]
        if hit.empty:
            return None
        return {"value": float(hit["value"].iloc[0]), "ci_low": np.nan, "ci_high": np.nan}
    t = tables.metrics
    hit = t[(t["slice"] == "all") & (t["condition"] == condition) & (t["target"] == target)
            & (t["metric"] == metric)]
    return None if hit.empty else {c: float(hit[c].iloc[0]) for c in COLUMNS}


def compare(rows: Sequence[dict[str, Any]], tables: Tables, task: str,
            conditions: Sequence[str] | None = None) -> dict[str, Any]:
    """Assert every peer row (of ``conditions``; None: all) equals medfail's within
    :data:`TOLERANCE` (NaN == NaN); returns what was compared and the largest differences."""
    atol, rtol = TOLERANCE[task]
    worst = {"abs": 0.0, "rel": 0.0}
    compared, problems, seen = 0, [], set()
    for row in rows:
        if conditions is not None and row["condition"] not in conditions:
            continue
        key = (row["condition"], row["target"], row["metric"])
        ours = _medfail_row(tables, key)
        if ours is None:
            problems.append(f"{key}: medfail has no such row")
            continue
        for col in COLUMNS:
            a, b = float(row[col]), ours[col]
            if np.isnan(a) and np.isnan(b):
                continue
            diff = abs(a - b)
            if not diff <= atol + rtol * abs(b):  # NaN vs a number fails too
                problems.append(f"{key} {col}: peer {a!r} vs medfail {b!r}")
                continue
            worst["abs"] = max(worst["abs"], diff)
            worst["rel"] = max(worst["rel"], diff / abs(b) if b else 0.0)
        compared += 1
        seen.add(row["condition"])
    assert compared, "no rows compared"
    assert not problems, f"{task}: {len(problems)} peer values differ: {problems[:5]}"
    return {"rows": compared, "conditions": sorted(seen), "max_abs_diff": worst["abs"],
            "max_rel_diff": worst["rel"],
            "tolerance": f"|peer - medfail| <= {atol:g} + {rtol:g} * |medfail| "
                         "(value, ci_low, ci_high; NaN == NaN)"}


def exact_tests(ic: Any, data: Path, task: str, tests: Sequence[str]) -> list[str]:
    """Tests whose imagecorruptions output equals medfail's on every image (checked here)."""
    folder = peer_suite.read_folder(data, task)
    mine = peer_suite.medfail_corruptor(SEED)
    out = []
    for test in tests:
        if not peer_suite.IC_MATCH.get(test, ("", 0, ""))[2].startswith("exact"):
            continue
        theirs = peer_suite.imagecorruptions_corruptor(ic, SEED)
        if all(np.array_equal(theirs(im, test, sid), mine(im, test, sid))
               for im, sid in zip(folder.images, folder.ids, strict=True)):
            out.append(test)
    return out


def bench_task(tmp: Path, task: str, cfg: TaskConfig, ic: Any) -> dict[str, Any]:
    model, model_desc = bench_model(tmp, task, seed=SEED)
    warm = make_data(tmp, task, WARMUP_N)
    run_medfail(model, task, warm, tmp / f"warmup_{task}", cfg.tests[:1], 10)
    run_peer(model, task, warm, cfg.tests[:1], 10, peer_suite.imagecorruptions_corruptor(ic, SEED))

    data = make_data(tmp, task, cfg.n)
    tables, medfail_s, stages = run_medfail(model, task, data, tmp / f"run_{task}", cfg.tests,
                                            cfg.n_bootstrap)
    rows, peer_s = run_peer(model, task, data, cfg.tests, cfg.n_bootstrap,
                            peer_suite.imagecorruptions_corruptor(ic, SEED))
    print(f"[peer] {task}: medfail {medfail_s:.1f} s, peer {peer_s:.1f} s", flush=True)
    exact = exact_tests(ic, data, task, cfg.tests)
    same_inputs = compare(rows, tables, task,
                          ["clean", *(peer_suite._name(t) for t in exact)])
    extra = stages.get("evidence", 0.0) + stages.get("report", 0.0)
    mf_rows, mf_peer_s = run_peer(model, task, data, cfg.tests, cfg.n_bootstrap,
                                  peer_suite.medfail_corruptor(SEED))
    all_rows = compare(mf_rows, tables, task)
    return {
        "model": model_desc,
        "config": f"{cfg.n} phantom images 128x128, clean + {len(cfg.tests)} corruptions at "
                  f"severity {peer_suite.SEVERITY} ({', '.join(cfg.tests)}), batch "
                  f"{BATCH_SIZE}, n_bootstrap {cfg.n_bootstrap}, seed {SEED}; medfail: no "
                  "uncertainty methods, no mitigation, default slices, render=True",
        "n_images": cfg.n, "tests": list(cfg.tests), "n_bootstrap": cfg.n_bootstrap,
        "imagecorruptions": {t: f"{peer_suite.IC_MATCH[t][0]} severity "
                                f"{peer_suite.IC_MATCH[t][1]} ({peer_suite.IC_MATCH[t][2]})"
                             for t in cfg.tests if t in peer_suite.IC_MATCH},
        "medfail_s": round(medfail_s, 3), "peer_s": round(peer_s, 3),
        "medfail_stages_s": {k: round(v, 3) for k, v in stages.items()},
        "peer_with_medfail_corruptions_s_untimed_check": round(mf_peer_s, 3),
        "bit_identical_inputs": ["clean", *exact],
        "agreement_timed_run_identical_inputs": same_inputs,
        "agreement_medfail_corruptions_all_rows": all_rows,
        "speedup": ratio(peer_s, medfail_s),
        # what the peer does not do: case studies (occlusion maps) and the HTML report
        "speedup_without_evidence_and_report": ratio(peer_s, medfail_s - extra),
    }


def run() -> dict[str, Any]:
    import torch

    from benchmarks.compat import load_imagecorruptions

    ic, patches = load_imagecorruptions()
    before = torch.get_num_threads()
    torch.set_num_threads(THREADS)
    try:
        with tempfile.TemporaryDirectory(prefix="medfail-bench-peer-") as name:
            tasks = {task: bench_task(Path(name), task, cfg, ic) for task, cfg in TASKS.items()}
    finally:
        torch.set_num_threads(before)
    return {
        "tasks": tasks,
        "threads": f"torch {THREADS} in both",
        "timing": "one timed run each after an untimed warm-up on "
                  f"{WARMUP_N} images; model loading outside the timing",
        "imagecorruptions_patches": patches,
        "speedup": float(min(t["speedup"] for t in tasks.values())),
    }


if __name__ == "__main__":
    import json

    print(json.dumps(run(), indent=2))
