"""Morphology-aware post-processing of segmentation probabilities (a mitigation).

Applied to the foreground map ``p`` of a binary segmenter:

1. ``min_size``: predicted components (8-connected, 26 in 3D; ``p > 0.5``) smaller than this
   many pixels are removed (their probabilities set to ``min(p, 0.5 - 1e-3)``, so they fall
   below the decision threshold while the map stays a probability map);
2. ``fill_holes``: background enclosed by a predicted component is set to ``max(p, 0.5 + 1e-3)``;
3. ``keep_largest``: only the largest component is kept.

Parameters are chosen on the calibration split only (:func:`choose_params`: the candidate with the
best mean Dice there, ties to the simplest), never on test.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np
from scipy import ndimage

from medfail.metrics.segmentation import dice

BELOW, ABOVE = 0.5 - 1e-3, 0.5 + 1e-3


@dataclass(frozen=True)
class PostProcess:
    min_size: int = 0
    fill_holes: bool = False
    keep_largest: bool = False

    def to_dict(self) -> dict[str, object]:
        return asdict(self)

    @property
    def is_identity(self) -> bool:
        return self == PostProcess()


CANDIDATES: tuple[PostProcess, ...] = (
    PostProcess(),
    *(PostProcess(min_size=k) for k in (4, 8, 16, 32)),
    PostProcess(fill_holes=True),
    PostProcess(min_size=8, fill_holes=True),
    PostProcess(keep_largest=True),
)


def apply(p: np.ndarray, params: PostProcess) -> np.ndarray:
    """Post-process one (H, W) or (X, Y, Z) foreground probability map."""
    out = np.asarray(p, np.float32).copy()
    if params.is_identity:
        return out
    mask = out > 0.5
    labels, n = ndimage.label(mask, structure=np.ones((3,) * mask.ndim, bool))
    if n and (params.min_size or params.keep_largest):
        sizes = np.bincount(labels.ravel())[1:]
        drop = np.zeros(n + 1, bool)
        if params.min_size:
            drop[1:] |= sizes < params.min_size
        if params.keep_largest:
            keep = 1 + int(np.argmax(sizes))
            drop[1:] = True
            drop[keep] = False
        removed = drop[labels] & mask
        out[removed] = np.minimum(out[removed], BELOW)
        mask = out > 0.5
    if params.fill_holes:
        holes = ndimage.binary_fill_holes(mask) & ~mask
        out[holes] = np.maximum(out[holes], ABOVE)
    return out


def choose_params(probs: Sequence[np.ndarray], masks: Sequence[np.ndarray],
                  candidates: Sequence[PostProcess] = CANDIDATES) -> tuple[PostProcess, float]:
    """The candidate with the best mean Dice on (calibration) maps and masks, and that Dice."""
    best, best_score = candidates[0], -np.inf
    for cand in candidates:
        scores = [dice((m > 0)[None], (apply(p, cand) > 0.5)[None])[0]
                  for p, m in zip(probs, masks, strict=True)]
        score = float(np.mean(scores)) if scores else float("nan")
        if score > best_score + 1e-12:
            best, best_score = cand, score
    return best, best_score
