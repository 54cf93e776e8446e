// silu(group_norm(x)) on the CPU in one pass over memory each way: the forward writes only y (no
// normalised tensor for SiLU to read back), and the backward recomputes the normalised value from x
// and the saved statistics instead of reading a stored one, fusing SiLU's backward into the group
// norm's. At a U-Net's sizes a group's values stay in L2 between the passes, so the sigmoid's
// arithmetic bounds both more than memory traffic does.
//
// x (N, C, *) contiguous, C = G * D; the statistics are per (n, g) over D * HW values. float32 and
// float64; the inner loops on one channel or group are group_norm_silu_spans.h's (AVX-512 for float32
// where the CPU has it).
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <vector>

#include "cpu/norm/group_norm_silu_spans.h"

namespace ebsparse {
namespace {

void check_args(const at::Tensor& x, int64_t groups, const std::optional<at::Tensor>& weight,
                const std::optional<at::Tensor>& bias) {
  TORCH_CHECK(x.scalar_type() == at::kFloat || x.scalar_type() == at::kDouble,
              "input: expected float32 or float64, got ", x.scalar_type());
  TORCH_CHECK(x.dim() >= 2, "input: expected (N, C, ...), got ", x.sizes());
  TORCH_CHECK(groups > 0 && x.size(1) % groups == 0, "num_groups: expected a positive divisor of the ",
              x.size(1), " channels, got ", groups);
  for (const auto* t : {&weight, &bias})
    if (*t) {
      const char* name = t == &weight ? "weight" : "bias";
      TORCH_CHECK((*t)->dim() == 1 && (*t)->size(0) == x.size(1), name, ": expected (", x.size(1), ",), got ",
                  (*t)->sizes());
      TORCH_CHECK((*t)->scalar_type() == x.scalar_type() && (*t)->device() == x.device(), name,
                  ": expected the input's dtype and device, got ", (*t)->scalar_type(), " on ", (*t)->device());
    }
}

template <class T>
void forward_kernel(const T* x, const T* gamma, const T* beta, T* y, T* mean_out, T* rstd_out, int64_t N,
                    int64_t C, int64_t G, int64_t HW, double eps) {
  const int64_t D = C / G;
  at::parallel_for(0, N * G, 1, [&](int64_t b0, int64_t b1) {
    for (int64_t ng = b0; ng < b1; ++ng) {
      const int64_t g = ng % G;
      const T* xb = x + ng * D * HW;
      T* yb = y + ng * D * HW;
      const int64_t len = D * HW;
      // Two passes (mean, then squared deviations): as exact as the group is small enough for cache.
      const double mean = double(norm_spans::sum(xb, len)) / double(len);
      const T m = T(mean);
      const double rstd = 1.0 / std::sqrt(double(norm_spans::squared_deviation(xb, len, m)) / double(len) + eps);
      mean_out[ng] = T(mean), rstd_out[ng] = T(rstd);
      for (int64_t d = 0; d < D; ++d) {
        const int64_t c = g * D + d;
        const T a = T(rstd * (gamma ? double(gamma[c]) : 1.0));
        const T s = T((beta ? double(beta[c]) : 0.0) - mean * double(a));
        norm_spans::silu_affine(xb + d * HW, HW, a, s, yb + d * HW);
      }
    }
  });
}

template <class T>
void backward_kernel(const T* dy, const T* x, const T* mean, const T* rstd, const T* gamma, const T* beta, T* dx,
                     T* dgamma_parts, T* dbeta_parts, int64_t N, int64_t C, int64_t G, int64_t HW) {
  const int64_t D = C / G;
  const double inv_len = 1.0 / double(D * HW);
  at::parallel_for(0, N * G, 1, [&](int64_t b0, int64_t b1) {
    for (int64_t ng = b0; ng < b1; ++ng) {
      const int64_t n = ng / G, g = ng % G;
      const double mu = double(mean[ng]), r = double(rstd[ng]);
      double ds = 0, db = 0;  // sum over the group of gamma * dz * x, gamma * dz
      for (int64_t d = 0; d < D; ++d) {
        const int64_t c = g * D + d;
        const double gm = gamma ? double(gamma[c]) : 1.0;
        const T a = T(r * gm), s = T((beta ? double(beta[c]) : 0.0) - mu * r * gm);
        const T* xc = x + (ng * D + d) * HW;
        const T* dyc = dy + (ng * D + d) * HW;
        T* dzc = dx + (ng * D + d) * HW;  // dz (the gradient at the norm's output) until pass 2
        T sum_dz, sum_dzx;
        norm_spans::silu_affine_grad(dyc, xc, HW, a, s, dzc, &sum_dz, &sum_dzx);
        // d(gamma) = sum dz * xhat = (sum dz x - mean sum dz) * rstd; d(beta) = sum dz
        dgamma_parts[n * C + c] = T((double(sum_dzx) - mu * double(sum_dz)) * r);
        dbeta_parts[n * C + c] = sum_dz;
        ds += gm * double(sum_dzx);
        db += gm * double(sum_dz);
      }
      const double c2 = (db * mu - ds) * r * r * r * inv_len;
      const double c3 = -c2 * mu - db * r * inv_len;
      for (int64_t d = 0; d < D; ++d) {
        const int64_t c = g * D + d;
        const T c1 = T(r * (gamma ? double(gamma[c]) : 1.0)), t2 = T(c2), t3 = T(c3);
        const T* xc = x + (ng * D + d) * HW;
        T* dxc = dx + (ng * D + d) * HW;
        norm_spans::affine3(dxc, xc, HW, c1, t2, t3, dxc);
      }
    }
  });
}

int64_t plane(const at::Tensor& x) {
  int64_t hw = 1;
  for (int64_t d = 2; d < x.dim(); ++d) hw *= x.size(d);
  return hw;
}

// (y, mean (N, G), rstd (N, G))
std::tuple<at::Tensor, at::Tensor, at::Tensor> group_norm_silu_cpu(const at::Tensor& input, int64_t groups,
                                                                   const std::optional<at::Tensor>& weight,
                                                                   const std::optional<at::Tensor>& bias,
                                                                   double eps) {
  check_args(input, groups, weight, bias);
  const at::Tensor x = input.contiguous();
  const int64_t N = x.size(0), C = x.size(1), HW = plane(x);
  at::Tensor y = at::empty_like(x);
  at::Tensor mean = at::empty({N, groups}, x.options()), rstd = at::empty({N, groups}, x.options());
  const at::Tensor w = weight ? weight->contiguous() : at::Tensor(), b = bias ? bias->contiguous() : at::Tensor();
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "group_norm_silu", [&] {
    forward_kernel<scalar_t>(x.const_data_ptr<scalar_t>(), w.defined() ? w.const_data_ptr<scalar_t>() : nullptr,
                             b.defined() ? b.const_data_ptr<scalar_t>() : nullptr, y.data_ptr<scalar_t>(),
                             mean.data_ptr<scalar_t>(), rstd.data_ptr<scalar_t>(), N, C, groups, HW, eps);
  });
  return {y, mean, rstd};
}

// (grad_input, grad_weight, grad_bias), the last two of shape (C,) whether or not the layer has a
// weight / bias (the caller drops what it does not need).
std::tuple<at::Tensor, at::Tensor, at::Tensor> group_norm_silu_backward_cpu(
    const at::Tensor& grad_output, const at::Tensor& input, const at::Tensor& mean, const at::Tensor& rstd,
    int64_t groups, const std::optional<at::Tensor>& weight, const std::optional<at::Tensor>& bias) {
  check_args(input, groups, weight, bias);
  TORCH_CHECK(grad_output.sizes() == input.sizes() && grad_output.scalar_type() == input.scalar_type(),
              "grad_output: expected the input's shape and dtype ", input.sizes(), ", got ", grad_output.sizes());
  const at::Tensor x = input.contiguous(), dy = grad_output.contiguous();
  const int64_t N = x.size(0), C = x.size(1), HW = plane(x);
  TORCH_CHECK(mean.numel() == N * groups && rstd.numel() == N * groups, "mean, rstd: expected (", N, ", ", groups,
              ") each");
  at::Tensor dx = at::empty_like(x);
  at::Tensor parts = at::empty({2, N, C}, x.options());
  const at::Tensor w = weight ? weight->contiguous() : at::Tensor(), b = bias ? bias->contiguous() : at::Tensor();
  const at::Tensor m = mean.contiguous(), r = rstd.contiguous();
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "group_norm_silu_backward", [&] {
    backward_kernel<scalar_t>(dy.const_data_ptr<scalar_t>(), x.const_data_ptr<scalar_t>(),
                              m.const_data_ptr<scalar_t>(), r.const_data_ptr<scalar_t>(),
                              w.defined() ? w.const_data_ptr<scalar_t>() : nullptr,
                              b.defined() ? b.const_data_ptr<scalar_t>() : nullptr, dx.data_ptr<scalar_t>(),
                              parts.data_ptr<scalar_t>(), parts.data_ptr<scalar_t>() + N * C, N, C, groups, HW);
  });
  return {dx, parts[0].sum(0), parts[1].sum(0)};  // two tensors of their own: returns must not alias
}

}  // namespace
}  // namespace ebsparse

TORCH_LIBRARY_IMPL(ebsparse, CPU, m) {
  m.impl("fused_group_norm_silu", &ebsparse::group_norm_silu_cpu);
  m.impl("fused_group_norm_silu_backward", &ebsparse::group_norm_silu_backward_cpu);
}
