"""A run killed with SIGKILL resumes: finished conditions are reused, results are unchanged."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
from conftest import write_png_folder

pytestmark = pytest.mark.skipif(not hasattr(signal, "SIGKILL"), reason="needs POSIX SIGKILL")

# the run as its own process: a threshold segmenter that sleeps per forward pass when asked, so
# the kill can land between (or inside) conditions
SCRIPT = """
import sys, time
import torch
from medfail.data.datasets import open_dataset
from medfail.engine.runner import run_suite
from medfail.engine.suite import SuiteConfig
from medfail.models.adapters import Segmenter
from medfail.models.spec import ModelSpec

data, out, delay = sys.argv[1], sys.argv[2], float(sys.argv[3])

def forward(x):
    time.sleep(delay)
    fg = torch.sigmoid((x[:, :1] - 130.0) / 10.0)
    return torch.cat([1 - fg, fg], dim=1)

spec = ModelSpec(task="segmentation", target_names=["lesion"], output="probabilities")
config = SuiteConfig(tests=["gaussian_noise", "gaussian_blur", "contrast", "jpeg"],
                     batch_size=4, uncertainty=["tta"], n_bootstrap=50)
run_suite(Segmenter(spec, forward, name="threshold"), open_dataset(data, "segmentation"), out,
          config, model_info={"name": "threshold", "sha256": "0" * 64}, progress=False,
          render=False)
"""
CONDITIONS = ["clean", *(f"{t}@{s}" for t in ("gaussian_noise", "gaussian_blur", "contrast",
                                               "jpeg") for s in (1, 2, 3)), "tta"]


def finished(run: Path) -> set[str]:
    return {p.stem for p in (run / ".parts").glob("*.parquet")} if run.exists() else set()


def test_resume_after_sigkill_matches_an_uninterrupted_run(tmp_path: Path) -> None:
    data = write_png_folder(tmp_path / "seg", "segmentation")
    script = tmp_path / "run_suite.py"
    script.write_text(SCRIPT)

    def start(out: str, delay: float) -> subprocess.Popen[bytes]:
        return subprocess.Popen([sys.executable, str(script), str(data), str(tmp_path / out),
                                 str(delay)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)

    reference = start("reference", 0.0)
    killed = start("resumed", 0.05)
    deadline = time.monotonic() + 240
    while not finished(tmp_path / "resumed") and killed.poll() is None:
        assert time.monotonic() < deadline, "no condition finished in time"
        time.sleep(0.01)
    time.sleep(0.1)  # most likely inside the next condition: its files are half-written
    os.kill(killed.pid, signal.SIGKILL)
    assert killed.wait() == -signal.SIGKILL
    done = finished(tmp_path / "resumed")
    assert 1 <= len(done) < len(CONDITIONS)
    # a file that looks finished but whose condition never committed must not be trusted
    todo = [c for c in CONDITIONS if c not in done]
    (tmp_path / "resumed" / "predictions" / f"{todo[-1]}.npz").write_bytes(b"half-written")

    for proc in (reference, start("resumed", 0.0)):
        _, err = proc.communicate(timeout=240)
        assert proc.returncode == 0, err.decode()[-2000:]
    info = json.loads((tmp_path / "resumed" / "run.json").read_text())
    assert info["cached_conditions"] and set(info["cached_conditions"]) == done
    for name in ("metrics.parquet", "per_sample.parquet"):
        pd.testing.assert_frame_equal(pd.read_parquet(tmp_path / "resumed" / name),
                                      pd.read_parquet(tmp_path / "reference" / name))
