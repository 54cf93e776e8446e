// The SpMM micro-kernel of the sparse linear ops, written once against the vector adapters of
// simd_vec.h and included by linear_simd.cpp once per instruction set, inside a namespace that
// aliases `Vec` (the AVX-512 copy inside a target pragma). Layouts: linear_kernels.h.
//
// One output row r keeps its NB = kVecs * W outputs in registers while it walks its kept weights:
// each kept weight costs one column load, one broadcast and kVecs fused multiply-adds whose second
// operand is an aligned, base-addressed (simd::base_address) load from the panel row of its column
// (within the current k-block, which stays in L1/L2). Wider rows (8 vectors) share the column load,
// the broadcast and the loop's integer work between twice the FMAs; that work competes with the
// FMAs for two of the issue ports, so it bounds a 4-vector row at about 70% of the FMA peak even
// with every panel row in L1.
//
// kInit (the first k-block of a tile) starts every row from init[r] (or 0) instead of loading it, and
// stores rows without entries too, so the tile needs no separate fill pass (a 256 KB L2 write per
// batch block).

namespace {

// kVecs vectors per output row (NB = kVecs * Vec::W). With 4, the entries alternate between two
// accumulator sets (8 independent FMA chains); 8 vectors are 8 chains on their own.
template <int kVecs, bool kInit>
inline void spmm_rows(const int32_t* col, const float* val, const int32_t* bptr, int64_t r0,
                      int64_t r1, const float* panel, float* tile, const float* init) {
  constexpr int NB = kVecs * Vec::W;
  constexpr int kSets = kVecs >= 8 ? 1 : 2;
  for (int64_t r = r0; r < r1; ++r) {
    int64_t j = bptr[r];
    const int64_t e = bptr[r + 1];
    float* t = tile + r * NB;
    if constexpr (!kInit) {
      if (j == e) continue;
    }
    typename Vec::T a[kSets][kVecs];
    const auto a0 = kInit ? Vec::bcast(init ? init[r] : 0.f) : Vec::zero();
#pragma GCC unroll 8
    for (int v = 0; v < kVecs; ++v) {
      a[0][v] = kInit ? a0 : Vec::load(t + v * Vec::W);
      if constexpr (kSets == 2) a[1][v] = Vec::zero();
    }
    for (; j + kSets <= e; j += kSets) {
#pragma GCC unroll 2
      for (int s = 0; s < kSets; ++s) {
        const float* p = simd::base_address(panel + int64_t(col[j + s]) * NB);
        const auto w = Vec::bcast(val[j + s]);
#pragma GCC unroll 8
        for (int v = 0; v < kVecs; ++v) a[s][v] = Vec::fma(w, Vec::load(p + v * Vec::W), a[s][v]);
      }
    }
    if (j < e) {
      const float* p = simd::base_address(panel + int64_t(col[j]) * NB);
      const auto w = Vec::bcast(val[j]);
#pragma GCC unroll 8
      for (int v = 0; v < kVecs; ++v) a[0][v] = Vec::fma(w, Vec::load(p + v * Vec::W), a[0][v]);
    }
#pragma GCC unroll 8
    for (int v = 0; v < kVecs; ++v) Vec::store(t + v * Vec::W, kSets == 2 ? Vec::add(a[0][v], a[1][v]) : a[0][v]);
  }
}

}  // namespace
