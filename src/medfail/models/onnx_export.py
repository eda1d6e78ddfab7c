"""Run a torch model on ONNX Runtime (``medfail run --runtime onnxruntime``).

The torch module behind an adapter (``adapter.forward.module``) is exported once to ONNX
(TorchScript-based exporter, opset :data:`OPSET`, dynamic batch and spatial axes) into a cache
folder, under a name keyed by the model hash (sha256 of the model file, else of the state dict),
the spec, the opset and the torch/onnx/onnxruntime versions; a second run reuses the file. The
exported model is checked against torch on the first batch: the largest absolute difference of
the activated probabilities, ``max |p_ort - p_torch|``, must be <= :data:`TOLERANCE`, else
medfail says so and keeps torch. ORT's intra-op threads = ``torch.get_num_threads()``.
MC dropout keeps the torch module: while any dropout layer is in train mode the forward is
torch's (ORT graphs are exported in eval mode).
"""

from __future__ import annotations

import copy
import hashlib
import json
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from medfail.models.adapters import Forward, ModelAdapter

#: ONNX opset of the export
OPSET = 17
#: largest allowed absolute difference of probabilities, ORT vs torch, on the first batch
TOLERANCE = 1e-4
RUNTIMES = ("torch", "onnxruntime")
#: changes when :func:`export_onnx` exports differently (part of the cache key)
EXPORT_FORM = "prelu-as-relu-1"


def _versions() -> dict[str, str]:
    import onnx
    import onnxruntime

    return {"torch": torch.__version__, "onnx": onnx.__version__,
            "onnxruntime": onnxruntime.__version__, "opset": str(OPSET)}


def state_dict_sha256(module: nn.Module) -> str:
    """sha256 over the state dict's names, dtypes, shapes and bytes (sorted by name)."""
    h = hashlib.sha256()
    for name, t in sorted(module.state_dict().items()):
        arr = t.detach().cpu().contiguous()
        h.update(f"{name}|{arr.dtype}|{tuple(arr.shape)}".encode())
        h.update(arr.view(torch.uint8).numpy().tobytes() if arr.numel() else b"")
    return h.hexdigest()


def onnx_key(adapter: ModelAdapter, model_sha256: str | None) -> str:
    """Cache key: model hash (file, else state dict) + spec + opset and versions."""
    module = getattr(adapter.forward, "module", None)
    model_hash = model_sha256 or (state_dict_sha256(module) if isinstance(module, nn.Module)
                                  else "")
    blob = json.dumps({"model": model_hash, "spec": adapter.spec.to_dict(), **_versions(),
                       "export": EXPORT_FORM},
                      sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:32]


class _PReLUAsRelu(nn.Module):
    """PReLU as ``relu(x) - a * relu(-x)`` (bit-identical: ``a * x`` for ``x < 0``). ONNX
    Runtime's PRelu kernel took 35 % of the demo U-Net's time on 1 thread; this form is 1.3x
    faster overall there (docs/performance.md)."""

    def __init__(self, prelu: nn.PReLU) -> None:
        super().__init__()
        w = prelu.weight.detach().clone()
        self.register_buffer("weight", w)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = self.weight
        if w.numel() > 1:  # one slope per channel
            w = w.reshape(1, -1, *[1] * (x.ndim - 2))
        return torch.relu(x) - w * torch.relu(-x)


def _for_export(module: nn.Module) -> nn.Module:
    """A copy of ``module`` (eval mode) with every ``nn.PReLU`` as :class:`_PReLUAsRelu`;
    TorchScript modules are exported as they are."""
    if isinstance(module, torch.jit.ScriptModule) or not any(
            isinstance(m, nn.PReLU) for m in module.modules()):
        return module.eval()
    module = copy.deepcopy(module).eval()
    for parent in list(module.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, nn.PReLU):
                setattr(parent, name, _PReLUAsRelu(child))
    return module


def export_onnx(module: nn.Module, example: torch.Tensor, path: Path) -> None:
    """Export ``module`` (eval mode, on CPU; PReLU rewritten, :func:`_for_export`) with dynamic
    batch and spatial axes; written to a temporary name, then renamed (never half-written)."""
    module = _for_export(module.cpu())
    axes = {0: "batch", **{d: f"s{d}" for d in range(2, example.ndim)}}
    tmp = path.with_name(path.name + ".tmp")
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        torch.onnx.export(module, (example.cpu(),), str(tmp), input_names=["image"],
                          output_names=["output"], opset_version=OPSET, dynamo=False,
                          dynamic_axes={"image": axes, "output": {0: "batch"}})
    tmp.replace(path)


def _ort_forward(path: Path, module: nn.Module, torch_forward: Forward) -> Forward:
    """ORT forward; torch's while a dropout layer is in train mode (MC dropout)."""
    from medfail.models.loading import _onnx_forward

    ort_forward, _, _ = _onnx_forward(path, threads=torch.get_num_threads())
    dropouts = [m for m in module.modules() if isinstance(m, nn.modules.dropout._DropoutNd)]

    def forward(x: torch.Tensor) -> torch.Tensor:
        if module.training or any(m.training for m in dropouts):
            return torch_forward(x)
        return ort_forward(x)

    forward.module = module  # type: ignore[attr-defined]  # MC dropout
    forward.onnx_path = str(path)  # type: ignore[attr-defined]
    return forward


def _first_batch_inputs(adapter: ModelAdapter, dataset: Any,
                        prompts: Callable[[Any], list[Any]]) -> list[torch.Tensor]:
    """The tensors the adapter feeds its forward for the dataset's first batch."""
    from medfail.models.output_checks import probe_models

    seen: list[torch.Tensor] = []
    forward = adapter.forward

    def record(x: torch.Tensor) -> torch.Tensor:
        seen.append(x.detach().cpu().clone())
        return forward(x)

    adapter.forward = record
    try:
        probe_models([adapter], dataset, prompts, n=min(adapter.batch_size, len(dataset)))
    finally:
        adapter.forward = forward
    return seen


def max_abs_diff(adapter: ModelAdapter, a: Forward, b: Forward,
                 inputs: list[torch.Tensor]) -> float:
    """``max |activate(a(x)) - activate(b(x))|`` over ``inputs``."""
    worst = 0.0
    with torch.no_grad():
        for x in inputs:
            pa = adapter.activate(a(x)).cpu().numpy()
            pb = adapter.activate(b(x)).cpu().numpy()
            worst = max(worst, float(np.max(np.abs(pa - pb))) if pa.size else 0.0)
    return worst


def use_runtime(adapter: ModelAdapter, requested: str, dataset: Any,
                prompts: Callable[[Any], list[Any]], cache_dir: Path,
                claim: Callable[..., None], model_sha256: str | None,
                tolerance: float = TOLERANCE) -> dict[str, Any]:
    """Switch ``adapter`` to ONNX Runtime when requested and possible; returns run.json's
    ``runtime``: requested, used, max_abs_diff, onnx (file name), reason."""
    info: dict[str, Any] = {"requested": requested, "used": "torch", "max_abs_diff": None,
                            "onnx": None, "reason": None}
    if requested != "onnxruntime":
        return info
    if hasattr(adapter.forward, "onnx_path"):  # already switched
        return {**info, "used": "onnxruntime", "onnx": Path(adapter.forward.onnx_path).name}
    module = getattr(adapter.forward, "module", None)
    if not isinstance(module, nn.Module):
        kind = "an ONNX model runs on ONNX Runtime already" if _is_onnx(adapter) else \
            "the model is a plain callable (no torch module to export); it runs as given"
        info["used"] = "onnxruntime" if _is_onnx(adapter) else "callable"
        info["reason"] = kind
        if not _is_onnx(adapter):
            print(f"--runtime onnxruntime: {kind}")
        return info
    if torch.device(adapter.device).type != "cpu":
        info["reason"] = f"ONNX Runtime runs on CPU here; the model is on {adapter.device}"
        print(f"--runtime onnxruntime: {info['reason']}; running torch")
        return info
    inputs = _first_batch_inputs(adapter, dataset, prompts)
    if not inputs:
        info["reason"] = "no input to export with"
        return info
    key = onnx_key(adapter, model_sha256)
    path = Path(cache_dir) / f"{key}.onnx"
    cache_dir.mkdir(parents=True, exist_ok=True)
    claim(path, path.with_suffix(".json"))
    if not path.exists():
        try:
            export_onnx(module, inputs[0][:1], path)
        except Exception as exc:  # the exporter raises many types
            info["reason"] = f"ONNX export failed ({' '.join(str(exc).split())[:300]})"
            print(f"--runtime onnxruntime: {info['reason']}; running torch")
            return info
    torch_forward = adapter.forward
    forward = _ort_forward(path, module, torch_forward)
    diff = max_abs_diff(adapter, torch_forward, forward, inputs)
    info.update(max_abs_diff=diff, onnx=path.name)
    if not diff <= tolerance:
        info["reason"] = (f"ONNX Runtime's probabilities differ from torch's by up to {diff:.3g} "
                          f"on the first batch (tolerance {tolerance:g})")
        print(f"--runtime onnxruntime: {info['reason']}; running torch")
        write_check(path, info)
        return info
    adapter.forward = forward
    info["used"] = "onnxruntime"
    write_check(path, info)
    return info


def _is_onnx(adapter: ModelAdapter) -> bool:
    return str(adapter.name).endswith(".onnx")


def write_check(path: Path, info: dict[str, Any]) -> None:
    """The first-batch check's result beside the export (workers read it)."""
    path.with_suffix(".json").write_text(json.dumps(info, indent=1), encoding="utf-8")


def apply_cached(adapter: ModelAdapter, cache_dir: str | Path, model_sha256: str | None) -> None:
    """In a worker: switch to the exported model when the main process's check passed."""
    module = getattr(adapter.forward, "module", None)
    if not isinstance(module, nn.Module):
        return
    path = Path(cache_dir) / f"{onnx_key(adapter, model_sha256)}.onnx"
    check = path.with_suffix(".json")
    if path.exists() and check.exists() and \
            json.loads(check.read_text(encoding="utf-8")).get("used") == "onnxruntime":
        adapter.forward = _ort_forward(path, module, adapter.forward)
