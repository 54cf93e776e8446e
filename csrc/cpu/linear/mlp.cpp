// A transformer MLP with sparse layers, y = fc2(gelu_tanh(fc1(x))), as one op on the CPU.
//
// The linear kernels (linear.cpp) compute each layer on transposed panels of NB batch rows and
// transpose the output tile back to the row-major (N, M) activation. Between fc1 and fc2 that
// round trip is pure overhead: fc1's tile of a block of rows, H^T (M1, NB), is already the
// transposed panel fc2 reads, once the GELU is applied. So a thread takes a block of rows through
// both layers; the pre-activation is kept for the backward in that panel layout ("pre panels",
// (blocks, M1, NB), opaque outside this file) instead of as (N, M1) h and gelu(h) tensors. The
// backward likewise takes a chunk of 2 * NB rows through fc2's gradients, whose grad-input tile is
// dA^T, forms dH^T = dA^T * gelu'(H^T) in place, and hands it to fc1's gradients as their dY
// panels. Per MLP and step this skips writing and re-reading gelu(h) and dA (each N x M1) and four
// transposes of N x M1 activations (at DiT-S/2's MLP, N = 2048 and M1 = 1536: 12.6 MB each).
//
// Chunks are the parallel unit (run_task_slots); each task slot keeps its own grad-weight partial
// sums of both layers, added up at the end as in linear.cpp.
#include <ATen/Parallel.h>

#include <algorithm>
#include <vector>

#include "ebsparse.h"
#include "cpu/activation/gelu_tanh_math.h"
#include "cpu/linear/driver.h"
#include "cpu/tasks.h"

namespace ebsparse {
namespace {

using namespace linear_detail;

// One sparse layer of the MLP: W (M, K) and its CSR pattern.
struct Layer {
  const at::Tensor& weight;
  const at::Tensor& row_ptr;
  const at::Tensor& col_idx;
};

// Batch blocks of NB rows the pre panels hold: an even number, so that backward chunk c reads
// blocks 2c (lo) and 2c + 1 (hi).
int64_t pre_blocks(int64_t N, int NB) { return 2 * ((N + 2 * NB - 1) / (2 * NB)); }

template <typename T>
void mlp_forward(const at::Tensor& x, const Layer& fc1, const T* b1, const Layer& fc2, const T* b2, T* y, T* pre) {
  const int64_t N = x.size(0), K1 = x.size(1), M1 = fc1.weight.size(0), M2 = fc2.weight.size(0);
  const auto plan1 = linear_plan(fc1.row_ptr, fc1.col_idx, M1, K1);
  const auto plan2 = linear_plan(fc2.row_ptr, fc2.col_idx, M2, M1);
  at::Tensor values1 = at::empty({plan1->nnz}, fc1.weight.options());
  at::Tensor values2 = at::empty({plan2->nnz}, fc2.weight.options());
  const T* v1 = values1.data_ptr<T>();
  const T* v2 = values2.data_ptr<T>();
  gather(plan1->fwd.src.data(), plan1->nnz, fc1.weight.const_data_ptr<T>(), values1.data_ptr<T>());
  gather(plan2->fwd.src.data(), plan2->nnz, fc2.weight.const_data_ptr<T>(), values2.data_ptr<T>());
  const Kernels<T> kern = pick_kernels<T>();
  const int NB = kern.nb;
  const int64_t nblocks = (N + NB - 1) / NB;
  const RowsView<T> xv = rows_view<T>(x);
  run_tasks(nblocks, [&](int64_t b, int64_t) {
    T* panel = scratch<T>(kPanel, K1 * NB);
    pack_panel(xv, N, b * NB, NB, 0, K1, panel);
    T* h = pre + b * M1 * NB;  // fc1's tile, written where the backward will read it
    tile_rows(plan1->fwd, v1, M1, 0, M1, panel, b1, kern, h);
    T* a = scratch<T>(kPanel2, M1 * NB);
    gelu_tanh_math::forward_span(h, a, M1 * NB);
    T* tile = scratch<T>(kTile, M2 * NB);
    tile_rows(plan2->fwd, v2, M2, 0, M2, a, b2, kern, tile);
    unpack_tile(tile, N, M2, b * NB, NB, 0, M2, y);
  });
  // The last chunk's hi block when the blocks are odd: rows past N, zero (finite for gelu').
  const int64_t total = pre_blocks(N, NB);
  std::fill(pre + nblocks * M1 * NB, pre + total * M1 * NB, T(0));
  plan1->last_forward.put(fc1.weight, std::move(values1));
  plan2->last_forward.put(fc2.weight, std::move(values2));
}

// Per-slot accumulators of one layer's parameter gradients, summed when every chunk is done.
template <typename T>
struct LayerGrads {
  int64_t nnz = 0, M = 0;
  T* part = nullptr;         // slots x nnz grad-weight partial sums (null: no weight gradient)
  std::vector<T> bias_part;  // slots x M (empty: no bias gradient)
  bool fused = false;        // part in the transposed plan's order
};

template <typename T>
void write_grads(const LinearPlan& plan, const LayerGrads<T>& g, const std::vector<char>& started, at::Tensor* dw,
                 at::Tensor* db) {
  const int64_t slots = int64_t(started.size());
  if (g.part) {
    for (int64_t u = 0; u < slots; ++u)  // a slot without chunks (an empty batch)
      if (!started[u]) std::fill(g.part + u * g.nnz, g.part + (u + 1) * g.nnz, T(0));
    write_weight_grad(plan.fwd, plan.M, plan.K, g.part, slots, g.nnz, g.fused ? plan.fwd_to_gi.data() : nullptr,
                      dw->data_ptr<T>());
  }
  if (db) {
    T* out = db->data_ptr<T>();
    for (int64_t m = 0; m < g.M; ++m) {
      T sum = 0;
      for (int64_t u = 0; u < slots; ++u) sum += g.bias_part[u * g.M + m];
      out[m] = sum;
    }
  }
}

// dx (N, K1) where given; dw1, dw2 where given (both or neither), db1, db2 where given.
template <typename T>
void mlp_backward(const at::Tensor& dy_in, const T* pre, const at::Tensor& x, const Layer& fc1, const Layer& fc2,
                  at::Tensor* dx, at::Tensor* dw1, at::Tensor* db1, at::Tensor* dw2, at::Tensor* db2) {
  const int64_t N = dy_in.size(0), M2 = dy_in.size(1), K1 = x.size(1), M1 = fc1.weight.size(0);
  const auto plan1 = linear_plan(fc1.row_ptr, fc1.col_idx, M1, K1);
  const auto plan2 = linear_plan(fc2.row_ptr, fc2.col_idx, M2, M1);
  const Kernels<T> kern = pick_kernels<T>();
  const int NB = kern.nb;
  const int64_t nch = (N + 2 * NB - 1) / (2 * NB);
  const bool weight_grad = dw1 != nullptr;
  // fc2's grad-input (dA) is always needed: every gradient the op makes lies behind it.
  const T* gi2 = grad_input_values<T>(*plan2, fc2.weight, fc2.row_ptr, fc2.col_idx, kValuesB);
  const T* gi1 = dx ? grad_input_values<T>(*plan1, fc1.weight, fc1.row_ptr, fc1.col_idx, kValues2) : nullptr;
  LayerGrads<T> g1{plan1->nnz, M1}, g2{plan2->nnz, M2};
  // Partial sums per task slot (cpu/tasks.h: the same sums on every call); a slot zeroes its
  // grad-weight sums when it starts its first chunk.
  const int64_t slots = task_slots(nch);
  if (weight_grad) {
    g1.part = scratch<T>(kPartial, slots * g1.nnz);
    g2.part = scratch<T>(kPartialB, slots * g2.nnz);
  }
  if (db1) g1.bias_part.assign(slots * M1, T(0));
  if (db2) g2.bias_part.assign(slots * M2, T(0));
  g2.fused = weight_grad && kern.backward_rows;
  g1.fused = weight_grad && dx && kern.backward_rows;
  std::vector<char> started(slots, 0);
  const RowsView<T> yv = rows_view<T>(dy_in);
  const RowsView<T> xv = rows_view<T>(x);
  T* dxp = dx ? dx->data_ptr<T>() : nullptr;
  run_task_slots(nch, slots, [&](int64_t c, int64_t, int64_t slot) {
    T* acc1 = weight_grad ? g1.part + slot * g1.nnz : nullptr;
    T* acc2 = weight_grad ? g2.part + slot * g2.nnz : nullptr;
    if (weight_grad && !started[slot]) {
      std::fill(acc1, acc1 + g1.nnz, T(0));
      std::fill(acc2, acc2 + g2.nnz, T(0));
      started[slot] = 1;
    }
    const int64_t n0 = c * 2 * NB;
    T* yt = scratch<T>(kPanel, 2 * M2 * NB);
    pack_panel(yv, N, n0, NB, 0, M2, yt);
    pack_panel(yv, N, n0 + NB, NB, 0, M2, yt + M2 * NB);
    if (db2) add_panel_sums(yt, M2, NB, g2.bias_part.data() + slot * M2);
    // fc2: its input panels are gelu(H^T) of this chunk, its grad-input tile dA^T.
    const T* h = pre + c * 2 * M1 * NB;
    // gelu(H^T) for fc2's weight gradient and gelu'(H^T) for the step after it, from one evaluation
    // of the sigmoid per value (each costs an exp and a reciprocal; the slope is kept in L2 until
    // fc2's gradients are done). Without weight gradients only the slope is wanted.
    T* a = nullptr;
    T* slope = nullptr;
    if (weight_grad) {
      a = scratch<T>(kPanel2, 2 * M1 * NB);
      slope = scratch<T>(kSlope, 2 * M1 * NB);
      gelu_tanh_math::value_slope_span(h, a, slope, 2 * M1 * NB);
    }
    T* dh = scratch<T>(kTileB, 2 * M1 * NB);
    chunk_backward<T>(*plan2, gi2, M2, M1, yt, a, dh, acc2, g2.fused, kern);
    // dH^T = dA^T * gelu'(H^T), in place: fc1's dY panels.
    T* bias1 = db1 ? g1.bias_part.data() + slot * M1 : nullptr;
    for (int half = 0; half < 2; ++half) {
      T* d = dh + half * M1 * NB;
      if (slope)
        gelu_tanh_math::scale_panel(d, slope + half * M1 * NB, M1, NB, bias1);
      else
        gelu_tanh_math::grad_panel(d, h + half * M1 * NB, M1, NB, bias1);
    }
    // fc1 (its X panels reuse the scratch of the act panels, which fc2 is done with).
    if (dx || weight_grad) chunk_gradients<T>(*plan1, gi1, M1, K1, dh, xv, N, n0, dxp, acc1, g1.fused, kern);
  });
  write_grads(*plan1, g1, started, dw1, db1);
  write_grads(*plan2, g2, started, dw2, db2);
}

}  // namespace

std::vector<int64_t> csr_mlp_pre_panels_shape(int64_t rows, int64_t hidden, at::ScalarType dtype) {
  const int NB = dtype == at::kDouble ? pick_kernels<double>().nb : pick_kernels<float>().nb;
  return {pre_blocks(rows, NB), hidden, NB};
}

std::tuple<at::Tensor, at::Tensor> csr_mlp_gelu_tanh(const at::Tensor& input, const at::Tensor& w1,
                                                     const std::optional<at::Tensor>& b1, const at::Tensor& rp1,
                                                     const at::Tensor& ci1, const at::Tensor& w2,
                                                     const std::optional<at::Tensor>& b2, const at::Tensor& rp2,
                                                     const at::Tensor& ci2) {
  auto x = packable(input);
  auto w1c = w1.contiguous(), w2c = w2.contiguous();
  at::Tensor b1c = b1 ? b1->contiguous() : at::Tensor(), b2c = b2 ? b2->contiguous() : at::Tensor();
  auto y = at::empty({x.size(0), w2c.size(0)}, x.options());
  auto pre = at::empty(csr_mlp_pre_panels_shape(x.size(0), w1c.size(0), x.scalar_type()), x.options());
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "csr_mlp_gelu_tanh", [&] {
    mlp_forward<scalar_t>(x, Layer{w1c, rp1, ci1}, b1c.defined() ? b1c.const_data_ptr<scalar_t>() : nullptr,
                          Layer{w2c, rp2, ci2}, b2c.defined() ? b2c.const_data_ptr<scalar_t>() : nullptr,
                          y.data_ptr<scalar_t>(), pre.data_ptr<scalar_t>());
  });
  return {y, pre};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> csr_mlp_gelu_tanh_backward(
    const at::Tensor& grad_output, const at::Tensor& pre_panels, const at::Tensor& input, const at::Tensor& w1,
    const at::Tensor& rp1, const at::Tensor& ci1, const at::Tensor& w2, const at::Tensor& rp2, const at::Tensor& ci2,
    bool input_grad, bool weight_grad, bool bias1_grad, bool bias2_grad) {
  auto dy = packable(grad_output);
  auto x = packable(input);
  auto w1c = w1.contiguous(), w2c = w2.contiguous();
  auto pre = pre_panels.contiguous();
  const auto opts = dy.options();
  auto sized = [&](bool want, at::IntArrayRef shape) {
    return want ? at::empty(shape, opts) : at::empty({0}, opts);
  };
  at::Tensor dx = sized(input_grad, {x.size(0), x.size(1)});
  at::Tensor dw1 = sized(weight_grad, w1c.sizes()), dw2 = sized(weight_grad, w2c.sizes());
  at::Tensor db1 = sized(bias1_grad, {w1c.size(0)}), db2 = sized(bias2_grad, {w2c.size(0)});
  AT_DISPATCH_FLOATING_TYPES(dy.scalar_type(), "csr_mlp_gelu_tanh_backward", [&] {
    mlp_backward<scalar_t>(dy, pre.const_data_ptr<scalar_t>(), x, Layer{w1c, rp1, ci1}, Layer{w2c, rp2, ci2},
                           input_grad ? &dx : nullptr, weight_grad ? &dw1 : nullptr, bias1_grad ? &db1 : nullptr,
                           weight_grad ? &dw2 : nullptr, bias2_grad ? &db2 : nullptr);
  });
  return {dx, dw1, db1, dw2, db2};
}

}  // namespace ebsparse
