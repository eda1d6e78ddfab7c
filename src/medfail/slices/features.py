"""Per-sample ground-truth features that size/location/shape slices are cut from.

Computed once per sample from its object map (``Sample.object_map``: the instance map of instance
masks, else the mask; stored in ``predictions/index.parquet``):

* ``gt_area_px`` - foreground pixels (voxels for a volume); ``gt_area_mm2`` - the same in mm²
  when spacing is known (2D only; NaN for volumes);
* ``gt_volume_ml`` - volumes only: foreground volume in mL (``voxels * sx * sy * sz / 1000``,
  :func:`medfail.metrics.segmentation.volume_ml`), NaN when the spacing is unknown;
* ``n_objects`` - ground-truth objects as prompts and promptable training count them
  (:func:`medfail.data.prompts.objects`: fully connected pieces of each label, 8-connected in
  2D, 26-connected in 3D, so one per instance);
* ``hollow`` - some object encloses background (``binary_fill_holes`` adds pixels);
* ``centre_offset`` - distance of the foreground centroid from the image (volume) centre divided
  by half the image diagonal (0 = centre, 1 = corner), in array units; NaN for empty masks.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from medfail.data.prompts import label_pieces
from medfail.metrics.segmentation import volume_ml


def mask_features(mask: np.ndarray, spacing: tuple[float, ...] | None) -> dict[str, float]:
    """Features of one integer GT label map, 2D ``(H, W)`` or 3D ``(X, Y, Z)`` (foreground =
    ``mask > 0``; objects as module docstring). Volumes also get ``gt_volume_ml``."""
    fg = mask > 0
    area = int(fg.sum())
    n_objects = sum(n for _, _, n in label_pieces(mask))
    hollow = bool(area and ndimage.binary_fill_holes(fg).sum() > area)
    if area:
        centroid = np.array(ndimage.center_of_mass(fg))
        centre = (np.array(fg.shape) - 1) / 2
        offset = float(np.linalg.norm(centroid - centre) / np.linalg.norm(np.array(fg.shape) / 2))
    else:
        offset = float("nan")
    volume = fg.ndim == 3
    pixel_mm2 = float(np.prod(spacing)) if spacing and not volume else float("nan")
    out = {"gt_area_px": float(area), "gt_area_mm2": area * pixel_mm2,
           "n_objects": float(n_objects), "hollow": float(hollow), "centre_offset": offset}
    if volume:
        out["gt_volume_ml"] = volume_ml(fg, spacing) if spacing else float("nan")
    return out
