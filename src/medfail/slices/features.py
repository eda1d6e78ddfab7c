"""Per-sample ground-truth features that size/location/shape slices are cut from.

Computed once per sample from its object map (``Sample.object_map``: the instance map of instance
masks, else the mask; stored in ``predictions/index.parquet``):

* ``gt_area_px`` - foreground pixels; ``gt_area_mm2`` - the same in mm² when spacing is known;
* ``n_objects`` - ground-truth objects as prompts and promptable training count them
  (:func:`medfail.data.prompts.objects`: 8-connected pieces of each label, so one per instance);
* ``hollow`` - some object encloses background (``binary_fill_holes`` adds pixels);
* ``centre_offset`` - distance of the foreground centroid from the image centre divided by half
  the image diagonal (0 = centre, 1 = corner); NaN for empty masks.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from medfail.data.prompts import label_pieces


def mask_features(mask: np.ndarray, spacing: tuple[float, ...] | None) -> dict[str, float]:
    """Features of one integer GT label map (foreground = ``mask > 0``; objects as module
    docstring)."""
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
    pixel_mm2 = float(np.prod(spacing)) if spacing else float("nan")
    return {"gt_area_px": float(area), "gt_area_mm2": area * pixel_mm2,
            "n_objects": float(n_objects), "hollow": float(hollow), "centre_offset": offset}
