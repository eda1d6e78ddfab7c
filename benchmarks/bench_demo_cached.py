"""``demo_cached_s``: wall-clock of ``medfail demo --task all`` when everything is cached.

The embedded demo is run twice into ``runs/demo`` (the folder ``make demo`` writes): the first
call makes sure every baseline, condition and stage is there (after ``make demo`` it is itself
a cached re-run; without it, it trains the baselines and takes minutes), the second is timed.
Both are fresh processes, so imports (torch, MONAI) are included, as a user's second
``make demo`` would see them. ``run.json``'s ``cached_conditions`` / ``cached_stages`` of the
timed call are checked: every condition and stage must have been reused.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "runs" / "demo"
#: stages every cached demo task reuses (``calibration``: classification only)
STAGES = {"embeddings", "analyse", "evidence", "report"}


def _medfail() -> str:
    exe = Path(sys.executable).with_name("medfail")
    return str(exe) if exe.exists() else shutil.which("medfail") or "medfail"


def _demo() -> float:
    t0 = time.perf_counter()
    subprocess.run([_medfail(), "demo", "--out", str(OUT), "--task", "all", "--quiet"],
                   cwd=ROOT, check=True, capture_output=True, text=True)
    return time.perf_counter() - t0


def run() -> dict[str, Any]:
    first = _demo()
    seconds = _demo()
    tasks: dict[str, Any] = {}
    for run_json in sorted(OUT.glob("*/run.json")):
        info = json.loads(run_json.read_text())
        recomputed = sorted(set(info["conditions"]) - set(info["cached_conditions"]))
        missing = sorted(STAGES - set(info.get("cached_stages", [])))
        tasks[run_json.parent.name] = {
            "conditions": len(info["conditions"]), "recomputed_conditions": recomputed,
            "cached_stages": info.get("cached_stages"), "stages_not_cached": missing,
            "stages_s": {k: round(v, 3) for k, v in info["wall_clock_s"]["stages"].items()}}
    all_cached = all(not t["recomputed_conditions"] and not t["stages_not_cached"]
                     for t in tasks.values())
    return {"config": "medfail demo --out runs/demo --task all --quiet, a fresh process, after "
                      "one identical call (imports and phantom/baseline checks included)",
            "first_call_s": round(first, 1), "seconds": round(seconds, 2),
            "all_cached": all_cached, "tasks": tasks}


if __name__ == "__main__":
    print(json.dumps(run(), indent=2))
