"""Keys of the stages after the conditions, so that a re-run reuses them (``cached_stages``).

A finished condition is reused by the manifest's identity (:mod:`medfail.engine.runner`); the
stages that follow (the calibration split's predictions, the second site's condition, the
mitigation choice, the analysis tables, the evidence and case studies, the report) are recorded
in the manifest with a key (:meth:`medfail.rundir.Manifest.record_stage`) and reused when the
key and the sha256 of every output they wrote are unchanged. A key is the sha256 of what the
stage reads: the content hashes of its input files and the ``run.json`` entries it uses, so any
change to a stored prediction, the config (``n_bootstrap``, ``checks``...), the conditions or a
package version recomputes it. ``medfail analyse`` never reuses: it always recomputes.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from medfail import rundir

#: ``run.json`` entries that describe this invocation, not the results: left out of the keys
#: (a cached report keeps the timings of the run that rendered it)
VOLATILE = ("cached_conditions", "cached_stages")
#: within ``wall_clock_s`` only the per-condition seconds feed a result (mitigation cost)
KEPT_WALL_CLOCK = "per_condition"
#: within ``model``: whether the demo's baseline was trained or loaded this time
VOLATILE_MODEL = ("training_cached",)


def stage_key(*parts: Any) -> str:
    """sha256 of the JSON of ``parts`` (sorted keys; non-JSON values by ``str``)."""
    text = json.dumps(parts, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()


def files_digest(run_dir: Path, paths: Iterable[Path]) -> dict[str, str | None]:
    """``{path relative to run_dir: sha256}`` of ``paths`` (None: missing or unreadable)."""
    return {Path(p).relative_to(run_dir).as_posix(): rundir.file_sha256(Path(p))
            for p in sorted(paths)}


def stored_inputs(manifest: rundir.Manifest) -> dict[str, str | None]:
    """Content hashes of every file the analysis reads: ``predictions/`` and the per-sample
    rows (``.parts/*.parquet``, ``per_sample.parquet``), as listed in the manifest (the
    per-condition ``.seconds`` files are timings, read through ``run.json``)."""
    run_dir = manifest.run_dir
    prefixes = (f"{rundir.PREDICTIONS}/", f"{rundir.PARTS}/")
    listed = [run_dir / rel for rel in manifest.files
              if (rel.startswith(prefixes) and not rel.endswith(".seconds"))
              or rel == rundir.PER_SAMPLE]
    return files_digest(run_dir, [p for p in listed if p.is_file()])


def results_view(run_info: Mapping[str, Any]) -> dict[str, Any]:
    """``run.json`` without the entries that describe the invocation (:data:`VOLATILE`)."""
    view = {k: v for k, v in run_info.items() if k not in VOLATILE}
    view["wall_clock_s"] = {KEPT_WALL_CLOCK: (run_info.get("wall_clock_s") or {}).get(
        KEPT_WALL_CLOCK, {})}
    view["model"] = {k: v for k, v in (run_info.get("model") or {}).items()
                     if k not in VOLATILE_MODEL}
    return view
