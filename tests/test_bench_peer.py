"""The peer script of ``peer_pipeline_speedup`` computes what ``medfail run`` reports.

Tiny config (untrained seeded models, so a fresh checkout runs it): the peer with medfail's
corruptions must reproduce every ``slice == "all"`` row of ``metrics.parquet`` (value and CI)
within the benchmark's tolerance, for segmentation and classification.
"""

from __future__ import annotations

import pytest

pytest.importorskip("monai.metrics")
pytest.importorskip("sklearn.metrics")

from benchmarks import bench_peer, peer_suite
from benchmarks.common import bench_model

TESTS = ("gaussian_noise", "jpeg")
N_BOOTSTRAP = 20
#: images per task; classification: enough that no resample lacks a class (medfail keeps such
#: undefined resamples at the unfavourable end of the CI, the peer's nanpercentile drops them)
N = {"segmentation": 8, "classification": 24}
#: small networks keep the test short (the metrics do not depend on the architecture; the
#: case studies' occlusion maps of a DenseNet121 would take most of the time)
ARCH = {"segmentation": "unet", "classification": "resnet18"}


@pytest.fixture(scope="module", params=["segmentation", "classification"])
def pair(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory):
    task = request.param
    tmp = tmp_path_factory.mktemp(task)
    model, _ = bench_model(tmp, task, use_demo=False, arch=ARCH[task], seed=bench_peer.SEED)
    data = bench_peer.make_data(tmp, task, N[task])
    tables, _, _ = bench_peer.run_medfail(model, task, data, tmp / "run", TESTS, N_BOOTSTRAP,
                                          render=False)
    rows, _ = bench_peer.run_peer(model, task, data, TESTS, N_BOOTSTRAP,
                                  peer_suite.medfail_corruptor(bench_peer.SEED))
    return task, rows, tables


def test_peer_rows_equal_medfail_metrics(pair) -> None:
    task, rows, tables = pair
    result = bench_peer.compare(rows, tables, task)
    conditions = ["clean", *(peer_suite._name(t) for t in TESTS)]
    assert result["conditions"] == sorted(conditions)
    assert result["rows"] == len(rows)
    if task == "segmentation":
        assert len(rows) == len(peer_suite.SEGMENTATION) * len(conditions)


def test_a_diverging_metric_is_caught(pair) -> None:
    task, rows, tables = pair
    atol, rtol = bench_peer.TOLERANCE[task]
    bad = [dict(r) for r in rows]
    i = next(k for k, r in enumerate(bad) if r["metric"] != "brier" and r["value"] == r["value"])
    bad[i]["value"] += 10 * (atol + rtol * abs(bad[i]["value"])) + 1e-6
    with pytest.raises(AssertionError, match="differ"):
        bench_peer.compare(bad, tables, task)
