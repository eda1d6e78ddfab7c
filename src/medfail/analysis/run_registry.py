"""A registry of the run directories under a folder (``medfail runs``, ``medfail history``).

:func:`scan` finds every run directory under ROOT: a folder holding ``run.json`` or
``.medfail/manifest.json`` (medfail's own folders inside a run, such as ``compare/`` or
``predictions/``, are not searched). A run is *finished* when :func:`medfail.rundir.check_run_dir`
passes (``run.json``, ``metrics.parquet``, ``ranking.parquet``, ``per_sample.parquet`` exist and
are undamaged); any other is *half written*: skipped with a note, never read as finished.

:func:`connect` opens an in-memory DuckDB database (no server, nothing installed at run time)
with the views ``runs`` (one summary row per finished run, :data:`RUN_COLUMNS`), ``metrics``
(every finished run's ``metrics.parquet`` with a ``run`` column, union by column name) and
``run_info`` (``run``, ``run_json``: the text of its ``run.json``, for DuckDB's JSON functions).

A run's ``date`` is the modification time (UTC) of its ``run.json``: run.json has no date key, and
it is rewritten last by ``medfail run`` (and by ``medfail analyse``, which re-dates the run).

:func:`history` collects one metric at one condition (slice ``all``, the run's primary target)
across runs ordered by date or model version, and :func:`write_history` draws it (value dots with
their 95 % CI bars) to ``history.png`` and a small self-contained ``history.html``. Nothing is
ever written inside a run directory.
"""

from __future__ import annotations

import base64
import html
import json
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pandas as pd

from medfail import rundir
from medfail.analysis.aggregate import ALL
from medfail.analysis.gate import gate
from medfail.analysis.ranking import primary_target
from medfail.analysis.run_tables import RunTables
from medfail.errors import MedfailInputError, listing

RUN_COLUMNS = ["run", "task", "model_name", "model_sha256", "model_version", "data_hash", "date",
               "metric", "target", "value", "ci_low", "ci_high", "worst_condition",
               "checks_passed", "checks_total"]
HISTORY_COLUMNS = ["run", "date", "model_version", "metric", "condition", "target", "value",
                   "ci_low", "ci_high", "n"]
ORDERS = ("date", "model")


@dataclass
class Scan:
    """The run directories found under ``root``: finished ones (with their tables, read lazily)
    and ``notes`` (half-written runs skipped, checks that could not be evaluated)."""

    root: Path
    finished: list[tuple[str, RunTables]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def is_run_dir(folder: Path) -> bool:
    """``folder`` holds ``run.json`` or medfail's manifest."""
    return (rundir.table(folder, rundir.RUN_JSON).is_file()
            or rundir.table(folder, rundir.MANIFEST).is_file())


def find_run_dirs(root: str | Path) -> list[Path]:
    """Every run directory under ``root`` (``root`` included), sorted; folders inside a run
    directory and hidden folders are not searched."""
    root = Path(root)
    if not root.is_dir():
        raise MedfailInputError(root, "is not a folder; give the folder holding your run "
                                "directories, e.g. runs")
    found: list[Path] = []
    for folder, dirs, _ in os.walk(root):
        path = Path(folder)
        if is_run_dir(path):
            found.append(path)
            dirs.clear()  # compare/, predictions/...: medfail's folders inside the run
            continue
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
    return sorted(found)


def label(root: Path, run_dir: Path) -> str:
    """A run's name in the registry: its path relative to ``root`` (POSIX), ``.`` for root."""
    return Path(os.path.relpath(run_dir, root)).as_posix()


def scan(root: str | Path) -> Scan:
    """The finished and half-written run directories under ``root`` (see the module docstring)."""
    root = Path(root)
    out = Scan(root)
    for run_dir in find_run_dirs(root):
        name = label(root, run_dir)
        tables = RunTables(run_dir)
        try:
            rundir.check_run_dir(run_dir)
            _ = (tables.metrics, tables.ranking)  # read now: damage the check missed
        except MedfailInputError as exc:
            what = label(run_dir, Path(exc.path)) if exc.path else name
            out.notes.append(f"skipped {name}: half written or damaged ({what}: "
                             f"{exc.problem.split(';')[0]}); re-run its `medfail run` command "
                             "into the same --out to finish it")
            continue
        out.finished.append((name, tables))
    return out


def run_date(tables: RunTables) -> datetime:
    """When ``run.json`` was last written (UTC)."""
    mtime = rundir.table(tables.run_dir, rundir.RUN_JSON).stat().st_mtime
    return datetime.fromtimestamp(mtime, tz=UTC)


def model_version(run: dict[str, Any]) -> str:
    """``<model name>@<sha256[:12]>`` (``<name>`` alone for a model known by name only)."""
    model = run.get("model") or {}
    sha = model.get("sha256")
    return f"{model.get('name')}@{sha[:12]}" if sha else str(model.get("name"))


def _worst_condition(tables: RunTables) -> str | None:
    """run.json's ``mitigation.worst_condition``, else the ranking's worst condition."""
    worst = (tables.run.get("mitigation") or {}).get("worst_condition")
    if worst:
        return str(worst)
    conds = tables.ranking[tables.ranking["kind"] == "condition"]
    return None if conds.empty else str(conds.sort_values("rank")["name"].iloc[0])


def summary_row(name: str, tables: RunTables, notes: list[str]) -> dict[str, Any]:
    """One row of the ``runs`` view (:data:`RUN_COLUMNS`); a note when the checks cannot be
    evaluated on this run (its counts are then null)."""
    run = tables.run
    model, data = run.get("model") or {}, run.get("data") or {}
    clean = tables.metric(tables.primary)
    try:
        checks = gate(tables.run_dir)
        passed: int | None = sum(r["verdict"] == "pass" for r in checks)
        total: int | None = len(checks)
    except MedfailInputError as exc:
        notes.append(f"{name}: checks not evaluated ({exc.problem})")
        passed = total = None
    return {"run": name, "task": tables.task, "model_name": model.get("name"),
            "model_sha256": model.get("sha256"), "model_version": model_version(run),
            "data_hash": data.get("content_hash"), "date": run_date(tables),
            "metric": tables.primary, "target": tables.target,
            "value": math.nan if clean is None else float(clean["value"]),
            "ci_low": math.nan if clean is None else float(clean["ci_low"]),
            "ci_high": math.nan if clean is None else float(clean["ci_high"]),
            "worst_condition": _worst_condition(tables),
            "checks_passed": passed, "checks_total": total}


def runs_frame(found: Scan) -> pd.DataFrame:
    """The ``runs`` view as a DataFrame, oldest first (notes appended to ``found.notes``)."""
    rows = [summary_row(name, t, found.notes) for name, t in found.finished]
    frame = pd.DataFrame(rows, columns=RUN_COLUMNS)
    if frame.empty:
        return frame
    frame[["checks_passed", "checks_total"]] = frame[["checks_passed", "checks_total"]].astype(
        "Int64")
    return frame.sort_values(["date", "run"], kind="stable").reset_index(drop=True)


def metrics_frame(found: Scan) -> pd.DataFrame:
    """Every finished run's ``metrics.parquet`` with a first column ``run`` (union by name)."""
    frames = [t.metrics.assign(run=name) for name, t in found.finished]
    if not frames:
        return pd.DataFrame({"run": pd.Series(dtype="str")})
    frame = pd.concat(frames, ignore_index=True)
    return frame[["run", *[c for c in frame.columns if c != "run"]]]


def connect(found: Scan) -> Any:
    """An in-memory DuckDB connection with the views ``runs``, ``metrics`` and ``run_info``.
    Extension auto-install is off: nothing is downloaded."""
    import duckdb

    con = duckdb.connect(":memory:", config={"autoinstall_known_extensions": False})
    runs = runs_frame(found)
    info = pd.DataFrame({"run": [n for n, _ in found.finished],
                         "run_json": [json.dumps(t.run) for _, t in found.finished]},
                        columns=["run", "run_json"])
    for view, frame in (("runs", runs), ("metrics", metrics_frame(found)), ("run_info", info)):
        con.register(f"_{view}_frame", frame)
        con.execute(f"CREATE VIEW {view} AS SELECT * FROM _{view}_frame")
    return con


def query(con: Any, sql: str) -> pd.DataFrame:
    """The result of ``sql`` on :func:`connect`'s views; an SQL error is a MedfailInputError."""
    import duckdb

    try:
        result = con.sql(sql)
        return pd.DataFrame() if result is None else result.df()
    except duckdb.Error as exc:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise MedfailInputError(None, f"SQL: {first} (views: runs, metrics, run_info)"
                                ) from None


# ------------------------------------------------------------------------------------ history
def history(found: Scan, metric: str, condition: str, target: str | None = None,
            order: str = "date") -> pd.DataFrame:
    """One row per finished run holding ``metric`` at ``condition`` (slice ``all``; ``target``,
    default the run's primary target), ordered by date or by model version then date
    (:data:`HISTORY_COLUMNS`). Runs without the row get a note; when no run has it, a
    MedfailInputError lists the metrics, conditions and targets that exist."""
    if order not in ORDERS:
        raise MedfailInputError(None, f"--order must be {' or '.join(ORDERS)}, not {order!r}")
    if not found.finished:
        raise MedfailInputError(found.root, "holds no finished run directory")
    rows = []
    for name, t in found.finished:
        m = t.metrics
        tgt = target or (t.target if t.target in set(m.loc[m["metric"] == metric, "target"])
                         else primary_target(m, metric))
        sel = m[(m["metric"] == metric) & (m["condition"] == condition) & (m["slice"] == ALL)
                & (m["target"] == tgt)]
        if sel.empty:
            found.notes.append(f"{name}: no {metric} at {condition} (target {tgt or '-'})")
            continue
        r = sel.iloc[0]
        rows.append({"run": name, "date": run_date(t), "model_version": model_version(t.run),
                     "metric": metric, "condition": condition, "target": tgt,
                     "value": float(r["value"]), "ci_low": float(r["ci_low"]),
                     "ci_high": float(r["ci_high"]), "n": int(r["n"])})
    if not rows:
        every = metrics_frame(found)
        raise MedfailInputError(found.root, _absent(every, metric, condition, target))
    frame = pd.DataFrame(rows, columns=HISTORY_COLUMNS)
    keys = ["date", "run"] if order == "date" else ["model_version", "date", "run"]
    return frame.sort_values(keys, kind="stable").reset_index(drop=True)


def _absent(every: pd.DataFrame, metric: str, condition: str, target: str | None) -> str:
    """What exists instead: the metrics, the conditions with ``metric``, or its targets."""
    m = every[every["slice"] == ALL] if "slice" in every else every
    if metric not in set(m.get("metric", ())):
        return (f"no run has the metric {metric!r}; metrics in these runs: "
                f"{listing(sorted(set(m.get('metric', ()))), 40)}")
    m = m[m["metric"] == metric]
    if condition not in set(m["condition"]):
        return (f"no run has {metric} at the condition {condition!r}; conditions with {metric}: "
                f"{listing(sorted(set(m['condition'])), 60)}")
    targets = sorted(set(m.loc[m["condition"] == condition, "target"]))
    return (f"no run has {metric} at {condition} for the target {target!r}; targets: "
            f"{listing(targets, 20)}")


def check_out(out: Path) -> None:
    """``out`` must not be (inside) a run directory: the registry never writes into a run."""
    full = out.resolve()
    for folder in (full, *full.parents):
        if folder.is_dir() and is_run_dir(folder):
            raise MedfailInputError(out, f"is inside the run directory {folder.name}; medfail "
                                    "history never writes into a run: choose another --out")


def _draw(frame: pd.DataFrame, path: Path) -> None:
    from matplotlib.figure import Figure

    fig = Figure(figsize=(max(4.0, 1.1 * len(frame) + 2.0), 3.6), dpi=110)
    ax = fig.add_subplot()
    x = range(len(frame))
    lo = (frame["value"] - frame["ci_low"]).clip(lower=0).fillna(0)
    hi = (frame["ci_high"] - frame["value"]).clip(lower=0).fillna(0)
    ax.errorbar(list(x), frame["value"], yerr=[lo, hi], fmt="o", color="#1f4e79", ecolor="#7f9fbf",
                capsize=4, elinewidth=1.5)
    ax.set_xlim(-0.6, len(frame) - 0.4)
    ax.set_xticks(list(x), [f"{r.run}\n{r.model_version}" for r in frame.itertuples()],
                  rotation=20, ha="right", fontsize=7)
    first = frame.iloc[0]
    ax.set_ylabel(f"{first['metric']} ({first['target']})")
    ax.set_title(f"{first['metric']} at {first['condition']} across runs (95 % CI)", fontsize=10)
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    tmp = path.with_name(path.name + ".tmp")
    fig.savefig(tmp, format="png")
    os.replace(tmp, path)


def _number(x: float) -> str:
    return "–" if not math.isfinite(x) else f"{x:.4f}"


def _page(frame: pd.DataFrame, png: bytes, notes: list[str]) -> str:
    first = frame.iloc[0]
    title = f"medfail history: {first['metric']} at {first['condition']}"
    head = ["run", "date (UTC)", "model version", "target", "value", "95 % CI", "n"]
    body = "".join(
        "<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in (
            r.run, r.date.strftime("%Y-%m-%d %H:%M"), r.model_version, r.target,
            _number(r.value), f"[{_number(r.ci_low)}, {_number(r.ci_high)}]", r.n)) + "</tr>"
        for r in frame.itertuples())
    note = "".join(f"<li>{html.escape(n)}</li>" for n in notes)
    return (
        "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
        f"<title>{html.escape(title)}</title><style>body{{font-family:sans-serif;margin:2em}}"
        "table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:3px 8px;"
        "text-align:left}</style></head><body>"
        f"<h1>{html.escape(title)}</h1><p>Slice all; dots: the metric, bars: its 95 % bootstrap "
        "CI; one point per finished run.</p>"
        f"<img alt=\"{html.escape(title)}\" src=\"data:image/png;base64,"
        f"{base64.b64encode(png).decode()}\">"
        "<table><tr>" + "".join(f"<th>{html.escape(h)}</th>" for h in head) + "</tr>"
        f"{body}</table>" + (f"<h2>Notes</h2><ul>{note}</ul>" if note else "")
        + "</body></html>\n")


def write_history(frame: pd.DataFrame, out: str | Path, notes: Sequence[str] = ()
                  ) -> tuple[Path, Path]:
    """Draw :func:`history`'s rows to ``out/history.png`` and ``out/history.html`` (the PNG
    embedded, a table of the values, the notes); returns both paths."""
    out = Path(out)
    check_out(out)
    try:
        out.mkdir(parents=True, exist_ok=True)
        png = out / "history.png"
        _draw(frame, png)
        page = out / "history.html"
        rundir.write_atomic(page, _page(frame, png.read_bytes(), list(notes)))
    except OSError as exc:
        raise MedfailInputError(exc.filename or out, f"cannot write the history "
                                f"({exc.strerror or exc}); choose another --out") from None
    return png, page
