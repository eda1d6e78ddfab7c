"""MONAI Model Zoo bundles: ``--model path/to/bundle`` (documented in docs/models.md).

Layout read: ``configs/metadata.json`` (``network_data_format``), ``configs/inference.json``
(``network_def``, ``preprocessing``, ``inferer``, ``postprocessing``) and ``models/model.pt`` (a
state dict, or a dict with ``"model"``, loaded with ``weights_only=True`` into ``network_def``)
or, when there is no ``model.pt``, ``models/model.ts`` (TorchScript). Both configs are read and
instantiated with MONAI's own ``monai.bundle.ConfigParser`` (``bundle_root`` = the bundle).

The bundle becomes a :class:`ModelSpec` plus a forward; medfail's adapter then does the rest
(native-unit images, sliding window, output checks). Mapping:

* task: ``outputs.pred.type == "image"`` (one value per pixel) -> segmentation, anything else
  -> classification; target names from ``channel_def`` in key order (segmentation skips "0",
  the background); in_channels from ``inputs.image.num_channels``; spatial dims from
  ``inputs.image.spatial_shape`` (or the inferer's ``roi_size``).
* Inferer: a segmentation bundle's ``SlidingWindowInferer`` (instantiated from inference.json:
  its ``roi_size``, ``overlap``, ``mode``, padding...) runs *inside* the forward, on whole
  normalised images (spec ``input_size`` ``None``, as for HD-BET in :mod:`medfail.models.zoo`).
  Not mapped onto medfail's own sliding window because that one blends window *probabilities*
  with gaussian weights while MONAI blends the network's raw outputs (with ``mode``): on a
  2-class U-Net they differed by up to 0.02 where windows overlap. ``SimpleInferer`` (or none):
  the network on the whole image; classification takes ``spatial_shape`` as its input size
  when it is fixed (medfail's resize rule). Other inferers are refused.
* Preprocessing: chosen design = *map onto the spec, never run MONAI transforms on the image*,
  because the adapter normalises whole images before its sliding window and per-window
  statistics would be wrong. Supported (acting on the image key): ``ScaleIntensityRange(d)``
  (clip included), ``NormalizeIntensity(d)`` with fixed ``subtrahend`` and ``divisor``,
  ``ScaleIntensity(d)`` with ``factor`` only; consecutive ones compose into the spec's
  per-channel ``normalisation`` (a clip becomes a clamp module in front of the network).
  ``Spacing(d)`` -> ``spacing``; ``Orientation(d)`` ``RAS`` (medfail volumes are RAS+);
  ``LoadImage``, ``EnsureChannelFirst``, ``EnsureType``, ``ToTensor``, ``CastToType`` (float),
  ``Identity`` are what medfail's readers already do. Anything else (per-image statistics:
  ``NormalizeIntensity`` without fixed values or ``nonzero``, ``ScaleIntensity`` min/max; crops,
  resizes, random transforms...) is refused with one error naming inference.json and the
  transform. Transforms on other keys (labels) are not the image's and are skipped.
* Output: ``Activations(d)`` ``softmax`` -> ``output: logits``; ``sigmoid`` -> multi-label
  logits (classification only); no activation -> ``probabilities`` when ``outputs.pred``'s
  ``value_range`` is [0, 1], else ``logits``. Postprocessing medfail does itself (``AsDiscrete``,
  ``Invert``, ``SaveImage``, type conversions) is skipped; any other transform is named in one
  ``warning:`` line (medfail scores the network's probabilities, not the bundle's post-processed
  output).

``--model-spec FILE`` replaces the derived spec entirely (preprocessing and postprocessing are
then not read; only the network and weights come from the bundle).
"""

from __future__ import annotations

import json
import pickle
import sys
from pathlib import Path
from typing import Any

import torch
from torch import nn

from medfail.errors import MedfailInputError
from medfail.models.adapters import Forward
from medfail.models.spec import ModelSpec

METADATA = Path("configs") / "metadata.json"
INFERENCE = Path("configs") / "inference.json"
WEIGHTS = Path("models") / "model.pt"
TORCHSCRIPT = Path("models") / "model.ts"
#: preprocessing transforms medfail's readers already amount to (names without the ``d``)
NO_OP = ("LoadImage", "EnsureChannelFirst", "EnsureType", "ToTensor", "CastToType", "Identity",
         "AddChannel", "AsChannelFirst")
#: intensity transforms mapped onto the spec
INTENSITY = ("ScaleIntensityRange", "NormalizeIntensity", "ScaleIntensity")
SUPPORTED = (*INTENSITY, "Spacing", "Orientation", *NO_OP)
#: postprocessing medfail does itself (thresholds/argmax, native grid, its own outputs)
POST_SKIPPED = ("Activations", "AsDiscrete", "Invert", "SaveImage", "EnsureType", "ToTensor",
                "CopyItems", "Identity", "ToNumpy", "CastToType", "DeleteItems")


def is_bundle_dir(path: str | Path) -> bool:
    """A directory holding ``configs/metadata.json``."""
    p = Path(path)
    return p.is_dir() and (p / METADATA).is_file()


def _load_config(path: Path) -> dict[str, Any]:
    from monai.bundle import ConfigParser

    if not path.is_file():
        raise MedfailInputError(path, "missing: a MONAI bundle holds configs/metadata.json, "
                                "configs/inference.json and models/model.pt or models/model.ts")
    try:
        data = ConfigParser.load_config_file(str(path))
    except (OSError, ValueError) as exc:  # json.JSONDecodeError is a ValueError
        raise MedfailInputError(path, f"invalid JSON ({exc})") from exc
    if not isinstance(data, dict):
        raise MedfailInputError(path, f"must hold a JSON object, got {type(data).__name__}")
    return data


def _base(obj: object) -> str:
    """A transform's class name without MONAI's dictionary suffix ``d``/``D``/``Dict``."""
    name = type(obj).__name__
    for suffix in ("Dict", "D", "d"):
        if name.endswith(suffix) and name[:-len(suffix)] in SUPPORTED + POST_SKIPPED:
            return name[:-len(suffix)]
    return name


def _transforms(obj: Any) -> list[Any]:
    from monai.transforms import Compose

    if obj is None:
        return []
    if isinstance(obj, Compose):
        return [t for sub in obj.transforms for t in _transforms(sub)]
    if isinstance(obj, list | tuple):
        return [t for sub in obj for t in _transforms(sub)]
    return [obj]


def _acts_on(t: Any, key: str) -> bool:
    keys = getattr(t, "keys", None)
    return keys is None or key in tuple(keys)


class _Intensity:
    """Per-channel ``y = x * scale + offset`` followed by an optional clamp, composed."""

    def __init__(self, channels: int) -> None:
        self.channels = channels
        self.scale = [1.0] * channels
        self.offset = [0.0] * channels
        self.low: float | None = None
        self.high: float | None = None

    def affine(self, m: list[float], c: list[float]) -> None:
        if self.low is not None or self.high is not None:
            if len(set(m)) > 1 or len(set(c)) > 1 or m[0] <= 0:
                raise ValueError("a per-channel or negative scaling after a clip cannot be "
                                 "expressed")
            self.low = None if self.low is None else self.low * m[0] + c[0]
            self.high = None if self.high is None else self.high * m[0] + c[0]
        self.scale = [s * mi for s, mi in zip(self.scale, m, strict=True)]
        self.offset = [o * mi + ci for o, mi, ci in zip(self.offset, m, c, strict=True)]

    def clip(self, low: float, high: float) -> None:
        self.low = low if self.low is None else max(self.low, low)
        self.high = high if self.high is None else min(self.high, high)

    def per_channel(self, value: Any, what: str) -> list[float]:
        vals = [float(v) for v in (value if isinstance(value, list | tuple) else [value])]
        if len(vals) == 1:
            return vals * self.channels
        if len(vals) != self.channels:
            raise ValueError(f"{what} has {len(vals)} values for {self.channels} channels")
        return vals

    def normalisation(self) -> dict[str, list[float]] | None:
        if self.scale == [1.0] * self.channels and self.offset == [0.0] * self.channels:
            return None
        return {"mean": [-o / s for o, s in zip(self.offset, self.scale, strict=True)],
                "std": [1.0 / s for s in self.scale]}


def _intensity_step(t: Any, name: str, acc: _Intensity) -> None:
    """Map one intensity transform onto ``acc`` (ValueError: not expressible, with why)."""
    if name == "ScaleIntensityRange":
        s = getattr(t, "scaler", t)
        if s.a_max == s.a_min:
            raise ValueError("a_min == a_max (MONAI divides by zero)")
        m = 1.0 / (float(s.a_max) - float(s.a_min))
        c = -float(s.a_min) * m
        if s.b_min is not None and s.b_max is not None:
            span = float(s.b_max) - float(s.b_min)
            m, c = m * span, c * span + float(s.b_min)
        acc.affine([m] * acc.channels, [c] * acc.channels)
        if s.clip:
            if s.b_min is None or s.b_max is None:
                raise ValueError("clip without b_min/b_max")
            acc.clip(float(s.b_min), float(s.b_max))
    elif name == "NormalizeIntensity":
        n = getattr(t, "normalizer", t)
        if n.nonzero:
            raise ValueError("nonzero=True normalises only the non-zero pixels of each image "
                             "(per-image statistics)")
        if n.subtrahend is None or n.divisor is None:
            raise ValueError("without a fixed subtrahend and divisor it uses each image's own "
                             "mean/std (per-image statistics)")
        if not n.channel_wise and isinstance(n.subtrahend, list | tuple) and len(
                n.subtrahend) > 1:
            raise ValueError("a list subtrahend needs channel_wise=True")
        sub = acc.per_channel(n.subtrahend, "subtrahend")
        div = [d if d != 0 else 1.0 for d in acc.per_channel(n.divisor, "divisor")]
        acc.affine([1.0 / d for d in div], [-s / d for s, d in zip(sub, div, strict=True)])
    elif name == "ScaleIntensity":
        s = getattr(t, "scaler", t)
        if s.minv is not None or s.maxv is not None:
            raise ValueError("minv/maxv rescale each image by its own min and max (per-image "
                             "statistics); use factor, or ScaleIntensityRange with fixed a_min/"
                             "a_max")
        f = 1.0 + float(s.factor or 0.0)
        acc.affine([f] * acc.channels, [0.0] * acc.channels)


def _preprocessing(transforms: list[Any], key: str, channels: int, dims: int | None,
                   where: Path) -> tuple[_Intensity, tuple[float, ...] | None]:
    """The spec's intensity mapping and spacing from the bundle's preprocessing transforms."""
    acc = _Intensity(channels)
    spacing: tuple[float, ...] | None = None
    supported = ", ".join(f"{n}(d)" for n in SUPPORTED)
    for t in transforms:
        if not _acts_on(t, key):
            continue
        name = _base(t)
        why = None
        if name in INTENSITY:
            try:
                _intensity_step(t, name, acc)
            except ValueError as exc:
                why = str(exc)
        elif name == "Spacing":
            sp = getattr(t, "spacing_transform", t)
            spacing = tuple(float(v) for v in sp.pixdim)
            if dims is not None and len(spacing) != dims:
                why = f"pixdim {list(spacing)} has not {dims} values (spatial dims)"
        elif name == "Orientation":
            codes = getattr(getattr(t, "ornt_transform", t), "axcodes", None)
            if codes != "RAS":
                why = f"axcodes {codes!r}: medfail volumes are RAS+ (only 'RAS' is supported)"
        elif name == "CastToType":
            dtype = (t.dtype[0] if isinstance(getattr(t, "dtype", None), tuple)
                     else getattr(getattr(t, "converter", t), "dtype", None))
            if dtype is not None and not torch.empty(0, dtype=_torch_dtype(dtype)
                                                     ).is_floating_point():
                why = f"casts the image to {dtype} (medfail feeds float32)"
        elif name not in NO_OP:
            why = "not a transform medfail can express in a model spec"
        if why:
            raise MedfailInputError(
                where, f"preprocessing transform {type(t).__name__}: {why}; supported: "
                f"{supported} (or pass --model-spec FILE to state the preprocessing yourself)")
    return acc, spacing


def _torch_dtype(dtype: Any) -> torch.dtype:
    if isinstance(dtype, torch.dtype):
        return dtype
    import numpy as np

    try:
        return torch.from_numpy(np.zeros(0, dtype=dtype)).dtype
    except TypeError:
        return torch.float32


def _activation(transforms: list[Any], key: str, task: str, pred: dict[str, Any],
                where: Path) -> tuple[str, bool]:
    """``(output, multi_label)`` from the postprocessing's ``Activations(d)`` on ``key``;
    other transforms medfail does not do itself are named in one warning line."""
    output, multi_label, found = "logits", False, False
    ignored = []
    for t in transforms:
        if not _acts_on(t, key):
            continue
        name = _base(t)
        if name != "Activations":
            if name not in POST_SKIPPED:
                ignored.append(type(t).__name__)
            continue
        i = list(t.keys).index(key) if hasattr(t, "keys") else 0
        softmax = t.softmax[i] if hasattr(t, "keys") else t.softmax
        sigmoid = t.sigmoid[i] if hasattr(t, "keys") else t.sigmoid
        other = t.other[i] if hasattr(t, "keys") else t.other
        if not (softmax or sigmoid or other is not None):
            continue  # an Activations that does nothing
        found = True
        if other is not None or (sigmoid and task != "classification"):
            what = "other=" if other is not None else "sigmoid on a segmentation output"
            raise MedfailInputError(where, f"postprocessing {type(t).__name__} uses {what}; "
                                    "medfail supports softmax (segmentation, classification) "
                                    "and sigmoid (multi-label classification)")
        multi_label = bool(sigmoid)
    if not found:
        vr = pred.get("value_range")
        output = "probabilities" if isinstance(vr, list) and [float(v) for v in vr] == [
            0.0, 1.0] else "logits"
    if ignored:
        print(f"warning: bundle {where.parent.parent.name}: postprocessing "
              f"{', '.join(ignored)} not applied (medfail scores the network's probabilities)",
              file=sys.stderr, flush=True)
    return output, multi_label


def _inferer(obj: Any, task: str, where: Path) -> Any:
    """The bundle's inferer (``None``: the network is called on the whole input)."""
    from monai.inferers import SimpleInferer, SlidingWindowInferer

    if obj is None or isinstance(obj, SimpleInferer):
        return None
    if not isinstance(obj, SlidingWindowInferer):
        raise MedfailInputError(where, f"inferer {type(obj).__name__} is not supported "
                                "(SlidingWindowInferer or SimpleInferer)")
    if task != "segmentation":
        raise MedfailInputError(where, "a SlidingWindowInferer on a classification output is "
                                "not supported (medfail resizes classification inputs)")
    return obj


def _names(pred: dict[str, Any], task: str, where: Path) -> list[str]:
    """Target names from ``channel_def`` (key order; segmentation skips "0")."""
    n = pred.get("num_channels")
    cdef = pred.get("channel_def") or {}
    try:
        items = sorted(((int(k), str(v)) for k, v in dict(cdef).items()))
    except (TypeError, ValueError) as exc:
        raise MedfailInputError(where, f"outputs channel_def must map channel numbers to "
                                f"names ({exc})") from exc
    if task == "segmentation":
        if n is not None and int(n) < 2:
            raise MedfailInputError(where, f"the segmentation output has {n} channel; medfail "
                                    "needs background + foreground channels (softmax)")
        names = [v for k, v in items if k != 0] or [
            f"class_{i}" for i in range(1, int(n or 2))]
        want = None if n is None else int(n) - 1
    else:
        names = [v for _, v in items] or [f"class_{i}" for i in range(int(n or 0))]
        want = None if n is None else int(n)
    if want is not None and len(names) != want:
        raise MedfailInputError(where, f"channel_def names {len(names)} classes but "
                                f"num_channels {n} (segmentation: background '0' + foreground)")
    if not names:
        raise MedfailInputError(where, "outputs have neither channel_def nor num_channels")
    return names


class _Bundled(nn.Module):
    """The bundle's network behind its intensity clip and its own inferer (on normalised
    inputs, whole images): what MONAI runs between preprocessing and activation."""

    def __init__(self, net: nn.Module, low: float | None, high: float | None,
                 inferer: Any = None) -> None:
        super().__init__()
        self.net, self.low, self.high, self.inferer = net, low, high, inferer

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.low is not None or self.high is not None:
            x = torch.clamp(x, self.low, self.high)
        return self.net(x) if self.inferer is None else self.inferer(x, self.net)


def _network(root: Path, parser: Any, where: Path, device: str) -> nn.Module:
    """``network_def`` with ``models/model.pt`` weights, or ``models/model.ts``."""
    pt, ts = root / WEIGHTS, root / TORCHSCRIPT
    if pt.is_file():
        if "network_def" not in parser:
            raise MedfailInputError(where, "no network_def (needed to load models/model.pt)")
        try:
            net = parser.get_parsed_content("network_def")
        except Exception as exc:  # MONAI wraps the constructor's error in a RuntimeError
            cause = f": {exc.__cause__}" if exc.__cause__ else ""
            raise MedfailInputError(where, "network_def failed to instantiate "
                                    f"({' '.join(str(exc).split())}{cause})") from exc
        try:
            state = torch.load(pt, map_location="cpu", weights_only=True)
        except pickle.UnpicklingError as exc:
            raise MedfailInputError(pt, "contains pickled Python objects; medfail loads bundle "
                                    "weights as a state dict only") from exc
        except Exception as exc:
            raise MedfailInputError(pt, f"cannot read weights ({exc})") from exc
        if isinstance(state, dict) and isinstance(state.get("model"), dict):
            state = state["model"]
        try:
            net.load_state_dict(state)
        except Exception as exc:
            raise MedfailInputError(pt, "the weights do not fit network_def "
                                    f"({' '.join(str(exc).split())[:400]})") from exc
        return net
    if ts.is_file():
        try:
            return torch.jit.load(str(ts), map_location=device)
        except Exception as exc:
            raise MedfailInputError(ts, f"cannot load TorchScript model ({exc})") from exc
    raise MedfailInputError(pt, "missing: a MONAI bundle needs models/model.pt (with "
                            "network_def) or models/model.ts")


def _forward(module: nn.Module, device: str) -> Forward:
    module = module.to(device).eval()

    def forward(x: torch.Tensor) -> torch.Tensor:
        return module(x.to(device))

    forward.module = module  # type: ignore[attr-defined]  # for MC dropout / ONNX export
    return forward


def _parsed(parser: Any, key: str, where: Path) -> Any:
    if key not in parser:
        return None
    try:
        return parser.get_parsed_content(key)
    except Exception as exc:
        cause = f": {exc.__cause__}" if exc.__cause__ else ""
        raise MedfailInputError(where, f"{key} failed to instantiate "
                                f"({' '.join(str(exc).split())}{cause})") from exc


def load_bundle(path: str | Path, spec_path: str | Path | None = None, device: str = "cpu"
                ) -> tuple[ModelSpec, Forward, str]:
    """The spec, forward and name of the MONAI bundle at ``path`` (module docstring)."""
    from monai.bundle import ConfigParser

    root = Path(path)
    meta_path, inf_path = root / METADATA, root / INFERENCE
    meta = _load_config(meta_path)
    parser = ConfigParser(_load_config(inf_path))
    parser["bundle_root"] = str(root)
    ndf = meta.get("network_data_format")
    if not isinstance(ndf, dict) or not ndf.get("inputs") or not ndf.get("outputs"):
        raise MedfailInputError(meta_path, "no network_data_format with inputs and outputs")
    in_key = "image" if "image" in ndf["inputs"] else next(iter(ndf["inputs"]))
    out_key = "pred" if "pred" in ndf["outputs"] else next(iter(ndf["outputs"]))
    image, pred = dict(ndf["inputs"][in_key]), dict(ndf["outputs"][out_key])
    shape = image.get("spatial_shape")
    dims = len(shape) if isinstance(shape, list) and shape else None
    name = root.resolve().name
    module = _network(root, parser, inf_path, device)
    if spec_path is not None:
        try:
            spec = ModelSpec.from_dict(json.loads(Path(spec_path).read_text()))
        except (OSError, ValueError, TypeError) as exc:
            raise MedfailInputError(spec_path, f"invalid model spec ({exc})") from exc
        return spec, _forward(module, device), name
    task = "segmentation" if pred.get("type") == "image" else "classification"
    names = _names(pred, task, meta_path)
    channels = int(image.get("num_channels", 1))
    inferer = _inferer(_parsed(parser, "inferer", inf_path), task, inf_path)
    if inferer is not None and not dims and isinstance(inferer.roi_size, list | tuple):
        dims = len(inferer.roi_size)
    input_size = None  # segmentation: whole images, windowed by the bundle's own inferer
    if task == "classification" and dims and all(isinstance(s, int) for s in shape):
        input_size = tuple(shape)
    acc, spacing = _preprocessing(_transforms(_parsed(parser, "preprocessing", inf_path)),
                                  in_key, channels, dims, inf_path)
    output, multi_label = _activation(_transforms(_parsed(parser, "postprocessing", inf_path)),
                                      out_key, task, pred, inf_path)
    if inferer is not None or acc.low is not None or acc.high is not None:
        module = _Bundled(module, acc.low, acc.high, inferer)
    try:
        spec = ModelSpec(task=task, target_names=names, multi_label=multi_label,
                         input_size=input_size, in_channels=channels,
                         normalisation=acc.normalisation(), output=output, spatial_dims=dims,
                         spacing=spacing)
    except ValueError as exc:
        raise MedfailInputError(root, f"the bundle maps to an invalid model spec ({exc})") from exc
    return spec, _forward(module, device), name
