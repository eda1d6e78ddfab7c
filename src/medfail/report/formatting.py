"""Formatting shared by the report pages (``report.html``, ``compare.html``) and figures.

Numbers are shown with 3 decimals (``n/a`` for None/NaN), deltas signed, intervals as
``[lo, hi]`` with ``*`` when they exclude their estimate; figures are embedded as base64 data
URIs so a page opens offline.
"""

from __future__ import annotations

import base64
import math
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd


def num(x: object) -> np.ndarray:
    """Float array of ``x`` (non-numbers -> NaN)."""
    return pd.to_numeric(pd.Series(np.asarray(x, dtype=object).ravel()),
                         errors="coerce").to_numpy(np.float64)


def ci_excludes(value: object, lo: object, hi: object, tol: float = 1e-12) -> np.ndarray:
    """Whether the interval [lo, hi] is finite and excludes the finite estimate (elementwise)."""
    v, a, b = num(value), num(lo), num(hi)
    with np.errstate(invalid="ignore"):
        return (np.isfinite(v) & np.isfinite(a) & np.isfinite(b)
                & ((v < a - tol) | (v > b + tol)))


def fmt(x: float | None, digits: int = 3) -> str:
    """``x`` with ``digits`` decimals; ``n/a`` for None or NaN."""
    return "n/a" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.{digits}f}"


def fmt_delta(x: float | None) -> str:
    """A signed difference (``+0.012``); ``n/a`` for None, NaN or inf."""
    return "n/a" if x is None or not math.isfinite(x) else f"{x:+.3f}"


def excludes(value: float | None, lo: float | None, hi: float | None) -> bool:
    """The interval [lo, hi] is finite and excludes the finite estimate ``value``."""
    return value is not None and bool(ci_excludes(value, lo, hi)[0])


def fmt_ci(lo: float | None, hi: float | None, value: float | None = None) -> str:
    """``[lo, hi]``, with ``*`` when it excludes ``value``; ``n/a`` when an end is missing."""
    if lo is None or hi is None or math.isnan(lo) or math.isnan(hi):
        return "n/a"
    return f"[{lo:.3f}, {hi:.3f}]" + ("*" if excludes(value, lo, hi) else "")


def data_uri(path: Path) -> str:
    """A PNG file as a ``data:image/png;base64,...`` URI."""
    return "data:image/png;base64," + base64.b64encode(path.read_bytes()).decode()


def figure(path: Path, root: Path, alt: str) -> dict[str, str]:
    """A figure for a template: embedded ``src``, ``file`` relative to ``root`` and ``alt``."""
    return {"src": data_uri(path), "file": path.relative_to(root).as_posix(), "alt": alt}


def metric_label(metric: str, units: dict[str, Any] | None) -> str:
    """A metric's name with its tolerance and unit from ``run.json: metric_units``, e.g.
    ``boundary_f1 (τ 2 px)``, ``nsd (τ 2 mm)``, ``hd95 (mm)``; the bare name otherwise."""
    u = (units or {}).get(metric)
    if not isinstance(u, dict) or "unit" not in u:
        return metric
    if "tolerance" in u:
        return f"{metric} (τ {u['tolerance']:g} {u['unit']})"
    return f"{metric} ({u['unit']})"
