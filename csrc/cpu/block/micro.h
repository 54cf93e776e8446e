// The block micro-kernels, written once against the vector adapters of simd_vec.h and included by
// kernels_avx512.cpp and kernels_avx2.cpp inside a namespace aliasing `Vec` and kRows (the register
// tile's rows). Layouts: kernels.h.
//
// SpMM: a register tile of kRows output rows x 4 vectors stays in registers across every kept block
// of the block row; per column c of a block, 4 panel loads and kRows broadcasts feed
// 4 * kRows FMAs (a dense micro-GEMM per block: weights are reused across the 4 vectors, panel
// loads across the kRows rows, which unstructured sparsity cannot do).
// SDDMM: dot products of kRows gradient rows with 4 panel rows (4 * kRows accumulators) over the n
// columns, one horizontal sum per output at the end.

namespace {

constexpr int kVecs = 4;

template <int RT>
inline void spmm_rows(const float* vals, const int32_t* idx, int64_t b0, int64_t b1, int br, int bc,
                      const float* const* rows, float* tile, int64_t ld, int r0) {
  using V = typename Vec::T;
  V acc[RT][kVecs];
#pragma GCC unroll 8
  for (int r = 0; r < RT; ++r)
#pragma GCC unroll 4
    for (int v = 0; v < kVecs; ++v) acc[r][v] = Vec::load(tile + (r0 + r) * ld + v * Vec::W);
  const int64_t bs = int64_t(br) * bc;
  for (int64_t j = b0; j < b1; ++j) {
    const float* a = vals + j * bs + int64_t(r0) * bc;
    const float* const* p = rows + int64_t(idx[j]) * bc;
    for (int c = 0; c < bc; ++c) {
      const float* q = simd::base_address(p[c]);
      V b[kVecs];
#pragma GCC unroll 4
      for (int v = 0; v < kVecs; ++v) b[v] = Vec::in_register(Vec::loadu(q + v * Vec::W));
#pragma GCC unroll 8
      for (int r = 0; r < RT; ++r) {
        const V w = Vec::bcast(a[r * bc + c]);
#pragma GCC unroll 4
        for (int v = 0; v < kVecs; ++v) acc[r][v] = Vec::fma(w, b[v], acc[r][v]);
      }
    }
  }
#pragma GCC unroll 8
  for (int r = 0; r < RT; ++r)
#pragma GCC unroll 4
    for (int v = 0; v < kVecs; ++v) Vec::store(tile + (r0 + r) * ld + v * Vec::W, acc[r][v]);
}

inline void spmm(const float* vals, const int32_t* idx, int64_t b0, int64_t b1, int br, int bc,
                 const float* const* rows, float* tile, int64_t ld) {
  if (b0 == b1) return;
  int r = 0;
  for (; r + kRows <= br; r += kRows) spmm_rows<kRows>(vals, idx, b0, b1, br, bc, rows, tile, ld, r);
  for (; r < br; ++r) spmm_rows<1>(vals, idx, b0, b1, br, bc, rows, tile, ld, r);
}

template <int RT>
inline void sddmm_rows(const float* dtile, const float* const* rows, const int32_t* idx, int64_t j, int br, int bc,
                       int64_t ld, int64_t n, int r0, float* acc) {
  using V = typename Vec::T;
  const float* const* p = rows + int64_t(idx[j]) * bc;
  float* out = acc + j * int64_t(br) * bc;
  for (int c0 = 0; c0 < bc; c0 += 4) {
    const int nc = bc - c0 < 4 ? bc - c0 : 4;
    const float* b[4];
#pragma GCC unroll 4
    for (int c = 0; c < 4; ++c) b[c] = p[c0 + (c < nc ? c : nc - 1)];
    V s[RT][4];
#pragma GCC unroll 8
    for (int r = 0; r < RT; ++r)
#pragma GCC unroll 4
      for (int c = 0; c < 4; ++c) s[r][c] = Vec::zero();
    for (int64_t i = 0; i < n; i += Vec::W) {
      V bv[4];
#pragma GCC unroll 4
      for (int c = 0; c < 4; ++c) bv[c] = Vec::loadu(b[c] + i);
#pragma GCC unroll 8
      for (int r = 0; r < RT; ++r) {
        const V a = Vec::load(dtile + (r0 + r) * ld + i);
#pragma GCC unroll 4
        for (int c = 0; c < 4; ++c) s[r][c] = Vec::fma(a, bv[c], s[r][c]);
      }
    }
#pragma GCC unroll 8
    for (int r = 0; r < RT; ++r) {
      float* o = out + (r0 + r) * bc + c0;
      if (nc == 4) {
        add_sums4(s[r], o);  // one transposing add tree for the 4 sums (kernels_<isa>.cpp)
      } else {
        for (int c = 0; c < nc; ++c) o[c] += Vec::hsum(s[r][c]);
      }
    }
  }
}

inline void sddmm(const float* dtile, const int32_t* idx, int64_t b0, int64_t b1, int br, int bc,
                  const float* const* rows, int64_t ld, int64_t n, float* acc) {
  for (int64_t j = b0; j < b1; ++j) {
    int r = 0;
    for (; r + kRows <= br; r += kRows) sddmm_rows<kRows>(dtile, rows, idx, j, br, bc, ld, n, r, acc);
    for (; r < br; ++r) sddmm_rows<1>(dtile, rows, idx, j, br, bc, ld, n, r, acc);
  }
}

}  // namespace
