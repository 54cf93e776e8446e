// Private to csrc/cpu: the vector adapters the SIMD kernel bodies (linear/spmm.h, conv/kernels.h)
// are written against, one per instruction set. A kernels_<isa>.cpp file includes this header and,
// inside a namespace of its own, aliases `using Vec = simd::Avx512;` (or Avx2) before including a
// kernel body.
//
// Interface: T, W (floats per vector), zero(), load(p) (aligned), loadu(p), load_part(p, n) (first
// n lanes), load_lanes(p, lo, hi), bcast(x), fma(a, b, c) = a * b + c, add(a, b), store(p, v)
// (aligned), storeu(p, v), store_part(p, v, n), hsum(v), gather(p, idx) (lane i = p[idx[i]], zero
// and not read where idx[i] < 0), in_register(v) (v forced into a register: a loaded vector that
// several FMAs read, which GCC would otherwise fold back into each FMA as a load of its own).
// sub(a, b) = a - b and mul(a, b) = a * b, lane-wise (the elementwise kernels of cpu/adaln/).
//
// Everything has internal linkage (anonymous namespace), so no copy compiled for one instruction
// set can be merged by the linker into code built for the other. The AVX-512 adapter carries its
// target through the pragma; callers must only reach it after a run-time CPU check.
#pragma once
#include <immintrin.h>

#include <cstdint>

namespace ebsparse::simd {
namespace {

// p, with its value hidden from the compiler, so that the loads a kernel makes at constant offsets
// from it are addressed as base + displacement. Otherwise GCC folds the computation of p (say
// panel + col[j] * NB) into every load as base + index * scale, and on Intel cores an FMA with an
// indexed memory operand is un-laminated into two issue slots where a base-addressed one takes one.
inline const float* base_address(const float* p) {
  asm("" : "+r"(p));
  return p;
}

#pragma GCC push_options
#pragma GCC target("avx512f,avx512vl,avx512bw,avx512dq,fma")
struct Avx512 {
  using T = __m512;
  static constexpr int W = 16;
  static inline T zero() { return _mm512_setzero_ps(); }
  static inline T in_register(T v) { asm("" : "+v"(v)); return v; }
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
  static inline T gather(const float* p, const int32_t* idx) {
    const __m512i i = _mm512_loadu_si512(idx);
    return _mm512_mask_i32gather_ps(_mm512_setzero_ps(), _mm512_cmpge_epi32_mask(i, _mm512_setzero_si512()), i, p, 4);
  }
  static inline T bcast(float x) { return _mm512_set1_ps(x); }
  static inline T fma(T a, T b, T c) { return _mm512_fmadd_ps(a, b, c); }
  static inline T add(T a, T b) { return _mm512_add_ps(a, b); }
  static inline T sub(T a, T b) { return _mm512_sub_ps(a, b); }
  static inline T mul(T a, T b) { return _mm512_mul_ps(a, b); }
  static inline void storeu(float* p, T v) { _mm512_storeu_ps(p, v); }
  static inline void stream(float* p, T v) { _mm512_stream_ps(p, v); }
  static inline void store_part(float* p, T v, int64_t n) {
    _mm512_mask_storeu_ps(p, static_cast<__mmask16>((1u << n) - 1), v);
  }
  static inline float hsum(T v) {
    const __m256 h = _mm256_add_ps(_mm512_extractf32x8_ps(v, 0), _mm512_extractf32x8_ps(v, 1));
    __m128 q = _mm_add_ps(_mm256_castps256_ps128(h), _mm256_extractf128_ps(h, 1));
    q = _mm_add_ps(q, _mm_movehl_ps(q, q));
    q = _mm_add_ss(q, _mm_movehdup_ps(q));
    return _mm_cvtss_f32(q);
  }
};

#pragma GCC pop_options

struct Avx2 {
  using T = __m256;
  static constexpr int W = 8;
  static inline __m256i lanes(int64_t n) {
    return _mm256_cmpgt_epi32(_mm256_set1_epi32(static_cast<int>(n)), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
  }
  static inline T zero() { return _mm256_setzero_ps(); }
  static inline T in_register(T v) { asm("" : "+v"(v)); return v; }
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
  static inline T gather(const float* p, const int32_t* idx) {
    const __m256i i = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(idx));
    const __m256 valid = _mm256_castsi256_ps(_mm256_cmpgt_epi32(i, _mm256_set1_epi32(-1)));
    return _mm256_mask_i32gather_ps(_mm256_setzero_ps(), p, i, valid, 4);
  }
  static inline T bcast(float x) { return _mm256_set1_ps(x); }
  static inline T fma(T a, T b, T c) { return _mm256_fmadd_ps(a, b, c); }
  static inline T add(T a, T b) { return _mm256_add_ps(a, b); }
  static inline T sub(T a, T b) { return _mm256_sub_ps(a, b); }
  static inline T mul(T a, T b) { return _mm256_mul_ps(a, b); }
  static inline void storeu(float* p, T v) { _mm256_storeu_ps(p, v); }
  static inline void stream(float* p, T v) { _mm256_stream_ps(p, v); }
  static inline void store_part(float* p, T v, int64_t n) { _mm256_maskstore_ps(p, lanes(n), v); }
  static inline float hsum(T v) {
    __m128 q = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    q = _mm_add_ps(q, _mm_movehl_ps(q, q));
    q = _mm_add_ss(q, _mm_movehdup_ps(q));
    return _mm_cvtss_f32(q);
  }
};


}  // namespace
}  // namespace ebsparse::simd
