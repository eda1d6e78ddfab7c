"""Engine benchmarks: suite overhead over bare forward passes, memory growth, Ray scaling.

The model is the demo's segmenter (``runs/demo/models/segmenter.pt``) when ``make demo`` has
written it, else the same U-Net untrained with seeded weights (identical forward cost). Data are
synthetic phantom test splits written to a temporary folder.
"""

from __future__ import annotations

import importlib.util
import inspect
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from benchmarks.common import ROOT, bench_model, ratio

N_OVERHEAD = 64  # two thirds of the demo's test split, to keep `make bench` short
MEMORY_N = (16, 160)
ROUNDS = 2
THREADS = 1


def _data(tmp: Path, n: int) -> Path:
    from medfail.data.phantoms import PhantomConfig, write_split

    return write_split(tmp / f"data_{n}", "test", n, PhantomConfig())


def _config(tests: list[str]) -> Any:
    from medfail.engine.suite import SuiteConfig

    return SuiteConfig(tests=tests, severities=[2], uncertainty=[], mitigate=False)


def _run(model: Path, data: Path, out: Path, tests: list[str], task: str = "segmentation",
         adapter: Any = None, render: bool = False, **kwargs: Any) -> Path:
    from medfail.data.datasets import open_dataset
    from medfail.engine.runner import run_suite
    from medfail.models.loading import describe_model, load_model

    adapter = adapter or load_model(model, task)
    names = adapter.spec.target_names if task == "classification" else None
    return run_suite(adapter, open_dataset(data, task, target_names=names), out,
                     _config(tests), model_info=describe_model(model), progress=False,
                     render=render, **kwargs)


def _corruptions() -> list[str]:
    from medfail.stress.corruptions import CORRUPTIONS

    return [t.name for t in CORRUPTIONS]


class ForwardClock:
    """Wraps an adapter's ``forward`` and sums the seconds spent inside it (every forward
    pass of a run: conditions, evidence, occlusion maps...). Keeps ``module`` visible (MC
    dropout and the ONNX export look for it)."""

    def __init__(self, forward: Any) -> None:
        self.forward, self.seconds, self.calls = forward, 0.0, 0
        self.module = getattr(forward, "module", None)

    def __call__(self, x: Any) -> Any:
        t0 = time.perf_counter()
        try:
            return self.forward(x)
        finally:
            self.seconds += time.perf_counter() - t0
            self.calls += 1


#: the suite_overhead configurations: (name, task, model size (None: the demo's model),
#: images, rounds); "bench" is the existing configuration, "densenet224" a realistic cost
CONFIGS = (("bench", "segmentation", None, N_OVERHEAD, ROUNDS),
           ("bench", "classification", None, N_OVERHEAD, ROUNDS),
           ("densenet224", "classification", 224, 16, 1))


def overhead(tmp: Path) -> dict[str, Any]:
    """Whole ``run_suite`` (evidence, case studies, HTML + PDF report included) ÷ the seconds
    spent in the model's forward passes during that same run, per task and configuration."""
    import torch

    from medfail.models.loading import load_model

    torch.set_num_threads(THREADS)
    tests = _corruptions()
    out: dict[str, Any] = {}
    folders: dict[int, Path] = {}
    for name, task, size, n, rounds in CONFIGS:
        data = folders[n] = folders.get(n) or _data(tmp, n)
        model, desc = bench_model(tmp, task, size or 64)
        best: dict[str, Any] = {}
        for k in range(rounds):
            adapter = load_model(model, task)
            clock = ForwardClock(adapter.forward)
            adapter.forward = clock
            t0 = time.perf_counter()
            run = _run(model, data, tmp / f"overhead_{name}_{task}_{k}", tests, task,
                       adapter=adapter, render=True)
            seconds = time.perf_counter() - t0
            if not best or seconds / clock.seconds < best["overhead"]:
                stages = json.loads((run / "run.json").read_text())["wall_clock_s"]["stages"]
                best = {"suite_s": round(seconds, 3), "forward_s": round(clock.seconds, 3),
                        "forward_calls": clock.calls,
                        "stages_s": {k: round(v, 3) for k, v in stages.items()},
                        "overhead": ratio(seconds, clock.seconds)}
        out[f"{name}/{task}"] = {
            "model": desc,
            "config": f"{n} phantom images 128x128, clean + {len(tests)} corruptions at severity"
                      " 2, n_bootstrap default, no uncertainty methods, no mitigation, "
                      "evidence + case studies + HTML and PDF report",
            "threads": f"torch {THREADS}", "timing": f"best of {rounds} round(s)", **best}
    return out


def _peak_rss_mib() -> float:
    """This process's peak RSS: ``VmHWM`` where /proc has it, else ``ru_maxrss``.

    ``ru_maxrss`` (RUSAGE_SELF or RUSAGE_CHILDREN) of a child started by fork+exec includes the
    parent's RSS at the fork (Linux folds the old memory map's high-water mark into it at exec),
    so it would report the benchmark driver's size; ``VmHWM`` belongs to the new map only.
    """
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def memory_child(model: str, data: str, out: str) -> None:
    """Child process: one run, then print its own peak RSS (MiB) as JSON."""
    import torch

    torch.set_num_threads(THREADS)
    from medfail.engine import runner  # noqa: F401  (imports count towards the baseline)

    before = _peak_rss_mib()
    t0 = time.perf_counter()
    _run(Path(model), Path(data), Path(out), ["gaussian_noise", "jpeg"])
    print(json.dumps({"peak_rss_mib": _peak_rss_mib(), "peak_rss_after_imports_mib": before,
                      "seconds": time.perf_counter() - t0}))


def memory(tmp: Path, model: Path) -> dict[str, Any]:
    """Peak RSS of a run on 10x the samples ÷ on 1x, each in a fresh process."""
    runs = {}
    for n in MEMORY_N:
        data = _data(tmp, n)
        proc = subprocess.run(
            [sys.executable, "-m", "benchmarks.bench_suite", "memory-child", str(model),
             str(data), str(tmp / f"memory_{n}")],
            cwd=ROOT, capture_output=True, text=True, check=True)
        runs[n] = json.loads(proc.stdout.strip().splitlines()[-1])
    small, large = (runs[n]["peak_rss_mib"] for n in MEMORY_N)
    base_small, base_large = (runs[n]["peak_rss_after_imports_mib"] for n in MEMORY_N)
    return {
        "config": f"{MEMORY_N[0]} vs {MEMORY_N[1]} phantom images 128x128, clean + "
                  "gaussian_noise@2 + jpeg@2, render=False",
        "measure": "peak RSS (VmHWM) of each child process at exit; ru_maxrss is not used: "
                   "after fork+exec it includes the parent's RSS",
        "peak_rss_mib": {str(n): round(runs[n]["peak_rss_mib"], 1) for n in MEMORY_N},
        "peak_rss_after_imports_mib": {str(n): round(runs[n]["peak_rss_after_imports_mib"], 1)
                                       for n in MEMORY_N},
        "seconds": {str(n): round(runs[n]["seconds"], 2) for n in MEMORY_N},
        "growth": ratio(large, small),
        # the same ratio without the ~570 MiB of imports (torch, MONAI) both runs share
        "growth_above_imports": round(ratio(large - base_large, small - base_small), 3),
    }


def ray_scaling(tmp: Path, model: Path) -> dict[str, Any]:
    """Wall-clock of ``executor="ray"`` with 1 vs 2 workers; metrics.parquet must be equal."""
    from medfail.engine.runner import run_suite

    params = inspect.signature(run_suite).parameters
    if "executor" not in params:
        return {"speedup": None, "reason": "run_suite has no executor= parameter yet"}
    if importlib.util.find_spec("ray") is None:
        return {"speedup": None, "reason": "ray is not installed in this environment"}
    import pandas as pd

    extra: dict[str, Any] = {}
    if "model_loader" in params:
        from medfail.engine.executors import ModelFiles

        extra["model_loader"] = ModelFiles((str(model),), "segmentation")
    data = _data(tmp, N_OVERHEAD)
    tests = _corruptions()
    seconds, metrics = {}, {}
    for workers in (1, 2):
        t0 = time.perf_counter()
        run = _run(model, data, tmp / f"ray_{workers}", tests, executor="ray",
                   ray_workers=workers, ray_address=None, **extra)
        seconds[workers] = time.perf_counter() - t0
        metrics[workers] = pd.read_parquet(run / "metrics.parquet")
    pd.testing.assert_frame_equal(metrics[1], metrics[2])
    return {"config": f"as suite_overhead ({N_OVERHEAD} images, clean + {len(tests)} "
                      "corruptions), a local Ray started by run_suite (its start-up included)",
            "seconds": {str(k): round(v, 3) for k, v in seconds.items()},
            "metrics_equal": True, "speedup": ratio(seconds[1], seconds[2])}


def run() -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="medfail-bench-") as name:
        tmp = Path(name)
        model, model_desc = bench_model(tmp, "segmentation")
        out: dict[str, Any] = {"model": model_desc}
        out["overhead"] = overhead(tmp)
        out["memory"] = memory(tmp, model)
        try:
            out["ray"] = ray_scaling(tmp, model)
        except Exception as exc:  # the Ray executor is new: report, do not abort the benchmark
            out["ray"] = {"speedup": None, "reason": f"ray run failed: {exc!r}"}
        if out["ray"].get("speedup") is not None:  # the same config on the local executor
            out["ray"]["local_executor_s"] = out["overhead"]["bench/segmentation"]["suite_s"]
        return out


if __name__ == "__main__":
    if len(sys.argv) == 5 and sys.argv[1] == "memory-child":
        memory_child(*sys.argv[2:])
    else:
        print(json.dumps(run(), indent=2))
