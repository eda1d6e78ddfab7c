"""Errors medfail raises for bad input: one message naming the file and the problem."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path


def listing(items: Iterable[object], limit: int = 5) -> str:
    """Items for a message: the first ``limit`` joined by ``", "``, then ``(and N more)``."""
    shown = [str(item) for item in items]
    text = ", ".join(shown[:limit])
    return text if len(shown) <= limit else f"{text} (and {len(shown) - limit} more)"


class MedfailInputError(ValueError):
    """Bad user input, detected before any model runs.

    The message always names the offending file (or folder) and the problem, e.g.
    ``data/images/case7.png: cannot read image (truncated PNG)``.
    """

    def __init__(self, path: str | Path | None, problem: str) -> None:
        self.path = None if path is None else str(path)
        self.problem = problem
        super().__init__(problem if path is None else f"{path}: {problem}")


class MedfailModelError(MedfailInputError):
    """A model returned something medfail cannot use, or refused the input medfail built from the
    spec: wrong type, dtype, shape, non-finite values, probabilities out of range.

    Raised on the first probe (before a run writes anything) or on any later call; the message
    names the model, what it returned and what was expected, e.g. ``model seg.onnx: returned
    shape (4, 3) but a segmenter must return (4, 2, 64, 64) = (batch, 1 + foreground classes,
    H, W) ...``.
    """

    def __init__(self, model: str, problem: str) -> None:
        self.model = str(model)
        super().__init__(f"model {model}", problem)
