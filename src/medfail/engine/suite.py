"""The suite configuration (``--config suite.yaml``) and the conditions it expands to.

Example ``suite.yaml``::

    tests: [gaussian_noise, gaussian_blur, jpeg, brightness, contrast]   # default: all
    severities: [1, 2, 3]
    batch_size: 16
    n_bootstrap: 1000
    threshold: 0.5          # classification decision threshold for f1
    boundary_tolerance_px: 2.0
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
    """A stress test at a severity; ``clean`` is severity 0 of every test."""

    name: str
    test: str
    family: str
    severity: int


CLEAN_CONDITION = Condition(CLEAN, CLEAN, CLEAN, 0)


@dataclass
class SuiteConfig:
    """Which conditions to run and how to summarise them."""

    tests: list[str] = field(default_factory=lambda: registry.names())
    severities: list[int] = field(default_factory=lambda: [1, 2, 3])
    batch_size: int = 16
    n_bootstrap: int = 1000
    threshold: float = 0.5
    boundary_tolerance_px: float = 2.0
    seed: int = 0

    def __post_init__(self) -> None:
        for name in self.tests:
            registry.get(name)  # raises with the list of valid names
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

    def conditions(self) -> list[Condition]:
        """``clean`` first, then every test at every severity, in config order."""
        out = [CLEAN_CONDITION]
        for name in self.tests:
            test = registry.get(name)
            for sev in self.severities:
                out.append(Condition(registry.condition_name(test, sev), name, test.family, sev))
        return out

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)
