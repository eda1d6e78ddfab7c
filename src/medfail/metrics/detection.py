"""Per-lesion detection metrics from connected components of binary masks (or instance maps).

Inputs are ``y_true`` / ``y_pred`` batches shaped ``(N, *spatial)`` (2-D or 3-D, bool or 0/1),
validated as in ``segmentation``.

Conventions:

* A *lesion* is a connected component of the ground truth, a *predicted component* one of the
  prediction, with full connectivity: 8-neighbourhood in 2-D, 26 in 3-D (face, edge and corner
  contact join; ``ndimage.generate_binary_structure(ndim, ndim)``). This is MONAI's default
  (``connectivity=None`` = full in its connected-component transforms) and skimage's; scipy's
  ``ndimage.label`` default is face connectivity (4 / 6), which would split diagonally touching
  voxels of one lesion. Each image (volume) is labelled on its own.
* With ``true_instances`` (integer instance maps shaped as ``y_true``, e.g. nuclei annotated one
  label per object), a lesion is instead one distinct non-zero instance label inside
  ``y_true``: touching objects stay separate lesions, and a label in several pieces is one
  lesion. Predicted components are still connected components of ``y_pred``.
* Matching is component-wise IoU, ``IoU(G, P) = |G ∩ P| / |G ∪ P|`` over one GT lesion G and
  one predicted component P, and is **many-to-many**: a GT lesion is detected (TP) when *some*
  predicted component has ``IoU >= min_overlap`` with it, missed (FN) otherwise; a predicted
  component is a false positive (FP) when *no* GT lesion reaches ``IoU >= min_overlap`` with it.
* Merges: one predicted component covering several GT lesions is compared with each of them
  separately; each lesion whose IoU with the merged component reaches the threshold is a TP
  (so a merge can count as several TPs, and as no FP if at least one lesion matches). As the
  merged component also holds the other lesions' pixels, ``IoU(G, P) <= |G| / |P|``: a merge
  of two equal lesions has IoU <= 0.5 with each (both match at the default 0.1), while a merge
  of a large and a small lesion may match only the large one.
* Splits: a GT lesion covered by several predicted pieces is a TP if one piece reaches the
  threshold; pieces that match no lesion are FPs.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
from scipy import ndimage

from .segmentation import _check_masks

__all__ = [
    "LesionRecord",
    "lesion_counts",
    "lesion_f1",
    "lesion_precision",
    "lesion_sensitivity",
    "lesion_table",
    "pooled_lesion_f1",
    "pooled_lesion_precision",
    "pooled_lesion_scores",
    "pooled_lesion_sensitivity",
]


class LesionRecord(NamedTuple):
    """One ground-truth lesion: image index in the batch, size in pixels/voxels, detected."""

    image_index: int
    lesion_area: int
    detected: bool


def _check_min_overlap(min_overlap: float) -> float:
    thr = float(min_overlap)
    if not 0.0 < thr <= 1.0:
        raise ValueError(f"min_overlap must be in (0, 1], got {min_overlap!r}")
    return thr


def _instance_lesions(t: np.ndarray, inst: np.ndarray) -> tuple[np.ndarray, int]:
    """Consecutive lesion labels 1..n from the instance ids inside ``t`` (ascending id order)."""
    values, inverse = np.unique(np.where(t, inst, 0), return_inverse=True)
    has_zero = bool(len(values)) and values[0] == 0
    dense = inverse.reshape(t.shape) + (0 if has_zero else 1)
    return dense, len(values) - int(has_zero)


def _match_image(
    t: np.ndarray, p: np.ndarray, structure: np.ndarray, thr: float,
    inst: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Label one image and match components.

    Returns (GT lesion areas (int64), GT lesion detected (bool), predicted component matched
    (bool)); lesions and components in scipy's label order (raster order of first pixel), or
    lesions in ascending instance id with ``inst``.
    """
    if inst is None:
        lab_t, n_t = ndimage.label(t, structure=structure)
    else:
        lab_t, n_t = _instance_lesions(t, inst)
    lab_p, n_p = ndimage.label(p, structure=structure)
    # Contingency table of label pairs (row/column 0 = background) in one bincount.
    pair = lab_t.ravel().astype(np.int64) * (n_p + 1) + lab_p.ravel()
    table = np.bincount(pair, minlength=(n_t + 1) * (n_p + 1)).reshape(n_t + 1, n_p + 1)
    area_t = table[1:].sum(axis=1)
    area_p = table[:, 1:].sum(axis=0)
    inter = table[1:, 1:]
    union = area_t[:, None] + area_p[None, :] - inter
    # union > 0 always (each component has >= 1 pixel). The correctly rounded ratio is compared
    # with the threshold, so an IoU exactly equal to a decimal threshold (3/30 vs 0.1) counts.
    hit = inter / np.maximum(union, 1) >= thr
    return area_t, hit.any(axis=1), hit.any(axis=0)


def _check_instances(true_instances: np.ndarray, t: np.ndarray) -> np.ndarray:
    inst = np.asarray(true_instances)
    if inst.shape != t.shape:
        raise ValueError(
            f"true_instances must have the shape of y_true {t.shape}, got {inst.shape}")
    if inst.dtype == np.bool_ or not np.issubdtype(inst.dtype, np.integer):
        raise ValueError(f"true_instances must be an integer label map, got dtype {inst.dtype}")
    unlabelled = t & (inst == 0)
    if unlabelled.any():
        raise ValueError(
            f"true_instances is 0 on {int(unlabelled.sum())} foreground pixel(s) of y_true; "
            "every GT foreground pixel needs an instance label")
    return inst


def _match_batch(
    y_true: np.ndarray, y_pred: np.ndarray, min_overlap: float,
    true_instances: np.ndarray | None = None,
) -> tuple[list[tuple[np.ndarray, np.ndarray, np.ndarray]], int]:
    t, p = _check_masks(y_true, y_pred)
    thr = _check_min_overlap(min_overlap)
    inst = None if true_instances is None else _check_instances(true_instances, t)
    n_spatial = t.ndim - 1
    structure = ndimage.generate_binary_structure(n_spatial, n_spatial)
    return [_match_image(t[i], p[i], structure, thr, None if inst is None else inst[i])
            for i in range(len(t))], len(t)


def lesion_counts(y_true: np.ndarray, y_pred: np.ndarray, min_overlap: float = 0.1,
                  true_instances: np.ndarray | None = None) -> np.ndarray:
    """Per-image lesion detection counts ``(TP, FN, FP)``.

    TP = GT lesions with some predicted component at ``IoU >= min_overlap``; FN = the other GT
    lesions (TP + FN = number of GT lesions); FP = predicted components matching no GT lesion.
    Components, connectivity and the many-to-many matching (merges, splits) as in the module
    docstring.

    Args:
        y_true: ground-truth masks, bool or 0/1, shape (N, *spatial).
        y_pred: predicted masks, same shape.
        min_overlap: IoU threshold in (0, 1] (default 0.1, a lenient "hit").
        true_instances: optional integer instance maps, same shape: GT lesions are then the
            distinct non-zero labels inside ``y_true`` (touching objects stay separate), not
            its connected components.

    Returns:
        int64 array of shape (N, 3), columns TP, FN, FP.

    Raises:
        ValueError: bad masks (see ``segmentation.dice``), min_overlap outside (0, 1], or
            ``true_instances`` of another shape, not integer, or 0 on a GT foreground pixel.

    Example:
        >>> t = np.zeros((1, 6, 6), bool)
        >>> t[0, 1:3, 1:3] = t[0, 4:6, 4:6] = True  # two lesions
        >>> p = np.zeros_like(t)
        >>> p[0, 1:3, 1:3] = p[0, 0, 5] = True  # one hit, one false positive
        >>> lesion_counts(t, p).tolist()
        [[1, 1, 1]]
    """
    matches, n = _match_batch(y_true, y_pred, min_overlap, true_instances)
    out = np.zeros((n, 3), dtype=np.int64)
    for i, (_, detected, matched) in enumerate(matches):
        out[i] = (detected.sum(), detected.size - detected.sum(), matched.size - matched.sum())
    return out


def lesion_table(
    y_true: np.ndarray, y_pred: np.ndarray, min_overlap: float = 0.1,
    true_instances: np.ndarray | None = None,
) -> list[LesionRecord]:
    """One record per GT lesion: ``(image_index, lesion_area, detected)``.

    ``lesion_area`` is the number of pixels/voxels of the lesion (times ``prod(spacing)`` for
    mm² / mm³, and / 1000 for mL as ``segmentation.volume_ml``); ``detected`` as TP in
    ``lesion_counts`` (same matching). Ordered by image, then by scipy's label order (by
    instance id with ``true_instances``, as in ``lesion_counts``).
    Use it for detection rate by lesion size.

    Raises:
        ValueError: as ``lesion_counts``.

    Example:
        >>> t = np.zeros((1, 6, 6), bool)
        >>> t[0, 1:3, 1:3] = True
        >>> t[0, 5, 5] = True
        >>> p = np.zeros_like(t)
        >>> p[0, 1:3, 1:3] = True
        >>> [tuple(r) for r in lesion_table(t, p)]
        [(0, 4, True), (0, 1, False)]
    """
    matches, _ = _match_batch(y_true, y_pred, min_overlap, true_instances)
    return [
        LesionRecord(i, int(a), bool(d))
        for i, (areas, detected, _) in enumerate(matches)
        for a, d in zip(areas, detected, strict=True)
    ]


def _check_counts(counts: np.ndarray) -> np.ndarray:
    c = np.asarray(counts)
    if c.ndim != 2 or c.shape[1] != 3:
        raise ValueError(
            f"counts must be shaped (N, 3) with columns TP, FN, FP, got shape {c.shape}"
        )
    if c.dtype == np.bool_ or not np.issubdtype(c.dtype, np.number):
        raise ValueError(f"counts must be numeric, got dtype {c.dtype}")
    bad = ~np.isfinite(c) | (c < 0) | (c != np.round(c)) if c.size else np.zeros(0, bool)
    if np.any(bad):
        raise ValueError(
            f"counts must be non-negative integers, found {int(np.sum(bad))} other value(s)"
        )
    return c.astype(np.int64)


def _ratio(num: np.ndarray, den: np.ndarray, empty: float) -> np.ndarray:
    out = np.full(num.shape, empty, dtype=np.float64)
    np.divide(num, den, out=out, where=den > 0)
    return out


def lesion_sensitivity(counts: np.ndarray) -> np.ndarray:
    """Per-image lesion sensitivity (detection rate) ``TP / (TP + FN)``.

    Edge case: no GT lesion in the image -> ``nan`` (undefined).

    Args:
        counts: ``(N, 3)`` array of (TP, FN, FP), e.g. from ``lesion_counts``.

    Returns:
        float64 array of shape (N,).

    Raises:
        ValueError: counts not (N, 3) non-negative integers.

    Example:
        >>> lesion_sensitivity(np.array([[1, 1, 0], [0, 0, 2]])).tolist()
        [0.5, nan]
    """
    c = _check_counts(counts)
    return _ratio(c[:, 0], c[:, 0] + c[:, 1], np.nan)


def lesion_precision(counts: np.ndarray) -> np.ndarray:
    """Per-image lesion precision ``TP / (TP + FP)`` (TP counted on the GT side).

    With many-to-many matching a merged component detecting two lesions adds 2 to TP, so this
    is the precision implied by ``lesion_f1``, not the share of matched predicted components.
    Edge case: no predicted component in the image (TP + FP = 0) -> ``nan`` (undefined).

    Raises:
        ValueError: as ``lesion_sensitivity``.

    Example:
        >>> lesion_precision(np.array([[1, 1, 1], [0, 2, 0]])).tolist()
        [0.5, nan]
    """
    c = _check_counts(counts)
    return _ratio(c[:, 0], c[:, 0] + c[:, 2], np.nan)


def lesion_f1(counts: np.ndarray) -> np.ndarray:
    """Per-image lesion F1 ``2·TP / (2·TP + FN + FP)``.

    Edge case: no GT lesion and no predicted component -> 1.0 (a correct "nothing there", as
    Dice); one side empty -> 0.0.

    Raises:
        ValueError: as ``lesion_sensitivity``.

    Example:
        >>> lesion_f1(np.array([[1, 1, 1], [0, 0, 0], [0, 0, 1]])).tolist()
        [0.5, 1.0, 0.0]
    """
    c = _check_counts(counts)
    return _ratio(2 * c[:, 0], 2 * c[:, 0] + c[:, 1] + c[:, 2], 1.0)


def pooled_lesion_scores(sums: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Set-level lesion sensitivity, precision and F1 from summed counts, vectorised.

    ``sums[..., :]`` = (ΣTP, ΣFN, ΣFP) over a set of images, e.g. shape (3,) for one set or
    (B, 3) for one sum per bootstrap resample. Per set:

    * sensitivity ``ΣTP / (ΣTP + ΣFN)``; no GT lesion -> NaN;
    * precision ``ΣTP / (ΣTP + ΣFP)``; no predicted component (TP + FP = 0) -> NaN;
    * F1 ``2·ΣTP / (2·ΣTP + ΣFN + ΣFP)``; no lesion and no predicted component -> 1.0.

    Returns:
        (sensitivity, precision, f1), float64 arrays of shape ``sums.shape[:-1]``.

    Raises:
        ValueError: last axis not of length 3, or values not non-negative integers.

    Example:
        >>> sens, prec, f1 = pooled_lesion_scores(np.array([[3, 1, 2], [0, 0, 0]]))
        >>> sens.tolist(), prec.tolist(), f1.round(4).tolist()
        ([0.75, nan], [0.6, nan], [0.6667, 1.0])
    """
    s = np.asarray(sums)
    if s.ndim < 1 or s.shape[-1] != 3:
        raise ValueError(f"sums must have a last axis of 3 (TP, FN, FP), got shape {s.shape}")
    _check_counts(s.reshape(-1, 3))
    s = s.astype(np.float64)
    tp, fn, fp = s[..., 0], s[..., 1], s[..., 2]
    return (_ratio(tp, tp + fn, np.nan), _ratio(tp, tp + fp, np.nan),
            _ratio(2 * tp, 2 * tp + fn + fp, 1.0))


def pooled_lesion_sensitivity(counts: np.ndarray) -> float:
    """Set-level lesion sensitivity ``ΣTP / (ΣTP + ΣFN)`` over images; no lesion -> NaN.

    Raises:
        ValueError: as ``lesion_sensitivity``.

    Example:
        >>> pooled_lesion_sensitivity(np.array([[1, 1, 0], [2, 0, 1]]))
        0.75
    """
    return float(pooled_lesion_scores(_check_counts(counts).sum(axis=0))[0])


def pooled_lesion_precision(counts: np.ndarray) -> float:
    """Set-level lesion precision ``ΣTP / (ΣTP + ΣFP)`` over images; no predicted component
    -> NaN.

    Raises:
        ValueError: as ``lesion_sensitivity``.

    Example:
        >>> pooled_lesion_precision(np.array([[1, 1, 0], [2, 0, 1]]))
        0.75
    """
    return float(pooled_lesion_scores(_check_counts(counts).sum(axis=0))[1])


def pooled_lesion_f1(counts: np.ndarray) -> float:
    """Set-level lesion F1 from counts summed over images: ``2·ΣTP / (2·ΣTP + ΣFN + ΣFP)``.

    Every lesion weighs the same whatever its size or image, so one large lesion cannot
    dominate it (unlike a pixel-level Dice), and lesion-free images add only their FPs.
    Edge case: no lesion and no predicted component in the whole set (or no images) -> 1.0.
    Runs report this value for every slice (``lesion_f1`` in ``metrics.parquet``).

    Raises:
        ValueError: as ``lesion_sensitivity``.

    Example:
        >>> pooled_lesion_f1(np.array([[1, 1, 0], [2, 0, 1]]))
        0.75
        >>> pooled_lesion_f1(np.zeros((2, 3), int))  # no lesion, nothing predicted
        1.0
        >>> pooled_lesion_f1(np.array([[0, 0, 1]]))  # no lesion, one false positive
        0.0
    """
    return float(pooled_lesion_scores(_check_counts(counts).sum(axis=0))[2])
