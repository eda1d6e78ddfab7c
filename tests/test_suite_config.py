"""Suite config validation: one schema, one line per problem naming file, option path and value."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest
import torch
import yaml
from typer.testing import CliRunner

from medfail.cli import app
from medfail.demo import demo_suite
from medfail.engine.runner import run_suite
from medfail.engine.suite import SuiteConfig
from medfail.errors import MedfailInputError
from medfail.models.adapters import Segmenter
from medfail.models.spec import ModelSpec

#: SuiteConfig().to_dict() captured from the code before the schema existed: run.json's
#: ``config`` and the cache key's input must not change for existing run directories.
DEFAULT_DICT = {
    "tests": None, "severities": [1, 2, 3], "slices": ["size", "location", "shape", "metadata"],
    "modality": None, "batch_size": 16, "n_bootstrap": 1000, "threshold": 0.5,
    "boundary_tolerance_px": 2.0, "surface_tolerance_mm": 2.0, "min_slice_n": 10,
    "size_threshold_px": None, "lesion_min_overlap": 0.1, "uncertainty": ["tta", "mc_dropout"],
    "mc_passes": 8, "mitigate": True, "checks": [], "seed": 0}
#: A non-default config, serialised (sort_keys) by the old code: an int tolerance stays an int.
CUSTOM = {"tests": ["jpeg"], "severities": [2, 3], "n_bootstrap": 200, "seed": 7,
          "boundary_tolerance_px": 3, "checks": [{"metric": "dice", "max_drop": 0.1}],
          "uncertainty": [], "mitigate": False, "modality": "CT"}
CUSTOM_JSON = (
    '{"batch_size": 16, "boundary_tolerance_px": 3, "checks": [{"max_drop": 0.1, "metric": "dice"}]'
    ', "lesion_min_overlap": 0.1, "mc_passes": 8, "min_slice_n": 10, "mitigate": false, '
    '"modality": "CT", "n_bootstrap": 200, "seed": 7, "severities": [2, 3], "size_threshold_px": '
    'null, "slices": ["size", "location", "shape", "metadata"], "surface_tolerance_mm": 2.0, '
    '"tests": ["jpeg"], "threshold": 0.5, "uncertainty": []}')

# (suite.yaml text, the message fragment: option path + expectation + the bad value)
BAD_OPTIONS = [
    ("severities: 2", "severities: expected a list of 1, 2, 3 (e.g. [1, 2, 3]); got 2"),
    ("severities: [1, 4]", "severities[1]: expected 1, 2 or 3; got 4"),
    ("severities: [2, 2]", "severities: expected each item once; got [2, 2]"),
    ("severities: [true]", "severities[0]: expected 1, 2 or 3; got true"),
    ("n_bootstrap: x", "n_bootstrap: expected an integer >= 10; got 'x'"),
    ("n_bootstrap: 5", "n_bootstrap: expected an integer >= 10; got 5"),
    ("n_bootstrap: '300'", "n_bootstrap: expected an integer >= 10; got '300' (a quoted"),
    ("mc_passes: -1", "mc_passes: expected an integer >= 2; got -1"),
    ("tests: gaussian_noise", "tests: expected a list of stress test names"),
    ("tests: [gausian_noise]", "tests[0]: expected a stress test name"),
    ("tests: []", "tests: expected at least one stress test; got []"),
    ("threshold: .nan", "threshold: expected a number strictly between 0 and 1; got .nan"),
    ("threshold: 1.5", "threshold: expected a number strictly between 0 and 1; got 1.5"),
    ("threshold: 0", "threshold: expected a number strictly between 0 and 1; got 0"),
    ("checks: [{metric: dice, max_drop: 0.1}, {metric: dise, max_drop: 0.1}]",
     "checks[1].metric: expected a metric name"),
    ("min_slice_n: -1", "min_slice_n: expected an integer >= 0; got -1"),
    ("boundary_tolerance_px: -1", "boundary_tolerance_px: expected a finite number >= 0"),
    ("surface_tolerance_mm: .inf", "surface_tolerance_mm: expected a finite number >= 0"),
    ("lesion_min_overlap: 2", "lesion_min_overlap: expected a number in (0, 1]; got 2"),
    ("size_threshold_px: 0", "size_threshold_px: expected a finite number > 0"),
    ("batch_size: 0", "batch_size: expected an integer >= 1; got 0"),
    ("seed: -1", "seed: expected an integer >= 0; got -1"),
    ("seed: 1.5", "seed: expected an integer >= 0; got 1.5"),
    ("seed: 1.0", "seed: expected an integer >= 0; got 1.0"),
    ("slices: size", "slices: expected a list of size, location, shape, metadata"),
    ("slices: [sizes]", "slices[0]: expected one of size, location, shape, metadata; got 'sizes'"),
    ("uncertainty: tta", "uncertainty: expected a list of tta, mc_dropout"),
    ("uncertainty: [deep_ensemble]", "uncertainty[0]: expected one of tta, mc_dropout"),
    ('mitigate: "yes"', "mitigate: expected true or false; got 'yes'"),
    ("mitigate: 1", "mitigate: expected true or false; got 1"),
    ("modality: ' '", "modality: expected a modality name"),
    ("checks: {metric: dice}", "checks: expected a list of checks"),
    ("checks: [dice]", "checks[0]: expected a mapping such as {metric: dice"),
    ("checks: [{metric: dice}]", "checks[0].max_drop: missing"),
    ("checks: [{metric: dice, max_drop: 0.1, limit: 2}]", "checks[0].limit: unknown key"),
    ("checks: [{metric: dice, max_drop: -0.1}]", "checks[0].max_drop: expected a finite number"),
    ("checks: [{metric: dice, max_drop: 1.5}]",
     "checks[0].max_drop: expected a number in [0, 1] for dice (a 0–1 metric); got 1.5"),
    ("checks: [{metric: dice, max_drop: 0.1, severity: 4}]",
     "checks[0].severity: expected 1, 2 or 3; got 4"),
    ("severities: [3]\nchecks: [{metric: dice, max_drop: 0.1}]",
     "checks[0].severity: expected one of the configured severities [3]"),
]


def _write(tmp_path: Path, text: str | bytes) -> Path:
    path = tmp_path / "suite.yaml"
    if isinstance(text, bytes):
        path.write_bytes(text)
    else:
        path.write_text(text, encoding="utf-8")
    return path


def _one_line(exc: pytest.ExceptionInfo[MedfailInputError]) -> str:
    msg = str(exc.value)
    assert "\n" not in msg and "pydantic" not in msg.lower() and "validation error" not in msg
    return msg


@pytest.mark.parametrize(("text", "fragment"), BAD_OPTIONS, ids=[t for t, _ in BAD_OPTIONS])
def test_bad_option_names_file_path_and_value(tmp_path: Path, text: str, fragment: str) -> None:
    path = _write(tmp_path, text + "\n")
    with pytest.raises(MedfailInputError) as exc:
        SuiteConfig.from_yaml(path)
    msg = _one_line(exc)
    assert msg.startswith(f"{path}: ")
    assert fragment in msg


@pytest.mark.parametrize(("text", "fragment"), [
    ("", "the suite config is empty; expected a mapping of options"),
    ("# only a comment\n", "the suite config is empty"),
    ("- tests\n- severities\n", "expected a mapping of options (e.g. `severities: [1, 2, 3]`); "
                                "got a list"),
    ("gaussian_noise\n", "got a string: 'gaussian_noise'"),
    ("tests: [jpeg\n", "not valid YAML: "),
    ("seed: 1\n\tbatch_size: 2\n", "not valid YAML: "),
    (b"seed: 1\nmodality: \xe9chographie\n", "not UTF-8 text (byte 0xe9"),
    ("seed: 1\nbatch_size: 4\nseed: 2\n", "duplicate key 'seed' (first on line 1) at line 3"),
    ("checks: [{metric: dice, max_drop: 0.1, metric: jaccard}]", "duplicate key 'metric'"),
])
def test_bad_file(tmp_path: Path, text: str | bytes, fragment: str) -> None:
    path = _write(tmp_path, text)
    with pytest.raises(MedfailInputError) as exc:
        SuiteConfig.from_yaml(path)
    msg = _one_line(exc)
    assert msg.startswith(f"{path}: ") and fragment in msg


def test_missing_file_and_unknown_option(tmp_path: Path) -> None:
    with pytest.raises(MedfailInputError, match=r"nope\.yaml: suite config not found"):
        SuiteConfig.from_yaml(tmp_path / "nope.yaml")
    path = _write(tmp_path, "severitys: [2]\n")
    with pytest.raises(MedfailInputError,
                       match=r"suite\.yaml: unknown option\(s\) severitys \(did you mean "
                             r"severities\?\); valid: batch_size"):
        SuiteConfig.from_yaml(path)


def test_all_problems_in_one_error(tmp_path: Path) -> None:
    path = _write(tmp_path, "zzz: 1\nseverities: 2\nbatch_size: 0\nthreshold: 1.5\n"
                            "checks: [{metric: auc, max_drop: 0.1}]\n")
    with pytest.raises(MedfailInputError) as exc:
        SuiteConfig.from_yaml(path)
    msg = _one_line(exc)
    heads = [f"{path}: unknown option(s) zzz; valid: ", "; severities: expected",
             "; batch_size: expected", "; threshold: expected", "; checks[0].metric: expected"]
    where = [msg.find(h) for h in heads]
    assert -1 not in where and where == sorted(where) and msg.count(": expected") == 4


def test_a_string_is_never_iterated_as_characters(tmp_path: Path) -> None:
    with pytest.raises(MedfailInputError) as exc:
        SuiteConfig.from_yaml(_write(tmp_path, "tests: gaussian_noise\n"))
    msg = _one_line(exc)
    assert "'g'" not in msg and "write [gaussian_noise] for a one-item list" in msg
    with pytest.raises(MedfailInputError, match="got 'size' \\(write \\[size\\]"):
        SuiteConfig(slices="size")  # type: ignore[arg-type]


@pytest.mark.parametrize(("kwargs", "fragment"), [
    ({"severities": 2}, "severities: expected a list of 1, 2, 3"),
    ({"tests": "jpeg"}, "tests: expected a list of stress test names"),
    ({"mitigate": "yes"}, "mitigate: expected true or false; got 'yes'"),
    ({"batch_size": "3"}, "batch_size: expected an integer >= 1; got '3'"),
    ({"batch_size": True}, "batch_size: expected an integer >= 1; got true"),
    ({"seed": 2.0}, "seed: expected an integer >= 0; got 2.0"),
    ({"threshold": float("nan")}, "threshold: expected a number strictly between 0 and 1"),
    ({"checks": [{"metric": "dice", "max_drop": 0.05, "severity": "2"}]},
     "checks[0].severity: expected 1, 2 or 3; got '2'"),
])
def test_keyword_construction_is_validated(kwargs: dict[str, object], fragment: str) -> None:
    with pytest.raises(MedfailInputError) as exc:
        SuiteConfig(**kwargs)  # type: ignore[arg-type]
    assert fragment in _one_line(exc)


def test_replace_is_validated() -> None:
    with pytest.raises(MedfailInputError, match="mc_passes: expected an integer >= 2; got 0"):
        replace(SuiteConfig(), mc_passes=0)
    demo = demo_suite("promptable", SuiteConfig())
    assert demo.mc_passes == 4 and "box_loose" in (demo.tests or [])


def test_good_configs_round_trip(tmp_path: Path) -> None:
    assert SuiteConfig().to_dict() == DEFAULT_DICT
    assert json.dumps(SuiteConfig(**CUSTOM).to_dict(), sort_keys=True) == CUSTOM_JSON
    full = {**DEFAULT_DICT, "tests": ["gaussian_noise", "jpeg"], "severities": [3, 1],
            "slices": [], "modality": "MR", "size_threshold_px": 12.5, "uncertainty": ["tta"],
            "threshold": 0.3, "mc_passes": 2, "mitigate": False, "seed": 2**40,
            "checks": [{"metric": "hd95", "max_drop": 5.0, "severity": 3},
                       {"metric": "auroc", "max_drop": 0.0, "severity": 1}]}
    for cfg in (DEFAULT_DICT, full, {**DEFAULT_DICT, **CUSTOM}):
        suite = SuiteConfig(**cfg)
        assert suite.to_dict() == cfg
        path = _write(tmp_path, yaml.safe_dump(cfg))
        assert SuiteConfig.from_yaml(path).to_dict() == cfg
    path = _write(tmp_path, "{}\n")
    assert SuiteConfig.from_yaml(path).to_dict() == DEFAULT_DICT


def test_yaml_reading_details(tmp_path: Path) -> None:
    path = _write(tmp_path, "threshold: 1e-3\nn_bootstrap: 1_000\nmitigate: no\n")
    suite = SuiteConfig.from_yaml(path)
    assert suite.threshold == 0.001 and suite.n_bootstrap == 1000 and suite.mitigate is False
    bom = _write(tmp_path, "\ufeffseed: 3\n".encode())
    assert SuiteConfig.from_yaml(bom).seed == 3


def test_overrides_are_validated_and_named(tmp_path: Path) -> None:
    path = _write(tmp_path, "seed: 3\nbatch_size: 8\n")
    suite = SuiteConfig.from_yaml(path, seed=5, batch_size=None)
    assert (suite.seed, suite.batch_size) == (5, 8)
    with pytest.raises(MedfailInputError) as exc:
        SuiteConfig.from_yaml(path, seed=-1, batch_size=0)
    assert str(exc.value) == ("--batch-size: expected an integer >= 1; got 0; "
                              "--seed: expected an integer >= 0; got -1")
    with pytest.raises(MedfailInputError, match=r"^--seed: expected"):
        SuiteConfig.from_yaml(None, seed=-2)
    assert SuiteConfig.from_yaml(None, seed=4).to_dict() == {**DEFAULT_DICT, "seed": 4}


def test_check_metric_must_fit_the_task(tmp_path: Path) -> None:
    path = _write(tmp_path, "checks: [{metric: dice, max_drop: 0.1}, "
                            "{metric: auroc, max_drop: 0.1}]\n")
    suite = SuiteConfig.from_yaml(path)  # both exist for some task: fine at load time
    with pytest.raises(MedfailInputError) as exc:
        suite.check_task("segmentation")
    assert _one_line(exc) == (f"{path}: checks[1].metric: expected a segmentation metric (dice, "
                              "jaccard, boundary_f1, nsd, hd95, lesion_f1, lesion_sensitivity, "
                              "lesion_precision); got 'auroc'")
    with pytest.raises(MedfailInputError, match=r"checks\[0\]\.metric: expected a classification"):
        suite.check_task("classification")
    SuiteConfig(checks=[{"metric": "hd95", "max_drop": 3}]).check_task("promptable")


def test_run_suite_refuses_a_check_for_another_task(seg_folder: Path, tmp_path: Path) -> None:
    from medfail.data.datasets import open_dataset

    spec = ModelSpec(task="segmentation", target_names=["lesion"], output="probabilities")
    seen: list[int] = []

    def forward(x: torch.Tensor) -> torch.Tensor:
        seen.append(len(x))
        return torch.cat([1 - x[:, :1] * 0, x[:, :1] * 0], dim=1)

    config = SuiteConfig(tests=["jpeg"], checks=[{"metric": "f1", "max_drop": 0.1}])
    with pytest.raises(MedfailInputError, match=r"checks\[0\]\.metric: expected a segmentation"):
        run_suite(Segmenter(spec, forward), open_dataset(seg_folder, "segmentation"),
                  tmp_path / "run", config, progress=False)
    assert not seen and not (tmp_path / "run").exists()


runner = CliRunner()


@pytest.mark.parametrize(("config", "args", "fragment"), [
    ("severities: 2\n", [], "suite.yaml: severities: expected a list of 1, 2, 3"),
    ("seed: 1\nseed: 2\n", [], "suite.yaml: not valid YAML: duplicate key 'seed'"),
    ("checks: [{metric: dice, max_drop: 0.1}]\n", ["--task", "classification"],
     "suite.yaml: checks[0].metric: expected a classification metric"),
    ("seed: 1\n", ["--batch-size", "0"], "--batch-size: expected an integer >= 1; got 0"),
    (None, ["--seed", "-1"], "--seed: expected an integer >= 0; got -1"),
])
def test_cli_run_fails_on_a_bad_config_before_the_model(tmp_path: Path, config: str | None,
                                                         args: list[str], fragment: str) -> None:
    # The model file does not exist: reaching the model loader would give another error.
    cmd = ["run", "--model", str(tmp_path / "missing.pt"), "--data", str(tmp_path / "data"),
           "--out", str(tmp_path / "run"), "--quiet", *args]
    if "--task" not in args:
        cmd += ["--task", "segmentation"]
    if config is not None:
        cmd += ["--config", str(_write(tmp_path, config))]
    result = runner.invoke(app, cmd)
    lines = result.output.strip().splitlines()
    assert result.exit_code == 2, result.output
    assert len(lines) == 1 and lines[0].startswith("error: ") and fragment in lines[0]
    assert "missing.pt" not in result.output and not (tmp_path / "run").exists()
