#!/usr/bin/env bash
# Configure and build the CMake build of ebsparse (CMakeLists.txt) into build-cmake/; used by CI.
#
#   tools/cmake_build.sh                     # EBSPARSE_CUDA from the environment, else auto
#   tools/cmake_build.sh -DEBSPARSE_CUDA=0   # extra arguments go to the configure step
#
# Environment: PYTHON, the interpreter whose torch is built against (default: the repository's
# .venv if present, else python3); BUILD_DIR (default: build-cmake); JOBS (default: 2).
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
if [[ -z "${PYTHON:-}" ]]; then
  if [[ -x "$root/.venv/bin/python" ]]; then PYTHON="$root/.venv/bin/python"; else PYTHON=python3; fi
fi
build_dir=${BUILD_DIR:-$root/build-cmake}
generator=()
if [[ ! -f "$build_dir/CMakeCache.txt" ]] && command -v ninja >/dev/null; then generator=(-G Ninja); fi

python_path=$(command -v "$PYTHON")
case "$python_path" in /*) ;; *) python_path="$PWD/$python_path" ;; esac  # CMake needs it absolute

cmake -S "$root" -B "$build_dir" "${generator[@]}" -DPython_EXECUTABLE="$python_path" "$@"
cmake --build "$build_dir" -j "${JOBS:-2}"
echo "built: $(find "$build_dir" -maxdepth 1 -name 'libebsparse*.so' -print -quit)"
