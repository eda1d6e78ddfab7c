"""Shared helpers: interleaved best-of timing, machine facts, package versions, goal records."""

from __future__ import annotations

import os
import platform
import time
from collections.abc import Callable, Mapping
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np


def best_of(fns: Mapping[str, Callable[[], object]], reps: int = 3,
            warmup: bool = True) -> dict[str, float]:
    """Minimum wall-clock seconds of each function over ``reps`` interleaved rounds.

    Rounds interleave the candidates (a, b, c, a, b, c, ...) so load from other processes on a
    shared machine hits them alike; the minimum is the least-disturbed run.
    """
    if warmup:
        for fn in fns.values():
            fn()
    best = dict.fromkeys(fns, float("inf"))
    for _ in range(reps):
        for name, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            best[name] = min(best[name], time.perf_counter() - t0)
    return best


def ratio(numerator: float, denominator: float) -> float:
    return float(numerator / denominator) if denominator > 0 else float("nan")


def goal(value: float | None, target: float | None, higher_is_better: bool,
         **extra: Any) -> dict[str, Any]:
    """A ratio with its goal (``>= target`` or ``<= target``) and whether it is met."""
    if value is None or target is None or not np.isfinite(value):
        met = None
    else:
        met = bool(value >= target) if higher_is_better else bool(value <= target)
    sign = ">=" if higher_is_better else "<="
    return {"value": None if value is None else round(float(value), 3),
            "goal": None if target is None else f"{sign} {target:g}", "met": met, **extra}


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _ram_gib() -> float | None:
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemTotal:"):
                    return round(int(line.split()[1]) / 2**20, 1)
    except OSError:
        pass
    return None


def machine() -> dict[str, Any]:
    """CPU count and model, RAM, OS, Python, and the load average when the run started."""
    load = os.getloadavg() if hasattr(os, "getloadavg") else None
    return {"cpu_count": os.cpu_count(), "cpu_model": _cpu_model(), "ram_gib": _ram_gib(),
            "system": f"{platform.system()} {platform.release()}",
            "python": platform.python_version(),
            "load_average_at_start": None if load is None else [round(x, 2) for x in load]}


PACKAGES = ("medfail", "numpy", "scipy", "torch", "monai", "scikit-image", "scikit-learn",
            "pillow", "pandas", "imagecorruptions", "albumentations", "albucore",
            "opencv-python-headless", "ray")


def versions() -> dict[str, str | None]:
    out: dict[str, str | None] = {}
    for name in PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    return out


ROOT = Path(__file__).resolve().parents[1]
#: the demo's trained models (``make demo``), by task
DEMO_MODELS = {task: ROOT / "runs" / "demo" / "models" / name for task, name in
               (("segmentation", "segmenter.pt"), ("classification", "classifier.pt"))}
#: the phantoms' classification targets (untrained stand-ins predict these)
PHANTOM_TARGETS = ["nodule", "cavity", "effusion"]


def bench_model(tmp: Path, task: str, size: int = 64, use_demo: bool = True,
                arch: str | None = None, seed: int = 0) -> tuple[Path, str]:
    """The demo's model of ``task`` when present, ``use_demo`` and ``size`` is the demo's 64,
    else its architecture (or ``arch``) untrained with seeded weights at ``size``² (the
    forward cost is what the benchmarks need). Returns the model file and a description."""
    demo = DEMO_MODELS[task]
    if use_demo and size == 64 and demo.exists():
        return demo, f"trained demo model ({demo.relative_to(ROOT)})"
    import torch

    from medfail.models.bundle import save_model
    from medfail.models.networks import arch_kwargs, build_network
    from medfail.models.spec import ModelSpec

    torch.manual_seed(seed)
    norm = {"mean": [55.5], "std": [50.3]}
    arch = arch or ("unet" if task == "segmentation" else "densenet121")
    kwargs = arch_kwargs(arch, size)
    names = ["lesion"] if task == "segmentation" else PHANTOM_TARGETS
    spec = ModelSpec(task=task, target_names=names, multi_label=task == "classification",
                     input_size=(size, size), normalisation=norm, arch=arch, arch_kwargs=kwargs)
    out_channels = 2 if task == "segmentation" else len(names)
    path = save_model(tmp / f"{task}_{arch}_{size}.pt", spec,
                      build_network(arch, 1, out_channels, **kwargs), {})
    why = "not found" if use_demo and size == 64 else "not used"
    return path, f"untrained {arch} at {size}² (seed {seed}; {demo.relative_to(ROOT)} {why})"
