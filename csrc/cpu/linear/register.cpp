// CPU registration of the sparse linear ops: argument checks (checks.h), then the kernels of linear.cpp.
#include <torch/library.h>

#include "ebsparse.h"
#include "cpu/checks.h"

namespace ebsparse {
namespace {

void check_forward_args(const at::Tensor& input, const at::Tensor& weight, const std::optional<at::Tensor>& bias,
                        const at::Tensor& row_ptr, const at::Tensor& col_idx) {
  check_float(input, "input");
  check_same(input, weight, "input", "weight");
  TORCH_CHECK(input.dim() == 2, "input: expected (N, K), got ", input.sizes());
  TORCH_CHECK(weight.dim() == 2 && weight.size(1) == input.size(1), "weight: expected (M, ",
              input.size(1), "), got ", weight.sizes());
  check_pattern(row_ptr, col_idx, weight.size(0), "row_ptr", "col_idx", input);
  check_pattern_values(row_ptr, col_idx, weight.size(1), "row_ptr", "col_idx");
  if (bias) {
    check_same(input, *bias, "input", "bias");
    TORCH_CHECK(bias->dim() == 1 && bias->size(0) == weight.size(0), "bias: expected (",
                weight.size(0), ",), got ", bias->sizes());
  }
}

at::Tensor csr_linear_cpu(const at::Tensor& input, const at::Tensor& weight,
                          const std::optional<at::Tensor>& bias, const at::Tensor& row_ptr,
                          const at::Tensor& col_idx) {
  check_forward_args(input, weight, bias, row_ptr, col_idx);
  return csr_linear(input, weight, bias, row_ptr, col_idx);
}

at::Tensor csr_linear_grad_input_cpu(const at::Tensor& grad_output, const at::Tensor& weight,
                                     const at::Tensor& col_ptr, const at::Tensor& row_idx) {
  check_float(grad_output, "grad_output");
  check_same(grad_output, weight, "grad_output", "weight");
  TORCH_CHECK(grad_output.dim() == 2 && weight.dim() == 2 && grad_output.size(1) == weight.size(0),
              "grad_output: expected (N, ", weight.size(0), "), got ", grad_output.sizes());
  check_pattern(col_ptr, row_idx, weight.size(1), "col_ptr", "row_idx", weight);
  check_pattern_values(col_ptr, row_idx, weight.size(0), "col_ptr", "row_idx");
  return csr_linear_grad_input(grad_output, weight, col_ptr, row_idx);
}

at::Tensor csr_linear_grad_weight_cpu(const at::Tensor& grad_output, const at::Tensor& input,
                                      const at::Tensor& row_ptr, const at::Tensor& col_idx) {
  check_float(grad_output, "grad_output");
  check_same(grad_output, input, "grad_output", "input");
  TORCH_CHECK(grad_output.dim() == 2 && input.dim() == 2 && grad_output.size(0) == input.size(0),
              "input: expected (", grad_output.size(0), ", K), got ", input.sizes());
  check_pattern(row_ptr, col_idx, grad_output.size(1), "row_ptr", "col_idx", input);
  check_pattern_values(row_ptr, col_idx, input.size(1), "row_ptr", "col_idx");
  return csr_linear_grad_weight(grad_output, input, row_ptr, col_idx);
}

// grad_output (named `name`: the gradient of the linear's output or of its activation), input and
// weight of one backward.
void check_backward_args(const at::Tensor& grad_output, const at::Tensor& input, const at::Tensor& weight,
                         const at::Tensor& row_ptr, const at::Tensor& col_idx, const char* name) {
  check_float(grad_output, name);
  check_same(grad_output, input, name, "input");
  check_same(grad_output, weight, name, "weight");
  TORCH_CHECK(weight.dim() == 2, "weight: expected (M, K), got ", weight.sizes());
  TORCH_CHECK(grad_output.dim() == 2 && grad_output.size(1) == weight.size(0),
              name, ": expected (N, ", weight.size(0), "), got ", grad_output.sizes());
  TORCH_CHECK(input.dim() == 2 && input.size(0) == grad_output.size(0) && input.size(1) == weight.size(1),
              "input: expected (", grad_output.size(0), ", ", weight.size(1), "), got ", input.sizes());
  check_pattern(row_ptr, col_idx, weight.size(0), "row_ptr", "col_idx", input);
  check_pattern_values(row_ptr, col_idx, weight.size(1), "row_ptr", "col_idx");
}

std::tuple<at::Tensor, at::Tensor> csr_linear_backward_cpu(
    const at::Tensor& grad_output, const at::Tensor& input, const at::Tensor& weight,
    const at::Tensor& row_ptr, const at::Tensor& col_idx, bool input_grad, bool weight_grad) {
  check_backward_args(grad_output, input, weight, row_ptr, col_idx, "grad_output");
  return csr_linear_backward(grad_output, input, weight, row_ptr, col_idx, input_grad, weight_grad);
}

std::tuple<at::Tensor, at::Tensor> csr_linear_gelu_tanh_cpu(const at::Tensor& input, const at::Tensor& weight,
                                                            const std::optional<at::Tensor>& bias,
                                                            const at::Tensor& row_ptr, const at::Tensor& col_idx) {
  check_forward_args(input, weight, bias, row_ptr, col_idx);
  return csr_linear_gelu_tanh(input, weight, bias, row_ptr, col_idx);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> csr_linear_gelu_tanh_backward_cpu(
    const at::Tensor& grad_act, const at::Tensor& pre_act, const at::Tensor& input, const at::Tensor& weight,
    const at::Tensor& row_ptr, const at::Tensor& col_idx, bool input_grad, bool weight_grad, bool bias_grad) {
  check_backward_args(grad_act, input, weight, row_ptr, col_idx, "grad_act");
  check_same(grad_act, pre_act, "grad_act", "pre_act");
  TORCH_CHECK(pre_act.sizes() == grad_act.sizes(), "pre_act: expected the shape of grad_act ", grad_act.sizes(),
              ", got ", pre_act.sizes());
  return csr_linear_gelu_tanh_backward(grad_act, pre_act, input, weight, row_ptr, col_idx, input_grad, weight_grad,
                                       bias_grad);
}

}  // namespace

TORCH_LIBRARY_IMPL(ebsparse, CPU, m) {
  m.impl("csr_linear", &csr_linear_cpu);
  m.impl("csr_linear_grad_input", &csr_linear_grad_input_cpu);
  m.impl("csr_linear_grad_weight", &csr_linear_grad_weight_cpu);
  m.impl("csr_linear_backward", &csr_linear_backward_cpu);
  m.impl("csr_linear_gelu_tanh", &csr_linear_gelu_tanh_cpu);
  m.impl("csr_linear_gelu_tanh_backward", &csr_linear_gelu_tanh_backward_cpu);
}

}  // namespace ebsparse
