// adaln.h's row kernels (kernels.h) for float64, the reference precision: one lane at a time
// through a scalar adapter with simd_vec.h's interface (GCC vectorises what it can).
#include <algorithm>
#include <cmath>
#include <cstdint>

#include "cpu/adaln/adaln.h"

namespace ebsparse::adaln::f64 {
namespace {

struct Scalar {
  using T = double;
  static constexpr int W = 1;
  static inline T zero() { return 0.0; }
  static inline T loadu(const double* p) { return *p; }
  static inline void storeu(double* p, T v) { *p = v; }
  static inline T bcast(double x) { return x; }
  static inline T fma(T a, T b, T c) { return a * b + c; }
  static inline T add(T a, T b) { return a + b; }
  static inline T sub(T a, T b) { return a - b; }
  static inline T mul(T a, T b) { return a * b; }
  static inline double hsum(T v) { return v; }
};

}  // namespace

using Vec = Scalar;
using Real = double;

#include "cpu/adaln/kernels.h"

}  // namespace ebsparse::adaln::f64

namespace ebsparse::adaln {
const RowKernels<double>& kernels_f64() { return f64::kTable; }
}  // namespace ebsparse::adaln
