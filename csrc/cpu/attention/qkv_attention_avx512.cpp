// qkv_attention_tiled.h's float32 heads on AVX-512. Every product is C (m x n) = f(A (m x k) B
// (k x n)), f an epilogue on the rows still in registers (a scale; exp minus the row's lse; the
// softmax; the softmax gradient), with B's rows contiguous (16 columns a vector, the last one masked) and A read one
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

// log(x) for normal x > 0: x = 2^e m with m in [1/sqrt2, sqrt2) (getexp, scalef), log(m) by
// Cephes' logf polynomial in f = m - 1, e ln 2 added in two parts.
inline __m512 log16(__m512 x) {
  const __m512 e = _mm512_getexp_ps(_mm512_mul_ps(x, _mm512_set1_ps(1.41421356237f)));
  const __m512 f = _mm512_sub_ps(_mm512_scalef_ps(x, _mm512_sub_ps(_mm512_setzero_ps(), e)), _mm512_set1_ps(1.f));
  const __m512 z = _mm512_mul_ps(f, f);
  __m512 p = _mm512_set1_ps(7.0376836292e-2f);
  for (const float c : {-1.1514610310e-1f, 1.1676998740e-1f, -1.2420140846e-1f, 1.4249322787e-1f, -1.6668057665e-1f,
                        2.0000714765e-1f, -2.4999993993e-1f, 3.3333331174e-1f})
    p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(c));
  __m512 y = _mm512_mul_ps(_mm512_mul_ps(p, f), z);
  y = _mm512_fmadd_ps(e, _mm512_set1_ps(-2.12194440e-4f), y);
  y = _mm512_fnmadd_ps(z, _mm512_set1_ps(0.5f), y);
  return _mm512_fmadd_ps(e, _mm512_set1_ps(0.693359375f), _mm512_add_ps(f, y));
}

// After a kSoftmax product: lse[r] (the row max) += log(sum), inv[r] (the sum) = 1 / sum.
inline void finish_softmax(int64_t n, float* lse, float* inv) {
  for (int64_t i = 0; i < n; i += 16) {
    const __mmask16 m = tail_mask(n - i);
    const __m512 sum = _mm512_mask_loadu_ps(_mm512_set1_ps(1.f), m, inv + i);
    _mm512_mask_storeu_ps(lse + i, m, _mm512_add_ps(_mm512_maskz_loadu_ps(m, lse + i), log16(sum)));
    _mm512_mask_storeu_ps(inv + i, m, _mm512_div_ps(_mm512_set1_ps(1.f), sum));
  }
}

// What a product does with its accumulated rows (acc_i = row i of A B) before they leave registers.
enum class Epilogue {
  kScale,        // C_i = alpha acc_i, or scale[i] acc_i where scale is given
  kExpMinusRow,  // C_i = exp(alpha acc_i - sub[i])  (the backward's P from the saved lse)
  kSoftmax,      // C_i = exp(alpha acc_i - max) (times 1 / sum if normalise), inv[i] = sum, lse[i] = max
                 // (finish_softmax makes them 1 / sum and max + log(sum)); whole rows only
  kSoftmaxGrad,  // C_i = P_i * (acc_i - rowsum(P_i * acc_i))  (dS from P and dP); whole rows only
};
struct RowData {
  float alpha = 1.f;
  const float* scale = nullptr;
  const float* sub = nullptr;
  float* inv = nullptr;
  float* lse = nullptr;
  bool normalise = false;
  const float* p = nullptr;  // kSoftmaxGrad: P (row stride ldp); may be C itself
  int64_t ldp = 0;
};

// Rows [0, MR) x vectors [0, NV) of C (row r0 of the product at c), the last vector masked by
// `last`: acc_i = sum_k A(i, k) B[k, :], A(i, k) = a[i * lda + k], or a[k * lda + i] when TransA;
// then E's epilogue.
template <int MR, int NV, bool TransA, Epilogue E>
inline void tile(int64_t k, const float* a, int64_t lda, const float* b, int64_t ldb, const RowData& rd, int64_t r0,
                 float* c, int64_t ldc, __mmask16 last) {
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
  // The row-wise epilogues run stage by stage over all MR rows, not row by row: each row's chain
  // (horizontal reduction, exp, reduction) is latency-bound, and MR independent chains overlap
  // (measured: row by row, the softmax doubled the time of the product it follows).
  if constexpr (E == Epilogue::kSoftmax) {
    const __m512 s = _mm512_set1_ps(rd.alpha);
    float mx[MR], total[MR];
#pragma GCC unroll 8
    for (int i = 0; i < MR; ++i) {
      __m512* x = acc + i * NV;
#pragma GCC unroll 8
      for (int j = 0; j < NV; ++j) x[j] = _mm512_mul_ps(x[j], s);
      __m512 m = _mm512_mask_mov_ps(_mm512_set1_ps(-INFINITY), last, x[NV - 1]);
#pragma GCC unroll 8
      for (int j = 0; j < NV - 1; ++j) m = _mm512_max_ps(m, x[j]);
      mx[i] = _mm512_reduce_max_ps(m);
    }
#pragma GCC unroll 8
    for (int i = 0; i < MR; ++i) {
      __m512* x = acc + i * NV;
      const __m512 mv = _mm512_set1_ps(mx[i]);
      __m512 sum = _mm512_setzero_ps();
#pragma GCC unroll 8
      for (int j = 0; j < NV; ++j) {
        x[j] = exp16(_mm512_sub_ps(x[j], mv));
        sum = j == NV - 1 ? _mm512_mask_add_ps(sum, last, sum, x[j]) : _mm512_add_ps(sum, x[j]);
      }
      total[i] = _mm512_reduce_add_ps(sum);  // >= 1: the max's own term
    }
#pragma GCC unroll 8
    for (int i = 0; i < MR; ++i) {
      rd.lse[r0 + i] = mx[i];    // finish_softmax adds log(sum)
      rd.inv[r0 + i] = total[i];  // and inverts
      if (rd.normalise) {
        const __m512 iv = _mm512_set1_ps(1.f / total[i]);
#pragma GCC unroll 8
        for (int j = 0; j < NV; ++j) acc[i * NV + j] = _mm512_mul_ps(acc[i * NV + j], iv);
      }
    }
  } else if constexpr (E == Epilogue::kSoftmaxGrad) {
    __m512 p[MR * NV];
    float delta[MR];
#pragma GCC unroll 8
    for (int i = 0; i < MR; ++i) {
      const float* prow = rd.p + (r0 + i) * rd.ldp;
      __m512 dot = _mm512_setzero_ps();
#pragma GCC unroll 8
      for (int j = 0; j < NV; ++j) {
        p[i * NV + j] = j == NV - 1 ? _mm512_maskz_loadu_ps(last, prow + 16 * j) : _mm512_loadu_ps(prow + 16 * j);
        dot = _mm512_fmadd_ps(p[i * NV + j], acc[i * NV + j], dot);
      }
      delta[i] = _mm512_reduce_add_ps(dot);
    }
#pragma GCC unroll 8
    for (int i = 0; i < MR; ++i) {
      const __m512 dv = _mm512_set1_ps(delta[i]);
#pragma GCC unroll 8
      for (int j = 0; j < NV; ++j)
        acc[i * NV + j] = _mm512_mul_ps(p[i * NV + j], _mm512_sub_ps(acc[i * NV + j], dv));
    }
  }
#pragma GCC unroll 8
  for (int i = 0; i < MR; ++i) {
    const int64_t r = r0 + i;
    float* crow = c + i * ldc;
    __m512* x = acc + i * NV;
    if constexpr (E == Epilogue::kScale) {
      const __m512 s = _mm512_set1_ps(rd.scale ? rd.scale[r] : rd.alpha);
#pragma GCC unroll 8
      for (int j = 0; j < NV; ++j) x[j] = _mm512_mul_ps(x[j], s);
    } else if constexpr (E == Epilogue::kExpMinusRow) {
      const __m512 s = _mm512_set1_ps(rd.alpha), sub = _mm512_set1_ps(rd.sub[r]);
#pragma GCC unroll 8
      for (int j = 0; j < NV; ++j) x[j] = exp16(_mm512_fmsub_ps(x[j], s, sub));
    } else if constexpr (E == Epilogue::kSoftmax) {
      // done for the whole tile above
    } else {  // kSoftmaxGrad: done for the whole tile above
    }
#pragma GCC unroll 8
    for (int j = 0; j < NV - 1; ++j) _mm512_storeu_ps(crow + 16 * j, x[j]);
    _mm512_mask_storeu_ps(crow + 16 * (NV - 1), last, x[NV - 1]);
  }
}

template <int NV, bool TransA, Epilogue E>
inline void column_panel(int64_t m, int64_t k, const float* a, int64_t lda, const float* b, int64_t ldb,
                         const RowData& rd, float* c, int64_t ldc, __mmask16 last) {
  int64_t i = 0;
  for (; i + kRows <= m; i += kRows)
    tile<kRows, NV, TransA, E>(k, TransA ? a + i : a + i * lda, lda, b, ldb, rd, i, c + i * ldc, ldc, last);
  const float* ai = TransA ? a + i : a + i * lda;
  float* ci = c + i * ldc;
  switch (m - i) {
    case 5: return tile<5, NV, TransA, E>(k, ai, lda, b, ldb, rd, i, ci, ldc, last);
    case 4: return tile<4, NV, TransA, E>(k, ai, lda, b, ldb, rd, i, ci, ldc, last);
    case 3: return tile<3, NV, TransA, E>(k, ai, lda, b, ldb, rd, i, ci, ldc, last);
    case 2: return tile<2, NV, TransA, E>(k, ai, lda, b, ldb, rd, i, ci, ldc, last);
    case 1: return tile<1, NV, TransA, E>(k, ai, lda, b, ldb, rd, i, ci, ldc, last);
    default: return;
  }
}

// C (m x n, row stride ldc) from A B, A (m x k) read as described at `tile`, B (k x n, row stride
// ldb), through E's epilogue; k = 0 gives acc = 0. kSoftmax and kSoftmaxGrad need whole rows in
// registers: n <= 64 (fits_one_panel).
constexpr bool fits_one_panel(int64_t n) { return n <= 16 * kVectors; }

template <bool TransA, Epilogue E>
void product(int64_t m, int64_t n, int64_t k, const float* a, int64_t lda, const float* b, int64_t ldb,
             const RowData& rd, float* c, int64_t ldc) {
  for (int64_t j = 0; j < n; j += 16 * kVectors) {
    const int64_t width = std::min<int64_t>(16 * kVectors, n - j);
    const __mmask16 last = tail_mask(width - (width - 1) / 16 * 16);
    switch ((width + 15) / 16) {
      case 4: column_panel<4, TransA, E>(m, k, a, lda, b + j, ldb, rd, c + j, ldc, last); break;
      case 3: column_panel<3, TransA, E>(m, k, a, lda, b + j, ldb, rd, c + j, ldc, last); break;
      case 2: column_panel<2, TransA, E>(m, k, a, lda, b + j, ldb, rd, c + j, ldc, last); break;
      default: column_panel<1, TransA, E>(m, k, a, lda, b + j, ldb, rd, c + j, ldc, last); break;
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

// ds[i] = p[i] (dp[i] - rowsum(p * dp)) for i < n: dS from P and dP (ds may be p).
inline void softmax_grad(const float* p, const float* dp, float* ds, int64_t n) {
  __m512 acc = _mm512_setzero_ps();
  for (int64_t i = 0; i < n; i += 16) {
    const __mmask16 m = tail_mask(n - i);
    acc = _mm512_fmadd_ps(_mm512_maskz_loadu_ps(m, p + i), _mm512_maskz_loadu_ps(m, dp + i), acc);
  }
  const __m512 delta = _mm512_set1_ps(_mm512_reduce_add_ps(acc));
  for (int64_t i = 0; i < n; i += 16) {
    const __mmask16 m = tail_mask(n - i);
    const __m512 d = _mm512_sub_ps(_mm512_maskz_loadu_ps(m, dp + i), delta);
    _mm512_mask_storeu_ps(ds + i, m, _mm512_mul_ps(_mm512_maskz_loadu_ps(m, p + i), d));
  }
}

}  // namespace

// Scratch: two n x ns score matrices (ns = n rounded up to 16, so rows start 64-byte apart), one
// d x ns transposed operand and n row factors.
int64_t tiled_scratch_floats(int64_t n, int64_t d) { return (2 * n + d) * round16(n) + n; }

void tiled_forward_head(int64_t n, int64_t d, float scale, const float* q, const float* k, const float* v,
                        int64_t ld, float* out, int64_t ldo, float* lse, float* probs, float* scratch) {
  const int64_t ns = round16(n);
  float *kt = scratch + 2 * n * ns, *inv = kt + d * ns;
  // Saved probabilities are normalised where they are written (the backward reads them as P);
  // otherwise the softmax's 1 / sum is applied to the output rows, not to the n x n scores.
  float* s = probs ? probs : scratch;
  const int64_t lds = probs ? n : ns;
  transpose(n, d, k, ld, kt, ns);
  if (fits_one_panel(n)) {  // the softmax on the scores' rows while they are in registers
    product<false, Epilogue::kSoftmax>(n, n, d, q, ld, kt, ns,
                                       {.alpha = scale, .inv = inv, .lse = lse, .normalise = probs != nullptr}, s, lds);
    finish_softmax(n, lse, inv);
  } else {
    product<false, Epilogue::kScale>(n, n, d, q, ld, kt, ns, {.alpha = scale}, s, lds);
    for (int64_t r = 0; r < n; ++r) {
      float* sr = s + r * lds;
      const float mx = row_max(sr, n);
      const float sum = exp_sub(sr, n, mx);  // >= 1: the max's own term
      inv[r] = 1.f / sum;
      lse[r] = mx + std::log(sum);
      if (probs)
        for (int64_t c = 0; c < n; ++c) sr[c] *= inv[r];
    }
  }
  product<false, Epilogue::kScale>(n, d, n, s, lds, v, ld, probs ? RowData{} : RowData{.scale = inv}, out, ldo);
}

void tiled_backward_head(int64_t n, int64_t d, float scale, const float* q, const float* k, const float* v,
                         int64_t ld, const float* grad_out, int64_t ldo, const float* lse, const float* probs,
                         float* dq, float* dk, float* dv, float* scratch) {
  const int64_t ns = round16(n);
  float *ds = scratch, *dp = ds + n * ns, *t = dp + n * ns;
  const float* p = probs ? probs : ds;  // recomputed P is overwritten by dS in place
  const int64_t ldp = probs ? n : ns;
  if (!probs) {
    transpose(n, d, k, ld, t, ns);
    product<false, Epilogue::kExpMinusRow>(n, n, d, q, ld, t, ns, {.alpha = scale, .sub = lse}, ds, ns);  // P
  }
  product<true, Epilogue::kScale>(n, d, n, p, ldp, grad_out, ldo, {}, dv, ld);  // dV = P^T dO
  transpose(n, d, v, ld, t, ns);
  if (fits_one_panel(n)) {  // dP = dO V^T turned into dS in registers
    product<false, Epilogue::kSoftmaxGrad>(n, n, d, grad_out, ldo, t, ns, {.p = p, .ldp = ldp}, ds, ns);
  } else {
    product<false, Epilogue::kScale>(n, n, d, grad_out, ldo, t, ns, {}, dp, ns);
    for (int64_t r = 0; r < n; ++r) softmax_grad(p + r * ldp, dp + r * ns, ds + r * ns, n);
  }
  product<false, Epilogue::kScale>(n, d, n, ds, ns, k, ld, {.alpha = scale}, dq, ld);  // dQ = scale dS K
  product<true, Epilogue::kScale>(n, d, n, ds, ns, q, ld, {.alpha = scale}, dk, ld);   // dK = scale dS^T Q
}

}  // namespace ebsparse::attention

#pragma GCC pop_options
