"""The report: taxonomy, case studies, checklist, HTML + PDF, and a real browser opening it."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy import ndimage

from medfail.analysis.analyse import analyse
from medfail.analysis.case_studies import select_cases
from medfail.analysis.causes import cause_of
from medfail.analysis.checklist import CheckSpec, build_checklist, evaluate_checks
from medfail.analysis.input_quality import best_monitor, quality_features
from medfail.analysis.run_tables import RunTables
from medfail.analysis.taxonomy import BUCKETS, build_taxonomy
from medfail.data.datasets import open_dataset
from medfail.engine.runner import run_suite
from medfail.engine.suite import SuiteConfig
from medfail.errors import MedfailInputError
from tests.test_engine import brightness_classifier, threshold_segmenter

SECTIONS = ["1 Problem and models", "2 Failure taxonomy", "3 Stress tests and slices",
            "4 Uncertainty and calibration", "5 Mitigations",
            "6 Case studies and deployment checklist", "Appendix A Full tables",
            "Appendix B Further figures", "Appendix C Reproducibility",
            "Appendix D Contribution note"]
CONFIG = {"n_bootstrap": 50, "tests": ["gaussian_noise", "brightness", "gaussian_blur"],
          "uncertainty": ["tta"]}


@pytest.fixture(scope="module")
def seg_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from tests.conftest import write_png_folder

    root = tmp_path_factory.mktemp("seg")
    data = write_png_folder(root / "data", "segmentation", n=24)
    return run_suite(threshold_segmenter(), open_dataset(data, "segmentation"), root / "run",
                     SuiteConfig(**CONFIG), progress=False)


@pytest.fixture(scope="module")
def cls_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from tests.conftest import write_png_folder

    root = tmp_path_factory.mktemp("cls")
    data = write_png_folder(root / "data", "classification", n=24)
    return run_suite(brightness_classifier(), open_dataset(data, "classification"),
                     root / "run", SuiteConfig(**CONFIG), progress=False)


def _pdf_pages(path: Path) -> list[str]:
    import pypdfium2 as pdfium

    pdf = pdfium.PdfDocument(str(path))
    return [pdf[i].get_textpage().get_text_range() for i in range(len(pdf))]


@pytest.mark.parametrize("fixture", ["seg_run", "cls_run"])
def test_pdf_main_text_order_and_figures(fixture: str, request: pytest.FixtureRequest) -> None:
    run: Path = request.getfixturevalue(fixture)
    pages = _pdf_pages(run / "report.pdf")
    text = "\n".join(pages)
    positions = [text.find(s) for s in SECTIONS]
    assert all(p >= 0 for p in positions), dict(zip(SECTIONS, positions, strict=True))
    assert positions == sorted(positions), "sections out of order"
    appendix_page = next(i for i, p in enumerate(pages) if "Appendix A Full tables" in p)
    assert 1 <= appendix_page <= 6, f"main text takes {appendix_page} pages (limit 6)"
    html = (run / "report.html").read_text()
    flat = re.sub(r"\s+", "", text)
    figures = sorted(p.name for p in (run / "figures").glob("*.png"))
    assert figures and any(f.startswith("case_") for f in figures)
    for name in figures:
        assert f'data-file="figures/{name}"' in html, f"{name} not embedded in the HTML"
        assert f"figures/{name}" in flat, f"{name} not referenced in the PDF"
    assert "src=\"figures/" not in html  # self-contained: every image is a data URI


def test_taxonomy_is_filled_from_evidence_or_says_not_probed(seg_run: Path) -> None:
    entries = build_taxonomy(RunTables(seg_run))
    assert [e.bucket for e in entries] == sorted([e.bucket for e in entries],
                                                 key=BUCKETS.index)
    assert {e.bucket for e in entries} == set(BUCKETS)
    by_name = {e.entry: e for e in entries}
    assert by_name["prompt misplacement"].status == "not probed"  # not a promptable model
    assert by_name["ambiguous labels"].status == "not probed"
    for e in entries:
        assert e.status in {"breaks", "measured", "not probed"}
        if e.status == "not probed":
            assert e.finding.startswith("not probed in this run") and e.effect is None
    ranking = pd.read_parquet(seg_run / "ranking.parquet")
    noise = ranking[(ranking["test"] == "gaussian_noise")].iloc[0]
    artifacts = by_name["artifacts"]
    assert "gaussian_noise" in artifacts.probes
    assert artifacts.status == ("breaks" if ranking[ranking["test"].isin(
        ["gaussian_noise", "gaussian_blur"])]["significant"].any() else "measured")
    assert artifacts.effect <= noise["effect"] + 1e-12  # the worst artifact is reported
    # annotation variability: Dice of GT vs GT moved by 1 px, recomputed from the masks
    index = pd.read_parquet(seg_run / "predictions" / "index.parquet")
    assert len(index) == 24
    ev = pd.read_parquet(seg_run / "evidence.parquet")
    erode = ev[ev["feature"] == "gt_dice_erode1"]["value"].mean()
    assert f"{erode:.3f}" in by_name["annotation variability"].finding


def test_label_noise_lists_cleanlab_candidates(cls_run: Path, tmp_path: Path) -> None:
    """The entry reads label_issues.parquet (cleanlab); without it (an older run directory)
    it falls back to the confident-disagreement rule."""
    run = tmp_path / "run"
    shutil.copytree(cls_run, run)
    clean = pd.read_parquet(run / "predictions" / "clean.parquet")
    clean.loc[clean.index[:2], ["prob", "label"]] = [0.99, 0]  # confident, labelled negative
    clean.loc[clean.index[2], ["prob", "label"]] = [0.01, 1]
    flagged = ((clean["label"] == 0) & (clean["prob"] >= 0.95)) | \
        ((clean["label"] == 1) & (clean["prob"] <= 0.05))
    clean.to_parquet(run / "predictions" / "clean.parquet")
    analyse(run, progress=False)
    issues = pd.read_parquet(run / "label_issues.parquet")
    entry = next(e for e in build_taxonomy(RunTables(run)) if e.entry == "label noise")
    assert entry.effect == float(issues["issue"].sum())
    first = issues.sort_values("rank").iloc[0]
    assert "cleanlab" in entry.finding and f"{first['id']}/{first['target']}" in entry.finding
    (run / "label_issues.parquet").unlink()
    entry = next(e for e in build_taxonomy(RunTables(run)) if e.entry == "label noise")
    assert entry.effect == float(flagged.sum()) and entry.effect >= 3


def test_checks_pass_and_fail_by_their_limit(seg_run: Path) -> None:
    t = RunTables(seg_run)
    loose = evaluate_checks(t, [CheckSpec("dice", 10.0, 2)])
    strict = evaluate_checks(t, [CheckSpec("dice", -10.0, 2)])
    assert loose and all(r["verdict"] == "pass" for r in loose)
    assert all(r["verdict"] == "fail" for r in strict)
    m = t.metrics
    row = m[(m["condition"] == "gaussian_noise@2") & (m["metric"] == "dice")
            & (m["slice"] == "all")].iloc[0]
    got = next(r for r in loose if r["condition"] == "gaussian_noise@2")
    assert got["drop"] == pytest.approx(-row["delta_vs_clean"])
    hd = evaluate_checks(t, [CheckSpec("hd95", 0.0, 2)])  # lower is better: drop = +Δ
    hd_row = m[(m["condition"] == "gaussian_noise@2") & (m["metric"] == "hd95")
               & (m["slice"] == "all")].iloc[0]
    got = next(r for r in hd if r["condition"] == "gaussian_noise@2")
    assert got["drop"] == pytest.approx(hd_row["delta_vs_clean"])
    with pytest.raises(MedfailInputError, match="max_drop"):
        SuiteConfig(checks=[{"metric": "dice"}])


def test_checklist_numbers_come_from_the_run(seg_run: Path) -> None:
    t = RunTables(seg_run)
    c = build_checklist(t)
    conf = pd.read_parquet(seg_run / "predictions" / "clean.confidence.parquet")
    mc = conf[conf["signal"] == "mask_confidence"]["value"].to_numpy()
    assert c["deferral_threshold"] == pytest.approx(np.quantile(mc, 0.2))
    assert c["drift"]["clean_mean"] == pytest.approx(mc.mean())
    assert dict(c["data"])["image size (px)"] == "32–32 × 32–32"
    breaking = set(t.breaking["test"])
    assert {m["condition"].split("@")[0] for m in c["monitors"]} == breaking


def test_case_studies_are_confidently_wrong_and_distinct(seg_run: Path, cls_run: Path) -> None:
    for run in (seg_run, cls_run):
        cases = json.loads((run / "cases" / "cases.json").read_text())
        assert cases == select_cases(run)
        assert len({c["id"] for c in cases}) == len(cases)
        causes = [c["cause"] for c in cases if c["condition"] != "clean"]
        assert len(set(causes)) == len(causes)
        for k, c in enumerate(cases):
            assert c["cause"] == ("slice" if c["condition"] == "clean"
                                  else cause_of(c["test"], c["family"]).name)
            arrays = np.load(run / "cases" / f"case_{k}.npz")
            assert arrays["image"].shape == arrays["clean"].shape
    seg_case = json.loads((seg_run / "cases" / "cases.json").read_text())[0]
    ps = pd.read_parquet(seg_run / "per_sample.parquet")
    dice = ps[(ps["metric"] == "dice") & (ps["id"] == seg_case["id"])].set_index("condition")
    assert seg_case["value"] == pytest.approx(dice.loc[seg_case["condition"], "value"])


def test_quality_features_measure_noise_and_blur() -> None:
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[:128, :128]
    base = 0.5 + 0.3 * ((yy - 64) ** 2 + (xx - 64) ** 2 < 30**2)
    noisy = base + rng.normal(0, 0.05, base.shape)
    f = quality_features(noisy[None], (0.0, 1.0))
    assert f["noise_sigma"] == pytest.approx(0.05, rel=0.15)  # Immerkær's estimate
    assert f["contrast"] == pytest.approx(noisy.std())
    blurred = quality_features(ndimage.gaussian_filter(noisy, 2)[None], (0.0, 1.0))
    assert blurred["sharpness"] < f["sharpness"] / 10
    rows = []
    for i in range(50):
        clean = base + rng.normal(0, 0.02, base.shape)
        for cond, img in (("clean", clean), ("noise@2", clean + rng.normal(0, 0.1, base.shape))):
            rows += [{"id": i, "condition": cond, "feature": k, "value": v}
                     for k, v in quality_features(img[None], (0.0, 1.0)).items()]
    mon = best_monitor(pd.DataFrame(rows), "noise@2")
    assert mon is not None and mon.direction == ">" and mon.detection == 1.0
    assert mon.false_alarm <= 0.02


def _chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.mark.skipif(_chromium() is None, reason="Debian's chromium is not installed (make test "
                    "installs it where it can: apt-get install chromium)")
def test_report_opens_in_a_real_browser(seg_run: Path, tmp_path: Path) -> None:
    """Headless Chromium: no console errors, every image decoded, a screenshot taken."""
    probe = tmp_path / "report.html"
    html = (seg_run / "report.html").read_text()
    check = ("<script>window.addEventListener('load', () => { const imgs = [...document.images];"
             " const bad = imgs.filter(i => !(i.complete && i.naturalWidth > 0)).length;"
             " document.body.setAttribute('data-images', imgs.length + '/' + bad); });</script>")
    probe.write_text(html.replace("</body>", check + "</body>"))
    base = [_chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
            "--user-data-dir=" + str(tmp_path / "profile"), "--virtual-time-budget=10000"]
    dom = subprocess.run([*base, "--enable-logging=stderr", "--v=0", "--dump-dom",
                          probe.as_uri()], capture_output=True, text=True, timeout=120)
    assert dom.returncode == 0, dom.stderr[-2000:]
    found = re.search(r'data-images="(\d+)/(\d+)"', dom.stdout)
    assert found, "the page did not finish loading"
    n_images, n_broken = int(found.group(1)), int(found.group(2))
    assert n_images == len(list((seg_run / "figures").glob("*.png"))) and n_broken == 0
    console = [ln for ln in dom.stderr.splitlines() if "CONSOLE" in ln or "Uncaught" in ln]
    assert not console, console
    shot = tmp_path / "report.png"
    subprocess.run([*base, "--window-size=1280,2000", f"--screenshot={shot}",
                    (seg_run / "report.html").as_uri()], capture_output=True, timeout=120,
                   check=True)
    assert shot.exists() and shot.stat().st_size > 10_000
