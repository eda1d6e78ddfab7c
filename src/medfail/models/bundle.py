"""medfail model files: a ``torch.save`` dict of plain types and tensors.

Keys: ``medfail_model`` (format version), ``spec`` (:class:`ModelSpec` as a dict),
``state_dict``, ``training_log`` (loss and wall-clock per epoch, seed, data hash, ...).
Loaded with ``torch.load(weights_only=True)``: no pickled code is ever executed.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from medfail.errors import MedfailInputError
from medfail.models.networks import build_network
from medfail.models.spec import ModelSpec

FORMAT_VERSION = 1


def save_model(path: str | Path, spec: ModelSpec, module: nn.Module,
               training_log: dict[str, Any]) -> Path:
    """Write a medfail model file (atomically: a crash never leaves half a file)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {
        "medfail_model": FORMAT_VERSION,
        "spec": spec.to_dict(),
        "state_dict": {k: v.detach().cpu() for k, v in module.state_dict().items()},
        "training_log": training_log,
    }
    tmp = path.with_name(path.name + ".tmp")
    torch.save(payload, tmp)
    tmp.replace(path)
    return path


def is_bundle(obj: object) -> bool:
    return isinstance(obj, dict) and "medfail_model" in obj


def module_from_bundle(payload: dict[str, Any], path: str | Path) -> tuple[ModelSpec, nn.Module]:
    """Rebuild the network of a loaded model file and load its weights."""
    try:
        spec = ModelSpec.from_dict(payload["spec"])
    except (KeyError, TypeError, ValueError) as exc:
        raise MedfailInputError(path, f"not a valid medfail model file ({exc})") from exc
    extra = len(spec.prompt_channels)
    module = build_network(spec.arch, spec.in_channels + extra, spec.n_classes, **spec.arch_kwargs)
    module.load_state_dict(payload["state_dict"])
    module.eval()
    return spec, module


def read_training_log(path: str | Path) -> dict[str, Any]:
    payload = torch.load(Path(path), map_location="cpu", weights_only=True)
    return dict(payload.get("training_log", {}))
