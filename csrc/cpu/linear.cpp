// Sparse linear kernels on the CPU. The weight is the dense-shaped (M, K) tensor read in place at
// the kept positions of a CSR (row_ptr, col_idx) or CSC (col_ptr, row_idx) pattern.
//
// Forward and grad-input are one operation, out (N, R) = in (N, C) . S^T with S sparse (R, C):
//   forward     R = M, C = K, S = W o mask             (rows of S from the CSR pattern)
//   grad-input  R = K, C = M, S = (W o mask)^T         (rows of S from the CSC pattern: a gather,
//                                                       so every thread owns its outputs)
// A sparse row cannot share weight loads between outputs, so the kernel vectorises along the
// batch instead: each thread transposes a block of NB batch rows into a panel P (C, NB) and builds
// the transposed output tile T (R, NB),
//   T[r, :] += S[r, c] * P[c, :]     for every kept (r, c),
// holding T[r, :] in registers while row r's kept weights are walked (linear_simd.cpp): one
// broadcast and NB / lanes FMAs with aligned panel loads per kept weight. Columns are split into
// k-blocks of KB (256) so that the panel rows one pass over all R rows touches (KB * NB values)
// stay in L1/L2 instead of the whole panel; the entries (panel offset, weight value) are gathered
// once per call in (k-block, row) order so that every pass reads them sequentially. KB trades the
// panel's cache footprint against the per-(row, k-block) cost of re-loading T[r, :] (measured:
// 128 and 512 were no better at 90-95% sparsity). The entry list is built once per call by all
// threads together (row-parallel), then the work is parallel over batch blocks (no shared
// outputs); with fewer blocks than threads (small N), over output rows instead.
//
// Grad-weight is an SDDMM, dW[m, k] = dY^T[m, :] . X^T[k, :] at kept (m, k) only. The batch is
// the reduction, so it is cut into chunks of L (128) columns; per chunk, X and dY are transposed
// into L2-resident panels, a row m keeps dY^T[m, chunk] in registers, and the kept X^T rows are
// dotted with it 8 at a time (one shared horizontal reduction per 8 outputs). Sums accumulate in
// a compact array in CSR order and dW (zeros elsewhere) is written once at the end. Parallel over
// chunks (each thread transposes only its own chunks and keeps its own partial sums, which the
// last thread to finish adds up); with fewer chunks than that, over rows m with shared panels.
//
// fp32 has AVX2 and AVX-512 kernels (run-time choice); fp64 uses the portable loops below.
#include <ATen/Parallel.h>

#include <algorithm>
#include <atomic>
#include <cstdlib>
#include <cstring>
#include <vector>

#include "../ebsparse.h"
#include "linear_kernels.h"

namespace ebsparse {
namespace {

using linear_detail::Entry;

// ---- portable micro-kernels (fp64, and the reference shape of the SIMD ones) ---------------------

template <typename T, int NB>
void spmm_rows_generic(const Entry<T>* ent, const int32_t* bptr, int64_t r0, int64_t r1,
                       const T* panel, T* tile) {
  for (int64_t r = r0; r < r1; ++r) {
    if (bptr[r] == bptr[r + 1]) continue;
    T acc[NB];
    T* t = tile + r * NB;
    for (int i = 0; i < NB; ++i) acc[i] = t[i];
    for (int64_t j = bptr[r]; j < bptr[r + 1]; ++j) {
      const T v = ent[j].val;
      const T* p = panel + ent[j].off;
      for (int i = 0; i < NB; ++i) acc[i] += v * p[i];
    }
    for (int i = 0; i < NB; ++i) t[i] = acc[i];
  }
}

template <typename T, int L>
void sddmm_row_generic(const T* a, const T* xt, const int32_t* idx, int64_t j0, int64_t j1,
                       T* acc) {
  for (int64_t j = j0; j < j1; ++j) {
    const T* p = xt + int64_t(idx[j]) * L;
    T s = 0;
    for (int i = 0; i < L; ++i) s += a[i] * p[i];
    acc[j] += s;
  }
}

// The micro-kernels and blocking of one dtype / ISA. KB = 256 columns keeps one k-block of the
// panel at 32-64 KB whatever the panel width.
template <typename T>
struct Kernels {
  int nb;        // panel width (batch rows) of the SpMM
  int kb_shift;  // k-block: 2^kb_shift columns per pass over the rows
  int l;         // batch chunk of the SDDMM
  void (*spmm_rows)(const Entry<T>*, const int32_t*, int64_t, int64_t, const T*, T*);
  void (*sddmm_row)(const T*, const T*, const int32_t*, int64_t, int64_t, T*);
};

template <typename T>
Kernels<T> pick_kernels();

template <>
Kernels<float> pick_kernels<float>() {
  namespace d = linear_detail;
  if (d::cpu_has_avx512())
    return {d::kNbAvx512, 8, d::kLAvx512, d::spmm_rows_f32_avx512, d::sddmm_row_f32_avx512};
  return {d::kNbAvx2, 8, d::kLAvx2, d::spmm_rows_f32_avx2, d::sddmm_row_f32_avx2};
}

template <>
Kernels<double> pick_kernels<double>() {
  return {16, 8, 32, spmm_rows_generic<double, 16>, sddmm_row_generic<double, 32>};
}

// Per-thread scratch, 64-byte aligned, grown on demand and kept between calls: the panels and
// transposed copies are rewritten on every call, and reusing the pages avoids paying a page fault
// per 4 KB of fresh scratch (a large share of the fixed cost at high sparsity). `slot` tells
// apart the buffers a thread holds at the same time.
template <typename T>
T* scratch(int slot, int64_t n) {
  struct Buf {
    void* p = nullptr;
    size_t bytes = 0;
    ~Buf() { std::free(p); }
  };
  thread_local Buf bufs[3];
  Buf& b = bufs[slot];
  const size_t need = (size_t(std::max<int64_t>(n, 1)) * sizeof(T) + 63) & ~size_t(63);
  if (b.bytes < need) {
    std::free(b.p);
    b.p = std::aligned_alloc(64, need);
    TORCH_CHECK(b.p, "ebsparse: out of memory for ", need, " bytes of linear scratch");
    b.bytes = need;
  }
  return static_cast<T*>(b.p);
}

// dst[c * ldd + r] = src[r * lds + c] for r < rows, c < cols.
void transpose(const float* src, int64_t lds, int64_t rows, int64_t cols, float* dst, int64_t ldd) {
  linear_detail::transpose_f32(src, lds, rows, cols, dst, ldd);
}
void transpose(const double* src, int64_t lds, int64_t rows, int64_t cols, double* dst, int64_t ldd) {
  constexpr int64_t B = 16;
  for (int64_t r = 0; r < rows; r += B)
    for (int64_t c = 0; c < cols; c += B)
      for (int64_t rr = r; rr < std::min(r + B, rows); ++rr)
        for (int64_t cc = c; cc < std::min(c + B, cols); ++cc) dst[cc * ldd + rr] = src[rr * lds + cc];
}

// P[c * NB + i] = A[n0 + i, c] for c in [c0, c1), i < NB (zero for n0 + i >= N). A is (N, C).
template <typename T>
void pack_panel(const T* A, int64_t N, int64_t C, int64_t n0, int NB, int64_t c0, int64_t c1,
                T* P) {
  const int64_t nb = std::min<int64_t>(NB, N - n0);
  transpose(A + n0 * C + c0, C, nb, c1 - c0, P + c0 * NB, NB);
  if (nb < NB)
    for (int64_t c = c0; c < c1; ++c) std::fill(P + c * NB + nb, P + (c + 1) * NB, T(0));
}

// out[n0 + i, r] = T[r * NB + i] for r in [r0, r1), n0 + i < N. out is (N, R).
template <typename T>
void unpack_tile(const T* tile, int64_t N, int64_t R, int64_t n0, int NB, int64_t r0, int64_t r1,
                 T* out) {
  const int64_t nb = std::min<int64_t>(NB, N - n0);
  transpose(tile + r0 * NB, NB, r1 - r0, nb, out + n0 * R + r0, R);
}

// The kept weights of S (R, C) in (k-block, row) order; see linear_kernels.h. The arrays live in
// per-thread scratch of the calling thread (slot 2), reused between calls.
template <typename T>
struct Blocked {
  int64_t nkb;
  const int32_t* bptr;   // nkb * R + 1
  const Entry<T>* ent;   // nnz
};

// S[r, idx[j]] = w[r * rs + idx[j] * cs] for j in [ptr[r], ptr[r + 1]). Built once per call and
// shared by every thread, in two row-parallel passes: count each row's entries per k-block, a
// prefix sum over (k-block, row) (O(nkb * R), serial), then every row writes its entries straight
// into their slots (in index order within a slot, as the pattern lists them). A row's weights are read in order, so the forward's row-wise reads stream;
// for grad-input (cs = K, column-wise reads through the CSC pattern) a row is a column of W.
// Reading the values costs one pass over the dense-shaped weight per call: they change every
// optimizer step, so only the positions could be cached.
template <typename T>
Blocked<T> build_blocked(const int32_t* ptr, const int32_t* idx, int64_t R, int64_t C, const T* w,
                         int64_t rs, int64_t cs, int NB, int kb_shift) {
  const int64_t nkb = std::max<int64_t>(1, ((C - 1) >> kb_shift) + 1);
  const int64_t nnz = ptr[R];
  // One scratch block: bptr (nkb * R + 1 int32, rounded up to keep the entries 8-byte aligned),
  // then the entries.
  const int64_t nb_ptr = (nkb * R + 2) & ~int64_t(1);
  static_assert(sizeof(Entry<T>) % sizeof(int32_t) == 0, "Entry must be a whole number of int32");
  const int64_t words = nb_ptr + nnz * int64_t(sizeof(Entry<T>) / sizeof(int32_t)) + 2;
  int32_t* bp = scratch<int32_t>(2, words);
  Entry<T>* ent = reinterpret_cast<Entry<T>*>(bp + nb_ptr + (sizeof(Entry<T>) > 8 ? 2 : 0));
  at::parallel_for(0, R, 64, [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r) {
      for (int64_t blk = 0; blk < nkb; ++blk) bp[blk * R + r] = 0;
      for (int32_t j = ptr[r]; j < ptr[r + 1]; ++j) ++bp[(int64_t(idx[j]) >> kb_shift) * R + r];
    }
  });
  int32_t pos = 0;
  for (int64_t k = 0; k < nkb * R; ++k) {
    const int32_t c = bp[k];
    bp[k] = pos;
    pos += c;
  }
  bp[nkb * R] = pos;
  at::parallel_for(0, R, 64, [&](int64_t r0, int64_t r1) {
    std::vector<int32_t> cursor(nkb);  // next free slot of this row in every k-block
    for (int64_t r = r0; r < r1; ++r) {
      for (int64_t blk = 0; blk < nkb; ++blk) cursor[blk] = bp[blk * R + r];
      for (int32_t j = ptr[r]; j < ptr[r + 1]; ++j) {
        const int64_t c = idx[j];
        ent[cursor[c >> kb_shift]++] = {int32_t(c * NB), w[r * rs + c * cs]};
      }
    }
  });
  return {nkb, bp, ent};
}

// out (N, R) = in (N, C) . S^T (+ bias), S (R, C) given by ptr / idx / values as in build_blocked.
template <typename T>
void spmm_transposed(const T* in, int64_t N, int64_t C, int64_t R, const int32_t* ptr,
                     const int32_t* idx, const T* w, int64_t rs, int64_t cs, const T* bias,
                     const Kernels<T>& kern, T* out) {
  const int NB = kern.nb;
  const int64_t nblocks = (N + NB - 1) / NB;
  auto init_tile = [&](T* tile, int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r) std::fill(tile + r * NB, tile + (r + 1) * NB, bias ? bias[r] : T(0));
  };
  auto rows = [&](const Blocked<T>& S, const T* panel, T* tile, int64_t r0, int64_t r1) {
    for (int64_t blk = 0; blk < S.nkb; ++blk)
      kern.spmm_rows(S.ent, S.bptr + blk * R, r0, r1, panel, tile);
  };
  const int64_t nthreads = at::get_num_threads();
  const Blocked<T> S = build_blocked<T>(ptr, idx, R, C, w, rs, cs, NB, kern.kb_shift);
  if (nblocks >= 2 * nthreads) {
    at::parallel_for(0, nblocks, 1, [&](int64_t b0, int64_t b1) {
      T* panel = scratch<T>(0, C * NB);
      T* tile = scratch<T>(1, R * NB);
      for (int64_t b = b0; b < b1; ++b) {
        pack_panel(in, N, C, b * NB, NB, 0, C, panel);
        init_tile(tile, 0, R);
        rows(S, panel, tile, 0, R);
        unpack_tile(tile, N, R, b * NB, NB, 0, R, out);
      }
    });
    return;
  }
  // Few batch blocks (small N): one shared panel per block, output rows split between threads.
  T* panel = scratch<T>(0, C * NB);
  T* tile = scratch<T>(1, R * NB);
  for (int64_t b = 0; b < nblocks; ++b) {
    at::parallel_for(0, C, 256, [&](int64_t c0, int64_t c1) { pack_panel(in, N, C, b * NB, NB, c0, c1, panel); });
    at::parallel_for(0, R, 64, [&](int64_t r0, int64_t r1) {
      init_tile(tile, r0, r1);
      rows(S, panel, tile, r0, r1);
      unpack_tile(tile, N, R, b * NB, NB, r0, r1, out);
    });
  }
}

template <typename T>
void linear_forward(const at::Tensor& x, const at::Tensor& w, const T* bias, const int32_t* rp,
                    const int32_t* ci, at::Tensor& y) {
  const int64_t N = x.size(0), K = x.size(1), M = w.size(0);
  const Kernels<T> kern = pick_kernels<T>();
  spmm_transposed<T>(x.data_ptr<T>(), N, K, M, rp, ci, w.data_ptr<T>(), K, 1, bias, kern,
                     y.data_ptr<T>());
}

template <typename T>
void linear_grad_input(const at::Tensor& dy, const at::Tensor& w, const int32_t* cp,
                       const int32_t* ri, at::Tensor& dx) {
  const int64_t N = dy.size(0), M = w.size(0), K = w.size(1);
  const Kernels<T> kern = pick_kernels<T>();
  spmm_transposed<T>(dy.data_ptr<T>(), N, M, K, cp, ri, w.data_ptr<T>(), 1, K, nullptr, kern,
                     dx.data_ptr<T>());
}

template <typename T>
void linear_grad_weight(const at::Tensor& dy, const at::Tensor& x, const int32_t* rp,
                        const int32_t* ci, at::Tensor& dw) {
  const int64_t N = x.size(0), K = x.size(1), M = dy.size(1);
  const Kernels<T> kern = pick_kernels<T>();
  const int L = kern.l;
  const int64_t nch = (N + L - 1) / L, nnz = rp[M];
  const T* xp = x.data_ptr<T>();
  const T* yp = dy.data_ptr<T>();
  T* dwp = dw.data_ptr<T>();
  // Chunk c of X^T is the panel of batch rows [c * L, c * L + L): xt[k * L + i] = X[c * L + i, k].
  // The dot products accumulate over the chunks in a compact array in CSR order (contiguous
  // vector updates, small enough to stay in L2 with the chunks); dW is written once at the end.
  const int64_t nthreads = at::get_num_threads();
  if (nch >= 2 * nthreads) {
    // Each thread owns a range of chunks: it transposes them into its own L2-resident panels and
    // keeps its own partial sums (no memory-sized transposed copies); the partials are added at
    // the end.
    const int64_t nt = nthreads;
    T* part = scratch<T>(2, nt * nnz);
    std::atomic<int64_t> done{0};
    at::parallel_for(0, nt, 1, [&](int64_t t0, int64_t t1) {
      T* xt = scratch<T>(0, K * L);
      T* yt = scratch<T>(1, M * L);
      for (int64_t t = t0; t < t1; ++t) {
        T* acc = part + t * nnz;
        std::fill(acc, acc + nnz, T(0));
        std::memset(dwp + t * M / nt * K, 0, sizeof(T) * ((t + 1) * M / nt - t * M / nt) * K);
        for (int64_t c = t * nch / nt; c < (t + 1) * nch / nt; ++c) {
          pack_panel(xp, N, K, c * L, L, 0, K, xt);
          pack_panel(yp, N, M, c * L, L, 0, M, yt);
          for (int64_t m = 0; m < M; ++m)
            if (rp[m] < rp[m + 1]) kern.sddmm_row(yt + m * L, xt, ci, rp[m], rp[m + 1], acc);
        }
        // The last task to finish adds the partial sums into dW (O(nnz)): no second parallel
        // region. acq_rel makes every other task's writes visible to it.
        if (done.fetch_add(1, std::memory_order_acq_rel) == nt - 1)
          for (int64_t m = 0; m < M; ++m)
            for (int32_t j = rp[m]; j < rp[m + 1]; ++j) {
              T sum = part[j];
              for (int64_t u = 1; u < nt; ++u) sum += part[u * nnz + j];
              dwp[m * K + ci[j]] = sum;
            }
      }
    });
    return;
  }
  // Few chunks: transpose them all once, shared, and split the output rows between the threads.
  T* xt = scratch<T>(0, nch * K * L);
  T* yt = scratch<T>(1, nch * M * L);
  at::parallel_for(0, 2 * nch, 1, [&](int64_t t0, int64_t t1) {
    for (int64_t t = t0; t < t1; ++t) {
      const int64_t c = t >> 1;
      if (t & 1)
        pack_panel(yp, N, M, c * L, L, 0, M, yt + c * M * L);
      else
        pack_panel(xp, N, K, c * L, L, 0, K, xt + c * K * L);
    }
  });
  T* acc = scratch<T>(2, nnz);
  at::parallel_for(0, M, 16, [&](int64_t m0, int64_t m1) {
    std::fill(acc + rp[m0], acc + rp[m1], T(0));
    for (int64_t c = 0; c < nch; ++c)
      for (int64_t m = m0; m < m1; ++m)
        if (rp[m] < rp[m + 1])
          kern.sddmm_row(yt + (c * M + m) * L, xt + c * K * L, ci, rp[m], rp[m + 1], acc);
    std::memset(dwp + m0 * K, 0, sizeof(T) * (m1 - m0) * K);
    for (int64_t m = m0; m < m1; ++m)
      for (int32_t j = rp[m]; j < rp[m + 1]; ++j) dwp[m * K + ci[j]] = acc[j];
  });
}

}  // namespace

at::Tensor csr_linear(const at::Tensor& input, const at::Tensor& weight,
                      const std::optional<at::Tensor>& bias, const at::Tensor& row_ptr,
                      const at::Tensor& col_idx) {
  auto x = input.contiguous();
  auto w = weight.contiguous();
  auto y = at::empty({x.size(0), w.size(0)}, x.options());
  at::Tensor b = bias ? bias->contiguous() : at::Tensor();
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "csr_linear", [&] {
    linear_forward<scalar_t>(x, w, b.defined() ? b.data_ptr<scalar_t>() : nullptr,
                             row_ptr.data_ptr<int32_t>(), col_idx.data_ptr<int32_t>(), y);
  });
  return y;
}

at::Tensor csr_linear_grad_input(const at::Tensor& grad_output, const at::Tensor& weight,
                                 const at::Tensor& col_ptr, const at::Tensor& row_idx) {
  auto dy = grad_output.contiguous();
  auto w = weight.contiguous();
  auto dx = at::empty({dy.size(0), w.size(1)}, dy.options());
  AT_DISPATCH_FLOATING_TYPES(dy.scalar_type(), "csr_linear_grad_input", [&] {
    linear_grad_input<scalar_t>(dy, w, col_ptr.data_ptr<int32_t>(), row_idx.data_ptr<int32_t>(), dx);
  });
  return dx;
}

at::Tensor csr_linear_grad_weight(const at::Tensor& grad_output, const at::Tensor& input,
                                  const at::Tensor& row_ptr, const at::Tensor& col_idx) {
  auto dy = grad_output.contiguous();
  auto x = input.contiguous();
  auto dw = at::empty({dy.size(1), x.size(1)}, x.options());
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "csr_linear_grad_weight", [&] {
    linear_grad_weight<scalar_t>(dy, x, row_ptr.data_ptr<int32_t>(), col_idx.data_ptr<int32_t>(), dw);
  });
  return dw;
}

}  // namespace ebsparse
