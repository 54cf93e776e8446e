// gelu_tanh_math.h's float32 spans for AVX-512, reached only when cpu_capability() chose it. At DiT's
// MLP sizes the GELU is bound by its arithmetic (the exp polynomial and the sigmoid's reciprocal),
// not by memory, so sixteen lanes and a reciprocal estimate refined by one Newton step (instead of
// a division, whose throughput is several times an FMA's) roughly halve it; the result stays within
// a few float ulps of the AVX2 path. The include comes first, built for the AVX2 baseline; the
// pragma raises the target of everything below it.
#include <immintrin.h>

#include "cpu/activation/gelu_tanh_math.h"

#pragma GCC push_options
#pragma GCC target("avx512f,avx512vl,avx512bw,avx512dq,fma")
#include "cpu/exp2_avx512.h"

namespace ebsparse::gelu_tanh_math {
namespace {

using exp2_avx512::tail_mask;

// s = sigmoid(2 beta (v + kappa v^3)) = 1 / (1 + 2^t), t = v (c1 + c2 v^2) with the sign, 2 beta and
// log2(e) folded into c1 and c2. And v^2.
inline __m512 gate16(__m512 v, __m512* v2) {
  constexpr double kLog2e = 1.44269504088896341;
  *v2 = _mm512_mul_ps(v, v);
  const __m512 c = _mm512_fmadd_ps(_mm512_set1_ps(float(-2 * kBeta * kKappa * kLog2e)), *v2,
                                   _mm512_set1_ps(float(-2 * kBeta * kLog2e)));
  return exp2_avx512::inv_one_plus_exp2_16(_mm512_mul_ps(v, c));
}

inline __m512 value16(__m512 v) {
  __m512 v2;
  return _mm512_mul_ps(v, gate16(v, &v2));
}

// gelu'(v) = s + v s (1 - s) (2 beta + 6 beta kappa v^2), from v, v^2 and s = gate16(v).
inline __m512 slope16_of_gate(__m512 v, __m512 v2, __m512 s) {
  const __m512 vss = _mm512_mul_ps(_mm512_mul_ps(v, s), _mm512_sub_ps(_mm512_set1_ps(1.f), s));
  return _mm512_fmadd_ps(vss, _mm512_fmadd_ps(_mm512_set1_ps(float(6 * kBeta * kKappa)), v2, _mm512_set1_ps(float(2 * kBeta))),
                         s);
}

inline __m512 slope16(__m512 v) {
  __m512 v2;
  const __m512 s = gate16(v, &v2);
  return slope16_of_gate(v, v2, s);
}

// gelu(v), and gelu'(v) in *slope, from one gate.
inline __m512 value_slope16(__m512 v, __m512* slope) {
  __m512 v2;
  const __m512 s = gate16(v, &v2);
  *slope = slope16_of_gate(v, v2, s);
  return _mm512_mul_ps(v, s);
}

}  // namespace

void forward_f32_avx512(const float* x, float* y, int64_t n) {
  int64_t i = 0;
  for (; i + 16 <= n; i += 16) _mm512_storeu_ps(y + i, value16(_mm512_loadu_ps(x + i)));
  if (i < n) {
    const __mmask16 m = tail_mask(n - i);
    _mm512_mask_storeu_ps(y + i, m, value16(_mm512_maskz_loadu_ps(m, x + i)));
  }
}

void backward_f32_avx512(const float* g, const float* x, float* dx, int64_t n) {
  int64_t i = 0;
  for (; i + 16 <= n; i += 16)
    _mm512_storeu_ps(dx + i, _mm512_mul_ps(_mm512_loadu_ps(g + i), slope16(_mm512_loadu_ps(x + i))));
  if (i < n) {
    const __mmask16 m = tail_mask(n - i);
    _mm512_mask_storeu_ps(dx + i, m,
                          _mm512_mul_ps(_mm512_maskz_loadu_ps(m, g + i), slope16(_mm512_maskz_loadu_ps(m, x + i))));
  }
}

void value_slope_f32_avx512(const float* x, float* y, float* slope, int64_t n) {
  int64_t i = 0;
  __m512 dv;
  for (; i + 16 <= n; i += 16) {
    _mm512_storeu_ps(y + i, value_slope16(_mm512_loadu_ps(x + i), &dv));
    _mm512_storeu_ps(slope + i, dv);
  }
  if (i < n) {
    const __mmask16 m = tail_mask(n - i);
    _mm512_mask_storeu_ps(y + i, m, value_slope16(_mm512_maskz_loadu_ps(m, x + i), &dv));
    _mm512_mask_storeu_ps(slope + i, m, dv);
  }
}

void scale_panel_f32_avx512(float* p, const float* slope, int64_t rows, int64_t width, float* sums) {
  for (int64_t r = 0; r < rows; ++r, p += width, slope += width) {
    __m512 acc = _mm512_setzero_ps();
    int64_t i = 0;
    for (; i + 16 <= width; i += 16) {
      const __m512 d = _mm512_mul_ps(_mm512_loadu_ps(p + i), _mm512_loadu_ps(slope + i));
      _mm512_storeu_ps(p + i, d);
      acc = _mm512_add_ps(acc, d);
    }
    if (i < width) {
      const __mmask16 m = tail_mask(width - i);
      const __m512 d = _mm512_mul_ps(_mm512_maskz_loadu_ps(m, p + i), _mm512_maskz_loadu_ps(m, slope + i));
      _mm512_mask_storeu_ps(p + i, m, d);
      acc = _mm512_add_ps(acc, d);
    }
    if (sums) sums[r] += _mm512_reduce_add_ps(acc);
  }
}

void grad_panel_f32_avx512(float* p, const float* h, int64_t rows, int64_t width, float* sums) {
  for (int64_t r = 0; r < rows; ++r, p += width, h += width) {
    __m512 acc = _mm512_setzero_ps();
    int64_t i = 0;
    for (; i + 16 <= width; i += 16) {
      const __m512 d = _mm512_mul_ps(_mm512_loadu_ps(p + i), slope16(_mm512_loadu_ps(h + i)));
      _mm512_storeu_ps(p + i, d);
      acc = _mm512_add_ps(acc, d);
    }
    if (i < width) {
      const __mmask16 m = tail_mask(width - i);
      const __m512 d = _mm512_mul_ps(_mm512_maskz_loadu_ps(m, p + i), slope16(_mm512_maskz_loadu_ps(m, h + i)));
      _mm512_mask_storeu_ps(p + i, m, d);
      acc = _mm512_add_ps(acc, d);
    }
    if (sums) sums[r] += _mm512_reduce_add_ps(acc);
  }
}

}  // namespace ebsparse::gelu_tanh_math

#pragma GCC pop_options
