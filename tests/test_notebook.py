"""The analysis notebook runs top to bottom (quick mode) and writes a run directory."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

NOTEBOOK = Path(__file__).resolve().parents[1] / "notebooks" / "failure_analysis.ipynb"


def _kernel_dir(root: Path) -> Path:
    """A ``python3`` kernelspec that starts this interpreter (first on JUPYTER_PATH, so a user's
    own ``python3`` kernelspec never takes its place)."""
    from ipykernel.kernelspec import write_kernel_spec

    write_kernel_spec(root / "kernels" / "python3", overrides={
        "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"]})
    return root


def test_notebook_quick_mode_runs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    pytest.importorskip("ipykernel")
    monkeypatch.setenv("JUPYTER_PATH", str(_kernel_dir(tmp_path / "jupyter")))
    for var, sub in (("JUPYTER_RUNTIME_DIR", "runtime"), ("JUPYTER_CONFIG_DIR", "config"),
                     ("IPYTHONDIR", "ipython")):  # nothing read from or written to $HOME
        monkeypatch.setenv(var, str(tmp_path / sub))
    monkeypatch.setenv("MEDFAIL_NOTEBOOK_QUICK", "1")
    # one torch thread: next to the other test workers, 2 spinning threads run 3-4x slower
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    monkeypatch.delenv("MEDFAIL_NOTEBOOK_OUT", raising=False)
    work = tmp_path / "work"
    work.mkdir()
    nb = nbformat.read(NOTEBOOK, as_version=4)
    assert all(not c.get("outputs") for c in nb.cells if c.cell_type == "code"), \
        "commit the notebook with outputs cleared"
    client = nbclient.NotebookClient(nb, kernel_name="python3", timeout=600,
                                     resources={"metadata": {"path": str(work)}})
    client.execute()  # raises CellExecutionError on the first failing cell
    errors = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])
              if o.get("output_type") == "error"]
    assert not errors
    run = work / "runs" / "notebook_quick" / "segmentation"
    assert (run / "metrics.parquet").exists()
    assert (run / "run.json").exists()
