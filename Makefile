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

# Runtime side (DESIGN.md section 2): the folder edgekit/runtime plus the package's entry points, which
# must stay valid Python 3.8 for JetPack 5. The build side (edgekit/build) needs what PyTorch needs.
RUNTIME := edgekit/runtime edgekit/__init__.py edgekit/__main__.py edgekit/errors.py edgekit/cli

lint: $(STAMP)
	$(VENV)/bin/ruff check edgekit tests benchmarks
	$(VENV)/bin/vermin --no-tips --violations -t=3.8- $(RUNTIME)
	$(VENV)/bin/shellcheck jetson/*.sh benchmarks/*.sh

# The TensorRT backend is written from the documented API: check it against tensorrt-stubs (10.x API).
typecheck: $(STAMP)
	$(VENV)/bin/pyright --pythonpath $(PY) edgekit/runtime/backends edgekit/runtime/opening.py \
		edgekit/runtime/manifest.py edgekit/runtime/calibration.py edgekit/build/engine_build.py edgekit/runtime/serving

# Two workers on the 2-core CI machine: many tests wait on subprocesses, video files and an RTSP server.
# --dist loadfile keeps a file's tests (and its module fixtures: engines, real models) on one worker.
test: lint typecheck
	$(PY) -m pytest -q -n 2 --dist loadfile

clean:
	rm -rf build runs .pytest_cache
