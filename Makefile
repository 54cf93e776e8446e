# Two entry points, each doing its own set-up on a fresh machine:
#   make demo   set up, build, run the main job: `ebsparse demo` (Early-Bird and TA-EB tickets on the
#               embedded digits data, about 10 min on 2 cores; outputs in runs/demo)
#   make test   set up, build (pip and CMake), run the test suite
#   make bench  set up, build, run every speed-up benchmark (pytest bench/ --benchmark)
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip

# The extension is rebuilt only when what it is built from changed since the last build (or the
# venv was remade): each build leaves a stamp in build/, newer than every source it read. The pip
# build's Python code is an editable install, so Python edits need no rebuild. A missing library
# (removed by hand) forces its build even where the stamp is newer.
EXT_SOURCES := $(shell find csrc kernels -type f) setup.py pyproject.toml tools/find_cuda.py
PIP_STAMP := build/.pip-build.stamp
CMAKE_STAMP := build-cmake/.cmake-build.stamp
ifeq ($(wildcard ebsparse/_C*.so),)
PIP_FORCE := FORCE
endif
ifeq ($(wildcard build-cmake/libebsparse*.so),)
CMAKE_FORCE := FORCE
endif

.PHONY: setup build cmake test demo bench clean FORCE

$(VENV)/.deps: requirements.txt requirements-test.txt
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q -r requirements.txt -r requirements-test.txt
	touch $@

setup: $(VENV)/.deps

build: $(PIP_STAMP)

$(PIP_STAMP): $(VENV)/.deps $(EXT_SOURCES) $(PIP_FORCE)
	@echo "build: start $$(date -u +%T)"
	$(PIP) install -q --no-build-isolation --no-deps -e .
	@mkdir -p $(@D) && touch $@

cmake: $(CMAKE_STAMP)

$(CMAKE_STAMP): $(VENV)/.deps $(EXT_SOURCES) CMakeLists.txt tools/cmake_build.sh $(CMAKE_FORCE)
	@echo "cmake: start $$(date -u +%T)"
	PYTHON=$(abspath $(PY)) BUILD_DIR=$(abspath build-cmake) bash tools/cmake_build.sh
	@touch $@

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
