// The block micro-kernels (kernels.h) for AVX2+FMA, the library's baseline.
#include <immintrin.h>

#include <cstdint>

#include "cpu/block/kernels.h"
#include "cpu/simd_vec.h"

namespace ebsparse::block_detail {

namespace avx2 {
using Vec = simd::Avx2;
constexpr int kRows = 2;  // 2 rows x 4 vectors: 8 accumulators within AVX2's 16 registers
constexpr int kAcc = 12;  // row-major kernels: accumulators per register tile (RT * NV)

// o[c] += the lanes of s[c] summed, c < 4: a transposing hadd tree.
static inline void add_sums4(const __m256* s, float* o) {
  const __m256 q = _mm256_hadd_ps(_mm256_hadd_ps(s[0], s[1]), _mm256_hadd_ps(s[2], s[3]));
  const __m128 r = _mm_add_ps(_mm256_castps256_ps128(q), _mm256_extractf128_ps(q, 1));
  _mm_storeu_ps(o, _mm_add_ps(_mm_loadu_ps(o), r));
}
#include "cpu/block/micro.h"
}  // namespace avx2

static_assert(avx2::kVecs * avx2::Vec::W == kPtAvx2, "the tile width must match micro.h");

void spmm_f32_avx2(const float* vals, const int32_t* idx, int64_t b0, int64_t b1, int br, int bc,
                   const float* panel, const float* const* rows,
                     float* tile, int64_t ld, int64_t width) {
  if (rows) return avx2::spmm(vals, idx, b0, b1, br, bc, avx2::TableRows{rows}, tile, ld, width);
  avx2::spmm(vals, idx, b0, b1, br, bc, avx2::StridedRows{panel, ld}, tile, ld, width);
}

void sddmm_f32_avx2(const float* dtile, const int32_t* idx, int64_t b0, int64_t b1, int br, int bc,
                    const float* panel, const float* const* rows, int64_t ld, int64_t n, const Images& images,
                    float* acc) {
  if (rows) return avx2::sddmm(dtile, idx, b0, b1, br, bc, avx2::TableRows{rows}, ld, n, images, acc);
  avx2::sddmm(dtile, idx, b0, b1, br, bc, avx2::StridedRows{panel, ld}, ld, n, images, acc);
}

void rspmm_f32_avx2(const float* at, int64_t ldt, int64_t rows, const float* packed, const int32_t* idx, int64_t b0,
                    int64_t b1, int kb, int ow, const float* init, float* out, int64_t ldo, bool stream) {
  avx2::rspmm(at, ldt, rows, packed, idx, b0, b1, kb, ow, init, out, ldo, stream);
}

void rsddmm_f32_avx2(const float* a, int64_t lda, int kr, const float* b, int64_t ldb, int64_t rows, int ow,
                       float* out) {
  avx2::rsddmm(a, lda, kr, b, ldb, rows, ow, out);
}

}  // namespace ebsparse::block_detail
