// The fp32 micro-kernels of the sparse linear ops (kernels.h) for AVX2+FMA, the library's baseline:
// the SpMM (body in spmm.h), the SDDMM and the transpose. No fused backward: AVX2's 16 registers
// cannot hold both of its tiles.
#include <immintrin.h>

#include <cstdint>

#include "cpu/linear/kernels.h"
#include "cpu/simd_vec.h"

namespace ebsparse::linear_detail {

// ---- SpMM on a transposed panel (the kernel body is spmm.h) ------------------------------------

namespace avx2 {
using Vec = simd::Avx2;
#include "cpu/linear/spmm.h"
}  // namespace avx2

static_assert(avx2::kVecs * avx2::Vec::W == kNbAvx2, "the panel width must match spmm.h");

void spmm_rows_f32_avx2(const int32_t* col, const float* val, const int32_t* bptr, int64_t r0,
                        int64_t r1, const float* panel, float* tile) {
  avx2::spmm_rows<false>(col, val, bptr, r0, r1, panel, tile, nullptr);
}

void spmm_rows_init_f32_avx2(const int32_t* col, const float* val, const int32_t* bptr, int64_t r0,
                             int64_t r1, const float* panel, float* tile, const float* init) {
  avx2::spmm_rows<true>(col, val, bptr, r0, r1, panel, tile, init);
}

// ---- SDDMM -------------------------------------------------------------------------------------
// The 2 * NB values of a = dY^T[m, chunk] stay in registers (8 vectors: lo half, hi half); kept
// columns are taken 4 at a time, each with its own accumulator (independent FMA chains), and the
// partial vectors are reduced together by a transposing add tree, so the horizontal-sum cost is
// shared by 4 outputs.

static inline __m128 reduce4_avx2(const __m256* s) {
  const __m256 h01 = _mm256_hadd_ps(s[0], s[1]), h23 = _mm256_hadd_ps(s[2], s[3]);
  const __m256 q = _mm256_hadd_ps(h01, h23);
  return _mm_add_ps(_mm256_castps256_ps128(q), _mm256_extractf128_ps(q, 1));
}

void sddmm_f32_avx2(const float* a_lo, const float* a_hi, const float* x_lo, const float* x_hi,
                    const int32_t* col, int64_t e0, int64_t e1, float* acc) {
  constexpr int NB = kNbAvx2, H = NB / 8, V = 2 * H;
  __m256 y[V];
#pragma GCC unroll 4
  for (int v = 0; v < H; ++v) {
    y[v] = _mm256_load_ps(a_lo + 8 * v);
    y[H + v] = _mm256_load_ps(a_hi + 8 * v);
  }
  for (int64_t e = e0; e < e1; e += 4) {
    // Up to 4 kept columns at a time; missing ones repeat the last and are not written back.
    const int n = e1 - e < 4 ? int(e1 - e) : 4;
    const float* lo[4];
    const float* hi[4];
#pragma GCC unroll 4
    for (int u = 0; u < 4; ++u) {
      const int64_t c = col[e + (u < n ? u : n - 1)];
      lo[u] = x_lo + c * NB;
      hi[u] = x_hi + c * NB;
    }
    __m256 s[4];
#pragma GCC unroll 4
    for (int u = 0; u < 4; ++u) s[u] = _mm256_mul_ps(y[0], _mm256_load_ps(lo[u]));
#pragma GCC unroll 8
    for (int v = 1; v < V; ++v)
#pragma GCC unroll 4
      for (int u = 0; u < 4; ++u)
        s[u] = _mm256_fmadd_ps(y[v], _mm256_load_ps(v < H ? lo[u] + 8 * v : hi[u] + 8 * (v - H)), s[u]);
    alignas(16) float out[4];
    _mm_store_ps(out, reduce4_avx2(s));
    for (int u = 0; u < n; ++u) acc[e + u] += out[u];
  }
}

// ---- transpose ---------------------------------------------------------------------------------
// dst[c * ldd + r] = src[r * lds + c]: 8x8 blocks in registers (unpack / shuffle / lane swap), so
// that both the reads and the writes are 32-byte rows; scalar for the ragged edges. The blocks walk
// the rows of the large strided operand in the outer loop (a few of its rows at a time, each
// streamed start to end) rather than touching all of its rows at once (rows a power of two apart
// share cache sets, and many concurrent streams defeat the prefetchers), while the panel side sits
// in L2 anyway.

static inline void transpose8x8(const float* src, int64_t lds, float* dst, int64_t ldd) {
  __m256 r[8];
#pragma GCC unroll 8
  for (int i = 0; i < 8; ++i) r[i] = _mm256_loadu_ps(src + i * lds);
  __m256 t[8];
#pragma GCC unroll 4
  for (int i = 0; i < 8; i += 2) {
    t[i] = _mm256_unpacklo_ps(r[i], r[i + 1]);
    t[i + 1] = _mm256_unpackhi_ps(r[i], r[i + 1]);
  }
#pragma GCC unroll 2
  for (int i = 0; i < 8; i += 4) {
    r[i] = _mm256_shuffle_ps(t[i], t[i + 2], 0x44);
    r[i + 1] = _mm256_shuffle_ps(t[i], t[i + 2], 0xEE);
    r[i + 2] = _mm256_shuffle_ps(t[i + 1], t[i + 3], 0x44);
    r[i + 3] = _mm256_shuffle_ps(t[i + 1], t[i + 3], 0xEE);
  }
#pragma GCC unroll 4
  for (int i = 0; i < 4; ++i) {
    _mm256_storeu_ps(dst + i * ldd, _mm256_permute2f128_ps(r[i], r[i + 4], 0x20));
    _mm256_storeu_ps(dst + (i + 4) * ldd, _mm256_permute2f128_ps(r[i], r[i + 4], 0x31));
  }
}

void transpose_f32_avx2(const float* src, int64_t lds, int64_t rows, int64_t cols, float* dst,
                        int64_t ldd, bool dst_rows_outer) {
  const int64_t r8 = rows & ~int64_t(7), c8 = cols & ~int64_t(7);
  if (dst_rows_outer) {
    for (int64_t c = 0; c < c8; c += 8)
      for (int64_t r = 0; r < r8; r += 8) transpose8x8(src + r * lds + c, lds, dst + c * ldd + r, ldd);
  } else {
    for (int64_t r = 0; r < r8; r += 8)
      for (int64_t c = 0; c < c8; c += 8) transpose8x8(src + r * lds + c, lds, dst + c * ldd + r, ldd);
  }
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t c = (r < r8 ? c8 : 0); c < cols; ++c) dst[c * ldd + r] = src[r * lds + c];
}

}  // namespace ebsparse::linear_detail
