"""explorer.html: one row per scored image × condition, self-contained, small at 10,000 rows, and
working in headless Chromium (filter, sort, open a detail, screenshot)."""

from __future__ import annotations

import json
import math
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from medfail.data.datasets import open_dataset
from medfail.engine.runner import run_suite
from medfail.engine.suite import SuiteConfig
from medfail.report.explorer import N_CLEAN, N_WORST, explorer_rows, render_html
from tests.conftest import write_png_folder
from tests.test_engine import brightness_classifier, threshold_segmenter

CONFIG = {"tests": ["jpeg", "contrast"], "severities": [1, 2], "uncertainty": [],
          "n_bootstrap": 20}
#: the stated bound for a 10,000-row page with 10 metric columns (no thumbnails)
MAX_BYTES_10K = 4_000_000


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("explorer")
    out = {}
    for task, model in (("segmentation", threshold_segmenter()),
                        ("classification", brightness_classifier())):
        data = write_png_folder(root / task / "data", task, n=10)
        out[task] = run_suite(model, open_dataset(data, task), root / task / "run",
                              SuiteConfig(**CONFIG), progress=False)
    return out


def _payload(html: str) -> dict[str, Any]:
    found = re.search(r'<script id="data" type="application/json">(.*?)</script>', html, re.S)
    assert found, "no embedded JSON"
    return json.loads(found.group(1).replace("<\\/", "</"))


@pytest.mark.parametrize("task", ["segmentation", "classification"])
def test_explorer_has_one_row_per_image_and_condition(runs: dict[str, Path], task: str) -> None:
    run = runs[task]
    page = run / "explorer.html"
    assert page.exists()
    manifest = json.loads((run / ".medfail" / "manifest.json").read_text())
    assert "explorer.html" in manifest["files"]
    assert 'href="explorer.html"' in (run / "report.html").read_text()
    html = page.read_text(encoding="utf-8")
    assert not re.search(r"(src|href)\s*=\s*[\"']?https?://", html), "a network resource"
    assert "http://" not in html and "https://" not in html
    data = _payload(html)
    cols, rows = data["columns"], data["rows"]
    ps = pd.read_parquet(run / "per_sample.parquet")
    keys = ps[["id", "condition"]].drop_duplicates()
    got = [(r[cols.index("id")], r[cols.index("condition")]) for r in rows]
    assert len(got) == len(set(got)) == len(keys)
    assert set(got) == set(map(tuple, keys.to_numpy().tolist()))
    several = ps["target"].nunique() > 1
    checked = 0
    for rec in ps.itertuples():
        col = f"{rec.target}:{rec.metric}" if several else rec.metric
        row = rows[got.index((rec.id, rec.condition))]
        value = row[cols.index(col)]
        if math.isfinite(rec.value):
            assert value == rec.value, (rec.id, rec.condition, col)
        else:
            assert value is None
        checked += 1
    assert checked == len(ps)
    conf = [r[cols.index("confidence")] for r in rows]
    assert all(c is None or 0.0 <= c <= 1.0 for c in conf) and any(c is not None for c in conf)
    if task == "segmentation":
        assert 0 < len(data["thumbnails"]) <= min(len(rows), N_WORST + N_CLEAN)
        first = next(iter(data["thumbnails"].values()))
        assert [n for n, _ in first][-3:] == ["prediction", "ground truth",
                                               "error (FP red, FN blue)"]
        assert all(uri.startswith("data:image/png;base64,") for _, uri in first)
        assert "not stored in the run directory" in data["why"]
    else:
        assert data["thumbnails"] == {}
        assert any(c.endswith("correct") for c in cols) and any(c.endswith("prob") for c in cols)
        assert "not stored in the run directory" in data["why"]


def _synthetic(n_rows: int = 10_000, n_metrics: int = 10) -> dict[str, Any]:
    rng = np.random.default_rng(0)
    conditions = ["clean"] + [f"t{k}@{s}" for k in range(4) for s in (1, 2, 3)]
    n_ids = math.ceil(n_rows / len(conditions))
    keys = [(f"img{i:05d}", c) for i in range(n_ids) for c in conditions][:n_rows]
    frames = []
    for m in range(n_metrics):
        frames.append(pd.DataFrame({
            "id": [k[0] for k in keys], "condition": [k[1] for k in keys],
            "test": [k[1].split("@")[0] for k in keys], "family": "corruption",
            "severity": [int(k[1].split("@")[1]) if "@" in k[1] else 0 for k in keys],
            "target": "lesion", "metric": f"m{m}", "value": rng.random(len(keys))}))
    ps = pd.concat(frames, ignore_index=True)
    slices = pd.DataFrame({"id": [f"img{i:05d}" for i in range(n_ids)],
                           "slice": [f"site={i % 3}" for i in range(n_ids)]})
    extra = pd.DataFrame({"id": [k[0] for k in keys], "condition": [k[1] for k in keys],
                          "confidence": rng.random(len(keys))})
    data = explorer_rows(ps, slices, extra)
    return {**data, "task": "segmentation", "primary": "m0", "worse_high": False,
            "thumbnails": {}, "rule": "synthetic: no thumbnails", "why": "synthetic rows",
            "n_thumb": 0}


def test_ten_thousand_rows_stay_small_and_parse() -> None:
    data = _synthetic()
    html = render_html(data)
    assert len(html.encode("utf-8")) < MAX_BYTES_10K
    back = _payload(html)
    assert len(back["rows"]) == 10_000 and back["columns"] == data["columns"]
    assert back["rows"][1234] == data["rows"][1234]


def _chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.mark.skipif(_chromium() is None, reason="Debian's chromium is not installed (make test "
                    "installs it where it can: apt-get install chromium)")
def test_explorer_in_headless_chromium(runs: dict[str, Path], tmp_path: Path) -> None:
    """Load, filter by condition, sort by dice descending, open the first row; the
    10,000-row page filtered by slice and sorted, one page rendered; keyboard navigation; a
    non-blank screenshot."""
    run = runs["segmentation"]
    base = [_chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
            "--user-data-dir=" + str(tmp_path / "profile"), "--virtual-time-budget=10000"]

    def dom(url: str) -> tuple[str, str]:
        done = subprocess.run([*base, "--enable-logging=stderr", "--v=0", "--dump-dom", url],
                              capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, done.stderr[-2000:]
        return done.stdout, done.stderr

    data = _payload((run / "explorer.html").read_text(encoding="utf-8"))
    cols, rows = data["columns"], data["rows"]
    cond = next(r[1] for r in rows if r[1] != "clean")
    mine = sorted((i for i, r in enumerate(rows) if r[1] == cond),
                  key=lambda i: (-rows[i][cols.index("dice")], i))
    url = (run / "explorer.html").as_uri() + f"?condition={cond}&sort=-dice&open=0"
    out, err = dom(url)
    body = re.search(r"<body([^>]*)>", out)
    assert body, "no body"
    attrs = dict(re.findall(r'data-(\w+)="([^"]*)"', body.group(1)))
    assert attrs["ready"] == "1", "the script did not finish"
    assert int(attrs["count"]) == len(mine)
    assert [int(x) for x in attrs["order"].split(",")] == mine[:20]
    first = rows[mine[0]]
    assert attrs["open"] == f"{first[0]}|{cond}"
    detail = out.split('id="detailbody"', 1)[1]
    assert f"{first[0]} · {cond}" in detail
    assert ("data:image/png;base64," in detail) == (str(mine[0]) in data["thumbnails"])
    if str(mine[0]) not in data["thumbnails"]:
        assert "no thumbnail" in detail
    console = [ln for ln in err.splitlines() if "CONSOLE" in ln or "Uncaught" in ln]
    assert not console, console

    big = tmp_path / "big.html"
    synthetic = _synthetic()
    big.write_text(render_html(synthetic), encoding="utf-8")
    out, err = dom(big.as_uri() + "?slice=site=1&sort=m3")
    attrs = dict(re.findall(r'data-(\w+)="([^"]*)"', re.search(r"<body([^>]*)>", out).group(1)))
    c = synthetic["columns"]
    want = sorted((i for i, r in enumerate(synthetic["rows"])
                   if "site=1" in r[c.index("slices")].split(" ")),
                  key=lambda i: (synthetic["rows"][i][c.index("m3")], i))
    assert attrs["ready"] == "1" and int(attrs["count"]) == len(want)
    assert [int(x) for x in attrs["order"].split(",")] == want[:20]
    assert out.count('<tr data-v="') == 100  # one page rendered, not 10,000 rows

    # keyboard: ↓ ↓ Enter opens the second row, → shows page 2, Esc closes
    keys = ("<script>window.addEventListener('load', () => { const b = document.body;"
            " const k = key => document.dispatchEvent(new KeyboardEvent('keydown', {key}));"
            " k('ArrowDown'); k('ArrowDown'); k('Enter'); b.dataset.k1 = b.dataset.open;"
            " k('ArrowRight'); b.dataset.k2 = document.querySelector('#body tr').dataset.row;"
            " k('Escape'); b.dataset.k3 = b.dataset.open + '/' +"
            " document.getElementById('detail').className; });</script>")
    probe = tmp_path / "keys.html"
    probe.write_text(big.read_text(encoding="utf-8").replace("</body>", keys + "</body>"),
                     encoding="utf-8")
    out, err = dom(probe.as_uri())
    attrs = dict(re.findall(r'data-(\w+)="([^"]*)"', re.search(r"<body([^>]*)>", out).group(1)))
    second = synthetic["rows"][1]
    assert attrs["k1"] == f"{second[0]}|{second[1]}"
    assert attrs["k2"] == "100"
    assert attrs["k3"] == "/"
    console = [ln for ln in err.splitlines() if "CONSOLE" in ln or "Uncaught" in ln]
    assert not console, console

    shot = tmp_path / "explorer.png"
    subprocess.run([*base, "--window-size=1280,900", f"--screenshot={shot}", url],
                   capture_output=True, timeout=120, check=True)
    png = shot.read_bytes()
    assert png.startswith(b"\x89PNG") and len(png) > 10_000
    from PIL import Image

    pixels = np.asarray(Image.open(shot).convert("L"))
    assert pixels.std() > 5, "blank screenshot"


def test_thumbnails_colour_errors_and_pick_the_volume_slice_with_ground_truth() -> None:
    """Error overlay: TP white, FP red, FN blue; a volume shows the slice with the most ground
    truth; large images are scaled down to about THUMB_PX."""
    from medfail.report.explorer import THUMB_PX, _thumbs

    gt = np.zeros((5, 8, 8), dtype=np.uint8)
    gt[3, 2:4, 2:4] = 1  # TP at (2:3, 2:3), FN at row 3
    pred = np.zeros((1, 5, 8, 8), dtype=np.float16)
    pred[0, 3, 2, 2:4] = 0.9
    pred[0, 3, 6, 6] = 0.8  # FP
    err = _thumbs(pred, gt)["error (FP red, FN blue)"]
    f = err.shape[0] // 8
    px = {name: tuple(err[r * f, c * f]) for name, (r, c) in
          {"tp": (2, 2), "fn": (3, 2), "fp": (6, 6), "bg": (0, 0)}.items()}
    assert px["tp"][0] > 200 and px["tp"][2] > 200
    assert px["fp"][0] > 200 > px["fp"][2]
    assert px["fn"][2] > 200 > px["fn"][0]
    assert px["bg"] == (0, 0, 0)
    big = _thumbs(np.zeros((1, 600, 400), np.float16), np.zeros((600, 400), np.uint8))
    assert all(max(v.shape[:2]) <= THUMB_PX for v in big.values())
