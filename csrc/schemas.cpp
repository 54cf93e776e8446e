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
      "Tensor col_idx, bool input_grad, bool weight_grad) -> (Tensor, Tensor)");
  m.def(
      "csr_conv2d(Tensor input, Tensor weight, Tensor? bias, Tensor row_ptr, Tensor col_idx, "
      "int[2] stride, int[2] padding, int[2] dilation) -> Tensor");
  m.def(
      "csr_conv2d_grad_input(Tensor grad_output, Tensor weight, Tensor col_ptr, Tensor row_idx, "
      "int[4] input_size, int[2] stride, int[2] padding, int[2] dilation) -> Tensor");
  m.def(
      "csr_conv2d_grad_weight(Tensor grad_output, Tensor input, Tensor row_ptr, Tensor col_idx, "
      "int[4] weight_size, int[2] stride, int[2] padding, int[2] dilation) -> Tensor");
  m.def("prune_2_4(Tensor weight) -> Tensor");
  m.def("compress_2_4(Tensor weight, Tensor mask) -> (Tensor, Tensor)");
  m.def("decompress_2_4(Tensor values, Tensor meta) -> Tensor");
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
      "bool input_grad, bool weight_grad) -> (Tensor, Tensor)");
  // The instruction set the fp32 CPU kernels run: "avx2" or "avx512" (cpu/capability.h).
  m.def("cpu_capability() -> str");
}
