// GELU with the tanh approximation (DiT's MLP activation) on the CPU, forward and backward.
// ATen's CPU kernel for it costs ~6x a plain tanh pass at DiT's sizes, which made it the largest
// dense part of a sparse DiT training step. The formulas (the sigmoid form of tanh, float32 eight
// or sixteen lanes at a time) are in gelu_tanh_math.h, shared with the sparse linear kernels that fuse them;
// any shape.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include "cpu/activation/gelu_tanh_math.h"

namespace ebsparse {
namespace {

constexpr int64_t kGrain = 1 << 15;

void check_input(const at::Tensor& x, const char* name) {
  TORCH_CHECK(x.device().is_cpu(), name, ": expected a CPU tensor, got ", x.device());
  TORCH_CHECK(x.scalar_type() == at::kFloat || x.scalar_type() == at::kDouble, name,
              ": expected float32 or float64, got ", x.scalar_type());
}

template <class T>
void forward_kernel(const T* x, T* y, int64_t n) {
  at::parallel_for(0, n, kGrain, [&](int64_t lo, int64_t hi) { gelu_tanh_math::forward_span(x + lo, y + lo, hi - lo); });
}

template <class T>
void backward_kernel(const T* g, const T* x, T* dx, int64_t n) {
  at::parallel_for(0, n, kGrain, [&](int64_t lo, int64_t hi) {
    gelu_tanh_math::backward_span(g + lo, x + lo, dx + lo, hi - lo);
  });
}

at::Tensor gelu_tanh_cpu(const at::Tensor& input) {
  check_input(input, "input");
  const at::Tensor x = input.contiguous();
  at::Tensor y = at::empty_like(x, at::MemoryFormat::Contiguous);
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "gelu_tanh", [&] {
    forward_kernel<scalar_t>(x.const_data_ptr<scalar_t>(), y.data_ptr<scalar_t>(), x.numel());
  });
  return y;
}

at::Tensor gelu_tanh_backward_cpu(const at::Tensor& grad_output, const at::Tensor& input) {
  check_input(input, "input");
  TORCH_CHECK(grad_output.sizes() == input.sizes() && grad_output.scalar_type() == input.scalar_type(),
              "grad_output: expected the input's shape and dtype ", input.sizes(), ", got ", grad_output.sizes());
  const at::Tensor x = input.contiguous(), g = grad_output.contiguous();
  at::Tensor dx = at::empty_like(x, at::MemoryFormat::Contiguous);
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "gelu_tanh_backward", [&] {
    backward_kernel<scalar_t>(g.const_data_ptr<scalar_t>(), x.const_data_ptr<scalar_t>(), dx.data_ptr<scalar_t>(),
                              x.numel());
  });
  return dx;
}

}  // namespace
}  // namespace ebsparse

TORCH_LIBRARY_IMPL(ebsparse, CPU, m) {
  m.impl("gelu_tanh", &ebsparse::gelu_tanh_cpu);
  m.impl("gelu_tanh_backward", &ebsparse::gelu_tanh_backward_cpu);
}
