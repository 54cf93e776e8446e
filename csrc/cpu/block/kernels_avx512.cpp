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
constexpr int kAcc = 24;  // row-major kernels: accumulators per register tile (RT * NV)

// o[c] += the lanes of s[c] summed, c < 4: halves added, then a transposing hadd tree.
static inline void add_sums4(const __m512* s, float* o) {
  __m256 h[4];
#pragma GCC unroll 4
  for (int c = 0; c < 4; ++c) h[c] = _mm256_add_ps(_mm512_castps512_ps256(s[c]), _mm512_extractf32x8_ps(s[c], 1));
  const __m256 q = _mm256_hadd_ps(_mm256_hadd_ps(h[0], h[1]), _mm256_hadd_ps(h[2], h[3]));
  const __m128 r = _mm_add_ps(_mm256_castps256_ps128(q), _mm256_extractf128_ps(q, 1));
  _mm_storeu_ps(o, _mm_add_ps(_mm_loadu_ps(o), r));
}
#include "cpu/block/micro.h"
}  // namespace avx512

static_assert(avx512::kVecs * avx512::Vec::W == kPtAvx512, "the tile width must match micro.h");

void spmm_f32_avx512(const float* vals, const int32_t* idx, int64_t b0, int64_t b1, int br, int bc,
                     const float* panel, const float* const* rows,
                     float* tile, int64_t ld, int64_t width) {
  if (rows) return avx512::spmm(vals, idx, b0, b1, br, bc, avx512::TableRows{rows}, tile, ld, width);
  avx512::spmm(vals, idx, b0, b1, br, bc, avx512::StridedRows{panel, ld}, tile, ld, width);
}

void sddmm_f32_avx512(const float* dtile, const int32_t* idx, int64_t b0, int64_t b1, int br, int bc,
                      const float* panel, const float* const* rows, int64_t ld, int64_t n, const Images& images,
                      float* acc) {
  if (rows) return avx512::sddmm(dtile, idx, b0, b1, br, bc, avx512::TableRows{rows}, ld, n, images, acc);
  avx512::sddmm(dtile, idx, b0, b1, br, bc, avx512::StridedRows{panel, ld}, ld, n, images, acc);
}

void rspmm_f32_avx512(const float* at, int64_t ldt, int64_t rows, const float* packed, const int32_t* idx, int64_t b0,
                      int64_t b1, int kb, int ow, const float* init, float* out, int64_t ldo, bool stream) {
  avx512::rspmm(at, ldt, rows, packed, idx, b0, b1, kb, ow, init, out, ldo, stream);
}

void rsddmm_f32_avx512(const float* a, int64_t lda, int kr, const float* b, int64_t ldb, int64_t rows, int ow,
                       float* out) {
  avx512::rsddmm(a, lda, kr, b, ldb, rows, ow, out);
}

}  // namespace ebsparse::block_detail

#pragma GCC pop_options
