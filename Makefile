# The two commands: `make demo` and `make test`. Both create .venv when missing.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.medfail-installed

.PHONY: demo test lint install clean-demo

$(STAMP): pyproject.toml requirements.txt requirements-dev.txt
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	# torch first, pinned: a looser spec would pull a multi-GB CUDA build.
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -r requirements-dev.txt
	$(PY) -m pip install -q --no-deps -e .
	@touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/medfail demo --out runs/demo --task all

# The browser test needs Debian's chromium: installed here when root, else that test is skipped.
test: $(STAMP)
	@command -v chromium >/dev/null 2>&1 || { [ "$$(id -u)" = 0 ] && \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium \
	  >/dev/null; } || echo "chromium not installed: the browser test will be skipped"
	@[ -f /usr/share/mricron/templates/ch2bet.nii.gz ] || { [ "$$(id -u)" = 0 ] && \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq mricron-data \
	  >/dev/null; } || echo "mricron-data not installed: the HD-BET test will be skipped"
	$(PY) -m pytest -q -n 2 --dist loadfile --doctest-modules tests src/medfail/metrics

lint: $(STAMP)
	$(VENV)/bin/ruff check .

clean-demo:
	rm -rf runs/demo

# `make bench`: benchmark-only peers (imagecorruptions, albumentations, ...) go into .venv here,
# never into requirements*.txt; --no-deps because the pins are the full closure (see the file).
BENCH_STAMP := $(VENV)/.medfail-bench-installed
.PHONY: bench

$(BENCH_STAMP): $(STAMP) requirements-bench.txt
	$(PY) -m pip install -q --no-deps -r requirements-bench.txt
	@touch $(BENCH_STAMP)

bench: $(BENCH_STAMP)
	$(PY) -m benchmarks.run_all
