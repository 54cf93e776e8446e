// Private to csrc/cpu/linear: the k-blocked entry lists of a linear sparsity pattern, built
// once per pattern and cached, so that a training step only gathers the weight values: a call
// finds the plan of its (row_ptr, col_idx) in a PatternCache (pattern_cache.h) and gathers nnz
// values in plan order (one streaming pass) instead of counting, summing and scattering the kept
// positions again.
#pragma once
#include <ATen/ATen.h>
#include <c10/util/intrusive_ptr.h>

#include <cstdint>
#include <memory>
#include <mutex>
#include <vector>

namespace ebsparse::linear_detail {

// The entries of a sparse S (rows, cols) in (k-block, row) order: bptr[b * rows + r] ..
// bptr[b * rows + r + 1] are row r's entries whose column lies in k-block b (columns
// [b << kb_shift, (b + 1) << kb_shift)), in increasing column order. col[e] is the column,
// src[e] where the value comes from (see LinearPlan).
struct BlockedPattern {
  int64_t rows = 0;
  int64_t nkb = 0;
  std::vector<int32_t> bptr;  // nkb * rows + 1
  std::vector<int32_t> col;   // nnz
  std::vector<int32_t> src;   // nnz
};

// The values the last forward of a pattern gathered, and the weight tensor they came from (its
// object, storage and version counter): the backward of the same step, whose weight is that tensor
// unmodified (autograd checks the version of what it saved), reads them instead of reading W again.
// A weight that died, moved or was modified in place never matches. Thread-safe; a published
// values tensor is never written again (each forward stores a new one).
class ForwardValues {
 public:
  void put(const at::Tensor& weight, at::Tensor values);
  // The stored values if `weight` is the tensor they were gathered from, else an undefined tensor.
  at::Tensor get(const at::Tensor& weight) const;

 private:
  using Weak = c10::weak_intrusive_ptr<c10::TensorImpl, c10::UndefinedTensorImpl>;
  mutable std::mutex mutex_;
  Weak weight_{c10::intrusive_ptr<c10::TensorImpl, c10::UndefinedTensorImpl>()};
  const void* data_ = nullptr;
  int64_t version_ = -1;
  at::Tensor values_;
};

// The two views of one (M, K) pattern given by its CSR (row_ptr, col_idx):
//   fwd  S = W o mask (M rows over K columns); src = flat index m * K + k into W, so the forward
//        gathers its values straight from the dense-shaped weight (row-wise, streaming);
//   gi   S = (W o mask)^T (K rows over M columns); src = the entry's position j in CSR order, so
//        grad-input gathers from the compact CSR values (L2-resident) instead of reading W by
//        columns.
struct LinearPlan {
  int64_t M = 0, K = 0, nnz = 0;
  BlockedPattern fwd, gi;
  std::vector<int32_t> gi_from_fwd;  // gi entry e is fwd entry gi_from_fwd[e]
  std::vector<int32_t> fwd_to_gi;    // its inverse: fwd entry e is gi entry fwd_to_gi[e]
  mutable ForwardValues last_forward;  // values in fwd order, from the last forward of this pattern
};

// k-block width (columns per pass over the rows), 2^shift. Sparse rows want wide blocks (each
// (row, k-block) pass re-loads the row's output tile, so a pass needs enough kept weights); dense
// ones want narrow blocks whose panel rows stay in L1: 128 columns from 25% density, 256 from 7.5%,
// 512 below.
inline int k_block_shift(double density) { return density >= 0.25 ? 7 : density >= 0.075 ? 8 : 9; }

// k-block width of the transposed pattern where the fused AVX-512 backward walks it
// (backward_rows_f32_avx512): each kept weight reads a 512-byte panel row (two halves), so denser
// patterns (from 25% density) want half the forward's width, keeping a block's panel rows in L1
// (64 x 512 B); sparser ones keep the forward's.
inline int fused_block_shift(double density) { return density >= 0.25 ? 6 : k_block_shift(density); }

// The cached plan of this pattern (built on first use). Thread-safe.
std::shared_ptr<const LinearPlan> linear_plan(const at::Tensor& row_ptr, const at::Tensor& col_idx,
                                              int64_t M, int64_t K);

}  // namespace ebsparse::linear_detail
