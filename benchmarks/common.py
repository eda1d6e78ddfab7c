"""Shared helpers: interleaved best-of timing, machine facts, package versions, goal records."""

from __future__ import annotations

import os
import platform
import time
from collections.abc import Callable, Mapping
from importlib import metadata
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
