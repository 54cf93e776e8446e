// Kernel bodies of the direct sparse conv engine (see engine.h), written once against a small
// vector interface `Vec` and included by kernels_avx512.cpp and kernels_avx2.cpp, each of which
// aliases `Vec` for its instruction set inside its own namespace before including this file. Everything
// here has internal linkage except the two task entry points, so no code compiled for one ISA can
// be merged into the other by the linker.
//
// Vec is one of the adapters of simd_vec.h (its interface is listed there).

namespace {

constexpr int kRows[] = {1, 2, 3, 4, 6, 8, 12, 16};
constexpr int kNumRows = 8;
constexpr int kMaxVecs = 4;  // vectors per row held in registers; wider rows are cut into chunks

inline int64_t min64(int64_t a, int64_t b) { return a < b ? a : b; }

// Smallest tabulated register-tile height that covers `rows` output rows.
inline int row_slot(int64_t rows) {
  int i = 0;
  while (i < kNumRows - 1 && kRows[i] < rows) ++i;
  return i;
}

// The taps of one group (engine.h): tap t (weight val[t]) reads rows shift_t (0, kShift1 and,
// when kShift2 > 0, kShift2) below the group's first; row j is loaded once and feeds every tap that
// reads it. Register budget: R * V accumulators, three weights and the row in flight.
template <int R, int V, int kShift1, int kShift2>
__attribute__((always_inline)) inline void fwd_group(typename Vec::T (&acc)[R][V], const float* p, int64_t rstep,
                                                     const float* val) {
  constexpr int kLast = kShift2 > 0 ? kShift2 : kShift1;
  const auto w0 = Vec::bcast(val[0]), w1 = Vec::bcast(val[1]);
  const auto w2 = Vec::bcast(kShift2 > 0 ? val[2] : 0.f);
  // Fully unrolled, or the tile is indexed at run time and lives in memory (GCC peels at most 16
  // iterations on its own: R = 16 has 18 rows here).
#pragma GCC unroll 32
  for (int j = 0; j < R + kLast; ++j)
#pragma GCC unroll 8
    for (int v = 0; v < V; ++v) {
      const auto x = Vec::in_register(Vec::load(p + j * rstep + v * Vec::W));
      if (j < R) acc[j][v] = Vec::fma(w0, x, acc[j][v]);
      if (j >= kShift1 && j - kShift1 < R) acc[j - kShift1][v] = Vec::fma(w1, x, acc[j - kShift1][v]);
      if constexpr (kShift2 > 0)
        if (j >= kShift2) acc[j - kShift2][v] = Vec::fma(w2, x, acc[j - kShift2][v]);
    }
}

// Forward / grad-input micro-kernel, one output channel o, an R x V register tile:
//   acc[r][v] = init + sum_{e in list(o, b)} val[e] * copy[off[e] + r * rstep + v * W]
// Loop order: the whole tile stays in registers while the kept weights stream by, so each weight
// costs one broadcast and R*V FMAs whose input operand is an aligned, base-addressed
// (simd::base_address) L1 load. That loop is bound by its loads, not its FMAs, so with AVX-512 the
// weights come in tap groups (engine.h) whose taps share their row loads (fwd_group). The groups
// are sorted by kind within the list, so the branch on the kind is predicted.
// init is `bias` or (kLoad) the partial sums at pin (row stride in_rs); stores the whole tile to pout
// (row stride out_rs); ragged tiles go through a scratch tile in the caller. kLoad and kStep (the
// compile-time row step V * W for unit stride with one chunk per row, else 0 = run-time rstep) are
// template parameters, and the weight loop is a do-while (cnt >= 1; empty lists get one zero
// weight), because any run-time branch or zero-trip loop around the tile made GCC keep it in memory.
template <int R, int V, bool kLoad, int kStep>
void fwd_kernel(const int32_t* __restrict off, const float* __restrict val, int64_t cnt,
                const float* __restrict cb, int64_t rstep_rt, const float* pin, int64_t in_rs, float bias,
                float* pout, int64_t out_rs) {
  const int64_t rstep = kStep ? kStep : rstep_rt;
  typename Vec::T acc[R][V];
  if constexpr (kLoad) {
    for (int r = 0; r < R; ++r)
      for (int v = 0; v < V; ++v) acc[r][v] = Vec::load(pin + r * in_rs + v * Vec::W);
  } else {
    const auto b = Vec::bcast(bias);
    for (int r = 0; r < R; ++r)
      for (int v = 0; v < V; ++v) acc[r][v] = b;
  }
  int64_t i = 0;
  do {  // cnt >= 1: the caller passes a zero weight for empty lists (a plain for loop spills the tile)
    const int32_t o = off[i];
    const float* p = simd::base_address(cb + (o & ~kTapGroupMask));
    if constexpr (Vec::W == 16 && kStep != 0) {  // the packs that group taps (groups_taps)
      // One loop with a branch on the kind, not a loop per kind: separate loops made GCC move the
      // tile through memory between them.
      if (const int32_t kind = o & kTapGroupMask; kind != kSingleTap) {
        if (kind == kTripleTaps)
          fwd_group<R, V, 1, 2>(acc, p, rstep, val);
        else if (kind == kAdjacentTaps)
          fwd_group<R, V, 1, 0>(acc, p, rstep, val);
        else
          fwd_group<R, V, 2, 0>(acc, p, rstep, val);
        val += taps_in(kind);
        continue;
      }
    }
    const auto w = Vec::bcast(*val++);
    for (int r = 0; r < R; ++r)
      for (int v = 0; v < V; ++v) acc[r][v] = Vec::fma(w, Vec::load(p + r * rstep + v * Vec::W), acc[r][v]);
  } while (++i < cnt);
  for (int r = 0; r < R; ++r)
    for (int v = 0; v < V; ++v) Vec::storeu(pout + r * out_rs + v * Vec::W, acc[r][v]);
}

// Grad-weight (SDDMM) micro-kernel, one output channel o:
//   acc[e] += sum_{r < R, v < V} dy[o, oy0 + r, v*W ...] . copy[off[e] + r * rstep + v * W]
// The R x V tile of dy is loaded into registers once and reused by every kept weight of (o, b);
// each weight then costs R*V FMAs with one aligned L1 load each and one horizontal sum. Up to four
// accumulators cut the FMA dependency chain (to 6 at R*V = 24 with AVX-512); out-of-order
// execution overlaps successive weights. No tap groups here (unlike fwd_kernel): the dy tile holds
// up to 24 registers, leaving none for the extra chains a group needs.
template <int R, int V, int kStep>
void gw_kernel(const int32_t* __restrict off, int64_t cnt, const float* __restrict cb, int64_t rstep_rt,
               const float* dy, int64_t dy_rs, int64_t rows_valid, int64_t last_lanes,
               float* __restrict acc) {
  const int64_t rstep = kStep ? kStep : rstep_rt;
  typename Vec::T d[R][V];
  for (int r = 0; r < R; ++r)
    for (int v = 0; v < V; ++v) {
      if (r >= rows_valid)
        d[r][v] = Vec::zero();
      else if (v == V - 1 && last_lanes != Vec::W)
        d[r][v] = Vec::load_part(dy + r * dy_rs + v * Vec::W, last_lanes);
      else
        d[r][v] = Vec::loadu(dy + r * dy_rs + v * Vec::W);
    }
  // Chains: up to 4, but no more than the registers the dy tile leaves (16 with AVX2, 32 with
  // AVX-512) minus two for the horizontal sum, or the tile is spilled.
  constexpr int kFree = (Vec::W == 16 ? 32 : 16) - R * V - 2;
  constexpr int kChains = R * V < 4 ? R * V : kFree >= 4 ? 4 : kFree >= 2 ? 2 : 1;
  for (int64_t i = 0; i < cnt; ++i) {
    const float* p = simd::base_address(cb + off[i]);
    typename Vec::T a[kChains];
    for (int c = 0; c < kChains; ++c) a[c] = Vec::zero();
    for (int r = 0; r < R; ++r)
      for (int v = 0; v < V; ++v) {
        const int c = (r * V + v) % kChains;
        a[c] = Vec::fma(d[r][v], Vec::load(p + r * rstep + v * Vec::W), a[c]);
      }
    // Pairwise, so the chains' tails overlap. (Written out: as a loop, GCC kept `a` in memory.)
    if constexpr (kChains == 4)
      acc[i] += Vec::hsum(Vec::add(Vec::add(a[0], a[1]), Vec::add(a[2], a[3])));
    else if constexpr (kChains == 3)
      acc[i] += Vec::hsum(Vec::add(Vec::add(a[0], a[1]), a[2]));
    else if constexpr (kChains == 2)
      acc[i] += Vec::hsum(Vec::add(a[0], a[1]));
    else
      acc[i] += Vec::hsum(a[0]);
  }
}

// Sum of n floats from p (no alignment needed): the bias gradient's pass over a task's dy rows.
float sum_floats(const float* p, int64_t n) {
  auto a0 = Vec::zero(), a1 = Vec::zero();
  int64_t i = 0;
  for (; i + 2 * Vec::W <= n; i += 2 * Vec::W) {
    a0 = Vec::add(a0, Vec::loadu(p + i));
    a1 = Vec::add(a1, Vec::loadu(p + i + Vec::W));
  }
  if (i + Vec::W <= n) {
    a0 = Vec::add(a0, Vec::loadu(p + i));
    i += Vec::W;
  }
  if (i < n) a1 = Vec::add(a1, Vec::load_part(p + i, n - i));
  return Vec::hsum(Vec::add(a0, a1));
}

// Block copies (see engine.h) of rows shared by G images (G * Wo <= one vector, so Wo_r == W),
// for unit stride along the width: each image's window lands in its own lanes [g * Wo, (g + 1) * Wo);
// the masked loads of one row are added together (their other lanes are 0).
void fill_copy_grouped(const Plan& p, const float* src, int64_t n0, int64_t b, const int64_t* rows, float* dst) {
  const int64_t c_lo = b * p.Cb, c_hi = min64(p.Cs, c_lo + p.Cb);
  const int64_t images = min64(p.G, p.N - n0);
  for (int64_t cl = 0; cl < c_hi - c_lo; ++cl) {
    for (int64_t kw = 0; kw < p.KW; ++kw) {
      const int64_t shift = kw * p.dw - p.pl;
      int64_t xa = -shift, xb = p.Ws - shift;  // valid columns [xa, xb) of each image, within [0, Wo)
      xa = xa < 0 ? 0 : xa > p.Wo ? p.Wo : xa;
      xb = xb < xa ? xa : xb > p.Wo ? p.Wo : xb;
      float* d = dst + (cl * p.KW + kw) * p.rows_copy * p.Wo_r;
      for (int64_t rr = 0; rr < p.rows_copy; ++rr, d += p.Wo_r) {
        auto v = Vec::zero();
        if (rows[rr] >= 0 && xa < xb)
          for (int64_t g = 0; g < images; ++g) {
            // lane g * Wo + x reads column x + shift of image n0 + g's row
            const float* s = src + (n0 + g) * p.s_sn + (c_lo + cl) * p.s_sc + rows[rr] * p.Ws + shift - g * p.Wo;
            v = Vec::add(v, Vec::load_lanes(s, g * p.Wo + xa, g * p.Wo + xb));
          }
        Vec::store(d, v);
      }
    }
  }
}

// Block copies of one image whose columns are not a plain shifted window (a strided forward or
// grad-weight): each vector gathers its columns through cols (source_cols).
void fill_copy_gathered(const Plan& p, const float* src, int64_t n0, int64_t b, const int64_t* rows,
                        const int32_t* cols, float* dst) {
  const int64_t c_lo = b * p.Cb, c_hi = min64(p.Cs, c_lo + p.Cb);
  for (int64_t cl = 0; cl < c_hi - c_lo; ++cl) {
    const float* src_c = src + n0 * p.s_sn + (c_lo + cl) * p.s_sc;
    for (int64_t kw = 0; kw < p.KW; ++kw) {
      const int32_t* col = cols + kw * p.Wo_r;
      float* d = dst + (cl * p.KW + kw) * p.rows_copy * p.Wo_r;
      for (int64_t rr = 0; rr < p.rows_copy; ++rr, d += p.Wo_r) {
        if (rows[rr] < 0) {
          for (int64_t x = 0; x < p.Wo_r; x += Vec::W) Vec::store(d + x, Vec::zero());
          continue;
        }
        const float* s = src_c + rows[rr] * p.Ws;
        for (int64_t x = 0; x < p.Wo_r; x += Vec::W) Vec::store(d + x, Vec::gather(s, col + x));
      }
    }
  }
}

// Block copies (see engine.h) for the common case of unit stride along the width: every copy row
// is a shifted window of one source row, read with lane-masked loads so the zero padding costs
// nothing and no read leaves the row. Grouped rows and other geometries go to the builders above.
void fill_copy(const Plan& p, const float* src, int64_t n0, int64_t b, const int64_t* rows, const int32_t* cols,
               float* dst) {
  if (p.sw != 1) {
    if (p.G == 1)
      fill_copy_gathered(p, src, n0, b, rows, cols, dst);
    else
      build_copy(p, src, n0, b, rows, cols, dst);
    return;
  }
  if (p.G > 1) {
    fill_copy_grouped(p, src, n0, b, rows, dst);
    return;
  }
  const float* src_n = src + n0 * p.s_sn;
  const int64_t c_lo = b * p.Cb, c_hi = min64(p.Cs, c_lo + p.Cb);
  const auto zero = Vec::zero();
  for (int64_t cl = 0; cl < c_hi - c_lo; ++cl) {
    const float* src_c = src_n + (c_lo + cl) * p.s_sc;
    for (int64_t kw = 0; kw < p.KW; ++kw) {
      const int64_t shift = kw * p.dw - p.pl;  // copy column x reads source column x + shift
      int64_t xa = -shift, xb = p.Ws - shift;  // valid copy columns [xa, xb), clipped to [0, Wo)
      xa = xa < 0 ? 0 : xa > p.Wo ? p.Wo : xa;
      xb = xb < xa ? xa : xb > p.Wo ? p.Wo : xb;
      float* d = dst + (cl * p.KW + kw) * p.rows_copy * p.Wo_r;
      for (int64_t rr = 0; rr < p.rows_copy; ++rr, d += p.Wo_r) {
        if (rows[rr] < 0) {
          for (int64_t x = 0; x < p.Wo_r; x += Vec::W) Vec::store(d + x, zero);
          continue;
        }
        const float* s = src_c + rows[rr] * p.Ws + shift;
        for (int64_t x = 0; x < p.Wo_r; x += Vec::W) {
          const int64_t lo = xa - x, hi = xb - x;
          if (lo <= 0 && hi >= Vec::W)
            Vec::store(d + x, Vec::loadu(s + x));
          else if (hi <= 0 || lo >= Vec::W)
            Vec::store(d + x, zero);
          else
            Vec::store(d + x, Vec::load_lanes(s + x, lo < 0 ? 0 : lo, hi > Vec::W ? Vec::W : hi));
        }
      }
    }
  }
}

// The source rows (and, for strided columns, source columns) a task's copies read:
// source_rows / source_cols of engine.h, once per task.
struct CopyMaps {
  std::vector<int64_t> rows;
  std::vector<int32_t> cols;
  CopyMaps(const Plan& p, int64_t oy0, int64_t rows_valid)
      : rows(p.rows_copy), cols(p.sw != 1 ? p.KW * p.Wo_r : 0) {
    source_rows(p, oy0, rows_valid, rows.data());
    if (!cols.empty()) source_cols(p, cols.data());
  }
};

// Pulls the source rows of channel block b of this tile towards L2 while the previous block computes,
// so building its copies does not wait on memory.
void prefetch_block(const Plan& p, const float* src, int64_t n0, int64_t b, int64_t oy0) {
  if (b >= p.nb) return;
  const int64_t c_lo = b * p.Cb, c_hi = min64(p.Cs, c_lo + p.Cb);
  int64_t r_lo = oy0 * p.sh - p.pt, r_hi = oy0 * p.sh + p.rows_copy - p.pt;
  r_lo = r_lo < 0 ? 0 : r_lo;
  r_hi = r_hi > p.Hs ? p.Hs : r_hi;
  if (r_hi <= r_lo) return;
  for (int64_t n = n0; n < min64(p.N, n0 + p.G); ++n)
    for (int64_t c = c_lo; c < c_hi; ++c) {
      const char* a = reinterpret_cast<const char*>(src + n * p.s_sn + c * p.s_sc + r_lo * p.Ws);
      const int64_t bytes = (r_hi - r_lo) * p.Ws * int64_t(sizeof(float));
      for (int64_t o = 0; o < bytes; o += 64) _mm_prefetch(a + o, _MM_HINT_T1);
    }
}

using FwdFn = void (*)(const int32_t*, const float*, int64_t, const float*, int64_t, const float*, int64_t,
                       float, float*, int64_t);
using GwFn = void (*)(const int32_t*, int64_t, const float*, int64_t, const float*, int64_t, int64_t, int64_t,
                      float*);

// Register tiles larger than these would spill; the planner (conv.cpp's choose_tiling) never asks
// for them. Forward tiles stop at 16 accumulators: a tap group (fwd_group) needs room for its three
// weights and rows beside them.
constexpr int kMaxTile = 32;
constexpr int kMaxFwdTile = 16;

template <int RI, int V, bool kLoad, bool kFixed>
constexpr FwdFn fwd_entry() {
  if constexpr (kRows[RI] * V <= kMaxFwdTile) return &fwd_kernel<kRows[RI], V, kLoad, kFixed ? V * Vec::W : 0>;
  else return nullptr;
}
template <int RI, int V, bool kFixed>
constexpr GwFn gw_entry() {
  if constexpr (kRows[RI] * V <= kMaxTile) return &gw_kernel<kRows[RI], V, kFixed ? V * Vec::W : 0>;
  else return nullptr;
}

// Tables indexed [row slot][vectors - 1]; the *Fixed variants serve stride-1 rows of <= 4 vectors.
#define EBS_ROW_ENTRIES(F, RI, ...) {F<RI, 1, __VA_ARGS__>(), F<RI, 2, __VA_ARGS__>(), F<RI, 3, __VA_ARGS__>(), F<RI, 4, __VA_ARGS__>()}
#define EBS_TABLE(F, ...)                                                                                \
  {EBS_ROW_ENTRIES(F, 0, __VA_ARGS__), EBS_ROW_ENTRIES(F, 1, __VA_ARGS__), EBS_ROW_ENTRIES(F, 2, __VA_ARGS__), \
   EBS_ROW_ENTRIES(F, 3, __VA_ARGS__), EBS_ROW_ENTRIES(F, 4, __VA_ARGS__), EBS_ROW_ENTRIES(F, 5, __VA_ARGS__), \
   EBS_ROW_ENTRIES(F, 6, __VA_ARGS__), EBS_ROW_ENTRIES(F, 7, __VA_ARGS__)}
constexpr FwdFn kFwd[2][2][kNumRows][kMaxVecs] = {{EBS_TABLE(fwd_entry, false, false), EBS_TABLE(fwd_entry, false, true)},
                                                  {EBS_TABLE(fwd_entry, true, false), EBS_TABLE(fwd_entry, true, true)}};
constexpr GwFn kGw[2][kNumRows][kMaxVecs] = {EBS_TABLE(gw_entry, false), EBS_TABLE(gw_entry, true)};

#undef EBS_TABLE
#undef EBS_ROW_ENTRIES

}  // namespace

// Task (n, tile): for each channel block, build its copies, then for each output channel run the
// register tile over the kept weights of that block.
// Why this order: tasks own whole output tiles (no races, no reduction); the channel block is the
// unit of input reuse, its copies built once and then read by every output channel while they sit
// in L1/L2; output channels innermost means each copy is reused Co times before it is evicted.
// The price is a partial-sum pass per (output channel, block): the tile's partial sums live in
// `partial` (Co x R x Wo_r, L2-resident) between blocks; the first block starts from the bias and the
// last writes the output directly, so a single-block problem never touches `partial`.
void fwd_task(const Plan& p, const float* src, const float* bias, float* out, int64_t task, float* copy,
              float* partial) {
  const int64_t n = task / p.ntiles * p.G, oy0 = (task % p.ntiles) * p.R;
  const int64_t images = min64(p.G, p.N - n);
  const int64_t rv = min64(p.R, p.Ho - oy0);
  const int ri = row_slot(rv);
  const int64_t rk = kRows[ri];
  const int64_t rstep = p.sh * p.Wo_r;
  const bool fixed = p.sh == 1 && p.nvec <= kMaxVecs;
  const int64_t last_lanes = p.Wo - (p.nvec - 1) * p.vw;
  const int64_t yo_rs = p.oy_step * p.Wo;  // floats between the output rows of successive engine rows
  alignas(64) float tile[16 * kMaxVecs * Vec::W];
  const CopyMaps maps(p, oy0, rv);
  for (int64_t b = 0; b < p.nb; ++b) {
    const bool first = b == 0, last = b == p.nb - 1;
    fill_copy(p, src, n, b, maps.rows.data(), maps.cols.data(), copy);
    prefetch_block(p, src, n, b + 1, oy0);
    for (int64_t o = 0; o < p.Co; ++o) {
      const int64_t s = p.bptr[o * p.nb + b], e = p.bptr[o * p.nb + b + 1];
      const int64_t gs = p.gptr[o * p.nb + b], ge = p.gptr[o * p.nb + b + 1];
      if (s == e && !first && !last) continue;
      float* part = partial + o * p.R * p.Wo_r;
      float* yo = out + ((n * p.Co + o) * p.Ho_out + p.oy_first + p.oy_step * oy0) * p.Wo;
      const float bo = bias ? bias[o] : 0.f;
      for (int64_t c0 = 0; c0 < p.nvec; c0 += kMaxVecs) {
        const int64_t nv = min64(kMaxVecs, p.nvec - c0);
        const int64_t col = c0 * p.vw;
        const int64_t lanes = c0 + nv == p.nvec ? last_lanes : p.vw;  // valid floats of the last vector
        const bool ragged = last && (rv < rk || lanes < p.vw || p.G > 1);
        // Full AVX-512 tiles go out through the scratch tile with streaming stores: the output is
        // written once, so reading its lines in first (what a plain store does) is wasted traffic.
        const bool streamed = last && !ragged && Vec::W == 16 && yo_rs % 16 == 0 &&
                              reinterpret_cast<uintptr_t>(yo + col) % 64 == 0;
        float* dst = !last ? part + col : (ragged || streamed) ? tile : yo + col;
        static constexpr int32_t kZeroOff = 0;
        static constexpr float kZeroVal = 0.f;
        const bool empty = s == e;
        const int64_t out_rs = !last ? p.Wo_r : (ragged || streamed) ? kMaxVecs * Vec::W : yo_rs;
        kFwd[!first][fixed][ri][nv - 1](empty ? &kZeroOff : p.off + gs, empty ? &kZeroVal : p.val + s, ge - gs,
                                        copy + col, rstep, part + col, p.Wo_r, bo, dst, out_rs);
        if (streamed)
          for (int64_t r = 0; r < rk; ++r)
            for (int64_t v = 0; v < nv; ++v)
              Vec::stream(yo + r * yo_rs + col + v * Vec::W, Vec::load(tile + r * kMaxVecs * Vec::W + v * Vec::W));
        if (ragged && p.G > 1)  // one vector holds a row of each image of the group
          for (int64_t g = 0; g < images; ++g)
            for (int64_t r = 0; r < rv; ++r)
              std::memcpy(yo + g * p.Co * p.Ho_out * p.Wo + r * yo_rs, tile + r * kMaxVecs * Vec::W + g * p.Wo,
                          p.Wo * sizeof(float));
        else if (ragged)
          for (int64_t r = 0; r < rv; ++r)
            std::memcpy(yo + r * yo_rs + col, tile + r * kMaxVecs * Vec::W, ((nv - 1) * p.vw + lanes) * sizeof(float));
      }
    }
  }
  _mm_sfence();  // the streamed output is complete before the task counts as done
}

// Task (n, tile) of grad-weight, the SDDMM dw[e] = sum_{n, y, x} dy[n, o, y, x] * V[n, c, y*sh + kh*dh,
// x*sw + kw*dw] restricted to kept entries e = (o, c, kh, kw): the same blocking as the forward (the
// copies of x are the "input", dy is read in place), and every kept weight adds its dot product over
// the tile to acc (one float per entry, per thread, summed over threads at the end). Nothing is
// computed at pruned positions, and no dense (Co, Ci*KH*KW) gradient is ever formed.
// Why this order rather than parallel over output channels: a thread owning output channels would
// have to rebuild every copy of x itself; owning (n, tile) it builds each copy once, at the cost of
// one nnz-sized accumulator per thread.
void gw_task(const Plan& p, const float* src, const float* dy, int64_t task, float* copy, float* acc,
             float* dy_tiles, float* bias_acc) {
  const int64_t n = task / p.ntiles * p.G, oy0 = (task % p.ntiles) * p.R;
  const int64_t rv = min64(p.R, p.Ho - oy0);
  const int ri = row_slot(rv);
  const int64_t rstep = p.sh * p.Wo_r;
  const bool fixed = p.sh == 1 && p.nvec <= kMaxVecs;
  const int64_t last_lanes = p.Wo - (p.nvec - 1) * p.vw;
  if (p.G > 1) {
    // dy of the group laid out as the copies are (image g in lanes [g * Wo, (g + 1) * Wo)), once per
    // task for every output channel, zero in the unused lanes and rows.
    const int64_t images = min64(p.G, p.N - n);
    std::memset(dy_tiles, 0, p.Co * p.R * p.Wo_r * sizeof(float));
    for (int64_t o = 0; o < p.Co; ++o)
      for (int64_t g = 0; g < images; ++g)
        for (int64_t r = 0; r < rv; ++r)
          std::memcpy(dy_tiles + (o * p.R + r) * p.Wo_r + g * p.Wo, dy + (n + g) * p.dy_sn + o * p.dy_sc + (oy0 + r) * p.Wo,
                      p.Wo * sizeof(float));
  }
  // The bias gradient's share of the task, before the kernels: its pass also brings the task's dy
  // rows into cache for them (each image's rows are contiguous in its plane; the grouped tiles hold
  // zeros outside the images' lanes and rows).
  if (bias_acc)
    for (int64_t o = 0; o < p.Co; ++o) {
      if (p.G > 1) {
        bias_acc[o] += sum_floats(dy_tiles + o * p.R * p.Wo_r, rv * p.Wo_r);
      } else {
        bias_acc[o] += sum_floats(dy + n * p.dy_sn + o * p.dy_sc + oy0 * p.Wo, rv * p.Wo);
      }
    }
  const CopyMaps maps(p, oy0, rv);
  for (int64_t b = 0; b < p.nb; ++b) {
    fill_copy(p, src, n, b, maps.rows.data(), maps.cols.data(), copy);
    prefetch_block(p, src, n, b + 1, oy0);
    for (int64_t o = 0; o < p.Co; ++o) {
      const int64_t s = p.bptr[o * p.nb + b], e = p.bptr[o * p.nb + b + 1];
      if (s == e) continue;
      const bool grouped = p.G > 1;
      const float* dyo = grouped ? dy_tiles + o * p.R * p.Wo_r : dy + n * p.dy_sn + o * p.dy_sc + oy0 * p.Wo;
      const int64_t dy_rs = grouped ? p.Wo_r : p.Wo;
      for (int64_t c0 = 0; c0 < p.nvec; c0 += kMaxVecs) {
        const int64_t nv = min64(kMaxVecs, p.nvec - c0);
        const int64_t col = c0 * p.vw;
        kGw[fixed][ri][nv - 1](p.off + s, e - s, copy + col, rstep, dyo + col, dy_rs, rv,
                               c0 + nv == p.nvec && !grouped ? last_lanes : p.vw, acc + s);
      }
    }
  }
}
