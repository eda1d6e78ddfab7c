"""The suite configuration (``--config suite.yaml``) and the conditions it expands to.

Example ``suite.yaml``::

    tests: [gaussian_noise, gaussian_blur, jpeg]   # default: every test that applies
    severities: [1, 2, 3]
    slices: [size, location, shape, metadata]       # default: all four kinds
    modality: CT            # default: from the data (DICOM Modality), else "any"-tests only
    batch_size: 16
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

Which tests apply: a test applies to a task and modality when its family fits the task (``prompt``
tests only for promptable segmenters) and its ``modalities`` contain ``any`` or the data's
modality. Listing a test that does not apply is an error that says why.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import yaml

from medfail.errors import MedfailInputError
from medfail.stress import registry
from medfail.stress.registry import CLEAN


@dataclass(frozen=True)
class Condition:
    """A stress test at a severity; ``clean`` is severity 0 of every test.

    ``method`` is how predictions are made: ``plain`` (one forward pass), ``tta``,
    ``mc_dropout`` or ``morphology`` (post-processing of ``base``'s stored predictions).
    ``base`` is the stress condition whose inputs a method variant uses (None = itself).
    """

    name: str
    test: str
    family: str
    severity: int
    method: str = "plain"
    base: Condition | None = None

    @property
    def source(self) -> Condition:
        """The stress condition that defines this condition's inputs."""
        return self.base if self.base is not None else self


CLEAN_CONDITION = Condition(CLEAN, CLEAN, CLEAN, 0)
SLICE_KINDS: tuple[str, ...] = ("size", "location", "shape", "metadata")
UNCERTAINTY_METHODS: tuple[str, ...] = ("tta", "mc_dropout")


def applies(test: registry.StressTest, task: str, modality: str) -> tuple[bool, str]:
    """Whether ``test`` applies to ``task`` on data of ``modality`` (and why not)."""
    if test.family == "prompt" and task != "promptable":
        return False, "prompt perturbations need a promptable segmenter (--task promptable)"
    wanted = {m.lower() for m in test.modalities}
    if "any" in wanted or (modality and modality.lower() in wanted):
        return True, ""
    return False, (f"it needs {'/'.join(test.modalities)} data but the data modality is "
                   f"{modality or 'unknown'} (set `modality:` in the suite config if it is)")


@dataclass
class SuiteConfig:
    """Which conditions to run and how to summarise them."""

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

    def __post_init__(self) -> None:
        for name in self.tests or []:
            registry.get(name)  # raises with the list of valid names
        bad_methods = [m for m in self.uncertainty if m not in UNCERTAINTY_METHODS]
        if bad_methods:
            raise MedfailInputError(None, f"unknown uncertainty method(s) {bad_methods}; valid: "
                                    f"{', '.join(UNCERTAINTY_METHODS)}")
        unknown = [k for k in self.slices if k not in SLICE_KINDS]
        if unknown:
            raise MedfailInputError(
                None, f"unknown slice kind(s) {unknown}; valid: {', '.join(SLICE_KINDS)}")
        for check in self.checks:
            if not isinstance(check, dict) or set(check) - {"metric", "max_drop", "severity"} \
                    or not {"metric", "max_drop"} <= set(check):
                raise MedfailInputError(None, f"each check needs metric and max_drop (optional "
                                        f"severity), e.g. {{metric: dice, max_drop: 0.05, "
                                        f"severity: 2}}; got {check!r}")
        bad = [s for s in self.severities if s not in (1, 2, 3)]
        if bad:
            raise MedfailInputError(None, f"severities must be 1, 2 or 3, got {bad}")
        if self.batch_size < 1 or self.n_bootstrap < 10:
            raise MedfailInputError(None, "batch_size must be >= 1 and n_bootstrap >= 10")

    @classmethod
    def from_yaml(cls, path: str | Path, **overrides: Any) -> SuiteConfig:
        path = Path(path)
        try:
            data = yaml.safe_load(path.read_text()) or {}
        except (OSError, yaml.YAMLError) as exc:
            raise MedfailInputError(path, f"cannot read suite config ({exc})") from exc
        if not isinstance(data, dict):
            raise MedfailInputError(path, "suite config must be a mapping of options")
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise MedfailInputError(
                path, f"unknown option(s) {', '.join(unknown)}; valid: {', '.join(sorted(known))}")
        data.update({k: v for k, v in overrides.items() if v is not None})
        try:
            return cls(**data)
        except MedfailInputError as exc:
            raise MedfailInputError(path, exc.problem) from exc

    def test_names(self, task: str = "segmentation", modality: str = "") -> list[str]:
        """The tests to run: the configured ones (checked) or every test that applies."""
        if self.tests is None:
            return [n for n in registry.names() if applies(registry.get(n), task, modality)[0]]
        for name in self.tests:
            ok, why = applies(registry.get(name), task, modality)
            if not ok:
                raise MedfailInputError(None, f"stress test {name!r} does not apply: {why}")
        return list(self.tests)

    def conditions(self, task: str = "segmentation", modality: str = "") -> list[Condition]:
        """``clean`` first, then every test at every severity, in config order."""
        out = [CLEAN_CONDITION]
        for name in self.test_names(task, modality):
            test = registry.get(name)
            for sev in self.severities:
                out.append(Condition(registry.condition_name(test, sev), name, test.family, sev))
        return out

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def method_conditions(self) -> list[Condition]:
        """Extra-pass uncertainty methods on clean images (family ``uncertainty``)."""
        return [Condition(m, m, "uncertainty", 0, method=m, base=CLEAN_CONDITION)
                for m in self.uncertainty]
