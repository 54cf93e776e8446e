// The block micro-kernels (kernels.h) for AVX-512, reached only when cpu_capability() chose it.
// The includes come first, built for the AVX2 baseline like the rest of the library; the pragma then
// raises the target of everything defined below (helpers have internal linkage).
#include <immintrin.h>

#include <cstdint>

#include "cpu/block/kernels.h"
#include "cpu/simd_vec.h"

#pragma GCC push_options
#pragma GCC target("avx512f,avx512vl,avx512bw,avx512dq,fma")

namespace ebsparse::block_detail {

namespace avx512 {
using Vec = simd::Avx512;
constexpr int kRows = 4;  // 4 rows x 4 vectors: 16 accumulators, 4 panel vectors, a broadcast
#include "cpu/block/micro.h"
}  // namespace avx512

static_assert(avx512::kVecs * avx512::Vec::W == kPtAvx512, "the tile width must match micro.h");

void spmm_f32_avx512(const float* vals, const int32_t* idx, int64_t b0, int64_t b1, int br, int bc,
                     const float* panel, float* tile, int64_t ld) {
  avx512::spmm(vals, idx, b0, b1, br, bc, panel, tile, ld);
}

void sddmm_f32_avx512(const float* dtile, const int32_t* idx, int64_t b0, int64_t b1, int br, int bc,
                      const float* panel, int64_t ld, int64_t n, float* acc) {
  avx512::sddmm(dtile, idx, b0, b1, br, bc, panel, ld, n, acc);
}

}  // namespace ebsparse::block_detail

#pragma GCC pop_options
