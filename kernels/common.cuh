// Helpers shared by the CUDA registrations in kernels/: argument checks that extend
// csrc/cpu/checks.h to the dtypes the CUDA kernels take, and launch-size arithmetic.
#pragma once
#include <ATen/ATen.h>
// c10/cuda only: ATen/cuda/CUDAContext.h pulls in cuBLAS/cuSPARSE headers, which a bare toolkit
// (the pip wheels ship them instead) may lack.
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>

#include <algorithm>

#include "cpu/checks.h"
#include "index.cuh"

namespace ebsparse::cuda {

// Threads per block of the element-wise and per-row kernels; a multiple of the warp size.
constexpr int kThreads = 256;
constexpr int kWarp = 32;
// gridDim.y and gridDim.z are limited to 65535; larger extents are covered by grid-stride loops.
constexpr int64_t kMaxGridYZ = 65535;
// gridDim.x is limited to 2^31 - 1.
constexpr int64_t kMaxGridX = 2147483647;

inline void check_cuda(const at::Tensor& t, const char* name) {
  TORCH_CHECK(t.is_cuda(), name, ": expected a CUDA tensor, got one on ", t.device());
}

// The sparse linear kernels accumulate in float (double for float64), so half and bfloat16
// inputs are natural here, unlike on the CPU.
inline void check_float_cuda(const at::Tensor& t, const char* name) {
  check_cuda(t, name);
  const auto s = t.scalar_type();
  TORCH_CHECK(s == at::kFloat || s == at::kDouble || s == at::kHalf || s == at::kBFloat16, name,
              ": expected float32, float64, float16 or bfloat16, got ", s);
}

inline int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

// A 1-D grid of kThreads-thread blocks covering n items (the kernels grid-stride past the cap).
inline dim3 grid_1d(int64_t n) { return dim3(static_cast<unsigned>(index::grid_tiles(n, kThreads, kMaxGridX))); }

}  // namespace ebsparse::cuda
