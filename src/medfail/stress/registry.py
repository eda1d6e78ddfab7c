"""The stress-test registry: every perturbation medfail can apply, with its fixed severities.

A :class:`StressTest` names a perturbation, files it in a family (``"corruption"`` today,
``"domain_shift"`` and ``"prompt"`` later) and a failure taxonomy, and carries exactly three
parameter dicts for severities 1..3. Severity 0 is always the identity (the clean condition).

A *condition* is a test at a severity, written ``"<test>@<severity>"`` (``"gaussian_noise@2"``);
severity 0 of every test is the single condition ``"clean"``.

The batched function ``StressTest.apply`` has the signature::

    apply(images, value_range, params, rngs) -> images
        images:      torch.Tensor (N, C, H, W) float32 in native units, on any device
        value_range: torch.Tensor (N, 2) with each image's (lo, hi), same device
        params:      the severity's parameter dict
        rngs:        N numpy generators, one per image (all randomness comes from them)

and returns a new tensor of the same shape, device and dtype, in native units within ``[lo, hi]``.
"""

from __future__ import annotations

import operator
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, overload

from medfail.errors import MedfailInputError

if TYPE_CHECKING:
    import numpy as np
    import torch

    ApplyFn = Callable[
        [torch.Tensor, torch.Tensor, Mapping[str, Any], Sequence[np.random.Generator]],
        torch.Tensor,
    ]

FAMILIES: tuple[str, ...] = ("corruption", "domain_shift", "prompt")
TAXONOMIES: tuple[str, ...] = ("data", "model", "evaluation", "human_factors")
N_SEVERITIES = 3
CLEAN = "clean"

_NAME_RE = re.compile(r"^[a-z][a-z0-9_]*$")


@dataclass(frozen=True)
class StressTest:
    """One registered stress test.

    Attributes:
        name: unique snake_case id (``"gaussian_noise"``).
        family: ``"corruption"``, ``"domain_shift"`` or ``"prompt"``.
        taxonomy: failure taxonomy: ``"data"``, ``"model"``, ``"evaluation"`` or
            ``"human_factors"``.
        modalities: modalities it applies to, ``("any",)`` for all.
        severities: exactly three parameter dicts, for severities 1, 2 and 3.
        description: one line for ``medfail list`` and the report.
        unit: what the parameter means (``"noise std as a fraction of (hi - lo)"``).
        apply: the batched torch function (see the module docstring for its signature).
    """

    name: str
    family: str
    taxonomy: str
    modalities: tuple[str, ...]
    severities: tuple[dict[str, Any], ...] = field(hash=False)
    description: str
    unit: str
    apply: ApplyFn = field(compare=False, repr=False)

    def __post_init__(self) -> None:
        if not _NAME_RE.match(self.name) or self.name == CLEAN:
            raise ValueError(f"invalid stress test name {self.name!r} (snake_case, not 'clean')")
        if self.family not in FAMILIES:
            raise ValueError(f"{self.name}: family must be one of {FAMILIES}, got {self.family!r}")
        if self.taxonomy not in TAXONOMIES:
            raise ValueError(
                f"{self.name}: taxonomy must be one of {TAXONOMIES}, got {self.taxonomy!r}"
            )
        if len(self.severities) != N_SEVERITIES:
            raise ValueError(
                f"{self.name}: needs exactly {N_SEVERITIES} severities, got {len(self.severities)}"
            )
        # Freeze the containers we were given (copies, so callers cannot mutate them later).
        object.__setattr__(self, "modalities", tuple(self.modalities))
        object.__setattr__(self, "severities", tuple(dict(p) for p in self.severities))
        if not callable(self.apply):
            raise ValueError(f"{self.name}: apply must be callable")

    def params(self, severity: int) -> dict[str, Any]:
        """A copy of the parameter dict for ``severity`` 1..3 (empty for severity 0)."""
        sev = _check_severity(severity)
        return {} if sev == 0 else dict(self.severities[sev - 1])


REGISTRY: dict[str, StressTest] = {}


@overload
def register(test: StressTest, /) -> StressTest: ...


@overload
def register(test: None = None, /, **fields: Any) -> Callable[[ApplyFn], ApplyFn]: ...


def register(
    test: StressTest | None = None, /, **fields: Any
) -> StressTest | Callable[[ApplyFn], ApplyFn]:
    """Add a stress test to :data:`REGISTRY`.

    Either call it with a ready :class:`StressTest` (returns it), or use it as a decorator on the
    batched function, passing every other field as keywords::

        @register(name="my_test", family="corruption", taxonomy="data", modalities=("any",),
                  severities=({"k": 1}, {"k": 2}, {"k": 3}), description="...", unit="...")
        def _my_test(images, value_range, params, rngs): ...

    Raises:
        ValueError: a test with the same name is already registered.
    """
    if test is not None:
        if fields:
            raise TypeError("register() takes either a StressTest or keyword fields, not both")
        if test.name in REGISTRY:
            raise ValueError(f"stress test {test.name!r} is already registered")
        REGISTRY[test.name] = test
        return test

    def decorator(fn: ApplyFn) -> ApplyFn:
        register(StressTest(apply=fn, **fields))
        return fn

    return decorator


def _load_builtins() -> None:
    """Import the modules that register the built-in tests (lazy: they import this module)."""
    import medfail.stress.corruptions
    import medfail.stress.domain_shift
    import medfail.stress.prompt_perturbations  # noqa: F401


def names() -> list[str]:
    """Sorted names of all registered stress tests."""
    _load_builtins()
    return sorted(REGISTRY)


def get(name: str) -> StressTest:
    """The registered test called ``name``.

    Raises:
        MedfailInputError: (a ``ValueError``) unknown name; the message lists the valid names.
    """
    _load_builtins()
    try:
        return REGISTRY[name]
    except KeyError:
        valid = ", ".join(sorted(REGISTRY)) or "(none)"
        raise MedfailInputError(
            None, f"unknown stress test {name!r}; valid names: {valid}"
        ) from None


def _check_severity(severity: int) -> int:
    """``severity`` as an int, checked to be 0..3."""
    try:
        if isinstance(severity, bool):
            raise TypeError
        sev = operator.index(severity)
    except TypeError:
        raise MedfailInputError(
            None, f"severity must be an int 0..{N_SEVERITIES}, got {severity!r}"
        ) from None
    if not 0 <= sev <= N_SEVERITIES:
        raise MedfailInputError(None, f"severity must be 0..{N_SEVERITIES}, got {sev}")
    return sev


def condition_name(test: StressTest | str, severity: int) -> str:
    """``"<test>@<severity>"`` (e.g. ``"gaussian_noise@2"``), or ``"clean"`` for severity 0."""
    sev = _check_severity(severity)
    name = get(test).name if isinstance(test, str) else test.name
    return CLEAN if sev == 0 else f"{name}@{sev}"


def parse_condition(name: str) -> tuple[str, int]:
    """Inverse of :func:`condition_name`: ``"gaussian_noise@2"`` -> ``("gaussian_noise", 2)``.

    ``"clean"`` parses to ``("clean", 0)``.

    Raises:
        MedfailInputError: malformed condition, unknown test or severity outside 1..3.
    """
    if name == CLEAN:
        return CLEAN, 0
    test_name, sep, sev = name.partition("@")
    if not sep or not sev.isdigit():
        raise MedfailInputError(
            None, f"bad condition {name!r}: expected 'clean' or '<test>@<severity 1..3>'"
        )
    severity = int(sev)
    if not 1 <= severity <= N_SEVERITIES:
        raise MedfailInputError(None, f"bad condition {name!r}: severity must be 1..{N_SEVERITIES}")
    return get(test_name).name, severity


def _fmt(value: Any) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


def severity_summary(test: StressTest) -> str:
    """Compact text of the three severities, e.g. ``"sigma=0.04/0.08/0.12"``."""
    keys = list(dict.fromkeys(k for p in test.severities for k in p))
    parts = [f"{k}=" + "/".join(_fmt(p.get(k, "-")) for p in test.severities) for k in keys]
    return ", ".join(parts)


def list_rows() -> list[dict[str, str]]:
    """One row per registered test (sorted by family, then name) for ``medfail list``."""
    _load_builtins()
    tests = sorted(REGISTRY.values(), key=lambda t: (FAMILIES.index(t.family), t.name))
    return [
        {
            "name": t.name,
            "family": t.family,
            "taxonomy": t.taxonomy,
            "modalities": ",".join(t.modalities),
            "severities": severity_summary(t),
            "unit": t.unit,
            "description": t.description,
        }
        for t in tests
    ]
