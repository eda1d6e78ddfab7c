"""Networks medfail can build and train: MONAI's DenseNet121 and U-Net, and a prompt U-Net."""

from __future__ import annotations

from typing import Any

from monai.networks.nets import DenseNet121, UNet
from torch import nn

ARCHS: dict[str, str] = {
    "densenet121": "MONAI DenseNet121 classifier (2D)",
    "unet": "MONAI U-Net, channels 16-32-64-128, one residual unit per level, dropout 0.1",
    "prompt_unet": "the same U-Net with two extra input channels: box mask and point heat-map",
}
DEFAULT_ARCH: dict[str, str] = {
    "classification": "densenet121",
    "segmentation": "unet",
    "promptable": "prompt_unet",
}


def build_network(arch: str, in_channels: int, out_channels: int, **kwargs: Any) -> nn.Module:
    """Build ``arch`` with ``in_channels`` inputs (prompt channels included)."""
    if arch == "densenet121":
        return DenseNet121(spatial_dims=2, in_channels=in_channels, out_channels=out_channels,
                           **kwargs)
    if arch in ("unet", "prompt_unet"):
        params: dict[str, Any] = {"channels": (16, 32, 64, 128), "strides": (2, 2, 2),
                                  "num_res_units": 1, "dropout": 0.1}
        params.update(kwargs)
        return UNet(spatial_dims=2, in_channels=in_channels, out_channels=out_channels, **params)
    raise ValueError(f"unknown architecture {arch!r}; choose one of {', '.join(ARCHS)}")
