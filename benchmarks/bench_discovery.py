"""Slice discovery on the demo: planted effects found, and false discoveries without them.

``python -m benchmarks.bench_discovery [runs/demo]`` reads the demo's run directories (after
``make demo``) and the phantoms' answer key (``data/planted.json``, never read by medfail):

* **planted marker** (classification): for every confirmed discovered slice, its held-out
  members' share of images with the marker and of *shortcut-misled* images (marker without
  effusion, or effusion without marker), against the held-out base rates;
* **flipped calibration labels**: precision and recall of cleanlab's flagged (id, target) pairs
  (``label_issues.parquet``) against the flips, how many flips rank in the top ``n_flips``,
  their ranks, and the same within the flipped target;
* **false discoveries**: for ``--seeds`` seeds, the whole discovery (embedding groups, SliceLine,
  held-out confirmation) is re-run on the stored run with the per-sample errors permuted across
  samples (``discovery_tables(..., null_seed=s)``; halves and bootstrap seeded by ``s`` too):
  the number of seeds with at least one confirmed slice, per task.

Prints one JSON object. Wall-clock: about a second per seed and task.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import pandas as pd

from medfail import rundir
from medfail.analysis.analyse import PER_SAMPLE_COLUMNS
from medfail.analysis.discovery import CONFIRM, discovery_tables, members, parse_slice, unnamed
from medfail.analysis.label_issues import recovery
from medfail.analysis.run_tables import read_run_json

ROOT = Path(__file__).resolve().parents[1]


def planted_marker(run: Path, key: dict[str, Any]) -> list[dict[str, Any]]:
    """Each confirmed slice's held-out composition vs the planted marker."""
    found = pd.read_parquet(run / rundir.DISCOVERY)
    feats = pd.read_parquet(run / rundir.DISCOVERY_FEATURES).set_index("id")
    marker = set(key["marker"]["test"])
    labels = pd.read_parquet(rundir.condition_path(run, "clean", "classification"))
    effusion = set(labels[(labels["target"] == "effusion") & (labels["label"] == 1)]["id"])
    held = feats[feats["half"] == CONFIRM]
    misled = {i for i in held.index if (i in marker) != (i in effusion)}
    out = []
    for r in found[found["confirmed"]].itertuples():
        inside = held.index[members(held, parse_slice(str(r.slice)))]
        out.append({
            "slice": r.slice, "unnamed": unnamed(str(r.slice)), "n_confirm": int(r.n_confirm),
            "gap": round(float(r.gap), 3), "ci": [round(float(r.ci_low), 3),
                                                  round(float(r.ci_high), 3)],
            "marker_share": round(sum(i in marker for i in inside) / max(len(inside), 1), 3),
            "misled_share": round(sum(i in misled for i in inside) / max(len(inside), 1), 3),
            "marker_base": round(sum(i in marker for i in held.index) / len(held), 3),
            "misled_base": round(len(misled) / len(held), 3)})
    return out


def flipped_labels(run: Path, key: dict[str, Any]) -> dict[str, Any]:
    issues = pd.read_parquet(run / rundir.LABEL_ISSUES)
    truth = [(f["id"], f["target"]) for f in key["label_flips"]]
    rec: dict[str, Any] = dict(recovery(issues, truth))
    top = issues.sort_values("rank").head(len(truth))
    rec["in_top_n"] = int(sum((r.id, r.target) in set(truth) for r in top.itertuples()))
    rec["ranks"] = sorted(int(r.rank) for r in issues.itertuples() if (r.id, r.target) in truth)
    for target in sorted({t for _, t in truth}):  # within the flipped target
        own = issues[issues["target"] == target].sort_values("quality")
        sub = recovery(own, [p for p in truth if p[1] == target])
        rec[f"{target}_precision"] = sub["precision"]
        rec[f"{target}_n_flagged"] = sub["n_flagged"]
        rec[f"{target}_ranks"] = [k + 1 for k, r in enumerate(own.itertuples())
                                  if (r.id, r.target) in truth]
    return {k: (round(v, 3) if isinstance(v, float) else v) for k, v in rec.items()}


def false_discoveries(run: Path, seeds: int) -> dict[str, Any]:
    info = read_run_json(run / rundir.RUN_JSON)
    task = str(info["task"])
    multi = bool(info["model"]["spec"].get("multi_label", False))
    per_sample = pd.read_parquet(run / rundir.PER_SAMPLE)[PER_SAMPLE_COLUMNS]
    membership = pd.read_parquet(run / rundir.SLICES)
    hits = []
    for s in range(seeds):
        found, _ = discovery_tables(run, task, multi, per_sample, membership, s, 1000,
                                    info.get("thresholds"), null_seed=10_000 + s)
        hits.append(int(found["confirmed"].sum()))
    return {"task": task, "seeds": seeds, "seeds_with_a_confirmed_slice":
            sum(h > 0 for h in hits), "confirmed_per_seed": hits}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("demo", nargs="?", default=str(ROOT / "runs" / "demo"))
    parser.add_argument("--seeds", type=int, default=30)
    args = parser.parse_args(argv)
    demo = Path(args.demo)
    key = json.loads((demo / "data" / "planted.json").read_text())
    cls = demo / "classification"
    out = {"planted_marker": planted_marker(cls, key), "flipped_labels": flipped_labels(cls, key),
           "null": [false_discoveries(demo / t, args.seeds) for t in
                    ("classification", "segmentation") if (demo / t / "run.json").exists()]}
    json.dump(out, sys.stdout, indent=1)
    print()
    return out


if __name__ == "__main__":
    main()
