// Private to csrc/cpu: elementwise math with no library call in it, so `omp simd` loops that use it
// vectorise (the sigmoid of group_norm_silu, the tanh-GELU of the DiT MLP).
#pragma once
#include <cmath>
#include <cstdint>
#include <cstring>

namespace ebsparse {
namespace {

// exp(x) for float, ~2 ulp, no branches and no calls (vectorisable): 2^(x log2 e) split into an
// integer power set in the exponent bits and a degree-6 polynomial on [-0.5, 0.5]. Inputs are
// clamped to [-87, 88], so exp underflows to ~1e-38 rather than 0 (harmless in a sigmoid).
inline float fast_exp(float x) {
  x = x < -87.f ? -87.f : (x > 88.f ? 88.f : x);
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
inline double fast_exp(double x) { return std::exp(x); }

template <class T>
inline T sigmoid(T z) {
  return T(1) / (T(1) + fast_exp(-z));
}

}  // namespace
}  // namespace ebsparse
