"""Preprocessing rules from native images to network inputs (documented in docs/models.md).

* Channels: a grey image given to a 3-channel model is repeated; an RGB image given to a grey
  model is averaged; other mismatches are an error.
* Normalisation: ``(x - mean) / std`` per channel with the model's stored statistics, in
  medfail's intensity units (:mod:`medfail.data.readers`: unsigned PNG/JPEG/TIFF on the 8-bit
  0..255 scale whatever their bit depth, so 8- and 16-bit copies of a picture give the same
  input; DICOM/NIfTI/.npy keep their values).
* Classification resize rule: the whole image is resized to the model's ``input_size`` with
  bilinear interpolation (anti-aliased when shrinking), aspect ratio not preserved.
* Segmentation never resizes: a sliding window of ``input_size`` runs at native resolution
  (volumes ``(C, X, Y, Z)`` too; with a model ``spacing`` they are first resampled to it,
  :mod:`medfail.models.resample`).
* Prompts are encoded as two extra channels: a binary box mask and a point heat-map
  ``sum_i s_i * exp(-d_i^2 / (2 * 2^2))`` with s_i = +1 for foreground and -1 for background points.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from medfail.data.prompts import Prompt
from medfail.models.spec import ModelSpec

POINT_SIGMA_PX = 2.0


def adapt_channels(image: np.ndarray, in_channels: int) -> np.ndarray:
    """Match the channel count of a ``(C, H, W)`` image (or ``(C, X, Y, Z)`` volume) to the
    model's."""
    c = image.shape[0]
    if c == in_channels:
        return image
    if c == 1:
        return np.repeat(image, in_channels, axis=0)
    if in_channels == 1 and c in (3, 4):
        return image[:3].mean(axis=0, keepdims=True)
    raise ValueError(f"image has {c} channels but the model expects {in_channels}")


def normalise(x: torch.Tensor, spec: ModelSpec) -> torch.Tensor:
    """Apply the model's per-channel ``(x - mean) / std`` to a (N, C, *spatial) tensor."""
    if not spec.normalisation:
        return x
    shape = (1, -1) + (1,) * (x.ndim - 2)
    mean = torch.as_tensor(spec.normalisation["mean"], dtype=x.dtype, device=x.device)
    std = torch.as_tensor(spec.normalisation["std"], dtype=x.dtype, device=x.device)
    return (x - mean.view(shape)) / std.view(shape)


def to_tensor(images: Sequence[np.ndarray], spec: ModelSpec, device: str | torch.device = "cpu",
              resize: bool = False) -> torch.Tensor:
    """Stack same-shape native images into a normalised (N, C, H, W) float tensor (volumes:
    (N, C, X, Y, Z); ``resize`` is the classification rule, 2D only)."""
    arrs = [adapt_channels(np.asarray(im, np.float32), spec.in_channels) for im in images]
    x = normalise(torch.from_numpy(np.stack(arrs)).to(device), spec)
    if resize and spec.input_size is not None and tuple(x.shape[-2:]) != spec.input_size:
        shrink = x.shape[-2] > spec.input_size[0] or x.shape[-1] > spec.input_size[1]
        x = F.interpolate(x, size=spec.input_size, mode="bilinear", align_corners=False,
                          antialias=shrink)
    return x


def prompt_channels(prompt: Prompt, shape: tuple[int, int]) -> np.ndarray:
    """Encode one prompt as a (2, H, W) float32 array: box mask, point heat-map."""
    h, w = shape
    out = np.zeros((2, h, w), np.float32)
    if prompt.box is not None:
        x0, y0, x1, y1 = prompt.box
        r0, r1 = max(int(np.floor(y0)), 0), min(int(np.ceil(y1)), h - 1)
        c0, c1 = max(int(np.floor(x0)), 0), min(int(np.ceil(x1)), w - 1)
        if r1 >= r0 and c1 >= c0:
            out[0, r0:r1 + 1, c0:c1 + 1] = 1.0
    if prompt.points:
        yy, xx = np.mgrid[:h, :w].astype(np.float32)
        for (px, py), lab in zip(prompt.points, prompt.point_labels, strict=True):
            sign = 1.0 if lab else -1.0
            out[1] += sign * np.exp(-((xx - px) ** 2 + (yy - py) ** 2) / (2 * POINT_SIGMA_PX**2))
    return out
