// Private to csrc/cpu: the tanh-GELU formulas on a contiguous run of values, one thread, shared by
// the standalone gelu_tanh op (gelu_tanh.cpp) and the sparse linear kernels that fuse it into their
// output tile or their grad_output panels (linear/linear.cpp). With tanh(z) = 2 sigmoid(2z) - 1,
//   y = x * s,  s = sigmoid(2z),  z = sqrt(2/pi) (x + 0.044715 x^3),
//   dy/dx = s + x s (1 - s) 2 sqrt(2/pi) (1 + 3 * 0.044715 x^2),
// float32 sixteen lanes at a time where cpu_capability() chose AVX-512 (gelu_tanh_avx512.cpp), else
// eight (AVX2 + FMA: every source is built with -mavx2 -mfma); float64 lane by lane (the reference
// precision).
#pragma once
#include <immintrin.h>

#include <cstdint>
#include <initializer_list>
#include <type_traits>

#include "cpu/capability.h"
#include "cpu/fast_math.h"

namespace ebsparse::gelu_tanh_math {

constexpr double kBeta = 0.7978845608028654;  // sqrt(2 / pi)
constexpr double kKappa = 0.044715;

// One lane (the scalar tails and float64).
template <class T>
inline T value(T v) {
  return v * fast_math::sigmoid(T(2 * kBeta) * (v + T(kKappa) * v * v * v));
}
template <class T>
inline T slope(T v) {
  const T v2 = v * v, s = fast_math::sigmoid(T(2 * kBeta) * (v + T(kKappa) * v2 * v));
  return s + v * s * (T(1) - s) * T(2 * kBeta) * (T(1) + T(3 * kKappa) * v2);
}

// Eight float lanes: GCC does not vectorise the scalar loop (the exp's clamp is control flow to
// it), so the float path is written out.
inline __m256 exp8(__m256 x) {  // fast_math::fast_exp, lane-wise
  x = _mm256_min_ps(_mm256_max_ps(x, _mm256_set1_ps(-87.f)), _mm256_set1_ps(88.f));
  const __m256 t = _mm256_mul_ps(x, _mm256_set1_ps(1.44269504088896341f));
  const __m256 k = _mm256_round_ps(t, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  const __m256 f = _mm256_mul_ps(_mm256_sub_ps(t, k), _mm256_set1_ps(0.693147180559945309f));
  __m256 p = _mm256_set1_ps(1.f / 720.f);
  for (const float c : {1.f / 120.f, 1.f / 24.f, 1.f / 6.f, 0.5f, 1.f, 1.f}) p = _mm256_fmadd_ps(p, f, _mm256_set1_ps(c));
  const __m256i e = _mm256_slli_epi32(_mm256_cvtps_epi32(k), 23);
  return _mm256_castsi256_ps(_mm256_add_epi32(_mm256_castps_si256(p), e));
}
inline __m256 sigmoid8(__m256 z) {
  const __m256 one = _mm256_set1_ps(1.f);
  return _mm256_div_ps(one, _mm256_add_ps(one, exp8(_mm256_sub_ps(_mm256_setzero_ps(), z))));
}
// s = sigmoid(2 beta (v + kappa v^3)) of 8 lanes, and v^2.
inline __m256 gate8(__m256 v, __m256* v2) {
  *v2 = _mm256_mul_ps(v, v);
  const __m256 inner = _mm256_fmadd_ps(_mm256_mul_ps(_mm256_set1_ps(float(kKappa)), *v2), v, v);
  return sigmoid8(_mm256_mul_ps(_mm256_set1_ps(float(2 * kBeta)), inner));
}
inline __m256 value8(__m256 v) {
  __m256 v2;
  return _mm256_mul_ps(v, gate8(v, &v2));
}
// gelu'(v) = s + v s (1 - s) 2 beta (1 + 3 kappa v^2), from v, v^2 and s = gate8(v).
inline __m256 slope8_of_gate(__m256 v, __m256 v2, __m256 s) {
  const __m256 one = _mm256_set1_ps(1.f);
  const __m256 ss = _mm256_mul_ps(_mm256_mul_ps(v, s), _mm256_sub_ps(one, s));
  return _mm256_fmadd_ps(_mm256_mul_ps(ss, _mm256_set1_ps(float(2 * kBeta))),
                         _mm256_fmadd_ps(_mm256_set1_ps(float(3 * kKappa)), v2, one), s);
}
inline __m256 slope8(__m256 v) {
  __m256 v2;
  const __m256 s = gate8(v, &v2);
  return slope8_of_gate(v, v2, s);
}

// The AVX-512 float32 spans (gelu_tanh_avx512.cpp): forward_span, backward_span and grad_panel below.
void forward_f32_avx512(const float* x, float* y, int64_t n);
void backward_f32_avx512(const float* g, const float* x, float* dx, int64_t n);
void grad_panel_f32_avx512(float* p, const float* h, int64_t rows, int64_t width, float* sums);
void value_slope_f32_avx512(const float* x, float* y, float* slope, int64_t n);
void scale_panel_f32_avx512(float* p, const float* slope, int64_t rows, int64_t width, float* sums);

// y[i] = gelu(x[i]) for i < n (y may be x).
template <class T>
inline void forward_span(const T* x, T* y, int64_t n) {
  int64_t i = 0;
  if constexpr (std::is_same_v<T, float>) {
    if (cpu_capability() == CpuCapability::kAvx512) return forward_f32_avx512(x, y, n);
    for (; i + 8 <= n; i += 8) _mm256_storeu_ps(y + i, value8(_mm256_loadu_ps(x + i)));
  }
  for (; i < n; ++i) y[i] = value(x[i]);
}

// dx[i] = g[i] * gelu'(x[i]) for i < n (dx may be g).
template <class T>
inline void backward_span(const T* g, const T* x, T* dx, int64_t n) {
  int64_t i = 0;
  if constexpr (std::is_same_v<T, float>) {
    if (cpu_capability() == CpuCapability::kAvx512) return backward_f32_avx512(g, x, dx, n);
    for (; i + 8 <= n; i += 8)
      _mm256_storeu_ps(dx + i, _mm256_mul_ps(_mm256_loadu_ps(g + i), slope8(_mm256_loadu_ps(x + i))));
  }
  for (; i < n; ++i) dx[i] = g[i] * slope(x[i]);
}

// p[r * width + i] *= gelu'(h[r * width + i]) for r < rows, i < width, and sums[r] += the new row
// r of p where sums is given (the backward of a GELU on a transposed panel, and its column sums).
template <class T>
inline void grad_panel(T* p, const T* h, int64_t rows, int64_t width, T* sums) {
  if constexpr (std::is_same_v<T, float>) {
    if (cpu_capability() == CpuCapability::kAvx512) return grad_panel_f32_avx512(p, h, rows, width, sums);
  }
  for (int64_t r = 0; r < rows; ++r, p += width, h += width) {
    int64_t i = 0;
    T sum = 0;
    if constexpr (std::is_same_v<T, float>) {
      __m256 acc = _mm256_setzero_ps();
      for (; i + 8 <= width; i += 8) {
        const __m256 d = _mm256_mul_ps(_mm256_loadu_ps(p + i), slope8(_mm256_loadu_ps(h + i)));
        _mm256_storeu_ps(p + i, d);
        acc = _mm256_add_ps(acc, d);
      }
      __m128 q = _mm_add_ps(_mm256_castps256_ps128(acc), _mm256_extractf128_ps(acc, 1));
      q = _mm_add_ps(q, _mm_movehl_ps(q, q));
      sum = _mm_cvtss_f32(_mm_add_ss(q, _mm_movehdup_ps(q)));
    }
    for (; i < width; ++i) {
      p[i] *= slope(h[i]);
      sum += p[i];
    }
    if (sums) sums[r] += sum;
  }
}

// y[i] = gelu(x[i]) and slope[i] = gelu'(x[i]) for i < n: both from one evaluation of the
// sigmoid, for a backward that needs the activation now and its slope later.
template <class T>
inline void value_slope_span(const T* x, T* y, T* slope, int64_t n) {
  int64_t i = 0;
  if constexpr (std::is_same_v<T, float>) {
    if (cpu_capability() == CpuCapability::kAvx512) return value_slope_f32_avx512(x, y, slope, n);
    for (; i + 8 <= n; i += 8) {
      const __m256 v = _mm256_loadu_ps(x + i);
      __m256 v2;
      const __m256 s = gate8(v, &v2);
      _mm256_storeu_ps(y + i, _mm256_mul_ps(v, s));
      _mm256_storeu_ps(slope + i, slope8_of_gate(v, v2, s));
    }
  }
  for (; i < n; ++i) {
    y[i] = value(x[i]);
    slope[i] = gelu_tanh_math::slope(x[i]);
  }
}

// p[r * width + i] *= slope[r * width + i] for r < rows, i < width, and sums[r] += the new row r of
// p where sums is given: grad_panel with the slopes already made (value_slope_span).
template <class T>
inline void scale_panel(T* p, const T* slope, int64_t rows, int64_t width, T* sums) {
  if constexpr (std::is_same_v<T, float>) {
    if (cpu_capability() == CpuCapability::kAvx512) return scale_panel_f32_avx512(p, slope, rows, width, sums);
  }
  for (int64_t r = 0; r < rows; ++r, p += width, slope += width) {
    T sum = 0;
#pragma omp simd reduction(+ : sum)
    for (int64_t i = 0; i < width; ++i) {
      p[i] *= slope[i];
      sum += p[i];
    }
    if (sums) sums[r] += sum;
  }
}

}  // namespace ebsparse::gelu_tanh_math
