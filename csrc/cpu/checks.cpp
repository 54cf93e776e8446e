// check_pattern_values (checks.h): the value checks of a pattern, once per pattern.
#include "cpu/checks.h"

#include <memory>

#include "cpu/pattern_cache.h"

namespace ebsparse {

void check_pattern_values(const at::Tensor& ptr, const at::Tensor& idx, int64_t cols, const char* ptr_name,
                          const char* idx_name) {
  // One verdict per pattern (CSR or CSC) and column count.
  static PatternCache<bool> passed(2);
  passed.get(ptr, idx, {cols}, [&] {
    // A CUDA pattern is checked on a host copy: one transfer per pattern, not one per call.
    const at::Tensor ptr_host = ptr.cpu(), idx_host = idx.cpu();
    const int32_t* p = ptr_host.const_data_ptr<int32_t>();
    const int32_t* v = idx_host.const_data_ptr<int32_t>();
    const int64_t rows = ptr.numel() - 1;
    TORCH_CHECK(p[0] == 0 && p[rows] == idx.numel(), ptr_name, ": expected to start at 0 and end at ", idx_name,
                ".numel() = ", idx.numel(), ", got ", p[0], " and ", p[rows]);
    for (int64_t r = 0; r < rows; ++r)
      TORCH_CHECK(p[r] <= p[r + 1], ptr_name, ": expected non-decreasing values, got ", p[r], " then ", p[r + 1],
                  " at row ", r);
    for (int64_t r = 0; r < rows; ++r)
      for (int64_t j = p[r]; j < p[r + 1]; ++j) {
        TORCH_CHECK(v[j] >= 0 && v[j] < cols, idx_name, ": expected values in [0, ", cols, "), got ", v[j],
                    " at position ", j);
        TORCH_CHECK(j == p[r] || v[j - 1] < v[j], idx_name, ": expected strictly increasing values within row ", r,
                    " (sorted, no repeats), got ", v[j - 1], " then ", v[j], " at position ", j);
      }
    return std::make_shared<const bool>(true);
  });
}

}  // namespace ebsparse
