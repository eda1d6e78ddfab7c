"""Run every benchmark in this process and write ``benchmarks/latest.json`` (``make bench``).

``python -m benchmarks.run_all volumes suite`` runs only the named steps and updates their
entries in the existing ``latest.json`` (the other steps' figures are kept as they were).
"""

from __future__ import annotations

import datetime as dt
import json
import os
import sys
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

from benchmarks import (
    bench_bootstrap,
    bench_boundary,
    bench_corruptions,
    bench_demo_cached,
    bench_onnxruntime,
    bench_peer,
    bench_suite,
    bench_volumes,
)
from benchmarks.common import goal, machine, versions

OUT = Path(__file__).resolve().parent / "latest.json"


def _corruption_ratios(details: dict[str, Any]) -> dict[str, Any]:
    kinds = [k for k in ("rgb", "grey", "float32_grey", "uint16_grey") if k in details["results"]]
    per_kind = {k: bench_corruptions.summary(details, k) for k in kinds}
    rgb = per_kind["rgb"]
    out = {}
    for peer, target in (("imagecorruptions", 1.0), ("albumentations", None)):
        extra: dict[str, Any] = {}
        for kind in kinds[1:]:
            extra[f"{kind}_min"] = per_kind[kind][peer]["min"]
            extra[f"{kind}_slowest"] = per_kind[kind][peer]["slowest"]
            extra[f"{kind}_per_corruption"] = per_kind[kind][peer]["per_corruption"]
        mins = [per_kind[k][peer]["min"] for k in kinds if per_kind[k][peer]["min"] is not None]
        out[f"corruption_speedup_vs_{peer}_min"] = goal(
            rgb[peer]["min"], target, True, slowest=rgb[peer]["slowest"],
            per_corruption=rgb[peer]["per_corruption"],
            definition=f"min over shared corruptions of ({peer} ms/image) / (medfail corrupt() "
                       "ms/image), 256x256 RGB uint8, single-threaded; <kind>_min/_per_corruption:"
                       " the same on uint8 grey, float32 grey in [0, 1] and uint16 grey (see "
                       "details.corruptions.kinds for what each library is given)",
            all_kinds_min=min(mins) if mins else None,
            met_all_kinds=None if target is None or not mins else bool(min(mins) >= target),
            batched_min=rgb[peer]["batched_min"], **extra)
    if "float32_grey" in per_kind:
        alb = per_kind["float32_grey"]["albumentations"]
        out["corruption_speedup_vs_albumentations_float32_grey_min"] = goal(
            alb["min"], 1.0, True, slowest=alb["slowest"], per_corruption=alb["per_corruption"],
            definition="min over shared corruptions of (albumentations ms/image) / (medfail "
                       "corrupt(value_range=(0, 1)) ms/image), 256x256 float32 grey in [0, 1] "
                       "(where albumentations' uint8 lookup tables do not apply), single-threaded")
    return out


def _suite_ratios(details: dict[str, Any]) -> dict[str, Any]:
    ray = details["ray"]
    return {
        "suite_overhead": goal(
            max(v["overhead"] for k, v in details["overhead"].items() if k.startswith("bench/")),
            1.10, False, definition="whole run_suite wall-clock (predict, analysis, evidence "
            "and case studies, HTML + PDF report) / the seconds spent in the model's forward "
            "passes during that run; max over tasks on the bench configuration (64 phantom "
            "images, clean + every corruption at severity 2, demo models); per_config: each "
            "task and the realistic-cost configuration (DenseNet121 at 224², 16 images)",
            per_config={k: v["overhead"] for k, v in details["overhead"].items()}),
        "memory_growth_10x": goal(details["memory"]["growth"], 1.2, False,
                                  definition="peak RSS of a 10x-samples run / 1x run"),
        "ray_speedup_2_workers": goal(ray.get("speedup"), None, True,
                                      definition="wall-clock with 1 Ray worker / with 2",
                                      **({"reason": ray["reason"]} if "reason" in ray else {})),
    }


STEPS: list[tuple[str, Callable[[], dict[str, Any]], Callable[[dict[str, Any]], dict]]] = [
    ("corruptions", bench_corruptions.run, _corruption_ratios),
    ("boundary", bench_boundary.run, lambda d: {"boundary_speedup_vs_monai": goal(
        d["speedup"], 5.0, True, definition="MONAI (compute_surface_dice + boundary-F1 "
        "reference) seconds / medfail (nsd + boundary_f1) seconds, values asserted equal")}),
    ("bootstrap", bench_bootstrap.run, lambda d: {"bootstrap_speedup_vs_sklearn": goal(
        d["speedup"], 50.0, True, definition="loop of roc_auc_score over the same 1000 "
        "resamples / auroc_bootstrap, CIs asserted equal")}),
    ("suite", bench_suite.run, _suite_ratios),
    ("volumes", bench_volumes.run, lambda d: {"volume_memory_ratio": goal(
        d["ratio"], 1.2, False, definition="peak RSS of medfail run on 10 volumes 96^3 / on 1 "
        "volume (fresh processes, 3D threshold segmenter, clean + 3 volume stress tests)")}),
    ("demo_cached", bench_demo_cached.run, lambda d: {"demo_cached_s": goal(
        d["seconds"], 30.0, False, definition="wall-clock seconds of `medfail demo --task all` "
        "(a fresh process) right after an identical call: every baseline, condition and stage "
        "reused", all_cached=d["all_cached"])}),
    ("onnxruntime", bench_onnxruntime.run, lambda d: {"onnxruntime_speedup": goal(
        d["speedup"], 1.5, True, definition="torch forward seconds / ONNX Runtime forward "
        "seconds on 1 thread each, min over the demo classifier, demo segmenter and "
        "DenseNet121 224², probabilities asserted within 1e-4",
        speedup_2_threads=d["speedup_2_threads"], per_model={
            k: {t: v[t]["speedup"] for t in v} for k, v in d["models"].items()})}),
    ("peer", bench_peer.run, lambda d: {"peer_pipeline_speedup": goal(
        d["speedup"], 3.0, True, definition="wall-clock of the suite written with the peers "
        "(imagecorruptions, adapter per batch, MONAI per-image metrics, scikit-learn + a "
        "per-resample bootstrap loop) / medfail run (run_suite, report rendered) on the same "
        "phantom split, conditions and resamples; min over segmentation and classification; "
        "rows asserted equal on bit-identical inputs",
        per_task={t: {k: v[k] for k in ("speedup", "speedup_without_evidence_and_report",
                                         "medfail_s", "peer_s")}
                  for t, v in d["tasks"].items()})}),
]


def _print(ratios: dict[str, Any]) -> None:
    print(f"\n{'ratio':<48}{'value':>10}  {'goal':<8}  met")
    for name, r in ratios.items():
        value = "null" if r.get("value") is None else f"{r['value']:.3f}"
        met = {True: "yes", False: "NO", None: "-"}[r.get("met")]
        print(f"{name:<48}{value:>10}  {r.get('goal') or '-':<8}  {met}")


def main(only: list[str] | None = None) -> int:
    started = time.perf_counter()
    names = [name for name, _, _ in STEPS]
    unknown = sorted(set(only or []) - set(names))
    if unknown:
        print(f"unknown step(s) {', '.join(unknown)}; steps: {', '.join(names)}")
        return 2
    record: dict[str, Any] = {
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "machine": machine(), "packages": versions(), "ratios": {}, "details": {},
        "seconds": {}}
    if only and OUT.exists():  # update these steps' entries, keep the others
        old = json.loads(OUT.read_text())
        for key in ("ratios", "details", "seconds"):
            record[key] = old.get(key, {})
        record["partial_update"] = {"steps": only, "date": record["date"],
                                    "other_steps_date": old.get("date")}
    failed = False
    for name, fn, ratios in STEPS:
        if only and name not in only:
            continue
        print(f"[bench] {name} ...", flush=True)
        t0 = time.perf_counter()
        try:
            details = fn()
            record["details"][name] = details
            record["ratios"].update(ratios(details))
        except Exception as exc:
            failed = True
            traceback.print_exc()
            record["details"][name] = {"error": repr(exc)}
        record["seconds"][name] = round(time.perf_counter() - t0, 1)
        print(f"[bench] {name} done in {record['seconds'][name]:.0f} s", flush=True)
    record["seconds"]["total" if not only else "partial_update"] = round(
        time.perf_counter() - started, 1)
    load = os.getloadavg() if hasattr(os, "getloadavg") else None
    record["machine"]["load_average_at_end"] = None if load is None else [round(x, 2)
                                                                          for x in load]
    OUT.write_text(json.dumps(record, indent=2, default=str) + "\n")
    _print(record["ratios"])
    print(f"\nwrote {OUT.relative_to(Path.cwd()) if OUT.is_relative_to(Path.cwd()) else OUT} "
          f"({time.perf_counter() - started:.0f} s)")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:] or None))
