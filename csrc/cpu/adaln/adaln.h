// Private to cpu/adaln/: the row kernels of DiT's adaLN ops, one table per element type and
// instruction set (kernels.h holds the bodies; kernels_<isa>.cpp and kernels_f64.cpp compile them).
//
// A call covers `rows` consecutive token rows of one sample, C values each, row-major; shift,
// scale and gate are that sample's C-vectors. The backward kernels add their per-sample sums over
// the rows into caller-zeroed C-vectors (one per task, reduced by the caller in a fixed order).
#pragma once

#include <cstdint>

namespace ebsparse::adaln {

template <class Real>
struct RowKernels {
  // y = (x - mean) * rstd * (1 + scale) + shift per row; writes mean and rstd of each row.
  void (*norm_modulate_forward)(const Real* x, const Real* shift, const Real* scale, Real* y, Real* mean, Real* rstd,
                                int64_t rows, int64_t C, double eps);
  // dx of the above from dy (recomputing xhat = (x - mean) * rstd), and
  // dshift += sum_rows dy, dscale += sum_rows dy * xhat.
  void (*norm_modulate_backward)(const Real* dy, const Real* x, const Real* mean, const Real* rstd,
                                 const Real* scale, Real* dx, Real* dshift, Real* dscale, int64_t rows, int64_t C);
  // out = x + gate * branch.
  void (*gated_forward)(const Real* x, const Real* gate, const Real* branch, Real* out, int64_t rows, int64_t C);
  // dbranch = dout * gate, dgate += sum_rows dout * branch.
  void (*gated_backward)(const Real* dout, const Real* branch, const Real* gate, Real* dbranch, Real* dgate,
                         int64_t rows, int64_t C);
};

const RowKernels<float>& kernels_avx2();
const RowKernels<float>& kernels_avx512();
const RowKernels<double>& kernels_f64();

// The float32 table of cpu_capability(), or the float64 one.
template <class Real>
const RowKernels<Real>& row_kernels();

}  // namespace ebsparse::adaln
