// Kernel entry points shared by the schema file, the CPU and the CUDA registrations.
//
// Pattern layout (built once per mask change by ebsparse/formats, never on the hot path):
//   the weight is viewed as a 2-D matrix W of shape (M, K): for linear (out, in), for conv
//   (out_channels, in_channels * kh * kw). The dense-shaped weight tensor is read in place at the
//   kept positions, so no values array is gathered per step.
//   CSR  row_ptr (M + 1, int32), col_idx (nnz, int32, sorted within each row)
//   CSC  col_ptr (K + 1, int32), row_idx (nnz, int32, sorted within each column)
#pragma once
#include <ATen/ATen.h>
#include <optional>
#include <tuple>
#include <vector>

namespace ebsparse {

// ---- linear: Y (N, M) = X (N, K) . (W o mask)^T + bias ------------------------------------------
at::Tensor csr_linear(const at::Tensor& input, const at::Tensor& weight,
                      const std::optional<at::Tensor>& bias, const at::Tensor& row_ptr,
                      const at::Tensor& col_idx);
// dX (N, K) = dY (N, M) . (W o mask)
at::Tensor csr_linear_grad_input(const at::Tensor& grad_output, const at::Tensor& weight,
                                 const at::Tensor& col_ptr, const at::Tensor& row_idx);
// dW (M, K): dW[m, k] = sum_n dY[n, m] X[n, k] at kept (m, k), zero elsewhere (SDDMM).
at::Tensor csr_linear_grad_weight(const at::Tensor& grad_output, const at::Tensor& input,
                                  const at::Tensor& row_ptr, const at::Tensor& col_idx);
// Both gradients in one pass over grad_output (CPU): (dX, dW, dbias = column sums of dY), each empty
// (0, 0) / (0,) unless asked for.
std::tuple<at::Tensor, at::Tensor, at::Tensor> csr_linear_backward(const at::Tensor& grad_output,
                                                                   const at::Tensor& input,
                                                                   const at::Tensor& weight,
                                                                   const at::Tensor& row_ptr,
                                                                   const at::Tensor& col_idx, bool input_grad,
                                                                   bool weight_grad, bool bias_grad);
// The MLP's fc1 + tanh-GELU (CPU): (act, pre) with pre = X . (W o mask)^T + bias (N, M), act = gelu(pre).
std::tuple<at::Tensor, at::Tensor> csr_linear_gelu_tanh(const at::Tensor& input, const at::Tensor& weight,
                                                        const std::optional<at::Tensor>& bias,
                                                        const at::Tensor& row_ptr, const at::Tensor& col_idx);
// Its backward from grad_act = dL/dact and pre: with dY = grad_act * gelu'(pre), (dX, dW, dbias =
// column sums of dY), each empty unless asked for.
std::tuple<at::Tensor, at::Tensor, at::Tensor> csr_linear_gelu_tanh_backward(
    const at::Tensor& grad_act, const at::Tensor& pre_act, const at::Tensor& input, const at::Tensor& weight,
    const at::Tensor& row_ptr, const at::Tensor& col_idx, bool input_grad, bool weight_grad, bool bias_grad);

// The MLP fc2(gelu_tanh(fc1(x))) with sparse fc1 (M1, K1) and fc2 (M2, M1) in one op (CPU; mlp.cpp):
// (y (N, M2), pre_panels), where pre_panels keeps fc1's pre-activation for the backward in the
// kernels' panel layout, shaped csr_mlp_pre_panels_shape(N, M1, dtype).
std::vector<int64_t> csr_mlp_pre_panels_shape(int64_t rows, int64_t hidden, at::ScalarType dtype);
std::tuple<at::Tensor, at::Tensor> csr_mlp_gelu_tanh(const at::Tensor& input, const at::Tensor& w1,
                                                     const std::optional<at::Tensor>& b1, const at::Tensor& rp1,
                                                     const at::Tensor& ci1, const at::Tensor& w2,
                                                     const std::optional<at::Tensor>& b2, const at::Tensor& rp2,
                                                     const at::Tensor& ci2);
// Its backward: (dX, dW1, db1, dW2, db2), each empty unless asked for (weight_grad: both weights).
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> csr_mlp_gelu_tanh_backward(
    const at::Tensor& grad_output, const at::Tensor& pre_panels, const at::Tensor& input, const at::Tensor& w1,
    const at::Tensor& rp1, const at::Tensor& ci1, const at::Tensor& w2, const at::Tensor& rp2, const at::Tensor& ci2,
    bool input_grad, bool weight_grad, bool bias1_grad, bool bias2_grad);

// ---- conv2d (groups = 1): weight (Co, Ci, KH, KW), input (N, Ci, H, W) ------------------------------
at::Tensor csr_conv2d(const at::Tensor& input, const at::Tensor& weight,
                      const std::optional<at::Tensor>& bias, const at::Tensor& row_ptr,
                      const at::Tensor& col_idx, at::IntArrayRef stride, at::IntArrayRef padding,
                      at::IntArrayRef dilation);
at::Tensor csr_conv2d_grad_input(const at::Tensor& grad_output, const at::Tensor& weight,
                                 const at::Tensor& col_ptr, const at::Tensor& row_idx,
                                 at::IntArrayRef input_size, at::IntArrayRef stride,
                                 at::IntArrayRef padding, at::IntArrayRef dilation);
at::Tensor csr_conv2d_grad_weight(const at::Tensor& grad_output, const at::Tensor& input,
                                  const at::Tensor& row_ptr, const at::Tensor& col_idx,
                                  at::IntArrayRef weight_size, at::IntArrayRef stride,
                                  at::IntArrayRef padding, at::IntArrayRef dilation);
// csr_conv2d_grad_weight and the bias gradient (grad_output summed over N, Ho, Wo) from one pass.
std::tuple<at::Tensor, at::Tensor> csr_conv2d_grad_weight_bias(const at::Tensor& grad_output,
                                                               const at::Tensor& input, const at::Tensor& row_ptr,
                                                               const at::Tensor& col_idx,
                                                               at::IntArrayRef weight_size, at::IntArrayRef stride,
                                                               at::IntArrayRef padding, at::IntArrayRef dilation);

// ---- 2:4 semi-structured ------------------------------------------------------------------------
// Mask keeping the 2 largest-magnitude of every 4 consecutive weights along the last dim of the
// (M, K) view (ties broken towards the lower index).
at::Tensor prune_2_4(const at::Tensor& weight);
// values (M, K/2) and meta (M, K/4) uint8: bits 0-1 the first kept position of the group, bits 2-3
// the second (first < second).
std::tuple<at::Tensor, at::Tensor> compress_2_4(const at::Tensor& weight, const at::Tensor& mask);
at::Tensor decompress_2_4(const at::Tensor& values, const at::Tensor& meta);

}  // namespace ebsparse
