"""Prompts for promptable segmenters, derived from ground-truth masks.

Convention (the one segment-anything uses): coordinates are ``(x, y)`` = (column, row) in pixels of
the native image; a box is ``(x0, y0, x1, y1)`` with inclusive corners; point label 1 = foreground,
0 = background. One prompt per ground-truth object: an 8-connected component of one non-zero
label (for a binary mask, a component of ``mask > 0``; for an instance map, ``Sample.instances``,
one object per instance, so touching nuclei stay separate; touching regions of different classes
are separate objects too). Its positive point is the object pixel farthest from the object's
border (so hollow rings get a point on the ring, not in the hole).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

EIGHT_CONNECTED = np.ones((3, 3), dtype=bool)


@dataclass(frozen=True)
class Prompt:
    """A box and/or points for one object."""

    box: tuple[float, float, float, float] | None
    points: tuple[tuple[float, float], ...] = ()
    point_labels: tuple[int, ...] = ()


def label_pieces(mask: np.ndarray) -> Iterator[tuple[tuple[slice, ...], np.ndarray, int]]:
    """Per distinct non-zero label of ``mask``, in ascending order: its bounding box, its
    connected pieces (full connectivity: 8-connected in 2D) numbered 1..n inside the box (0
    elsewhere, other labels included), and n."""
    mask = np.asarray(mask)
    values, inverse = np.unique(mask, return_inverse=True)
    has_zero = bool(len(values)) and values[0] == 0
    dense = inverse.reshape(mask.shape) + (0 if has_zero else 1)  # labels 1..n, 0 = background
    structure = ndimage.generate_binary_structure(mask.ndim, mask.ndim)
    for k, box in enumerate(ndimage.find_objects(dense), start=1):
        if box is not None:
            pieces, n = ndimage.label(dense[box] == k, structure=structure)
            yield box, pieces, n


def objects(mask: np.ndarray) -> list[np.ndarray]:
    """Boolean masks of the 8-connected components of each non-zero label of ``mask``, largest
    first (ties: ascending label, then scipy's raster order)."""
    comps = []
    for box, pieces, n in label_pieces(mask):
        for i in range(1, n + 1):
            obj = np.zeros(np.shape(mask), dtype=bool)
            obj[box] = pieces == i
            comps.append(obj)
    return sorted(comps, key=lambda c: -int(c.sum()))


def prompt_for_object(obj: np.ndarray) -> Prompt:
    """The exact box and interior point of one object (no perturbation)."""
    rows, cols = np.nonzero(obj)
    box = (float(cols.min()), float(rows.min()), float(cols.max()), float(rows.max()))
    dist = ndimage.distance_transform_edt(np.pad(obj, 1))[1:-1, 1:-1]
    r, c = np.unravel_index(int(np.argmax(dist)), dist.shape)
    return Prompt(box=box, points=((float(c), float(r)),), point_labels=(1,))


def prompts_from_mask(mask: np.ndarray, max_objects: int | None = None) -> list[Prompt]:
    """One prompt per object of ``mask`` (largest first), at most ``max_objects``."""
    objs = objects(mask)
    if max_objects is not None:
        objs = objs[:max_objects]
    return [prompt_for_object(o) for o in objs]
