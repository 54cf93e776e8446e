// The block micro-kernels, written once against the vector adapters of simd_vec.h and included by
// kernels_avx512.cpp and kernels_avx2.cpp inside a namespace aliasing `Vec` and kRows (the register
// tile's rows). Layouts: kernels.h.
//
// SpMM: a register tile of kRows output rows x 4 vectors (or more rows x fewer vectors for a narrow
// tile) stays in registers across every kept block of the block row; per column c of a block, 4
// panel loads and kRows broadcasts feed 4 * kRows FMAs (a dense micro-GEMM per block: weights are reused across the 4 vectors, panel
// loads across the kRows rows, which unstructured sparsity cannot do).
// SDDMM: dot products of kRows gradient rows with 4 panel rows (4 * kRows accumulators) over the n
// columns of each image of `images`, one horizontal sum per output at the end.

namespace {

constexpr int kVecs = 4;

// How a kernel finds panel row k: a copied panel (rows ld apart: the address is computed, no load)
// or a table of row pointers (rows read in place).
struct StridedRows {
  const float* base;
  int64_t ld;
  const float* operator[](int64_t k) const { return base + k * ld; }
};
struct TableRows {
  const float* const* rows;
  const float* operator[](int64_t k) const { return rows[k]; }
};

template <int RT, int NV, class Rows>
inline void spmm_rows(const float* vals, const int32_t* idx, int64_t b0, int64_t b1, int br, int bc,
                      Rows rows, float* tile, int64_t ld, int r0) {
  using V = typename Vec::T;
  V acc[RT][NV];
#pragma GCC unroll 16
  for (int r = 0; r < RT; ++r)
#pragma GCC unroll 4
    for (int v = 0; v < NV; ++v) acc[r][v] = Vec::load(tile + (r0 + r) * ld + v * Vec::W);
  const int64_t bs = int64_t(br) * bc;
  for (int64_t j = b0; j < b1; ++j) {
    const float* a = vals + j * bs + int64_t(r0) * bc;
    const int64_t k0 = int64_t(idx[j]) * bc;
    for (int c = 0; c < bc; ++c) {
      const float* q = simd::base_address(rows[k0 + c]);
      V b[NV];
#pragma GCC unroll 4
      for (int v = 0; v < NV; ++v) b[v] = Vec::in_register(Vec::loadu(q + v * Vec::W));
#pragma GCC unroll 16
      for (int r = 0; r < RT; ++r) {
        const V w = Vec::bcast(a[r * bc + c]);
#pragma GCC unroll 4
        for (int v = 0; v < NV; ++v) acc[r][v] = Vec::fma(w, b[v], acc[r][v]);
      }
    }
  }
#pragma GCC unroll 16
  for (int r = 0; r < RT; ++r)
#pragma GCC unroll 4
    for (int v = 0; v < NV; ++v) Vec::store(tile + (r0 + r) * ld + v * Vec::W, acc[r][v]);
}

// NV vectors of columns; taller register tiles at narrower widths keep the accumulator count (and
// so the FMAs per panel load) of the full-width tile.
template <int NV, class Rows>
inline void spmm_nv(const float* vals, const int32_t* idx, int64_t b0, int64_t b1, int br, int bc, Rows rows,
                    float* tile, int64_t ld) {
  constexpr int RT = kRows * kVecs / NV;
  int r = 0;
  for (; r + RT <= br; r += RT) spmm_rows<RT, NV>(vals, idx, b0, b1, br, bc, rows, tile, ld, r);
  if constexpr (RT > kRows)
    for (; r + kRows <= br; r += kRows) spmm_rows<kRows, NV>(vals, idx, b0, b1, br, bc, rows, tile, ld, r);
  for (; r < br; ++r) spmm_rows<1, NV>(vals, idx, b0, b1, br, bc, rows, tile, ld, r);
}

// The first `width` columns (rounded up to 1, 2 or kVecs vectors): a column tile's last, narrower
// piece (a small feature map's image) is not computed at the full width.
template <class Rows>
inline void spmm(const float* vals, const int32_t* idx, int64_t b0, int64_t b1, int br, int bc,
                 Rows rows, float* tile, int64_t ld, int64_t width) {
  if (b0 == b1) return;
  const int64_t nv = (width + Vec::W - 1) / Vec::W;
  if (nv <= 1) return spmm_nv<1>(vals, idx, b0, b1, br, bc, rows, tile, ld);
  if (nv <= 2) return spmm_nv<2>(vals, idx, b0, b1, br, bc, rows, tile, ld);
  spmm_nv<kVecs>(vals, idx, b0, b1, br, bc, rows, tile, ld);
}

template <int RT, class Rows>
inline void sddmm_rows(const float* dtile, Rows rows, const int32_t* idx, int64_t j, int br, int bc,
                       int64_t ld, int64_t n, const Images& images, int r0, float* acc) {
  using V = typename Vec::T;
  const int64_t k0 = int64_t(idx[j]) * bc;
  float* out = acc + j * int64_t(br) * bc;
  for (int c0 = 0; c0 < bc; c0 += 4) {
    const int nc = bc - c0 < 4 ? bc - c0 : 4;
    const float* b[4];
#pragma GCC unroll 4
    for (int c = 0; c < 4; ++c) b[c] = rows[k0 + c0 + (c < nc ? c : nc - 1)];
    V s[RT][4];
#pragma GCC unroll 8
    for (int r = 0; r < RT; ++r)
#pragma GCC unroll 4
      for (int c = 0; c < 4; ++c) s[r][c] = Vec::zero();
    for (int64_t m = 0; m < images.count; ++m) {
      const float* d = dtile + m * images.dstep;
      const int64_t shift = m * images.rstep;
      for (int64_t i = 0; i < n; i += Vec::W) {
        V bv[4];
#pragma GCC unroll 4
        for (int c = 0; c < 4; ++c) bv[c] = Vec::loadu(b[c] + shift + i);
#pragma GCC unroll 8
        for (int r = 0; r < RT; ++r) {
          const V a = Vec::load(d + (r0 + r) * ld + i);
#pragma GCC unroll 4
          for (int c = 0; c < 4; ++c) s[r][c] = Vec::fma(a, bv[c], s[r][c]);
        }
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

template <class Rows>
inline void sddmm(const float* dtile, const int32_t* idx, int64_t b0, int64_t b1, int br, int bc,
                  Rows rows, int64_t ld, int64_t n, const Images& images, float* acc) {
  for (int64_t j = b0; j < b1; ++j) {
    int r = 0;
    for (; r + kRows <= br; r += kRows) sddmm_rows<kRows>(dtile, rows, idx, j, br, bc, ld, n, images, r, acc);
    for (; r < br; ++r) sddmm_rows<1>(dtile, rows, idx, j, br, bc, ld, n, images, r, acc);
  }
}

}  // namespace

// ---- row-major kernels of the linear layer (no transposes of the layer's tensors) -------------------
// rspmm: out rows of RT batch rows x NV vectors (one block's ow outputs) stay in registers across the
// kept blocks; per k, NV aligned loads of the packed block row and RT broadcasts of the activation
// feed RT * NV FMAs. The activations come as a k-major strip (at[k * ldt + n], transposed per task
// by the caller), so the RT broadcasts of one k are adjacent floats at constant offsets: read in
// place, the RT rows lie lda apart (4 KB for 1024 features) and share one L1 set. With `stream`,
// whole cache lines of the output go out as streaming stores (the caller fences). rsddmm: an
// (RT x ow) piece of a block's gradient in registers, summed over the batch rows as outer products:
// no horizontal sums, no transposed copies of the activations.

namespace {

template <int RT, int NV>
inline void rspmm_tile(const float* at, int64_t ldt, const float* packed, const int32_t* idx, int64_t b0,
                       int64_t b1, int kb, const float* init, float* out, int64_t ldo, bool stream) {
  using V = typename Vec::T;
  constexpr int ow = NV * Vec::W;
  V acc[RT][NV];
#pragma GCC unroll 4
  for (int v = 0; v < NV; ++v) {
    const V i = init ? Vec::loadu(init + v * Vec::W) : Vec::zero();
#pragma GCC unroll 24
    for (int r = 0; r < RT; ++r) acc[r][v] = i;
  }
  for (int64_t j = b0; j < b1; ++j) {
    const float* ak = at + int64_t(idx[j]) * kb * ldt;
    const float* pj = simd::base_address(packed + j * kb * ow);
    for (int k = 0; k < kb; ++k, ak += ldt) {
      const float* x = simd::base_address(ak);
      V w[NV];
#pragma GCC unroll 4
      for (int v = 0; v < NV; ++v) w[v] = Vec::in_register(Vec::load(pj + k * ow + v * Vec::W));
#pragma GCC unroll 24
      for (int r = 0; r < RT; ++r) {
        const V xr = Vec::bcast(x[r]);
#pragma GCC unroll 4
        for (int v = 0; v < NV; ++v) acc[r][v] = Vec::fma(xr, w[v], acc[r][v]);
      }
    }
  }
  if (stream && reinterpret_cast<uintptr_t>(out) % 64 == 0 && ldo % 16 == 0) {  // whole cache lines
#pragma GCC unroll 24
    for (int r = 0; r < RT; ++r)
#pragma GCC unroll 4
      for (int v = 0; v < NV; ++v) Vec::stream(out + r * ldo + v * Vec::W, acc[r][v]);
    return;
  }
#pragma GCC unroll 24
  for (int r = 0; r < RT; ++r)
#pragma GCC unroll 4
    for (int v = 0; v < NV; ++v) Vec::storeu(out + r * ldo + v * Vec::W, acc[r][v]);
}

template <int NV>
inline void rspmm_nv(const float* at, int64_t ldt, int64_t rows, const float* packed, const int32_t* idx, int64_t b0,
                     int64_t b1, int kb, const float* init, float* out, int64_t ldo, bool stream) {
  constexpr int RT = kAcc / NV;
  int64_t n = 0;
  for (; n + RT <= rows; n += RT)
    rspmm_tile<RT, NV>(at + n, ldt, packed, idx, b0, b1, kb, init, out + n * ldo, ldo, stream);
  for (; n < rows; ++n) rspmm_tile<1, NV>(at + n, ldt, packed, idx, b0, b1, kb, init, out + n * ldo, ldo, stream);
}

inline void rspmm(const float* at, int64_t ldt, int64_t rows, const float* packed, const int32_t* idx, int64_t b0,
                  int64_t b1, int kb, int ow, const float* init, float* out, int64_t ldo, bool stream) {
  switch (ow / Vec::W) {
    case 2: return rspmm_nv<2>(at, ldt, rows, packed, idx, b0, b1, kb, init, out, ldo, stream);
    default: return rspmm_nv<4>(at, ldt, rows, packed, idx, b0, b1, kb, init, out, ldo, stream);
  }
}

template <int RT, int NV>
inline void rsddmm_tile(const float* a, int64_t lda, const float* b, int64_t ldb, int64_t rows, float* out) {
  using V = typename Vec::T;
  constexpr int ow = NV * Vec::W;
  V acc[RT][NV];
#pragma GCC unroll 24
  for (int r = 0; r < RT; ++r)
#pragma GCC unroll 4
    for (int v = 0; v < NV; ++v) acc[r][v] = Vec::loadu(out + r * ow + v * Vec::W);
  for (int64_t n = 0; n < rows; ++n) {
    const float* bn = simd::base_address(b + n * ldb);
    const float* an = simd::base_address(a + n * lda);
    V x[NV];
#pragma GCC unroll 4
    for (int v = 0; v < NV; ++v) x[v] = Vec::in_register(Vec::loadu(bn + v * Vec::W));
#pragma GCC unroll 24
    for (int r = 0; r < RT; ++r) {
      const V g = Vec::bcast(an[r]);
#pragma GCC unroll 4
      for (int v = 0; v < NV; ++v) acc[r][v] = Vec::fma(g, x[v], acc[r][v]);
    }
  }
#pragma GCC unroll 24
  for (int r = 0; r < RT; ++r)
#pragma GCC unroll 4
    for (int v = 0; v < NV; ++v) Vec::storeu(out + r * ow + v * Vec::W, acc[r][v]);
}

template <int NV>
inline void rsddmm_nv(const float* a, int64_t lda, int kr, const float* b, int64_t ldb, int64_t rows, float* out) {
  constexpr int RT = kAcc / NV, ow = NV * Vec::W;
  int r = 0;
  for (; r + RT <= kr; r += RT) rsddmm_tile<RT, NV>(a + r, lda, b, ldb, rows, out + r * ow);
  for (; r + 4 <= kr; r += 4) rsddmm_tile<4, NV>(a + r, lda, b, ldb, rows, out + r * ow);
  for (; r < kr; ++r) rsddmm_tile<1, NV>(a + r, lda, b, ldb, rows, out + r * ow);
}

inline void rsddmm(const float* a, int64_t lda, int kr, const float* b, int64_t ldb, int64_t rows, int ow,
                   float* out) {
  switch (ow / Vec::W) {
    case 2: return rsddmm_nv<2>(a, lda, kr, b, ldb, rows, out);
    default: return rsddmm_nv<4>(a, lda, kr, b, ldb, rows, out);
  }
}

}  // namespace
