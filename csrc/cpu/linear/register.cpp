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

std::tuple<at::Tensor, at::Tensor, at::Tensor> csr_linear_backward_cpu(
    const at::Tensor& grad_output, const at::Tensor& input, const at::Tensor& weight,
    const at::Tensor& row_ptr, const at::Tensor& col_idx, bool input_grad, bool weight_grad, bool bias_grad) {
  check_backward_args(grad_output, input, weight, row_ptr, col_idx, "grad_output");
  return csr_linear_backward(grad_output, input, weight, row_ptr, col_idx, input_grad, weight_grad, bias_grad);
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

// One sparse layer of an MLP: weight (M, K) over an input of `in` features, its pattern and bias.
void check_layer(const at::Tensor& input, const at::Tensor& weight, const std::optional<at::Tensor>& bias,
                 const at::Tensor& row_ptr, const at::Tensor& col_idx, int64_t in, const char* w, const char* b,
                 const char* rp, const char* ci) {
  check_same(input, weight, "input", w);
  TORCH_CHECK(weight.dim() == 2 && weight.size(1) == in, w, ": expected (M, ", in, "), got ", weight.sizes());
  check_pattern(row_ptr, col_idx, weight.size(0), rp, ci, input);
  check_pattern_values(row_ptr, col_idx, in, rp, ci);
  if (bias) {
    check_same(input, *bias, "input", b);
    TORCH_CHECK(bias->dim() == 1 && bias->size(0) == weight.size(0), b, ": expected (", weight.size(0), ",), got ",
                bias->sizes());
  }
}

void check_mlp_args(const at::Tensor& input, const at::Tensor& w1, const std::optional<at::Tensor>& b1,
                    const at::Tensor& rp1, const at::Tensor& ci1, const at::Tensor& w2,
                    const std::optional<at::Tensor>& b2, const at::Tensor& rp2, const at::Tensor& ci2) {
  check_float(input, "input");
  TORCH_CHECK(input.dim() == 2, "input: expected (N, K), got ", input.sizes());
  check_layer(input, w1, b1, rp1, ci1, input.size(1), "w1", "b1", "row_ptr1", "col_idx1");
  check_layer(input, w2, b2, rp2, ci2, w1.size(0), "w2", "b2", "row_ptr2", "col_idx2");
}

std::tuple<at::Tensor, at::Tensor> csr_mlp_gelu_tanh_cpu(const at::Tensor& input, const at::Tensor& w1,
                                                         const std::optional<at::Tensor>& b1, const at::Tensor& rp1,
                                                         const at::Tensor& ci1, const at::Tensor& w2,
                                                         const std::optional<at::Tensor>& b2, const at::Tensor& rp2,
                                                         const at::Tensor& ci2) {
  check_mlp_args(input, w1, b1, rp1, ci1, w2, b2, rp2, ci2);
  return csr_mlp_gelu_tanh(input, w1, b1, rp1, ci1, w2, b2, rp2, ci2);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> csr_mlp_gelu_tanh_backward_cpu(
    const at::Tensor& grad_output, const at::Tensor& pre_panels, const at::Tensor& input, const at::Tensor& w1,
    const at::Tensor& rp1, const at::Tensor& ci1, const at::Tensor& w2, const at::Tensor& rp2, const at::Tensor& ci2,
    bool input_grad, bool weight_grad, bool bias1_grad, bool bias2_grad) {
  check_mlp_args(input, w1, std::nullopt, rp1, ci1, w2, std::nullopt, rp2, ci2);
  check_same(input, grad_output, "input", "grad_output");
  TORCH_CHECK(grad_output.dim() == 2 && grad_output.size(0) == input.size(0) && grad_output.size(1) == w2.size(0),
              "grad_output: expected (", input.size(0), ", ", w2.size(0), "), got ", grad_output.sizes());
  check_same(input, pre_panels, "input", "pre_panels");
  const auto expected = csr_mlp_pre_panels_shape(input.size(0), w1.size(0), input.scalar_type());
  TORCH_CHECK(pre_panels.sizes() == at::IntArrayRef(expected), "pre_panels: expected the forward's ", expected,
              " (csr_mlp_gelu_tanh's second output for this input), got ", pre_panels.sizes());
  return csr_mlp_gelu_tanh_backward(grad_output, pre_panels, input, w1, rp1, ci1, w2, rp2, ci2, input_grad,
                                    weight_grad, bias1_grad, bias2_grad);
}

}  // namespace

TORCH_LIBRARY_IMPL(ebsparse, CPU, m) {
  m.impl("csr_linear", &csr_linear_cpu);
  m.impl("csr_linear_grad_input", &csr_linear_grad_input_cpu);
  m.impl("csr_linear_grad_weight", &csr_linear_grad_weight_cpu);
  m.impl("csr_linear_backward", &csr_linear_backward_cpu);
  m.impl("csr_linear_gelu_tanh", &csr_linear_gelu_tanh_cpu);
  m.impl("csr_linear_gelu_tanh_backward", &csr_linear_gelu_tanh_backward_cpu);
  m.impl("csr_mlp_gelu_tanh", &csr_mlp_gelu_tanh_cpu);
  m.impl("csr_mlp_gelu_tanh_backward", &csr_mlp_gelu_tanh_backward_cpu);
}

}  // namespace ebsparse
