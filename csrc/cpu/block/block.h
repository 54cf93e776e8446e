// Entry points of the block-sparse (BSR) CPU kernels (block.cpp), registered in register.cpp.
//
// Pattern layout (built once per mask version by ebsparse/formats/block.py): the weight's (out, in)
// channel plane is cut into (bo x bi) blocks, each shared by every (kh, kw) tap of a convolution.
//   block CSR  brow_ptr (out / bo + 1, int32), bcol_idx (nnzb, int32, sorted within each block row)
//   block CSC  bcol_ptr (in / bi + 1, int32), brow_idx (nnzb, int32, sorted within each block column)
// The dense-shaped weight is read at the kept blocks only (packed per call), so dropped weights
// contribute exactly zero whatever they hold.
#pragma once
#include <ATen/ATen.h>

#include <optional>
#include <tuple>

namespace ebsparse {

// Y (N, M) = X (N, K) . (W o mask)^T + bias
at::Tensor bsr_linear(const at::Tensor& input, const at::Tensor& weight, const std::optional<at::Tensor>& bias,
                      const at::Tensor& brow_ptr, const at::Tensor& bcol_idx, int64_t bo, int64_t bi);
// (dX, dW): dW dense-shaped, zero off the kept blocks; each empty (0, 0) unless asked for.
std::tuple<at::Tensor, at::Tensor> bsr_linear_backward(const at::Tensor& grad_output, const at::Tensor& input,
                                                       const at::Tensor& weight, const at::Tensor& brow_ptr,
                                                       const at::Tensor& bcol_idx, const at::Tensor& bcol_ptr,
                                                       const at::Tensor& brow_idx, int64_t bo, int64_t bi,
                                                       bool input_grad, bool weight_grad);
at::Tensor bsr_conv2d(const at::Tensor& input, const at::Tensor& weight, const std::optional<at::Tensor>& bias,
                      const at::Tensor& brow_ptr, const at::Tensor& bcol_idx, int64_t bo, int64_t bi,
                      at::IntArrayRef stride, at::IntArrayRef padding, at::IntArrayRef dilation);
// (grad_input, grad_weight, grad_bias), each empty unless asked for; grad_bias is grad_output summed
// over (N, Ho, Wo), from the grad-weight's pass over grad_output when weight_grad is also asked.
std::tuple<at::Tensor, at::Tensor, at::Tensor> bsr_conv2d_backward(
    const at::Tensor& grad_output, const at::Tensor& input, const at::Tensor& weight, const at::Tensor& brow_ptr,
    const at::Tensor& bcol_idx, const at::Tensor& bcol_ptr, const at::Tensor& brow_idx, int64_t bo, int64_t bi,
    at::IntArrayRef stride, at::IntArrayRef padding, at::IntArrayRef dilation, bool input_grad, bool weight_grad,
    bool bias_grad);

}  // namespace ebsparse
