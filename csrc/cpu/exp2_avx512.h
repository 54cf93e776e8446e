// Private to csrc/cpu: 2^t and 1 / (1 + 2^t) on sixteen float lanes, the exponential of the sigmoids
// in the AVX-512 translation units (the tanh-GELU's gate, SiLU in group_norm_silu). Include it after
// the file's `#pragma GCC target("avx512f,...")`: it is compiled for the including file's target.
#pragma once
#include <immintrin.h>

namespace ebsparse::exp2_avx512 {
namespace {

// ln(2)^i / i!: the Taylor coefficients of 2^f = e^(f ln 2).
constexpr float exp2_coefficient(int i) {
  double power = 1, factorial = 1;
  for (int j = 1; j <= i; ++j) power *= 0.693147180559945309, factorial *= j;
  return float(power / factorial);
}

// 2^t for t in [-126, 127]: 2^k 2^f with k = round(t), |f| <= 1/2 (Taylor terms to degree 6:
// relative error ~1e-7), the power applied by scalef (no exponent-bit arithmetic).
inline __m512 exp2_16(__m512 t) {
  const __m512 k = _mm512_roundscale_ps(t, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  const __m512 f = _mm512_sub_ps(t, k);
  __m512 p = _mm512_set1_ps(exp2_coefficient(6));
  for (int i = 5; i >= 0; --i) p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(exp2_coefficient(i)));
  return _mm512_scalef_ps(p, k);
}

// 1 / (1 + 2^t) = sigmoid(-t ln 2), t clamped to [-87, 60] log2(e) (fast_math::sigmoid's range, so
// no product with the result is subnormal), by a reciprocal estimate refined by one Newton step
// (a division's throughput is several times an FMA's).
inline __m512 inv_one_plus_exp2_16(__m512 t) {
  constexpr double kLog2e = 1.44269504088896341;
  const __m512 one = _mm512_set1_ps(1.f);
  t = _mm512_min_ps(_mm512_max_ps(t, _mm512_set1_ps(float(-87 * kLog2e))), _mm512_set1_ps(float(60 * kLog2e)));
  const __m512 d = _mm512_add_ps(one, exp2_16(t));
  const __m512 r = _mm512_rcp14_ps(d);                        // relative error < 2^-14
  return _mm512_fmadd_ps(r, _mm512_fnmadd_ps(d, r, one), r);  // r (2 - d r): < 2^-23
}

inline __mmask16 tail_mask(int64_t n) { return __mmask16((1u << n) - 1); }

}  // namespace
}  // namespace ebsparse::exp2_avx512
