// The block micro-kernels (kernels.h) for AVX2+FMA, the library's baseline.
#include <immintrin.h>

#include <cstdint>

#include "cpu/block/kernels.h"
#include "cpu/simd_vec.h"

namespace ebsparse::block_detail {

namespace avx2 {
using Vec = simd::Avx2;
constexpr int kRows = 2;  // 2 rows x 4 vectors: 8 accumulators within AVX2's 16 registers
#include "cpu/block/micro.h"
}  // namespace avx2

static_assert(avx2::kVecs * avx2::Vec::W == kPtAvx2, "the tile width must match micro.h");

void spmm_f32_avx2(const float* vals, const int32_t* idx, int64_t b0, int64_t b1, int br, int bc,
                   const float* panel, float* tile, int64_t ld) {
  avx2::spmm(vals, idx, b0, b1, br, bc, panel, tile, ld);
}

void sddmm_f32_avx2(const float* dtile, const int32_t* idx, int64_t b0, int64_t b1, int br, int bc,
                    const float* panel, int64_t ld, int64_t n, float* acc) {
  avx2::sddmm(dtile, idx, b0, b1, br, bc, panel, ld, n, acc);
}

}  // namespace ebsparse::block_detail
