"""Train the light baselines (≤15 epochs on CPU) on any dataset in the folder format.

* classification: a half-width MONAI ResNet-18 (default; ``arch="densenet121"`` for MONAI
  DenseNet121) on whole images resized to ``size`` (the classification resize rule),
  BCE-with-logits for multi-label targets or cross-entropy for multi-class, random horizontal
  flips;
* segmentation: MONAI U-Net on random ``size`` patches at native resolution (half of them centred
  on a foreground pixel so small structures are seen), Dice + cross-entropy loss;
* promptable: the same U-Net with box and point channels; one example per object, for the 3
  largest objects of each image (the objects ``medfail run`` prompts:
  :attr:`~medfail.data.sample.Sample.object_map`, so one per instance of an instance map) with a
  jittered box (±10 % of its size) and a random interior point, target = that object only.

Defaults that fit a CPU (:func:`resolve_config`): classification ``size`` = the median image
side clipped to ``CLASSIFICATION_SIZE_RANGE`` (never upsampling 28 px images to 64 px), the
segmentation patch = the median shorter side rounded up to a multiple of 8, clipped to
``SEGMENTATION_SIZE_RANGE``; batch 64 for resnet18, 16 otherwise; 2 patches per image. The
choice is printed as one line and stored in the training log (``setup``).

Volumes ``(C, X, Y, Z)`` (segmentation only): the 3D U-Net of
:data:`~medfail.models.networks.UNET_3D` (8-16-32-64, ~0.15 M params) on random patches of
``VOLUME_PATCH`` voxels a side (``size`` when given), each axis clipped to the median volume side
along it rounded up to a multiple of 8 (shorter volumes are zero-padded); half of the patches
centred on a foreground voxel (jitter ±patch/4 per axis), ``VOLUME_PATCHES_PER_IMAGE`` per volume
and epoch, batch ``VOLUME_BATCH_SIZE``. When every training volume has a spacing, the model
spacing is their per-axis median: volumes (trilinear) and masks (nearest) are resampled to it
before patches are drawn (:mod:`medfail.models.resample`), and ``medfail run`` resamples test
volumes to it; otherwise the spec's spacing is ``None`` and volumes are used as they are.

Optimiser Adam: lr 1e-3 for the classifiers, 1e-2 for the U-Nets (at 1e-3 the U-Net needs far
more than 15 epochs to separate 1 %-of-pixel lesions from background). With a validation set and
``patience``, training stops after ``patience`` epochs without a lower validation loss and the
best epoch's weights are kept (the log records ``best_epoch`` and ``stop_reason``); without one,
every epoch runs. Everything random is drawn from generators seeded by ``seed``; progress and
early stopping draw nothing, so the same config trains the same weights.
"""

from __future__ import annotations

import math
import platform
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from monai.losses import DiceCELoss
from scipy import ndimage
from tqdm.auto import tqdm

import medfail
from medfail.data.datasets import Dataset
from medfail.data.prompts import Prompt, objects
from medfail.data.sample import Sample
from medfail.errors import MedfailInputError
from medfail.models.bundle import save_model
from medfail.models.intensity import summarise
from medfail.models.networks import (
    ARCH_LABELS,
    ARCHS,
    DEFAULT_ARCH,
    MIN_SIZE,
    TASK_ARCHS,
    UNET_3D_LABEL,
    arch_kwargs,
    build_network,
    size_problem,
)
from medfail.models.preprocess import adapt_channels, prompt_channels, to_tensor
from medfail.models.resample import model_grid, resize
from medfail.models.spec import ModelSpec

MAX_EPOCHS = 15
#: classification input side: the median image side clipped to this range (px)
CLASSIFICATION_SIZE_RANGE = (28, 128)
#: segmentation/promptable patch side: the median shorter side (rounded up to a multiple of 8)
#: clipped to this range (px)
SEGMENTATION_SIZE_RANGE = (32, 64)
#: batch size by architecture when not given (others: 16)
DEFAULT_BATCH_SIZE: dict[str, int] = {"resnet18": 64}
#: patches drawn per 2D image and epoch when not given
PATCHES_PER_IMAGE = 2
#: volumes: patch side (voxels) when not given; each axis clipped to the median volume side
VOLUME_PATCH = 32
#: volumes: smallest patch side along an axis (the U-Net halves it three times)
VOLUME_MIN_SIDE = 8
#: volumes: patches per volume and epoch, and batch size, when not given
VOLUME_PATCHES_PER_IMAGE = 8
VOLUME_BATCH_SIZE = 4


@dataclass
class TrainConfig:
    """Training options (the CLI's ``medfail train`` flags).

    ``None`` means "choose": ``arch`` and ``lr`` by task here; ``size`` and ``batch_size`` from
    the data and the architecture by :func:`resolve_config`. ``patience``: with a validation
    set, stop after this many epochs without a lower validation loss and keep the best epoch's
    weights; ``None`` (or 0) trains every epoch and keeps the last weights.
    """

    task: str
    arch: str | None = None
    size: int | None = None
    epochs: int = 8
    seed: int = 0
    batch_size: int | None = None
    lr: float | None = None  # default: 1e-3 for the classifiers, 1e-2 for the U-Nets
    patches_per_image: int | None = None  # default: 2 per image, 8 per volume
    device: str = "cpu"
    patience: int | None = 3

    def __post_init__(self) -> None:
        if self.task not in TASK_ARCHS:
            raise ValueError(f"unknown task {self.task!r}; choose one of {', '.join(TASK_ARCHS)}")
        if not 1 <= self.epochs <= MAX_EPOCHS:
            raise ValueError(f"epochs must be between 1 and {MAX_EPOCHS}, got {self.epochs}")
        self.arch = self.arch or DEFAULT_ARCH[self.task]
        if self.arch not in TASK_ARCHS[self.task]:
            what = "cannot train" if self.arch in ARCHS else "is not an architecture for"
            raise ValueError(f"arch {self.arch!r} {what} {self.task}; choose "
                             f"{' or '.join(TASK_ARCHS[self.task])}")
        if self.size is not None:
            if self.size < 16:
                raise ValueError(f"size must be at least 16 px, got {self.size}")
            problem = size_problem(self.arch, self.size)
            if problem:
                raise ValueError(f"{problem}; choose another size (or leave it to the data)")
        if self.patches_per_image is not None and self.patches_per_image < 1:
            raise ValueError(f"patches per image must be at least 1, got "
                             f"{self.patches_per_image}")
        if self.batch_size is not None and self.batch_size < 1:
            raise ValueError(f"batch size must be at least 1, got {self.batch_size}")
        if self.patience is not None and self.patience < 0:
            raise ValueError(f"patience must be 0 (off) or more epochs, got {self.patience}")
        self.patience = self.patience or None
        self.lr = self.lr or (1e-3 if self.task == "classification" else 1e-2)


def spatial_dims(samples: list[Sample], where: Any = None) -> int:
    """2 (images) or 3 (volumes) for the training samples; mixing them is an error."""
    dims = {s.image.ndim - 1 for s in samples}
    if len(dims) > 1 or not dims <= {2, 3}:
        raise MedfailInputError(where, f"training images have {sorted(dims)} spatial dims; "
                                "medfail trains on 2D images or on 3D volumes, not a mix")
    return dims.pop() if dims else 2


def resolve_config(config: TrainConfig, samples: list[Sample]) -> tuple[TrainConfig, str]:
    """Fill ``size``, ``batch_size`` and ``patches_per_image`` left as ``None`` from the
    training images and the architecture; returns the complete config and why that size was
    chosen."""
    if spatial_dims(samples) == 3:
        return _resolve_volumes(config, samples)
    if config.size is not None:
        size, why = config.size, "size given"
    elif config.task == "classification":
        side = round(float(np.median([max(s.spatial_shape[-2:]) for s in samples])))
        lo, hi = CLASSIFICATION_SIZE_RANGE
        lo = max(lo, MIN_SIZE.get(str(config.arch), lo))
        size = int(np.clip(side, lo, hi))
        why = f"size = median image side {side} px clipped to [{lo}, {hi}]"
    else:
        side = round(float(np.median([min(s.spatial_shape[-2:]) for s in samples])))
        lo, hi = SEGMENTATION_SIZE_RANGE
        size = int(np.clip(-(-side // 8) * 8, lo, hi))
        why = (f"patch = median shorter side {side} px rounded up to a multiple of 8, "
               f"clipped to [{lo}, {hi}]")
    batch = config.batch_size or DEFAULT_BATCH_SIZE.get(str(config.arch), 16)
    patches = config.patches_per_image or PATCHES_PER_IMAGE
    return replace(config, size=size, batch_size=batch, patches_per_image=patches), why


def _resolve_volumes(config: TrainConfig, samples: list[Sample]) -> tuple[TrainConfig, str]:
    """:func:`resolve_config` for volumes (segmentation with the unet only)."""
    if config.task != "segmentation":
        raise MedfailInputError(None, f"--task {config.task} cannot train on volumes yet; "
                                "medfail trains segmentation (a 3D U-Net) on volumes")
    size = config.size or VOLUME_PATCH
    patch = volume_patch(size, samples)
    why = (f"patch = {size} voxels a side{' (given)' if config.size else ''}, each axis clipped "
           f"to the median volume side rounded up to a multiple of 8 -> "
           f"{'x'.join(map(str, patch))}")
    return replace(config, size=size, batch_size=config.batch_size or VOLUME_BATCH_SIZE,
                   patches_per_image=config.patches_per_image or VOLUME_PATCHES_PER_IMAGE), why


def volume_patch(size: int, samples: list[Sample]) -> tuple[int, ...]:
    """Patch shape for volumes: per axis ``min(size, max(8, median side rounded up to a
    multiple of 8))``."""
    sides = np.median([s.spatial_shape for s in samples], axis=0)
    return tuple(int(min(size, max(VOLUME_MIN_SIDE, -(-int(np.ceil(m)) // 8) * 8)))
                 for m in sides)


def model_spacing(samples: list[Sample]) -> tuple[float, ...] | None:
    """Per-axis median spacing (mm) of the training volumes, or ``None`` when one has none."""
    if not samples or any(s.spacing is None for s in samples):
        return None
    return tuple(float(v) for v in np.median([s.spacing for s in samples], axis=0))


def _image_sizes(samples: list[Sample]) -> str:
    """"28x28" when every image has that size, else the range of the longer sides."""
    if samples and samples[0].image.ndim == 4:
        vols = {s.spatial_shape for s in samples}
        if len(vols) == 1:
            return "x".join(map(str, vols.pop()))
        return f"{min(min(v) for v in vols)}-{max(max(v) for v in vols)} voxels (varied sizes)"
    shapes = {tuple(s.spatial_shape[-2:]) for s in samples}
    if len(shapes) == 1:
        h, w = shapes.pop()
        return f"{h}x{w}"
    sides = [max(sh) for sh in shapes]
    return f"{min(sides)}-{max(sides)} px (varied sizes)"


def _normalisation(samples: list[Sample], in_channels: int) -> dict[str, list[float]]:
    """Per-channel mean and std over every training pixel, in native units."""
    total = np.zeros(in_channels)
    total_sq = np.zeros(in_channels)
    count = 0
    for s in samples:
        im = adapt_channels(s.image, in_channels).astype(np.float64)
        axes = tuple(range(1, im.ndim))
        total += im.sum(axis=axes)
        total_sq += (im**2).sum(axis=axes)
        count += int(np.prod(im.shape[1:]))
    mean = total / count
    std = np.sqrt(np.maximum(total_sq / count - mean**2, 1e-12))
    return {"mean": mean.tolist(), "std": std.tolist()}


def segmentation_classes(dataset: Dataset, samples: list[Sample]) -> list[str]:
    """Foreground class names from the interpreted masks (``dataset.mask_mode_info``).

    Binary or instance masks (0/1, 0/255, instance maps): one class, named by the first line of
    ``DIR/classes.txt`` when present, else ``class_1``. Class label maps: ``DIR/classes.txt``
    (one per line, label 1 first) when present, else ``class_1 .. class_K`` for the largest
    label K in the training masks. A ``classes.txt`` naming fewer classes than the largest label
    is a ``MedfailInputError`` naming it."""
    names_file = Path(str(getattr(dataset, "root", ""))) / "classes.txt"
    try:
        names = [ln.strip() for ln in names_file.read_text(encoding="utf-8").splitlines()
                 if ln.strip()] if names_file.is_file() else []
    except (OSError, UnicodeDecodeError) as exc:
        raise MedfailInputError(names_file, f"cannot read classes.txt ({exc})") from exc
    info = getattr(dataset, "mask_mode_info", None) or {}
    if info.get("mode") in ("binary", "instances"):
        return names[:1] or ["class_1"]
    k = max((int(s.mask.max()) for s in samples if s.mask is not None), default=1)
    if names and k > len(names):
        raise MedfailInputError(
            names_file, f"names {len(names)} foreground class(es) but the masks hold labels up "
            f"to {k}; write one name per label (label 1 first), or pass --mask-mode binary if "
            "every non-zero value means foreground")
    return names or [f"class_{i}" for i in range(1, max(k, 1) + 1)]


def _pad_to(arr: np.ndarray, size: int) -> np.ndarray:
    """Zero-pad the last two axes up to ``size`` (normalised images: 0 = the training mean)."""
    ph, pw = max(size - arr.shape[-2], 0), max(size - arr.shape[-1], 0)
    if ph == 0 and pw == 0:
        return arr
    pad = [(0, 0)] * (arr.ndim - 2) + [(0, ph), (0, pw)]
    return np.pad(arr, pad)


def _window(rng: np.random.Generator, shape: tuple[int, int], size: int,
            centre: tuple[int, int] | None) -> tuple[int, int]:
    h, w = shape
    if centre is None:
        return int(rng.integers(0, h - size + 1)), int(rng.integers(0, w - size + 1))
    jitter = rng.integers(-size // 4, size // 4 + 1, size=2)
    top = int(np.clip(centre[0] - size // 2 + jitter[0], 0, h - size))
    left = int(np.clip(centre[1] - size // 2 + jitter[1], 0, w - size))
    return top, left


class _Examples:
    """Builds one epoch of training tensors for a task from in-memory samples."""

    def __init__(self, samples: list[Sample], spec: ModelSpec, config: TrainConfig) -> None:
        self.spec, self.config = spec, config
        self.samples = samples
        if spec.spatial_dims == 3:
            self.volumes = [_at_model_spacing(s, spec) for s in samples]
            return
        self.norm = [to_tensor([s.image], spec)[0].numpy() for s in samples]
        if spec.task == "classification":
            self.x = to_tensor([s.image for s in samples], spec, resize=True) if _same_shape(
                samples) else torch.cat([to_tensor([s.image], spec, resize=True) for s in samples])
            self.y = torch.from_numpy(np.stack([np.asarray(s.label) for s in samples]))
        else:
            self.objects = [objects(s.object_map) for s in samples]  # instances kept

    def epoch(self, rng: np.random.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        if self.spec.task == "classification":
            x = self.x.clone()
            flip = torch.from_numpy(rng.random(len(x)) < 0.5)
            x[flip] = torch.flip(x[flip], dims=[-1])
            return x, self.y
        if self.spec.spatial_dims == 3:
            return self._volume_patches(rng)
        if self.spec.task == "segmentation":
            return self._seg_patches(rng)
        return self._prompt_patches(rng)

    def _seg_patches(self, rng: np.random.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        size = self.config.size
        xs, ys = [], []
        for im, s in zip(self.norm, self.samples, strict=True):
            im, mask = _pad_to(im, size), _pad_to(s.mask, size)
            fg = np.argwhere(mask > 0)
            for _ in range(self.config.patches_per_image or PATCHES_PER_IMAGE):
                centre = tuple(fg[rng.integers(len(fg))]) if len(fg) and rng.random() < 0.5 \
                    else None
                t, left = _window(rng, mask.shape, size, centre)
                xs.append(im[:, t:t + size, left:left + size])
                ys.append(mask[None, t:t + size, left:left + size])
        return torch.from_numpy(np.stack(xs)), torch.from_numpy(np.stack(ys).astype(np.int64))

    def _volume_patches(self, rng: np.random.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """Patches of ``spec.input_size`` from every volume: half centred on a foreground voxel
        (jittered by up to a quarter patch per axis), the rest anywhere."""
        patch = tuple(self.spec.input_size or ())
        xs, ys = [], []
        for im, mask in self.volumes:
            im, mask = _pad_shape(im, patch), _pad_shape(mask, patch)
            fg = np.argwhere(mask > 0)
            for _ in range(self.config.patches_per_image or VOLUME_PATCHES_PER_IMAGE):
                centre = fg[rng.integers(len(fg))] if len(fg) and rng.random() < 0.5 else None
                corner = _corner(rng, mask.shape, patch, centre)
                box = tuple(slice(c, c + p) for c, p in zip(corner, patch, strict=True))
                xs.append(im[(slice(None), *box)])
                ys.append(mask[box][None])
        return torch.from_numpy(np.stack(xs)), torch.from_numpy(np.stack(ys).astype(np.int64))

    def _prompt_patches(self, rng: np.random.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        size = self.config.size
        xs, ys = [], []
        for im, objs in zip(self.norm, self.objects, strict=True):
            for obj in objs[:3]:
                prompt = _jittered_prompt(rng, obj)
                chans = prompt_channels(prompt, obj.shape)
                full = _pad_to(np.concatenate([im, chans]), size)
                target = _pad_to(obj.astype(np.int64), size)
                rows, cols = np.nonzero(obj)
                centre = (int(rows.mean()), int(cols.mean()))
                t, left = _window(rng, target.shape, size, centre)
                xs.append(full[:, t:t + size, left:left + size])
                ys.append(target[None, t:t + size, left:left + size])
        return torch.from_numpy(np.stack(xs)), torch.from_numpy(np.stack(ys))


def _at_model_spacing(sample: Sample, spec: ModelSpec) -> tuple[np.ndarray, np.ndarray]:
    """A volume normalised and, with ``spec.spacing``, resampled to it (image trilinear, mask
    nearest voxel centre; :mod:`medfail.models.resample`): ``(C, X, Y, Z)`` and ``(X, Y, Z)``."""
    x = to_tensor([sample.image], spec)
    mask = np.zeros(sample.spatial_shape, np.int64) if sample.mask is None else sample.mask
    grid = model_grid(sample.spatial_shape, sample.spacing, spec.spacing)
    if grid is None:
        return x[0].numpy(), np.asarray(mask, np.int64)
    m = torch.from_numpy(np.asarray(mask, np.float32))[None, None]
    m = torch.nn.functional.interpolate(m, size=grid, mode="nearest-exact")
    return resize(x, grid)[0].numpy(), m[0, 0].numpy().astype(np.int64)


def _pad_shape(arr: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """Zero-pad the trailing axes of ``arr`` up to ``shape``."""
    lead = arr.ndim - len(shape)
    pad = [(0, 0)] * lead + [(0, max(p - n, 0)) for n, p in zip(arr.shape[lead:], shape,
                                                               strict=True)]
    return np.pad(arr, pad) if any(b for _, b in pad) else arr


def _corner(rng: np.random.Generator, shape: tuple[int, ...], patch: tuple[int, ...],
            centre: np.ndarray | None) -> tuple[int, ...]:
    """A patch's first voxel: uniform, or around ``centre`` (jitter ±patch/4), inside ``shape``."""
    if centre is None:
        return tuple(int(rng.integers(0, n - p + 1)) for n, p in zip(shape, patch, strict=True))
    out = []
    for c, n, p in zip(centre, shape, patch, strict=True):
        jitter = int(rng.integers(-(p // 4), p // 4 + 1))
        out.append(int(np.clip(int(c) - p // 2 + jitter, 0, n - p)))
    return tuple(out)


def _check_objects(examples: _Examples, dataset: Dataset) -> None:
    """Promptable training prompts ground-truth objects: a dataset without any is an error."""
    if examples.spec.task == "promptable" and not any(examples.objects):
        raise MedfailInputError(
            getattr(dataset, "root", None), "no object in any mask: promptable training prompts "
            "each ground-truth object, so it needs masks with foreground")


def _same_shape(samples: list[Sample]) -> bool:
    return len({s.image.shape for s in samples}) == 1


def _jittered_prompt(rng: np.random.Generator, obj: np.ndarray) -> Prompt:
    rows, cols = np.nonzero(obj)
    x0, y0, x1, y1 = cols.min(), rows.min(), cols.max(), rows.max()
    bw, bh = x1 - x0 + 1, y1 - y0 + 1
    j = rng.uniform(-0.1, 0.1, 4) * np.array([bw, bh, bw, bh])
    box = (float(x0 + j[0]), float(y0 + j[1]), float(x1 + j[2]), float(y1 + j[3]))
    interior = np.argwhere(ndimage.binary_erosion(obj) if obj.sum() > 8 else obj)
    r, c = interior[rng.integers(len(interior))]
    return Prompt(box=box, points=((float(c), float(r)),), point_labels=(1,))


def _loss_fn(spec: ModelSpec) -> Any:
    if spec.task == "classification":
        if spec.multi_label:
            return lambda out, y: F.binary_cross_entropy_with_logits(out, y.float())
        return lambda out, y: F.cross_entropy(out, y.long().view(-1))
    return DiceCELoss(to_onehot_y=True, softmax=True, batch=True)


def _mean_loss(module: torch.nn.Module, loss_fn: Any, x: torch.Tensor, y: torch.Tensor,
               batch_size: int, device: str) -> float:
    module.eval()
    total = 0.0
    with torch.no_grad():
        for s in range(0, len(x), batch_size):
            xb, yb = x[s:s + batch_size].to(device), y[s:s + batch_size].to(device)
            total += float(loss_fn(module(xb), yb)) * len(xb)
    return total / max(len(x), 1)


def _sayer(echo: Callable[[str], None] | None, progress: bool) -> Callable[[str], None]:
    """Console lines (the setup line, one per epoch), written between progress-bar refreshes.
    ``echo`` None: ``print`` when ``progress``, else nothing."""
    out = echo if echo is not None else (print if progress else None)

    def say(message: str) -> None:
        if out is not None:
            with tqdm.external_write_mode():
                out(message)
    return say


def train(dataset: Dataset, config: TrainConfig, out_path: str | Path,
          val_dataset: Dataset | None = None, progress: bool = True,
          echo: Callable[[str], None] | None = None) -> Path:
    """Train a baseline on ``dataset`` and write a medfail model file to ``out_path``.

    ``progress``: an epoch bar and, nested under it, a batch bar with ETA and the running loss.
    ``echo`` receives the setup line and one line per epoch (default: ``print`` when
    ``progress``). Both draw no random numbers: the trained weights do not depend on them."""
    t_start = time.perf_counter()
    say = _sayer(echo, progress)
    dataset.validate(progress=progress)
    if val_dataset is not None:
        val_dataset.validate(progress=progress)
    torch.manual_seed(config.seed)
    rng = np.random.default_rng(config.seed)
    samples = list(dataset)
    dims = spatial_dims(samples, getattr(dataset, "root", None))
    config, size_why = resolve_config(config, samples)
    size, batch_size = int(config.size or 0), int(config.batch_size or 0)
    patch = volume_patch(size, samples) if dims == 3 else (size, size)
    in_channels = 3 if any(s.channels >= 3 for s in samples) else 1
    extra = ["box", "point"] if config.task == "promptable" else []
    targets = list(dataset.target_names) if config.task == "classification" else \
        segmentation_classes(dataset, samples)
    for ds in (dataset, val_dataset):
        check_labels = getattr(ds, "check_mask_labels", None)
        if config.task != "classification" and check_labels is not None:
            check_labels(targets)  # a val mask label the model will not have: named here
    spec = ModelSpec(
        task=config.task, target_names=targets, multi_label=bool(dataset.multi_label),
        input_size=patch, in_channels=in_channels,
        normalisation=_normalisation(samples, in_channels), output="logits",
        arch=str(config.arch), arch_kwargs=arch_kwargs(str(config.arch), size, dims),
        prompt_channels=extra,
        intensity=summarise([s.image for s in samples], in_channels), spatial_dims=dims,
        spacing=model_spacing(samples) if dims == 3 else None)
    module = build_network(spec.arch, in_channels + len(extra), spec.n_classes,
                           **spec.arch_kwargs).to(config.device)
    optimiser = torch.optim.Adam(module.parameters(), lr=config.lr)
    loss_fn = _loss_fn(spec)
    examples = _Examples(samples, spec, config)
    _check_objects(examples, dataset)
    val = None
    if val_dataset is not None:
        val_examples = _Examples(list(val_dataset), spec, config)
        _check_objects(val_examples, val_dataset)
        val = val_examples.epoch(np.random.default_rng(config.seed))
    early = val is not None and config.patience is not None
    setup = _setup_line(config, samples, module, size_why, early, val is not None, patch)
    say(setup)
    log_epochs: list[dict[str, float]] = []
    best_epoch, best_loss, best_state, stale = None, math.inf, None, 0
    stop_reason = f"ran all {config.epochs} epochs" + ("" if val is not None else " (no --val)")
    bar = tqdm(range(1, config.epochs + 1), desc=f"train {config.task}", unit="epoch",
               disable=not progress)
    for epoch in bar:
        t0 = time.perf_counter()
        x, y = examples.epoch(rng)
        order = torch.from_numpy(rng.permutation(len(x)))
        module.train()
        total = 0.0
        batches = tqdm(range(0, len(x), batch_size), desc=f"epoch {epoch}/{config.epochs}",
                       unit="batch", leave=False, disable=not progress)
        for s in batches:
            idx = order[s:s + batch_size]
            xb, yb = x[idx].to(config.device), y[idx].to(config.device)
            optimiser.zero_grad()
            loss = loss_fn(module(xb), yb)
            loss.backward()
            optimiser.step()
            total += float(loss.detach()) * len(idx)
            batches.set_postfix(loss=f"{total / (s + len(idx)):.4f}", refresh=False)
        batches.close()
        entry = {"epoch": epoch, "loss": total / len(x)}
        if val is not None:
            entry["val_loss"] = _mean_loss(module, loss_fn, *val, batch_size, config.device)
            if entry["val_loss"] < best_loss:
                best_epoch, best_loss, stale = epoch, entry["val_loss"], 0
                if early:
                    best_state = {k: v.detach().clone() for k, v in module.state_dict().items()}
            else:
                stale += 1
        entry["seconds"] = time.perf_counter() - t0
        log_epochs.append(entry)
        bar.set_postfix(loss=f"{entry['loss']:.4f}", **(
            {"val_loss": f"{entry['val_loss']:.4f}"} if val is not None else {}))
        say(_epoch_line(entry, config.epochs, best_epoch == epoch))
        if early and stale >= int(config.patience or 0):
            stop_reason = (f"early stop after epoch {epoch}: no lower val loss for "
                           f"{config.patience} epochs")
            break
    bar.close()
    restored = early and best_state is not None and best_epoch != log_epochs[-1]["epoch"]
    if restored and best_state is not None:
        module.load_state_dict(best_state)
    if val is not None:
        kept = "best" if early and best_state is not None else "last"
        best = f"best val loss {best_loss:.4f} at epoch {best_epoch}" \
            if best_epoch is not None else "no finite val loss"
        say(f"{stop_reason}; {best}; kept the {kept} epoch's weights")
    training_log = {
        "config": asdict(config),
        "seed": config.seed,
        "setup": setup,
        "epochs": log_epochs,
        "best_epoch": best_epoch,
        "best_val_loss": best_loss if best_epoch is not None else None,
        "stop_reason": stop_reason,
        "restored_best_epoch": bool(restored),
        "data_hash": dataset.content_hash(),
        "n_train": len(samples),
        "n_examples_per_epoch": len(x),
        "wall_clock_s": time.perf_counter() - t_start,
        "medfail_version": medfail.__version__,
        "torch_version": str(torch.__version__),
        "machine": platform.machine(),
        "threads": torch.get_num_threads(),
    }
    return save_model(out_path, spec, module.cpu(), training_log)


def _setup_line(config: TrainConfig, samples: list[Sample], module: torch.nn.Module,
                size_why: str, early: bool, has_val: bool,
                patch: tuple[int, ...] | None = None) -> str:
    """One line: data -> network, input size, parameters, batch, epochs, and why."""
    n_params = sum(p.numel() for p in module.parameters())
    arch, epochs = str(config.arch), config.epochs
    stop = f"early stopping on val loss, patience {config.patience}" if early else \
        ("every epoch, patience off" if has_val else "every epoch, no --val")
    why = f"default for {config.task}" if arch == DEFAULT_ARCH[config.task] else "chosen"
    if arch == "resnet18":
        why += ": ResNet-18 as MedMNIST uses at 28 px, half width for CPU speed"
    if patch is not None and len(patch) == 3:
        spacing = model_spacing(samples)
        at = "native grids (spacing unknown)" if spacing is None else \
            "spacing " + "x".join(f"{v:g}" for v in spacing) + " mm (training median)"
        return (f"{config.task}: {len(samples)} volumes of {_image_sizes(samples)} -> {arch} "
                f"({UNET_3D_LABEL}, {n_params / 1e6:.2f} M params) on "
                f"{'x'.join(map(str, patch))} patches at {at}, {config.patches_per_image} per "
                f"volume, batch {config.batch_size}, lr {config.lr:g}, up to {epochs} "
                f"epoch{'s' if epochs > 1 else ''} ({stop}); {size_why}")
    return (f"{config.task}: {len(samples)} images of {_image_sizes(samples)} -> {arch} "
            f"({ARCH_LABELS[arch]}, {n_params / 1e6:.2f} M params) at {config.size}x"
            f"{config.size}, batch {config.batch_size}, lr {config.lr:g}, up to {epochs} "
            f"epoch{'s' if epochs > 1 else ''} ({stop}); {arch} {why}; {size_why}")


def _epoch_line(entry: dict[str, float], epochs: int, best: bool) -> str:
    """``epoch 3/8: loss 0.4123, val loss 0.4500 (best), 12.3 s``."""
    val = f", val loss {entry['val_loss']:.4f}{' (best)' if best else ''}" \
        if "val_loss" in entry else ""
    return f"epoch {entry['epoch']}/{epochs}: loss {entry['loss']:.4f}{val}, " \
        f"{entry['seconds']:.1f} s"
