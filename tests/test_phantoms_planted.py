"""The phantoms' unnamed effects: a spurious marker (train-only correlation with effusion, in no
metadata column) and flipped calibration labels, both recorded in planted.json (the answer key)."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image
from scipy import ndimage

from medfail.data.datasets import open_dataset
from medfail.data.phantoms import (
    FINDINGS,
    SITES,
    PhantomConfig,
    _ellipse,
    generate_phantom,
    write_phantom_splits,
)
from medfail.seeding import derive_seed
from tests.test_phantoms import _digest

SPLITS = ("train", "calibration", "test", "shift")
TINY = PhantomConfig(size=64, n_train=60, n_calibration=60, n_test=24, n_shift=8)
NO_MARKER = {"marker_given_effusion_train": 0.0, "marker_given_no_effusion_train": 0.0,
             "marker_rate_eval": 0.0}
PLAIN = replace(TINY, label_flips=0, **NO_MARKER)


@pytest.fixture(scope="module")
def written(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("planted")
    write_phantom_splits(root / "tiny", TINY)
    write_phantom_splits(root / "plain", PLAIN)
    return {"tiny": root / "tiny", "plain": root / "plain"}


def _image(root: Path, split: str, sid: str) -> np.ndarray:
    return np.array(Image.open(root / split / "images" / f"{sid}.png"))


def _planted(root: Path) -> dict:
    return json.loads((root / "planted.json").read_text())


def test_marker_follows_effusion_in_train_only(written: dict[str, Path]) -> None:
    planted = _planted(written["tiny"])
    assert set(planted["marker"]) == set(SPLITS) and planted["description"]
    labels = pd.read_csv(written["tiny"] / "train" / "labels.csv").set_index("id")
    marked = labels.index.isin(planted["marker"]["train"])
    effusion = labels["effusion"].to_numpy() == 1
    assert marked[effusion].mean() > 0.75 and marked[~effusion].mean() < 0.25
    # elsewhere one rate whatever the labels: all or nothing at rates 1 and 0
    for rate in (0.0, 1.0):
        config = replace(TINY, n_train=4, n_calibration=4, n_test=12, n_shift=4,
                         marker_rate_eval=rate)
        paths = write_phantom_splits(written["tiny"].parent / f"rate{rate}", config)
        ids = pd.read_csv(paths["test"] / "labels.csv")["id"].tolist()
        assert _planted(paths["test"].parent)["marker"]["test"] == (ids if rate else [])
    test = pd.read_csv(written["tiny"] / "test" / "labels.csv").set_index("id")
    in_test = test.loc[planted["marker"]["test"], "effusion"]
    assert set(in_test) == {0, 1}  # the marker is not an effusion sign outside train


def test_marker_ids_are_the_images_that_carry_it(written: dict[str, Path]) -> None:
    planted = _planted(written["tiny"])
    size = TINY.size
    s = size / 128.0
    body = _ellipse((size, size), size / 2 + 2 * s, size / 2, 58 * s, 54 * s) <= 1
    # the 2x down/up-sampling of sites C and D spreads the marker's edge by up to 2 px
    inner_body = ndimage.binary_erosion(body, iterations=3)
    for split in SPLITS:
        marked = set(planted["marker"][split])
        sites = pd.read_csv(written["tiny"] / split / "metadata.csv").set_index("id")["site"]
        for p in sorted((written["plain"] / split / "images").glob("*.png")):
            sid = p.stem
            change = _image(written["tiny"], split, sid).astype(int) - _image(
                written["plain"], split, sid)
            diff = change != 0
            assert diff.any() == (sid in marked), sid
            if sid in marked:
                # bright, outside the body (so never on a lesion), never in the mask
                blurred = SITES[sites[sid]].downsample > 1
                assert not (diff & (inner_body if blurred else body)).any()
                assert change.min() >= 0 and change.max() > 0.25 * 255
            masks = [written[k] / split / "masks" / f"{sid}.png" for k in ("tiny", "plain")]
            assert masks[0].read_bytes() == masks[1].read_bytes()


def test_no_marker_information_in_metadata(written: dict[str, Path]) -> None:
    for split in SPLITS:
        for name in ("metadata.csv", "classes.txt"):
            assert (written["tiny"] / split / name).read_bytes() == (
                written["plain"] / split / name).read_bytes()
        meta = pd.read_csv(written["tiny"] / split / "metadata.csv")
        assert not [c for c in meta.columns if "marker" in c.lower()]
        # the folder loader reads the split as before (planted.json lies outside it)
        ds = open_dataset(written["tiny"] / split, "classification")
        assert ds.target_names == list(FINDINGS)


def test_flips_are_applied_as_recorded(written: dict[str, Path]) -> None:
    flips = _planted(written["tiny"])["label_flips"]
    assert len(flips) == TINY.label_flips
    assert len({f["id"] for f in flips}) == len(flips)  # distinct images
    for split in SPLITS:
        tiny = pd.read_csv(written["tiny"] / split / "labels.csv").set_index("id")
        plain = pd.read_csv(written["plain"] / split / "labels.csv").set_index("id")
        assert list(tiny.columns) == list(FINDINGS) and tiny.index.equals(plain.index)
        changed = {(i, t) for i in tiny.index for t in FINDINGS
                   if tiny.loc[i, t] != plain.loc[i, t]}
        expected = {(f["id"], f["target"]) for f in flips} if split == "calibration" else set()
        assert changed == expected
    calibration = pd.read_csv(written["tiny"] / "calibration" / "labels.csv").set_index("id")
    plain = pd.read_csv(written["plain"] / "calibration" / "labels.csv").set_index("id")
    for f in flips:
        assert plain.loc[f["id"], f["target"]] == f["true_label"]
        assert calibration.loc[f["id"], f["target"]] == f["written_label"] == 1 - f["true_label"]
    # unambiguous errors: site A, no other lesion; both directions
    meta = pd.read_csv(written["tiny"] / "calibration" / "metadata.csv").set_index("id")
    for f in flips:
        assert f["target"] in TINY.label_flip_targets and meta.loc[f["id"], "site"] == "A"
        other = "nodule" if f["target"] == "cavity" else "cavity"
        assert plain.loc[f["id"], other] == 0
    assert {f["true_label"] for f in flips} == {0, 1}


def test_same_config_same_bytes(written: dict[str, Path], tmp_path: Path) -> None:
    write_phantom_splits(tmp_path / "again", TINY)
    assert _digest(tmp_path / "again") == _digest(written["tiny"])
    assert json.loads((tmp_path / "again" / "phantoms.json").read_text())["label_flips"] == 6


def test_disabled_features_give_the_plain_generator(written: dict[str, Path]) -> None:
    """Marker rates 0 and no flips: every image and label is the generator's without them."""
    assert _planted(written["plain"])["marker"] == {s: [] for s in SPLITS}
    assert _planted(written["plain"])["label_flips"] == []
    for split in ("train", "calibration"):
        meta = pd.read_csv(written["plain"] / split / "metadata.csv")
        labels = pd.read_csv(written["plain"] / split / "labels.csv").set_index("id")
        for i, site in enumerate(meta["site"]):
            sid = f"{split}_{i:04d}"
            rng = np.random.default_rng(derive_seed(PLAIN.seed, split, str(i)))
            ph = generate_phantom(rng, PLAIN.size, site, PLAIN.prevalence)
            assert not ph.marker
            assert np.array_equal(_image(written["plain"], split, sid),
                                  np.round(ph.image * 255).astype(np.uint8))
            assert labels.loc[sid].to_dict() == ph.labels
