"""Shared test helpers: tiny folders in the medfail format, written by the tests themselves."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from PIL import Image


def dsb2018() -> tuple[np.ndarray, np.ndarray]:
    """stardist's real DSB2018 nuclei image (512², uint16 holding 0..235) and its instance mask;
    skips the calling test when stardist (which ships them) is not installed."""
    import importlib.util

    import tifffile

    spec = importlib.util.find_spec("stardist")
    if spec is None or spec.origin is None:
        pytest.skip("stardist (which ships the DSB2018 nuclei image) is not installed")
    src = Path(spec.origin).parent / "data" / "images"
    return tifffile.imread(src / "img2d.tif"), tifffile.imread(src / "mask2d.tif")


def write_png_folder(root: Path, task: str, n: int = 16, size: int = 32, seed: int = 0,
                     multi_class: bool = False) -> Path:
    """A folder of 8-bit PNGs with a learnable signal (bright discs), in the folder format.

    classification: targets ``disc`` (a bright disc is present) and ``bar`` (a bright bar);
    segmentation/promptable: masks of the discs (label 1).
    """
    rng = np.random.default_rng(seed)
    (root / "images").mkdir(parents=True, exist_ok=True)
    if task != "classification":
        (root / "masks").mkdir(exist_ok=True)
    yy, xx = np.mgrid[:size, :size]
    labels, meta = [], []
    for i in range(n):
        img = rng.normal(60, 8, (size, size))
        mask = np.zeros((size, size), np.uint8)
        disc = bool(i % 2 == 0) if task == "classification" else True
        bar = bool(rng.random() < 0.5)
        if disc:
            cy, cx = rng.integers(8, size - 8, 2)
            r = rng.uniform(3, 6)
            d = (yy - cy) ** 2 + (xx - cx) ** 2 <= r**2
            img[d] = 200
            mask[d] = 1
        if bar and task == "classification":
            img[2:5, 4:size - 4] = 180
        sid = f"case{i:03d}"
        Image.fromarray(np.clip(img, 0, 255).astype(np.uint8)).save(root / "images" / f"{sid}.png")
        if task != "classification":
            Image.fromarray(mask).save(root / "masks" / f"{sid}.png")
        if multi_class:
            labels.append({"id": sid, "label": "disc" if disc else "none"})
        else:
            labels.append({"id": sid, "disc": int(disc), "bar": int(bar)})
        meta.append({"id": sid, "site": "s1" if i % 3 else "s2"})
    if task == "classification":
        pd.DataFrame(labels).to_csv(root / "labels.csv", index=False)
    pd.DataFrame(meta).to_csv(root / "metadata.csv", index=False)
    return root


@pytest.fixture
def cls_folder(tmp_path: Path) -> Path:
    return write_png_folder(tmp_path / "cls", "classification")


@pytest.fixture
def seg_folder(tmp_path: Path) -> Path:
    return write_png_folder(tmp_path / "seg", "segmentation")


def box_promptable(softness: float = 10.0) -> Any:
    """Promptable segmenter: bright pixels inside the prompt's box,
    foreground = sigmoid((x - 130) / softness) · box channel."""
    import torch

    from medfail.models.adapters import PromptableSegmenter
    from medfail.models.spec import ModelSpec

    spec = ModelSpec(task="promptable", target_names=["nucleus"], output="probabilities",
                     prompt_channels=["box", "point"])

    def forward(x: torch.Tensor) -> torch.Tensor:
        fg = torch.sigmoid((x[:, :1] - 130.0) / softness) * x[:, 1:2]
        return torch.cat([1 - fg, fg], dim=1)

    return PromptableSegmenter(spec, forward)
