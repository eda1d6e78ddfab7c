"""The Sample type that flows through medfail.

Images are float32 arrays shaped ``(C, *spatial)``: ``(C, H, W)`` for 2D, ``(C, X, Y, Z)``
for volumes (canonical RAS+ order, :mod:`medfail.data.geometry`). Intensities stay in their
native units (8-bit grey levels, 16-bit counts, Hounsfield units for CT) so stress tests such
as CT windowing act on real values; models apply their own normalisation. ``spacing`` has one
entry per spatial axis (mm), or is ``None``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from medfail.data.geometry import VolumeGeometry


@dataclass
class Sample:
    """One image with its ground truth and acquisition facts.

    Attributes:
        id: sample id (file stem), unique within a dataset.
        image: float32 ``(C, *spatial)`` in native intensity units.
        value_range: ``(lo, hi)`` of the intensity scale the image lives on (e.g. ``(0, 255)``
            for 8-bit files, the stored range for 16-bit/float/HU data). Stress tests work
            relative to it.
        integer: the source pixels were integers, so perturbed images are rounded back.
        label: classification target vector (0/1 per target for multi-label, or a single class
            index for multi-class), or ``None``.
        mask: integer ``(*spatial)`` label map as interpreted by the dataset's mask mode
            (0 = background, label k = foreground class k), or ``None``.
        spacing: pixel/voxel spacing in mm per spatial axis, or ``None`` when unknown.
        modality: ``"CT"``, ``"MR"``, ``"US"``, ``"XR"``, ``"RGB"``... or ``""`` when unknown.
        metadata: free-form columns from ``metadata.csv`` (site, protocol, ...).
        instances: the raw instance map (int ``(*spatial)``, one label per object, 0 =
            background) when the masks are instance maps (``mask_mode`` instances, see
            :mod:`medfail.data.masks`); ``mask`` then holds 0/1 foreground. ``None`` otherwise:
            objects are then the connected components of ``mask``.
        geometry: a volume's affines (:class:`medfail.data.geometry.VolumeGeometry`: canonical
            and original, to write predictions back in the file's orientation); ``None`` for 2D
            images. Volumes are ``(C, X, Y, Z)`` in canonical RAS+ order, ``spacing`` in that
            order.
    """

    id: str
    image: np.ndarray
    value_range: tuple[float, float]
    integer: bool = False
    label: np.ndarray | None = None
    mask: np.ndarray | None = None
    spacing: tuple[float, ...] | None = None
    modality: str = ""
    metadata: dict[str, Any] = field(default_factory=dict)
    instances: np.ndarray | None = None
    geometry: VolumeGeometry | None = None

    @property
    def object_map(self) -> np.ndarray | None:
        """The label map whose objects are the ground-truth objects (one prompt each, one lesion
        each, one training example each): :attr:`instances` when present, else :attr:`mask`."""
        return self.instances if self.instances is not None else self.mask

    @property
    def spatial_shape(self) -> tuple[int, ...]:
        return tuple(self.image.shape[1:])

    @property
    def channels(self) -> int:
        return int(self.image.shape[0])
