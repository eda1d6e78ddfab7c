"""medfail writes only into folders it may use, deletes only files it wrote, and a damaged run
directory is named, not a traceback (issue 10, items 4 and 9)."""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path

import pandas as pd
import pytest
import torch
from conftest import write_png_folder
from typer.testing import CliRunner

from medfail.cli import app
from medfail.data.datasets import open_dataset
from medfail.demo import prepare_out
from medfail.engine.manifest import MANIFEST, Manifest, ReportOutputs, check_out_dir
from medfail.engine.runner import run_suite
from medfail.engine.suite import SuiteConfig
from medfail.errors import MedfailInputError
from medfail.models.adapters import Segmenter
from medfail.models.spec import ModelSpec

SPEC = ModelSpec(task="segmentation", target_names=["lesion"], output="probabilities")
SUITE_YAML = ("tests: [jpeg]\nseverities: [1]\nuncertainty: []\nmitigate: false\n"
              "n_bootstrap: 20\n")
MODEL_A = {"name": "threshold", "sha256": "0" * 64}
MODEL_B = {"name": "threshold", "sha256": "1" * 64}


class Threshold(torch.nn.Module):
    """Foreground probability = sigmoid((x - 130) / 10)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        fg = torch.sigmoid((x[:, :1] - 130.0) / 10.0)
        return torch.cat([1 - fg, fg], dim=1)


def segmenter() -> Segmenter:
    return Segmenter(SPEC, Threshold(), name="threshold")


def config(*tests: str) -> SuiteConfig:
    return SuiteConfig(tests=list(tests or ["jpeg"]), severities=[1], uncertainty=[],
                       mitigate=False, n_bootstrap=20)


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_png_folder(tmp_path_factory.mktemp("data") / "seg", "segmentation", n=6)


@pytest.fixture(scope="module")
def model_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("model") / "threshold.pt"
    torch.jit.save(torch.jit.script(Threshold()), str(path),
                   _extra_files={"medfail_spec.json": json.dumps(SPEC.to_dict())})
    return path


def run(data: Path, out: Path, model_info: dict[str, str] | None = MODEL_A,
        cfg: SuiteConfig | None = None, **kw: object) -> Path:
    return run_suite(segmenter(), open_dataset(data, "segmentation"), out, cfg or config(),
                     model_info=model_info, progress=False, render=False, **kw)


@pytest.fixture(scope="module")
def finished_run(data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return run(data, tmp_path_factory.mktemp("finished") / "run")


def listing(root: Path) -> dict[str, bytes]:
    """Every file under ``root`` with its bytes (to prove a folder was not touched)."""
    return {p.relative_to(root).as_posix(): p.read_bytes()
            for p in sorted(root.rglob("*")) if p.is_file()}


def cli(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(app, list(args))
    assert result.exception is None or isinstance(result.exception, SystemExit), \
        f"uncaught {result.exception!r}:\n{result.output}"
    assert "Traceback" not in result.output, result.output
    return result.exit_code, result.output


def error_line(code: int, output: str) -> str:
    assert code == 2, output
    lines = [ln for ln in output.splitlines() if ln.startswith("error:")]
    assert len(lines) == 1, output
    return lines[0]


def cli_run(model: Path, data: Path, out: Path, tmp_path: Path, *extra: str) -> tuple[int, str]:
    (tmp_path / "suite.yaml").write_text(SUITE_YAML)
    return cli("run", "--model", str(model), "--data", str(data), "--task", "segmentation",
               "--out", str(out), "--config", str(tmp_path / "suite.yaml"), "--quiet", *extra)


def user_files(root: Path) -> None:
    (root / "predictions").mkdir(parents=True, exist_ok=True)
    (root / "notes.txt").write_text("my notes")
    (root / "predictions" / "mine.csv").write_text("id,score\na,1\n")


# --- item 4: where medfail may write -------------------------------------------------------


def test_foreign_folder_is_refused_before_the_model_loads_and_left_untouched(
        data: Path, tmp_path: Path) -> None:
    out = tmp_path / "mine"
    user_files(out)
    before = listing(out)
    # the model does not even exist: the folder is checked first
    line = error_line(*cli_run(tmp_path / "nope.pt", data, out, tmp_path))
    assert str(out) in line and "not a medfail run directory" in line
    assert "notes.txt" in line and "predictions" in line  # what it found
    assert "new or empty folder" in line and "--overwrite" in line  # the fix
    assert listing(out) == before
    assert not (out / ".medfail").exists()


def test_file_or_uncreatable_folder_as_out_is_one_error(data: Path, tmp_path: Path) -> None:
    target = tmp_path / "results.csv"
    target.write_text("keep me")
    line = error_line(*cli_run(tmp_path / "nope.pt", data, target, tmp_path))
    assert "results.csv" in line and "is a file" in line
    assert target.read_text() == "keep me"
    line = error_line(*cli_run(tmp_path / "nope.pt", data, target / "run", tmp_path))
    assert re.search(r"results\.csv/run: cannot create the folder: .*results\.csv is a file",
                     line), line


@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() == 0,
                    reason="root writes into read-only folders")
def test_read_only_folder_is_refused(data: Path, tmp_path: Path) -> None:
    out = tmp_path / "ro"
    out.mkdir()
    out.chmod(0o500)
    try:
        line = error_line(*cli_run(tmp_path / "nope.pt", data, out, tmp_path))
        assert "not writable" in line
        line = error_line(*cli_run(tmp_path / "nope.pt", data, out / "run", tmp_path))
        assert "no write permission" in line
    finally:
        out.chmod(0o700)


def test_unwritable_folder_and_parent_are_refused(tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """The permission logic itself (works as root too: os.access is what medfail asks)."""
    out = tmp_path / "ro"
    out.mkdir()
    monkeypatch.setattr(os, "access", lambda path, mode: Path(path) != out)
    with pytest.raises(MedfailInputError, match=r"ro: folder is not writable"):
        check_out_dir(out)
    with pytest.raises(MedfailInputError, match=r"new/run: cannot create the folder: no write "
                       r"permission in .*ro"):
        check_out_dir(out / "new" / "run")


def test_other_configuration_refused_then_overwrite_keeps_user_files(
        data: Path, tmp_path: Path) -> None:
    out = run(data, tmp_path / "run")
    user_files(out)
    before = listing(out)
    with pytest.raises(MedfailInputError, match=r"run: is a medfail run directory of another "
                       r"configuration \(differs in model\).*--overwrite"):
        run(data, out, MODEL_B, config("contrast"), overwrite=False)
    assert listing(out) == before
    run(data, out, MODEL_B, config("contrast"), overwrite=True)
    info = json.loads((out / "run.json").read_text())
    assert info["cached_conditions"] == [] and info["conditions"] == ["clean", "contrast@1"]
    assert not (out / "predictions" / "jpeg@1.npz").exists()  # the old run's own file: gone
    assert not (out / ".parts" / "jpeg@1.parquet").exists()
    assert (out / "notes.txt").read_text() == "my notes"  # the user's: kept
    assert (out / "predictions" / "mine.csv").read_text() == "id,score\na,1\n"


def test_same_configuration_resumes_without_overwrite(data: Path, tmp_path: Path) -> None:
    out = run(data, tmp_path / "run", overwrite=False)
    (out / "notes.txt").write_text("my notes")
    (out / "predictions" / "clean.npz.tmp").write_bytes(b"left by a killed run")
    run(data, out, overwrite=False)
    info = json.loads((out / "run.json").read_text())
    assert sorted(info["cached_conditions"]) == ["clean", "jpeg@1"]
    assert (out / "notes.txt").read_text() == "my notes"
    assert not (out / "predictions" / "clean.npz.tmp").exists()  # medfail's stale tmp file
    # a model known by name only: same configuration, nothing reused, no refusal
    named = run(data, tmp_path / "named", {"name": "threshold"}, overwrite=False)
    (named / "notes.txt").write_text("my notes")
    run(data, named, {"name": "threshold"}, overwrite=False)
    assert json.loads((named / "run.json").read_text())["cached_conditions"] == []
    assert (named / "notes.txt").read_text() == "my notes"


def test_spec_and_ensemble_are_part_of_the_configuration(data: Path, tmp_path: Path) -> None:
    """The same model file with another spec (a sidecar --model-spec) or other ensemble members
    gives other predictions: never reused from a folder of the first (was: reused)."""
    out = run(data, tmp_path / "run", overwrite=False)
    other = Segmenter(ModelSpec(task="segmentation", target_names=["lesion"],
                                output="probabilities", input_size=(16, 16)), Threshold(),
                      name="threshold")
    with pytest.raises(MedfailInputError, match=r"another configuration \(differs in "
                       r"spec\.input_size\)"):
        run_suite(other, open_dataset(data, "segmentation"), out, config(), model_info=MODEL_A,
                  progress=False, render=False, overwrite=False)
    members = {**MODEL_A, "ensemble_sha256": ["2" * 64]}
    ens = run(data, tmp_path / "ens", members, ensemble=[segmenter()], overwrite=False)
    run(data, ens, members, ensemble=[segmenter()], overwrite=False)
    assert "ensemble" in json.loads((ens / "run.json").read_text())["cached_conditions"]
    with pytest.raises(MedfailInputError, match=r"differs in ensemble"):
        run(data, ens, {**MODEL_A, "ensemble_sha256": ["3" * 64]}, ensemble=[segmenter()],
            overwrite=False)
    unhashed = run(data, tmp_path / "unhashed", ensemble=[segmenter()], overwrite=False)
    run(data, unhashed, ensemble=[segmenter()], overwrite=False)  # members known by name only
    assert json.loads((unhashed / "run.json").read_text())["cached_conditions"] == []
    # segmentation post-processing (the morphology mitigation) is chosen on the calibration split
    mitigating = SuiteConfig(tests=["jpeg"], severities=[1], uncertainty=[], n_bootstrap=20)
    cal = run(data, tmp_path / "cal", cfg=mitigating, overwrite=False,
              calibration=open_dataset(data, "segmentation"))
    other_cal = write_png_folder(tmp_path / "cal2", "segmentation", n=4, seed=1)
    with pytest.raises(MedfailInputError, match=r"differs in calibration"):
        run(data, cal, cfg=mitigating, overwrite=False,
            calibration=open_dataset(other_cal, "segmentation"))


def test_run_killed_before_its_first_manifest_write_is_resumable(data: Path,
                                                                 tmp_path: Path) -> None:
    out = tmp_path / "run"
    (out / ".medfail").mkdir(parents=True)
    (out / ".medfail" / "manifest.json.tmp").write_text('{"form')  # killed while writing it
    run(data, out, overwrite=False)
    assert Manifest.read(out) is not None
    assert json.loads((out / "run.json").read_text())["conditions"] == ["clean", "jpeg@1"]


def test_every_file_a_run_writes_is_listed_and_figures_follow_the_manifest(
        data: Path, model_file: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Through the CLI with its report: a run directory of another configuration (made with
    another model) is refused, accepted with --overwrite, and afterwards everything in the
    folder is either listed in the manifest or the user's."""
    monkeypatch.setattr("medfail.report.html.render_pdf",  # printing is not the point here
                        lambda html, pdf: pdf.write_bytes(b"%PDF-1.7 stub") and pdf)
    out = run(data, tmp_path / "run")
    user_files(out)
    (out / "figures").mkdir()
    (out / "figures" / "my_plot.png").write_bytes(b"mine")
    line = error_line(*cli_run(model_file, data, out, tmp_path))
    assert "another configuration (differs in model)" in line and "--overwrite" in line
    code, output = cli_run(model_file, data, out, tmp_path, "--overwrite")
    assert code == 0, output
    manifest = Manifest.read(out)
    assert manifest is not None
    mine = {"notes.txt", "predictions/mine.csv", "figures/my_plot.png"}
    on_disk = {p for p in listing(out) if not p.startswith(".medfail/")}
    assert on_disk - mine <= manifest.files, on_disk - mine - manifest.files
    assert any(f.startswith("figures/") for f in manifest.files)
    assert {"report.html", "report.pdf", "cases/cases.json"} <= manifest.files
    assert (out / "figures" / "my_plot.png").read_bytes() == b"mine"


def test_report_outputs_remove_only_listed_figures(tmp_path: Path) -> None:
    manifest = Manifest(tmp_path, {"model": "x"}, True)
    (tmp_path / "figures").mkdir()
    for name in ("old.png", "mine.png"):
        (tmp_path / "figures" / name).write_bytes(b"png")
    manifest.claim(tmp_path / "figures" / "old.png")
    outputs = ReportOutputs(tmp_path)
    assert not (tmp_path / "figures" / "old.png").exists()
    assert (tmp_path / "figures" / "mine.png").exists()
    (tmp_path / "figures" / "new.png").write_bytes(b"png")
    outputs.record()
    assert Manifest.read(tmp_path).files == {"figures/new.png", "report.html", "report.pdf"}


def test_remove_leaves_a_folder_or_file_the_user_put_in_a_listed_place(tmp_path: Path) -> None:
    """A listed file replaced by the user's folder, or a listed folder replaced by a file, is
    theirs: removal skips it (was: IsADirectoryError / NotADirectoryError tracebacks)."""
    manifest = Manifest(tmp_path, {"model": "x"}, True)
    manifest.claim(tmp_path / "report.html", tmp_path / "figures" / "a.png")
    (tmp_path / "report.html").mkdir()
    (tmp_path / "report.html" / "mine.txt").write_text("mine")
    (tmp_path / "figures").write_text("a file now")
    manifest.remove()
    assert (tmp_path / "report.html" / "mine.txt").read_text() == "mine"
    assert (tmp_path / "figures").read_text() == "a file now"
    assert Manifest.read(tmp_path).files == set()


def test_damaged_manifest_is_refused_even_with_overwrite(data: Path, tmp_path: Path) -> None:
    out = run(data, tmp_path / "run")
    (out / MANIFEST).write_text('{"files": ')
    before = listing(out)
    with pytest.raises(MedfailInputError, match=r"manifest\.json: damaged .*choose a new folder"):
        run(data, out, overwrite=True)
    assert listing(out) == before


def test_demo_folder_logic(tmp_path: Path) -> None:
    demo = prepare_out(tmp_path / "demo")  # new
    assert (demo / ".medfail" / "demo.json").exists()
    (demo / "data").mkdir()
    (demo / "segmentation").mkdir()
    assert prepare_out(demo) == demo  # a re-run reuses its own folders
    legacy = tmp_path / "legacy"  # a demo folder from before the marker
    for name in ("data", "models", "classification"):
        (legacy / name).mkdir(parents=True)
    prepare_out(legacy)
    assert (legacy / ".medfail" / "demo.json").exists()
    foreign = tmp_path / "foreign"
    user_files(foreign)
    before = listing(foreign)
    with pytest.raises(MedfailInputError, match=r"foreign: folder is not empty and is not a "
                       r"medfail demo folder \(found notes\.txt, predictions\)"):
        prepare_out(foreign)
    assert listing(foreign) == before
    code, output = cli("demo", "--out", str(foreign), "--task", "segmentation", "--quiet")
    assert "not a medfail demo folder" in error_line(code, output)
    assert listing(foreign) == before


# --- item 9: a damaged run directory ---------------------------------------------------------


def _truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


@pytest.mark.parametrize(("damaged", "breaks"), [
    ("metrics.parquet", _truncate),
    ("run.json", lambda p: p.write_text('{"task": "segmentation", "command": [')),
    ("run.json", lambda p: p.write_text('{"task": "segmentation"}')),
    ("predictions/clean.npz", _truncate),
    ("predictions/clean.confidence.parquet", _truncate),
    ("cases/cases.json", lambda p: p.write_text("")),
])
def test_report_on_a_damaged_run_directory_names_the_file(
        damaged: str, breaks: object, finished_run: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    shutil.copytree(finished_run, out)
    breaks(out / damaged)  # type: ignore[operator]
    line = error_line(*cli("report", str(out)))
    assert f"{out / damaged}: " in line and "damaged" in line, line
    assert "re-run" in line and "medfail run" in line and "reused" in line
    assert not (out / "report.html").exists()


def test_damaged_conditions_are_recomputed_on_rerun(finished_run: Path, data: Path,
                                                    tmp_path: Path) -> None:
    out = tmp_path / "run"
    shutil.copytree(finished_run, out)
    _truncate(out / ".parts" / "jpeg@1.parquet")
    _truncate(out / "predictions" / "clean.pixel_bins.parquet")
    (out / "run.json").write_text("{")
    run(data, out, overwrite=False)
    info = json.loads((out / "run.json").read_text())
    assert info["cached_conditions"] == []
    for name in ("metrics.parquet", "per_sample.parquet"):
        pd.testing.assert_frame_equal(pd.read_parquet(out / name),
                                      pd.read_parquet(finished_run / name))
    _truncate(out / "predictions" / "jpeg@1.npz")
    run(data, out, overwrite=False)
    assert json.loads((out / "run.json").read_text())["cached_conditions"] == ["clean"]
