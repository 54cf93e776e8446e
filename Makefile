# Two entry points, each doing its own set-up on a fresh machine:
#   make demo   set up, build, run the main job: `ebsparse demo` (Early-Bird and TA-EB tickets on the
#               embedded digits data, ~8 min on 2 cores; outputs in runs/demo)
#   make test   set up, build (pip and CMake), run the test suite
#   make bench  set up, build, run every speed-up benchmark (pytest bench/ --benchmark)
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip

.PHONY: setup build cmake test demo bench clean

$(VENV)/.deps: requirements.txt requirements-test.txt
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q -r requirements.txt -r requirements-test.txt
	touch $@

setup: $(VENV)/.deps

build: setup
	@echo "build: start $$(date -u +%T)"
	$(PIP) install -q --no-build-isolation --no-deps -e .

cmake: setup
	@echo "cmake: start $$(date -u +%T)"
	PYTHON=$(abspath $(PY)) bash tools/cmake_build.sh

test: build cmake
	@echo "tests: start $$(date -u +%T)"
	$(PY) -m pytest tests/ -q

bench: build
	$(PIP) install -q pybind11==3.1.0
	$(PIP) install -q --no-build-isolation sparseprop==0.1.14 || echo "sparseprop failed to install; its rows are skipped"
	$(PY) -m pytest bench/ --benchmark -q

demo: build
	$(PY) -m ebsparse demo

clean:
	rm -rf build build-cmake ebsparse/_C*.so *.egg-info
