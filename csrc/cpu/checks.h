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

// The pattern's tensors: 1-D int32, contiguous, on like's device, ptr with rows + 1 entries. Their
// values are checked by check_pattern_values before a kernel reads them.
inline void check_pattern(const at::Tensor& ptr, const at::Tensor& idx, int64_t rows, const char* ptr_name,
                          const char* idx_name, const at::Tensor& like) {
  check_index(ptr, ptr_name, rows + 1, like);
  check_index(idx, idx_name, -1, like);
}

// The one rule for a pattern's values, CPU and CUDA alike: every op checks all of them before any
// kernel reads one (a kernel indexes the weight, its copies and its gradient by them), and a pattern
// that passed is remembered while its tensors live unmodified, so a training step pays the O(nnz)
// walk (and, for CUDA, one copy to the host) once per mask change rather than on every call.
// Checked: ptr starts at 0, never decreases and ends at idx.numel(); within each row (column of a
// CSC) idx strictly increases and lies in [0, cols). For tensors that passed check_pattern.
void check_pattern_values(const at::Tensor& ptr, const at::Tensor& idx, int64_t cols, const char* ptr_name,
                          const char* idx_name);

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
