// Private to csrc/cpu/linear*.cpp: the fp32 SIMD micro-kernels of the sparse linear ops and the
// layouts they share with the drivers in linear.cpp.
//
// Layouts (rebuilt on every call in O(nnz + N * (K + M)) into buffers reused between calls;
// nothing scans the dense mask):
//   panel  P[c * NB + i] = A[n0 + i, c]: a block of NB rows of a row-major (N, C) activation,
//          transposed so that one column c is NB contiguous values (zero past N). 64-byte aligned.
//   tile   T[r * NB + i]: the transposed output block, out[n0 + i, r].
//   Entry  one kept weight in k-blocked order: off = c * NB (start of its panel row), val = weight.
//   bptr   bptr[b * R + r] .. bptr[b * R + r + 1]: entries of output row r whose column lies in
//          k-block b (columns [b * KB, (b + 1) * KB)); one array of size nkb * R + 1.
#pragma once
#include <cstdint>

namespace ebsparse::linear_detail {

template <typename T>
struct Entry {
  int32_t off;
  T val;
};

// Panel widths (outputs per register tile) of the fp32 kernels.
constexpr int kNbAvx512 = 64;   // 4 zmm
constexpr int kNbAvx2 = 32;     // 4 ymm
// n-chunk length of the SDDMM kernels (one dY row chunk is held in registers).
constexpr int kLAvx512 = 128;   // 8 zmm
constexpr int kLAvx2 = 64;      // 8 ymm

bool cpu_has_avx512();

// T[r * NB + i] += sum_{j in [bptr[r], bptr[r + 1])} ent[j].val * P[ent[j].off + i],
// for r in [r0, r1), i < NB.
void spmm_rows_f32_avx512(const Entry<float>* ent, const int32_t* bptr, int64_t r0, int64_t r1,
                          const float* panel, float* tile);
void spmm_rows_f32_avx2(const Entry<float>* ent, const int32_t* bptr, int64_t r0, int64_t r1,
                        const float* panel, float* tile);

// acc[j] += sum_{i < L} a[i] * xt[idx[j] * L + i], for j in [j0, j1).
void sddmm_row_f32_avx512(const float* a, const float* xt, const int32_t* idx, int64_t j0,
                          int64_t j1, float* acc);
void sddmm_row_f32_avx2(const float* a, const float* xt, const int32_t* idx, int64_t j0,
                        int64_t j1, float* acc);

// dst[c * ldd + r] = src[r * lds + c] for r < rows, c < cols (AVX2 baseline).
void transpose_f32(const float* src, int64_t lds, int64_t rows, int64_t cols, float* dst,
                   int64_t ldd);

}  // namespace ebsparse::linear_detail
