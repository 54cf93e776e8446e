// The recurrent half of a GRU layer (one direction) on the CPU, with W_hh sparse: the loop over
// timesteps runs here, so a step costs one sparse matmul and one fused pass of gate arithmetic
// instead of a dozen Python-dispatched ops (which cost more than the matmul at hidden 128).
//
// PyTorch's GRU, gates in the order (r, z, n), gi = x W_ih^T precomputed for every step (b_ih is
// added in the gate pass, so no pass over gi adds it, and its gradient sums there too):
//   gh = h W_hh^T + b_hh                   (the sparse matmul: csr_linear; at::linear without a pattern)
//   r = sigmoid(gi_r + gh_r)    z = sigmoid(gi_z + gh_z)
//   n = tanh(gi_n + r * gh_n)   h' = n + z * (h - n) = (1 - z) n + z h
// The forward saves (r, z, n, gh_n) per step for the backward through time:
//   dn = dh' (1 - z)   dz = dh' (h - n)   dh = dh' z + dgh W_hh
//   da_n = dn (1 - n^2)   da_z = dz z (1 - z)   da_r = da_n gh_n r (1 - r)
//   dgi = (da_r, da_z, da_n)   dgh = (da_r, da_z, da_n r)
// dgh of every step is returned (L, B, 3H), so that dW_hh at the kept positions is one SDDMM over
// all L * B rows afterwards (csr_linear_grad_weight), not L small ones. The bias gradients (sums of
// dgi and dgh over steps and rows) accumulate in the gate pass instead of two more passes over them.
//
// Layouts: gi (L, B, 3H), h0 (B, H), hidden (L, B, H) at each step's time position (a reverse
// direction runs t = L-1 .. 0 and its h0 precedes step L-1), saved (L, B, 4H).
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include "ebsparse.h"
#include "cpu/checks.h"
#include "cpu/fast_math.h"

namespace ebsparse {
namespace {

using fast_math::fast_tanh;

// Batch rows per task of a gate pass: ~32K values, ATen's own grain for elementwise ops. A smaller
// step (ChiroDiff's 128 x 128) runs on one thread: its ~20 us of work costs less than waking the
// pool for each of the 2 L passes, and on a loaded machine every parallel region also waits for
// its slowest, descheduled thread.
inline int64_t gate_rows(int64_t H) { return std::max<int64_t>(1, 32768 / std::max<int64_t>(H, 1)); }
using fast_math::sigmoid;

// One step's gate arithmetic for rows [b0, b1) of the batch.
template <typename T>
void gates_forward(const T* gi, const T* bi, const T* gh, const T* hp, T* h, T* saved, int64_t H, int64_t b0,
                   int64_t b1) {
  for (int64_t b = b0; b < b1; ++b) {
    const T* i = gi + b * 3 * H;
    const T* g = gh + b * 3 * H;
    const T* p = hp + b * H;
    T* o = h + b * H;
    T* s = saved + b * 4 * H;
#pragma omp simd
    for (int64_t j = 0; j < H; ++j) {
      const T r = sigmoid(i[j] + bi[j] + g[j]);
      const T z = sigmoid(i[H + j] + bi[H + j] + g[H + j]);
      const T hn = g[2 * H + j];
      const T n = fast_tanh(i[2 * H + j] + bi[2 * H + j] + r * hn);
      o[j] = n + z * (p[j] - n);
      s[j] = r;
      s[H + j] = z;
      s[2 * H + j] = n;
      s[3 * H + j] = hn;
    }
  }
}

// One step's gate gradients for rows [b0, b1): dgi, dgh (B, 3H) and the direct part dh' z of dh;
// dgi and dgh summed over the rows into acc[0, 3H) and acc[3H, 6H) (the bias gradients).
template <typename T>
void gates_backward(const T* dh, const T* carry, const T* hp, const T* saved, T* dgi, T* dgh, T* direct,
                    T* acc, int64_t H, int64_t b0, int64_t b1) {
  for (int64_t b = b0; b < b1; ++b) {
    const T* d = dh + b * H;
    const T* c = carry + b * H;
    const T* p = hp + b * H;
    const T* s = saved + b * 4 * H;
    T* gi = dgi + b * 3 * H;
    T* gh = dgh + b * 3 * H;
    T* o = direct + b * H;
#pragma omp simd
    for (int64_t j = 0; j < H; ++j) {
      const T g = d[j] + c[j];
      const T r = s[j], z = s[H + j], n = s[2 * H + j], hn = s[3 * H + j];
      const T an = g * (T(1) - z) * (T(1) - n * n);
      const T az = g * (p[j] - n) * z * (T(1) - z);
      const T ar = an * hn * r * (T(1) - r);
      gi[j] = ar;
      gi[H + j] = az;
      gi[2 * H + j] = an;
      gh[j] = ar;
      gh[H + j] = az;
      gh[2 * H + j] = an * r;
      o[j] = g * z;
      acc[j] += ar;
      acc[H + j] += az;
      acc[2 * H + j] += an;
      acc[5 * H + j] += an * r;
    }
  }
}

void check_recurrence(const at::Tensor& gi, const at::Tensor& h0, const at::Tensor& w) {
  check_float(gi, "gates_input");
  TORCH_CHECK(w.dim() == 2 && w.size(0) == 3 * w.size(1), "weight_hh: expected (3H, H), got ", w.sizes());
  const int64_t H = w.size(1);
  TORCH_CHECK(gi.dim() == 3 && gi.size(2) == 3 * H, "gates_input: expected (L, B, ", 3 * H, "), got ",
              gi.sizes());
  TORCH_CHECK(h0.dim() == 2 && h0.size(0) == gi.size(1) && h0.size(1) == H, "h0: expected (", gi.size(1), ", ",
              H, "), got ", h0.sizes());
  check_same(gi, h0, "gates_input", "h0");
  check_same(gi, w, "gates_input", "weight_hh");
}

// The time position of the s-th step and of the step before it (-1: h0).
inline int64_t position(int64_t s, int64_t L, bool reverse) { return reverse ? L - 1 - s : s; }

std::tuple<at::Tensor, at::Tensor> gru_recurrence_cpu(const at::Tensor& gates_input, const at::Tensor& h0,
                                                      const at::Tensor& weight_hh,
                                                      const std::optional<at::Tensor>& bias_ih,
                                                      const std::optional<at::Tensor>& bias_hh,
                                                      const std::optional<at::Tensor>& row_ptr,
                                                      const std::optional<at::Tensor>& col_idx, bool reverse) {
  check_recurrence(gates_input, h0, weight_hh);
  const int64_t L = gates_input.size(0), B = gates_input.size(1), H = weight_hh.size(1);
  TORCH_CHECK(row_ptr.has_value() == col_idx.has_value(), "row_ptr, col_idx: expected both or neither");
  if (row_ptr) {
    check_pattern(*row_ptr, *col_idx, 3 * H, "row_ptr", "col_idx", gates_input);
    check_pattern_values(*row_ptr, *col_idx, H, "row_ptr", "col_idx");
  }
  for (const auto* b : {&bias_ih, &bias_hh})
    if (*b) {
      const char* name = b == &bias_ih ? "bias_ih" : "bias_hh";
      check_same(gates_input, **b, "gates_input", name);
      TORCH_CHECK((*b)->dim() == 1 && (*b)->size(0) == 3 * H, name, ": expected (", 3 * H, ",), got ", (*b)->sizes());
    }
  // b_ih is added in the gate pass (no separate pass over gi); zeros where there is none
  const at::Tensor bi = bias_ih ? bias_ih->contiguous() : at::zeros({3 * H}, gates_input.options());
  const at::Tensor gi = gates_input.contiguous(), w = weight_hh.contiguous();
  const at::Tensor first = h0.contiguous();
  at::Tensor hidden = at::empty({L, B, H}, gi.options());
  at::Tensor saved = at::empty({L, B, 4 * H}, gi.options());
  AT_DISPATCH_FLOATING_TYPES(gi.scalar_type(), "gru_recurrence", [&] {
    for (int64_t s = 0; s < L; ++s) {
      const int64_t t = position(s, L, reverse);
      const at::Tensor hp = s == 0 ? first : hidden[position(s - 1, L, reverse)];
      const at::Tensor gh = row_ptr ? csr_linear(hp, w, bias_hh, *row_ptr, *col_idx) : at::linear(hp, w, bias_hh);
      const scalar_t* gip = gi.const_data_ptr<scalar_t>() + t * B * 3 * H;
      const scalar_t* bip = bi.const_data_ptr<scalar_t>();
      const scalar_t* ghp = gh.const_data_ptr<scalar_t>();
      const scalar_t* hpp = hp.const_data_ptr<scalar_t>();
      scalar_t* hout = hidden.data_ptr<scalar_t>() + t * B * H;
      scalar_t* sv = saved.data_ptr<scalar_t>() + t * B * 4 * H;
      at::parallel_for(0, B, gate_rows(H), [&](int64_t b0, int64_t b1) {
        gates_forward<scalar_t>(gip, bip, ghp, hpp, hout, sv, H, b0, b1);
      });
    }
  });
  return {hidden, saved};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> gru_recurrence_backward_cpu(
    const at::Tensor& grad_hidden, const at::Tensor& h0, const at::Tensor& hidden, const at::Tensor& saved,
    const at::Tensor& weight_hh, const std::optional<at::Tensor>& col_ptr, const std::optional<at::Tensor>& row_idx,
    bool reverse) {
  check_float(grad_hidden, "grad_hidden");
  TORCH_CHECK(weight_hh.dim() == 2 && weight_hh.size(0) == 3 * weight_hh.size(1),
              "weight_hh: expected (3H, H), got ", weight_hh.sizes());
  const int64_t H = weight_hh.size(1);
  TORCH_CHECK(hidden.dim() == 3 && hidden.size(2) == H, "hidden: expected (L, B, ", H, "), got ", hidden.sizes());
  const int64_t L = hidden.size(0), B = hidden.size(1);
  TORCH_CHECK(grad_hidden.sizes() == hidden.sizes(), "grad_hidden: expected ", hidden.sizes(), ", got ",
              grad_hidden.sizes());
  TORCH_CHECK(saved.dim() == 3 && saved.size(0) == L && saved.size(1) == B && saved.size(2) == 4 * H,
              "saved: expected (", L, ", ", B, ", ", 4 * H, "), got ", saved.sizes());
  TORCH_CHECK(h0.dim() == 2 && h0.size(0) == B && h0.size(1) == H, "h0: expected (", B, ", ", H, "), got ",
              h0.sizes());
  for (const auto* t : {&h0, &hidden, &saved, &weight_hh}) check_same(grad_hidden, *t, "grad_hidden", "tensors");
  TORCH_CHECK(col_ptr.has_value() == row_idx.has_value(), "col_ptr, row_idx: expected both or neither");
  if (col_ptr) {
    check_pattern(*col_ptr, *row_idx, H, "col_ptr", "row_idx", grad_hidden);
    check_pattern_values(*col_ptr, *row_idx, 3 * H, "col_ptr", "row_idx");
  }
  const at::Tensor dh = grad_hidden.contiguous(), hs = hidden.contiguous(), sv = saved.contiguous();
  const at::Tensor first = h0.contiguous(), w = weight_hh.contiguous();
  at::Tensor dgi = at::empty({L, B, 3 * H}, dh.options());
  at::Tensor dgh = at::empty({L, B, 3 * H}, dh.options());
  at::Tensor carry = at::zeros({B, H}, dh.options());   // dL/dh of the step's input state, from later steps
  at::Tensor direct = at::empty({B, H}, dh.options());
  // The bias gradients accumulate per fixed chunk of batch rows (no races, and the same sums
  // whatever the thread count), added up at the end.
  const int64_t rows = gate_rows(H);
  const int64_t chunks = (B + rows - 1) / rows;
  at::Tensor acc = at::zeros({chunks, 6 * H}, dh.options());
  AT_DISPATCH_FLOATING_TYPES(dh.scalar_type(), "gru_recurrence_backward", [&] {
    for (int64_t s = L - 1; s >= 0; --s) {
      const int64_t t = position(s, L, reverse);
      const scalar_t* hpp = (s == 0 ? first : hs[position(s - 1, L, reverse)]).const_data_ptr<scalar_t>();
      const scalar_t* dhp = dh.const_data_ptr<scalar_t>() + t * B * H;
      const scalar_t* svp = sv.const_data_ptr<scalar_t>() + t * B * 4 * H;
      scalar_t* gip = dgi.data_ptr<scalar_t>() + t * B * 3 * H;
      scalar_t* ghp = dgh.data_ptr<scalar_t>() + t * B * 3 * H;
      const scalar_t* cp = carry.const_data_ptr<scalar_t>();
      scalar_t* dp = direct.data_ptr<scalar_t>();
      scalar_t* ap = acc.data_ptr<scalar_t>();
      at::parallel_for(0, chunks, 1, [&](int64_t c0, int64_t c1) {
        for (int64_t c = c0; c < c1; ++c)
          gates_backward<scalar_t>(dhp, cp, hpp, svp, gip, ghp, dp, ap + c * 6 * H, H, c * rows,
                                   std::min(B, (c + 1) * rows));
      });
      carry = col_ptr ? csr_linear_grad_input(dgh[t], w, *col_ptr, *row_idx) : at::mm(dgh[t], w);
      carry.add_(direct);
    }
  });
  const at::Tensor sums = acc.sum(0);
  return {dgi, dgh, carry, sums.slice(0, 0, 3 * H), at::cat({sums.slice(0, 0, 2 * H), sums.slice(0, 5 * H)})};
}

}  // namespace

TORCH_LIBRARY_IMPL(ebsparse, CPU, m) {
  m.impl("gru_recurrence", &gru_recurrence_cpu);
  m.impl("gru_recurrence_backward", &gru_recurrence_backward_cpu);
}

}  // namespace ebsparse
