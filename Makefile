# `make demo` and `make test` each create .venv when missing and install what they need.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed-$(shell cat pyproject.toml | cksum | cut -d' ' -f1)

.PHONY: demo test lint typecheck install clean

install: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q -e '.[build,onnxruntime,dev]'
	# tensorrt-stubs declares a dependency on the real tensorrt, which cannot install without a GPU.
	$(PY) -m pip install -q --no-deps tensorrt-stubs
	rm -f $(VENV)/.installed-*
	touch $@

demo: $(STAMP)
	$(PY) -m edgekit demo --out build/demo

# Runtime side (DESIGN.md section 2): must stay valid Python 3.8 for JetPack 5.
RUNTIME := edgekit/__init__.py edgekit/__main__.py edgekit/cli.py edgekit/errors.py edgekit/card.py \
	edgekit/artifacts.py edgekit/preprocess.py edgekit/metrics.py edgekit/manifest.py edgekit/engine.py \
	edgekit/calibration.py edgekit/onnx_io.py edgekit/evaluate.py edgekit/stats.py edgekit/profile.py edgekit/power.py \
	edgekit/tegra.py edgekit/doctor.py edgekit/backends edgekit/tasks edgekit/data edgekit/stream

lint: $(STAMP)
	$(VENV)/bin/ruff check edgekit tests benchmarks
	$(VENV)/bin/vermin --no-tips --violations -t=3.8- $(RUNTIME)
	$(VENV)/bin/shellcheck jetson/*.sh benchmarks/*.sh

# The TensorRT backend is written from the documented API: check it against tensorrt-stubs (10.x API).
typecheck: $(STAMP)
	$(VENV)/bin/pyright --pythonpath $(PY) edgekit/backends edgekit/engine.py edgekit/build.py \
		edgekit/manifest.py edgekit/calibration.py

test: lint typecheck
	$(PY) -m pytest -q

clean:
	rm -rf build runs .pytest_cache
