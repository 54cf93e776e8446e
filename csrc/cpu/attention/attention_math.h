// Private to csrc/cpu/attention: the pieces both attention kernels (block_attention.cpp,
// qkv_attention.cpp) are built from. Row-major products on the BLAS torch's CPU build links and
// exports (sgemm_/dgemm_, what ATen's cpublas calls); BLAS is column-major, so a row-major X (r x c)
// with row stride ld is passed as the column-major X^T. Every operand takes its own row stride, so a
// head's rows can be read and written in place inside a wider token-major tensor.
#pragma once
#include <immintrin.h>

#include <cmath>
#include <cstdint>

extern "C" {
void sgemm_(const char* transa, const char* transb, const int* m, const int* n, const int* k, const float* alpha,
            const float* a, const int* lda, const float* b, const int* ldb, const float* beta, float* c,
            const int* ldc);
void dgemm_(const char* transa, const char* transb, const int* m, const int* n, const int* k, const double* alpha,
            const double* a, const int* lda, const double* b, const int* ldb, const double* beta, double* c,
            const int* ldc);
}

namespace ebsparse::attention {

// Column-major C (m x n) = alpha op(A) op(B) + beta C.
inline void gemm(char ta, char tb, int64_t m, int64_t n, int64_t k, float alpha, const float* a, int64_t lda,
                 const float* b, int64_t ldb, float beta, float* c, int64_t ldc) {
  int mi = m, ni = n, ki = k, la = lda, lb = ldb, lc = ldc;
  sgemm_(&ta, &tb, &mi, &ni, &ki, &alpha, a, &la, b, &lb, &beta, c, &lc);
}
inline void gemm(char ta, char tb, int64_t m, int64_t n, int64_t k, double alpha, const double* a, int64_t lda,
                 const double* b, int64_t ldb, double beta, double* c, int64_t ldc) {
  int mi = m, ni = n, ki = k, la = lda, lb = ldb, lc = ldc;
  dgemm_(&ta, &tb, &mi, &ni, &ki, &alpha, a, &la, b, &lb, &beta, c, &lc);
}

// Row-major S (m x n, row stride lds) = alpha A (m x d) B^T (B: n x d).
template <typename T>
inline void abt(int64_t m, int64_t n, int64_t d, T alpha, const T* a, int64_t lda, const T* b, int64_t ldb, T* s,
                int64_t lds) {
  gemm('T', 'N', n, m, d, alpha, b, ldb, a, lda, T(0), s, lds);
}
// Row-major C (m x d) = alpha P (m x n) B (n x d) + beta C.
template <typename T>
inline void ab(int64_t m, int64_t n, int64_t d, T alpha, const T* p, int64_t ldp, const T* b, int64_t ldb, T beta,
               T* c, int64_t ldc) {
  gemm('N', 'N', d, m, n, alpha, b, ldb, p, ldp, beta, c, ldc);
}
// Row-major C (n x d) = alpha P^T (P: m x n) A (m x d) + beta C.
template <typename T>
inline void atb(int64_t m, int64_t n, int64_t d, T alpha, const T* p, int64_t ldp, const T* a, int64_t lda, T beta,
                T* c, int64_t ldc) {
  gemm('N', 'T', d, n, m, alpha, a, lda, p, ldp, beta, c, ldc);
}

// exp on 8 floats (Cephes-style: 2^n * p(r), |r| <= ln2 / 2); -inf and below -87.3 give 0.
inline __m256 exp8(__m256 x) {
  const __m256 lo = _mm256_set1_ps(-87.3f), hi = _mm256_set1_ps(88.3f);
  __m256 below = _mm256_cmp_ps(x, lo, _CMP_LT_OQ);
  x = _mm256_min_ps(_mm256_max_ps(x, lo), hi);
  __m256 n = _mm256_round_ps(_mm256_mul_ps(x, _mm256_set1_ps(1.44269504088896341f)),
                             _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  __m256 r = _mm256_fnmadd_ps(n, _mm256_set1_ps(0.693359375f), x);
  r = _mm256_fnmadd_ps(n, _mm256_set1_ps(-2.12194440e-4f), r);
  __m256 p = _mm256_set1_ps(1.9875691500e-4f);
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.3981999507e-3f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(8.3334519073e-3f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(4.1665795894e-2f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.6666665459e-1f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(5.0000001201e-1f));
  p = _mm256_fmadd_ps(_mm256_mul_ps(p, r), r, _mm256_add_ps(r, _mm256_set1_ps(1.0f)));
  __m256i e = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)), 23);
  return _mm256_andnot_ps(below, _mm256_mul_ps(p, _mm256_castsi256_ps(e)));
}

inline float hsum8(__m256 v) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  return _mm_cvtss_f32(_mm_add_ss(s, _mm_movehdup_ps(s)));
}

// max of x[0..n), -inf for n = 0. Explicit vectors for float: GCC leaves a float max reduction
// scalar (one 4-cycle dependent max per element: half of the qkv forward's time at 64 tokens).
inline float row_max(const float* x, int64_t n) {
  __m256 m = _mm256_set1_ps(-INFINITY);
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) m = _mm256_max_ps(m, _mm256_loadu_ps(x + i));
  __m128 h = _mm_max_ps(_mm256_castps256_ps128(m), _mm256_extractf128_ps(m, 1));
  h = _mm_max_ps(h, _mm_movehl_ps(h, h));
  float out = _mm_cvtss_f32(_mm_max_ss(h, _mm_movehdup_ps(h)));
  for (; i < n; ++i) out = x[i] > out ? x[i] : out;
  return out;
}
inline double row_max(const double* x, int64_t n) {
  double out = -INFINITY;
  for (int64_t i = 0; i < n; ++i) out = x[i] > out ? x[i] : out;
  return out;
}

// x[i] = exp(x[i] - sub); returns the sum.
inline float exp_sub(float* x, int64_t n, float sub) {
  __m256 s = _mm256_set1_ps(sub), acc = _mm256_setzero_ps();
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) {
    __m256 e = exp8(_mm256_sub_ps(_mm256_loadu_ps(x + i), s));
    _mm256_storeu_ps(x + i, e);
    acc = _mm256_add_ps(acc, e);
  }
  float total = hsum8(acc);
  for (; i < n; ++i) total += (x[i] = std::exp(x[i] - sub));
  return total;
}
inline double exp_sub(double* x, int64_t n, double sub) {
  double total = 0;
  for (int64_t i = 0; i < n; ++i) total += (x[i] = std::exp(x[i] - sub));
  return total;
}

}  // namespace ebsparse::attention
