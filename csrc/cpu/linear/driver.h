// Private to csrc/cpu/linear: the pieces the sparse linear drivers (linear.cpp: one layer; mlp.cpp:
// fc1 -> tanh-GELU -> fc2 in one pass) are built from: the micro-kernel table of a dtype / ISA,
// per-thread scratch, packing activations into transposed panels and back, and the grad-weight
// partial sums. Layouts: kernels.h.
#pragma once
#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <cstdint>
#include <type_traits>

#include "cpu/activation/gelu_tanh_math.h"
#include "cpu/capability.h"
#include "cpu/linear/kernels.h"
#include "cpu/linear/plan.h"
#include "cpu/scratch.h"

namespace ebsparse::linear_detail {

// ---- portable micro-kernels (fp64, and the reference shape of the SIMD ones) ---------------------

template <typename T, int NB>
void spmm_rows_generic(const int32_t* col, const T* val, const int32_t* bptr, int64_t r0,
                       int64_t r1, const T* panel, T* tile) {
  for (int64_t r = r0; r < r1; ++r) {
    if (bptr[r] == bptr[r + 1]) continue;
    T acc[NB];
    T* t = tile + r * NB;
    for (int i = 0; i < NB; ++i) acc[i] = t[i];
    for (int64_t e = bptr[r]; e < bptr[r + 1]; ++e) {
      const T v = val[e];
      const T* p = panel + int64_t(col[e]) * NB;
      for (int i = 0; i < NB; ++i) acc[i] += v * p[i];
    }
    for (int i = 0; i < NB; ++i) t[i] = acc[i];
  }
}

template <typename T, int NB>
void spmm_rows_init_generic(const int32_t* col, const T* val, const int32_t* bptr, int64_t r0,
                            int64_t r1, const T* panel, T* tile, const T* init) {
  for (int64_t r = r0; r < r1; ++r) std::fill(tile + r * NB, tile + (r + 1) * NB, init ? init[r] : T(0));
  spmm_rows_generic<T, NB>(col, val, bptr, r0, r1, panel, tile);
}

template <typename T, int NB>
void sddmm_generic(const T* a_lo, const T* a_hi, const T* x_lo, const T* x_hi, const int32_t* col,
                   int64_t e0, int64_t e1, T* acc) {
  for (int64_t e = e0; e < e1; ++e) {
    const T* p = x_lo + int64_t(col[e]) * NB;
    const T* q = x_hi + int64_t(col[e]) * NB;
    T s = 0;
    for (int i = 0; i < NB; ++i) s += a_lo[i] * p[i] + a_hi[i] * q[i];
    acc[e] += s;
  }
}

// The micro-kernels and panel width of one dtype / ISA.
template <typename T>
struct Kernels {
  int nb;  // panel width (batch rows); the SDDMM reduces over chunks of 2 * nb
  void (*spmm_rows)(const int32_t*, const T*, const int32_t*, int64_t, int64_t, const T*, T*);
  // the first k-block of a tile: rows start from init[r] (or 0) and are all written
  void (*spmm_rows_init)(const int32_t*, const T*, const int32_t*, int64_t, int64_t, const T*, T*, const T*);
  void (*sddmm)(const T*, const T*, const T*, const T*, const int32_t*, int64_t, int64_t, T*);
  // both backward kernels in one walk of the transposed pattern (kernels.h); null where
  // there is none (AVX2 has too few registers to hold both tiles, fp64)
  void (*backward_rows)(const int32_t*, const T*, const int32_t*, int64_t, int64_t, const T*, const T*,
                        const T*, const T*, T*, T*, T*, bool);
};

template <typename T>
Kernels<T> pick_kernels();

template <>
inline Kernels<float> pick_kernels<float>() {
  if (cpu_capability() == CpuCapability::kAvx512)
    return {kNbAvx512, spmm_rows_f32_avx512, spmm_rows_init_f32_avx512, sddmm_f32_avx512, backward_rows_f32_avx512};
  return {kNbAvx2, spmm_rows_f32_avx2, spmm_rows_init_f32_avx2, sddmm_f32_avx2, nullptr};
}

template <>
inline Kernels<double> pick_kernels<double>() {
  return {16, spmm_rows_generic<double, 16>, spmm_rows_init_generic<double, 16>, sddmm_generic<double, 16>,
          nullptr};
}

// The kernels for a batch of `rows` rows: up to 32 rows run the AVX2 set on any machine, whose
// 32-row panels they fill, instead of AVX-512 panels of 64 rows left half empty (and grad-weight
// chunks of 128 rows three quarters empty): DiT's adaLN modulation is a 32-row product per block.
template <typename T>
Kernels<T> pick_kernels_for_rows(int64_t rows) {
  if constexpr (std::is_same_v<T, float>) {
    if (rows <= kNbAvx2) return {kNbAvx2, spmm_rows_f32_avx2, spmm_rows_init_f32_avx2, sddmm_f32_avx2, nullptr};
  }
  return pick_kernels<T>();
}

// The scratch buffers a thread holds at the same time (cpu/scratch.h).
// (The fused MLP's second layer holds its own values, partial sums and tile beside the first's.)
enum Slot { kPanel, kTile, kPanel2, kValues, kValues2, kPartial, kPrePanel, kValuesB, kPartialB, kTileB, kSlope, kSlots };

template <typename T>
T* scratch(Slot slot, int64_t n) {
  return thread_scratch<Slot, kSlots, T>(slot, n, "linear");
}

// dst[c * ldd + r] = src[r * lds + c] for r < rows, c < cols; dst_rows_outer: see transpose_f32.
inline void transpose(const float* src, int64_t lds, int64_t rows, int64_t cols, float* dst, int64_t ldd,
               bool dst_rows_outer) {
  if (cpu_capability() == CpuCapability::kAvx512)
    transpose_f32_avx512(src, lds, rows, cols, dst, ldd, dst_rows_outer);
  else
    transpose_f32_avx2(src, lds, rows, cols, dst, ldd, dst_rows_outer);
}
inline void transpose(const double* src, int64_t lds, int64_t rows, int64_t cols, double* dst, int64_t ldd,
               bool) {
  constexpr int64_t B = 16;
  for (int64_t r = 0; r < rows; r += B)
    for (int64_t c = 0; c < cols; c += B)
      for (int64_t rr = r; rr < std::min(r + B, rows); ++rr)
        for (int64_t cc = c; cc < std::min(c + B, cols); ++cc) dst[cc * ldd + rr] = src[rr * lds + cc];
}

// A (N, C) activation or gradient as the packing reads it: rows `row_stride` apart, columns either
// contiguous (col_stride 1) or all one value (col_stride 0: an expanded gradient, such as the one
// `y.sum()` or `y.mean()` hands back, read in place instead of being copied into a dense tensor).
template <typename T>
struct RowsView {
  const T* data;
  int64_t row_stride;
  bool repeated;  // col_stride 0
};

// t itself where RowsView can read it (2-D, columns contiguous or repeated), else a contiguous copy.
inline at::Tensor packable(const at::Tensor& t) {
  return t.dim() == 2 && (t.stride(1) == 1 || t.stride(1) == 0) ? t : t.contiguous();
}

template <typename T>
RowsView<T> rows_view(const at::Tensor& t) {  // t from packable()
  return {t.const_data_ptr<T>(), t.stride(0), t.size(1) > 1 && t.stride(1) == 0};
}

// P[c * NB + i] = A[n0 + i, c] for c in [c0, c1), i < NB (zero for n0 + i >= N).
template <typename T>
void pack_panel(const RowsView<T>& A, int64_t N, int64_t n0, int NB, int64_t c0, int64_t c1, T* P) {
  const int64_t nb = std::clamp<int64_t>(N - n0, 0, NB);
  if (A.repeated) {
    T column[64];
    TORCH_INTERNAL_ASSERT(NB <= 64, "pack_panel: panel width ", NB, " exceeds 64");
    for (int64_t i = 0; i < NB; ++i) column[i] = i < nb ? A.data[(n0 + i) * A.row_stride] : T(0);
    for (int64_t c = c0; c < c1; ++c) std::copy(column, column + NB, P + c * NB);
    return;
  }
  if (nb > 0) transpose(A.data + n0 * A.row_stride + c0, A.row_stride, nb, c1 - c0, P + c0 * NB, NB, false);
  if (nb < NB)
    for (int64_t c = c0; c < c1; ++c) std::fill(P + c * NB + nb, P + (c + 1) * NB, T(0));
}

// out[n0 + i, r] = T[r * NB + i] for r in [r0, r1), n0 + i < N. out is (N, R).
template <typename T>
void unpack_tile(const T* tile, int64_t N, int64_t R, int64_t n0, int NB, int64_t r0, int64_t r1,
                 T* out) {
  const int64_t nb = std::min<int64_t>(NB, N - n0);
  transpose(tile + r0 * NB, NB, r1 - r0, nb, out + n0 * R + r0, R, true);
}

// out[n0 + i, r] = T[r * NB + i] (the pre-activation h) and act[n0 + i, r] = gelu(T[r * NB + i]),
// for r in [r0, r1): 64 rows at a time, so each piece of the tile is still in L1 when its GELU
// overwrites it and again when that is written out. The tile is clobbered.
template <typename T>
void unpack_tile_gelu(T* tile, int64_t N, int64_t R, int64_t n0, int NB, int64_t r0, int64_t r1, T* out,
                      T* act) {
  constexpr int64_t kRows = 64;
  for (int64_t a = r0; a < r1; a += kRows) {
    const int64_t b = std::min(a + kRows, r1);
    unpack_tile(tile, N, R, n0, NB, a, b, out);
    gelu_tanh_math::forward_span(tile + a * NB, tile + a * NB, (b - a) * NB);
    unpack_tile(tile, N, R, n0, NB, a, b, act);
  }
}

// vals[e] = from[src[e]], in parallel.
template <typename T>
void gather(const int32_t* src, int64_t n, const T* from, T* vals) {
  at::parallel_for(0, n, 16384, [&](int64_t e0, int64_t e1) {
    for (int64_t e = e0; e < e1; ++e) vals[e] = from[src[e]];
  });
}

// T[r, :] = init[r] (or 0) + sum_c S[r, c] P[c, :] for rows [r0, r1) of a tile: every k-block in
// turn, the first one starting the rows (no fill pass over the tile).
template <typename T>
void tile_rows(const BlockedPattern& S, const T* vals, int64_t R, int64_t r0, int64_t r1,
               const T* panel, const T* init, const Kernels<T>& kern, T* tile) {
  kern.spmm_rows_init(S.col.data(), vals, S.bptr.data(), r0, r1, panel, tile, init);
  for (int64_t blk = 1; blk < S.nkb; ++blk)
    kern.spmm_rows(S.col.data(), vals, S.bptr.data() + blk * R, r0, r1, panel, tile);
}

// acc[e] += dY^T[m, chunk] . X^T[col[e], chunk] for the entries of rows [m0, m1) of the forward
// pattern, k-block by k-block (so the X^T rows one pass reads stay in L1/L2). yt and xt hold one
// chunk of 2 * NB batch rows as two panels each: (lo, hi) = (p, p + rows * NB).
template <typename T>
void sddmm_rows(const BlockedPattern& S, int64_t M, int64_t K, const T* yt, const T* xt, int NB,
                int64_t m0, int64_t m1, const Kernels<T>& kern, T* acc) {
  const int32_t* bp = S.bptr.data();
  for (int64_t blk = 0; blk < S.nkb; ++blk)
    for (int64_t m = m0; m < m1; ++m) {
      const int64_t e0 = bp[blk * M + m], e1 = bp[blk * M + m + 1];
      if (e0 < e1)
        kern.sddmm(yt + m * NB, yt + (M + m) * NB, xt, xt + K * NB, S.col.data(), e0, e1, acc);
    }
}

// dW[m, :] = 0 except dW[m, col[e]] = sum_{u < parts} part[u * nnz + at(e)] for row m's entries e
// of the forward pattern, where at(e) = part_of ? part_of[e] : e; parallel over rows.
template <typename T>
void write_weight_grad(const BlockedPattern& S, int64_t M, int64_t K, const T* part, int64_t parts,
                       int64_t nnz, const int32_t* part_of, T* dw) {
  const int32_t* bp = S.bptr.data();
  const int32_t* col = S.col.data();
  at::parallel_for(0, M, 16, [&](int64_t m0, int64_t m1) {
    for (int64_t m = m0; m < m1; ++m) {
      T* row = dw + m * K;
      std::fill(row, row + K, T(0));
      for (int64_t blk = 0; blk < S.nkb; ++blk)
        for (int32_t e = bp[blk * M + m]; e < bp[blk * M + m + 1]; ++e) {
          const int64_t at = part_of ? part_of[e] : e;
          T sum = part[at];
          for (int64_t u = 1; u < parts; ++u) sum += part[u * nnz + at];
          row[col[e]] = sum;
        }
    }
  });
}

// sums[r] += sum_i p[r * NB + i] + p[(R + r) * NB + i] for r < R: the column sums of a chunk's two
// dY panels (lo, hi), i.e. its share of the bias gradient.
template <typename T>
void add_panel_sums(const T* p, int64_t R, int NB, T* sums) {
  for (int64_t r = 0; r < R; ++r) {
    const T* lo = p + r * NB;
    const T* hi = p + (R + r) * NB;
    T s = 0;
#pragma omp simd reduction(+ : s)
    for (int i = 0; i < NB; ++i) s += lo[i] + hi[i];
    sums[r] += s;
  }
}

// One layer's gradients for one chunk of 2 * NB batch rows, from the chunk's dY panels yt (M rows,
// lo then hi) and X panels xt (K rows, lo then hi; null without acc): the grad-input tile (K rows,
// lo then hi) where tile is given, and the grad-weight partial sums added to acc where it is given:
// in the transposed plan's order when fused (both gradients in one walk, AVX-512), else in the
// forward plan's order.
template <typename T>
void chunk_backward(const LinearPlan& plan, const T* gi_vals, int64_t M, int64_t K, const T* yt, const T* xt,
                    T* tile, T* acc, bool fused, const Kernels<T>& kern) {
  const int NB = kern.nb;
  if (fused) {
    for (int64_t blk = 0; blk < plan.gi.nkb; ++blk)
      kern.backward_rows(plan.gi.col.data(), gi_vals, plan.gi.bptr.data() + blk * K, 0, K, yt, yt + M * NB, xt,
                         xt + K * NB, tile, tile + K * NB, acc, blk == 0);
    return;
  }
  if (tile)
    for (int h = 0; h < 2; ++h) tile_rows<T>(plan.gi, gi_vals, K, 0, K, yt + h * M * NB, nullptr, kern, tile + h * K * NB);
  if (acc) sddmm_rows(plan.fwd, M, K, yt, xt, NB, 0, M, kern, acc);
}

// chunk_backward for the chunk of rows [n0, n0 + 2 * NB) of an (N, K) input read through xv: its X
// panels packed where the grad-weight partial sums acc are wanted, its grad-input tile unpacked into
// dx (N, K) where that is given.
template <typename T>
void chunk_gradients(const LinearPlan& plan, const T* gi_vals, int64_t M, int64_t K, const T* yt,
                     const RowsView<T>& xv, int64_t N, int64_t n0, T* dx, T* acc, bool fused,
                     const Kernels<T>& kern) {
  const int NB = kern.nb;
  T* xt = nullptr;
  if (acc) {
    xt = scratch<T>(kPanel2, 2 * K * NB);
    pack_panel(xv, N, n0, NB, 0, K, xt);
    pack_panel(xv, N, n0 + NB, NB, 0, K, xt + K * NB);
  }
  T* tile = dx ? scratch<T>(kTile, 2 * K * NB) : nullptr;
  chunk_backward<T>(plan, gi_vals, M, K, yt, xt, tile, acc, fused, kern);
  for (int h = 0; dx && h < 2 && n0 + h * NB < N; ++h)
    unpack_tile(tile + h * K * NB, N, K, n0 + h * NB, NB, 0, K, dx);
}

// The values of (W o mask)^T in the transposed plan's order, for the grad-input kernels: from the
// values this step's forward gathered where W is still that tensor, else through the compact CSR
// values (W read row-wise once). In the calling thread's scratch `slot`.
template <typename T>
const T* grad_input_values(const LinearPlan& plan, const at::Tensor& w, const at::Tensor& rp_t,
                           const at::Tensor& ci_t, Slot slot) {
  const int64_t nnz = plan.nnz, K = plan.K;
  T* gi_vals = scratch<T>(slot, nnz);
  const at::Tensor fwd_values = plan.last_forward.get(w);
  if (fwd_values.defined()) {
    gather(plan.gi_from_fwd.data(), nnz, fwd_values.const_data_ptr<T>(), gi_vals);
    return gi_vals;
  }
  const int32_t* rp = rp_t.const_data_ptr<int32_t>();
  const int32_t* ci = ci_t.const_data_ptr<int32_t>();
  T* csr_vals = scratch<T>(kValues, nnz);
  const T* wp = w.const_data_ptr<T>();
  at::parallel_for(0, plan.M, 64, [&](int64_t m0, int64_t m1) {
    for (int64_t m = m0; m < m1; ++m)
      for (int32_t j = rp[m]; j < rp[m + 1]; ++j) csr_vals[j] = wp[m * K + ci[j]];
  });
  gather(plan.gi.src.data(), nnz, csr_vals, gi_vals);
  return gi_vals;
}

}  // namespace ebsparse::linear_detail
