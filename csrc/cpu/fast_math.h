// Private to csrc/cpu: elementwise functions without library calls, so that `omp simd` loops
// around them vectorise (a call to expf would stop that): the sigmoid of group_norm_silu and of the
// GRU gates, the tanh-GELU of the DiT MLP. float64 keeps the library functions.
#pragma once
#include <cmath>
#include <cstdint>
#include <cstring>

namespace ebsparse::fast_math {

// exp(x) for float, ~2 ulp, no branches and no calls (vectorisable): 2^(x log2 e) split into an
// integer power set in the exponent bits and a degree-6 polynomial on [-0.5, 0.5]. Valid for x in
// [-87, 88] (the result stays a normal float); callers clamp.
inline float exp_in_range(float x) {
  const float t = x * 1.44269504088896341f;
  const float k = (t + 12582912.f) - 12582912.f;  // round to nearest: 1.5 * 2^23 drops the fraction
  const float f = (t - k) * 0.693147180559945309f;  // exp(f), |f| <= ln 2 / 2
  float p = 1.f / 720.f;
  p = p * f + 1.f / 120.f;
  p = p * f + 1.f / 24.f;
  p = p * f + 1.f / 6.f;
  p = p * f + 0.5f;
  p = p * f + 1.f;
  p = p * f + 1.f;
  int32_t bits;
  std::memcpy(&bits, &p, 4);
  bits += static_cast<int32_t>(k) << 23;
  std::memcpy(&p, &bits, 4);
  return p;
}

// exp(x) with x clamped to [-87, 88], so exp underflows to ~1e-38 rather than 0.
inline float fast_exp(float x) { return exp_in_range(x < -87.f ? -87.f : (x > 88.f ? 88.f : x)); }
inline double fast_exp(double x) { return std::exp(x); }

// sigmoid(z), z clamped to [-60, 87]: below -60 the result is sigmoid(-60) = 9e-27 (an absolute
// error no float sum sees), above 87 it is 1. Why not fast_exp's own clamp: GCC if-converts a clamp
// into one whole result per clamped case, computed for every lane and then discarded, e.g.
// z * sigmoid(-88) = z * 6e-39 for SiLU; for an ordinary z that product is subnormal, and every
// subnormal result costs a microcode assist (group_norm_silu's forward ran ~8x slower than with
// flush-to-zero). z * sigmoid(-60) is subnormal only for |z| < 1e-12.
inline float sigmoid(float z) {
  z = z < -60.f ? -60.f : (z > 87.f ? 87.f : z);
  return 1.f / (1.f + exp_in_range(-z));
}
inline double sigmoid(double z) { return 1.0 / (1.0 + std::exp(-z)); }

// tanh through the sigmoid (2 sigma(2z) - 1): absolute error ~1e-7 in float, which is what a
// float tanh near +-1 has anyway; float64 uses std::tanh.
inline float fast_tanh(float z) { return 2.f * sigmoid(2.f * z) - 1.f; }
inline double fast_tanh(double z) { return std::tanh(z); }

}  // namespace ebsparse::fast_math
