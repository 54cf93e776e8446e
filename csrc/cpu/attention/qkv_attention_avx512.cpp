// qkv_attention_tiled.h's float32 heads on AVX-512. Every product is C (m x n) = alpha A (m x k) B
// (k x n) with B's rows contiguous (16 columns a vector, the last one masked) and A read one
// element at a time by broadcast, so A may be read transposed (A(i, k) at a[k * lda + i]) at no
// cost: P^T dO and dS^T Q need no copy. Tiles of 6 rows x 4 vectors keep 24 accumulators in
// registers, leaving 8 for B's vectors and the broadcast. The includes come first, built for the
// AVX2 baseline; the pragma raises the target of everything below it.
#include "cpu/attention/qkv_attention_tiled.h"

#include <immintrin.h>

#include <algorithm>
#include <cmath>

#pragma GCC push_options
#pragma GCC target("avx512f,avx512vl,avx512bw,avx512dq,fma")

namespace ebsparse::attention {
namespace {

constexpr int kRows = 6;     // rows of a tile
constexpr int kVectors = 4;  // 16-float vectors of a tile's row

inline __mmask16 tail_mask(int64_t n) { return n >= 16 ? __mmask16(0xFFFF) : __mmask16((1u << n) - 1); }
inline int64_t round16(int64_t n) { return (n + 15) / 16 * 16; }

// C rows [0, MR) x vectors [0, NV) (the last one masked by `last`) = alpha (or row_alpha[i])
// sum_k A(i, k) B[k, :]. A(i, k) is a[i * lda + k], or a[k * lda + i] when TransA.
template <int MR, int NV, bool TransA>
inline void tile(int64_t k, const float* a, int64_t lda, const float* b, int64_t ldb, float alpha,
                 const float* row_alpha, float* c, int64_t ldc, __mmask16 last) {
  // The unroll pragmas are needed: without them GCC 12 keeps the accumulator array on the stack
  // and stores all 24 vectors back every k step (measured: 2x slower than MKL instead of faster).
  __m512 acc[MR * NV];
#pragma GCC unroll 32
  for (int i = 0; i < MR * NV; ++i) acc[i] = _mm512_setzero_ps();
  for (int64_t kk = 0; kk < k; ++kk) {
    const float* brow = b + kk * ldb;
    __m512 bv[NV];
#pragma GCC unroll 8
    for (int j = 0; j < NV; ++j)
      bv[j] = j == NV - 1 ? _mm512_maskz_loadu_ps(last, brow + 16 * j) : _mm512_loadu_ps(brow + 16 * j);
#pragma GCC unroll 8
    for (int i = 0; i < MR; ++i) {
      const __m512 ai = _mm512_set1_ps(TransA ? a[kk * lda + i] : a[i * lda + kk]);
#pragma GCC unroll 8
      for (int j = 0; j < NV; ++j) acc[i * NV + j] = _mm512_fmadd_ps(ai, bv[j], acc[i * NV + j]);
    }
  }
#pragma GCC unroll 8
  for (int i = 0; i < MR; ++i) {
    const __m512 s = _mm512_set1_ps(row_alpha ? row_alpha[i] : alpha);
    float* crow = c + i * ldc;
#pragma GCC unroll 8
    for (int j = 0; j < NV - 1; ++j) _mm512_storeu_ps(crow + 16 * j, _mm512_mul_ps(acc[i * NV + j], s));
    _mm512_mask_storeu_ps(crow + 16 * (NV - 1), last, _mm512_mul_ps(acc[i * NV + NV - 1], s));
  }
}

template <int NV, bool TransA>
inline void column_panel(int64_t m, int64_t k, const float* a, int64_t lda, const float* b, int64_t ldb, float alpha,
                         const float* row_alpha, float* c, int64_t ldc, __mmask16 last) {
  int64_t i = 0;
  for (; i + kRows <= m; i += kRows) {
    const float* ai = TransA ? a + i : a + i * lda;
    tile<kRows, NV, TransA>(k, ai, lda, b, ldb, alpha, row_alpha ? row_alpha + i : nullptr, c + i * ldc, ldc, last);
  }
  const float* ai = TransA ? a + i : a + i * lda;
  const float* ri = row_alpha ? row_alpha + i : nullptr;
  float* ci = c + i * ldc;
  switch (m - i) {
    case 5: return tile<5, NV, TransA>(k, ai, lda, b, ldb, alpha, ri, ci, ldc, last);
    case 4: return tile<4, NV, TransA>(k, ai, lda, b, ldb, alpha, ri, ci, ldc, last);
    case 3: return tile<3, NV, TransA>(k, ai, lda, b, ldb, alpha, ri, ci, ldc, last);
    case 2: return tile<2, NV, TransA>(k, ai, lda, b, ldb, alpha, ri, ci, ldc, last);
    case 1: return tile<1, NV, TransA>(k, ai, lda, b, ldb, alpha, ri, ci, ldc, last);
    default: return;
  }
}

// C (m x n, row stride ldc) = alpha A B, A (m x k) read as described at `tile`, B (k x n, row
// stride ldb); with row_alpha, row i is scaled by row_alpha[i] instead of alpha. k = 0 gives zeros.
template <bool TransA>
void product(int64_t m, int64_t n, int64_t k, const float* a, int64_t lda, const float* b, int64_t ldb, float alpha,
             const float* row_alpha, float* c, int64_t ldc) {
  for (int64_t j = 0; j < n; j += 16 * kVectors) {
    const int64_t width = std::min<int64_t>(16 * kVectors, n - j);
    const __mmask16 last = tail_mask(width - (width - 1) / 16 * 16);
    switch ((width + 15) / 16) {
      case 4: column_panel<4, TransA>(m, k, a, lda, b + j, ldb, alpha, row_alpha, c + j, ldc, last); break;
      case 3: column_panel<3, TransA>(m, k, a, lda, b + j, ldb, alpha, row_alpha, c + j, ldc, last); break;
      case 2: column_panel<2, TransA>(m, k, a, lda, b + j, ldb, alpha, row_alpha, c + j, ldc, last); break;
      default: column_panel<1, TransA>(m, k, a, lda, b + j, ldb, alpha, row_alpha, c + j, ldc, last); break;
    }
  }
}

// dst (cols x rows, row stride ldd) = src^T, src (rows x cols, row stride lds); 16 x 16 blocks
// transposed in registers (unpack within 128-bit lanes, then shuffle the lanes), edges masked.
void transpose(int64_t rows, int64_t cols, const float* src, int64_t lds, float* dst, int64_t ldd) {
  for (int64_t r0 = 0; r0 < rows; r0 += 16) {
    const int64_t nr = std::min<int64_t>(16, rows - r0);
    for (int64_t c0 = 0; c0 < cols; c0 += 16) {
      const int64_t nc = std::min<int64_t>(16, cols - c0);
      const __mmask16 cm = tail_mask(nc), rm = tail_mask(nr);
      __m512 r[16], t[16];
#pragma GCC unroll 16
      for (int i = 0; i < 16; ++i)
        r[i] = i < nr ? _mm512_maskz_loadu_ps(cm, src + (r0 + i) * lds + c0) : _mm512_setzero_ps();
#pragma GCC unroll 8
      for (int i = 0; i < 8; ++i) {
        t[2 * i] = _mm512_unpacklo_ps(r[2 * i], r[2 * i + 1]);
        t[2 * i + 1] = _mm512_unpackhi_ps(r[2 * i], r[2 * i + 1]);
      }
      // u[4 g + c], lane L: rows 4g..4g+3 of column 4L + c.
#pragma GCC unroll 4
      for (int g = 0; g < 4; ++g) {
        r[4 * g + 0] = _mm512_shuffle_ps(t[4 * g], t[4 * g + 2], 0x44);
        r[4 * g + 1] = _mm512_shuffle_ps(t[4 * g], t[4 * g + 2], 0xEE);
        r[4 * g + 2] = _mm512_shuffle_ps(t[4 * g + 1], t[4 * g + 3], 0x44);
        r[4 * g + 3] = _mm512_shuffle_ps(t[4 * g + 1], t[4 * g + 3], 0xEE);
      }
#pragma GCC unroll 4
      for (int c = 0; c < 4; ++c) {
        const __m512 v0 = _mm512_shuffle_f32x4(r[c], r[4 + c], 0x88), w0 = _mm512_shuffle_f32x4(r[c], r[4 + c], 0xDD);
        const __m512 v1 = _mm512_shuffle_f32x4(r[8 + c], r[12 + c], 0x88);
        const __m512 w1 = _mm512_shuffle_f32x4(r[8 + c], r[12 + c], 0xDD);
        t[c] = _mm512_shuffle_f32x4(v0, v1, 0x88);       // column c
        t[8 + c] = _mm512_shuffle_f32x4(v0, v1, 0xDD);   // column 8 + c
        t[4 + c] = _mm512_shuffle_f32x4(w0, w1, 0x88);   // column 4 + c
        t[12 + c] = _mm512_shuffle_f32x4(w0, w1, 0xDD);  // column 12 + c
      }
#pragma GCC unroll 16
      for (int j = 0; j < 16; ++j)
        if (j < nc) _mm512_mask_storeu_ps(dst + (c0 + j) * ldd + r0, rm, t[j]);
    }
  }
}

// exp(x) for x <= 0 (inputs below -100 are taken as -100: the result, < 4e-44, is a denormal or
// 0 either way): Cephes' split of ln 2 and its degree-6 polynomial on |r| <= ln2 / 2, 2^n by scalef.
inline __m512 exp16(__m512 x) {
  x = _mm512_max_ps(x, _mm512_set1_ps(-100.f));
  const __m512 n = _mm512_roundscale_ps(_mm512_mul_ps(x, _mm512_set1_ps(1.44269504088896341f)),
                                        _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  __m512 r = _mm512_fnmadd_ps(n, _mm512_set1_ps(0.693359375f), x);
  r = _mm512_fnmadd_ps(n, _mm512_set1_ps(-2.12194440e-4f), r);
  __m512 p = _mm512_set1_ps(1.9875691500e-4f);
  for (const float c : {1.3981999507e-3f, 8.3334519073e-3f, 4.1665795894e-2f, 1.6666665459e-1f, 5.0000001201e-1f})
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(c));
  p = _mm512_fmadd_ps(_mm512_mul_ps(p, r), r, _mm512_add_ps(r, _mm512_set1_ps(1.f)));
  return _mm512_scalef_ps(p, n);
}

inline float row_max(const float* x, int64_t n) {
  __m512 m = _mm512_set1_ps(-INFINITY);
  for (int64_t i = 0; i < n; i += 16) m = _mm512_max_ps(m, _mm512_mask_loadu_ps(m, tail_mask(n - i), x + i));
  return _mm512_reduce_max_ps(m);
}

// x[i] = exp(x[i] - sub) for i < n; returns their sum.
inline float exp_sub(float* x, int64_t n, float sub) {
  const __m512 s = _mm512_set1_ps(sub);
  __m512 acc = _mm512_setzero_ps();
  for (int64_t i = 0; i < n; i += 16) {
    const __mmask16 m = tail_mask(n - i);
    const __m512 e = exp16(_mm512_sub_ps(_mm512_maskz_loadu_ps(m, x + i), s));
    _mm512_mask_storeu_ps(x + i, m, e);
    acc = _mm512_mask_add_ps(acc, m, acc, e);
  }
  return _mm512_reduce_add_ps(acc);
}

// p[i] *= dp[i] - rowsum(p * dp) for i < n: dS from P and dP.
inline void softmax_grad(float* p, const float* dp, int64_t n) {
  __m512 acc = _mm512_setzero_ps();
  for (int64_t i = 0; i < n; i += 16) {
    const __mmask16 m = tail_mask(n - i);
    acc = _mm512_fmadd_ps(_mm512_maskz_loadu_ps(m, p + i), _mm512_maskz_loadu_ps(m, dp + i), acc);
  }
  const __m512 delta = _mm512_set1_ps(_mm512_reduce_add_ps(acc));
  for (int64_t i = 0; i < n; i += 16) {
    const __mmask16 m = tail_mask(n - i);
    const __m512 d = _mm512_sub_ps(_mm512_maskz_loadu_ps(m, dp + i), delta);
    _mm512_mask_storeu_ps(p + i, m, _mm512_mul_ps(_mm512_maskz_loadu_ps(m, p + i), d));
  }
}

}  // namespace

// Scratch: two n x ns score matrices (ns = n rounded up to 16, so rows start 64-byte apart), one
// d x ns transposed operand and n row factors.
int64_t tiled_scratch_floats(int64_t n, int64_t d) { return (2 * n + d) * round16(n) + n; }

void tiled_forward_head(int64_t n, int64_t d, float scale, const float* q, const float* k, const float* v,
                        int64_t ld, float* out, int64_t ldo, float* lse, float* scratch) {
  const int64_t ns = round16(n);
  float *s = scratch, *kt = s + 2 * n * ns, *inv = kt + d * ns;
  transpose(n, d, k, ld, kt, ns);
  product<false>(n, n, d, q, ld, kt, ns, scale, nullptr, s, ns);
  for (int64_t r = 0; r < n; ++r) {
    float* sr = s + r * ns;
    const float mx = row_max(sr, n);
    const float sum = exp_sub(sr, n, mx);  // >= 1: the max's own term
    inv[r] = 1.f / sum;
    lse[r] = mx + std::log(sum);
  }
  // The softmax's 1 / sum is applied to the output rows, not to the n x n probabilities.
  product<false>(n, d, n, s, ns, v, ld, 1.f, inv, out, ldo);
}

void tiled_backward_head(int64_t n, int64_t d, float scale, const float* q, const float* k, const float* v,
                         int64_t ld, const float* grad_out, int64_t ldo, const float* lse, float* dq, float* dk,
                         float* dv, float* scratch) {
  const int64_t ns = round16(n);
  float *p = scratch, *dp = p + n * ns, *t = dp + n * ns;
  transpose(n, d, k, ld, t, ns);
  product<false>(n, n, d, q, ld, t, ns, scale, nullptr, p, ns);
  for (int64_t r = 0; r < n; ++r) exp_sub(p + r * ns, n, lse[r]);
  product<true>(n, d, n, p, ns, grad_out, ldo, 1.f, nullptr, dv, ld);  // dV = P^T dO
  transpose(n, d, v, ld, t, ns);
  product<false>(n, n, d, grad_out, ldo, t, ns, 1.f, nullptr, dp, ns);  // dP = dO V^T
  for (int64_t r = 0; r < n; ++r) softmax_grad(p + r * ns, dp + r * ns, n);
  product<false>(n, d, n, p, ns, k, ld, scale, nullptr, dq, ld);  // dQ = scale dS K
  product<true>(n, d, n, p, ns, q, ld, scale, nullptr, dk, ld);   // dK = scale dS^T Q
}

}  // namespace ebsparse::attention

#pragma GCC pop_options
