// Argument checks shared by the CPU and CUDA registrations. The Python layer validates first with
// friendlier messages; these keep direct torch.ops callers from reaching a kernel with bad input.
#pragma once
#include <ATen/ATen.h>

namespace ebsparse {

inline void check_index(const at::Tensor& t, const char* name, int64_t numel, const at::Tensor& like) {
  TORCH_CHECK(t.dim() == 1 && t.scalar_type() == at::kInt, name, ": expected a 1-D int32 tensor, got ",
              t.scalar_type(), " of shape ", t.sizes());
  TORCH_CHECK(t.is_contiguous(), name, ": expected a contiguous tensor");
  TORCH_CHECK(t.device() == like.device(), name, ": expected device ", like.device(), ", got ", t.device());
  if (numel >= 0) TORCH_CHECK(t.numel() == numel, name, ": expected ", numel, " entries, got ", t.numel());
}

inline void check_pattern(const at::Tensor& ptr, const at::Tensor& idx, int64_t rows, int64_t cols,
                          const char* ptr_name, const char* idx_name, const at::Tensor& like) {
  check_index(ptr, ptr_name, rows + 1, like);
  check_index(idx, idx_name, -1, like);
  (void)cols;
}

inline void check_float(const at::Tensor& t, const char* name) {
  TORCH_CHECK(t.scalar_type() == at::kFloat || t.scalar_type() == at::kDouble, name,
              ": expected float32 or float64, got ", t.scalar_type());
}

inline void check_same(const at::Tensor& a, const at::Tensor& b, const char* name_a, const char* name_b) {
  TORCH_CHECK(a.scalar_type() == b.scalar_type(), name_b, ": expected dtype ", a.scalar_type(),
              " (that of ", name_a, "), got ", b.scalar_type());
  TORCH_CHECK(a.device() == b.device(), name_b, ": expected device ", a.device(), " (that of ", name_a,
              "), got ", b.device());
}

}  // namespace ebsparse
