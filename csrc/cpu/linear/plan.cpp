// Building and caching the k-blocked plans of linear sparsity patterns (see plan.h).
#include "cpu/linear/plan.h"

#include "cpu/capability.h"
#include "cpu/pattern_cache.h"

#include <algorithm>

namespace ebsparse::linear_detail {
namespace {

// Entries (row r, column c, source s) listed by `each(emit)` in increasing column order within
// every row, bucketed into (k-block, row) order by a counting sort.
template <typename Each>
void bucket(int64_t rows, int64_t cols, int64_t nnz, int kb_shift, Each each, BlockedPattern& out) {
  out.rows = rows;
  out.nkb = std::max<int64_t>(1, ((cols - 1) >> kb_shift) + 1);
  out.bptr.assign(out.nkb * rows + 1, 0);
  out.col.resize(nnz);
  out.src.resize(nnz);
  each([&](int64_t r, int64_t c, int64_t) { ++out.bptr[(c >> kb_shift) * rows + r + 1]; });
  for (int64_t i = 0; i < out.nkb * rows; ++i) out.bptr[i + 1] += out.bptr[i];
  std::vector<int32_t> cursor(out.bptr.begin(), out.bptr.end() - 1);
  each([&](int64_t r, int64_t c, int64_t s) {
    const int32_t e = cursor[(c >> kb_shift) * rows + r]++;
    out.col[e] = int32_t(c);
    out.src[e] = int32_t(s);
  });
}

std::shared_ptr<const LinearPlan> build(const int32_t* rp, const int32_t* ci, int64_t M, int64_t K) {
  // The pattern passed check_pattern_values (checks.h) before any op reached here.
  auto plan = std::make_shared<LinearPlan>();
  plan->M = M;
  plan->K = K;
  plan->nnz = rp[M];
  // CSR rows in order: within row m the columns are sorted (check_pattern_values), so
  // each fwd row lists its columns in order; m ascending lists each gi row's columns (m) in order.
  auto csr = [&](auto emit_rck) {
    for (int64_t m = 0; m < M; ++m)
      for (int32_t j = rp[m]; j < rp[m + 1]; ++j) emit_rck(m, ci[j], j);
  };
  const double density = double(plan->nnz) / double(std::max<int64_t>(M * K, 1));
  const int kb_shift = k_block_shift(density);
  bucket(M, K, plan->nnz, kb_shift, [&](auto emit) { csr([&](int64_t m, int64_t k, int64_t) { emit(m, k, m * K + k); }); },
         plan->fwd);
  const int gi_shift = cpu_capability() == CpuCapability::kAvx512 ? fused_block_shift(density) : kb_shift;
  bucket(K, M, plan->nnz, gi_shift, [&](auto emit) { csr([&](int64_t m, int64_t k, int64_t j) { emit(k, m, j); }); },
         plan->gi);
  // CSR position j -> fwd position (fwd.src is m * K + k; rows in order), then gi -> fwd.
  std::vector<int32_t> fwd_of_csr(plan->nnz);
  for (int64_t b = 0; b < plan->fwd.nkb; ++b)
    for (int64_t m = 0; m < M; ++m) {
      // Row m's entries of k-block b are a run of its CSR entries, in column order.
      const int32_t e0 = plan->fwd.bptr[b * M + m], e1 = plan->fwd.bptr[b * M + m + 1];
      if (e0 == e1) continue;
      const int32_t* first = std::lower_bound(ci + rp[m], ci + rp[m + 1], plan->fwd.col[e0]);
      for (int32_t e = e0; e < e1; ++e) fwd_of_csr[(first - ci) + (e - e0)] = e;
    }
  plan->gi_from_fwd.resize(plan->nnz);
  plan->fwd_to_gi.resize(plan->nnz);
  for (int64_t e = 0; e < plan->nnz; ++e) {
    plan->gi_from_fwd[e] = fwd_of_csr[plan->gi.src[e]];
    plan->fwd_to_gi[plan->gi_from_fwd[e]] = int32_t(e);
  }
  return plan;
}

}  // namespace

void ForwardValues::put(const at::Tensor& weight, at::Tensor values) {
  std::lock_guard<std::mutex> lock(mutex_);
  weight_ = Weak(weight.getIntrusivePtr());
  data_ = weight.const_data_ptr();
  version_ = weight.is_inference() ? -1 : weight._version();
  values_ = std::move(values);
}

at::Tensor ForwardValues::get(const at::Tensor& weight) const {
  std::lock_guard<std::mutex> lock(mutex_);
  const bool same = weight_._unsafe_get_target() == weight.unsafeGetTensorImpl() && !weight_.expired() &&
                    data_ == weight.const_data_ptr() && !weight.is_inference() && version_ == weight._version() &&
                    values_.defined() && values_.scalar_type() == weight.scalar_type();
  return same ? values_ : at::Tensor();
}

std::shared_ptr<const LinearPlan> linear_plan(const at::Tensor& row_ptr, const at::Tensor& col_idx,
                                              int64_t M, int64_t K) {
  // One plan per pattern (the key holds only its shape).
  static PatternCache<LinearPlan> cache(2);
  return cache.get(row_ptr, col_idx, {M, K, col_idx.numel()}, [&] {
    return build(row_ptr.data_ptr<int32_t>(), col_idx.data_ptr<int32_t>(), M, K);
  });
}

}  // namespace ebsparse::linear_detail
