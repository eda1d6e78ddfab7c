"""Embedded volumetric data: deterministic SYNTHETIC CT-like 3D phantoms with ground truth.

These volumes are synthetic. They are not patient data and carry no clinical meaning; they exist
so that ``medfail demo --task volumetric`` can show every analysis on volumes offline, with
effects that are known to be real.

Each volume is a field of view inside an abdomen, ``shape`` voxels (default 48 x 48 x 32 at
(1.2, 1.2, 2.5) mm, so the slice axis is the last): fat (~-90 HU, smooth texture) around a
soft-tissue ellipsoid (~30 HU), an organ ellipsoid (~60 HU, smooth texture) on the patient's
right, and 0-3 lesions inside the organ: ellipsoids brighter than the organ (+45 to +70 HU) with
an equivalent-sphere radius of

* ``small`` 2.0-2.8 mm (~0.03-0.09 mL), ``medium`` 3.5-4.5 mm (~0.18-0.38 mL),
* ``large`` 8.0-10.0 mm (~2.1-4.2 mL).

The mask (class 1, ``lesion``) covers the lesions. ``metadata.csv`` holds ``site``,
``protocol``, ``slice_thickness`` (mm, the reconstructed slice profile; the voxel spacing along
the slice axis stays 2.5 mm), ``lesion_size`` (the smallest lesion's class), ``location``
(``central``/``peripheral``: the lesions' position in the organ, from its centre to its border;
``mixed`` when both), ``n_lesions`` and ``lesion_volume_ml`` (total).

Planted effects (true by construction, for the analysis to find):

* site ``B`` (``low_dose``) is 3x noisier and is rare in training (25 %) but half of the test;
* thick reconstructions (``slice_thickness`` 5 mm, a third of every split) blur along the slice
  axis, so small lesions fade;
* small lesions are a few voxels: noise, blur and down-sampling erase them first;
* site ``C`` (``other_vendor``, the ``shift`` split) never appears in training or test: its
  HU scale is miscalibrated (``HU * 0.8 + 30``), with lower lesion contrast and more noise.

Files: NIfTI (``.nii.gz``, int16 HU images, uint8 masks) in the folder format (``images/``,
``masks/``, ``metadata.csv``, ``classes.txt``). They are stored in an LPS-like orientation (the
first two array axes flipped, affine ``diag(-sx, -sy, sz)`` plus an offset), so a reader must
bring them to the canonical RAS+ order (``nibabel.as_closest_canonical``) to recover
:attr:`Phantom3D.image` exactly. Everything is drawn from ``numpy.random.default_rng`` seeded by
(seed, split, index): the same config always gives the same bytes on disk.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
from scipy import ndimage

from medfail.data.phantoms import _sites_for
from medfail.seeding import derive_seed

MASK_CLASSES: tuple[str, ...] = ("lesion",)
FAT_HU = -90.0
#: Equivalent-sphere radius ranges (mm) per lesion size class.
LESION_RADII_MM: dict[str, tuple[float, float]] = {
    "small": (2.0, 2.8), "medium": (3.5, 4.5), "large": (8.0, 10.0)}
SIZE_ORDER = ("small", "medium", "large")
#: Reconstructed slice thicknesses (mm) and their share of every split.
THICK_SLICE_MM = 5.0
THICK_SHARE = 1 / 3


@dataclass(frozen=True)
class Site3D:
    """A CT site: noise, lesion contrast and a HU calibration ``HU * hu_scale + hu_offset``."""

    protocol: str
    noise_hu: float  # additive gaussian noise, HU
    lesion_contrast: float  # multiplies the lesion's HU excess over the organ
    hu_scale: float
    hu_offset: float


SITES_3D: dict[str, Site3D] = {
    "A": Site3D("standard", noise_hu=8.0, lesion_contrast=1.0, hu_scale=1.0, hu_offset=0.0),
    "B": Site3D("low_dose", noise_hu=24.0, lesion_contrast=1.0, hu_scale=1.0, hu_offset=0.0),
    # never seen in training or test: another vendor's miscalibrated scanner (the shift split)
    "C": Site3D("other_vendor", noise_hu=14.0, lesion_contrast=0.7, hu_scale=0.8,
                hu_offset=30.0),
}


@dataclass(frozen=True)
class Phantom3DConfig:
    """What the 3D phantom generator draws; the defaults are the volumetric demo's."""

    shape: tuple[int, int, int] = (48, 48, 32)
    spacing: tuple[float, float, float] = (1.2, 1.2, 2.5)  # mm, canonical (R, A, S) order
    n_train: int = 24
    n_val: int = 8
    n_calibration: int = 12
    n_test: int = 24
    n_shift: int = 8
    seed: int = 0
    #: probability of 0, 1, 2, 3 lesions
    lesion_counts: tuple[float, float, float, float] = (0.15, 0.45, 0.25, 0.15)
    site_mix_train: dict[str, float] = field(default_factory=lambda: {"A": 0.75, "B": 0.25})
    site_mix_test: dict[str, float] = field(default_factory=lambda: {"A": 0.5, "B": 0.5})

    def splits(self) -> dict[str, int]:
        """Split name -> number of volumes, in writing order."""
        return {"train": self.n_train, "val": self.n_val, "calibration": self.n_calibration,
                "test": self.n_test, "shift": self.n_shift}

    def to_json(self) -> str:
        """The config and the site table (what the volumes depend on): stamps and cache keys."""
        return json.dumps({**asdict(self), "sites": {k: asdict(v) for k, v in SITES_3D.items()},
                           "kind": "phantoms3d"}, sort_keys=True)


@dataclass
class Phantom3D:
    """One generated volume with its ground truth, in canonical RAS+ array order."""

    image: np.ndarray  # int16 HU, (X, Y, Z)
    mask: np.ndarray  # uint8 (X, Y, Z), 1 = lesion
    metadata: dict[str, object]


def _grid(shape: tuple[int, int, int], spacing: tuple[float, float, float]) -> list[np.ndarray]:
    """Voxel-centre coordinates in mm, one open (broadcastable) array per axis."""
    return [np.arange(n, dtype=np.float64).reshape([-1 if a == i else 1 for a in range(3)]) * s
            for i, (n, s) in enumerate(zip(shape, spacing, strict=True))]


def _inside(grid: list[np.ndarray], centre: np.ndarray, radii: np.ndarray) -> np.ndarray:
    """Boolean ellipsoid ``sum(((x - c) / r)^2) <= 1`` on the grid."""
    return sum(((g - c) / r) ** 2 for g, c, r in zip(grid, centre, radii, strict=True)) <= 1.0


def _place_lesions(rng: np.random.Generator, organ_c: np.ndarray, organ_r: np.ndarray,
                   sizes: list[str]) -> list[tuple[np.ndarray, np.ndarray, str, str]]:
    """Centre, radii, size class and location of each lesion: inside the organ with 1 mm to
    spare, not touching each other (2 mm apart), ``central`` within 35 % of the organ's
    free radius of its centre, ``peripheral`` at 60-90 %."""
    placed: list[tuple[np.ndarray, np.ndarray, str, str]] = []
    for size in sizes:
        r = rng.uniform(*LESION_RADII_MM[size])
        shape_f = np.array([rng.uniform(0.85, 1.15), rng.uniform(0.85, 1.15),
                            rng.uniform(1.0, 1.4)])
        radii = r * shape_f / np.cbrt(np.prod(shape_f))  # same volume as the sphere of radius r
        free = np.maximum(organ_r - radii - 1.0, 0.5)
        for _ in range(50):
            central = bool(rng.random() < 0.5)
            rho = rng.uniform(0.0, 0.35) if central else rng.uniform(0.6, 0.9)
            direction = rng.standard_normal(3)
            direction /= np.linalg.norm(direction)
            centre = organ_c + rho * free * direction
            if all(np.linalg.norm(centre - c) > np.max(radii) + np.max(rr) + 2.0
                   for c, rr, _, _ in placed):
                placed.append((centre, radii, size, "central" if central else "peripheral"))
                break
    return placed


def generate_phantom3d(rng: np.random.Generator, config: Phantom3DConfig, site_name: str,
                       thick: bool) -> Phantom3D:
    """Draw one synthetic CT-like volume at ``site_name`` (see the module docstring)."""
    site = SITES_3D[site_name]
    shape, spacing = config.shape, config.spacing
    grid = _grid(shape, spacing)
    extent = np.array([(n - 1) * s for n, s in zip(shape, spacing, strict=True)])
    centre = extent / 2
    body_r = extent / 2 * np.array([0.92, 0.82, 0.95]) * rng.uniform(0.95, 1.0, 3)
    fat = ndimage.gaussian_filter(rng.standard_normal(shape), 2.0)
    hu = np.where(_inside(grid, centre, body_r), 30.0, FAT_HU + 10.0 * fat / (fat.std() + 1e-8))
    organ_c = centre + np.array([extent[0] * 0.06, 0.0, 0.0]) + rng.uniform(-1.5, 1.5, 3)
    organ_r = extent / 2 * np.array([0.66, 0.58, 0.7]) * rng.uniform(0.95, 1.05, 3)
    organ = _inside(grid, organ_c, organ_r)
    texture = ndimage.gaussian_filter(rng.standard_normal(shape), 1.5)
    hu = np.where(organ, 60.0 + 8.0 * texture / (texture.std() + 1e-8), hu)

    n_lesions = int(rng.choice(4, p=np.asarray(config.lesion_counts) / sum(config.lesion_counts)))
    sizes = [SIZE_ORDER[int(k)] for k in rng.integers(0, 3, n_lesions)]
    mask = np.zeros(shape, np.uint8)
    lesions = _place_lesions(rng, organ_c, organ_r, sizes)
    for c, radii, _, _ in lesions:
        blob = _inside(grid, c, radii)
        hu = np.where(blob, 60.0 + site.lesion_contrast * rng.uniform(45.0, 70.0), hu)
        mask[blob] = 1

    thickness = THICK_SLICE_MM if thick else spacing[2]
    if thick:  # a slice profile of FWHM `thickness` mm along the slice axis
        hu = ndimage.gaussian_filter1d(hu, thickness / 2.355 / spacing[2], axis=2)
    hu = hu * site.hu_scale + site.hu_offset + rng.standard_normal(shape) * site.noise_hu
    image = np.clip(np.round(hu), -1024, 3071).astype(np.int16)

    voxel_ml = float(np.prod(spacing)) / 1000.0
    kinds = sorted({s for _, _, s, _ in lesions}, key=SIZE_ORDER.index)
    places = {p for _, _, _, p in lesions}
    metadata: dict[str, object] = {
        "site": site_name,
        "protocol": site.protocol,
        "slice_thickness": float(thickness),
        "lesion_size": kinds[0] if kinds else "none",
        "location": "none" if not places else (places.pop() if len(places) == 1 else "mixed"),
        "n_lesions": len(lesions),
        "lesion_volume_ml": round(float(mask.sum()) * voxel_ml, 4),
    }
    return Phantom3D(image=image, mask=mask, metadata=metadata)


def stored_affine(shape: tuple[int, int, int], spacing: tuple[float, float, float]) -> np.ndarray:
    """The on-disk affine: LPS-like (first two array axes run to -R and -A), the same world
    position as the canonical grid ``diag(sx, sy, sz)`` with its origin at the first voxel."""
    sx, sy, sz = spacing
    affine = np.diag([-sx, -sy, sz, 1.0])
    affine[0, 3] = (shape[0] - 1) * sx
    affine[1, 3] = (shape[1] - 1) * sy
    return affine


def to_stored(array: np.ndarray) -> np.ndarray:
    """Canonical (R, A, S) array -> on-disk (L, P, S) array (see :func:`stored_affine`)."""
    return np.ascontiguousarray(array[::-1, ::-1, :])


def write_nifti(path: Path, array: np.ndarray, spacing: tuple[float, float, float]) -> None:
    """Write a canonical array as an LPS-stored NIfTI-1 file (mm units, qform = sform,
    no intensity scaling); nibabel's gzip writer stamps no time, so the bytes are stable."""
    import nibabel as nib

    affine = stored_affine(array.shape, spacing)  # type: ignore[arg-type]
    img = nib.Nifti1Image(to_stored(array), affine)
    img.header.set_xyzt_units("mm", "sec")
    img.set_qform(affine, code=1)
    img.set_sform(affine, code=1)
    img.header["descrip"] = b"medfail synthetic phantom"
    nib.save(img, str(path))


def write_split3d(out_dir: Path, split: str, n: int, config: Phantom3DConfig) -> Path:
    """Write one split in the folder format: images/, masks/, classes.txt, metadata.csv."""
    root = Path(out_dir) / split
    (root / "images").mkdir(parents=True, exist_ok=True)
    (root / "masks").mkdir(parents=True, exist_ok=True)
    mix = {"train": config.site_mix_train, "val": config.site_mix_train,
           "shift": {"C": 1.0}}.get(split, config.site_mix_test)
    order = np.random.default_rng(derive_seed(config.seed, split, "sites"))
    sites = _sites_for(n, mix, order)
    thick = order.permutation(n) < round(n * THICK_SHARE)
    rows = []
    for i, site in enumerate(sites):
        rng = np.random.default_rng(derive_seed(config.seed, split, str(i)))
        ph = generate_phantom3d(rng, config, site, bool(thick[i]))
        sid = f"{split}_{i:04d}"
        write_nifti(root / "images" / f"{sid}.nii.gz", ph.image, config.spacing)
        write_nifti(root / "masks" / f"{sid}.nii.gz", ph.mask, config.spacing)
        rows.append({"id": sid, **ph.metadata})
    (root / "classes.txt").write_text("\n".join(MASK_CLASSES) + "\n")
    pd.DataFrame(rows).to_csv(root / "metadata.csv", index=False)
    return root


def write_phantom3d_splits(out_dir: Path,
                           config: Phantom3DConfig | None = None) -> dict[str, Path]:
    """Write train/val/calibration/test/shift splits under ``out_dir`` (skipped when already
    written with the same config: ``phantoms3d.json`` records it; another config rewrites)."""
    config = config or Phantom3DConfig()
    out_dir = Path(out_dir)
    stamp = out_dir / "phantoms3d.json"
    paths = {name: out_dir / name for name in config.splits()}
    if stamp.exists() and stamp.read_text() == config.to_json():
        return paths
    out_dir.mkdir(parents=True, exist_ok=True)
    for name, n in config.splits().items():
        write_split3d(out_dir, name, n, config)
    (out_dir / "README.txt").write_text(
        "SYNTHETIC phantom volumes generated by medfail.data.phantoms3d - not patient data.\n")
    stamp.write_text(config.to_json())
    return paths
