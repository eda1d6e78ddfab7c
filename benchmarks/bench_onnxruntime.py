"""Forward passes: torch vs ONNX Runtime on the same thread count (``--runtime onnxruntime``).

Models: the demo classifier (MONAI DenseNet121, 64², batch 32) and segmenter (MONAI U-Net,
64², batch 32) from ``runs/demo/models`` (else the same architectures with seeded weights),
and MONAI DenseNet121 at 224² (seeded weights, batch 16). Each is exported by medfail's own
:func:`~medfail.models.onnx_export.export_onnx` and run by the ONNX Runtime forward medfail uses
(``_onnx_forward``, intra-op threads = torch's, graph optimisation ORT_ENABLE_ALL, the ORT
default). Probabilities (the adapter's activation) are asserted equal within 1e-4. Timing: best
of ``REPS`` interleaved rounds at 1 and 2 threads; the headline is 1 thread (the suite
benchmarks' setting), the minimum over the three models.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

from benchmarks.common import best_of, ratio

REPS = 3
THREADS = (1, 2)
HEADLINE_THREADS = 1
DEMO = Path(__file__).resolve().parent.parent / "runs" / "demo" / "models"


def _models() -> list[tuple[str, Any, torch.Tensor]]:
    """(name, adapter, input batch) for each benchmarked model."""
    from monai.networks.nets import DenseNet121, UNet

    from medfail.models.adapters import Classifier, Segmenter
    from medfail.models.loading import _torch_forward, load_model
    from medfail.models.spec import ModelSpec

    gen = torch.Generator().manual_seed(0)
    out = []
    for name, task in (("classifier", "classification"), ("segmenter", "segmentation")):
        path = DEMO / f"{name}.pt"
        if path.exists():
            adapter = load_model(path, task)
            source = f"demo {path.name}"
        else:
            torch.manual_seed(0)
            if task == "classification":
                net = DenseNet121(spatial_dims=2, in_channels=1, out_channels=3)
                spec = ModelSpec(task=task, target_names=["a", "b", "c"], multi_label=True,
                                 input_size=(64, 64), in_channels=1)
                adapter = Classifier(spec, _torch_forward(net, "cpu"))
            else:
                net = UNet(2, 1, 2, channels=(16, 32, 64, 128), strides=(2, 2, 2))
                spec = ModelSpec(task=task, target_names=["lesion"], input_size=(64, 64),
                                 in_channels=1)
                adapter = Segmenter(spec, _torch_forward(net, "cpu"))
            source = "seeded weights (no demo model)"
        size = tuple(adapter.spec.input_size or (64, 64))
        x = torch.randn((32, adapter.spec.in_channels, *size), generator=gen)
        out.append((f"{name} ({source}, {size[0]}², batch 32)", adapter, x))
    torch.manual_seed(0)
    net = DenseNet121(spatial_dims=2, in_channels=3, out_channels=14)
    spec = ModelSpec(task="classification", target_names=[f"t{i}" for i in range(14)],
                     multi_label=True, input_size=(224, 224), in_channels=3)
    out.append(("densenet121 (seeded, 224², batch 16)", Classifier(spec, _torch_forward(
        net, "cpu")), torch.randn((16, 3, 224, 224), generator=gen)))
    return out


def run() -> dict[str, Any]:
    from medfail.models.loading import _onnx_forward
    from medfail.models.onnx_export import TOLERANCE, export_onnx

    before = torch.get_num_threads()
    results: dict[str, Any] = {}
    try:
        with tempfile.TemporaryDirectory() as tmp:
            for i, (name, adapter, x) in enumerate(_models()):
                module = adapter.forward.module.eval()
                path = Path(tmp) / f"m{i}.onnx"
                export_onnx(module, x[:1], path)
                row: dict[str, Any] = {}
                for threads in THREADS:
                    torch.set_num_threads(threads)
                    ort_fwd, _, _ = _onnx_forward(path, threads=threads)

                    def run_torch(m=module, x=x) -> torch.Tensor:
                        with torch.no_grad():
                            return m(x)

                    def run_ort(f=ort_fwd, x=x) -> torch.Tensor:
                        return f(x)

                    diff = float(np.max(np.abs(adapter.activate(run_torch()).numpy()
                                               - adapter.activate(run_ort()).numpy())))
                    assert diff <= TOLERANCE, f"{name}: ORT differs from torch by {diff}"
                    secs = best_of({"torch": run_torch, "onnxruntime": run_ort}, reps=REPS)
                    row[f"threads_{threads}"] = {
                        "seconds": {k: round(v, 4) for k, v in secs.items()},
                        "images_per_s": {k: round(len(x) / v, 1) for k, v in secs.items()},
                        "max_abs_prob_diff": diff,
                        "speedup": ratio(secs["torch"], secs["onnxruntime"])}
                results[name] = row
    finally:
        torch.set_num_threads(before)
    head = [r[f"threads_{HEADLINE_THREADS}"]["speedup"] for r in results.values()]
    return {
        "models": results,
        "timing": f"best of {REPS} interleaved rounds after a warm-up, forward passes only",
        "tolerance": f"probabilities (activated) within {TOLERANCE:g}, asserted",
        "headline_threads": HEADLINE_THREADS,
        "speedup": float(min(head)),
        "speedup_2_threads": float(min(r["threads_2"]["speedup"] for r in results.values())),
    }
