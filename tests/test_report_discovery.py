"""The report's "Discovered slices" part, its appendix tables (every candidate, label issues) and
the embedding map, on a small run directory whose discovery tables are written by hand."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from medfail import rundir
from medfail.analysis.discovery import COLUMNS
from medfail.data.datasets import open_dataset
from medfail.engine.runner import run_suite
from medfail.engine.suite import SuiteConfig
from medfail.report import html as report_html
from medfail.report.figures import embedding_map_plot
from medfail.report.html import render_report
from tests.conftest import write_png_folder
from tests.test_engine import brightness_classifier

CONFIG = {"tests": ["brightness"], "severities": [1], "uncertainty": [], "n_bootstrap": 20}
N = 16


@pytest.fixture(scope="module")
def base_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("discovery_report")
    data = write_png_folder(root / "data", "classification", n=N)
    return run_suite(brightness_classifier(), open_dataset(data, "classification"),
                     root / "run", SuiteConfig(**CONFIG), progress=False)


@pytest.fixture
def html_only(monkeypatch: pytest.MonkeyPatch) -> None:
    """Skip the PDF and the explorer (tested elsewhere): keeps these tests fast."""
    monkeypatch.setattr(report_html, "render_pdf", lambda *a, **k: None)
    monkeypatch.setattr(report_html, "render_explorer", lambda *a, **k: None)


def _features(embeddings: bool = True) -> pd.DataFrame:
    ids = [f"case{i:03d}" for i in range(N)]
    site = ["s1" if i % 3 else "s2" for i in range(N)]
    half = ["discover" if i % 2 == 0 else "confirm" for i in range(N)]
    error = [0.9 - 0.01 * i if s == "s2" else 0.1 + 0.005 * i for i, s in enumerate(site)]
    table = pd.DataFrame({"id": ids, "half": half, "error": error})
    if embeddings:
        rng = np.random.default_rng(0)
        table["emb.pc1"], table["emb.pc2"] = rng.normal(size=N), rng.normal(size=N)
    table["meta.site"] = site
    return table


def _candidate(rank: int, slice_: str, confirmed: bool, gap: float, lo: float,
               hi: float, description: str | None = None) -> dict[str, object]:
    return {"rank": rank, "slice": slice_, "source": "sliceline", "n_predicates": 1,
            "description": description or slice_, "score": 0.3, "n_discover": 3,
            "error_discover": 0.88, "gap_discover": 0.7, "n_confirm": 3, "error_confirm": 0.86,
            "error_rest": 0.14, "gap": gap, "ci_low": lo, "ci_high": hi, "ci_level": 0.975,
            "confirmed": confirmed}


CONFIRMED = _candidate(1, "meta.site=s2", True, 0.72, 0.61, 0.83)
NOT_CONFIRMED = _candidate(2, "meta.site=s1", False, -0.72, -0.83, -0.61)


def _issues() -> pd.DataFrame:
    ids = [f"case{i:03d}" for i in range(12)]
    return pd.DataFrame({"id": ids, "target": "disc", "given_label": 0,
                         "prob": np.linspace(0.99, 0.6, 12), "quality": np.linspace(0.01, 0.4, 12),
                         "issue": [True, True] + [False] * 10, "rank": range(1, 13),
                         "split": "test"})


def _write(run: Path, tmp_path: Path, discovery: list[dict[str, object]] | None,
           features: pd.DataFrame | None, issues: pd.DataFrame | None,
           examples: dict[str, np.ndarray] | None) -> Path:
    """A copy of ``run`` holding exactly the given tables (None: the file is removed)."""
    out = tmp_path / "run"
    shutil.copytree(run, out)
    files = {rundir.DISCOVERY: None if discovery is None else pd.DataFrame(discovery,
                                                                            columns=COLUMNS),
             rundir.DISCOVERY_FEATURES: features, rundir.LABEL_ISSUES: issues}
    for name, frame in files.items():
        path = rundir.table(out, name)
        path.unlink(missing_ok=True)
        if frame is not None:
            frame.to_parquet(path)
    path = rundir.table(out, rundir.EXAMPLES)
    path.unlink(missing_ok=True)
    if examples is not None:
        np.savez_compressed(path, **examples)
    return out


def _thumbs(ids: list[str]) -> dict[str, np.ndarray]:
    return {f"test__{i}": np.full((16, 16), 40 * k % 255, np.uint8) for k, i in enumerate(ids)}


def _section(html: str, start: str, end: str) -> str:
    return html[html.index(start):html.index(end)]


def test_confirmed_slice_with_its_ci_thumbnails_and_embedding_map(base_run: Path,
                                                                   tmp_path: Path) -> None:
    run = _write(base_run, tmp_path, [CONFIRMED, NOT_CONFIRMED], _features(), _issues(),
                 _thumbs(["case003", "case009", "case000", "case001"]))
    render_report(run)
    html = (run / "report.html").read_text()
    main = _section(html, 'id="discovered-slices"', 'id="sec-uncertainty"')
    assert "meta.site=s2" in main and "[0.610, 0.830]" in main and "+0.720" in main
    assert "meta.site=s1" not in main  # not confirmed: appendix only
    assert "97.50%" in main and "2 candidates" in main and "seed" in main
    assert "misclassification per sample and target" in main  # the error (classification)
    figures = run / "figures"
    assert (figures / "embedding_map.png").exists()
    assert (figures / "discovered_slice_examples.png").exists()
    assert 'data-file="figures/embedding_map.png"' in main
    assert 'data-file="figures/discovered_slice_examples.png"' in main
    # the confirm-half members of the slice with a thumbnail are named in the caption's figure
    assert "#1 meta.site=s2" in main
    manifest = json.loads((run / ".medfail" / "manifest.json").read_text())
    assert "figures/embedding_map.png" in manifest["files"]
    appendix = _section(html, 'id="sec-appendix-a"', 'id="sec-appendix-b"')
    every = _section(appendix, 'id="discovery-candidates"', 'id="label-issues"')
    assert "meta.site=s1" in every and "meta.site=s2" in every and "biased" in every
    import pypdfium2 as pdfium

    text = "\n".join(p.get_textpage().get_text_range()
                     for p in pdfium.PdfDocument(str(run / "report.pdf")))
    flat = re.sub(r"\s+", "", text)
    assert "Discovered slices" in text
    for name in ("embedding_map.png", "discovered_slice_examples.png",
                 "label_issue_examples.png"):
        assert f"figures/{name}" in flat


def test_no_confirmed_slice_says_so(base_run: Path, tmp_path: Path, html_only: None) -> None:
    run = _write(base_run, tmp_path, [NOT_CONFIRMED], _features(), _issues(), None)
    render_report(run)
    main = _section((run / "report.html").read_text(), 'id="discovered-slices"',
                    'id="sec-uncertainty"')
    assert "No confirmed slice" in main and "none of the 1 candidate slice" in main
    assert "discovered_slice_examples.png" not in main
    assert (run / "figures" / "embedding_map.png").exists()  # no highlight, still drawn


def test_no_candidate_at_all(base_run: Path, tmp_path: Path, html_only: None) -> None:
    run = _write(base_run, tmp_path, [], _features(False), None, None)
    render_report(run)
    html = (run / "report.html").read_text()
    assert "No confirmed slice: discovery found no candidate (0 tested" in html
    assert "Label-issue detection was not run" in html


def test_old_run_directory_without_the_tables_renders(base_run: Path, tmp_path: Path,
                                                      html_only: None) -> None:
    run = _write(base_run, tmp_path, None, None, None, None)
    render_report(run)
    html = (run / "report.html").read_text()
    main = _section(html, 'id="discovered-slices"', 'id="sec-uncertainty"')
    assert "Slice discovery was not run" in main
    assert "Label-issue detection was not run" in html
    assert not (run / "figures" / "embedding_map.png").exists()
    assert not list((run / "figures").glob("*examples.png"))


def test_embedding_map_skipped_without_embedding_columns(base_run: Path, tmp_path: Path,
                                                         html_only: None) -> None:
    assert embedding_map_plot(_features(False), tmp_path / "e.png", "error") is None
    assert not (tmp_path / "e.png").exists()
    assert embedding_map_plot(_features(), tmp_path / "e.png", "error") == tmp_path / "e.png"
    run = _write(base_run, tmp_path, [CONFIRMED], _features(False), None,
                 _thumbs(["case003"]))
    render_report(run)
    assert not (run / "figures" / "embedding_map.png").exists()
    assert (run / "figures" / "discovered_slice_examples.png").exists()  # only one stored id


def test_label_issue_table_in_the_appendix(base_run: Path, tmp_path: Path,
                                           html_only: None) -> None:
    issues = _issues()
    run = _write(base_run, tmp_path, [CONFIRMED], _features(), issues,
                 _thumbs(["case000", "case001"]))
    render_report(run)
    html = (run / "report.html").read_text()
    table = _section(html, 'id="label-issues"', 'id="sec-appendix-b"')
    rows = re.findall(r"<tr><td>(\d+)</td><td class=\"l\">(case\d+)</td>", table)
    assert [int(r) for r, _ in rows] == list(range(1, 11))  # top 10 by rank
    assert [i for _, i in rows] == list(issues["id"][:10])
    assert "2 of 12 flagged" in table
    assert 'data-file="figures/label_issue_examples.png"' in table
    assert (run / "figures" / "label_issue_examples.png").exists()


def test_segmentation_label_issue_rows() -> None:
    seg = pd.DataFrame({"id": ["b", "a"], "quality": [0.2, 0.1], "issue": [False, True],
                        "n_issue_pixels": [0, 17], "rank": [2, 1], "split": "test"})
    rows = report_html._label_issue_rows(seg, "segmentation", {"test__a"})
    assert [r["id"] for r in rows] == ["a", "b"]
    assert rows[0]["pixels"] == "17" and rows[0]["issue"] == "yes" and rows[0]["thumb"] == "yes"
    assert "1 − Dice" in report_html._error_text("segmentation", {})
