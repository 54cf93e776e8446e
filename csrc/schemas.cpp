// Every ebsparse schema lives here; CPU and CUDA files only register implementations.
#include <Python.h>
#include <torch/library.h>

extern "C" {
// Importing ebsparse._C from Python runs the static TORCH_LIBRARY initialisers below; the module
// itself carries no Python functions (the ops are reached through torch.ops.ebsparse).
PyObject* PyInit__C(void) {
  static struct PyModuleDef module_def = {PyModuleDef_HEAD_INIT, "_C", nullptr, -1, nullptr};
  return PyModule_Create(&module_def);
}
}

TORCH_LIBRARY(ebsparse, m) {
  m.def("csr_linear(Tensor input, Tensor weight, Tensor? bias, Tensor row_ptr, Tensor col_idx) -> Tensor");
  m.def("csr_linear_grad_input(Tensor grad_output, Tensor weight, Tensor col_ptr, Tensor row_idx) -> Tensor");
  m.def("csr_linear_grad_weight(Tensor grad_output, Tensor input, Tensor row_ptr, Tensor col_idx) -> Tensor");
  m.def(
      "csr_linear_backward(Tensor grad_output, Tensor input, Tensor weight, Tensor row_ptr, "
      "Tensor col_idx, bool input_grad, bool weight_grad, bool bias_grad=False) -> (Tensor, Tensor, Tensor)");
  m.def(
      "csr_linear_gelu_tanh(Tensor input, Tensor weight, Tensor? bias, Tensor row_ptr, Tensor col_idx) "
      "-> (Tensor, Tensor)");
  m.def(
      "csr_linear_gelu_tanh_backward(Tensor grad_act, Tensor pre_act, Tensor input, Tensor weight, "
      "Tensor row_ptr, Tensor col_idx, bool input_grad, bool weight_grad, bool bias_grad) -> (Tensor, Tensor, Tensor)");
  // fc2(gelu_tanh(fc1(x))) with both layers sparse, one op (cpu/linear/mlp.cpp).
  m.def(
      "csr_mlp_gelu_tanh(Tensor input, Tensor w1, Tensor? b1, Tensor row_ptr1, Tensor col_idx1, Tensor w2, "
      "Tensor? b2, Tensor row_ptr2, Tensor col_idx2) -> (Tensor, Tensor)");
  m.def(
      "csr_mlp_gelu_tanh_backward(Tensor grad_output, Tensor pre_panels, Tensor input, Tensor w1, Tensor row_ptr1, "
      "Tensor col_idx1, Tensor w2, Tensor row_ptr2, Tensor col_idx2, bool input_grad, bool weight_grad, "
      "bool bias1_grad, bool bias2_grad) -> (Tensor, Tensor, Tensor, Tensor, Tensor)");
  m.def(
      "csr_conv2d(Tensor input, Tensor weight, Tensor? bias, Tensor row_ptr, Tensor col_idx, "
      "int[2] stride, int[2] padding, int[2] dilation) -> Tensor");
  m.def(
      "csr_conv2d_grad_input(Tensor grad_output, Tensor weight, Tensor col_ptr, Tensor row_idx, "
      "int[4] input_size, int[2] stride, int[2] padding, int[2] dilation) -> Tensor");
  m.def(
      "csr_conv2d_grad_weight(Tensor grad_output, Tensor input, Tensor row_ptr, Tensor col_idx, "
      "int[4] weight_size, int[2] stride, int[2] padding, int[2] dilation) -> Tensor");
  // (grad_weight, grad_bias): the bias gradient summed by the grad-weight's own pass over grad_output.
  m.def(
      "csr_conv2d_grad_weight_bias(Tensor grad_output, Tensor input, Tensor row_ptr, Tensor col_idx, "
      "int[4] weight_size, int[2] stride, int[2] padding, int[2] dilation) -> (Tensor, Tensor)");
  m.def("prune_2_4(Tensor weight) -> Tensor");
  m.def("compress_2_4(Tensor weight, Tensor mask) -> (Tensor, Tensor)");
  m.def("decompress_2_4(Tensor values, Tensor meta) -> Tensor");
  // Block-sparse attention (layout as CSR of kept key blocks per query block; cpu/attention/).
  m.def(
      "block_attention(Tensor query, Tensor key, Tensor value, Tensor crow, Tensor col, int block_size, "
      "float scale) -> (Tensor, Tensor)");
  m.def(
      "block_attention_backward(Tensor grad_out, Tensor query, Tensor key, Tensor value, Tensor out, "
      "Tensor lse, Tensor crow, Tensor col, int block_size, float scale) -> (Tensor, Tensor, Tensor)");
  // Dense attention in place on a fused (B, N, 3 * H * D) qkv projection (cpu/attention/qkv_attention.cpp).
  // Returns (out, lse, probs); probs is P (B, H, N, N) when save_probs and the kernel keeps it, else empty.
  m.def("qkv_attention(Tensor qkv, int num_heads, float scale, bool save_probs=False) -> (Tensor, Tensor, Tensor)");
  m.def(
      "qkv_attention_backward(Tensor grad_out, Tensor qkv, Tensor lse, Tensor? probs, int num_heads, float scale) "
      "-> Tensor");
  // Which CPU kernel qkv_attention runs for qkv's dtype here: "tiled-avx512" or "blas" (for tests).
  m.def("qkv_attention_cpu_kernel(Tensor qkv) -> str");
  // Block-sparse (BSR) ops: blocks of (bo, bi) along (out, in) channels, shared by every conv tap.
  m.def("bsr_linear(Tensor input, Tensor weight, Tensor? bias, Tensor brow_ptr, Tensor bcol_idx, int bo, int bi) -> Tensor");
  m.def(
      "bsr_linear_backward(Tensor grad_output, Tensor input, Tensor weight, Tensor brow_ptr, Tensor bcol_idx, "
      "Tensor bcol_ptr, Tensor brow_idx, int bo, int bi, bool input_grad, bool weight_grad) -> (Tensor, Tensor)");
  m.def(
      "bsr_conv2d(Tensor input, Tensor weight, Tensor? bias, Tensor brow_ptr, Tensor bcol_idx, int bo, int bi, "
      "int[2] stride, int[2] padding, int[2] dilation) -> Tensor");
  m.def(
      "bsr_conv2d_backward(Tensor grad_output, Tensor input, Tensor weight, Tensor brow_ptr, Tensor bcol_idx, "
      "Tensor bcol_ptr, Tensor brow_idx, int bo, int bi, int[2] stride, int[2] padding, int[2] dilation, "
      "bool input_grad, bool weight_grad, bool bias_grad=False) -> (Tensor, Tensor, Tensor)");
  // The recurrent half of one GRU layer direction (cpu/rnn/gru.cpp), W_hh sparse with its CSR pattern
  // (or dense where no pattern is given): gates_input (L, B, 3H) = x W_ih^T (bias_ih is added here),
  // h0 (B, H) -> (hidden (L, B, H), saved (L, B, 4H)).
  m.def(
      "gru_recurrence(Tensor gates_input, Tensor h0, Tensor weight_hh, Tensor? bias_ih, Tensor? bias_hh, "
      "Tensor? row_ptr, Tensor? col_idx, bool reverse) -> (Tensor, Tensor)");
  // Backward through time from the gradient of every step's hidden state (CSC pattern of W_hh, or
  // none): (grad_gates_input (L, B, 3H), grad_gates_hidden (L, B, 3H), grad_h0 (B, H), grad_bias_ih (3H),
  // grad_bias_hh (3H)).
  m.def(
      "gru_recurrence_backward(Tensor grad_hidden, Tensor h0, Tensor hidden, Tensor saved, Tensor weight_hh, "
      "Tensor? col_ptr, Tensor? row_idx, bool reverse) -> (Tensor, Tensor, Tensor, Tensor, Tensor)");
  // The instruction set the fp32 CPU kernels run: "avx2" or "avx512" (cpu/capability.h).
  m.def("cpu_capability() -> str");
  // silu(group_norm(input)) fused (CPU): (output, mean (N, G), rstd (N, G)); its backward returns
  // (grad_input, grad_weight (C,), grad_bias (C,)).
  m.def("fused_group_norm_silu(Tensor input, int num_groups, Tensor? weight, Tensor? bias, float eps) -> (Tensor, Tensor, Tensor)");
  m.def(
      "fused_group_norm_silu_backward(Tensor grad_output, Tensor input, Tensor mean, Tensor rstd, int num_groups, "
      "Tensor? weight, Tensor? bias) -> (Tensor, Tensor, Tensor)");
  // GELU with the tanh approximation (CPU; cpu/activation/): forward, and the input's gradient.
  m.def("gelu_tanh(Tensor input) -> Tensor");
  m.def("gelu_tanh_backward(Tensor grad_output, Tensor input) -> Tensor");
  // DiT's adaLN ops (CPU; cpu/adaln/): input, branch (B, N, C); shift, scale, gate (B, C).
  // layer_norm_modulate = LayerNorm(input) (no affine) * (1 + scale[:, None]) + shift[:, None]:
  // (output, mean (B, N), rstd (B, N)); its backward returns (grad_input, grad_shift, grad_scale).
  m.def("layer_norm_modulate(Tensor input, Tensor shift, Tensor scale, float eps) -> (Tensor, Tensor, Tensor)");
  m.def(
      "layer_norm_modulate_backward(Tensor grad_output, Tensor input, Tensor mean, Tensor rstd, Tensor scale) "
      "-> (Tensor, Tensor, Tensor)");
  // gated_residual = input + gate[:, None] * branch; its backward returns (grad_branch, grad_gate)
  // (grad_input is grad_output).
  m.def("gated_residual(Tensor input, Tensor gate, Tensor branch) -> Tensor");
  m.def("gated_residual_backward(Tensor grad_output, Tensor gate, Tensor branch) -> (Tensor, Tensor)");
  // gated_residual then layer_norm_modulate on its output, one op (cpu/adaln/): (out, y, mean, rstd).
  m.def(
      "residual_norm_modulate(Tensor input, Tensor gate, Tensor branch, Tensor shift, Tensor scale, float eps) "
      "-> (Tensor, Tensor, Tensor, Tensor)");
  m.def(
      "residual_norm_modulate_backward(Tensor? grad_out, Tensor grad_y, Tensor out, Tensor mean, Tensor rstd, "
      "Tensor scale, Tensor gate, Tensor branch) -> (Tensor, Tensor, Tensor, Tensor, Tensor)");
  // Dropout from a counter-based generator keyed by `seed` (CPU; cpu/activation/dropout.cpp):
  // (output, bit mask uint8 (ceil(numel / 8),)); the backward reads the forward's mask.
  m.def("dropout(Tensor input, float p, int seed) -> (Tensor, Tensor)");
  m.def("dropout_backward(Tensor grad_output, Tensor mask, float p) -> Tensor");
  // [layouts held, layouts built] by the CPU pattern caches of the process (cpu/pattern_cache.h).
  m.def("cpu_pattern_cache_stats() -> int[]");
}
