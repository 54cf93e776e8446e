// Private to csrc/cpu/linear: the fp32 SIMD micro-kernels of the sparse linear ops, one set per
// instruction set (kernels_avx512.cpp, kernels_avx2.cpp; linear.cpp picks one through
// cpu_capability()), and the layouts they share with the drivers in linear.cpp.
//
// Layouts (the entry lists come from the cached plan, plan.h; the panels and values are
// rewritten on every call into buffers reused between calls; nothing scans the dense mask):
//   panel  P[c * NB + i] = A[n0 + i, c]: a block of NB rows of a row-major (N, C) activation,
//          transposed so that one column c is NB contiguous values (zero past N). 64-byte aligned.
//   tile   T[r * NB + i]: the transposed output block, out[n0 + i, r].
//   entries  col[e] (column of S), val[e] (its weight), in (k-block, row) order: bptr[b * R + r]
//          .. bptr[b * R + r + 1] are the entries of row r whose column lies in k-block b.
//   The SDDMM reduces over a chunk of 2 * NB batch rows held as two panels (lo, hi) of NB each.
#pragma once
#include <cstdint>

namespace ebsparse::linear_detail {

// Panel widths (outputs per register tile) of the fp32 kernels.
constexpr int kNbAvx512 = 64;   // 4 zmm
constexpr int kNbAvx2 = 32;     // 4 ymm

// T[r * NB + i] += sum_{e in [bptr[r], bptr[r + 1])} val[e] * P[col[e] * NB + i],
// for r in [r0, r1), i < NB.
void spmm_rows_f32_avx512(const int32_t* col, const float* val, const int32_t* bptr, int64_t r0,
                          int64_t r1, const float* panel, float* tile);
void spmm_rows_f32_avx2(const int32_t* col, const float* val, const int32_t* bptr, int64_t r0,
                        int64_t r1, const float* panel, float* tile);
// The same for the first k-block of a tile: T[r * NB + i] = (init ? init[r] : 0) + the sum, written
// for every r in [r0, r1) (rows without entries too), so the tile is never filled separately.
void spmm_rows_init_f32_avx512(const int32_t* col, const float* val, const int32_t* bptr, int64_t r0,
                               int64_t r1, const float* panel, float* tile, const float* init);
void spmm_rows_init_f32_avx2(const int32_t* col, const float* val, const int32_t* bptr, int64_t r0,
                             int64_t r1, const float* panel, float* tile, const float* init);

// acc[e] += sum_{i < NB} a_lo[i] * x_lo[col[e] * NB + i] + a_hi[i] * x_hi[col[e] * NB + i],
// for e in [e0, e1).
void sddmm_f32_avx512(const float* a_lo, const float* a_hi, const float* x_lo, const float* x_hi,
                      const int32_t* col, int64_t e0, int64_t e1, float* acc);
void sddmm_f32_avx2(const float* a_lo, const float* a_hi, const float* x_lo, const float* x_hi,
                    const int32_t* col, int64_t e0, int64_t e1, float* acc);

// The grad-input SpMM and the SDDMM of one chunk of 2 * NB batch rows in one walk of the transposed
// pattern S^T (rows r = k, entries e with col[e] = m and val[e] = W[m, k]), AVX-512 only:
//   T[r * NB + i] (+)= sum_e val[e] * dY[col[e] * NB + i]      for both halves (lo, hi), and
//   part[e] += sum_i dY[col[e] * NB + i] * X[r * NB + i]       over both halves,
// for r in [r0, r1). first_block: T starts from zero (rows without entries are written too).
void backward_rows_f32_avx512(const int32_t* col, const float* val, const int32_t* bptr, int64_t r0,
                              int64_t r1, const float* dy_lo, const float* dy_hi, const float* x_lo,
                              const float* x_hi, float* t_lo, float* t_hi, float* part,
                              bool first_block);

// dst[c * ldd + r] = src[r * lds + c] for r < rows, c < cols. dst_rows_outer: dst is the large
// output written once (walk its rows in the outer loop; the AVX-512 one streams it to memory where
// its rows are 64-byte aligned); else src is the large strided side (walk its rows outermost).
void transpose_f32_avx512(const float* src, int64_t lds, int64_t rows, int64_t cols, float* dst,
                          int64_t ldd, bool dst_rows_outer);
void transpose_f32_avx2(const float* src, int64_t lds, int64_t rows, int64_t cols, float* dst,
                        int64_t ldd, bool dst_rows_outer);

}  // namespace ebsparse::linear_detail
