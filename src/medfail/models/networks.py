"""Networks medfail can build and train: a compact MONAI ResNet-18, MONAI's DenseNet121 and
U-Net (2D, or 3D for volumes), and a prompt U-Net.

``ARCHS`` describes each architecture, ``TASK_ARCHS`` lists those a task can train (the first
is the default, ``DEFAULT_ARCH``). ``arch_kwargs(arch, size)`` gives the build options a
training run at input ``size`` records in the model spec (``ModelSpec.arch_kwargs``), so the
loader rebuilds exactly the trained network; ``size_problem`` states which input sizes an
architecture cannot take. On volumes the ``unet`` is the 3D U-Net of :data:`UNET_3D`
(``arch_kwargs("unet", size, spatial_dims=3)``), recorded in ``arch_kwargs`` with
``spatial_dims`` 3 so the loader rebuilds it.
"""

from __future__ import annotations

from typing import Any

from monai.networks.nets import DenseNet121, UNet, resnet18
from torch import nn

ARCHS: dict[str, str] = {
    "resnet18": "MONAI ResNet-18 (2D, basic blocks 2-2-2-2) at half width (32-64-128-256 "
                "channels, ~2.8 M params); stem: 3x3 conv stride 1 + max-pool below 64 px, "
                "7x7 conv stride 2 + max-pool from 64 px",
    "densenet121": "MONAI DenseNet121 classifier (2D, ~7 M params; input size 32 px or more)",
    "unet": "MONAI U-Net, channels 16-32-64-128, one residual unit per level, dropout 0.1 "
            "(patch size a multiple of 8)",
    "prompt_unet": "the same U-Net with two extra input channels: box mask and point heat-map",
}
#: short names for the console
ARCH_LABELS: dict[str, str] = {
    "resnet18": "MONAI ResNet-18 2D, half width",
    "densenet121": "MONAI DenseNet121 2D",
    "unet": "MONAI U-Net 16-32-64-128",
    "prompt_unet": "MONAI U-Net 16-32-64-128 + box/point channels",
}
#: architectures each task can train; the first one is the default
TASK_ARCHS: dict[str, tuple[str, ...]] = {
    "classification": ("resnet18", "densenet121"),
    "segmentation": ("unet",),
    "promptable": ("prompt_unet",),
}
DEFAULT_ARCH: dict[str, str] = {task: archs[0] for task, archs in TASK_ARCHS.items()}
#: smallest input side (px) an architecture takes (DenseNet121 pools 32x down to 1 px)
MIN_SIZE: dict[str, int] = {"densenet121": 32}
#: input sides must be a multiple of this (the U-Net halves the patch three times)
SIZE_MULTIPLE: dict[str, int] = {"unet": 8, "prompt_unet": 8}
#: inputs from this side up get the strided ImageNet stem in resnet18
RESNET_STRIDED_STEM_FROM = 64
_RESNET18: dict[str, Any] = {"widen_factor": 0.5, "conv1_t_size": 3, "conv1_t_stride": 1}
#: the light 3D U-Net for volumes (~0.15 M params with one output class + background): channels
#: 8-16-32-64, 3 levels (strides 2), one residual unit per level, dropout 0.1 (the 2D defaults)
UNET_3D: dict[str, Any] = {"spatial_dims": 3, "channels": [8, 16, 32, 64]}
#: label of the 3D U-Net for the console
UNET_3D_LABEL = "MONAI 3D U-Net 8-16-32-64"


def arch_kwargs(arch: str, size: int, spatial_dims: int = 2) -> dict[str, Any]:
    """Build options for ``arch`` trained at ``size`` px (recorded in ``ModelSpec.arch_kwargs``).

    resnet18: half width; a 3x3 stride-1 stem below ``RESNET_STRIDED_STEM_FROM`` px (a 28 px
    image reaches the last block at 2x2), else the 7x7 stride-2 stem (compute ~constant).
    unet on volumes (``spatial_dims`` 3): :data:`UNET_3D`. Other architectures: none (``{}``)."""
    if spatial_dims == 3:
        if arch != "unet":
            raise ValueError(f"{arch} cannot train on volumes; only the unet (segmentation) can")
        return dict(UNET_3D, channels=list(UNET_3D["channels"]))
    if arch != "resnet18":
        return {}
    if size < RESNET_STRIDED_STEM_FROM:
        return dict(_RESNET18)
    return {**_RESNET18, "conv1_t_size": 7, "conv1_t_stride": 2}


def size_problem(arch: str, size: int) -> str | None:
    """Why ``arch`` cannot take ``size`` px inputs, or ``None`` when it can."""
    low = MIN_SIZE.get(arch)
    if low is not None and size < low:
        return f"{arch} needs an input size of at least {low} px, got {size}"
    step = SIZE_MULTIPLE.get(arch)
    if step is not None and size % step:
        return f"{arch} needs a size that is a multiple of {step} px, got {size}"
    return None


def build_network(arch: str, in_channels: int, out_channels: int, **kwargs: Any) -> nn.Module:
    """Build ``arch`` with ``in_channels`` inputs (prompt channels included); ``kwargs`` override
    the defaults (``arch_kwargs``)."""
    if arch == "resnet18":
        return resnet18(spatial_dims=2, n_input_channels=in_channels, num_classes=out_channels,
                        **{**_RESNET18, **kwargs})
    if arch == "densenet121":
        return DenseNet121(spatial_dims=2, in_channels=in_channels, out_channels=out_channels,
                           **kwargs)
    if arch in ("unet", "prompt_unet"):
        params: dict[str, Any] = {"spatial_dims": 2, "channels": (16, 32, 64, 128),
                                  "strides": (2, 2, 2), "num_res_units": 1, "dropout": 0.1}
        params.update(kwargs)
        return UNet(in_channels=in_channels, out_channels=out_channels, **params)
    raise ValueError(f"unknown architecture {arch!r}; choose one of {', '.join(ARCHS)}")
