"""The embedded phantoms: deterministic, documented as synthetic, and with real planted effects."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image
from scipy import ndimage

from medfail.data.datasets import open_dataset
from medfail.data.phantoms import SITES, PhantomConfig, generate_phantom, write_phantom_splits

SMALL = PhantomConfig(n_train=8, n_calibration=4, n_test=40)


def _digest(root: Path) -> str:
    h = hashlib.sha256()
    for p in sorted(root.rglob("*")):
        if p.is_file():
            h.update(p.relative_to(root).as_posix().encode())
            h.update(p.read_bytes())
    return h.hexdigest()


def test_same_seed_same_bytes_other_seed_differs(tmp_path: Path) -> None:
    write_phantom_splits(tmp_path / "a", SMALL)
    write_phantom_splits(tmp_path / "b", SMALL)
    assert _digest(tmp_path / "a") == _digest(tmp_path / "b")
    other = PhantomConfig(n_train=8, n_calibration=4, n_test=40, seed=1)
    write_phantom_splits(tmp_path / "c", other)
    assert _digest(tmp_path / "a") != _digest(tmp_path / "c")


def test_splits_are_in_the_folder_format_and_marked_synthetic(tmp_path: Path) -> None:
    paths = write_phantom_splits(tmp_path, SMALL)
    assert "SYNTHETIC" in (tmp_path / "README.txt").read_text()
    cls = open_dataset(paths["test"], "classification")
    cls.validate(progress=False)
    assert cls.target_names == ["nodule", "cavity", "effusion"] and cls.multi_label
    seg = open_dataset(paths["test"], "segmentation")
    seg.validate(progress=False)
    meta = pd.read_csv(paths["test"] / "metadata.csv").set_index("id")
    for s in seg:
        # metadata agrees with the ground truth it describes
        assert meta.loc[s.id, "lesion_area_px"] == int((s.mask > 0).sum())
        assert s.spacing == (meta.loc[s.id, "pixel_spacing"],) * 2
    assert set(meta["site"]) == {"A", "B", "C"}


def _noise_sd(image: np.ndarray) -> float:
    """Robust noise estimate: MAD of the Laplacian residual / its gain."""
    lap = ndimage.laplace(image.astype(float))
    return float(np.median(np.abs(lap - np.median(lap))) / 0.6745 / np.sqrt(20))


def test_planted_effects_are_real() -> None:
    rng = np.random.default_rng(0)
    noise = {site: np.mean([_noise_sd(generate_phantom(rng, 128, site, (0.5, 0.5, 0.5)).image)
                            for _ in range(6)]) for site in SITES}
    assert noise["B"] > 3 * noise["A"]  # the low-dose site is much noisier
    areas = {"small": [], "large": []}
    hollow_has_hole = []
    for _ in range(60):
        ph = generate_phantom(rng, 128, "A", (1.0, 1.0, 0.0))
        _, n = ndimage.label(ph.mask)
        assert n >= 1
        if ph.metadata["lesion_size"] in areas and ph.metadata["n_lesions"] == 2:
            areas[str(ph.metadata["lesion_size"])].append(int(ph.mask.sum()))
        filled = ndimage.binary_fill_holes(ph.mask)
        hollow_has_hole.append(filled.sum() > ph.mask.sum())
    assert all(hollow_has_hole)  # every cavity mask is a ring
    # low-res site blurs fine detail: a small nodule loses peak contrast
    img_a = generate_phantom(np.random.default_rng(5), 128, "A", (1, 0, 0))
    img_c = generate_phantom(np.random.default_rng(5), 128, "C", (1, 0, 0))
    assert img_a.metadata["lesion_size"] == "small"

    def lesion_contrast(ph: object) -> float:
        ring = ndimage.binary_dilation(ph.mask, iterations=3) & ~ph.mask.astype(bool)
        return float(ph.image[ph.mask > 0].mean() - ph.image[ring].mean())

    assert lesion_contrast(img_c) < 0.8 * lesion_contrast(img_a)


def test_png_values_are_8bit(tmp_path: Path) -> None:
    paths = write_phantom_splits(tmp_path, SMALL)
    img = np.array(Image.open(next((paths["train"] / "images").glob("*.png"))))
    assert img.dtype == np.uint8 and img.ndim == 2
