// The fp32 micro-kernels of the sparse linear ops (kernels.h) for AVX-512, reached only when
// cpu_capability() chose it: the SpMM (body in spmm.h), the SDDMM, the fused backward and the
// transpose. The includes come first, built for the AVX2 baseline like the rest of the library;
// the pragma then raises the target of everything defined below (helpers have internal linkage, so
// no AVX-512 code can stand in for a baseline copy).
#include <immintrin.h>

#include <algorithm>
#include <cstdint>

#include "cpu/linear/kernels.h"
#include "cpu/simd_vec.h"

#pragma GCC push_options
#pragma GCC target("avx512f,avx512vl,avx512bw,avx512dq,fma")

namespace ebsparse::linear_detail {

// ---- SpMM on a transposed panel (the kernel body is spmm.h) ------------------------------------

namespace avx512 {
using Vec = simd::Avx512;
#include "cpu/linear/spmm.h"
}  // namespace avx512

static_assert(avx512::kVecs * avx512::Vec::W == kNbAvx512, "the panel width must match spmm.h");

void spmm_rows_f32_avx512(const int32_t* col, const float* val, const int32_t* bptr,
                          int64_t r0, int64_t r1, const float* panel, float* tile) {
  avx512::spmm_rows<false>(col, val, bptr, r0, r1, panel, tile, nullptr);
}

void spmm_rows_init_f32_avx512(const int32_t* col, const float* val, const int32_t* bptr,
                               int64_t r0, int64_t r1, const float* panel, float* tile,
                               const float* init) {
  avx512::spmm_rows<true>(col, val, bptr, r0, r1, panel, tile, init);
}

// ---- SDDMM -------------------------------------------------------------------------------------
// The 2 * NB values of a = dY^T[m, chunk] stay in registers (8 vectors: lo half, hi half); kept
// columns are taken 8 at a time, each with its own accumulator (independent FMA chains), and the
// partial vectors are reduced together by a transposing add tree, so the horizontal-sum cost is
// shared by 8 outputs, which land in acc[e .. e + 8) as one vector update.

static inline __m256 reduce8_avx512(const __m512* s) {
  __m256 h[8];
#pragma GCC unroll 8
  for (int e = 0; e < 8; ++e)
    h[e] = _mm256_add_ps(_mm512_extractf32x8_ps(s[e], 0), _mm512_extractf32x8_ps(s[e], 1));
  const __m256 h01 = _mm256_hadd_ps(h[0], h[1]), h23 = _mm256_hadd_ps(h[2], h[3]);
  const __m256 h45 = _mm256_hadd_ps(h[4], h[5]), h67 = _mm256_hadd_ps(h[6], h[7]);
  const __m256 q0 = _mm256_hadd_ps(h01, h23), q1 = _mm256_hadd_ps(h45, h67);
  return _mm256_add_ps(_mm256_permute2f128_ps(q0, q1, 0x20), _mm256_permute2f128_ps(q0, q1, 0x31));
}

void sddmm_f32_avx512(const float* a_lo, const float* a_hi, const float* x_lo,
                      const float* x_hi, const int32_t* col, int64_t e0, int64_t e1,
                      float* acc) {
  constexpr int NB = kNbAvx512, H = NB / 16, V = 2 * H;
  __m512 y[V];
#pragma GCC unroll 4
  for (int v = 0; v < H; ++v) {
    y[v] = _mm512_load_ps(a_lo + 16 * v);
    y[H + v] = _mm512_load_ps(a_hi + 16 * v);
  }
  auto xp = [&](int64_t c, int v) { return v < H ? x_lo + c * NB + 16 * v : x_hi + c * NB + 16 * (v - H); };
  const int64_t hi_off = x_hi - x_lo;
  int64_t e = e0;
  for (; e + 8 <= e1; e += 8) {
    // The lo halves of the 8 columns, then the hi halves, each through 8 base registers
    // (simd::base_address: no indexed FMA operands).
    const float* p[8];
#pragma GCC unroll 8
    for (int u = 0; u < 8; ++u) p[u] = simd::base_address(x_lo + int64_t(col[e + u]) * NB);
    __m512 s[8];
#pragma GCC unroll 8
    for (int u = 0; u < 8; ++u) s[u] = _mm512_mul_ps(y[0], _mm512_load_ps(p[u]));
#pragma GCC unroll 4
    for (int v = 1; v < H; ++v)
#pragma GCC unroll 8
      for (int u = 0; u < 8; ++u) s[u] = _mm512_fmadd_ps(y[v], _mm512_load_ps(p[u] + 16 * v), s[u]);
#pragma GCC unroll 8
    for (int u = 0; u < 8; ++u) p[u] = simd::base_address(p[u] + hi_off);
#pragma GCC unroll 4
    for (int v = 0; v < H; ++v)
#pragma GCC unroll 8
      for (int u = 0; u < 8; ++u) s[u] = _mm512_fmadd_ps(y[H + v], _mm512_load_ps(p[u] + 16 * v), s[u]);
    _mm256_storeu_ps(acc + e, _mm256_add_ps(_mm256_loadu_ps(acc + e), reduce8_avx512(s)));
  }
  for (; e < e1; ++e) {
    const int64_t c = col[e];
    __m512 s0 = _mm512_mul_ps(y[0], _mm512_load_ps(xp(c, 0)));
    __m512 s1 = _mm512_mul_ps(y[1], _mm512_load_ps(xp(c, 1)));
#pragma GCC unroll 8
    for (int v = 2; v < V; v += 2) {
      s0 = _mm512_fmadd_ps(y[v], _mm512_load_ps(xp(c, v)), s0);
      s1 = _mm512_fmadd_ps(y[v + 1], _mm512_load_ps(xp(c, v + 1)), s1);
    }
    const __m512 u = _mm512_add_ps(s0, s1);
    const __m256 h = _mm256_add_ps(_mm512_extractf32x8_ps(u, 0), _mm512_extractf32x8_ps(u, 1));
    __m128 q = _mm_add_ps(_mm256_castps256_ps128(h), _mm256_extractf128_ps(h, 1));
    q = _mm_hadd_ps(q, q);
    acc[e] += _mm_cvtss_f32(_mm_hadd_ps(q, q));
  }
}

// ---- fused backward: grad-input SpMM and SDDMM in one walk of the transposed pattern -------------
// Row k of S^T lists the kept (m, k); for each, the panel row dY^T[m, chunk] is loaded once and
// used twice: broadcast-multiplied by W[m, k] into dX^T[k, chunk] (8 accumulators in registers)
// and dotted with X^T[k, chunk] (held in 8 registers for the whole row) for dW[m, k]. That is 16
// FMAs per 8 panel loads, where the two separate kernels each load one panel vector per FMA.
// The dot vectors go to a small L1 buffer, reduced 16 at a time once it fills (entries of
// consecutive rows are consecutive, so the buffer maps onto a run of part[]): reducing after every
// few entries of a row put the reduction's latency on the entry loop's critical path. The buffer
// holds 32 vectors (2 KB): the loop is bound by L1 / L2 traffic (the panel rows of a k-block do not
// all stay in L1), and a 128-vector (8 KB) buffer measured ~7% slower at DiT-S/2's shapes.

// Blocks (128-bit) of a then of b, each the sum of a pair of neighbours: (a0+a1, a2+a3, b0+b1, b2+b3).
static inline __m512 add_block_pairs(__m512 a, __m512 b) {
  constexpr __mmask16 all = 0xFFFF;
  return _mm512_add_ps(_mm512_mask_shuffle_f32x4(a, all, a, b, 0x88), _mm512_mask_shuffle_f32x4(a, all, a, b, 0xDD));
}

// Lane j of the result is the sum of v[j]'s lanes (and of nothing else): pairs interleaved and
// added within 128-bit blocks, then blocks gathered and added across vectors.
static inline __m512 reduce16_avx512(const __m512* v) {
  // (The all-ones masked forms compute the same as the plain intrinsics; see transpose16x16.)
  constexpr __mmask16 all = 0xFFFF;
  __m512 t[8], u[4];
#pragma GCC unroll 8
  for (int i = 0; i < 8; ++i) {
    const __m512 a = v[2 * i], b = v[2 * i + 1];
    t[i] = _mm512_add_ps(_mm512_mask_unpacklo_ps(a, all, a, b), _mm512_mask_unpackhi_ps(a, all, a, b));
  }
#pragma GCC unroll 4
  for (int j = 0; j < 4; ++j) {
    const __m512 a = t[2 * j], b = t[2 * j + 1];
    u[j] = _mm512_add_ps(_mm512_mask_shuffle_ps(a, all, a, b, 0x44), _mm512_mask_shuffle_ps(a, all, a, b, 0xEE));
  }
  return add_block_pairs(add_block_pairs(u[0], u[1]), add_block_pairs(u[2], u[3]));
}

// part[i] += hsum(dots[i]) for i < n.
static inline void flush_dots(const __m512* dots, int64_t n, float* part) {
  for (int64_t g = 0; g < n; g += 16) {
    const __mmask16 m = n - g >= 16 ? __mmask16(0xFFFF) : static_cast<__mmask16>((1u << (n - g)) - 1);
    _mm512_mask_storeu_ps(part + g, m, _mm512_add_ps(_mm512_maskz_loadu_ps(m, part + g), reduce16_avx512(dots + g)));
  }
}

template <bool kInit>
static void backward_rows_avx512(const int32_t* col, const float* val, const int32_t* bptr,
                                 int64_t r0, int64_t r1, const float* dy_lo,
                                 const float* dy_hi, const float* x_lo, const float* x_hi,
                                 float* t_lo, float* t_hi, float* part) {
  constexpr int NB = kNbAvx512, H = NB / 16, V = 2 * H;
  constexpr int64_t kCap = 32;  // dot vectors buffered (2 KB), a multiple of 16
  alignas(64) __m512 dots[kCap];
  int64_t base = bptr[r0], filled = 0;  // dots[i] belongs to entry base + i
  for (int64_t r = r0; r < r1; ++r) {
    int64_t e = bptr[r];
    const int64_t end = bptr[r + 1];
    float* tl = t_lo + r * NB;
    float* th = t_hi + r * NB;
    if constexpr (!kInit) {
      if (e == end) continue;
    }
    __m512 a[V], x[V];
#pragma GCC unroll 4
    for (int v = 0; v < H; ++v) {
      a[v] = kInit ? _mm512_setzero_ps() : _mm512_load_ps(tl + 16 * v);
      a[H + v] = kInit ? _mm512_setzero_ps() : _mm512_load_ps(th + 16 * v);
      x[v] = _mm512_load_ps(x_lo + r * NB + 16 * v);
      x[H + v] = _mm512_load_ps(x_hi + r * NB + 16 * v);
    }
    while (e < end) {
      const int64_t stop = std::min(end, e + (kCap - filled));
      for (; e < stop; ++e) {
        const float* p = dy_lo + int64_t(col[e]) * NB;
        const float* q = dy_hi + int64_t(col[e]) * NB;
        const __m512 w = _mm512_set1_ps(val[e]);
        __m512 d[V];
#pragma GCC unroll 4
        for (int v = 0; v < H; ++v) {
          d[v] = _mm512_load_ps(p + 16 * v);
          d[H + v] = _mm512_load_ps(q + 16 * v);
        }
#pragma GCC unroll 8
        for (int v = 0; v < V; ++v) a[v] = _mm512_fmadd_ps(w, d[v], a[v]);
        __m512 s0 = _mm512_mul_ps(d[0], x[0]), s1 = _mm512_mul_ps(d[1], x[1]);
#pragma GCC unroll 4
        for (int v = 2; v < V; v += 2) {
          s0 = _mm512_fmadd_ps(d[v], x[v], s0);
          s1 = _mm512_fmadd_ps(d[v + 1], x[v + 1], s1);
        }
        dots[filled++] = _mm512_add_ps(s0, s1);
      }
      if (filled == kCap) {
        flush_dots(dots, filled, part + base);
        base += filled;
        filled = 0;
      }
    }
#pragma GCC unroll 4
    for (int v = 0; v < H; ++v) {
      _mm512_store_ps(tl + 16 * v, a[v]);
      _mm512_store_ps(th + 16 * v, a[H + v]);
    }
  }
  // The last group of 16 is reduced whole (its lanes past `filled` are masked off): give the
  // vectors it reads past the last entry a value.
  for (int64_t i = filled; i % 16 != 0; ++i) dots[i] = _mm512_setzero_ps();
  flush_dots(dots, filled, part + base);
}

void backward_rows_f32_avx512(const int32_t* col, const float* val, const int32_t* bptr,
                              int64_t r0, int64_t r1, const float* dy_lo, const float* dy_hi,
                              const float* x_lo, const float* x_hi, float* t_lo, float* t_hi,
                              float* part, bool first_block) {
  if (first_block)
    backward_rows_avx512<true>(col, val, bptr, r0, r1, dy_lo, dy_hi, x_lo, x_hi, t_lo, t_hi, part);
  else
    backward_rows_avx512<false>(col, val, bptr, r0, r1, dy_lo, dy_hi, x_lo, x_hi, t_lo, t_hi, part);
}

// ---- transpose ---------------------------------------------------------------------------------
// dst[c * ldd + r] = src[r * lds + c] (see transpose_f32_avx2 in kernels_avx2.cpp for the walk
// order): 16x16 blocks in registers, scalar for the ragged edges. Where dst is the large output
// and its rows are 64-byte aligned, it is written with non-temporal stores: an activation written
// once need not be read into the cache first.

template <bool kNT>
static inline void store16(float* p, __m512 v) {
  if constexpr (kNT)
    _mm512_stream_ps(p, v);
  else
    _mm512_storeu_ps(p, v);
}

// 16x16 with zmm: pairs interleaved, then 4x4 blocks within 128-bit lanes, then lanes gathered
// across rows with two rounds of shuffle_f32x4. Loads and stores are whole 64-byte lines. (The
// all-ones masked forms compute the same as the plain intrinsics, whose GCC 12 expansion trips
// -Wuninitialized.)
template <bool kNT>
static inline void transpose16x16(const float* src, int64_t lds, float* dst, int64_t ldd) {
  __m512 r[16], t[16];
#pragma GCC unroll 16
  for (int i = 0; i < 16; ++i) r[i] = _mm512_loadu_ps(src + i * lds);
#pragma GCC unroll 8
  for (int i = 0; i < 16; i += 2) {
    t[i] = _mm512_mask_unpacklo_ps(r[i], 0xFFFF, r[i], r[i + 1]);
    t[i + 1] = _mm512_mask_unpackhi_ps(r[i], 0xFFFF, r[i], r[i + 1]);
  }
  // r[4g + j], lane L: column 4L + j of rows 4g .. 4g + 3.
#pragma GCC unroll 4
  for (int i = 0; i < 16; i += 4) {
    r[i] = _mm512_shuffle_ps(t[i], t[i + 2], 0x44);
    r[i + 1] = _mm512_shuffle_ps(t[i], t[i + 2], 0xEE);
    r[i + 2] = _mm512_shuffle_ps(t[i + 1], t[i + 3], 0x44);
    r[i + 3] = _mm512_shuffle_ps(t[i + 1], t[i + 3], 0xEE);
  }
#pragma GCC unroll 4
  for (int j = 0; j < 4; ++j) {
    const __m512 u0 = _mm512_mask_shuffle_f32x4(r[j], 0xFFFF, r[j], r[4 + j], 0x88);   // lanes 0, 2
    const __m512 u1 = _mm512_mask_shuffle_f32x4(r[j], 0xFFFF, r[j], r[4 + j], 0xDD);   // lanes 1, 3
    const __m512 v0 = _mm512_mask_shuffle_f32x4(r[8 + j], 0xFFFF, r[8 + j], r[12 + j], 0x88);
    const __m512 v1 = _mm512_mask_shuffle_f32x4(r[8 + j], 0xFFFF, r[8 + j], r[12 + j], 0xDD);
    store16<kNT>(dst + (0 + j) * ldd, _mm512_mask_shuffle_f32x4(u0, 0xFFFF, u0, v0, 0x88));
    store16<kNT>(dst + (4 + j) * ldd, _mm512_mask_shuffle_f32x4(u1, 0xFFFF, u1, v1, 0x88));
    store16<kNT>(dst + (8 + j) * ldd, _mm512_mask_shuffle_f32x4(u0, 0xFFFF, u0, v0, 0xDD));
    store16<kNT>(dst + (12 + j) * ldd, _mm512_mask_shuffle_f32x4(u1, 0xFFFF, u1, v1, 0xDD));
  }
}

// The whole 16x16 blocks of a transpose, walked with dst's rows (dst_rows_outer) or src's rows in
// the outer loop.
template <bool kNT>
static void blocks16(const float* src, int64_t lds, int64_t r16, int64_t c16, float* dst,
                     int64_t ldd, bool dst_rows_outer) {
  if (dst_rows_outer) {
    for (int64_t c = 0; c < c16; c += 16)
      for (int64_t r = 0; r < r16; r += 16)
        transpose16x16<kNT>(src + r * lds + c, lds, dst + c * ldd + r, ldd);
  } else {
    for (int64_t r = 0; r < r16; r += 16)
      for (int64_t c = 0; c < c16; c += 16)
        transpose16x16<kNT>(src + r * lds + c, lds, dst + c * ldd + r, ldd);
  }
}

void transpose_f32_avx512(const float* src, int64_t lds, int64_t rows,
                          int64_t cols, float* dst, int64_t ldd, bool dst_rows_outer) {
  const int64_t r16 = rows & ~int64_t(15), c16 = cols & ~int64_t(15);
  // Streaming stores (no read of each output line before it is written) where the rows allow.
  if (dst_rows_outer && reinterpret_cast<uintptr_t>(dst) % 64 == 0 && ldd % 16 == 0) {
    blocks16<true>(src, lds, r16, c16, dst, ldd, true);
    _mm_sfence();
  } else {
    blocks16<false>(src, lds, r16, c16, dst, ldd, dst_rows_outer);
  }
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t c = (r < r16 ? c16 : 0); c < cols; ++c) dst[c * ldd + r] = src[r * lds + c];
}

}  // namespace ebsparse::linear_detail

#pragma GCC pop_options
