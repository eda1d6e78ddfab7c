"""Memory of ``medfail run`` on volumes: peak RSS on 10 volumes ÷ on 1 volume (goal <= 1.2).

Each run is a fresh process (``python -m benchmarks.bench_volumes memory-child ...``) that
reads a folder of 96³ NIfTI volumes (int16, 1 x 1 x 2 mm, one bright ball each = its mask)
with the folder reader, runs a 3D threshold segmenter (foreground = sigmoid((x - 130) / 10),
MONAI sliding window of 64³, overlap 0.25) through ``run_suite`` on clean + three volume stress
tests, the analysis and the case studies, then prints its own peak RSS (``VmHWM``; see
:func:`benchmarks.bench_suite._peak_rss_mib` for why not ``ru_maxrss``).
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.bench_suite import _peak_rss_mib
from benchmarks.common import ratio

ROOT = Path(__file__).resolve().parents[1]
SHAPE = (96, 96, 96)
SPACING = (1.0, 1.0, 2.0)
ROI = (64, 64, 64)
COUNTS = (1, 10)
TESTS = ["gaussian_noise", "blur_3d", "slice_thickness"]
THREADS = 1


def write_volumes(root: Path, n: int, shape: tuple[int, int, int] = SHAPE,
                  spacing: tuple[float, float, float] = SPACING, seed: int = 0) -> Path:
    """``n`` NIfTI volumes in the folder format: noise around 60 (sd 8) with one ball of 200
    (radius 6-14 voxels) whose voxels are the mask (label 1)."""
    import nibabel as nib

    (root / "images").mkdir(parents=True, exist_ok=True)
    (root / "masks").mkdir(exist_ok=True)
    rng = np.random.default_rng(seed)
    affine = np.diag([*spacing, 1.0])
    grid = np.ogrid[tuple(slice(0, k) for k in shape)]
    for i in range(n):
        centre = [rng.uniform(20, k - 20) for k in shape]
        ball = sum((g - c) ** 2 for g, c in zip(grid, centre, strict=True)) \
            <= rng.uniform(6, 14) ** 2
        image = rng.normal(60, 8, shape)
        image[ball] = 200
        nib.save(nib.Nifti1Image(image.astype(np.int16), affine),
                 root / "images" / f"vol{i:03d}.nii.gz")
        nib.save(nib.Nifti1Image(ball.astype(np.uint8), affine),
                 root / "masks" / f"vol{i:03d}.nii.gz")
    return root


def threshold_segmenter() -> Any:
    """The 3D threshold segmenter of the module docstring."""
    import torch

    from medfail.models.adapters import Segmenter
    from medfail.models.spec import ModelSpec

    spec = ModelSpec(task="segmentation", target_names=["lesion"], output="probabilities",
                     spatial_dims=3, input_size=ROI)

    def forward(x: torch.Tensor) -> torch.Tensor:
        fg = torch.sigmoid((x[:, :1] - 130.0) / 10.0)
        return torch.cat([1 - fg, fg], dim=1)

    return Segmenter(spec, forward)


def memory_child(data: str, out: str) -> None:
    """Child process: one run on ``data``, then its peak RSS (MiB) and seconds as JSON."""
    import torch

    torch.set_num_threads(THREADS)
    from medfail.data.datasets import open_dataset
    from medfail.engine.runner import run_suite
    from medfail.engine.suite import SuiteConfig

    model = threshold_segmenter()
    before = _peak_rss_mib()
    t0 = time.perf_counter()
    config = SuiteConfig(tests=TESTS, severities=[2], uncertainty=[], mitigate=False,
                         n_bootstrap=200)
    run_suite(model, open_dataset(Path(data), "segmentation"), Path(out), config,
              progress=False, render=False)
    print(json.dumps({"peak_rss_mib": _peak_rss_mib(), "peak_rss_after_imports_mib": before,
                      "seconds": time.perf_counter() - t0}))


def run() -> dict[str, Any]:
    """Peak RSS of a run on 10 volumes ÷ on 1 volume, each in a fresh process."""
    runs = {}
    with tempfile.TemporaryDirectory(prefix="medfail-bench-volumes-") as name:
        tmp = Path(name)
        for n in COUNTS:
            data = write_volumes(tmp / f"data_{n}", n)
            proc = subprocess.run(
                [sys.executable, "-m", "benchmarks.bench_volumes", "memory-child", str(data),
                 str(tmp / f"run_{n}")], cwd=ROOT, capture_output=True, text=True, check=True)
            runs[n] = json.loads(proc.stdout.strip().splitlines()[-1])
    small, large = (runs[n]["peak_rss_mib"] for n in COUNTS)
    base_small, base_large = (runs[n]["peak_rss_after_imports_mib"] for n in COUNTS)
    volume_mib = np.prod(SHAPE) * 4 / 2**20
    return {
        "config": f"{COUNTS[0]} vs {COUNTS[1]} NIfTI volumes {'x'.join(map(str, SHAPE))} "
                  f"({volume_mib:.1f} MiB as float32) at {SPACING} mm, 3D threshold "
                  f"segmenter (sliding window {'x'.join(map(str, ROI))}), clean + "
                  f"{', '.join(TESTS)} at severity 2, no uncertainty methods, no mitigation, "
                  "render=False (case studies written)",
        "measure": "peak RSS (VmHWM) of each child process at exit",
        "threads": f"torch {THREADS}",
        "peak_rss_mib": {str(n): round(runs[n]["peak_rss_mib"], 1) for n in COUNTS},
        "peak_rss_after_imports_mib": {str(n): round(runs[n]["peak_rss_after_imports_mib"], 1)
                                       for n in COUNTS},
        "seconds": {str(n): round(runs[n]["seconds"], 2) for n in COUNTS},
        "ratio": ratio(large, small),
        # the growth above the imports both runs share, in MiB and in float32 volumes
        "growth_mib": round(large - small, 1),
        "growth_above_imports": round(ratio(large - base_large, small - base_small), 3),
    }


if __name__ == "__main__":
    if len(sys.argv) == 4 and sys.argv[1] == "memory-child":
        memory_child(*sys.argv[2:])
    else:
        result = run()
        print(json.dumps(result, indent=2))
        print(f"volume_memory_ratio = {result['ratio']:.3f} (goal <= 1.2)")
