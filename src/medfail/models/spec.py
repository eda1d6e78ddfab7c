"""ModelSpec: what medfail must know about a model to feed it and read its output."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

TASKS: tuple[str, ...] = ("classification", "segmentation", "promptable")
#: keys of :attr:`ModelSpec.intensity`, one value per channel each
INTENSITY_KEYS: tuple[str, ...] = ("p01", "p99", "min", "max")


@dataclass
class ModelSpec:
    """Facts about a model, carried inside medfail model files (or given as a JSON sidecar).

    Attributes:
        task: ``classification`` -> probabilities (N, K); ``segmentation`` -> per-pixel class
            probabilities (N, C, H, W) with class 0 = background; ``promptable`` -> the same given
            box/point prompts.
        target_names: classification targets (K of them), or the foreground classes of a segmenter
            (C - 1 of them; background is implicit).
        multi_label: classification only: sigmoid per target (True) or softmax over targets.
        input_size: (H, W) the network expects. Classification inputs are resized to it;
            segmentation runs a sliding window of this size at native resolution. ``None`` = any.
        in_channels: channels the network expects (1 = grey, 3 = RGB).
        normalisation: ``{"mean": [...], "std": [...]}`` per channel in medfail's intensity units
            (docs/data.md: 8-bit grey levels for PNG/JPEG/TIFF, HU for CT...), applied as
            ``(x - mean) / std``; ``None`` feeds those units unchanged.
        intensity: optional summary of the training images in the same units, per channel:
            ``{"p01": [...], "p99": [...], "min": [...], "max": [...]}`` (1st/99th percentile,
            extremes). ``medfail run`` warns when the test data falls clearly outside it
            (:mod:`medfail.models.intensity`); ``None`` (older model files) = unknown.
        output: ``"logits"`` (medfail applies sigmoid/softmax) or ``"probabilities"``.
        arch / arch_kwargs: how to rebuild the network (medfail model files only).
        prompt_channels: promptable only: extra input channels ("box", "point").
    """

    task: str
    target_names: list[str]
    multi_label: bool = False
    input_size: tuple[int, int] | None = None
    in_channels: int = 1
    normalisation: dict[str, list[float]] | None = None
    output: str = "logits"
    arch: str = ""
    arch_kwargs: dict[str, Any] = field(default_factory=dict)
    prompt_channels: list[str] = field(default_factory=list)
    intensity: dict[str, list[float]] | None = None

    def __post_init__(self) -> None:
        if self.task not in TASKS:
            raise ValueError(f"task must be one of {', '.join(TASKS)}, got {self.task!r}")
        if self.output not in ("logits", "probabilities"):
            raise ValueError(f"output must be 'logits' or 'probabilities', got {self.output!r}")
        if self.input_size is not None:
            self.input_size = (int(self.input_size[0]), int(self.input_size[1]))
        self.target_names = [str(t) for t in self.target_names]
        if self.intensity is not None:
            self.intensity = _intensity(self.intensity, self.in_channels)

    @property
    def n_classes(self) -> int:
        """Output channels: K targets (classification) or 1 + foreground classes (segmentation)."""
        if self.task == "classification":
            return len(self.target_names)
        return len(self.target_names) + 1

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["input_size"] = None if self.input_size is None else list(self.input_size)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ModelSpec:
        known = set(cls.__dataclass_fields__)
        unknown = set(d) - known
        if unknown:
            raise ValueError(f"unknown model spec fields: {', '.join(sorted(unknown))}")
        return cls(**d)


def _intensity(value: Any, channels: int) -> dict[str, list[float]]:
    """Validate an ``intensity`` summary: the four keys, ``channels`` finite numbers each."""
    if not isinstance(value, dict) or set(value) != set(INTENSITY_KEYS):
        raise ValueError(f"intensity must be a dict with keys {', '.join(INTENSITY_KEYS)}, "
                         f"got {value!r}")
    out: dict[str, list[float]] = {}
    for key in INTENSITY_KEYS:
        v = value[key]
        vals = [v] if isinstance(v, int | float) else list(v)
        if len(vals) != channels or not all(
                isinstance(x, int | float) and math.isfinite(x) for x in vals):
            raise ValueError(f"intensity[{key!r}] must hold {channels} finite number(s) (one per "
                             f"channel), got {v!r}")
        out[key] = [float(x) for x in vals]
    return out
