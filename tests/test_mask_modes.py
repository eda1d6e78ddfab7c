"""Masks as they are shipped: 0/1, 0/255, 0/65535, bool and float binary masks, instance maps and
class label maps, read as one documented mask mode per dataset (medfail.data.masks)."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import tifffile
import torch
from PIL import Image
from typer.testing import CliRunner

from medfail.cli import app
from medfail.data.datasets import open_dataset
from medfail.data.folder import FolderDataset
from medfail.data.prompts import objects
from medfail.engine.predictor import Predictor
from medfail.engine.runner import run_suite
from medfail.engine.suite import SuiteConfig
from medfail.errors import MedfailInputError
from medfail.metrics.detection import lesion_counts, lesion_table
from medfail.models.adapters import Segmenter
from medfail.models.spec import ModelSpec
from medfail.models.training import segmentation_classes
from tests.conftest import box_promptable, dsb2018, write_png_folder

FAST = {"tests": ["gaussian_blur"], "severities": [1], "n_bootstrap": 20}


def threshold_segmenter(classes: int = 1) -> Segmenter:
    """Foreground probability sigmoid((x - 130) / 10) (as tests/test_engine.py)."""
    spec = ModelSpec(task="segmentation", target_names=[f"c{k}" for k in range(1, classes + 1)],
                     output="probabilities")

    def forward(x: torch.Tensor) -> torch.Tensor:
        fg = torch.sigmoid((x[:, :1] - 130.0) / 10.0)
        return torch.cat([1 - fg] + [fg / classes] * classes, dim=1)

    return Segmenter(spec, forward)


def never_called(classes: int = 1) -> Segmenter:
    """A segmenter that fails the test if medfail ever runs it."""
    spec = ModelSpec(task="segmentation", target_names=[f"c{k}" for k in range(1, classes + 1)],
                     output="probabilities")

    def forward(x: torch.Tensor) -> torch.Tensor:
        raise AssertionError("the model ran before the masks were checked")

    return Segmenter(spec, forward)


def mask_folder(root: Path, masks: list[np.ndarray], suffix: str = ".png",
                image: np.ndarray | None = None) -> Path:
    """images/case<i>.png (grey 8-bit) + masks/case<i><suffix> holding ``masks[i]`` as given."""
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    for i, m in enumerate(masks):
        img = image if image is not None else np.full(m.shape, 60, np.uint8)
        Image.fromarray(img).save(root / "images" / f"case{i}.png")
        path = root / "masks" / f"case{i}{suffix}"
        if suffix == ".npy":
            np.save(path, m)
        elif suffix == ".tif":
            tifffile.imwrite(path, m)
        else:
            Image.fromarray(m).save(path)
    return root


def square(value: int = 1, dtype: type = np.uint8, size: int = 16) -> np.ndarray:
    m = np.zeros((size, size), dtype)
    m[4:9, 5:11] = value
    return m


def touching_pairs(n_pairs: int = 11, first: int = 1) -> np.ndarray:
    """64x64 instance map: ``n_pairs`` pairs of touching 5x5 squares, distinct labels each."""
    m = np.zeros((64, 64), np.uint16)
    slots = [(r, c) for r in range(4, 60, 10) for c in range(4, 60, 16)]
    label = first
    for r, c in slots[:n_pairs]:
        m[r:r + 5, c:c + 5] = label
        m[r:r + 5, c + 5:c + 10] = label + 1
        label += 2
    return m


def instance_folder(root: Path) -> Path:
    """Two images whose bright squares are exactly the objects of their instance maps."""
    maps = [touching_pairs(), touching_pairs(first=101)]
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    for i, m in enumerate(maps):
        Image.fromarray(np.where(m > 0, 200, 60).astype(np.uint8)).save(
            root / "images" / f"cell{i}.png")
        tifffile.imwrite(root / "masks" / f"cell{i}.tif", m)
    return root


# ---------------------------------------------------------------------------- detection rule


def test_0_255_png_folder_is_binary_decided_once_and_printed_once(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    root = mask_folder(tmp_path / "d", [square(255), square(255), np.zeros((16, 16), np.uint8)])
    ds = open_dataset(root, "segmentation")
    s = ds.load("case0")
    assert s.mask.dtype == np.int64 and set(np.unique(s.mask)) == {0, 1}
    assert s.mask.sum() == 30 and s.instances is None
    ds.load("case1")
    ds.validate(progress=False)
    info = ds.mask_mode_info
    assert info["mode"] == "binary" and info["requested"] == "auto"
    assert info["values"] == [0, 255] and not info["instances_kept"]
    assert info["message"] == ("masks: 0/255 binary (values {0, 255}) -> foreground = 255 "
                               "(read as label 1)")
    out = capsys.readouterr().out
    assert out.count("masks: 0/255 binary") == 1 and "[d]" in out
    json.dumps(info)  # goes to run.json as is


@pytest.mark.parametrize(("mask", "suffix", "kind"), [
    (square(1, np.uint16), ".tif", "0/1"),
    (square(1, np.uint16), ".png", "0/1"),
    (square(1, bool), ".npy", "0/1"),
    (square(1, np.float32), ".npy", "0/1"),
    (square(65535, np.uint16), ".tif", "0/65535"),
    (square(255, np.float64), ".npy", "0/255"),
])
def test_binary_masks_in_any_dtype(mask: np.ndarray, suffix: str, kind: str,
                                   tmp_path: Path) -> None:
    ds = FolderDataset(mask_folder(tmp_path / "d", [mask, mask], suffix), "segmentation")
    s = ds.load("case1")
    np.testing.assert_array_equal(s.mask, (mask != 0).astype(np.int64))
    assert ds.mask_mode_info["mode"] == "binary"
    assert ds.mask_mode_info["message"].startswith(f"masks: {kind} binary")
    assert segmentation_classes(ds, [s]) == ["class_1"]  # was class_1..class_65535


def test_mixed_0_1_and_0_255_files_are_binary(tmp_path: Path) -> None:
    ds = FolderDataset(mask_folder(tmp_path / "d", [square(1), square(255)]), "segmentation")
    assert ds.load("case1").mask.max() == 1
    assert ds.mask_mode_info["mode"] == "binary"
    assert "one foreground value per mask" in ds.mask_mode_info["message"]


def test_class_label_maps_stay_classes(tmp_path: Path) -> None:
    two = square(1)
    two[10:14, 2:6] = 2
    ds = FolderDataset(mask_folder(tmp_path / "d", [two, square(1)]), "segmentation")
    s = ds.load("case0")
    assert set(np.unique(s.mask)) == {0, 1, 2} and s.instances is None
    assert ds.mask_mode_info["mode"] == "classes"
    assert segmentation_classes(ds, [s]) == ["class_1", "class_2"]


def test_instance_maps_kept_one_object_per_instance(tmp_path: Path) -> None:
    ds = FolderDataset(instance_folder(tmp_path / "d"), "segmentation")
    s = ds.load("cell1")
    info = ds.mask_mode_info
    assert info["mode"] == "instances" and info["instances_kept"]
    assert info["max_labels_per_image"] == 22
    assert "instance maps (up to 22 labels per image, each one connected object)" in \
        info["message"]
    assert set(np.unique(s.mask)) == {0, 1}
    np.testing.assert_array_equal(s.instances, touching_pairs(first=101))
    # per-object counts: 22 instances, although the 11 touching pairs are 11 components
    counts = lesion_counts(s.mask[None], s.mask[None], true_instances=s.instances[None])[0]
    assert counts.tolist() == [22, 0, 0]
    assert lesion_counts(s.mask[None], s.mask[None])[0].tolist() == [11, 0, 0]
    assert len(Predictor.prompts(s)) == 22 and len(objects(s.mask)) == 11
    assert segmentation_classes(ds, [s]) == ["class_1"]  # was class_1..class_122


def test_lesion_counts_with_true_instances() -> None:
    t = np.zeros((1, 8, 8), bool)
    t[0, 2:4, 2:6] = True  # one component, two touching instances (ids 5 and 9)
    inst = np.zeros((1, 8, 8), np.int32)
    inst[0, 2:4, 2:4], inst[0, 2:4, 4:6] = 5, 9
    assert lesion_counts(t, t, true_instances=inst)[0].tolist() == [2, 0, 0]
    assert [r.lesion_area for r in lesion_table(t, t, true_instances=inst)] == [4, 4]
    half = np.zeros_like(t)
    half[0, 2:4, 2:4] = True
    assert lesion_counts(t, half, true_instances=inst)[0].tolist() == [1, 1, 0]
    assert lesion_counts(t, half)[0].tolist() == [1, 0, 0]  # IoU 0.5 with the whole component
    hole = inst.copy()
    hole[0, 2, 5] = 0
    with pytest.raises(ValueError, match="0 on 1 foreground pixel"):
        lesion_counts(t, t, true_instances=hole)
    with pytest.raises(ValueError, match="shape of y_true"):
        lesion_counts(t, t, true_instances=inst[:, :4])
    with pytest.raises(ValueError, match="integer label map"):
        lesion_counts(t, t, true_instances=inst.astype(float))


def test_instance_lesions_through_the_runner(tmp_path: Path) -> None:
    ds = open_dataset(instance_folder(tmp_path / "d"), "segmentation")
    run = run_suite(threshold_segmenter(), ds, tmp_path / "run", SuiteConfig(**FAST),
                    progress=False, render=False)
    ps = pd.read_parquet(run / "per_sample.parquet")
    clean = ps[ps["condition"] == "clean"].pivot(index="id", columns="metric", values="value")
    # each touching pair is one predicted component; IoU 0.5 with each of its two nuclei
    assert (clean["lesion_tp"] == 22).all() and (clean["lesion_fn"] == 0).all()
    assert (clean["lesion_fp"] == 0).all() and (clean["dice"] > 0.99).all()
    info = json.loads((run / "run.json").read_text())
    assert info["data"]["mask_mode"]["mode"] == "instances"
    # the gt.objects slice counts the same objects: 22 nuclei per image (was 11 touching pairs)
    index = pd.read_parquet(run / "predictions" / "index.parquet")
    assert index["n_objects"].tolist() == [22.0, 22.0]


def test_promptable_instances_one_prompt_per_nucleus(tmp_path: Path) -> None:
    ds = open_dataset(instance_folder(tmp_path / "d"), "promptable")
    config = SuiteConfig(tests=["box_shift"], severities=[1], n_bootstrap=20)
    run = run_suite(box_promptable(), ds, tmp_path / "run", config,
                    progress=False, render=False)
    prompts = pd.read_parquet(run / "predictions" / "prompts.parquet")
    assert prompts.groupby("id")["object"].nunique().tolist() == [22, 22]  # not 11 pairs
    shifted = pd.read_parquet(run / "predictions" / "box_shift@1.prompts.parquet")
    assert len(shifted) == 44
    ps = pd.read_parquet(run / "per_sample.parquet")
    clean = ps[ps["condition"] == "clean"].pivot(index="id", columns="metric", values="value")
    assert (clean["lesion_tp"] + clean["lesion_fn"] == 22).all()


def test_dsb2018_instance_mask_detected(tmp_path: Path) -> None:
    image, instances = dsb2018()
    root = tmp_path / "nuclei"
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    tifffile.imwrite(root / "images" / "tile0.tif", image[:256, :256])
    tifffile.imwrite(root / "masks" / "tile0.tif", instances[:256, :256])  # as DSB ships it
    s = open_dataset(root, "segmentation").load("tile0")
    n = len(np.unique(instances[:256, :256])) - 1
    assert s.instances is not None and s.mask.max() == 1
    counts = lesion_counts(s.mask[None], s.mask[None], true_instances=s.instances[None])[0]
    assert counts[0] == n == 35 and lesion_counts(s.mask[None], s.mask[None])[0][0] < n


def test_tiles_keeping_slide_ids_are_instances(tmp_path: Path) -> None:
    """128² tiles of the DSB2018 image keep the image's object ids: at most 16 per tile (too few
    for rule 3), 125 across the dataset, each one connected object -> instances (rule 3b)."""
    _, instances = dsb2018()
    tiles = [instances[r:r + 128, c:c + 128] for r in range(0, 512, 128)
             for c in range(0, 512, 128)]
    assert max(len(np.unique(t)) - 1 for t in tiles) <= 20
    ds = FolderDataset(mask_folder(tmp_path / "d", tiles), "segmentation")
    info = ds.mask_mode_info
    assert info["mode"] == "instances", info["message"]
    assert "distinct labels across the masks" in info["message"]
    # a small class set spread over many masks stays classes
    three = square(1)
    three[10:14, 2:6] = 2
    three[2:6, 10:14] = 3
    ds = FolderDataset(mask_folder(tmp_path / "c", [three] * 30), "segmentation")
    assert ds.mask_mode_info["mode"] == "classes"


# ---------------------------------------------------------------------------- refusals


def test_ambiguous_single_value_refused(tmp_path: Path) -> None:
    root = mask_folder(tmp_path / "d", [square(2), square(2)])
    with pytest.raises(MedfailInputError) as err:
        FolderDataset(root, "segmentation").load("case0")
    msg = str(err.value)
    assert "case0.png" in msg and "only 0 and 2" in msg
    assert "--mask-mode binary" in msg and "--mask-mode classes" in msg
    assert FolderDataset(root, "segmentation", mask_mode="binary").load("case0").mask.max() == 1


def test_ignore_value_next_to_classes_refused(tmp_path: Path) -> None:
    m = square(1)
    m[0, :] = 255
    with pytest.raises(MedfailInputError, match=r"case1\.png: mask values \{0, 1, 255\}.*"
                       "--mask-mode binary"):
        _ = FolderDataset(mask_folder(tmp_path / "d", [square(1), m]),
                          "segmentation").mask_mode_info


def test_many_fragmented_labels_refused(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    noisy = rng.integers(0, 40, (32, 32)).astype(np.uint8)  # e.g. grey levels, not objects
    with pytest.raises(MedfailInputError, match=r"case0\.png: mask has 39 distinct labels .*"
                       "in several pieces.*--mask-mode instances"):
        FolderDataset(mask_folder(tmp_path / "d", [noisy]), "segmentation").validate(False)


def test_unknown_mode_and_mode_without_masks(tmp_path: Path) -> None:
    root = mask_folder(tmp_path / "d", [square(1)])
    with pytest.raises(MedfailInputError, match="unknown mask mode 'foreground'"):
        open_dataset(root, "segmentation", mask_mode="foreground")
    cls = write_png_folder(tmp_path / "cls", "classification", n=2)
    with pytest.raises(MedfailInputError, match="applies to segmentation and promptable"):
        open_dataset(cls, "classification", mask_mode="binary")
    assert open_dataset(cls, "classification").mask_mode_info is None


# ---------------------------------------------------------------------------- model labels


def test_label_beyond_model_classes_names_the_file_before_the_model_runs(tmp_path: Path) -> None:
    three = square(1)
    three[12:14, 12:14] = 3
    ds = open_dataset(mask_folder(tmp_path / "d", [square(1), three]), "segmentation")
    with pytest.raises(MedfailInputError) as err:
        run_suite(never_called(), ds, tmp_path / "run", SuiteConfig(**FAST), progress=False,
                  render=False)
    msg = str(err.value)
    assert "case1.png" in msg and "label(s) {3}" in msg and "1 foreground class(es)" in msg
    assert not (tmp_path / "run").exists()


def test_classes_mode_reads_255_as_label_255(tmp_path: Path) -> None:
    root = mask_folder(tmp_path / "d", [square(255), square(255)])
    ds = open_dataset(root, "segmentation", mask_mode="classes")
    assert ds.load("case0").mask.max() == 255
    assert ds.mask_mode_info["message"].startswith("masks: --mask-mode classes")
    with pytest.raises(MedfailInputError, match=r"case0\.png: mask has label\(s\) \{255\}"):
        ds.check_mask_labels(["lesion"])
    ds.check_mask_labels([f"c{k}" for k in range(1, 256)])  # a 255-class model knows it
    assert ds.content_hash() != open_dataset(root, "segmentation").content_hash()


def test_auto_binary_vs_multiclass_model_asks_for_classes(tmp_path: Path) -> None:
    ds = open_dataset(mask_folder(tmp_path / "d", [square(255)]), "segmentation")
    with pytest.raises(MedfailInputError, match=r"case0\.png: masks were read as binary .* "
                       "predicts 2 foreground classes.*--mask-mode classes"):
        run_suite(never_called(2), ds, tmp_path / "run", SuiteConfig(**FAST), progress=False)


def test_training_refuses_mask_labels_its_model_will_not_have(tmp_path: Path) -> None:
    """classes.txt naming fewer classes than the masks hold, or a --val mask with a label the
    training masks lack, is one error line naming the file (was: a RuntimeError traceback from
    the loss's one-hot encoding, mid-training)."""
    two = square(1)
    two[10:14, 2:6] = 2
    three = square(1)
    three[10:14, 2:6] = 3
    train_dir = mask_folder(tmp_path / "train", [two, square(1)])
    val_dir = mask_folder(tmp_path / "val", [three, two])
    args = ["train", "--task", "segmentation", "--epochs", "1", "--quiet"]
    result = CliRunner().invoke(app, [*args, "--data", str(train_dir), "--val", str(val_dir),
                                      "--out", str(tmp_path / "m.pt")])
    assert result.exit_code == 2, result.output
    assert re.search(r"error: .*val.masks.case0\.png: mask has label\(s\) \{3\}",
                     result.output), result.output
    (train_dir / "classes.txt").write_text("lesion\n")
    result = CliRunner().invoke(app, [*args, "--data", str(train_dir),
                                      "--out", str(tmp_path / "m.pt")])
    assert result.exit_code == 2, result.output
    assert re.search(r"error: .*classes\.txt: names 1 foreground class\(es\) but the masks hold "
                     "labels up to 2", result.output), result.output
    assert not (tmp_path / "m.pt").exists()


def test_promptable_training_examples_are_one_per_instance(tmp_path: Path) -> None:
    """medfail train prompts the objects medfail run prompts: one per instance of an instance
    map (touching nuclei stay separate), not one per connected pair."""
    from medfail.models.training import TrainConfig, _Examples

    ds = open_dataset(instance_folder(tmp_path / "d"), "promptable")
    spec = ModelSpec(task="promptable", target_names=["nucleus"], input_size=(32, 32),
                     prompt_channels=["box", "point"])
    examples = _Examples(list(ds), spec, TrainConfig(task="promptable", size=32))
    _, y = examples.epoch(np.random.default_rng(0))
    assert y.sum(dim=(1, 2, 3)).tolist() == [25] * len(y)  # one 5x5 nucleus each, not 50


def test_promptable_training_without_objects_names_the_folder(tmp_path: Path) -> None:
    """Every mask empty: one error naming the data (was 'error: need at least one array to
    stack')."""
    empty = mask_folder(tmp_path / "empty", [np.zeros((16, 16), np.uint8)] * 2)
    result = CliRunner().invoke(app, ["train", "--task", "promptable", "--data", str(empty),
                                      "--out", str(tmp_path / "m.pt"), "--epochs", "1",
                                      "--quiet"])
    assert result.exit_code == 2, result.output
    assert re.search(r"error: .*empty: no object in any mask", result.output), result.output


# ---------------------------------------------------------------------------- end to end


def test_0_255_scores_like_0_1(tmp_path: Path) -> None:
    ones = write_png_folder(tmp_path / "ones", "segmentation", n=4, size=32)
    scaled = tmp_path / "scaled"
    shutil.copytree(ones, scaled)
    for path in (scaled / "masks").glob("*.png"):
        Image.fromarray(np.array(Image.open(path)) * np.uint8(255)).save(path)
    assert np.array(Image.open(scaled / "masks" / "case000.png")).max() == 255
    tables = []
    for root in (ones, scaled):
        run = run_suite(threshold_segmenter(), open_dataset(root, "segmentation"),
                        tmp_path / f"run_{root.name}", SuiteConfig(**FAST), progress=False,
                        render=False)
        ps = pd.read_parquet(run / "per_sample.parquet")
        tables.append(ps.sort_values(["condition", "id", "metric"]).reset_index(drop=True))
        info = json.loads((run / "run.json").read_text())["data"]["mask_mode"]
        assert info["mode"] == "binary"
    pd.testing.assert_frame_equal(tables[0], tables[1])
    dice = tables[1][(tables[1]["metric"] == "dice") & (tables[1]["condition"] == "clean")]
    assert dice["value"].mean() > 0.5


def test_cli_mask_mode_option(tmp_path: Path) -> None:
    data = mask_folder(tmp_path / "d", [square(255), square(255)])

    class Threshold(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            fg = torch.sigmoid((x[:, :1] - 130.0) / 10.0)
            return torch.cat([1 - fg, fg], dim=1)

    model = tmp_path / "seg.pt"
    spec = {"task": "segmentation", "target_names": ["lesion"], "output": "probabilities"}
    torch.jit.save(torch.jit.script(Threshold()), str(model),
                   _extra_files={"medfail_spec.json": json.dumps(spec)})
    runner = CliRunner()
    args = ["run", "--model", str(model), "--data", str(data), "--task", "segmentation",
            "--out", str(tmp_path / "run"), "--quiet"]
    result = runner.invoke(app, [*args, "--mask-mode", "classes"])
    assert result.exit_code == 2
    assert "masks: --mask-mode classes (values {0, 255})" in result.output
    assert "error:" in result.output and "case0.png: mask has label(s) {255}" in result.output
    result = runner.invoke(app, [*args, "--mask-mode", "thresholded"])
    assert result.exit_code == 2 and "unknown mask mode 'thresholded'" in result.output
    result = runner.invoke(app, ["train", "--task", "segmentation", "--data", str(data),
                                 "--out", str(tmp_path / "m.pt"), "--mask-mode", "nope"])
    assert result.exit_code == 2 and "unknown mask mode 'nope'" in result.output
