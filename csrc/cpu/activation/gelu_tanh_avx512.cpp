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

namespace ebsparse::gelu_tanh_math {
namespace {

// exp(x) for x in [-87, 88]: 2^k exp(f), the power applied by scalef (no exponent-bit arithmetic).
inline __m512 exp16(__m512 x) {
  const __m512 t = _mm512_mul_ps(x, _mm512_set1_ps(1.44269504088896341f));
  const __m512 k = _mm512_roundscale_ps(t, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  const __m512 f = _mm512_mul_ps(_mm512_sub_ps(t, k), _mm512_set1_ps(0.693147180559945309f));
  __m512 p = _mm512_set1_ps(1.f / 720.f);
  for (const float c : {1.f / 120.f, 1.f / 24.f, 1.f / 6.f, 0.5f, 1.f, 1.f}) p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(c));
  return _mm512_scalef_ps(p, k);
}

// sigmoid(z) with z clamped to [-60, 87] (fast_math::sigmoid's range: no subnormal products).
inline __m512 sigmoid16(__m512 z) {
  const __m512 one = _mm512_set1_ps(1.f);
  z = _mm512_min_ps(_mm512_max_ps(z, _mm512_set1_ps(-60.f)), _mm512_set1_ps(87.f));
  const __m512 d = _mm512_add_ps(one, exp16(_mm512_sub_ps(_mm512_setzero_ps(), z)));
  const __m512 r = _mm512_rcp14_ps(d);                   // relative error < 2^-14
  return _mm512_fmadd_ps(r, _mm512_fnmadd_ps(d, r, one), r);  // r (2 - d r): < 2^-23
}

// s = sigmoid(2 beta (v + kappa v^3)), and v^2.
inline __m512 gate16(__m512 v, __m512* v2) {
  *v2 = _mm512_mul_ps(v, v);
  const __m512 inner = _mm512_fmadd_ps(_mm512_mul_ps(_mm512_set1_ps(float(kKappa)), *v2), v, v);
  return sigmoid16(_mm512_mul_ps(_mm512_set1_ps(float(2 * kBeta)), inner));
}

inline __m512 value16(__m512 v) {
  __m512 v2;
  return _mm512_mul_ps(v, gate16(v, &v2));
}

// gelu'(v) = s + v s (1 - s) 2 beta (1 + 3 kappa v^2), from v, v^2 and s = gate16(v).
inline __m512 slope16_of_gate(__m512 v, __m512 v2, __m512 s) {
  const __m512 one = _mm512_set1_ps(1.f);
  const __m512 ss = _mm512_mul_ps(_mm512_mul_ps(v, s), _mm512_sub_ps(one, s));
  return _mm512_fmadd_ps(_mm512_mul_ps(ss, _mm512_set1_ps(float(2 * kBeta))),
                         _mm512_fmadd_ps(_mm512_set1_ps(float(3 * kKappa)), v2, one), s);
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

inline __mmask16 tail_mask(int64_t n) { return __mmask16((1u << n) - 1); }

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
