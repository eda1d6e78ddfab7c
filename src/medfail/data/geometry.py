"""Where a volume's voxels lie in the patient: the affine, and the way back to the file's order.

Conventions (docs/data.md, "Volumes"):

* medfail holds every volume in *canonical* RAS+ voxel order, as ``nibabel.as_closest_canonical``
  gives it: array axis 0 runs towards the patient's Right (R), axis 1 towards Anterior (A),
  axis 2 towards Superior (S). The canonical array is the file's array with
  axes permuted and flipped (never resampled), chosen by ``nibabel.orientations.io_orientation``
  (the closest axis for oblique scans).
* An affine maps voxel indices ``(i, j, k, 1)`` to world coordinates in mm (RAS, the NIfTI
  convention; DICOM's LPS is converted by ``diag(-1, -1, 1, 1)``).
* :class:`VolumeGeometry` keeps the canonical affine of the array medfail holds and the original
  affine and shape of the file, so a prediction made on the canonical array is written back in
  the file's own voxel order (:meth:`VolumeGeometry.save_nifti`) and overlays the user's scan in
  ITK-SNAP / 3D Slicer voxel for voxel.

Ground floor: numpy and nibabel only.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from nibabel import orientations as ornt_lib

#: LPS (DICOM) <-> RAS (NIfTI) world coordinates: negate x and y
LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])
#: the canonical orientation, as a nibabel orientation array
RAS = ornt_lib.axcodes2ornt(("R", "A", "S"))


def canonical_orientation(affine: np.ndarray) -> np.ndarray:
    """The nibabel orientation ``(3, 2)`` that brings an array with ``affine`` to RAS+: row i =
    (canonical axis of file axis i, +1 or -1 flip); the closest axes for oblique affines."""
    return ornt_lib.io_orientation(np.asarray(affine, dtype=np.float64))


def to_canonical(array: np.ndarray, affine: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(canonical array, canonical affine)`` of an array ``(X, Y, Z)[, ...]`` in a file's voxel
    order with its 4x4 ``affine``: the permutation/flips of ``nibabel.as_closest_canonical``
    (trailing axes follow). The array is contiguous (a copy when reoriented)."""
    affine = np.asarray(affine, dtype=np.float64)
    ornt = canonical_orientation(affine)
    shape = array.shape[:3]
    canonical = ornt_lib.apply_orientation(array, ornt)
    new_affine = affine @ ornt_lib.inv_ornt_aff(ornt, shape)
    return np.ascontiguousarray(canonical), new_affine


def voxel_sizes(affine: np.ndarray) -> tuple[float, float, float]:
    """Voxel size per array axis in mm: the column norms of the affine's 3x3 part."""
    return tuple(float(v) for v in np.linalg.norm(np.asarray(affine)[:3, :3], axis=0))


@dataclass
class VolumeGeometry:
    """Geometry of one volume (module docstring).

    Attributes:
        affine: canonical 4x4 voxel -> RAS mm affine of the array medfail holds.
        original_affine: the file's own 4x4 voxel -> RAS mm affine (DICOM: the series' LPS
            affine in RAS, array order (column, row, slice)).
        original_shape: the file's spatial shape ``(X, Y, Z)`` in its own voxel order.
        source: ``"nifti"`` or ``"dicom"``.
    """

    affine: np.ndarray
    original_affine: np.ndarray
    original_shape: tuple[int, int, int]
    source: str

    def _back(self) -> np.ndarray:
        """The orientation taking a canonical array back to the file's voxel order."""
        return ornt_lib.ornt_transform(RAS, canonical_orientation(self.original_affine))

    @property
    def shape(self) -> tuple[int, int, int]:
        """The canonical spatial shape (the file's shape permuted like the array)."""
        ornt = canonical_orientation(self.original_affine)
        shape = [0, 0, 0]
        for axis, n in enumerate(self.original_shape):
            shape[int(ornt[axis, 0])] = int(n)
        return (shape[0], shape[1], shape[2])

    def to_original(self, array: np.ndarray) -> np.ndarray:
        """A canonical ``(X, Y, Z)[, ...]`` array (a prediction, a mask) in the file's voxel
        order: the inverse permutation/flips of the read (trailing axes follow). Exact: no
        resampling. Raises ``ValueError`` when the spatial shape is not the volume's."""
        array = np.asarray(array)
        if tuple(array.shape[:3]) != self.shape:
            raise ValueError(f"array shape {array.shape} does not start with the volume's "
                             f"canonical shape {self.shape}")
        out = ornt_lib.apply_orientation(array, self._back())
        return np.ascontiguousarray(out)

    def save_nifti(self, array: np.ndarray, path: str | Path) -> Path:
        """Write a canonical ``(X, Y, Z)[, ...]`` array as NIfTI in the ORIGINAL voxel order with
        the original affine (sform and qform, units mm), so it overlays the source scan.

        dtypes: bool -> uint8; integers -> the smallest of uint8/int16/int32 holding them
        (NIfTI readers rarely take int64); floats -> float32.
        """
        import nibabel as nib

        data = self.to_original(array)
        data = _nifti_dtype(data)
        img = nib.Nifti1Image(data, self.original_affine)
        img.header.set_xyzt_units("mm")
        img.set_sform(self.original_affine, code=1)
        img.set_qform(self.original_affine, code=1)
        path = Path(path)
        nib.save(img, str(path))
        return path


def _nifti_dtype(data: np.ndarray) -> np.ndarray:
    kind = data.dtype.kind
    if kind == "b":
        return data.astype(np.uint8)
    if kind in "ui":
        lo, hi = (int(data.min()), int(data.max())) if data.size else (0, 0)
        for dtype in (np.uint8, np.int16, np.int32):
            info = np.iinfo(dtype)
            if info.min <= lo and hi <= info.max:
                return data.astype(dtype)
        return data.astype(np.float64)
    return data.astype(np.float32)
