#!/usr/bin/env bash
# One command for the day a GPU is lent: on a machine with an NVIDIA GPU, run every op test on CUDA
# and the short benchmark (2:4 and the sparse kernels vs dense bf16 cuBLAS/cuDNN, and cuSPARSE CSR
# through cupyx when cupy is installed), writing a markdown table. Budget: under 8 minutes.
#
#   tools/gpu_check.sh [OUT_DIR]        (default: bench/results)
#
# Writes OUT_DIR/gpu_check.md (the benchmark), OUT_DIR/gpu_tests.txt (the test log) and
# OUT_DIR/roofline.md (the model to compare with). Exits non-zero if a test failed or no GPU is seen.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-bench/results}
mkdir -p "$OUT"
PY=${PYTHON:-python}

if ! "$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)"; then
  echo "gpu_check: torch sees no CUDA GPU" >&2
  exit 2
fi
"$PY" -c "import torch; print('GPU:', torch.cuda.get_device_name(), '| torch', torch.__version__)"

# 1. The op tests on CUDA (tests/ops take EBSPARSE_TEST_DEVICE; the Triton tests use CUDA when
#    present), the semi-structured host logic and the AOT checks; few hypothesis examples.
EBSPARSE_TEST_DEVICE=cuda HYPOTHESIS_PROFILE=default timeout 300 \
  "$PY" -m pytest tests/ops tests/triton tests/backends tests/formats/test_transposable.py \
  -q -x -p no:randomly -p no:cacheprovider 2>&1 | tee "$OUT/gpu_tests.txt" | tail -n 25
tests_rc=${PIPESTATUS[0]}

# 2. The benchmark table and the roofline model next to it.
timeout 150 "$PY" -m bench.gpu_check "$OUT/gpu_check.md"
bench_rc=$?
EBSPARSE_BENCH_RESULTS="$OUT" "$PY" -m bench.roofline > /dev/null

echo "gpu_check: tests rc=$tests_rc, benchmark rc=$bench_rc; tables in $OUT/gpu_check.md and $OUT/roofline.md"
[ "$tests_rc" -eq 0 ] && [ "$bench_rc" -eq 0 ]
