"""The embedded default: phantoms -> light baselines (cached) -> the suite for each task.

``medfail demo --out runs/demo`` writes ``runs/demo/data/`` (synthetic 2D phantoms in the
folder format), ``runs/demo/data3d/`` (synthetic CT-like 3D phantoms, NIfTI, for the
``volumetric`` task: :mod:`medfail.data.phantoms3d`), ``runs/demo/models/`` (baselines, reused
when their training key matches) and one run directory per task:
``runs/demo/{classification,segmentation,promptable,volumetric}/``. The ``volumetric`` task is
a segmentation run of a 3D U-Net on volumes.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict
from pathlib import Path

from medfail.data.datasets import open_dataset
from medfail.data.phantoms import PhantomConfig, write_phantom_splits
from medfail.data.phantoms3d import Phantom3DConfig, write_phantom3d_splits
from medfail.engine.manifest import own_folder
from medfail.engine.runner import run_suite
from medfail.engine.suite import SuiteConfig
from medfail.models.bundle import read_training_log
from medfail.models.loading import describe_model, load_model
from medfail.models.training import TrainConfig, train
from medfail.rundir import REPORT_HTML

IMAGE_TASKS: tuple[str, ...] = ("classification", "segmentation", "promptable")
DEMO_TASKS: tuple[str, ...] = (*IMAGE_TASKS, "volumetric")
#: the model task each demo task runs (``volumetric``: segmentation of volumes)
TASK_KIND = {**{t: t for t in IMAGE_TASKS}, "volumetric": "segmentation"}
MODEL_FILES = {"classification": "classifier.pt", "segmentation": "segmenter.pt",
               "promptable": "promptable.pt", "volumetric": "segmenter3d.pt"}
#: Every training option explicit (the demo's planted effects are calibrated on these models):
#: DenseNet121 at 64 px, batch 16, every epoch run and the last weights kept (patience off).
TRAINING = {
    "classification": TrainConfig(task="classification", arch="densenet121", size=64, epochs=8,
                                  seed=0, batch_size=16, lr=1e-3, patience=None),
    "segmentation": TrainConfig(task="segmentation", arch="unet", size=64, epochs=12, seed=0,
                                batch_size=16, lr=1e-2, patches_per_image=2, patience=None),
    "promptable": TrainConfig(task="promptable", arch="prompt_unet", size=64, epochs=12, seed=0,
                              batch_size=16, lr=1e-2, patience=None),
    # the 3D U-Net (8-16-32-64) on 32^3 patches of the 48x48x32 phantoms (~1 min on 2 cores)
    "volumetric": TrainConfig(task="segmentation", arch="unet", size=32, epochs=12, seed=0,
                              batch_size=4, lr=1e-2, patches_per_image=4, patience=None),
}


#: The demo keeps its wall-clock near 5 min on 2 CPU cores: MC dropout with 4 passes, and the
#: promptable model gets the prompt perturbations plus two image tests (the segmenter already
#: shows every image test). `medfail run` uses the full defaults.
DEMO_MC_PASSES = 4
PROMPTABLE_IMAGE_TESTS = ("gaussian_noise", "resolution_shift")
#: The 3D phantoms are CT-like (HU): the volumetric suite also gets the CT tests (NIfTI files
#: carry no modality).
VOLUMETRIC_MODALITY = "CT"


def demo_suite(task: str, suite: SuiteConfig) -> SuiteConfig:
    """The demo's suite for ``task`` (see ``DEMO_MC_PASSES``, ``PROMPTABLE_IMAGE_TESTS`` and
    ``VOLUMETRIC_MODALITY``)."""
    from dataclasses import replace

    from medfail.stress import registry

    changes: dict[str, object] = {"mc_passes": min(suite.mc_passes, DEMO_MC_PASSES)}
    if task == "volumetric" and suite.modality is None:
        changes["modality"] = VOLUMETRIC_MODALITY
    if task == "promptable" and suite.tests is None:
        prompt_tests = [n for n in registry.names() if registry.get(n).family == "prompt"]
        changes["tests"] = [*PROMPTABLE_IMAGE_TESTS, *prompt_tests]
    return replace(suite, **changes)


def _baseline(task: str, data: dict[str, Path], models_dir: Path,
              phantoms: PhantomConfig | Phantom3DConfig, progress: bool) -> tuple[Path, bool]:
    """Train the task's baseline unless a model with the same training key exists (validation:
    the ``val`` split when the data has one, else ``calibration``)."""
    path = models_dir / MODEL_FILES[task]
    config = TRAINING[task]
    key = json.dumps({"phantoms": json.loads(phantoms.to_json()), "train": asdict(config)},
                     sort_keys=True)
    key_file = path.with_name(path.name + ".key")
    if path.exists() and key_file.exists() and key_file.read_text() == key:
        return path, True
    kind = TASK_KIND[task]
    train(open_dataset(data["train"], kind), config, path,
          val_dataset=open_dataset(data.get("val", data["calibration"]), kind),
          progress=progress)
    key_file.write_text(key)
    return path, False


def prepare_out(out: str | Path) -> Path:
    """The demo's folder: new, empty, or the demo's own (marked ``.medfail/demo.json``, or
    holding only ``data/``, ``models/`` and task folders), else refused before anything runs.
    Its task folders are run directories the demo replaces when its models or options change
    (medfail's own files only: :mod:`medfail.engine.manifest`)."""
    out = Path(out)
    own_folder(out, "demo", ("data", "data3d", "models", *DEMO_TASKS))
    return out


def run_demo(out: str | Path = "runs/demo", tasks: tuple[str, ...] = DEMO_TASKS,
             phantoms: PhantomConfig | None = None, suite: SuiteConfig | None = None,
             progress: bool = True, phantoms3d: Phantom3DConfig | None = None,
             ) -> dict[str, Path]:
    """Run the embedded default end to end; returns the report path per task. The phantoms a
    task needs are written (or reused) before its baseline: 2D for the image tasks, 3D for
    ``volumetric``."""
    out = prepare_out(out)
    unknown = [t for t in tasks if t not in DEMO_TASKS]
    if unknown:
        raise ValueError(f"unknown demo task(s) {unknown}; choose from {', '.join(DEMO_TASKS)}")
    suite = suite or SuiteConfig()
    reports: dict[str, Path] = {}
    for task in tasks:
        t0 = time.perf_counter()
        source: PhantomConfig | Phantom3DConfig
        if task == "volumetric":
            source = phantoms3d or Phantom3DConfig()
            data = write_phantom3d_splits(out / "data3d", source)
        else:
            source = phantoms or PhantomConfig()
            data = write_phantom_splits(out / "data", source)
        t_data = time.perf_counter() - t0
        model_path, cached = _baseline(task, data, out / "models", source, progress)
        t_train = time.perf_counter() - t0 - t_data
        kind = TASK_KIND[task]
        adapter = load_model(model_path, kind)
        names = adapter.spec.target_names if kind == "classification" else None
        dataset = open_dataset(data["test"], kind, target_names=names)
        calibration = open_dataset(data["calibration"], kind, target_names=names)
        shift = open_dataset(data["shift"], kind, target_names=names)
        log = read_training_log(model_path)
        run_dir = run_suite(
            adapter, dataset, out / task, demo_suite(task, suite),
            model_info={**describe_model(model_path), "training_cached": cached,
                        "training_wall_clock_s": log.get("wall_clock_s"), "training_log": log},
            command=["medfail", "demo", "--out", str(out), "--task", task], progress=progress,
            calibration=calibration, shift=shift, overwrite=True)
        reports[task] = run_dir / REPORT_HTML
        if progress:
            status = "cached" if cached else f"trained in {t_train:.0f}s"
            print(f"[{task}] data {t_data:.0f}s; baseline {status}; suite and report "
                  f"{time.perf_counter() - t0 - t_data - t_train:.0f}s; report: {reports[task]} "
                  f"(+ {reports[task].with_suffix('.pdf').name})")
    return reports
