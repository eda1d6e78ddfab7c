"""The CI gate (``medfail check``): the checklist's pass/fail checks of a run directory as one
line per check and condition, and as JUnit XML (what Jenkins, GitLab and GitHub Actions show).

A check ``{metric, max_drop, severity}`` passes on a condition when the metric's drop from clean
(harmful direction positive: ``clean − stressed`` for higher-is-better metrics, ``stressed −
clean`` for ``hd95``, ``ece``, ``brier``...) is at most ``max_drop``; the drop is the run's
``metrics.parquet`` ``delta_vs_clean`` (slice ``all``, the report's primary target), its 95 % CI
the paired bootstrap one (``delta_ci_low/high``). A check is evaluated on every stress test of
the run at its ``severity``; an undefined drop (NaN) fails. ``uncertain``: the CI contains the
limit. The same rows as the report's checklist (:func:`medfail.analysis.checklist.evaluate_checks`).
"""

from __future__ import annotations

import math
import xml.etree.ElementTree as ET
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from medfail import rundir
from medfail.analysis.checklist import CheckSpec, check_specs, evaluate_checks
from medfail.analysis.run_tables import RunTables
from medfail.errors import MedfailInputError


def gate(run_dir: Path, checks: Sequence[dict[str, Any]] | None = None) -> list[dict[str, Any]]:
    """The check rows of ``run_dir`` (``checks``: replaces the run's, else the run's config's,
    else the default check). Raises MedfailInputError for a missing or damaged table, a half
    written run, or a check this run cannot evaluate (its metric or severity is absent)."""
    tables = finished_run(run_dir)
    specs = check_specs(tables, checks)
    rows = evaluate_checks(tables, specs)
    for spec in specs:
        if not any(r["check"] == spec.describe() for r in rows):
            raise MedfailInputError(run_dir, _unevaluable(tables, spec))
    return rows


def finished_run(run_dir: str | Path) -> RunTables:
    """The tables of a finished run directory; MedfailInputError naming what is missing or
    damaged otherwise (a half-written run is never read as finished)."""
    tables = RunTables(Path(run_dir))
    if not rundir.table(run_dir, rundir.RUN_JSON).exists():
        half = (Path(run_dir) / rundir.MANIFEST).exists()
        raise MedfailInputError(run_dir, "half written: `medfail run` did not finish (no "
                                "run.json yet); re-run the same command to resume it" if half
                                else "not a run directory (run.json missing)")
    tables.check()
    return tables


def _unevaluable(tables: RunTables, spec: CheckSpec) -> str:
    m = tables.metrics
    stress = m[m["family"].isin(["corruption", "domain_shift", "prompt"])]
    if spec.metric not in set(m["metric"]):
        return (f"check '{spec.describe()}': this {tables.task} run has no {spec.metric!r} "
                f"(metrics: {', '.join(sorted(set(m['metric'])))})")
    severities = sorted({int(s) for s in stress["severity"]})
    return (f"check '{spec.describe()}': no stress test ran at severity {spec.severity} "
            f"(severities in this run: {', '.join(map(str, severities)) or 'none'})")


def _number(x: float) -> str:
    return "nan" if not math.isfinite(x) else f"{x:.4f}"


def check_line(row: dict[str, Any]) -> str:
    """``PASS  dice drop ≤ 0.05 at severity 2  jpeg@2: drop 0.0123 [0.0051, 0.0201]``."""
    flag = " (CI contains the limit)" if row["uncertain"] else ""
    return (f"{row['verdict'].upper():<4}  {row['check']}  {row['condition']}: drop "
            f"{_number(row['drop'])} [{_number(row['ci_low'])}, {_number(row['ci_high'])}]"
            f"{flag}")


def junit_xml(rows: Sequence[dict[str, Any]], suite_name: str) -> ET.ElementTree:
    """One ``testsuite`` with one ``testcase`` per check × condition (``classname``: the check,
    ``name``: the condition), a ``failure`` element for each failed one."""
    failures = sum(r["verdict"] != "pass" for r in rows)
    root = ET.Element("testsuites", name="medfail", tests=str(len(rows)),
                      failures=str(failures), errors="0")
    suite = ET.SubElement(root, "testsuite", name=suite_name, tests=str(len(rows)),
                          failures=str(failures), errors="0", skipped="0", time="0")
    for row in rows:
        case = ET.SubElement(suite, "testcase", classname=f"medfail.check.{row['check']}",
                             name=str(row["condition"]), time="0")
        if row["verdict"] != "pass":
            failure = ET.SubElement(case, "failure", type="CheckFailed",
                                    message=check_line(row))
            failure.text = check_line(row)
        ET.SubElement(case, "system-out").text = check_line(row)
    ET.indent(root)
    return ET.ElementTree(root)
