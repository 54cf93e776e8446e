// CPU registration of the block-sparse ops: argument checks (checks.h), then the kernels of block.cpp.
#include <torch/library.h>

#include "cpu/block/block.h"
#include "cpu/checks.h"

namespace ebsparse {
namespace {

// The weight's channels divide into (bo, bi) blocks, and both block indexes fit it.
void check_blocks(const at::Tensor& weight, int64_t bo, int64_t bi, const at::Tensor& brow_ptr,
                  const at::Tensor& bcol_idx, const at::Tensor* bcol_ptr, const at::Tensor* brow_idx,
                  const at::Tensor& like) {
  TORCH_CHECK(bo >= 1 && bi >= 1, "block: expected positive (bo, bi), got (", bo, ", ", bi, ")");
  TORCH_CHECK(weight.size(0) % bo == 0 && weight.size(1) % bi == 0, "weight: channels (", weight.size(0), ", ",
              weight.size(1), ") are not multiples of the block (", bo, ", ", bi, ")");
  const int64_t rb = weight.size(0) / bo, cb = weight.size(1) / bi;
  check_pattern(brow_ptr, bcol_idx, rb, "brow_ptr", "bcol_idx", like);
  check_pattern_values(brow_ptr, bcol_idx, cb, "brow_ptr", "bcol_idx");
  if (bcol_ptr) {
    check_pattern(*bcol_ptr, *brow_idx, cb, "bcol_ptr", "brow_idx", like);
    check_pattern_values(*bcol_ptr, *brow_idx, rb, "bcol_ptr", "brow_idx");
    TORCH_CHECK(brow_idx->numel() == bcol_idx.numel(), "brow_idx: expected ", bcol_idx.numel(),
                " blocks (as bcol_idx), got ", brow_idx->numel());
  }
}

void check_bias(const std::optional<at::Tensor>& bias, const at::Tensor& input, int64_t out) {
  if (!bias) return;
  check_same(input, *bias, "input", "bias");
  TORCH_CHECK(bias->dim() == 1 && bias->size(0) == out, "bias: expected (", out, ",), got ", bias->sizes());
}

at::Tensor bsr_linear_cpu(const at::Tensor& input, const at::Tensor& weight, const std::optional<at::Tensor>& bias,
                          const at::Tensor& brow_ptr, const at::Tensor& bcol_idx, int64_t bo, int64_t bi) {
  check_float(input, "input");
  check_same(input, weight, "input", "weight");
  TORCH_CHECK(input.dim() == 2, "input: expected (N, K), got ", input.sizes());
  TORCH_CHECK(weight.dim() == 2 && weight.size(1) == input.size(1), "weight: expected (M, ", input.size(1),
              "), got ", weight.sizes());
  check_blocks(weight, bo, bi, brow_ptr, bcol_idx, nullptr, nullptr, input);
  check_bias(bias, input, weight.size(0));
  return bsr_linear(input, weight, bias, brow_ptr, bcol_idx, bo, bi);
}

std::tuple<at::Tensor, at::Tensor> bsr_linear_backward_cpu(
    const at::Tensor& grad_output, const at::Tensor& input, const at::Tensor& weight, const at::Tensor& brow_ptr,
    const at::Tensor& bcol_idx, const at::Tensor& bcol_ptr, const at::Tensor& brow_idx, int64_t bo, int64_t bi,
    bool input_grad, bool weight_grad) {
  check_float(grad_output, "grad_output");
  check_same(grad_output, input, "grad_output", "input");
  check_same(grad_output, weight, "grad_output", "weight");
  TORCH_CHECK(weight.dim() == 2, "weight: expected (M, K), got ", weight.sizes());
  TORCH_CHECK(grad_output.dim() == 2 && grad_output.size(1) == weight.size(0), "grad_output: expected (N, ",
              weight.size(0), "), got ", grad_output.sizes());
  TORCH_CHECK(input.dim() == 2 && input.size(0) == grad_output.size(0) && input.size(1) == weight.size(1),
              "input: expected (", grad_output.size(0), ", ", weight.size(1), "), got ", input.sizes());
  check_blocks(weight, bo, bi, brow_ptr, bcol_idx, &bcol_ptr, &brow_idx, input);
  return bsr_linear_backward(grad_output, input, weight, brow_ptr, bcol_idx, bcol_ptr, brow_idx, bo, bi, input_grad,
                             weight_grad);
}

void check_geometry(at::IntArrayRef stride, at::IntArrayRef padding, at::IntArrayRef dilation) {
  TORCH_CHECK(stride.size() == 2 && stride[0] >= 1 && stride[1] >= 1, "stride: expected two ints >= 1, got ", stride);
  TORCH_CHECK(padding.size() == 2 && padding[0] >= 0 && padding[1] >= 0, "padding: expected two ints >= 0, got ",
              padding);
  TORCH_CHECK(dilation.size() == 2 && dilation[0] >= 1 && dilation[1] >= 1, "dilation: expected two ints >= 1, got ",
              dilation);
}

void check_conv(const at::Tensor& input, const at::Tensor& weight) {
  TORCH_CHECK(input.dim() == 4, "input: expected (N, Ci, H, W), got ", input.sizes());
  TORCH_CHECK(weight.dim() == 4 && weight.size(1) == input.size(1) && weight.size(2) > 0 && weight.size(3) > 0,
              "weight: expected (Co, ", input.size(1), ", KH, KW) with KH, KW >= 1, got ", weight.sizes());
}

at::Tensor bsr_conv2d_cpu(const at::Tensor& input, const at::Tensor& weight, const std::optional<at::Tensor>& bias,
                          const at::Tensor& brow_ptr, const at::Tensor& bcol_idx, int64_t bo, int64_t bi,
                          at::IntArrayRef stride, at::IntArrayRef padding, at::IntArrayRef dilation) {
  check_float(input, "input");
  check_same(input, weight, "input", "weight");
  check_conv(input, weight);
  check_geometry(stride, padding, dilation);
  check_blocks(weight, bo, bi, brow_ptr, bcol_idx, nullptr, nullptr, input);
  check_bias(bias, input, weight.size(0));
  for (int d = 0; d < 2; ++d)
    TORCH_CHECK(input.size(2 + d) + 2 * padding[d] >= dilation[d] * (weight.size(2 + d) - 1) + 1,
                "input: spatial size ", input.sizes(), " too small for the kernel ", weight.sizes());
  return bsr_conv2d(input, weight, bias, brow_ptr, bcol_idx, bo, bi, stride, padding, dilation);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> bsr_conv2d_backward_cpu(
    const at::Tensor& grad_output, const at::Tensor& input, const at::Tensor& weight, const at::Tensor& brow_ptr,
    const at::Tensor& bcol_idx, const at::Tensor& bcol_ptr, const at::Tensor& brow_idx, int64_t bo, int64_t bi,
    at::IntArrayRef stride, at::IntArrayRef padding, at::IntArrayRef dilation, bool input_grad, bool weight_grad,
    bool bias_grad) {
  check_float(grad_output, "grad_output");
  check_same(grad_output, input, "grad_output", "input");
  check_same(grad_output, weight, "grad_output", "weight");
  check_conv(input, weight);
  check_geometry(stride, padding, dilation);
  check_blocks(weight, bo, bi, brow_ptr, bcol_idx, &bcol_ptr, &brow_idx, input);
  for (int d = 0; d < 2; ++d) {
    const int64_t out =
        (input.size(2 + d) + 2 * padding[d] - dilation[d] * (weight.size(2 + d) - 1) - 1) / stride[d] + 1;
    TORCH_CHECK(grad_output.dim() == 4 && grad_output.size(2 + d) == out && grad_output.size(0) == input.size(0) &&
                    grad_output.size(1) == weight.size(0),
                "grad_output: expected (", input.size(0), ", ", weight.size(0), ", Ho, Wo) of the conv's output, got ",
                grad_output.sizes());
  }
  return bsr_conv2d_backward(grad_output, input, weight, brow_ptr, bcol_idx, bcol_ptr, brow_idx, bo, bi, stride,
                             padding, dilation, input_grad, weight_grad, bias_grad);
}

}  // namespace

TORCH_LIBRARY_IMPL(ebsparse, CPU, m) {
  m.impl("bsr_linear", &bsr_linear_cpu);
  m.impl("bsr_linear_backward", &bsr_linear_backward_cpu);
  m.impl("bsr_conv2d", &bsr_conv2d_cpu);
  m.impl("bsr_conv2d_backward", &bsr_conv2d_backward_cpu);
}

}  // namespace ebsparse
