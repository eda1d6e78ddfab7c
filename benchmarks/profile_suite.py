"""cProfile of one demo-like ``run_suite`` (segmentation), for docs/performance.md.

Uses ``runs/demo`` (run ``make demo`` first): the test split, the trained segmenter, the
calibration and shift splits and the demo's suite (every image test, TTA, MC dropout with 4
passes, mitigation, HTML report). Prints the top entries by cumulative time and writes
``benchmarks/profile_suite.txt``.

    python -m benchmarks.profile_suite [--top 40]
"""

from __future__ import annotations

import argparse
import cProfile
import io
import pstats
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DEMO = ROOT / "runs" / "demo"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--top", type=int, default=40)
    args = parser.parse_args()

    from medfail.data.datasets import open_dataset
    from medfail.demo import demo_suite
    from medfail.engine.runner import run_suite
    from medfail.engine.suite import SuiteConfig
    from medfail.models.loading import describe_model, load_model

    model = DEMO / "models" / "segmenter.pt"
    if not model.exists():
        raise SystemExit(f"{model} not found: run `make demo` first")
    data = DEMO / "data"
    adapter = load_model(model, "segmentation")
    datasets = {k: open_dataset(data / k, "segmentation") for k in ("test", "calibration", "shift")}
    config = demo_suite("segmentation", SuiteConfig())
    with tempfile.TemporaryDirectory(prefix="medfail-profile-") as tmp:
        profile = cProfile.Profile()
        t0 = time.perf_counter()
        profile.enable()
        run_suite(adapter, datasets["test"], Path(tmp) / "run", config,
                  model_info=describe_model(model), progress=False,
                  calibration=datasets["calibration"], shift=datasets["shift"])
        profile.disable()
        wall = time.perf_counter() - t0
    buf = io.StringIO()
    pstats.Stats(profile, stream=buf).sort_stats("cumulative").print_stats(args.top)
    import sysconfig

    text = f"demo-like segmentation run_suite: {wall:.1f} s wall-clock under cProfile\n" + \
        buf.getvalue()
    for prefix in (sysconfig.get_paths()["purelib"] + "/", str(ROOT) + "/"):
        text = text.replace(prefix, "")
    (ROOT / "benchmarks" / "profile_suite.txt").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
