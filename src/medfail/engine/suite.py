"""The suite configuration (``--config suite.yaml``) and the conditions it expands to.

Example ``suite.yaml`` (every option with its type and range: docs/suite_config.md)::

    tests: [gaussian_noise, gaussian_blur, jpeg]   # default: every test that applies
    severities: [1, 2, 3]
    slices: [size, location, shape, metadata]       # default: all four kinds
    modality: CT            # default: from the data (DICOM Modality), else "any"-tests only
    batch_size: 16          # 2D images; volumes always go one at a time
    n_bootstrap: 1000
    threshold: 0.5          # f1 threshold when no calibration split is given
    boundary_tolerance_px: 2.0 # boundary_f1 tolerance (px); also nsd's when spacing is unknown
    surface_tolerance_mm: 2.0  # nsd tolerance when every sample has a pixel spacing
    min_slice_n: 10         # slices with fewer samples are flagged (never hidden)
    uncertainty: [tta, mc_dropout]  # extra-pass methods run on clean images (stored conditions)
    mc_passes: 8
    mitigate: true          # measure mitigations on the top breaking condition
    checks:                 # pass/fail conditions for the deployment checklist
      - {metric: dice, max_drop: 0.05, severity: 2}   # default: primary metric, 0.05, sev. 2

Validation: one pydantic schema (:class:`_Schema`) checks every option on keyword construction,
:func:`dataclasses.replace` and :meth:`SuiteConfig.from_yaml` (file options and command-line
overrides alike). Types are strict: ``"yes"`` is not ``true``, ``"3"`` is not ``3``, ``1.0`` is not
an integer. List options take YAML lists only: ``severities: 2`` and ``tests: jpeg`` are errors
whose message shows the list to write (``[2]``, ``[jpeg]``); a string is never iterated as
characters. Every problem is reported at once, one ``option path: expected …; got …`` clause per
problem, in a single :class:`MedfailInputError` that names the file. Validation never rewrites a
valid value (``to_dict()`` and so the cache key stay as before); only tuples become lists.

Which tests apply: a test applies to a task and modality when its family fits the task (``prompt``
tests only for promptable segmenters), its ``modalities`` contain ``any`` or the data's
modality, and its ``dims`` contain the data's spatial dims (2D images or 3D volumes). Listing a
test that does not apply is an error that says why. A check metric unknown to every task is an
error at load time; one that exists but not for the run's task is an error when the task is
known (:meth:`SuiteConfig.check_task`, called by ``run_suite`` and ``medfail run``).
"""

from __future__ import annotations

import difflib
import math
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Annotated, Any, ClassVar, NotRequired

import yaml
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError
from pydantic_core import PydanticCustomError
from typing_extensions import TypedDict  # pydantic needs it on Python < 3.12

from medfail.analysis.per_sample import CLASSIFICATION_METRICS, SEGMENTATION_METRICS
from medfail.conditions import Condition
from medfail.errors import MedfailInputError
from medfail.stress import registry
from medfail.stress.registry import CLEAN

CLEAN_CONDITION = Condition(CLEAN, CLEAN, CLEAN, 0)
SLICE_KINDS: tuple[str, ...] = ("size", "location", "shape", "metadata")
UNCERTAINTY_METHODS: tuple[str, ...] = ("tta", "mc_dropout")
#: The metrics a check may name, per task (the ``metrics.parquet`` metrics of that task).
CHECK_METRICS: dict[str, tuple[str, ...]] = {
    "classification": CLASSIFICATION_METRICS, "segmentation": SEGMENTATION_METRICS,
    "promptable": SEGMENTATION_METRICS}
ALL_CHECK_METRICS: tuple[str, ...] = (*SEGMENTATION_METRICS, *CLASSIFICATION_METRICS)
#: Check metrics not on a 0–1 scale (so ``max_drop`` may exceed 1): hd95 is in px or mm.
UNBOUNDED_METRICS = frozenset({"hd95"})
CHECK_KEYS: tuple[str, ...] = ("metric", "max_drop", "severity")
DEFAULT_CHECK_SEVERITY = 2


def test_dims(test: registry.Perturbation) -> tuple[int, ...]:
    """The spatial dims a test takes (its ``dims``: 2 = images, 3 = volumes)."""
    return tuple(getattr(test, "dims", (2,)))


def applies(test: registry.Perturbation, task: str, modality: str,
            dims: int = 2) -> tuple[bool, str]:
    """Whether ``test`` applies to ``task`` on ``dims``-D data of ``modality`` (and why not)."""
    if dims not in test_dims(test):
        kinds = " and ".join("2D images" if d == 2 else "3D volumes" for d in test_dims(test))
        data = "3D volumes" if dims == 3 else "2D images"
        return False, f"it applies to {kinds} only and the data are {data}"
    if test.family == "prompt" and task != "promptable":
        return False, "prompt perturbations need a promptable segmenter (--task promptable)"
    wanted = {m.lower() for m in test.modalities}
    if "any" in wanted or (modality and modality.lower() in wanted):
        return True, ""
    return False, (f"it needs {'/'.join(test.modalities)} data but the data modality is "
                   f"{modality or 'unknown'} (set `modality:` in the suite config if it is)")


# ---------------------------------------------------------------------------------------------
# The schema (pydantic v2, strict). Error messages are not pydantic's: _describe builds them
# from EXPECTED (what an option takes) and the bad value.


def _one_of(choices: Sequence[str] | Callable[[], Sequence[str]]) -> AfterValidator:
    """A name among ``choices`` (a callable is asked at validation time: the registry)."""
    def check(value: str) -> str:
        if value not in (choices() if callable(choices) else choices):
            raise PydanticCustomError("unknown_name", "unknown name")
        return value
    return AfterValidator(check)


def _distinct(values: list[Any]) -> list[Any]:
    repeated = [v for i, v in enumerate(values) if v in values[:i]]
    if repeated:
        raise PydanticCustomError("repeated", "repeated item", {"repeated": repeated[0]})
    return values


def _not_blank(value: str) -> str:
    if not value.strip():
        raise PydanticCustomError("blank", "blank")
    return value


Severity = Annotated[int, Field(ge=1, le=3)]
Finite = Field(allow_inf_nan=False)


class _Check(TypedDict):
    __pydantic_config__ = ConfigDict(strict=True, extra="forbid")  # type: ignore[misc]

    metric: Annotated[str, _one_of(ALL_CHECK_METRICS)]
    max_drop: Annotated[float, Field(ge=0, allow_inf_nan=False)]
    severity: NotRequired[Severity]


class _Schema(BaseModel):
    """Every option of :class:`SuiteConfig` (all given: defaults come from the dataclass)."""

    model_config = ConfigDict(strict=True, extra="forbid")

    tests: Annotated[list[Annotated[str, _one_of(registry.names)]], Field(min_length=1),
                     AfterValidator(_distinct)] | None
    severities: Annotated[list[Severity], Field(min_length=1), AfterValidator(_distinct)]
    slices: Annotated[list[Annotated[str, _one_of(SLICE_KINDS)]], AfterValidator(_distinct)]
    modality: Annotated[str, AfterValidator(_not_blank)] | None
    batch_size: Annotated[int, Field(ge=1)]
    n_bootstrap: Annotated[int, Field(ge=10)]
    threshold: Annotated[float, Field(gt=0, lt=1), Finite]
    boundary_tolerance_px: Annotated[float, Field(ge=0), Finite]
    surface_tolerance_mm: Annotated[float, Field(ge=0), Finite]
    min_slice_n: Annotated[int, Field(ge=0)]
    size_threshold_px: Annotated[float, Field(gt=0), Finite] | None
    lesion_min_overlap: Annotated[float, Field(gt=0, le=1), Finite]
    uncertainty: Annotated[list[Annotated[str, _one_of(UNCERTAINTY_METHODS)]],
                           AfterValidator(_distinct)]
    mc_passes: Annotated[int, Field(ge=2)]
    mitigate: bool
    checks: list[_Check]
    seed: Annotated[int, Field(ge=0)]


_EXAMPLE_CHECK = "{metric: dice, max_drop: 0.05, severity: 2}"
#: What each option takes (the ``expected …`` of a message; docs/suite_config.md says the same).
EXPECTED: dict[str, str] = {
    "tests": "a list of stress test names, e.g. [gaussian_noise, jpeg] (omit it or write null "
             "for every test that applies)",
    "severities": "a list of 1, 2, 3 (e.g. [1, 2, 3])",
    "slices": f"a list of {', '.join(SLICE_KINDS)} (e.g. [size, metadata]; [] for none)",
    "modality": "a modality name such as CT, MR or histology (null: from the data)",
    "batch_size": "an integer >= 1",
    "n_bootstrap": "an integer >= 10",
    "threshold": "a number strictly between 0 and 1",
    "boundary_tolerance_px": "a finite number >= 0 (pixels)",
    "surface_tolerance_mm": "a finite number >= 0 (mm)",
    "min_slice_n": "an integer >= 0",
    "size_threshold_px": "a finite number > 0 (pixels), or null for the median lesion size",
    "lesion_min_overlap": "a number in (0, 1]",
    "uncertainty": f"a list of {', '.join(UNCERTAINTY_METHODS)} (e.g. [tta]; [] for none)",
    "mc_passes": "an integer >= 2",
    "mitigate": "true or false",
    "checks": f"a list of checks, e.g. [{_EXAMPLE_CHECK}] ([] for the default check)",
    "seed": "an integer >= 0",
}
_ITEM_EXPECTED: dict[str, str] = {
    "severities": "1, 2 or 3",
    "slices": f"one of {', '.join(SLICE_KINDS)}",
    "uncertainty": f"one of {', '.join(UNCERTAINTY_METHODS)}",
    "checks": f"a mapping such as {_EXAMPLE_CHECK}",
}
_CHECK_EXPECTED: dict[str, str] = {
    "metric": (f"a metric name (segmentation: {', '.join(SEGMENTATION_METRICS)}; "
               f"classification: {', '.join(CLASSIFICATION_METRICS)})"),
    "max_drop": "a finite number >= 0 (the largest allowed drop; at most 1 for 0–1 metrics)",
    "severity": "1, 2 or 3",
}
_LIST_OPTIONS = ("tests", "severities", "slices", "uncertainty", "checks")


def _show(value: Any, limit: int = 80, quote: bool = True) -> str:
    """A value as a YAML user would write it (strings quoted unless ``quote`` is False)."""
    if isinstance(value, bool):
        text = "true" if value else "false"
    elif value is None:
        text = "null"
    elif isinstance(value, float) and not math.isfinite(value):
        text = ".nan" if math.isnan(value) else ("-.inf" if value < 0 else ".inf")
    elif isinstance(value, str):
        text = repr(value) if quote else value
    elif isinstance(value, list | tuple):
        text = "[" + ", ".join(_show(v, limit, quote) for v in value) + "]"
    elif isinstance(value, Mapping):
        text = "{" + ", ".join(f"{k}: {_show(v, limit, quote)}" for k, v in value.items()) + "}"
    else:
        text = repr(value)
    return text if len(text) <= limit else text[:limit - 1] + "…"


def _did_you_mean(value: Any, choices: Sequence[str]) -> str:
    if not isinstance(value, str):
        return ""
    close = difflib.get_close_matches(value, choices, n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _hint(kind: str, value: Any, list_option: bool) -> str:
    """Why a value of the right look is still wrong (a scalar for a list, a quoted number)."""
    if list_option and kind == "list_type" and value is not None:
        return f" (write [{_show(value, quote=False)}] for a one-item list)"
    if isinstance(value, str) and kind in ("int_type", "float_type", "bool_type"):
        try:
            unquoted = yaml.load(value, Loader=_Loader)
        except yaml.YAMLError:
            unquoted = value
        if not isinstance(unquoted, str):
            return " (a quoted string; write the value without quotes)"
    if kind == "float_type" and isinstance(value, bool):
        return " (a boolean)"
    return ""


def _describe(err: Mapping[str, Any], labels: Mapping[str, str]) -> str:
    """One ``path: expected …; got …`` clause for a pydantic error."""
    loc, kind, value = tuple(err["loc"]), err["type"], err.get("input")
    option = str(loc[0])
    path = labels.get(option, option) + "".join(
        f"[{p}]" if isinstance(p, int) else f".{p}" for p in loc[1:])
    if option == "checks" and len(loc) == 3:  # checks[i].key
        key = str(loc[2])
        if kind == "extra_forbidden":
            return f"{path}: unknown key; expected only {', '.join(CHECK_KEYS)}"
        if kind == "missing":
            return f"{path}: missing; expected {_CHECK_EXPECTED[key]}"
        expected = _CHECK_EXPECTED[key]
        extra = _did_you_mean(value, ALL_CHECK_METRICS) if key == "metric" else ""
        return f"{path}: expected {expected}; got {_show(value)}{extra}{_hint(kind, value, False)}"
    if len(loc) == 2:  # an item of a list option
        if option == "tests":
            names = registry.names()
            return (f"{path}: expected a stress test name (see `medfail list`: "
                    f"{', '.join(names)}); got {_show(value)}{_did_you_mean(value, names)}")
        choices = SLICE_KINDS if option == "slices" else UNCERTAINTY_METHODS
        extra = _did_you_mean(value, choices) if option in ("slices", "uncertainty") else ""
        return (f"{path}: expected {_ITEM_EXPECTED[option]}; got {_show(value)}{extra}"
                f"{_hint(kind, value, False)}")
    if kind == "repeated":
        return (f"{path}: expected each item once; got {_show(value)} "
                f"({_show(err['ctx']['repeated'])} repeated)")
    hint = _hint(kind, value, option in _LIST_OPTIONS)
    if kind == "too_short" and option == "tests":
        return f"{path}: expected at least one stress test; got [] (omit `tests` to run every " \
               "test that applies)"
    return f"{path}: expected {EXPECTED[option]}; got {_show(value)}{hint}"


def _problems(values: Mapping[str, Any], labels: Mapping[str, str] | None = None) -> list[str]:
    """Every problem of a complete option mapping, one clause each, in option order."""
    labels = labels or {}
    problems: list[str] = []
    failed: set[str] = set()
    try:
        _Schema.model_validate(dict(values))
    except ValidationError as exc:
        seen: set[tuple[Any, ...]] = set()
        for err in exc.errors():
            if tuple(err["loc"]) not in seen:
                seen.add(tuple(err["loc"]))
                failed.add(str(err["loc"][0]))
                problems.append(_describe(err, labels))
    if "checks" in failed:
        return problems
    label = labels.get("checks", "checks")
    for i, check in enumerate(values["checks"]):
        metric, drop = check["metric"], check["max_drop"]
        if metric not in UNBOUNDED_METRICS and drop > 1:
            problems.append(f"{label}[{i}].max_drop: expected a number in [0, 1] for {metric} "
                            f"(a 0–1 metric); got {_show(drop)}")
        severity = check.get("severity", DEFAULT_CHECK_SEVERITY)
        if "severities" not in failed and severity not in values["severities"]:
            default = "" if "severity" in check else " (the default)"
            problems.append(f"{label}[{i}].severity: expected one of the configured severities "
                            f"{_show(values['severities'])} (else the check evaluates nothing); "
                            f"got {severity}{default}")
    return problems


# ---------------------------------------------------------------------------------------------
# Reading suite.yaml: strict UTF-8, duplicate keys refused, 1e-3 read as a number.


class _Loader(yaml.SafeLoader):
    """PyYAML's safe loader, refusing duplicate keys and reading ``1e-3`` as a float (YAML 1.2;
    PyYAML's YAML 1.1 rules would make it the string '1e-3')."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        first: dict[str, int] = {}
        for key_node, _ in node.value:
            if isinstance(key_node, yaml.ScalarNode) and key_node.tag != "tag:yaml.org,2002:merge":
                key = key_node.value
                if key in first:
                    raise yaml.constructor.ConstructorError(
                        None, None, f"duplicate key {key!r} (first on line {first[key] + 1})",
                        key_node.start_mark)
                first[key] = key_node.start_mark.line
        return super().construct_mapping(node, deep=deep)


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*(?:\.[0-9_]*)?|\.[0-9_]+)[eE][-+]?[0-9]+$"),
    list("-+0123456789."))


def _read_yaml(path: Path) -> Any:
    """The parsed document; every failure is one MedfailInputError line naming ``path``."""
    try:
        raw = path.read_bytes()
    except FileNotFoundError as exc:
        raise MedfailInputError(path, "suite config not found") from exc
    except OSError as exc:
        raise MedfailInputError(path, f"cannot read suite config ({exc.strerror or exc})") from exc
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise MedfailInputError(path, f"not UTF-8 text (byte 0x{raw[exc.start]:02x} at offset "
                                f"{exc.start}); save the suite config as UTF-8") from exc
    try:
        return yaml.load(text, Loader=_Loader)  # a SafeLoader subclass
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise MedfailInputError(path, f"not valid YAML: {exc.problem}{where}") from exc
    except yaml.YAMLError as exc:
        raise MedfailInputError(path, f"not valid YAML: {str(exc).splitlines()[0]}") from exc


def _kind(value: Any) -> str:
    return {list: "a list", str: "a string", bool: "a boolean", int: "a number",
            float: "a number"}.get(type(value), type(value).__name__)


@dataclass
class SuiteConfig:
    """Which conditions to run and how to summarise them (validated on construction)."""

    tests: list[str] | None = None
    severities: list[int] = field(default_factory=lambda: [1, 2, 3])
    slices: list[str] = field(default_factory=lambda: list(SLICE_KINDS))
    modality: str | None = None
    batch_size: int = 16
    n_bootstrap: int = 1000
    threshold: float = 0.5
    boundary_tolerance_px: float = 2.0
    surface_tolerance_mm: float = 2.0
    min_slice_n: int = 10
    size_threshold_px: float | None = None
    lesion_min_overlap: float = 0.1
    uncertainty: list[str] = field(default_factory=lambda: ["tta", "mc_dropout"])
    mc_passes: int = 8
    mitigate: bool = True
    checks: list[dict[str, Any]] = field(default_factory=list)
    seed: int = 0

    #: The file the config was read from (messages name it); not an option, not in to_dict().
    source: ClassVar[str | None] = None

    def __post_init__(self) -> None:
        for name in _LIST_OPTIONS:
            if isinstance(getattr(self, name), tuple):
                setattr(self, name, list(getattr(self, name)))
        problems = _problems({f.name: getattr(self, f.name) for f in fields(self)})
        if problems:
            raise MedfailInputError(None, "; ".join(problems))

    @classmethod
    def from_yaml(cls, path: str | Path | None, **overrides: Any) -> SuiteConfig:
        """The config of ``path`` (None: the defaults) with ``overrides`` (command-line options,
        named ``--option`` in messages; None values ignored) on top, all validated together."""
        data: Any = {}
        if path is not None:
            path = Path(path)
            data = _read_yaml(path)
            example = "e.g. `severities: [1, 2, 3]`"
            if data is None:
                raise MedfailInputError(path, f"the suite config is empty; expected a mapping of "
                                        f"options ({example}; `{{}}` for the defaults)")
            if not isinstance(data, dict):
                raise MedfailInputError(path, f"expected a mapping of options ({example}); got "
                                        f"{_kind(data)}: {_show(data)}")
        known = [f.name for f in fields(cls)]
        problems = []
        unknown = [str(k) for k in data if k not in known]
        if unknown:
            named = [k + _did_you_mean(k, known).replace("'", "") for k in unknown]
            problems.append(f"unknown option(s) {', '.join(named)}; valid: "
                            f"{', '.join(sorted(known))}")
        given = {k: list(v) if isinstance(v, tuple) else v
                 for k, v in overrides.items() if v is not None}
        bad_overrides = [k for k in given if k not in known]
        if bad_overrides:
            raise TypeError(f"unknown override(s) {', '.join(bad_overrides)}")
        defaults = cls()
        values = {f.name: getattr(defaults, f.name) for f in fields(cls)}
        values.update({k: v for k, v in data.items() if k in known})
        values.update(given)
        problems += _problems(values, {k: "--" + k.replace("_", "-") for k in given})
        if problems:
            only_overrides = path is None or all(p.startswith("--") for p in problems)
            raise MedfailInputError(None if only_overrides else path, "; ".join(problems))
        suite = cls(**values)
        suite.source = None if path is None else str(path)
        return suite

    def check_task(self, task: str) -> None:
        """Refuse check metrics that ``task``'s runs do not compute (e.g. ``auroc`` for a
        segmenter): known only once the task is, so ``run_suite`` and ``medfail run`` call it."""
        valid = CHECK_METRICS.get(task)
        if valid is None:
            return
        problems = [f"checks[{i}].metric: expected a {task} metric ({', '.join(valid)}); got "
                    f"{c['metric']!r}" for i, c in enumerate(self.checks)
                    if c["metric"] not in valid]
        if problems:
            raise MedfailInputError(self.source, "; ".join(problems))

    def test_names(self, task: str = "segmentation", modality: str = "",
                   dims: int = 2) -> list[str]:
        """The tests to run: the configured ones (checked) or every test that applies (to
        ``dims``-D data: 2 = images, 3 = volumes, the stress catalogue's ``dims``)."""
        if self.tests is None:
            return [n for n in registry.names()
                    if applies(registry.get(n), task, modality, dims)[0]]
        for i, name in enumerate(self.tests):
            ok, why = applies(registry.get(name), task, modality, dims)
            if not ok:
                raise MedfailInputError(self.source,
                                        f"tests[{i}]: stress test {name!r} does not apply: {why}")
        return list(self.tests)

    def conditions(self, task: str = "segmentation", modality: str = "",
                   dims: int = 2) -> list[Condition]:
        """``clean`` first, then every test at every severity, in config order."""
        out = [CLEAN_CONDITION]
        for name in self.test_names(task, modality, dims):
            test = registry.get(name)
            for sev in self.severities:
                out.append(Condition(registry.condition_name(test, sev), name, test.family, sev))
        return out

    def to_dict(self) -> dict[str, Any]:
        """Every option (not ``source``): run.json's ``config`` and the cache key's input."""
        return asdict(self)

    def method_conditions(self) -> list[Condition]:
        """Extra-pass uncertainty methods on clean images (family ``uncertainty``)."""
        return [Condition(m, m, "uncertainty", 0, method=m, base=CLEAN_CONDITION)
                for m in self.uncertainty]
