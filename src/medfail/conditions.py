"""The Condition type: what one stored set of predictions is (ground floor: imports nothing).

The engine builds conditions from the suite config; the analyses rebuild the same type from a run
directory's ``run.json``, so both sides share one definition.
"""

from __future__ import annotations

from dataclasses import dataclass


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
