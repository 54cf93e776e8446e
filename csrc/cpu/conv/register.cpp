// CPU registration of the sparse conv2d ops: argument checks (checks.h), then the kernels of conv.cpp.
#include <torch/library.h>

#include "ebsparse.h"
#include "cpu/checks.h"

namespace ebsparse {
namespace {

void check_conv_args(at::IntArrayRef stride, at::IntArrayRef padding, at::IntArrayRef dilation) {
  TORCH_CHECK(stride.size() == 2 && stride[0] > 0 && stride[1] > 0, "stride: expected two positive ints, got ", stride);
  TORCH_CHECK(padding.size() == 2 && padding[0] >= 0 && padding[1] >= 0, "padding: expected two non-negative ints, got ", padding);
  TORCH_CHECK(dilation.size() == 2 && dilation[0] > 0 && dilation[1] > 0, "dilation: expected two positive ints, got ", dilation);
}

at::Tensor csr_conv2d_cpu(const at::Tensor& input, const at::Tensor& weight,
                          const std::optional<at::Tensor>& bias, const at::Tensor& row_ptr,
                          const at::Tensor& col_idx, at::IntArrayRef stride, at::IntArrayRef padding,
                          at::IntArrayRef dilation) {
  check_float(input, "input");
  check_same(input, weight, "input", "weight");
  TORCH_CHECK(input.dim() == 4, "input: expected (N, C, H, W), got ", input.sizes());
  TORCH_CHECK(weight.dim() == 4 && weight.size(1) == input.size(1) && weight.size(2) > 0 && weight.size(3) > 0,
              "weight: expected (Co, ", input.size(1), ", KH, KW) with KH, KW >= 1, got ", weight.sizes());
  check_conv_args(stride, padding, dilation);
  check_pattern(row_ptr, col_idx, weight.size(0), "row_ptr", "col_idx", input);
  check_pattern_values(row_ptr, col_idx, weight.size(1) * weight.size(2) * weight.size(3), "row_ptr", "col_idx");
  if (bias) {
    check_same(input, *bias, "input", "bias");
    TORCH_CHECK(bias->dim() == 1 && bias->size(0) == weight.size(0), "bias: expected (",
                weight.size(0), ",), got ", bias->sizes());
  }
  return csr_conv2d(input, weight, bias, row_ptr, col_idx, stride, padding, dilation);
}

at::Tensor csr_conv2d_grad_input_cpu(const at::Tensor& grad_output, const at::Tensor& weight,
                                     const at::Tensor& col_ptr, const at::Tensor& row_idx,
                                     at::IntArrayRef input_size, at::IntArrayRef stride,
                                     at::IntArrayRef padding, at::IntArrayRef dilation) {
  check_float(grad_output, "grad_output");
  check_same(grad_output, weight, "grad_output", "weight");
  TORCH_CHECK(weight.dim() == 4 && weight.size(2) > 0 && weight.size(3) > 0,
              "weight: expected (Co, Ci, KH, KW) with KH, KW >= 1, got ", weight.sizes());
  TORCH_CHECK(grad_output.dim() == 4 && grad_output.size(1) == weight.size(0),
              "grad_output: expected (N, ", weight.size(0), ", Ho, Wo), got ", grad_output.sizes());
  TORCH_CHECK(input_size.size() == 4 && input_size[1] == weight.size(1), "input_size: expected (N, ",
              weight.size(1), ", H, W), got ", input_size);
  check_conv_args(stride, padding, dilation);
  check_pattern(col_ptr, row_idx, weight.size(1) * weight.size(2) * weight.size(3), "col_ptr", "row_idx", weight);
  check_pattern_values(col_ptr, row_idx, weight.size(0), "col_ptr", "row_idx");
  return csr_conv2d_grad_input(grad_output, weight, col_ptr, row_idx, input_size, stride, padding, dilation);
}

void check_grad_weight_args(const at::Tensor& grad_output, const at::Tensor& input, const at::Tensor& row_ptr,
                            const at::Tensor& col_idx, at::IntArrayRef weight_size, at::IntArrayRef stride,
                            at::IntArrayRef padding, at::IntArrayRef dilation) {
  check_float(grad_output, "grad_output");
  check_same(grad_output, input, "grad_output", "input");
  TORCH_CHECK(grad_output.dim() == 4 && input.dim() == 4 && grad_output.size(0) == input.size(0),
              "input: expected (", grad_output.size(0), ", C, H, W), got ", input.sizes());
  TORCH_CHECK(weight_size.size() == 4 && weight_size[0] == grad_output.size(1) &&
                  weight_size[1] == input.size(1) && weight_size[2] > 0 && weight_size[3] > 0,
              "weight_size: expected (", grad_output.size(1), ", ", input.size(1), ", KH, KW) with KH, KW >= 1, got ",
              weight_size);
  check_conv_args(stride, padding, dilation);
  check_pattern(row_ptr, col_idx, weight_size[0], "row_ptr", "col_idx", input);
  check_pattern_values(row_ptr, col_idx, weight_size[1] * weight_size[2] * weight_size[3], "row_ptr", "col_idx");
}

at::Tensor csr_conv2d_grad_weight_cpu(const at::Tensor& grad_output, const at::Tensor& input,
                                      const at::Tensor& row_ptr, const at::Tensor& col_idx,
                                      at::IntArrayRef weight_size, at::IntArrayRef stride,
                                      at::IntArrayRef padding, at::IntArrayRef dilation) {
  check_grad_weight_args(grad_output, input, row_ptr, col_idx, weight_size, stride, padding, dilation);
  return csr_conv2d_grad_weight(grad_output, input, row_ptr, col_idx, weight_size, stride, padding, dilation);
}

std::tuple<at::Tensor, at::Tensor> csr_conv2d_grad_weight_bias_cpu(const at::Tensor& grad_output,
                                                                   const at::Tensor& input, const at::Tensor& row_ptr,
                                                                   const at::Tensor& col_idx,
                                                                   at::IntArrayRef weight_size,
                                                                   at::IntArrayRef stride, at::IntArrayRef padding,
                                                                   at::IntArrayRef dilation) {
  check_grad_weight_args(grad_output, input, row_ptr, col_idx, weight_size, stride, padding, dilation);
  return csr_conv2d_grad_weight_bias(grad_output, input, row_ptr, col_idx, weight_size, stride, padding, dilation);
}

}  // namespace

TORCH_LIBRARY_IMPL(ebsparse, CPU, m) {
  m.impl("csr_conv2d", &csr_conv2d_cpu);
  m.impl("csr_conv2d_grad_input", &csr_conv2d_grad_input_cpu);
  m.impl("csr_conv2d_grad_weight", &csr_conv2d_grad_weight_cpu);
  m.impl("csr_conv2d_grad_weight_bias", &csr_conv2d_grad_weight_bias_cpu);
}

}  // namespace ebsparse
