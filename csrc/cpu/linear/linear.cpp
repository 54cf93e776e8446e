// Sparse linear kernels on the CPU. The weight is the dense-shaped (M, K) tensor; the pattern is
// its CSR (row_ptr, col_idx), from which a plan (plan.h: entry lists in k-blocked order for
// S = W o mask and for its transpose) is built once per pattern and cached.
//
// Forward and grad-input are one operation, out (N, R) = in (N, C) . S^T with S sparse (R, C):
//   forward     R = M, C = K, S = W o mask             (values gathered from W, row-wise)
//   grad-input  R = K, C = M, S = (W o mask)^T         (the transposed plan: a gather, so every
//                                                       thread owns its outputs)
// A sparse row cannot share weight loads between outputs, so the kernel vectorises along the
// batch instead: each thread transposes a block of NB batch rows into a panel P (C, NB) and builds
// the transposed output tile T (R, NB),
//   T[r, :] += S[r, c] * P[c, :]     for every kept (r, c),
// holding T[r, :] in registers while row r's kept weights are walked (spmm.h): one broadcast and
// NB / lanes FMAs with aligned panel loads per kept weight. Columns are split into k-blocks of KB
// columns so that the panel rows one pass over all R rows touches (KB * NB values) stay in L1/L2
// instead of the whole panel; the plan lists the entries in (k-block, row) order so that every
// pass reads them sequentially. KB trades the panel's cache footprint against the per-(row,
// k-block) cost of re-loading T[r, :]; the plan chooses it by density (64 to 512 columns:
// k_block_shift and fused_block_shift in plan.h). Work is parallel over batch blocks (no shared
// outputs), handed out dynamically (tasks.h); with fewer blocks than threads (small N), over
// output rows instead.
//
// Grad-weight is an SDDMM, dW[m, k] = dY^T[m, :] . X^T[k, :] at kept (m, k) only. The batch is
// the reduction, so it is cut into chunks of 2 * NB columns; per chunk, X and dY are transposed
// into L2-resident panels, a row m keeps dY^T[m, chunk] in registers, and the kept X^T rows of one
// k-block are dotted with it 8 at a time (one shared horizontal reduction per 8 outputs). Sums
// accumulate per thread in a compact array in plan order; dW (zeros elsewhere) is written row by
// row at the end. The backward runs both gradients in one pass over the chunks, so dY is
// transposed once for the grad-input SpMM and the SDDMM. With AVX-512 the two also share one walk
// of the transposed pattern (backward_rows_f32_avx512): each kept W[m, k] loads dY^T[m, chunk]
// once for both its grad-input FMAs and its dot product with X^T[k, chunk] (which stays in
// registers for the row), and the partial sums are then in the transposed plan's order (mapped
// back through fwd_to_gi when dW is written).
//
// The MLP's tanh-GELU can ride along (csr_linear_gelu_tanh): the forward writes the pre-activation
// h and a = gelu(h) from each output tile while it is in cache, and the backward forms
// dY = dA * gelu'(h) panel by panel after transposing dA and h (so the (N, M) dY is never written
// to memory or read back), summing the bias gradient from the same panels. At DiT's MLP size the
// activations are several MB, cold in cache by the time a training step's separate elementwise
// passes reach them (measured: fusing saves ~5 ms per block and step on one core, more than the
// same ops save when timed alone, where the GELU's arithmetic dominates).
//
// fp32 runs the kernels of kernels_avx512.cpp or kernels_avx2.cpp, as cpu_capability() chooses
// (a batch of at most 32 rows: the AVX2 set anywhere, pick_kernels_for_rows in driver.h);
// fp64 uses the portable loops below.
#include <ATen/Parallel.h>

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <vector>

#include "ebsparse.h"
#include "cpu/activation/gelu_tanh_math.h"
#include "cpu/capability.h"
#include "cpu/scratch.h"
#include "cpu/linear/driver.h"
#include "cpu/linear/kernels.h"
#include "cpu/linear/plan.h"
#include "cpu/tasks.h"

namespace ebsparse {
namespace {

using namespace linear_detail;

// out (N, R) = in (N, C) . S^T (+ bias), S (R, C) given by a plan pattern and its values.
// act: also write act = gelu(out) (out is then the pre-activation), from the tile (forward only).
template <typename T>
void spmm_transposed(const RowsView<T>& in, int64_t N, int64_t C, int64_t R, const BlockedPattern& S,
                     const T* vals, const T* bias, const Kernels<T>& kern, T* out, T* act = nullptr) {
  const int NB = kern.nb;
  const int64_t nblocks = (N + NB - 1) / NB;
  auto rows = [&](const T* panel, T* tile, int64_t r0, int64_t r1) {
    tile_rows(S, vals, R, r0, r1, panel, bias, kern, tile);
  };
  auto write = [&](T* tile, int64_t n0, int64_t r0, int64_t r1) {
    if (act)
      unpack_tile_gelu(tile, N, R, n0, NB, r0, r1, out, act);
    else
      unpack_tile(tile, N, R, n0, NB, r0, r1, out);
  };
  const int64_t nthreads = at::get_num_threads();
  if (nblocks >= 2 * nthreads) {
    run_tasks(nblocks, [&](int64_t b, int64_t) {
      T* panel = scratch<T>(kPanel, C * NB);
      T* tile = scratch<T>(kTile, R * NB);
      pack_panel(in, N, b * NB, NB, 0, C, panel);
      rows(panel, tile, 0, R);
      write(tile, b * NB, 0, R);
    });
    return;
  }
  // Few batch blocks (small N): one shared panel per block, output rows split between threads.
  T* panel = scratch<T>(kPanel, C * NB);
  T* tile = scratch<T>(kTile, R * NB);
  for (int64_t b = 0; b < nblocks; ++b) {
    at::parallel_for(0, C, 256, [&](int64_t c0, int64_t c1) { pack_panel(in, N, b * NB, NB, c0, c1, panel); });
    at::parallel_for(0, R, 64, [&](int64_t r0, int64_t r1) {
      rows(panel, tile, r0, r1);
      write(tile, b * NB, r0, r1);
    });
  }
}

// y = x (W o mask)^T + b; with act, also act = gelu(y).
template <typename T>
void linear_forward(const at::Tensor& x, const at::Tensor& w, const T* bias, const at::Tensor& rp,
                    const at::Tensor& ci, at::Tensor& y, at::Tensor* act = nullptr) {
  const int64_t N = x.size(0), K = x.size(1), M = w.size(0);
  const auto plan = linear_detail::linear_plan(rp, ci, M, K);
  at::Tensor values = at::empty({plan->nnz}, w.options());
  T* vals = values.data_ptr<T>();
  gather(plan->fwd.src.data(), plan->nnz, w.const_data_ptr<T>(), vals);
  spmm_transposed<T>(rows_view<T>(x), N, K, M, plan->fwd, vals, bias, pick_kernels_for_rows<T>(N),
                     y.data_ptr<T>(), act ? act->data_ptr<T>() : nullptr);
  plan->last_forward.put(w, std::move(values));
}

// Grad-input and grad-weight in one pass over the batch where both are wanted and the batch is
// large enough: each thread transposes its chunks of dY once and uses them for both (the
// grad-input SpMM on the transposed pattern, and the SDDMM against its chunks of X), keeping its
// own partial sums of dW, which the last thread to finish adds up. Small batches run the two
// separately, parallel over output rows instead.
//
// dbias (M,), where given, gets the column sums of dY, from the per-thread path's panels (dY is
// not read again) or from dY in memory. pre_act (the GELU backward prologue): dy is dA, the
// gradient of a = gelu(h) for the contiguous (N, M) pre-activation h = pre_act, and the gradients
// are those of h, dY = dA * gelu'(h). The per-thread path forms dY in its panels; the others (small
// batches, or no dX or dW wanted) make dY once in memory and run as without.
template <typename T>
void linear_backward(const at::Tensor& dy_in, const at::Tensor& x, const at::Tensor& w, int64_t K,
                     const at::Tensor& rp_t, const at::Tensor& ci_t, at::Tensor* dx, at::Tensor* dw,
                     const at::Tensor* pre_act = nullptr, at::Tensor* dbias = nullptr) {
  const int64_t N = dy_in.size(0), M = dy_in.size(1);
  const auto plan = linear_detail::linear_plan(rp_t, ci_t, M, K);
  const Kernels<T> kern = pick_kernels_for_rows<T>(N);
  const int NB = kern.nb;
  const int64_t nnz = plan->nnz;
  const int64_t nch = (N + 2 * NB - 1) / (2 * NB);
  const int64_t nt = at::get_num_threads();
  at::Tensor dy = dy_in;
  const T* pre = pre_act ? pre_act->const_data_ptr<T>() : nullptr;  // null for an empty batch too
  if (pre_act && !((dx || dw) && nch >= 2 * nt)) {
    const at::Tensor da = dy_in.contiguous();
    dy = at::empty({N, M}, da.options());
    const T* g = da.const_data_ptr<T>();
    T* d = dy.data_ptr<T>();
    at::parallel_for(0, N * M, 1 << 15, [&](int64_t lo, int64_t hi) {
      gelu_tanh_math::backward_span(g + lo, pre + lo, d + lo, hi - lo);
    });
    pre = nullptr;
  }
  if (dbias && !((dx || dw) && nch >= 2 * nt)) {
    at::sum_out(*dbias, dy, 0);
    dbias = nullptr;
  }
  if (!dx && !dw) return;
  const RowsView<T> yv = rows_view<T>(dy);
  const RowsView<T> xv = dw ? rows_view<T>(x) : RowsView<T>{nullptr, 0, false};
  const T* gi_vals = dx ? grad_input_values<T>(*plan, w, rp_t, ci_t, kValues2) : nullptr;
  T* dwp = dw ? dw->data_ptr<T>() : nullptr;
  if (nch >= 2 * nt) {
    // Partial sums per task slot (cpu/tasks.h: the same sums on every call); a slot zeroes its
    // grad-weight sums when it starts its first chunk.
    const int64_t slots = task_slots(nch);
    T* part = dw ? scratch<T>(kPartial, slots * nnz) : nullptr;
    T* dxp = dx ? dx->data_ptr<T>() : nullptr;
    std::vector<char> started(slots, 0);
    std::vector<T> bias_part(dbias ? slots * M : 0, T(0));  // small: M values a slot
    // Both gradients through the fused kernel: the partial sums are then in grad-input order.
    const bool fused = dx && dw && kern.backward_rows;
    run_task_slots(nch, slots, [&](int64_t c, int64_t, int64_t slot) {
      T* yt = scratch<T>(kPanel, 2 * M * NB);
      T* acc = dw ? part + slot * nnz : nullptr;
      if (dw && !started[slot]) {
        std::fill(acc, acc + nnz, T(0));
        started[slot] = 1;
      }
      const int64_t n0 = c * 2 * NB;
      pack_panel(yv, N, n0, NB, 0, M, yt);
      pack_panel(yv, N, n0 + NB, NB, 0, M, yt + M * NB);
      if (pre) {  // dY = dA * gelu'(h) in the panels (rows past N: 0 * gelu'(0))
        T* ht = scratch<T>(kPrePanel, 2 * M * NB);
        const RowsView<T> hv{pre, M, false};
        pack_panel(hv, N, n0, NB, 0, M, ht);
        pack_panel(hv, N, n0 + NB, NB, 0, M, ht + M * NB);
        T* bias_acc = dbias ? bias_part.data() + slot * M : nullptr;
        gelu_tanh_math::grad_panel(yt, ht, M, NB, bias_acc);
        gelu_tanh_math::grad_panel(yt + M * NB, ht + M * NB, M, NB, bias_acc);
      } else if (dbias) {
        add_panel_sums(yt, M, NB, bias_part.data() + slot * M);
      }
      chunk_gradients<T>(*plan, gi_vals, M, K, yt, xv, N, n0, dxp, acc, fused, kern);
    });
    // dW row by row (zeros, then the kept positions, summed over the slots' partials), so that
    // every thread writes its own rows and each row is written while it is in cache.
    if (dw) write_weight_grad(plan->fwd, M, K, part, slots, nnz, fused ? plan->fwd_to_gi.data() : nullptr, dwp);
    if (dbias) {
      T* db = dbias->data_ptr<T>();
      for (int64_t m = 0; m < M; ++m) {
        T sum = bias_part[m];
        for (int64_t u = 1; u < slots; ++u) sum += bias_part[u * M + m];
        db[m] = sum;
      }
    }
    return;
  }
  if (dx)
    spmm_transposed<T>(yv, N, M, K, plan->gi, gi_vals, nullptr, kern, dx->data_ptr<T>());
  if (!dw) return;
  // Few chunks: transpose them all once, shared, and split the rows m of dW between the threads.
  T* yt = scratch<T>(kPanel, nch * 2 * M * NB);
  T* xt = scratch<T>(kPanel2, nch * 2 * K * NB);
  at::parallel_for(0, 4 * nch, 1, [&](int64_t t0, int64_t t1) {
    for (int64_t t = t0; t < t1; ++t) {
      const int64_t c = t >> 2, h = (t >> 1) & 1, n0 = (2 * c + h) * NB;
      if (t & 1)
        pack_panel(yv, N, n0, NB, 0, M, yt + (2 * c + h) * M * NB);
      else
        pack_panel(xv, N, n0, NB, 0, K, xt + (2 * c + h) * K * NB);
    }
  });
  T* acc = scratch<T>(kPartial, nnz);
  const int32_t* bp = plan->fwd.bptr.data();
  at::parallel_for(0, M, 16, [&](int64_t m0, int64_t m1) {
    for (int64_t blk = 0; blk < plan->fwd.nkb; ++blk)
      std::fill(acc + bp[blk * M + m0], acc + bp[blk * M + m1], T(0));
    for (int64_t c = 0; c < nch; ++c)
      sddmm_rows(plan->fwd, M, K, yt + c * 2 * M * NB, xt + c * 2 * K * NB, NB, m0, m1, kern, acc);
  });
  write_weight_grad(plan->fwd, M, K, acc, 1, nnz, nullptr, dwp);
}

// Grad-input alone, from the CSC pattern (the op's own arguments): the plan of S = (W o mask)^T is
// that of a forward pattern over (K, M), whose flat sources k * M + m index W^T.
template <typename T>
void grad_input_from_csc(const at::Tensor& dy, const at::Tensor& w, const at::Tensor& cp,
                         const at::Tensor& ri, at::Tensor& dx) {
  const int64_t N = dy.size(0), M = w.size(0), K = w.size(1);
  const auto plan = linear_detail::linear_plan(cp, ri, K, M);
  T* vals = scratch<T>(kValues, plan->nnz);
  // Entry e of row k lies in column m = col[e]: its value is W[m, k]. Walking the rows gives k
  // without dividing the flat source index (two integer divisions per entry cost more than the
  // SpMM's own share of this gather).
  const BlockedPattern& S = plan->fwd;
  const int32_t* bp = S.bptr.data();
  const int32_t* col = S.col.data();
  const T* wp = w.const_data_ptr<T>();
  at::parallel_for(0, K, 64, [&](int64_t k0, int64_t k1) {
    for (int64_t blk = 0; blk < S.nkb; ++blk)
      for (int64_t k = k0; k < k1; ++k)
        for (int32_t e = bp[blk * K + k]; e < bp[blk * K + k + 1]; ++e) vals[e] = wp[int64_t(col[e]) * K + k];
  });
  spmm_transposed<T>(rows_view<T>(dy), N, M, K, plan->fwd, vals, nullptr, pick_kernels_for_rows<T>(N),
                     dx.data_ptr<T>());
}

}  // namespace

at::Tensor csr_linear(const at::Tensor& input, const at::Tensor& weight,
                      const std::optional<at::Tensor>& bias, const at::Tensor& row_ptr,
                      const at::Tensor& col_idx) {
  auto x = packable(input);
  auto w = weight.contiguous();
  auto y = at::empty({x.size(0), w.size(0)}, x.options());
  at::Tensor b = bias ? bias->contiguous() : at::Tensor();
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "csr_linear", [&] {
    linear_forward<scalar_t>(x, w, b.defined() ? b.const_data_ptr<scalar_t>() : nullptr, row_ptr,
                             col_idx, y);
  });
  return y;
}

at::Tensor csr_linear_grad_input(const at::Tensor& grad_output, const at::Tensor& weight,
                                 const at::Tensor& col_ptr, const at::Tensor& row_idx) {
  auto dy = packable(grad_output);
  auto w = weight.contiguous();
  auto dx = at::empty({dy.size(0), w.size(1)}, dy.options());
  AT_DISPATCH_FLOATING_TYPES(dy.scalar_type(), "csr_linear_grad_input", [&] {
    grad_input_from_csc<scalar_t>(dy, w, col_ptr, row_idx, dx);
  });
  return dx;
}

at::Tensor csr_linear_grad_weight(const at::Tensor& grad_output, const at::Tensor& input,
                                  const at::Tensor& row_ptr, const at::Tensor& col_idx) {
  auto dy = packable(grad_output);
  auto x = packable(input);
  auto dw = at::empty({dy.size(1), x.size(1)}, x.options());
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "csr_linear_grad_weight", [&] {
    linear_backward<scalar_t>(dy, x, at::Tensor(), x.size(1), row_ptr, col_idx, nullptr, &dw);
  });
  return dw;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> csr_linear_backward(const at::Tensor& grad_output,
                                                                   const at::Tensor& input,
                                                                   const at::Tensor& weight,
                                                                   const at::Tensor& row_ptr,
                                                                   const at::Tensor& col_idx, bool input_grad,
                                                                   bool weight_grad, bool bias_grad) {
  auto dy = packable(grad_output);
  auto x = packable(input);
  auto w = weight.contiguous();
  // What was not asked for comes back empty (a schema cannot return None).
  at::Tensor dx = at::empty({input_grad ? dy.size(0) : 0, input_grad ? w.size(1) : 0}, dy.options());
  at::Tensor dw = at::empty({weight_grad ? w.size(0) : 0, weight_grad ? w.size(1) : 0}, dy.options());
  at::Tensor db = at::empty({bias_grad ? w.size(0) : 0}, dy.options());
  AT_DISPATCH_FLOATING_TYPES(dy.scalar_type(), "csr_linear_backward", [&] {
    linear_backward<scalar_t>(dy, x, w, w.size(1), row_ptr, col_idx, input_grad ? &dx : nullptr,
                              weight_grad ? &dw : nullptr, nullptr, bias_grad ? &db : nullptr);
  });
  return {dx, dw, db};
}

std::tuple<at::Tensor, at::Tensor> csr_linear_gelu_tanh(const at::Tensor& input, const at::Tensor& weight,
                                                        const std::optional<at::Tensor>& bias,
                                                        const at::Tensor& row_ptr, const at::Tensor& col_idx) {
  auto x = packable(input);
  auto w = weight.contiguous();
  auto pre = at::empty({x.size(0), w.size(0)}, x.options());
  auto act = at::empty_like(pre);
  at::Tensor b = bias ? bias->contiguous() : at::Tensor();
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "csr_linear_gelu_tanh", [&] {
    linear_forward<scalar_t>(x, w, b.defined() ? b.const_data_ptr<scalar_t>() : nullptr, row_ptr,
                             col_idx, pre, &act);
  });
  return {act, pre};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> csr_linear_gelu_tanh_backward(
    const at::Tensor& grad_act, const at::Tensor& pre_act, const at::Tensor& input, const at::Tensor& weight,
    const at::Tensor& row_ptr, const at::Tensor& col_idx, bool input_grad, bool weight_grad, bool bias_grad) {
  auto da = packable(grad_act);
  auto h = pre_act.contiguous();
  auto x = packable(input);
  auto w = weight.contiguous();
  at::Tensor dx = at::empty({input_grad ? da.size(0) : 0, input_grad ? w.size(1) : 0}, da.options());
  at::Tensor dw = at::empty({weight_grad ? w.size(0) : 0, weight_grad ? w.size(1) : 0}, da.options());
  at::Tensor db = at::empty({bias_grad ? w.size(0) : 0}, da.options());
  AT_DISPATCH_FLOATING_TYPES(da.scalar_type(), "csr_linear_gelu_tanh_backward", [&] {
    linear_backward<scalar_t>(da, x, w, w.size(1), row_ptr, col_idx, input_grad ? &dx : nullptr,
                              weight_grad ? &dw : nullptr, &h, bias_grad ? &db : nullptr);
  });
  return {dx, dw, db};
}

}  // namespace ebsparse
