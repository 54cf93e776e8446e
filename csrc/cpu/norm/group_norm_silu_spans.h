// The inner loops of group_norm_silu.cpp on one contiguous run of values, one thread (`sum` also
// serves the block conv's bias gradient; include this header only from sources built with the base
// flags). float32 runs sixteen lanes at a time where cpu_capability() chose AVX-512
// (group_norm_silu_avx512.cpp); otherwise (AVX2, float64) the `omp simd` loops below, which GCC
// vectorises at the AVX2 baseline.
//   sum(x)                          sum of x
//   squared_deviation(x, m)         sum of (x - m)^2
//   silu_affine(x, a, s, y)         y = z sigmoid(z), z = a x + s
//   silu_affine_grad(dy, x, a, s)   dz = dy sigmoid(z) (1 + z (1 - sigmoid(z))), returning the sums
//                                   of dz and of dz x
//   affine3(dz, x, c1, c2, c3, dx)  dx = c1 dz + c2 x + c3 (dx may be dz)
#pragma once
#include <cstdint>
#include <type_traits>

#include "cpu/capability.h"
#include "cpu/fast_math.h"

namespace ebsparse::norm_spans {

float sum_f32_avx512(const float* x, int64_t n);
float squared_deviation_f32_avx512(const float* x, int64_t n, float m);
void silu_affine_f32_avx512(const float* x, int64_t n, float a, float s, float* y);
void silu_affine_grad_f32_avx512(const float* dy, const float* x, int64_t n, float a, float s, float* dz,
                                 float* sum_dz, float* sum_dzx);
void affine3_f32_avx512(const float* dz, const float* x, int64_t n, float c1, float c2, float c3, float* dx);

// float32 on AVX-512 goes to the functions above, as gelu_tanh_math.h's spans do.
template <class T>
T sum(const T* x, int64_t n) {
  if constexpr (std::is_same_v<T, float>)
    if (cpu_capability() == CpuCapability::kAvx512) return sum_f32_avx512(x, n);
  T s = 0;
#pragma omp simd reduction(+ : s)
  for (int64_t i = 0; i < n; ++i) s += x[i];
  return s;
}

template <class T>
T squared_deviation(const T* x, int64_t n, T m) {
  if constexpr (std::is_same_v<T, float>)
    if (cpu_capability() == CpuCapability::kAvx512) return squared_deviation_f32_avx512(x, n, m);
  T s = 0;
#pragma omp simd reduction(+ : s)
  for (int64_t i = 0; i < n; ++i) s += (x[i] - m) * (x[i] - m);
  return s;
}

template <class T>
void silu_affine(const T* x, int64_t n, T a, T s, T* y) {
  if constexpr (std::is_same_v<T, float>)
    if (cpu_capability() == CpuCapability::kAvx512) return silu_affine_f32_avx512(x, n, a, s, y);
#pragma omp simd
  for (int64_t i = 0; i < n; ++i) {
    const T z = a * x[i] + s;
    y[i] = z * fast_math::sigmoid(z);
  }
}

template <class T>
void silu_affine_grad(const T* dy, const T* x, int64_t n, T a, T s, T* dz, T* sum_dz, T* sum_dzx) {
  if constexpr (std::is_same_v<T, float>)
    if (cpu_capability() == CpuCapability::kAvx512)
      return silu_affine_grad_f32_avx512(dy, x, n, a, s, dz, sum_dz, sum_dzx);
  T sd = 0, sdx = 0;
#pragma omp simd reduction(+ : sd, sdx)
  for (int64_t i = 0; i < n; ++i) {
    const T z = a * x[i] + s;
    const T sg = fast_math::sigmoid(z);
    const T d = dy[i] * sg * (T(1) + z * (T(1) - sg));
    dz[i] = d;
    sd += d;
    sdx += d * x[i];
  }
  *sum_dz = sd, *sum_dzx = sdx;
}

template <class T>
void affine3(const T* dz, const T* x, int64_t n, T c1, T c2, T c3, T* dx) {
  if constexpr (std::is_same_v<T, float>)
    if (cpu_capability() == CpuCapability::kAvx512) return affine3_f32_avx512(dz, x, n, c1, c2, c3, dx);
#pragma omp simd
  for (int64_t i = 0; i < n; ++i) dx[i] = c1 * dz[i] + c2 * x[i] + c3;
}

}  // namespace ebsparse::norm_spans
