// The SpMM micro-kernel of the sparse linear ops, written once against the vector adapters of
// simd_vec.h and included by kernels_avx512.cpp and kernels_avx2.cpp, inside a namespace that
// aliases `Vec` (the AVX-512 copy inside a target pragma). Layouts: kernels.h.
//
// One output row r keeps its NB = 4 * W outputs in registers while it walks its kept weights: each
// kept weight costs one column load, one broadcast and 4 fused multiply-adds whose second operand
// is an aligned, base-addressed (simd::base_address) load from the panel row of its column (within
// the current k-block, which stays in L1/L2). The entries alternate between two accumulator sets so
// that 8 independent FMA chains hide the FMA latency.
//
// kInit (the first k-block of a tile) starts every row from init[r] (or 0) instead of loading it, and
// stores rows without entries too, so the tile needs no separate fill pass (a 256 KB L2 write per
// batch block).

namespace {

constexpr int kVecs = 4;  // vectors per output row: NB = kVecs * Vec::W

template <bool kInit>
inline void spmm_rows(const int32_t* col, const float* val, const int32_t* bptr, int64_t r0,
                      int64_t r1, const float* panel, float* tile, const float* init) {
  constexpr int NB = kVecs * Vec::W;
  for (int64_t r = r0; r < r1; ++r) {
    int64_t j = bptr[r];
    const int64_t e = bptr[r + 1];
    float* t = tile + r * NB;
    if constexpr (!kInit) {
      if (j == e) continue;
    }
    typename Vec::T a[kVecs], b[kVecs];
    const auto a0 = kInit ? Vec::bcast(init ? init[r] : 0.f) : Vec::zero();
#pragma GCC unroll 4
    for (int v = 0; v < kVecs; ++v) {
      a[v] = kInit ? a0 : Vec::load(t + v * Vec::W);
      b[v] = Vec::zero();
    }
    for (; j + 1 < e; j += 2) {
      const float* p = simd::base_address(panel + int64_t(col[j]) * NB);
      const auto w = Vec::bcast(val[j]);
      const float* q = simd::base_address(panel + int64_t(col[j + 1]) * NB);
      const auto u = Vec::bcast(val[j + 1]);
#pragma GCC unroll 4
      for (int v = 0; v < kVecs; ++v) a[v] = Vec::fma(w, Vec::load(p + v * Vec::W), a[v]);
#pragma GCC unroll 4
      for (int v = 0; v < kVecs; ++v) b[v] = Vec::fma(u, Vec::load(q + v * Vec::W), b[v]);
    }
    if (j < e) {
      const float* p = simd::base_address(panel + int64_t(col[j]) * NB);
      const auto w = Vec::bcast(val[j]);
#pragma GCC unroll 4
      for (int v = 0; v < kVecs; ++v) a[v] = Vec::fma(w, Vec::load(p + v * Vec::W), a[v]);
    }
#pragma GCC unroll 4
    for (int v = 0; v < kVecs; ++v) Vec::store(t + v * Vec::W, Vec::add(a[v], b[v]));
  }
}

}  // namespace
