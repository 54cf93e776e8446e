// Private to csrc/cpu/block: the fp32 micro-kernels of the block-sparse (BSR) ops, one set per
// instruction set (kernels_avx512.cpp, kernels_avx2.cpp; block.cpp picks one via cpu_capability()).
//
// Layouts (block.cpp builds them per call in per-thread scratch, 64-byte aligned):
//   rows   rows[k][i]: row k of the right-hand operand (a transposed activation for linear, an
//          im2col row (ci, kh, kw) for conv) at column i of the current column tile: a row of a
//          copied panel (`panel`, rows ld apart, when `rows` is null), or (stride-1 conv) a run of
//          the padded input read in place through the table `rows`, unaligned.
//   tile   T[r * ld + i]: output row r (output channel / feature) at column i.
//   blocks the kept blocks of one block row, j in [b0, b1): idx[j] is the block column, and
//          vals[j * br * bc + r * bc + c] the weight at row r, column c of block j (packed per call).
#pragma once
#include <cstdint>

namespace ebsparse::block_detail {

// Columns one SpMM call covers (4 vectors): 64 with AVX-512, 32 with AVX2.
constexpr int kPtAvx512 = 64;
constexpr int kPtAvx2 = 32;

// T[r * ld + i] += sum_{j in [b0, b1)} sum_{c < bc} vals[j][r, c] * rows[idx[j] * bc + c][i]
// for r < br, i < width rounded up to 1, 2 or 4 vectors (width <= kPt: the first columns of the
// panel and tile pointers passed).
void spmm_f32_avx512(const float* vals, const int32_t* idx, int64_t b0, int64_t b1, int br, int bc,
                     const float* panel, const float* const* rows, float* tile, int64_t ld, int64_t width);
void spmm_f32_avx2(const float* vals, const int32_t* idx, int64_t b0, int64_t b1, int br, int bc,
                   const float* panel, const float* const* rows, float* tile, int64_t ld, int64_t width);

// The images one SDDMM call sums over: image m's gradient tile is D + m * dstep, its panel rows
// rows[k] + m * rstep (rows read in place; a copied panel holds one image's columns: count 1).
struct Images {
  int64_t count = 1, dstep = 0, rstep = 0;
};

// acc[j * br * bc + r * bc + c] += sum_{m < images.count} sum_{i < n} D[m * dstep + r * ld + i]
//                                  * rows[idx[j] * bc + c][m * rstep + i]
// for j in [b0, b1), r < br, c < bc; n a multiple of the vector width.
void sddmm_f32_avx512(const float* dtile, const int32_t* idx, int64_t b0, int64_t b1, int br, int bc,
                      const float* panel, const float* const* rows, int64_t ld, int64_t n, const Images& images,
                      float* acc);
void sddmm_f32_avx2(const float* dtile, const int32_t* idx, int64_t b0, int64_t b1, int br, int bc,
                    const float* panel, const float* const* rows, int64_t ld, int64_t n, const Images& images,
                    float* acc);

// Row-major kernels of the linear layer; ow (a block's output width) 2 or 4 vectors; packed 64-byte
// aligned. rspmm reads the activations k-major (at[k * ldt + n]: a strip of batch rows the caller
// transposed); rsddmm reads them as they lie (rows of lda / ldb floats).
// out[n * ldo + i] = (init ? init[i] : 0) + sum_{j in [b0, b1)} sum_{k < kb} at[(idx[j] * kb + k) * ldt + n]
//                    * packed[(j * kb + k) * ow + i]          for n < rows, i < ow;
// with `stream`, 64-byte aligned output rows go out as streaming stores (the caller fences).
void rspmm_f32_avx512(const float* at, int64_t ldt, int64_t rows, const float* packed, const int32_t* idx, int64_t b0,
                      int64_t b1, int kb, int ow, const float* init, float* out, int64_t ldo, bool stream);
void rspmm_f32_avx2(const float* at, int64_t ldt, int64_t rows, const float* packed, const int32_t* idx, int64_t b0,
                    int64_t b1, int kb, int ow, const float* init, float* out, int64_t ldo, bool stream);
// out[r * ow + i] += sum_{n < rows} a[n * lda + r] * b[n * ldb + i]          for r < kr, i < ow.
void rsddmm_f32_avx512(const float* a, int64_t lda, int kr, const float* b, int64_t ldb, int64_t rows, int ow,
                       float* out);
void rsddmm_f32_avx2(const float* a, int64_t lda, int kr, const float* b, int64_t ldb, int64_t rows, int ow,
                     float* out);

}  // namespace ebsparse::block_detail
