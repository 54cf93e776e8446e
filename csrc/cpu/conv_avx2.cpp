// AVX2+FMA instantiation of the direct sparse conv engine (conv_simd.h): the baseline path, used when
// the CPU has no AVX-512.
#include <immintrin.h>

#include <cstdint>
#include <cstring>

#include "conv_impl.h"

namespace ebsparse::convk::avx2 {
namespace {
struct Vec {
  using T = __m256;
  static constexpr int W = 8;
  static inline __m256i lanes(int64_t n) {
    return _mm256_cmpgt_epi32(_mm256_set1_epi32(static_cast<int>(n)), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
  }
  static inline T zero() { return _mm256_setzero_ps(); }
  static inline T load(const float* p) { return _mm256_load_ps(p); }
  static inline T loadu(const float* p) { return _mm256_loadu_ps(p); }
  static inline T load_part(const float* p, int64_t n) { return _mm256_maskload_ps(p, lanes(n)); }
  // Lanes [lo, hi) from p (the others zero and never touched, so they may lie outside the buffer).
  static inline T load_lanes(const float* p, int64_t lo, int64_t hi) {
    const __m256i idx = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
    const __m256i m = _mm256_andnot_si256(_mm256_cmpgt_epi32(_mm256_set1_epi32(static_cast<int>(lo)), idx),
                                          _mm256_cmpgt_epi32(_mm256_set1_epi32(static_cast<int>(hi)), idx));
    return _mm256_maskload_ps(p, m);
  }
  static inline void store(float* p, T v) { _mm256_store_ps(p, v); }
  static inline T bcast(float x) { return _mm256_set1_ps(x); }
  static inline T fma(T a, T b, T c) { return _mm256_fmadd_ps(a, b, c); }
  static inline T add(T a, T b) { return _mm256_add_ps(a, b); }
  static inline void storeu(float* p, T v) { _mm256_storeu_ps(p, v); }
  static inline void store_part(float* p, T v, int64_t n) { _mm256_maskstore_ps(p, lanes(n), v); }
  static inline float hsum(T v) {
    __m128 q = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    q = _mm_add_ps(q, _mm_movehl_ps(q, q));
    q = _mm_add_ss(q, _mm_movehdup_ps(q));
    return _mm_cvtss_f32(q);
  }
};
}  // namespace

#include "conv_simd.h"

}  // namespace ebsparse::convk::avx2
