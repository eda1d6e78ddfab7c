"""ModelSpec: what medfail must know about a model to feed it and read its output."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

TASKS: tuple[str, ...] = ("classification", "segmentation", "promptable")
#: keys of :attr:`ModelSpec.intensity`, one value per channel each
INTENSITY_KEYS: tuple[str, ...] = ("p01", "p99", "min", "max")
#: default sliding-window overlap of segmenters (fraction of the window shared by neighbours)
SLIDING_WINDOW_OVERLAP = 0.25


@dataclass
class ModelSpec:
    """Facts about a model, carried inside medfail model files (or given as a JSON sidecar).

    Attributes:
        task: ``classification`` -> probabilities (N, K); ``segmentation`` -> per-pixel class
            probabilities (N, C, H, W), or (N, C, X, Y, Z) for volumes, with class 0 =
            background; ``promptable`` -> the same given box/point prompts (2D only).
        target_names: classification targets (K of them), or the foreground classes of a segmenter
            (C - 1 of them; background is implicit).
        multi_label: classification only: sigmoid per target (True) or softmax over targets.
        input_size: (H, W), or (X, Y, Z) for volumes, the network expects. Classification
            inputs are resized to it; segmentation runs a sliding window of this size at native
            resolution (or at ``spacing``). ``None`` = any.
        spatial_dims: 2 (images) or 3 (volumes ``(C, X, Y, Z)``); ``None`` (or absent, as in
            older model files) = ``len(input_size)``, else 2.
        overlap: sliding-window overlap of segmenters in [0, 1) (MONAI
            ``sliding_window_inference``; default :data:`SLIDING_WINDOW_OVERLAP`).
        spacing: voxel spacing in mm (one per spatial axis) the network expects, or ``None``.
            When set, volumes with a known spacing are resampled to it before inference and the
            probabilities back to the native grid (:mod:`medfail.models.resample`).
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
    input_size: tuple[int, ...] | None = None
    in_channels: int = 1
    normalisation: dict[str, list[float]] | None = None
    output: str = "logits"
    arch: str = ""
    arch_kwargs: dict[str, Any] = field(default_factory=dict)
    prompt_channels: list[str] = field(default_factory=list)
    intensity: dict[str, list[float]] | None = None
    spatial_dims: int | None = None
    overlap: float = SLIDING_WINDOW_OVERLAP
    spacing: tuple[float, ...] | None = None

    def __post_init__(self) -> None:
        if self.task not in TASKS:
            raise ValueError(f"task must be one of {', '.join(TASKS)}, got {self.task!r}")
        if self.output not in ("logits", "probabilities"):
            raise ValueError(f"output must be 'logits' or 'probabilities', got {self.output!r}")
        self._geometry()
        self.target_names = [str(t) for t in self.target_names]
        if self.intensity is not None:
            self.intensity = _intensity(self.intensity, self.in_channels)

    def _geometry(self) -> None:
        """Check and normalise ``spatial_dims``, ``input_size``, ``overlap`` and ``spacing``."""
        size = None if self.input_size is None else tuple(self.input_size)
        dims = self.spatial_dims
        if dims is None:
            dims = len(size) if size is not None else 2
        if dims not in (2, 3):
            raise ValueError(f"spatial_dims must be 2 or 3, got {dims!r}")
        self.spatial_dims = int(dims)
        if size is not None:
            if len(size) != dims or not all(
                    isinstance(v, int | float) and float(v).is_integer() and v >= 1 for v in size):
                raise ValueError(f"input_size must be {dims} positive integers (spatial_dims "
                                 f"{dims}), got {list(size)}")
            self.input_size = tuple(int(v) for v in size)
        if not (isinstance(self.overlap, int | float) and 0.0 <= self.overlap < 1.0):
            raise ValueError(f"overlap must be a number in [0, 1), got {self.overlap!r}")
        self.overlap = float(self.overlap)
        if self.spacing is not None:
            sp = tuple(self.spacing)
            if len(sp) != dims or not all(
                    isinstance(v, int | float) and math.isfinite(v) and v > 0 for v in sp):
                raise ValueError(f"spacing must be {dims} positive numbers in mm (spatial_dims "
                                 f"{dims}) or null, got {list(sp)}")
            self.spacing = tuple(float(v) for v in sp)

    @property
    def n_classes(self) -> int:
        """Output channels: K targets (classification) or 1 + foreground classes (segmentation)."""
        if self.task == "classification":
            return len(self.target_names)
        return len(self.target_names) + 1

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["input_size"] = None if self.input_size is None else list(self.input_size)
        d["spacing"] = None if self.spacing is None else list(self.spacing)
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
