# `make demo` and `make test` each create .venv when missing and install what they need.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed-$(shell cat pyproject.toml | cksum | cut -d' ' -f1)

.PHONY: demo test lint typecheck install clean

install: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[build,onnxruntime,dev]'
	# tensorrt-stubs declares a dependency on the real tensorrt, which cannot install without a GPU.
	$(PY) -m pip install -q --no-deps tensorrt-stubs
	rm -f $(VENV)/.installed-*
	touch $@

demo: $(STAMP)
	$(PY) -m edgekit demo --out build/demo

lint: $(STAMP)
	$(VENV)/bin/ruff check edgekit tests benchmarks
	$(VENV)/bin/vermin --no-tips --violations -t=3.8- edgekit/card.py edgekit/preprocess.py edgekit/errors.py \
		edgekit/artifacts.py edgekit/metrics.py edgekit/data edgekit/tasks edgekit/cli.py edgekit/__init__.py

test: lint
	$(PY) -m pytest -q

clean:
	rm -rf build runs .pytest_cache
