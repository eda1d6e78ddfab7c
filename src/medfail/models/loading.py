"""Load any supported model into a task adapter.

Accepted references:

* a medfail model file (``medfail train`` output, ``.pt``) - carries its own spec;
* a TorchScript archive (``torch.jit.save``) - spec from an ``_extra_files`` entry
  ``medfail_spec.json`` or a sidecar JSON;
* an ONNX file - spec from the model's ``metadata_props["medfail_spec"]`` or a sidecar JSON;
* ``package.module:function`` - the function returns an ``nn.Module`` or a callable mapping a
  (N, C, H, W) tensor (volumes: (N, C, X, Y, Z), spec ``spatial_dims`` 3) to outputs; spec from
  ``--model-spec`` or a ``medfail_spec`` attribute;
* a pickled ``nn.Module`` - refused unless ``trust_pickle=True``;
* a MONAI Model Zoo bundle directory (:mod:`medfail.models.monai_bundle`).

The sidecar JSON is ``--model-spec FILE`` or ``<model file>.json`` beside the model. An ONNX
model's fixed input dimensions are checked against the spec at load time (rank, channels,
input_size).
"""

from __future__ import annotations

import importlib
import json
import pickle
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from medfail.errors import MedfailInputError, MedfailModelError
from medfail.models.adapters import ADAPTERS, Forward, ModelAdapter
from medfail.models.bundle import is_bundle, module_from_bundle
from medfail.models.spec import ModelSpec


def _torch_forward(module: nn.Module, device: str) -> Forward:
    module = module.to(device).eval()

    def forward(x: torch.Tensor) -> torch.Tensor:
        return module(x.to(device))

    forward.module = module  # type: ignore[attr-defined]  # for MC dropout
    return forward


def _callable_forward(fn: Any, device: str) -> Forward:
    """``fn`` on the device; numeric numpy/list outputs become tensors, anything else is passed
    through for the adapter's output check to name."""
    def forward(x: torch.Tensor) -> torch.Tensor:
        out = fn(x.to(device))
        if isinstance(out, torch.Tensor | dict) or out is None or (
                isinstance(out, tuple | list) and any(isinstance(o, torch.Tensor) for o in out)):
            return out
        try:
            arr = np.asarray(out)
        except (ValueError, TypeError, RuntimeError):
            return out
        return torch.from_numpy(arr) if arr.dtype.kind in "biuf" and arr.ndim else out

    return forward


#: ONNX input element types medfail can feed, as numpy dtypes
ONNX_INPUT_TYPES = {"tensor(float)": np.float32, "tensor(float16)": np.float16,
                    "tensor(double)": np.float64}


def _onnx_forward(path: Path, threads: int | None = None, model: bytes | None = None
                  ) -> tuple[Forward, dict[str, str], list[Any]]:
    """ONNX Runtime forward (CPU), the model's metadata and its input shape (ints for fixed
    dimensions, names or ``None`` for dynamic ones). A fixed batch size is fed in chunks of it
    (the last one padded by repeating its final image). ``threads``: the session's intra-op
    threads (default ONNX Runtime's: one per physical core); ``model``: the model's bytes,
    read instead of ``path`` (which then only names it)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    if threads is not None:
        options.intra_op_num_threads = threads
    try:
        session = ort.InferenceSession(str(path) if model is None else model, options,
                                       providers=["CPUExecutionProvider"])
    except Exception as exc:  # onnxruntime raises several private types
        raise MedfailInputError(path, f"cannot load ONNX model ({exc})") from exc
    inputs = session.get_inputs()
    if len(inputs) != 1:
        raise MedfailInputError(path, f"the ONNX model has {len(inputs)} inputs "
                                f"({', '.join(i.name for i in inputs)}); medfail feeds one "
                                "(N, C, H, W) image tensor")
    inp = inputs[0]
    dtype = ONNX_INPUT_TYPES.get(inp.type)
    if dtype is None:
        raise MedfailInputError(path, f"the ONNX input {inp.name!r} has type {inp.type}; medfail "
                                "feeds float images (float, float16 or double)")
    shape = list(inp.shape or [])
    meta = dict(session.get_modelmeta().custom_metadata_map)
    batch = shape[0] if shape and isinstance(shape[0], int) and shape[0] > 0 else None

    def run(x: np.ndarray) -> np.ndarray:
        try:
            return np.asarray(session.run(None, {inp.name: x})[0])
        except Exception as exc:  # InvalidArgument, Fail, RuntimeException...
            detail = " ".join(str(exc).split())
            raise MedfailModelError(
                path.name, f"ONNX Runtime refused a {tuple(x.shape)} input (the model's input "
                f"{inp.name!r} has shape {_onnx_dims(shape)}): {detail[:400]}") from exc

    def forward(x: torch.Tensor) -> torch.Tensor:
        arr = x.detach().cpu().numpy().astype(dtype)
        if batch is None or batch == len(arr):
            return torch.from_numpy(run(arr))
        outs = []
        for s in range(0, len(arr), batch):
            chunk = arr[s:s + batch]
            pad = batch - len(chunk)
            if pad:
                chunk = np.concatenate([chunk, np.repeat(chunk[-1:], pad, axis=0)])
            outs.append(run(chunk)[:batch - pad])
        return torch.from_numpy(np.concatenate(outs))

    return forward, meta, shape


def _onnx_dims(shape: list[Any]) -> str:
    return "(" + ", ".join(str(d) if isinstance(d, int) else "?" for d in shape) + ")"


def _check_onnx_input(path: Path, shape: list[Any], spec: ModelSpec) -> None:
    """The ONNX input's fixed dimensions against the spec: rank 2 + ``spatial_dims`` (4 for
    images, 5 for volumes), channels = ``in_channels`` (+ 2 prompt channels for a promptable
    model), spatial sizes = ``input_size`` (a fixed size is fed by the sliding window)."""
    if not shape:
        return
    dims = _onnx_dims(shape)
    volumes = spec.spatial_dims == 3
    feeds = "(N, C, X, Y, Z) volumes" if volumes else "(N, C, H, W) images"
    if len(shape) != 2 + int(spec.spatial_dims or 2):
        hint = ("; for a 3D model set \"spatial_dims\": 3 (or a 3-value input_size) in the spec"
                if len(shape) == 5 else "")
        raise MedfailInputError(path, f"the ONNX input has shape {dims}; medfail feeds "
                                f"{feeds} (spec spatial_dims {spec.spatial_dims}){hint}")
    channels = spec.in_channels + (2 if spec.task == "promptable" else 0)
    c = shape[1]
    if isinstance(c, int) and c > 0 and c != channels:
        what = (f"in_channels {spec.in_channels} + 2 prompt channels" if spec.task ==
                "promptable" else f"in_channels {spec.in_channels}")
        raise MedfailInputError(path, f"the ONNX model takes {c} input channels (input shape "
                                f"{dims}) but the spec has {what}; fix in_channels in the "
                                "model spec (--model-spec)")
    fixed = [(i, d) for i, d in enumerate(shape[2:]) if isinstance(d, int) and d > 0]
    if not fixed:
        return
    want = spec.input_size
    if want is None:
        size = [d if isinstance(d, int) and d > 0 else "?" for d in shape[2:]]
        raise MedfailInputError(path, f"the ONNX model has a fixed input size {dims} but the "
                                f"spec has no input_size; add \"input_size\": {size} to the "
                                "model spec (--model-spec), or re-export with dynamic "
                                "spatial axes")
    for axis, d in fixed:
        if d != want[axis]:
            raise MedfailInputError(
                path, f"the ONNX model takes inputs of shape {dims} but the spec says "
                f"input_size {list(want)}; set input_size to match the model (--model-spec) "
                "or re-export it with that size or dynamic spatial axes")


def _read_spec(path: Path | None, spec_path: str | Path | None, embedded: str | bytes | None,
               attribute: Any = None, display: str = "") -> ModelSpec:
    sources: list[tuple[str, Any]] = []
    if spec_path is not None:
        sources.append((str(spec_path), Path(spec_path)))
    if attribute is not None:
        sources.append(("medfail_spec attribute", attribute))
    if embedded:
        sources.append(("embedded medfail_spec", embedded))
    sidecar = None if path is None else path.with_name(path.name + ".json")
    if sidecar is not None and sidecar.exists():
        sources.append((str(sidecar), sidecar))
    if not sources:
        where = f" or put it in {sidecar.name} beside the model" if sidecar else ""
        raise MedfailInputError(
            display or path, "no model spec: pass --model-spec FILE.json (task, target_names, "
            "input_size, in_channels, normalisation, output)" + where)
    where, src = sources[0]
    try:
        if isinstance(src, Path):
            data = json.loads(src.read_text())
        elif isinstance(src, str | bytes):
            data = json.loads(src)
        else:
            data = dict(src)
        return ModelSpec.from_dict(data)
    except (OSError, ValueError, TypeError) as exc:
        raise MedfailInputError(where, f"invalid model spec ({exc})") from exc


def _is_torchscript(path: Path) -> bool:
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as zf:
        return any(n.endswith("constants.pkl") or "/code/" in n for n in zf.namelist())


def load_model(ref: str | Path, task: str | None = None, *, spec_path: str | Path | None = None,
               trust_pickle: bool = False, device: str = "cpu",
               batch_size: int = 32) -> ModelAdapter:
    """Load ``ref`` and wrap it in the adapter of its task; checks ``task`` matches the model."""
    ref_s = str(ref)
    path = Path(ref_s)
    if not path.exists() and ":" in ref_s and not ref_s.endswith((".pt", ".pth", ".onnx")):
        from medfail.models.sam import is_sam_predictor, wrap_sam

        obj, factory = _import_entry_point(ref_s)
        if is_sam_predictor(obj):
            if task is not None and task != "promptable":
                raise MedfailInputError(
                    ref_s, f"this is a SAM-style promptable model, but --task {task} was requested")
            return wrap_sam(obj, name=ref_s)
        spec, forward = _entry_point_forward(obj, factory, ref_s, spec_path, device)
        name = ref_s
    elif not path.exists():
        raise MedfailInputError(path, "model file not found")
    elif path.is_dir():  # a MONAI Model Zoo bundle (configs/metadata.json, ...)
        from medfail.models.monai_bundle import load_bundle

        spec, forward, name = load_bundle(path, spec_path, device)
    elif path.suffix == ".onnx":
        forward, meta, onnx_shape = _onnx_forward(path)
        spec = _read_spec(path, spec_path, meta.get("medfail_spec"))
        _check_onnx_input(path, onnx_shape, spec)
        name = path.name
    elif _is_torchscript(path):
        extra = {"medfail_spec.json": ""}
        try:
            module = torch.jit.load(str(path), map_location=device, _extra_files=extra)
        except Exception as exc:
            raise MedfailInputError(path, f"cannot load TorchScript model ({exc})") from exc
        spec = _read_spec(path, spec_path, extra["medfail_spec.json"] or None)
        forward, name = _torch_forward(module, device), path.name
    else:
        spec, forward = _load_torch_file(path, spec_path, trust_pickle, device)
        name = path.name
    if task is not None and spec.task != task:
        raise MedfailInputError(
            ref_s, f"this is a {spec.task} model, but --task {task} was requested")
    return ADAPTERS[spec.task](spec, forward, device=device, batch_size=batch_size, name=name)


def _load_torch_file(path: Path, spec_path: str | Path | None, trust_pickle: bool,
                     device: str) -> tuple[ModelSpec, Forward]:
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        if not trust_pickle:
            raise MedfailInputError(
                path, "contains pickled Python objects, which can run arbitrary code when "
                "loaded; refusing (pass --trust-pickle only if you trust its source)") from exc
        payload = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as exc:
        raise MedfailInputError(path, f"cannot read model file ({exc})") from exc
    if is_bundle(payload):
        spec, module = module_from_bundle(payload, path)
        return spec, _torch_forward(module, device)
    if isinstance(payload, nn.Module):
        spec = _read_spec(path, spec_path, None, getattr(payload, "medfail_spec", None))
        return spec, _torch_forward(payload, device)
    if isinstance(payload, dict):
        raise MedfailInputError(
            path, "a bare state_dict has no architecture; train with `medfail train`, or export "
            "TorchScript/ONNX, or load it with a `module:function` entry point")
    raise MedfailInputError(path, f"unsupported content ({type(payload).__name__})")


def _import_entry_point(ref: str) -> tuple[Any, Any]:
    """Call ``package.module:function``; returns what it built and the function itself."""
    mod_name, _, fn_name = ref.partition(":")
    try:
        factory = getattr(importlib.import_module(mod_name), fn_name)
    except (ImportError, AttributeError) as exc:
        raise MedfailInputError(ref, f"cannot import entry point ({exc})") from exc
    return factory(), factory


def _entry_point_forward(obj: Any, factory: Any, ref: str, spec_path: str | Path | None,
                         device: str) -> tuple[ModelSpec, Forward]:
    spec = _read_spec(None, spec_path, None, getattr(obj, "medfail_spec", None)
                      or getattr(factory, "medfail_spec", None), display=ref)
    if isinstance(obj, nn.Module):
        return spec, _torch_forward(obj, device)
    if callable(obj):
        return spec, _callable_forward(obj, device)
    raise MedfailInputError(ref, f"entry point returned {type(obj).__name__}, not a callable")


def describe_model(ref: str | Path) -> dict[str, Any]:
    """Name (file or folder name, never the full path) and sha256 of a model reference, for
    run.json. A folder (a MONAI bundle): sha256 over the relative path and bytes of every file
    under its ``configs/`` and ``models/``, in sorted order; an entry point: no hash."""
    import hashlib

    path = Path(str(ref))
    if path.is_dir():
        files = sorted(p for sub in ("configs", "models") for p in (path / sub).rglob("*")
                       if p.is_file())
    elif path.is_file():
        files = [path]
    else:
        return {"name": str(ref), "sha256": None}
    h = hashlib.sha256()
    for file in files:
        if path.is_dir():
            h.update(file.relative_to(path).as_posix().encode() + b"\0")
        with file.open("rb") as f:
            for chunk in iter(lambda f=f: f.read(1 << 20), b""):
                h.update(chunk)
    return {"name": path.name, "sha256": h.hexdigest()}
