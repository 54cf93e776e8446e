// group_norm_silu_spans.h's float32 loops for AVX-512, reached only when cpu_capability() chose it.
// The SiLU passes are bound by the sigmoid's arithmetic at a U-Net's sizes (the tensors of a group
// sit in L2), so sixteen lanes and exp2_avx512's reciprocal estimate (no division) roughly halve
// them; the plain sums run four accumulators, or each 16 values would wait on the previous add.
#include <immintrin.h>

#include "cpu/norm/group_norm_silu_spans.h"

#pragma GCC push_options
#pragma GCC target("avx512f,avx512vl,avx512bw,avx512dq,fma")
#include "cpu/exp2_avx512.h"

namespace ebsparse::norm_spans {
namespace {

using exp2_avx512::tail_mask;
constexpr float kMinusLog2e = -1.44269504088896341f;

// What the sums add up per value (functors, not lambdas: GCC compiles a lambda's body without this
// file's target and warns that its vector return changes the ABI).
struct Identity {
  static __m512 of(__m512 v, __m512) { return v; }
};
struct SquaredDeviation {
  static __m512 of(__m512 v, __m512 m) {
    const __m512 d = _mm512_sub_ps(v, m);
    return _mm512_mul_ps(d, d);
  }
};

// Sum over x of F::of(v, m) for v loaded sixteen at a time, in four chains.
template <class F>
inline float sum_of(const float* x, int64_t n, __m512 m) {
  __m512 acc[4] = {_mm512_setzero_ps(), _mm512_setzero_ps(), _mm512_setzero_ps(), _mm512_setzero_ps()};
  int64_t i = 0;
  for (; i + 64 <= n; i += 64)
    for (int k = 0; k < 4; ++k) acc[k] = _mm512_add_ps(acc[k], F::of(_mm512_loadu_ps(x + i + 16 * k), m));
  for (; i + 16 <= n; i += 16) acc[0] = _mm512_add_ps(acc[0], F::of(_mm512_loadu_ps(x + i), m));
  if (i < n) {  // masked lanes keep acc[1]: (0 - m)^2 is not added
    const __mmask16 t = tail_mask(n - i);
    acc[1] = _mm512_mask_add_ps(acc[1], t, acc[1], F::of(_mm512_maskz_loadu_ps(t, x + i), m));
  }
  return _mm512_reduce_add_ps(_mm512_add_ps(_mm512_add_ps(acc[0], acc[1]), _mm512_add_ps(acc[2], acc[3])));
}

inline __m512 silu16(__m512 x, __m512 a, __m512 s) {
  const __m512 z = _mm512_fmadd_ps(a, x, s);
  return _mm512_mul_ps(z, exp2_avx512::inv_one_plus_exp2_16(_mm512_mul_ps(z, _mm512_set1_ps(kMinusLog2e))));
}

// dz = dy sigmoid(z) (1 + z (1 - sigmoid(z))), z = a x + s
inline __m512 silu_grad16(__m512 dy, __m512 x, __m512 a, __m512 s) {
  const __m512 z = _mm512_fmadd_ps(a, x, s);
  const __m512 sg = exp2_avx512::inv_one_plus_exp2_16(_mm512_mul_ps(z, _mm512_set1_ps(kMinusLog2e)));
  const __m512 one = _mm512_set1_ps(1.f);
  return _mm512_mul_ps(_mm512_mul_ps(dy, sg), _mm512_fmadd_ps(z, _mm512_sub_ps(one, sg), one));
}

}  // namespace

float sum_f32_avx512(const float* x, int64_t n) { return sum_of<Identity>(x, n, _mm512_setzero_ps()); }

float squared_deviation_f32_avx512(const float* x, int64_t n, float m) {
  return sum_of<SquaredDeviation>(x, n, _mm512_set1_ps(m));
}

void silu_affine_f32_avx512(const float* x, int64_t n, float a, float s, float* y) {
  const __m512 av = _mm512_set1_ps(a), sv = _mm512_set1_ps(s);
  int64_t i = 0;
  for (; i + 16 <= n; i += 16) _mm512_storeu_ps(y + i, silu16(_mm512_loadu_ps(x + i), av, sv));
  if (i < n) {
    const __mmask16 m = tail_mask(n - i);
    _mm512_mask_storeu_ps(y + i, m, silu16(_mm512_maskz_loadu_ps(m, x + i), av, sv));
  }
}

void silu_affine_grad_f32_avx512(const float* dy, const float* x, int64_t n, float a, float s, float* dz,
                                 float* sum_dz, float* sum_dzx) {
  const __m512 av = _mm512_set1_ps(a), sv = _mm512_set1_ps(s);
  __m512 sd = _mm512_setzero_ps(), sdx = _mm512_setzero_ps();
  int64_t i = 0;
  for (; i + 16 <= n; i += 16) {
    const __m512 xv = _mm512_loadu_ps(x + i);
    const __m512 d = silu_grad16(_mm512_loadu_ps(dy + i), xv, av, sv);
    _mm512_storeu_ps(dz + i, d);
    sd = _mm512_add_ps(sd, d);
    sdx = _mm512_fmadd_ps(d, xv, sdx);
  }
  if (i < n) {  // masked lanes: dy = 0 gives dz = 0
    const __mmask16 m = tail_mask(n - i);
    const __m512 xv = _mm512_maskz_loadu_ps(m, x + i);
    const __m512 d = silu_grad16(_mm512_maskz_loadu_ps(m, dy + i), xv, av, sv);
    _mm512_mask_storeu_ps(dz + i, m, d);
    sd = _mm512_add_ps(sd, d);
    sdx = _mm512_fmadd_ps(d, xv, sdx);
  }
  *sum_dz = _mm512_reduce_add_ps(sd), *sum_dzx = _mm512_reduce_add_ps(sdx);
}

void affine3_f32_avx512(const float* dz, const float* x, int64_t n, float c1, float c2, float c3, float* dx) {
  const __m512 v1 = _mm512_set1_ps(c1), v2 = _mm512_set1_ps(c2), v3 = _mm512_set1_ps(c3);
  int64_t i = 0;
  for (; i + 16 <= n; i += 16)
    _mm512_storeu_ps(dx + i, _mm512_fmadd_ps(v1, _mm512_loadu_ps(dz + i), _mm512_fmadd_ps(v2, _mm512_loadu_ps(x + i), v3)));
  if (i < n) {
    const __mmask16 m = tail_mask(n - i);
    _mm512_mask_storeu_ps(dx + i, m, _mm512_fmadd_ps(v1, _mm512_maskz_loadu_ps(m, dz + i),
                                                     _mm512_fmadd_ps(v2, _mm512_maskz_loadu_ps(m, x + i), v3)));
  }
}

}  // namespace ebsparse::norm_spans

#pragma GCC pop_options
