"""Train the light baselines (≤15 epochs on CPU) on any dataset in the folder format.

* classification: MONAI DenseNet121 on whole images resized to ``size`` (the classification
  resize rule), BCE-with-logits for multi-label targets or cross-entropy for multi-class, random
  horizontal flips;
* segmentation: MONAI U-Net on random ``size`` patches at native resolution (half of them centred
  on a foreground pixel so small structures are seen), Dice + cross-entropy loss;
* promptable: the same U-Net with box and point channels; one example per object with a jittered
  box (±10 % of its size) and a random interior point, target = that object only.

Optimiser Adam: lr 1e-3 for DenseNet121, 1e-2 for the U-Nets (at 1e-3 the U-Net needs far more
than 15 epochs to separate 1 %-of-pixel lesions from background). Everything random is drawn
from generators seeded by ``seed``.
"""

from __future__ import annotations

import platform
import time
from dataclasses import asdict, dataclass
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
from medfail.models.bundle import save_model
from medfail.models.intensity import summarise
from medfail.models.networks import DEFAULT_ARCH, build_network
from medfail.models.preprocess import adapt_channels, prompt_channels, to_tensor
from medfail.models.spec import ModelSpec

MAX_EPOCHS = 15


@dataclass
class TrainConfig:
    """Training options (the CLI's ``medfail train`` flags)."""

    task: str
    arch: str | None = None
    size: int = 64
    epochs: int = 8
    seed: int = 0
    batch_size: int = 16
    lr: float | None = None  # default: 1e-3 for DenseNet121, 1e-2 for the U-Nets
    patches_per_image: int = 2
    device: str = "cpu"

    def __post_init__(self) -> None:
        if not 1 <= self.epochs <= MAX_EPOCHS:
            raise ValueError(f"epochs must be between 1 and {MAX_EPOCHS}, got {self.epochs}")
        if self.size < 16:
            raise ValueError(f"size must be at least 16 px, got {self.size}")
        self.arch = self.arch or DEFAULT_ARCH[self.task]
        self.lr = self.lr or (1e-3 if self.task == "classification" else 1e-2)


def _normalisation(samples: list[Sample], in_channels: int) -> dict[str, list[float]]:
    """Per-channel mean and std over every training pixel, in native units."""
    total = np.zeros(in_channels)
    total_sq = np.zeros(in_channels)
    count = 0
    for s in samples:
        im = adapt_channels(s.image, in_channels).astype(np.float64)
        total += im.sum(axis=(1, 2))
        total_sq += (im**2).sum(axis=(1, 2))
        count += im.shape[1] * im.shape[2]
    mean = total / count
    std = np.sqrt(np.maximum(total_sq / count - mean**2, 1e-12))
    return {"mean": mean.tolist(), "std": std.tolist()}


def segmentation_classes(dataset: Dataset, samples: list[Sample]) -> list[str]:
    """Foreground class names: ``DIR/classes.txt`` (one per line, label 1 first) when present,
    else ``class_1 .. class_K`` for the largest label K found in the training masks."""
    names_file = Path(str(getattr(dataset, "root", ""))) / "classes.txt"
    if names_file.is_file():
        names = [ln.strip() for ln in names_file.read_text().splitlines() if ln.strip()]
        if names:
            return names
    k = max((int(s.mask.max()) for s in samples if s.mask is not None), default=1)
    return [f"class_{i}" for i in range(1, max(k, 1) + 1)]


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
        self.norm = [to_tensor([s.image], spec)[0].numpy() for s in samples]
        if spec.task == "classification":
            self.x = to_tensor([s.image for s in samples], spec, resize=True) if _same_shape(
                samples) else torch.cat([to_tensor([s.image], spec, resize=True) for s in samples])
            self.y = torch.from_numpy(np.stack([np.asarray(s.label) for s in samples]))
        else:
            self.objects = [objects(s.mask) for s in samples]

    def epoch(self, rng: np.random.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        if self.spec.task == "classification":
            x = self.x.clone()
            flip = torch.from_numpy(rng.random(len(x)) < 0.5)
            x[flip] = torch.flip(x[flip], dims=[-1])
            return x, self.y
        if self.spec.task == "segmentation":
            return self._seg_patches(rng)
        return self._prompt_patches(rng)

    def _seg_patches(self, rng: np.random.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        size = self.config.size
        xs, ys = [], []
        for im, s in zip(self.norm, self.samples, strict=True):
            im, mask = _pad_to(im, size), _pad_to(s.mask, size)
            fg = np.argwhere(mask > 0)
            for _ in range(self.config.patches_per_image):
                centre = tuple(fg[rng.integers(len(fg))]) if len(fg) and rng.random() < 0.5 \
                    else None
                t, left = _window(rng, mask.shape, size, centre)
                xs.append(im[:, t:t + size, left:left + size])
                ys.append(mask[None, t:t + size, left:left + size])
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


def train(dataset: Dataset, config: TrainConfig, out_path: str | Path,
          val_dataset: Dataset | None = None, progress: bool = True) -> Path:
    """Train a baseline on ``dataset`` and write a medfail model file to ``out_path``."""
    t_start = time.perf_counter()
    dataset.validate(progress=progress)
    if val_dataset is not None:
        val_dataset.validate(progress=progress)
    torch.manual_seed(config.seed)
    rng = np.random.default_rng(config.seed)
    samples = list(dataset)
    in_channels = 3 if any(s.channels >= 3 for s in samples) else 1
    extra = ["box", "point"] if config.task == "promptable" else []
    targets = list(dataset.target_names) if config.task == "classification" else \
        segmentation_classes(dataset, samples)
    spec = ModelSpec(
        task=config.task, target_names=targets, multi_label=bool(dataset.multi_label),
        input_size=(config.size, config.size), in_channels=in_channels,
        normalisation=_normalisation(samples, in_channels), output="logits",
        arch=str(config.arch), prompt_channels=extra,
        intensity=summarise([s.image for s in samples], in_channels))
    module = build_network(spec.arch, in_channels + len(extra), spec.n_classes).to(config.device)
    optimiser = torch.optim.Adam(module.parameters(), lr=config.lr)
    loss_fn = _loss_fn(spec)
    examples = _Examples(samples, spec, config)
    val = None
    if val_dataset is not None:
        val = _Examples(list(val_dataset), spec, config).epoch(np.random.default_rng(config.seed))
    log_epochs: list[dict[str, float]] = []
    bar = tqdm(range(1, config.epochs + 1), desc=f"train {config.task}", unit="epoch",
               disable=not progress)
    for epoch in bar:
        t0 = time.perf_counter()
        x, y = examples.epoch(rng)
        order = torch.from_numpy(rng.permutation(len(x)))
        module.train()
        total = 0.0
        for s in range(0, len(x), config.batch_size):
            idx = order[s:s + config.batch_size]
            xb, yb = x[idx].to(config.device), y[idx].to(config.device)
            optimiser.zero_grad()
            loss = loss_fn(module(xb), yb)
            loss.backward()
            optimiser.step()
            total += float(loss.detach()) * len(idx)
        entry = {"epoch": epoch, "loss": total / len(x), "seconds": time.perf_counter() - t0}
        if val is not None:
            entry["val_loss"] = _mean_loss(module, loss_fn, *val, config.batch_size, config.device)
        log_epochs.append(entry)
        bar.set_postfix(loss=f"{entry['loss']:.4f}")
    training_log = {
        "config": asdict(config),
        "seed": config.seed,
        "epochs": log_epochs,
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
