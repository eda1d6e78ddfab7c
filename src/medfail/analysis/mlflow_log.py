"""Log a run directory to MLflow (``medfail log RUN_DIR``, ``medfail run --mlflow URI``).

One MLflow run per run directory, in experiment ``experiment`` (default ``medfail``):

* **params**: ``task``, ``seed``, ``medfail_version``, ``model_name``, ``model_sha256``,
  ``data_name``, ``data_hash``, ``n_samples``, ``n_conditions`` and every suite option as
  ``config.<option>`` (JSON text);
* **metrics**: every row of ``metrics.parquet`` on the whole test set (slice ``all``) as
  ``<metric>/<target>/<condition>`` (value), ``ci_low/<metric>/<target>/<condition>`` and
  ``ci_high/...`` (a name is never the prefix of another: MLflow's folder store keeps each
  as a file); MLflow names allow letters, digits and ``_ - . / :`` and spaces, so ``@`` in a
  condition becomes ``:s`` (``jpeg@2`` → ``jpeg:s2``) and ``|`` becomes ``:``
  (``tta|gamma@3`` → ``tta:gamma:s3``); and the pass/fail checks (:mod:`medfail.analysis.gate`)
  as ``check_drop/<metric>/<condition>``, ``checks_passed`` and ``checks_failed`` (left out,
  with a ``note:`` on stderr, when a check cannot be evaluated on this run, e.g. no test at
  its severity);
* **artifacts**: ``report.html``, ``report.pdf``, ``run.json`` and the tables
  (``metrics``, ``ranking``, ``calibration``, ``mitigations``, ``slices``), as present;
* **tags**: ``medfail.run_dir`` (the folder's name, never its full path).

Nothing identifying a patient is logged: ``run.json`` holds base names only
(docs/reproducibility.md).
Needs the MLflow client (``pip install 'medfail[mlflow]'``, ``mlflow-skinny``). A local folder
store (``file:`` URI) needs ``MLFLOW_ALLOW_FILE_STORE=true`` since MLflow 3 (MLflow's rule);
an ``http(s)://`` tracking server works as it is.
"""

from __future__ import annotations

import json
import math
import re
import sys
import time
from pathlib import Path
from typing import Any

from medfail import rundir
from medfail.analysis.aggregate import ALL
from medfail.analysis.gate import finished_run, gate
from medfail.analysis.run_tables import RunTables
from medfail.errors import MedfailInputError

#: files logged as artifacts when present
ARTIFACTS = (rundir.REPORT_HTML, rundir.REPORT_PDF, rundir.RUN_JSON, rundir.METRICS,
             rundir.RANKING, rundir.CALIBRATION, rundir.MITIGATIONS, rundir.SLICES)
#: metrics per MLflow ``log_metrics`` call (its batch limit is 1000)
BATCH = 500


def metric_key(*parts: str) -> str:
    """An MLflow metric name from parts joined by ``/`` (``@`` → ``:s``, ``|`` → ``:``, any
    other character MLflow refuses → ``_``)."""
    text = "/".join(parts).replace("@", ":s").replace("|", ":")
    return re.sub(r"[^\w\-./: ]", "_", text)


def run_params(run: dict[str, Any]) -> dict[str, str]:
    """The params logged for ``run.json`` ``run``."""
    model, data = run.get("model") or {}, run.get("data") or {}
    params = {"task": run.get("task"), "seed": run.get("seed"),
              "medfail_version": run.get("medfail_version"), "model_name": model.get("name"),
              "model_sha256": model.get("sha256"), "data_name": data.get("name"),
              "data_hash": data.get("content_hash"), "n_samples": data.get("n_samples"),
              "n_conditions": len(run.get("conditions") or [])}
    params.update({f"config.{k}": json.dumps(v, sort_keys=True)
                   for k, v in (run.get("config") or {}).items()})
    return {k: str(v) for k, v in params.items()}


def run_metrics(tables: RunTables, checks: list[dict[str, Any]]) -> dict[str, float]:
    """The metrics logged: ``metrics.parquet`` on slice ``all`` (value and CI), the checks."""
    m = tables.metrics
    out: dict[str, float] = {}
    for r in m[m["slice"] == ALL].itertuples():
        parts = (str(r.metric), str(r.target), str(r.condition))
        for prefix, value in (((), r.value), (("ci_low",), r.ci_low),
                              (("ci_high",), r.ci_high)):
            if value is not None and math.isfinite(float(value)):
                out[metric_key(*prefix, *parts)] = float(value)
    for row in checks:
        metric = row["check"].split(" ", 1)[0]
        if math.isfinite(row["drop"]):
            out[metric_key("check_drop", metric, str(row["condition"]))] = float(row["drop"])
    if checks:
        out["checks_passed"] = float(sum(r["verdict"] == "pass" for r in checks))
        out["checks_failed"] = float(sum(r["verdict"] != "pass" for r in checks))
    return out


def log_run(run_dir: str | Path, tracking_uri: str | None = None,
            experiment: str = "medfail") -> str:
    """Log ``run_dir`` as one MLflow run; returns its run id. ``tracking_uri`` None: MLflow's
    default (``MLFLOW_TRACKING_URI``, else ``./mlruns``)."""
    try:
        import mlflow
    except ImportError:
        raise MedfailInputError(None, "logging to MLflow needs its client: pip install "
                                "'medfail[mlflow]'") from None
    run_dir = Path(run_dir)
    tables = finished_run(run_dir)  # a half-written or damaged run is refused here, named
    try:
        checks = gate(run_dir)
    except MedfailInputError as exc:  # a check this run cannot evaluate: logged without it
        print(f"note: checks not logged: {exc}", file=sys.stderr, flush=True)
        checks = []
    client = mlflow.tracking.MlflowClient(tracking_uri)
    try:
        found = client.get_experiment_by_name(experiment)
        exp_id = found.experiment_id if found is not None else client.create_experiment(
            experiment)
        mlrun = client.create_run(exp_id, run_name=run_dir.resolve().name,
                                  tags={"medfail.run_dir": run_dir.resolve().name})
    except mlflow.exceptions.MlflowException as exc:
        raise MedfailInputError(None, f"MLflow tracking store {tracking_uri or '(default)'}: "
                                f"{exc}") from None
    run_id = mlrun.info.run_id
    params = [mlflow.entities.Param(k, v) for k, v in run_params(tables.run).items()]
    now = int(time.time() * 1000)
    metrics = [mlflow.entities.Metric(k, v, now, 0)
               for k, v in run_metrics(tables, checks).items()]
    client.log_batch(run_id, params=params)
    for start in range(0, len(metrics), BATCH):
        client.log_batch(run_id, metrics=metrics[start:start + BATCH])
    for name in ARTIFACTS:
        path = rundir.table(run_dir, name)
        if path.is_file():
            client.log_artifact(run_id, str(path))
    client.set_terminated(run_id)
    return run_id
