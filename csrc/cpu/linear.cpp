// Sparse linear kernels on the CPU (CSR over the (M, K) weight, read in place).
// PLACEHOLDER scalar loops: correct, parallel, not yet fast.
#include <ATen/Parallel.h>

#include "../ebsparse.h"

namespace ebsparse {

at::Tensor csr_linear(const at::Tensor& input, const at::Tensor& weight,
                      const std::optional<at::Tensor>& bias, const at::Tensor& row_ptr,
                      const at::Tensor& col_idx) {
  auto x = input.contiguous();
  auto w = weight.contiguous();
  const int64_t N = x.size(0), K = x.size(1), M = w.size(0);
  auto y = at::empty({N, M}, x.options());
  const int32_t* rp = row_ptr.data_ptr<int32_t>();
  const int32_t* ci = col_idx.data_ptr<int32_t>();
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "csr_linear", [&] {
    const scalar_t* xp = x.data_ptr<scalar_t>();
    const scalar_t* wp = w.data_ptr<scalar_t>();
    const scalar_t* bp = bias ? bias->contiguous().data_ptr<scalar_t>() : nullptr;
    scalar_t* yp = y.data_ptr<scalar_t>();
    at::parallel_for(0, N, 1, [&](int64_t n0, int64_t n1) {
      for (int64_t n = n0; n < n1; ++n)
        for (int64_t m = 0; m < M; ++m) {
          scalar_t acc = bp ? bp[m] : scalar_t(0);
          for (int32_t j = rp[m]; j < rp[m + 1]; ++j) acc += wp[m * K + ci[j]] * xp[n * K + ci[j]];
          yp[n * M + m] = acc;
        }
    });
  });
  return y;
}

at::Tensor csr_linear_grad_input(const at::Tensor& grad_output, const at::Tensor& weight,
                                 const at::Tensor& col_ptr, const at::Tensor& row_idx) {
  auto dy = grad_output.contiguous();
  auto w = weight.contiguous();
  const int64_t N = dy.size(0), M = w.size(0), K = w.size(1);
  auto dx = at::empty({N, K}, dy.options());
  const int32_t* cp = col_ptr.data_ptr<int32_t>();
  const int32_t* ri = row_idx.data_ptr<int32_t>();
  AT_DISPATCH_FLOATING_TYPES(dy.scalar_type(), "csr_linear_grad_input", [&] {
    const scalar_t* dyp = dy.data_ptr<scalar_t>();
    const scalar_t* wp = w.data_ptr<scalar_t>();
    scalar_t* dxp = dx.data_ptr<scalar_t>();
    at::parallel_for(0, N, 1, [&](int64_t n0, int64_t n1) {
      for (int64_t n = n0; n < n1; ++n)
        for (int64_t k = 0; k < K; ++k) {
          scalar_t acc = 0;
          for (int32_t j = cp[k]; j < cp[k + 1]; ++j) acc += wp[ri[j] * K + k] * dyp[n * M + ri[j]];
          dxp[n * K + k] = acc;
        }
    });
  });
  return dx;
}

at::Tensor csr_linear_grad_weight(const at::Tensor& grad_output, const at::Tensor& input,
                                  const at::Tensor& row_ptr, const at::Tensor& col_idx) {
  auto dy = grad_output.contiguous();
  auto x = input.contiguous();
  const int64_t N = x.size(0), K = x.size(1), M = dy.size(1);
  auto dw = at::zeros({M, K}, x.options());
  const int32_t* rp = row_ptr.data_ptr<int32_t>();
  const int32_t* ci = col_idx.data_ptr<int32_t>();
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "csr_linear_grad_weight", [&] {
    const scalar_t* dyp = dy.data_ptr<scalar_t>();
    const scalar_t* xp = x.data_ptr<scalar_t>();
    scalar_t* dwp = dw.data_ptr<scalar_t>();
    at::parallel_for(0, M, 1, [&](int64_t m0, int64_t m1) {
      for (int64_t m = m0; m < m1; ++m)
        for (int32_t j = rp[m]; j < rp[m + 1]; ++j) {
          scalar_t acc = 0;
          for (int64_t n = 0; n < N; ++n) acc += dyp[n * M + m] * xp[n * K + ci[j]];
          dwp[m * K + ci[j]] = acc;
        }
    });
  });
  return dw;
}

}  // namespace ebsparse
