// AVX-512 instantiation of the direct sparse conv engine (conv_simd.h). Only reached after a run-time
// check of __builtin_cpu_supports("avx512f"); the file is built with the AVX2 baseline flags and
// every function below carries the AVX-512 target through the pragma.
#include <immintrin.h>

#include <cstdint>
#include <cstring>

#include "conv_impl.h"

#pragma GCC push_options
#pragma GCC target("avx512f,avx512vl,avx512bw,avx512dq,fma")

namespace ebsparse::convk::avx512 {
namespace {
struct Vec {
  using T = __m512;
  static constexpr int W = 16;
  static inline T zero() { return _mm512_setzero_ps(); }
  static inline T load(const float* p) { return _mm512_load_ps(p); }
  static inline T loadu(const float* p) { return _mm512_loadu_ps(p); }
  static inline T load_part(const float* p, int64_t n) {
    return _mm512_maskz_loadu_ps(static_cast<__mmask16>((1u << n) - 1), p);
  }
  // Lanes [lo, hi) from p (the others zero and never touched, so they may lie outside the buffer).
  static inline T load_lanes(const float* p, int64_t lo, int64_t hi) {
    const unsigned m = ((1u << hi) - 1) & ~((1u << lo) - 1);
    return _mm512_maskz_loadu_ps(static_cast<__mmask16>(m), p);
  }
  static inline void store(float* p, T v) { _mm512_store_ps(p, v); }
  static inline T bcast(float x) { return _mm512_set1_ps(x); }
  static inline T fma(T a, T b, T c) { return _mm512_fmadd_ps(a, b, c); }
  static inline T add(T a, T b) { return _mm512_add_ps(a, b); }
  static inline void storeu(float* p, T v) { _mm512_storeu_ps(p, v); }
  static inline void store_part(float* p, T v, int64_t n) {
    _mm512_mask_storeu_ps(p, static_cast<__mmask16>((1u << n) - 1), v);
  }
  static inline float hsum(T v) {
    const __m256 h = _mm256_add_ps(_mm512_castps512_ps256(v), _mm512_extractf32x8_ps(v, 1));
    __m128 q = _mm_add_ps(_mm256_castps256_ps128(h), _mm256_extractf128_ps(h, 1));
    q = _mm_add_ps(q, _mm_movehl_ps(q, q));
    q = _mm_add_ss(q, _mm_movehdup_ps(q));
    return _mm_cvtss_f32(q);
  }
};
}  // namespace

#include "conv_simd.h"

}  // namespace ebsparse::convk::avx512

#pragma GCC pop_options
