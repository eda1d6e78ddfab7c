"""The ``medfail`` command line: demo, train, run, analyse, report, check, compare, runs,
history, list."""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from medfail.errors import MedfailInputError

if TYPE_CHECKING:
    import pandas as pd

app = typer.Typer(
    help="medfail: failure analysis for medical imaging AI.\n\n"
    "Quick start: `medfail demo` runs the embedded synthetic default end to end.",
    no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False)
TASK_HELP = "classification | segmentation | promptable"
#: the RUN_DIR argument of the commands that read a run directory
RunDir = Annotated[Path, typer.Argument(help="A run directory written by `medfail run`. "
                                        "Example: runs/seg")]
MASK_MODE_HELP = ("How mask values are read: auto (0/1 or 0/255 binary, instance maps or class "
                  "labels, decided from the masks and printed), binary (foreground = any non-zero "
                  "value), classes (label k = class k), instances (foreground, one object per "
                  "label). Example: --mask-mode binary")


def _fail(exc: Exception) -> None:
    typer.echo(f"error: {exc}", err=True)
    raise typer.Exit(code=2)


def _check_task(task: str) -> str:
    from medfail.models.spec import TASKS

    if task not in TASKS:
        raise MedfailInputError(None, f"unknown task {task!r}; choose one of {', '.join(TASKS)}")
    return task


def _npz_split(data: Path, split: str | None, default: str) -> str | None:
    """Splits apply to MedMNIST .npz files only; a folder is one split."""
    if data.suffix.lower() == ".npz":
        return split or default
    if split is not None:
        raise MedfailInputError(data, "--split applies to .npz files only")
    return None


def _shown(path: Path) -> str:
    """A path as printed: relative to the working folder when inside it (logs stay portable and
    show no home or patient folder names), else its last two parts."""
    try:
        return str(path.resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(Path(*path.resolve().parts[-2:]))


@app.command()
def demo(
    out: Annotated[Path, typer.Option(help="Output folder, e.g. --out runs/demo")] = Path(
        "runs/demo"),
    task: Annotated[str, typer.Option(help=f"{TASK_HELP} | volumetric | all. Example: --task "
                                          "segmentation")] = "all",
    quiet: Annotated[bool, typer.Option(help="No progress bars.")] = False,
) -> None:
    """Run the embedded default: synthetic phantoms, light baselines (trained once, cached),
    the stress suite and a report per task.

    Example: medfail demo --out runs/demo --task all
    """
    from medfail.demo import DEMO_TASKS, run_demo

    t0 = time.perf_counter()
    try:
        tasks = DEMO_TASKS if task == "all" else (
            task if task in DEMO_TASKS else _check_task(task),)
        reports = run_demo(out, tasks, progress=not quiet)
    except MedfailInputError as exc:
        _fail(exc)
    for name, path in reports.items():
        print(f"{name}: {path}")
    print(f"demo wall-clock: {time.perf_counter() - t0:.1f} s")


def _check_model_out(out: Path) -> None:
    """``--out`` of ``medfail train`` must be a file path medfail can write."""
    if out.is_dir():
        raise MedfailInputError(out, "is a folder; --out names the model file to write, e.g. "
                                f"--out {out / 'model.pt'}")
    folder = next((p for p in out.parents if p.exists()), Path("."))
    if not folder.is_dir():
        raise MedfailInputError(out, f"cannot create the folder: {folder} is a file")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise MedfailInputError(out, f"cannot write there: no write permission in {folder}")


@app.command()
def train(
    task: Annotated[str, typer.Option(help=f"{TASK_HELP}. Example: --task classification")],
    data: Annotated[Path, typer.Option(help="Training folder (images/, labels.csv or masks/; "
                                       "2D images or 3D NIfTI/DICOM volumes) or a MedMNIST "
                                       ".npz. Example: --data my_data/train")],
    out: Annotated[Path, typer.Option(help="Model file to write, e.g. --out model.pt")],
    arch: Annotated[str | None, typer.Option(
        help="Network: resnet18 (default; MONAI ResNet-18 at half width, CPU-friendly) or "
        "densenet121 (MONAI DenseNet121, input 32 px or more) for classification; unet "
        "(segmentation; a 3D U-Net 8-16-32-64 on volumes); prompt_unet (promptable). "
        "Example: --arch densenet121")] = None,
    size: Annotated[int | None, typer.Option(
        help="Network input size in px (classification resizes to it; segmentation trains on "
        "patches of it). Default from the data: the median image side clipped to [28, 128] "
        "(classification), the median shorter side rounded up to a multiple of 8 and clipped "
        "to [32, 64] (segmentation); on volumes a 32-voxel patch side, each axis clipped to "
        "the median volume side rounded up to a multiple of 8. Example: --size 64")] = None,
    epochs: Annotated[int, typer.Option(help="Epochs, 1-15 (at most; see --patience). "
                                        "Example: --epochs 8")] = 8,
    seed: Annotated[int, typer.Option(help="Random seed. Example: --seed 0")] = 0,
    val: Annotated[Path | None, typer.Option(help="Validation folder: loss per epoch is "
                                             "logged and drives early stopping. "
                                             "Example: --val my_data/val")] = None,
    patience: Annotated[int, typer.Option(
        help="With --val: stop after this many epochs without a lower val loss and keep the "
        "best epoch's weights; 0 = run every epoch. Example: --patience 3")] = 3,
    batch_size: Annotated[int | None, typer.Option(
        help="Batch size (default 64 for resnet18, else 16). Example: --batch-size 32")] = None,
    split: Annotated[str | None, typer.Option(
        help="Split of a MedMNIST .npz file (default train). Example: --split train")] = None,
    device: Annotated[str, typer.Option(help="torch device. Example: --device cuda")] = "cpu",
    mask_mode: Annotated[str, typer.Option(help=MASK_MODE_HELP)] = "auto",
    quiet: Annotated[bool, typer.Option(help="No progress bars.")] = False,
) -> None:
    """Train a light baseline on a folder of images (≤15 epochs, CPU-friendly). On a folder of
    volumes (segmentation only) it trains a 3D U-Net on patches at the median training spacing.

    Example: medfail train --task segmentation --data my_data/train --out seg.pt --epochs 10
    """
    from medfail.data.datasets import open_dataset
    from medfail.models.training import TrainConfig
    from medfail.models.training import train as train_model

    try:
        _check_task(task)
        _check_model_out(out)  # before training, not after it
        config = TrainConfig(task=task, arch=arch, size=size, epochs=epochs, seed=seed,
                             device=device, patience=patience, batch_size=batch_size)
        dataset = open_dataset(data, task, split=_npz_split(data, split, "train"),
                               mask_mode=mask_mode)
        val_ds = None if val is None else open_dataset(
            val, task, split=_npz_split(val, None, "val"),
            target_names=dataset.target_names or None, mask_mode=mask_mode)
        path = train_model(dataset, config, out, val_dataset=val_ds, progress=not quiet,
                           echo=typer.echo)
    except (MedfailInputError, ValueError) as exc:
        _fail(exc)
    print(f"model written: {path}")


def _portable(ref: str | Path) -> str:
    """A model reference that Ray workers can open: files as absolute paths, entry points as is."""
    return str(Path(ref).resolve()) if Path(ref).exists() else str(ref)


@app.command()
def run(
    model: Annotated[str, typer.Option(help="medfail model file, TorchScript (.pt), ONNX (.onnx) "
                                       "or a Python entry point module:function. "
                                       "Example: --model seg.pt")],
    data: Annotated[Path, typer.Option(help="Test folder or MedMNIST .npz. "
                                       "Example: --data my_data/test")],
    task: Annotated[str | None, typer.Option(
        help=f"{TASK_HELP}; default: the task the model's spec names (medfail model files, "
        "models with a spec). Example: --task segmentation")] = None,
    out: Annotated[Path | None, typer.Option(help="Run directory (default runs/<task>). "
                                             "Example: --out runs/seg1")] = None,
    config: Annotated[Path | None, typer.Option(help="Suite YAML selecting tests, severities, "
                                                "bootstrap. Example: --config suite.yaml")] = None,
    seed: Annotated[int | None, typer.Option(help="Run seed (overrides the config). "
                                             "Example: --seed 1")] = None,
    split: Annotated[str | None, typer.Option(
        help="Split of a MedMNIST .npz file (default test). Example: --split test")] = None,
    calibration: Annotated[Path | None, typer.Option(
        help="Calibration split (same format): classification thresholds are chosen on it, "
        "never on test. Example: --calibration my_data/cal")] = None,
    shift_data: Annotated[Path | None, typer.Option(
        help="A second site's folder: evaluated clean and reported as Δ vs in-domain. "
        "Example: --shift-data site_b/test")] = None,
    ensemble_model: Annotated[list[str] | None, typer.Option(
        help="Further models of the same task and targets (repeat the option): their mean is "
        "stored as the deep-ensemble condition `ensemble`. Example: --ensemble-model seed1.pt "
        "--ensemble-model seed2.pt")] = None,
    model_spec: Annotated[Path | None, typer.Option(
        help="JSON spec for TorchScript/ONNX/callable models (task, target_names, input_size, "
        "in_channels, normalisation, output). Example: --model-spec spec.json")] = None,
    trust_pickle: Annotated[bool, typer.Option(
        help="Allow loading pickled nn.Modules (runs code from the file; only for files you "
        "trust).")] = False,
    batch_size: Annotated[int | None, typer.Option(help="Batch size. Example: --batch-size 32")
                          ] = None,
    device: Annotated[str | None, typer.Option(
        help="torch device for the model and the perturbed batches: cpu, cuda, cuda:0 "
        "(default: cuda when available, else cpu). Example: --device cuda")] = None,
    executor: Annotated[str, typer.Option(
        help="Where predictions run: local (this process) or ray (condition × shard tasks on "
        "Ray actors; pip install 'medfail\\[ray]'). Example: --executor ray")] = "local",
    address: Annotated[str | None, typer.Option(
        help="Ray cluster address for --executor ray (default: start a local Ray). "
        "Example: --address ray://head:10001")] = None,
    workers: Annotated[int | None, typer.Option(
        help="Ray actors for --executor ray, each holding the model (default: one per GPU, "
        "else one per two CPUs). Example: --workers 4")] = None,
    mask_mode: Annotated[str, typer.Option(help=MASK_MODE_HELP)] = "auto",
    overwrite: Annotated[bool, typer.Option(
        help="Let --out be a non-empty folder that is not a run directory of this "
        "configuration: medfail's own files there (listed in .medfail/manifest.json) are "
        "replaced, nothing else is deleted.")] = False,
    runtime: Annotated[str, typer.Option(
        help="torch or onnxruntime: a torch model is exported once to ONNX (cached in the run "
        "directory), checked against torch on the first batch (probabilities within 1e-4, else "
        "torch is kept) and run on ONNX Runtime (CPU). Example: --runtime onnxruntime")
                       ] = "torch",
    mlflow: Annotated[str | None, typer.Option(
        help="After the run, log it to this MLflow tracking URI (params, metrics with CIs, "
        "checks, report as artifact; pip install 'medfail\\[mlflow]'). "
        "Example: --mlflow http://mlflow:5000")] = None,
    fail_on_checks: Annotated[bool, typer.Option(
        help="After the run, evaluate its pass/fail checks as `medfail check` does and exit 1 "
        "when one fails (a CI gate in one command)")] = False,
    quiet: Annotated[bool, typer.Option(help="No progress bars.")] = False,
) -> None:
    """Run the failure suite of a model on a dataset and write a run directory with a report.

    Example: medfail run --model seg.pt --data my_data/test --task segmentation --out runs/seg
    """
    from medfail import rundir
    from medfail.data.datasets import open_dataset
    from medfail.engine.executors import ModelFiles
    from medfail.engine.runner import run_suite
    from medfail.engine.suite import SuiteConfig
    from medfail.models.adapters import resolve_device
    from medfail.models.loading import describe_model, load_model
    from medfail.rundir import check_out_dir

    try:
        adapter = None
        if task is None:  # the model's spec names it
            adapter = load_model(model, None, spec_path=model_spec, trust_pickle=trust_pickle,
                                 device=resolve_device(device))
            task = adapter.spec.task
            print(f"task: {task} (from the model's spec)")
        _check_task(task)
        out = out or Path("runs") / task
        if runtime not in ("torch", "onnxruntime"):
            raise MedfailInputError(None, "--runtime must be torch or onnxruntime, "
                                    f"not {runtime!r}")
        check_out_dir(out, overwrite)  # a file, not writable, someone else's folder: fail fast
        device = resolve_device(device)
        overrides = {"seed": seed, "batch_size": batch_size}
        suite = SuiteConfig.from_yaml(config, **overrides)  # config None: the defaults
        suite.check_task(task)  # before the model loads
        adapter = adapter or load_model(model, task, spec_path=model_spec,
                                        trust_pickle=trust_pickle, device=device)
        names = adapter.spec.target_names if task == "classification" else None
        dataset = open_dataset(data, task, split=_npz_split(data, split, "test"),
                               target_names=names, mask_mode=mask_mode)
        extra = {key: open_dataset(path, task, split=_npz_split(path, None, default),
                                   target_names=names, mask_mode=mask_mode)
                 for key, path, default in (("calibration", calibration, "val"),
                                            ("shift", shift_data, "test")) if path is not None}
        members = [load_model(m, task, spec_path=model_spec, trust_pickle=trust_pickle,
                              device=device) for m in ensemble_model or []]
        loader = ModelFiles(tuple(_portable(m) for m in [model, *(ensemble_model or [])]), task,
                            None if model_spec is None else _portable(model_spec), trust_pickle,
                            device, runtime, str(rundir.onnx_cache_dir(Path(out).resolve())))
        # ^ how Ray workers load the models
        run_dir = run_suite(adapter, dataset, out, suite, overwrite=overwrite,
                            model_info={**describe_model(model), "runtime": runtime,
                                        "ensemble_sha256": [
                                describe_model(m)["sha256"] for m in ensemble_model or []]},
                            command=["medfail", *sys.argv[1:]], progress=not quiet,
                            ensemble=members, executor=executor, ray_address=address,
                            ray_workers=workers, model_loader=loader, **extra)
    except MedfailInputError as exc:
        _fail(exc)
    print(f"report: {_shown(run_dir / 'report.html')} (+ report.pdf)")
    if mlflow is not None:
        _log_mlflow(run_dir, mlflow, "medfail")
    if fail_on_checks:
        try:
            failed = _gate(run_dir, None, None)
        except MedfailInputError as exc:
            _fail(exc)
        if failed:
            raise typer.Exit(code=1)


@app.command()
def report(
    run_dir: RunDir,
) -> None:
    """Re-render the report from a run directory alone (the model is not needed).

    Example: medfail report runs/demo/segmentation
    """
    import zipfile

    import pyarrow as pa

    from medfail.report.html import render_report
    from medfail.rundir import METRICS, RECOVER, RUN_JSON, table

    if not all(table(run_dir, name).exists() for name in (METRICS, RUN_JSON)):
        _fail(MedfailInputError(run_dir, "not a run directory (run.json or metrics.parquet "
                                "missing)"))
    try:
        html = render_report(run_dir)  # checks every file first: a damaged one is named
    except MedfailInputError as exc:
        _fail(exc)
    except (pa.ArrowException, zipfile.BadZipFile, EOFError) as exc:  # damage the check missed
        _fail(MedfailInputError(run_dir, f"a file cannot be read ({exc}); {RECOVER}"))
    print(f"report: {html} and {html.with_suffix('.pdf')}")


@app.command()
def analyse(
    run_dir: RunDir,
    config: Annotated[Path | None, typer.Option(
        help="Suite YAML whose analysis options (n_bootstrap, threshold, min_slice_n, "
        "size_threshold_px, slices, checks) replace the run's; options it does not name keep "
        "the run's values. Example: --config suite.yaml")] = None,
    metadata: Annotated[Path | None, typer.Option(
        help="CSV with an `id` column and further columns to slice by (meta.<column>=<value>). "
        "Example: --metadata extra.csv")] = None,
    quiet: Annotated[bool, typer.Option(help="No progress bars.")] = False,
) -> None:
    """Rebuild the slices, metrics, ranking, calibration, mitigation, slice-discovery and
    label-issue tables from the stored predictions, then re-render the report (no model, no
    images needed).

    Example: medfail analyse runs/seg --config suite.yaml --metadata extra.csv
    """
    import zipfile

    import pyarrow as pa

    from medfail.analysis.analyse import analyse as analyse_run
    from medfail.engine.suite import SuiteConfig
    from medfail.report.html import render_report
    from medfail.rundir import (
        ANALYSE_REQUIRED,
        ANALYSIS_TABLES,
        RECOVER,
        RUN_JSON,
        check_run_dir,
        read_run_json,
        table,
    )

    try:
        if not table(run_dir, RUN_JSON).exists():
            raise MedfailInputError(run_dir, "not a run directory (run.json missing)")
        # a missing or damaged stored file: named, with how to recover (the tables rebuilt
        # here may be missing or damaged)
        check_run_dir(run_dir, ANALYSE_REQUIRED, ANALYSIS_TABLES)
        run = read_run_json(table(run_dir, RUN_JSON))
        options = None
        if config is not None:
            named = SuiteConfig.from_yaml(config)  # validated; its file's options only
            given = _yaml_keys(config)
            options = {k: v for k, v in named.to_dict().items() if k in given}
            SuiteConfig(**{**run["config"], **options}).check_task(run["task"])
        analyse_run(run_dir, options, metadata, progress=not quiet, config_source=config)
        html = render_report(run_dir)
    except MedfailInputError as exc:
        _fail(exc)
    except (pa.ArrowException, zipfile.BadZipFile, EOFError) as exc:  # damage the check missed
        _fail(MedfailInputError(run_dir, f"a file cannot be read ({exc}); {RECOVER}"))
    print(f"tables rebuilt; report: {_shown(html)} (+ report.pdf)")


def _yaml_keys(path: Path) -> set[str]:
    """The options a suite YAML names (it was validated by SuiteConfig.from_yaml)."""
    import yaml

    data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    return {str(k) for k in data} if isinstance(data, dict) else set()


@app.command()
def check(
    run_dir: RunDir,
    checks: Annotated[Path | None, typer.Option(
        help="YAML with a `checks` list (a suite config's option) that replaces the run's "
        "checks. Example: --checks checks.yaml holding `checks: [{metric: dice, max_drop: "
        "0.05, severity: 2}]`")] = None,
    junit: Annotated[Path | None, typer.Option(
        help="Also write the checks as JUnit XML (one test case per check and condition). "
        "Example: --junit medfail-checks.xml")] = None,
) -> None:
    """Evaluate the pass/fail checks of a run (the report's checklist) for a CI gate: one line
    per check and stress test; exit 0 when all pass, 1 when one fails, 2 on a usage error.

    Example: medfail check runs/seg --checks checks.yaml --junit medfail-checks.xml
    """
    try:
        failed = _gate(run_dir, checks, junit)
    except MedfailInputError as exc:
        _fail(exc)
    raise typer.Exit(code=1 if failed else 0)


def _gate(run_dir: Path, checks: Path | None, junit: Path | None) -> bool:
    """Print the check lines of ``run_dir`` (and write ``junit``); True when one failed."""
    from medfail.analysis.gate import check_line, gate, junit_xml
    from medfail.engine.suite import SuiteConfig
    from medfail.rundir import RUN_JSON, read_run_json, table

    given = None
    if checks is not None:
        if "checks" not in _yaml_keys(checks):
            raise MedfailInputError(checks, "names no `checks`; expected e.g. `checks: "
                                    "[{metric: dice, max_drop: 0.05, severity: 2}]`")
        suite = SuiteConfig.from_yaml(checks)  # validated: metric names, bounds, severities
        if (table(run_dir, RUN_JSON)).exists():
            suite.check_task(str(read_run_json(table(run_dir, RUN_JSON))["task"]))
        given = suite.checks
    rows = gate(run_dir, given)
    for row in rows:
        typer.echo(check_line(row))
    failed = sum(r["verdict"] != "pass" for r in rows)
    typer.echo(f"{len(rows) - failed} of {len(rows)} checks passed" +
               (f"; {failed} failed" if failed else ""))
    if junit is not None:
        junit.parent.mkdir(parents=True, exist_ok=True)
        junit_xml(rows, f"medfail checks: {run_dir.resolve().name}").write(
            junit, encoding="utf-8", xml_declaration=True)
    return bool(failed)


@app.command()
def log(
    run_dir: RunDir,
    tracking_uri: Annotated[str | None, typer.Option(
        help="MLflow tracking URI (default: MLflow's own, MLFLOW_TRACKING_URI or ./mlruns). "
        "Example: --tracking-uri http://mlflow:5000")] = None,
    experiment: Annotated[str, typer.Option(
        help="MLflow experiment (created when missing). Example: --experiment seg-models")
                          ] = "medfail",
) -> None:
    """Log a run directory to MLflow as one run: suite config, seeds and hashes as params,
    every metric with its CI and the pass/fail checks as metrics, report and tables as
    artifacts (pip install 'medfail\\[mlflow]').

    Example: medfail log runs/seg --tracking-uri http://mlflow:5000 --experiment seg-models
    """
    _log_mlflow(run_dir, tracking_uri, experiment)


def _log_mlflow(run_dir: Path, tracking_uri: str | None, experiment: str) -> None:
    from medfail.analysis.mlflow_log import log_run

    try:
        run_id = log_run(run_dir, tracking_uri, experiment)
    except MedfailInputError as exc:
        _fail(exc)
    print(f"logged to MLflow: experiment {experiment!r}, run {run_id}")


@app.command()
def compare(
    run_a: Annotated[Path, typer.Argument(help="First run directory (A). Example: runs/v1")],
    run_b: Annotated[Path, typer.Argument(help="Second run directory (B). Example: runs/v2")],
    out: Annotated[Path | None, typer.Option(help="Where to write compare.html (default: "
                                             "RUN_B/compare). Example: --out runs/v1_vs_v2")
                   ] = None,
) -> None:
    """Compare two runs (two models, or two versions): every metric's Δ = B − A, with paired
    bootstrap CIs where both runs scored the same images.

    Example: medfail compare runs/model_v1 runs/model_v2 --out runs/v1_vs_v2
    """
    from medfail.report.compare import render_compare
    from medfail.rundir import METRICS, RUN_JSON, check_run_dir, table

    for run_dir in (run_a, run_b):
        if not all(table(run_dir, name).exists() for name in (METRICS, RUN_JSON)):
            _fail(MedfailInputError(run_dir, "not a run directory (run.json or metrics.parquet "
                                    "missing)"))
    target = out or run_b / "compare"
    try:
        for run_dir in (run_a, run_b):
            check_run_dir(run_dir)  # a damaged file: named, with how to recover
        path = render_compare(run_a, run_b, target)
    except OSError as exc:  # --out a file, not writable...
        _fail(MedfailInputError(exc.filename or target, f"cannot write the comparison "
                                f"({exc.strerror or exc}); choose another --out"))
    except ValueError as exc:
        _fail(exc)
    print(f"comparison: {path}")


@app.command()
def runs(
    root: Annotated[Path, typer.Argument(help="Folder holding run directories (searched "
                                         "recursively). Example: runs")] = Path("runs"),
    sql: Annotated[str | None, typer.Option(
        help="Query the views runs (one row per finished run), metrics (every run's "
        "metrics.parquet with a run column) and run_info (run, run_json) with DuckDB SQL and "
        "print the result. Example: --sql \"select run, value from metrics where metric = "
        "'dice' and condition = 'clean' and slice = 'all'\"")] = None,
) -> None:
    """List the run directories under ROOT (task, model and data hashes, date, clean primary
    metric with its CI, worst condition, checks passed); half-written runs are skipped with a
    note. With --sql, print the result of a query over them instead.

    Example: medfail runs runs --sql "select model_version, value from runs order by date"
    """
    from medfail.analysis import run_registry

    try:
        found = run_registry.scan(root)
        if sql is not None:
            result = run_registry.query(run_registry.connect(found), sql)
            print(result.to_string(index=False) if len(result.columns) else "(no result)")
            for note in found.notes:
                typer.echo(f"note: {note}", err=True)
            return
        frame = run_registry.runs_frame(found)
    except MedfailInputError as exc:
        _fail(exc)
    if frame.empty:
        print(f"no finished run directory under {_shown(root)}")
    else:
        print(_runs_table(frame))
    for note in found.notes:
        print(f"note: {note}")


def _runs_table(frame: pd.DataFrame) -> str:
    """The ``runs`` view as printed by ``medfail runs``."""
    import math

    import pandas as pd

    def num(x: float) -> str:
        return f"{x:.3f}" if math.isfinite(x) else "nan"

    shown = pd.DataFrame({
        "run": frame["run"], "task": frame["task"], "model": frame["model_version"],
        "data": [str(h)[:12] if h else "-" for h in frame["data_hash"]],
        "date (UTC)": [d.strftime("%Y-%m-%d %H:%M") for d in frame["date"]],
        "clean metric [95% CI]": [f"{r.metric} {num(r.value)} [{num(r.ci_low)}, "
                                  f"{num(r.ci_high)}]" for r in frame.itertuples()],
        "worst condition": frame["worst_condition"].fillna("-"),
        "checks passed": ["-" if pd.isna(p) else f"{p}/{t}"
                          for p, t in zip(frame["checks_passed"], frame["checks_total"],
                                          strict=True)]})
    return shown.to_string(index=False)


@app.command()
def history(
    root: Annotated[Path, typer.Argument(help="Folder holding run directories (searched "
                                         "recursively). Example: runs")],
    metric: Annotated[str, typer.Option(help="Metric to draw (see `medfail list`). "
                                        "Example: --metric dice")],
    condition: Annotated[str, typer.Option(help="Condition: clean or <test>@<severity>. "
                                           "Example: --condition gamma@2")] = "clean",
    target: Annotated[str | None, typer.Option(
        help="Target (class) to draw; default each run's primary target (macro when there are "
        "several). Example: --target lesion")] = None,
    order: Annotated[str, typer.Option(
        help="date (run.json's time) or model (model name and sha256, then date). "
        "Example: --order model")] = "date",
    out: Annotated[Path | None, typer.Option(
        help="Folder for history.png and history.html (default ROOT/history; never inside a "
        "run directory). Example: --out runs/history_dice")] = None,
) -> None:
    """Draw one metric with its 95 % CI across the finished runs under ROOT (slice all), ordered
    by date or model version: history.png and a small self-contained history.html.

    Example: medfail history runs --metric dice --condition gamma@2 --order model
    """
    from medfail.analysis import run_registry

    try:
        found = run_registry.scan(root)
        frame = run_registry.history(found, metric, condition, target, order)
        png, page = run_registry.write_history(frame, out or root / "history", found.notes)
    except MedfailInputError as exc:
        _fail(exc)
    for r in frame.itertuples():
        print(f"{r.run}  {r.model_version}  {r.metric} {r.value:.4f} "
              f"[{r.ci_low:.4f}, {r.ci_high:.4f}]")
    for note in found.notes:
        print(f"note: {note}")
    print(f"history: {_shown(png)} and {_shown(page)}")


@app.command(name="list")
def list_all() -> None:
    """List stress tests (with their three severities), metrics and slices, one per line.

    Example: medfail list
    """
    from medfail.analysis.per_sample import CLASSIFICATION_METRICS, SEGMENTATION_METRICS
    from medfail.stress.registry import list_rows

    rows = list_rows()
    width = max(len(r["name"]) for r in rows)
    print("stress tests (name, family, taxonomy, modalities, dims, severities 1/2/3, unit):")
    for r in rows:
        print(f"  {r['name']:<{width}}  {r['family']:<12} {r['taxonomy']:<13} "
              f"{r['modalities']:<8} {r['dims']:<6} {r['severities']:<28} {r['unit']}")
    print("metrics (segmentation): " + ", ".join(SEGMENTATION_METRICS))
    print("metrics (classification): " + ", ".join(CLASSIFICATION_METRICS))
    print("slices: gt.size (small/large/none), gt.location (central/peripheral), gt.shape "
          "(hollow/solid), gt.objects (1/2+), metadata columns (meta.site=..., "
          "meta.pixel_spacing=...)")


if __name__ == "__main__":
    app()
