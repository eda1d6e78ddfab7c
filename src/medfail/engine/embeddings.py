"""The model's penultimate features per test sample: ``predictions/embeddings.npz``.

Slice discovery (:mod:`medfail.analysis.discovery`) groups samples the model sees alike; it reads
these stored vectors, never the model. They are taken by forward hooks on the torch module
during one extra clean pass over the test data (one sample per forward call, so every captured
activation belongs to that sample):

* **classifiers**: the input of the module's last ``nn.Linear`` (the features the logits are a
  linear function of), averaged over any spatial axes left;
* **segmenters** (and classifiers without a linear layer): the output of the *bottleneck*, the
  last module (in call order) whose output has the smallest spatial extent on the first
  sample, globally average-pooled over its spatial axes; with sliding windows every window's
  pooled vector is averaged.

Models that are not torch modules (ONNX, ``--runtime onnxruntime``, Python callables) and
TorchScript models (no forward hooks) have no hookable layer: no file is written and
``run.json: embeddings`` says why.
The file holds ``ids`` (unicode, test order), ``features`` (float32 ``(N, D)``) and ``layer``
(the hooked module's qualified name and rule).
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from medfail import rundir
from medfail.conditions import Condition
from medfail.data.datasets import Dataset
from medfail.engine.predictor import Predictor
from medfail.engine.suite import CLEAN_CONDITION, SuiteConfig
from medfail.models.adapters import ModelAdapter


def torch_module(adapter: ModelAdapter) -> nn.Module | None:
    """The adapter's torch module (``forward.module``), or None for ONNX and callables."""
    module = getattr(adapter.forward, "module", None)
    return module if isinstance(module, nn.Module) else None


def _pooled(t: torch.Tensor) -> torch.Tensor:
    """``(B, C, *spatial)`` or ``(B, C)`` → the mean ``C``-vector over batch and space."""
    t = t.detach().float()
    if t.ndim < 2:
        return t.reshape(1, -1).mean(0)
    return t.transpose(0, 1).reshape(t.shape[1], -1).mean(1)


def _last_linear(module: nn.Module) -> tuple[str, nn.Module] | None:
    linears = [(n, m) for n, m in module.named_modules() if isinstance(m, nn.Linear)]
    return linears[-1] if linears else None


def _bottleneck(module: nn.Module, run_once: Any) -> tuple[str, nn.Module] | None:
    """The last-called module whose tensor output has the smallest spatial size (ties: the
    last called), found by hooking every submodule for one forward call."""
    seen: list[tuple[int, int, str, nn.Module]] = []
    handles = []
    for name, sub in module.named_modules():
        if sub is module:
            continue

        def hook(mod: nn.Module, args: Any, out: Any, name: str = name) -> None:
            if isinstance(out, torch.Tensor) and out.ndim >= 3:
                seen.append((int(np.prod(out.shape[2:])), len(seen), name, mod))
        handles.append(sub.register_forward_hook(hook))
    try:
        run_once()
    finally:
        for h in handles:
            h.remove()
    if not seen:
        return None
    smallest = min(s[0] for s in seen)
    _, _, name, mod = max((s for s in seen if s[0] == smallest), key=lambda s: s[1])
    return name, mod


@contextmanager
def _capture(mod: nn.Module, use_input: bool) -> Iterator[list[torch.Tensor]]:
    """Collect ``mod``'s input (``use_input``) or output vectors while the block runs."""
    got: list[torch.Tensor] = []
    if use_input:
        handle = mod.register_forward_pre_hook(lambda m, args: got.append(_pooled(args[0])))
    else:
        handle = mod.register_forward_hook(lambda m, args, out: got.append(_pooled(out)))
    try:
        yield got
    finally:
        handle.remove()


def sample_embeddings(adapter: ModelAdapter, dataset: Dataset, config: SuiteConfig,
                      progress: bool = False) -> tuple[list[str], np.ndarray, str] | str:
    """``(ids, features (N, D) float32, layer)`` for the clean test samples, or the reason
    there are none (a string). Forward calls go through the predictor (prompts, spacings)."""
    try:
        return _embeddings(adapter, dataset, config, progress)
    except RuntimeError as exc:  # a module that refuses hooks
        return f"forward hooks failed on this model ({exc})"


def _embeddings(adapter: ModelAdapter, dataset: Dataset, config: SuiteConfig,
                progress: bool) -> tuple[list[str], np.ndarray, str] | str:
    module = torch_module(adapter)
    if module is None:
        return ("the model is not a torch module (ONNX, onnxruntime or a Python callable): "
                "no layer to hook")
    if isinstance(module, torch.jit.ScriptModule):
        return "the model is TorchScript, whose modules take no forward hooks"
    predictor = Predictor([adapter], config, spacing_mm=False)
    cond: Condition = CLEAN_CONDITION
    samples = iter(dataset.batches(1))
    first = next(samples, None)
    if first is None:
        return "the test data are empty"

    def run(batch: list[Any]) -> None:
        predictor.forward(batch, [s.image for s in batch], cond)

    target = _last_linear(module) if adapter.task == "classification" else None
    use_input = target is not None
    rule = "input of the last nn.Linear" if use_input else "bottleneck output, pooled"
    if target is None:
        target = _bottleneck(module, lambda: run(first))
    if target is None:
        return "no module of the model returned a spatial feature map"
    name, mod = target
    ids: list[str] = []
    rows: list[np.ndarray] = []
    with torch.no_grad(), _capture(mod, use_input) as got:
        for batch in tqdm(itertools.chain([first], samples), total=len(dataset),
                          desc="  embeddings", unit="sample", leave=False,
                          disable=not progress):
            got.clear()
            run(batch)
            if not got:
                return f"the hooked layer {name or '<root>'} did not run for {batch[0].id}"
            ids.append(str(batch[0].id))
            rows.append(torch.stack(got).mean(0).cpu().numpy().astype(np.float32))
    dims = {r.shape for r in rows}
    if len(dims) != 1:
        return f"the hooked layer {name} gave vectors of several sizes ({sorted(dims)})"
    return ids, np.stack(rows), f"{name or '<root>'} ({rule})"


def write_embeddings(path: Path, ids: list[str], features: np.ndarray, layer: str) -> None:
    """``embeddings.npz``: ``ids``, ``features``, ``layer`` (atomic)."""
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as fh:
        np.savez_compressed(fh, ids=np.array(ids, dtype=str), features=features,
                            layer=np.array(layer))
    tmp.replace(path)


def store_embeddings(adapter: ModelAdapter, dataset: Dataset, run_dir: Path,
                     config: SuiteConfig, progress: bool = False) -> dict[str, Any]:
    """Compute and write ``predictions/embeddings.npz``; returns ``run.json: embeddings``
    (``layer``, ``dim``, ``n``; or ``skipped``: the reason)."""
    path = rundir.embeddings_path(run_dir)
    result = sample_embeddings(adapter, dataset, config, progress)
    if isinstance(result, str):
        return {"skipped": result}
    ids, features, layer = result
    write_embeddings(path, ids, features, layer)
    return {"layer": layer, "dim": int(features.shape[1]), "n": len(ids)}
