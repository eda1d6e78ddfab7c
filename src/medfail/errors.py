"""Errors medfail raises for bad input: one message naming the file and the problem."""

from __future__ import annotations

from pathlib import Path


class MedfailInputError(ValueError):
    """Bad user input, detected before any model runs.

    The message always names the offending file (or folder) and the problem, e.g.
    ``data/images/case7.png: cannot read image (truncated PNG)``.
    """

    def __init__(self, path: str | Path | None, problem: str) -> None:
        self.path = None if path is None else str(path)
        self.problem = problem
        super().__init__(problem if path is None else f"{path}: {problem}")
