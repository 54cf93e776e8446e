// Building and caching the k-blocked plans of linear sparsity patterns (see linear_plan.h).
#include "linear_plan.h"

#include <c10/util/intrusive_ptr.h>

#include <list>
#include <mutex>

namespace ebsparse::linear_detail {
namespace {

// Entries (row r, column c, source s) listed by `each(emit)` in increasing column order within
// every row, bucketed into (k-block, row) order by a counting sort.
template <typename Each>
void bucket(int64_t rows, int64_t cols, int64_t nnz, Each each, BlockedPattern& out) {
  out.rows = rows;
  out.nkb = std::max<int64_t>(1, ((cols - 1) >> kKbShift) + 1);
  out.bptr.assign(out.nkb * rows + 1, 0);
  out.col.resize(nnz);
  out.src.resize(nnz);
  each([&](int64_t r, int64_t c, int64_t) { ++out.bptr[(c >> kKbShift) * rows + r + 1]; });
  for (int64_t i = 0; i < out.nkb * rows; ++i) out.bptr[i + 1] += out.bptr[i];
  std::vector<int32_t> cursor(out.bptr.begin(), out.bptr.end() - 1);
  each([&](int64_t r, int64_t c, int64_t s) {
    const int32_t e = cursor[(c >> kKbShift) * rows + r]++;
    out.col[e] = int32_t(c);
    out.src[e] = int32_t(s);
  });
}

std::shared_ptr<const LinearPlan> build(const int32_t* rp, const int32_t* ci, int64_t M, int64_t K) {
  auto plan = std::make_shared<LinearPlan>();
  plan->M = M;
  plan->K = K;
  plan->nnz = rp[M];
  // CSR rows in order: within row m the columns are sorted (as ebsparse.formats builds them), so
  // each fwd row lists its columns in order; m ascending lists each gi row's columns (m) in order.
  auto csr = [&](auto emit_rck) {
    for (int64_t m = 0; m < M; ++m)
      for (int32_t j = rp[m]; j < rp[m + 1]; ++j) emit_rck(m, ci[j], j);
  };
  bucket(M, K, plan->nnz, [&](auto emit) { csr([&](int64_t m, int64_t k, int64_t) { emit(m, k, m * K + k); }); },
         plan->fwd);
  bucket(K, M, plan->nnz, [&](auto emit) { csr([&](int64_t m, int64_t k, int64_t j) { emit(k, m, j); }); },
         plan->gi);
  return plan;
}

using WeakImpl = c10::weak_intrusive_ptr<c10::TensorImpl, c10::UndefinedTensorImpl>;

struct CacheEntry {
  WeakImpl row_ptr, col_idx;
  int64_t row_ptr_version, col_idx_version;
  std::shared_ptr<const LinearPlan> plan;

  bool matches(const at::Tensor& rp, const at::Tensor& ci, int64_t M, int64_t K) const {
    return row_ptr._unsafe_get_target() == rp.unsafeGetTensorImpl() &&
           col_idx._unsafe_get_target() == ci.unsafeGetTensorImpl() && !row_ptr.expired() &&
           !col_idx.expired() && row_ptr_version == rp._version() && col_idx_version == ci._version() &&
           plan->M == M && plan->K == K && plan->nnz == ci.numel();
  }
};

// Enough for every sparse linear layer of a model to keep its plan; least recently used first out.
constexpr size_t kCacheSize = 256;

}  // namespace

std::shared_ptr<const LinearPlan> linear_plan(const at::Tensor& row_ptr, const at::Tensor& col_idx,
                                              int64_t M, int64_t K) {
  static std::mutex mutex;
  static std::list<CacheEntry> cache;  // most recently used first
  {
    std::lock_guard<std::mutex> lock(mutex);
    for (auto it = cache.begin(); it != cache.end(); ++it)
      if (it->matches(row_ptr, col_idx, M, K)) {
        cache.splice(cache.begin(), cache, it);
        return it->plan;
      }
  }
  auto plan = build(row_ptr.data_ptr<int32_t>(), col_idx.data_ptr<int32_t>(), M, K);
  std::lock_guard<std::mutex> lock(mutex);
  cache.push_front({WeakImpl(row_ptr.getIntrusivePtr()), WeakImpl(col_idx.getIntrusivePtr()),
                    row_ptr._version(), col_idx._version(), plan});
  if (cache.size() > kCacheSize) cache.pop_back();
  return plan;
}

}  // namespace ebsparse::linear_detail
