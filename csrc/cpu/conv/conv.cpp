// Direct sparse convolution on the CPU: the three conv ops of ebsparse.h.
//
// float32 runs the blocked engine of engine.h (kernels_avx512.cpp or kernels_avx2.cpp, as
// cpu_capability() chooses);
// float64 runs the plain loops at the end of this file (correct, parallel, not tuned).
// This file turns CSR/CSC into a plan (the packing of the kept positions is cached per pattern and
// tiling; values are gathered per call), owns the thread pool loop and the per-thread buffers, and
// builds the per-block input copies the SIMD kernels read.
#include <ATen/Parallel.h>

#include <algorithm>
#include <atomic>
#include <cstdlib>
#include <cstring>
#include <unistd.h>
#include <vector>

#include "ebsparse.h"
#include "cpu/capability.h"
#include "cpu/conv/engine.h"
#include "cpu/pattern_cache.h"
#include "cpu/stride_phases.h"
#include "cpu/tasks.h"

namespace ebsparse {

namespace {
struct Geometry {
  int64_t N, Ci, H, W, Co, KH, KW, Ho, Wo, sh, sw, ph, pw, dh, dw;
};

Geometry geometry(at::IntArrayRef in, at::IntArrayRef wt, at::IntArrayRef stride,
                  at::IntArrayRef padding, at::IntArrayRef dilation) {
  Geometry g{in[0], in[1], in[2], in[3], wt[0], wt[2], wt[3], 0, 0,
             stride[0], stride[1], padding[0], padding[1], dilation[0], dilation[1]};
  g.Ho = (g.H + 2 * g.ph - g.dh * (g.KH - 1) - 1) / g.sh + 1;
  g.Wo = (g.W + 2 * g.pw - g.dw * (g.KW - 1) - 1) / g.sw + 1;
  TORCH_CHECK(g.H + 2 * g.ph - g.dh * (g.KH - 1) - 1 >= 0 && g.W + 2 * g.pw - g.dw * (g.KW - 1) - 1 >= 0,
              "input: spatial size (", g.H, ", ", g.W, ") is too small for the kernel, padding and dilation");
  return g;
}

bool have_avx512() { return cpu_capability() == CpuCapability::kAvx512; }

// Register-tile heights the SIMD kernels are instantiated for (kRows in kernels.h).
constexpr int64_t kRows[] = {1, 2, 3, 4, 6, 8, 12, 16};
// Channel-block size. A block's copies should sit in L1 with room left for the weight lists and
// partial sums (l1_copy_bytes), but every (output channel, block) pair also pays a pass over its
// partial sums, so sparse patterns need enough kept weights per pair to amortise it: blocks grow
// until a pair holds about kWeightsPerPass weights on average, up to kMaxCopyBytes of copies.
// Larger blocks: fewer partial-sum passes, but copies that spill from L2.
constexpr int64_t kMaxCopyBytes = 128 * 1024;
// More weights per pass: fewer partial-sum passes, but larger blocks that leave L1 sooner.
constexpr double kWeightsPerPass = 24.0;

// The L1 budget of a block's copies: the L1 data cache less 8 KB left for the weight lists, partial
// sums and stack (48 KB assumed where the size is not reported).
int64_t l1_copy_bytes() {
  static const int64_t bytes = [] {
    const long l1 = sysconf(_SC_LEVEL1_DCACHE_SIZE);
    return std::max<int64_t>((l1 > 0 ? l1 : 48 * 1024) - 8 * 1024, 16 * 1024);
  }();
  return bytes;
}

// The three engines: what the plan of each reads, how it is tiled, and which packs it caches.
enum class Engine : int64_t { kForward, kGradInput, kGradWeight };

// Floats of the dense weight gradient one thread zeroes and fills at a time (256 KB: a share of L2).
constexpr int64_t kFillChunkFloats = 64 * 1024;

// Tiling of the engine. Forward: an R x V tile of accumulators (<= 16 AVX-512 registers of 32, 12 of
// 16 for AVX2) plus the broadcast. Grad-weight holds the dy tile in registers instead and amortises
// one horizontal sum per weight and tile over it, so it uses the largest tile that leaves room for
// two accumulators and a load (24 / 12).
void choose_tiling(convk::Plan& p, Engine engine, bool avx512, int64_t nnz) {
  p.vw = avx512 ? 16 : 8;
  // Rows narrower than half a vector share it between images (engine.h).
  p.G = 2 * p.Wo <= p.vw ? std::clamp<int64_t>(p.vw / std::max<int64_t>(p.Wo, 1), 1, std::max<int64_t>(p.N, 1)) : 1;
  p.ngroups = (p.N + p.G - 1) / p.G;
  p.Wo_r = (p.G * p.Wo + p.vw - 1) / p.vw * p.vw;
  p.nvec = p.Wo_r / p.vw;
  // kernels.h instantiates tiles up to kMaxFwdTile (forward) and kMaxTile (grad-weight).
  const int64_t max_tile = avx512 ? (engine == Engine::kGradWeight ? 24 : 16) : 12;
  const int64_t v0 = std::min<int64_t>(p.nvec, 4);
  int64_t r_max = 1;
  for (int64_t r : kRows)
    if (r * v0 <= max_tile) r_max = r;
  p.R = r_max;
  if (p.Ho <= r_max)
    for (int64_t r : kRows)
      if (r >= p.Ho) {
        p.R = r;
        break;
      }
  p.ntiles = (p.Ho + p.R - 1) / p.R;
  p.rows_copy = (p.R - 1) * p.sh + (p.KH - 1) * p.dh + 1;
  const int64_t per_channel = p.KW * p.rows_copy * p.Wo_r * int64_t(sizeof(float));
  const double density = double(nnz) / double(std::max<int64_t>(p.Co * p.Cs * p.KH * p.KW, 1));
  const int64_t cb_l1 = std::max<int64_t>(l1_copy_bytes() / per_channel, 1);
  const int64_t cb_max = std::max<int64_t>(kMaxCopyBytes / per_channel, 1);
  const int64_t cb_pass = static_cast<int64_t>(kWeightsPerPass / std::max(density * p.KH * p.KW, 1e-9)) + 1;
  p.Cb = std::clamp<int64_t>(std::max(cb_l1, std::min(cb_pass, cb_max)), 1, std::max<int64_t>(p.Cs, 1));
  p.nb = std::max<int64_t>((p.Cs + p.Cb - 1) / p.Cb, 1);
  p.Cb = std::max<int64_t>((p.Cs + p.nb - 1) / p.nb, 1);  // even blocks
  TORCH_CHECK(p.Cb * p.KW * p.rows_copy * p.Wo_r < (int64_t(1) << 31), "conv: block copy too large");
}

// Kept weights grouped by (output channel o, source channel block b), as the engine reads them.
// Positions only: built once per pattern and tiling and cached (pattern_cache.h); the values are
// gathered on every call through `pos`.
struct PackedPattern {
  std::vector<int64_t> bptr;  // (Co * nb + 1)
  std::vector<int64_t> gptr;  // (Co * nb + 1) tap groups (convk::TapGroup), or empty: one per entry
  std::vector<int32_t> off;   // per group: float offset of its first tap in the block copy, and kind
  std::vector<int64_t> pos;   // per entry: flat index of the weight in the dense weight tensor
  const int64_t* groups() const { return gptr.empty() ? bptr.data() : gptr.data(); }
};

// Regroups each (o, b) bucket of pk (one entry per tap) into tap groups (engine.h): taps whose
// copy offsets are one and two rows apart, greedily from the lowest offset, sorted by kind. (Taps of
// neighbouring columns can be a row apart too, when a tile is one row high; the kernel reads the
// same addresses as for single taps, so such a group is as valid as one within a column.)
void group_taps(const convk::Plan& p, PackedPattern& pk) {
  const int64_t row = p.Wo_r;
  std::vector<int32_t> off;
  std::vector<int64_t> pos;
  off.reserve(pk.off.size());
  pos.reserve(pk.pos.size());
  pk.gptr.assign(pk.bptr.size(), 0);
  std::vector<std::pair<int32_t, int64_t>> taps;    // (offset, position), one bucket
  std::vector<std::pair<int32_t, int32_t>> groups;  // (kind, index of its first tap in taps)
  for (size_t bucket = 0; bucket + 1 < pk.bptr.size(); ++bucket) {
    taps.clear();
    for (int64_t k = pk.bptr[bucket]; k < pk.bptr[bucket + 1]; ++k) taps.emplace_back(pk.off[k], pk.pos[k]);
    std::sort(taps.begin(), taps.end());
    groups.clear();
    const auto below = [&](size_t i, size_t j, int64_t rows) {  // taps[j] is `rows` rows under taps[i]
      return j < taps.size() && taps[j].first == taps[i].first + rows * row;
    };
    for (size_t i = 0; i < taps.size();) {
      const bool next = below(i, i + 1, 1), gap = below(i, i + (next ? 2 : 1), 2);
      const int32_t kind = next && gap ? convk::kTripleTaps : next ? convk::kAdjacentTaps
                           : gap       ? convk::kGapTaps : convk::kSingleTap;
      groups.emplace_back(kind, int32_t(i));
      i += convk::taps_in(kind);
    }
    std::stable_sort(groups.begin(), groups.end(), [](auto a, auto b) { return a.first > b.first; });
    for (const auto& [kind, first] : groups) {
      off.push_back(taps[first].first | kind);
      for (int t = 0; t < convk::taps_in(kind); ++t) pos.push_back(taps[first + t].second);
    }
    pk.gptr[bucket + 1] = int64_t(off.size());
  }
  pk.off = std::move(off);
  pk.pos = std::move(pos);
}

// Counting sort of the kept weights into (o, b) buckets. `each(visit)` must call
// visit(o, c, kh, kw, flat_pos) once per kept weight, in the same order both times; (c, kh, kw) is
// the tap in the engine's source tensor and kernel orientation.
template <class Each>
std::shared_ptr<const PackedPattern> pack(const convk::Plan& p, int64_t nnz, bool grouped, Each each) {
  auto pk = std::make_shared<PackedPattern>();
  pk->bptr.assign(p.Co * p.nb + 1, 0);
  each([&](int64_t o, int64_t c, int64_t, int64_t, int64_t) { ++pk->bptr[o * p.nb + c / p.Cb + 1]; });
  for (size_t i = 1; i < pk->bptr.size(); ++i) pk->bptr[i] += pk->bptr[i - 1];
  std::vector<int64_t> cursor(pk->bptr.begin(), pk->bptr.end() - 1);
  pk->off.resize(nnz);
  pk->pos.resize(nnz);
  each([&](int64_t o, int64_t c, int64_t kh, int64_t kw, int64_t flat) {
    const int64_t k = cursor[o * p.nb + c / p.Cb]++;
    pk->off[k] = static_cast<int32_t>((((c % p.Cb) * p.KW + kw) * p.rows_copy + kh * p.dh) * p.Wo_r);
    pk->pos[k] = flat;
  });
  if (grouped) group_taps(p, *pk);
  return pk;
}

// The pack of (a, b) (CSR or CSC) for this engine and tiling, from the cache when it is there.
// Every plan field `pack` reads, and the geometry `each` decodes with, is part of the key. `phase`
// is the output phase py * sw + px of a strided grad-input (its tap filter also depends on stride,
// padding and dilation), -1 where the engine runs over all of the output.
template <class Each>
std::shared_ptr<const PackedPattern> cached_pack(Engine engine, int64_t phase, const at::Tensor& a,
                                                 const at::Tensor& b, const Geometry& g, const convk::Plan& p,
                                                 int64_t nnz, Each each) {
  // Per pattern: forward and grad-weight (CSR) or the grad-input phases (CSC), per input shape.
  static PatternCache<PackedPattern> cache(16);
  const bool grouped = engine != Engine::kGradWeight && convk::groups_taps(p);  // see gw_kernel
  return cache.get(a, b, {static_cast<int64_t>(engine), phase, p.Co, p.nb, p.Cb, p.KW, p.rows_copy, p.Wo_r, p.dh,
                          g.Co, g.Ci, g.KH, g.KW, g.sh, g.sw, g.ph, g.pw, g.dh, g.dw, nnz, int64_t(grouped)},
                   [&] { return pack(p, nnz, grouped, each); });
}

// vals[k] = w[pos[k]]: this call's weight values in pack order, split between the threads (on one,
// the gather is a visible part of a small map's layer, whose kernels are short).
at::Tensor gather_values(const PackedPattern& pk, const float* w) {
  const int64_t n = int64_t(pk.pos.size());
  at::Tensor vals = at::empty({n}, at::kFloat);
  float* v = vals.data_ptr<float>();
  const int64_t* pos = pk.pos.data();
  at::parallel_for(0, n, 16384, [&](int64_t k0, int64_t k1) {
    for (int64_t k = k0; k < k1; ++k) v[k] = w[pos[k]];
  });
  return vals;
}

// Engine plan for forward or grad-weight: source x, kept weights of output row co from CSR.
convk::Plan conv_plan(const Geometry& g, Engine engine, bool avx512, int64_t nnz) {
  convk::Plan p{};
  p.N = g.N, p.Cs = g.Ci, p.Hs = g.H, p.Ws = g.W;
  p.s_sn = g.Ci * g.H * g.W, p.s_sc = g.H * g.W;  // x is contiguous
  p.Co = g.Co, p.Ho = g.Ho, p.Wo = g.Wo;
  p.KH = g.KH, p.KW = g.KW, p.sh = g.sh, p.sw = g.sw, p.dh = g.dh, p.dw = g.dw;
  p.pt = g.ph, p.pl = g.pw;
  p.Ho_out = g.Ho, p.oy_first = 0, p.oy_step = 1;
  choose_tiling(p, engine, avx512, nnz);
  return p;
}

// grad_output as the float kernels read it: each (H, W) plane contiguous, images and channels at any
// stride. An expanded gradient (all strides 0, what `y.sum()` hands back) becomes one plane repeated
// (strides (0, 0, W, 1)) instead of an (N, C, H, W) copy written and read back on every step.
at::Tensor planes_readable(const at::Tensor& t) {
  if (t.dim() != 4) return t.contiguous();
  const bool planes = (t.stride(3) == 1 || t.size(3) <= 1) && (t.stride(2) == t.size(3) || t.size(2) <= 1);
  if (planes) return t;
  const bool repeated = t.numel() > 0 && t.stride(0) == 0 && t.stride(1) == 0 && t.stride(2) == 0 && t.stride(3) == 0;
  if (repeated) return t.select(0, 0).select(0, 0).contiguous().expand(t.sizes());
  return t.contiguous();
}

// Scratch from the caching allocator (64-byte aligned): one copy slice per thread, and `extras`
// slices of `extra_floats` (one per thread, or per task slot for partial sums).
struct ThreadBuffers {
  at::Tensor copy, extra;
  int64_t copy_stride = 0, extra_stride = 0;
  ThreadBuffers(const convk::Plan& p, int64_t extra_floats, bool zero_extra, int64_t extras = at::get_num_threads()) {
    const int64_t nt = at::get_num_threads();
    copy_stride = (convk::copy_floats(p) + 15) / 16 * 16;
    extra_stride = (extra_floats + 15) / 16 * 16;
    copy = at::empty({nt * copy_stride}, at::kFloat);
    if (extra_stride) {
      extra = at::empty({extras * extra_stride}, at::kFloat);
      if (zero_extra) std::memset(extra.data_ptr<float>(), 0, extras * extra_stride * sizeof(float));
    }
  }
  float* copy_of(int64_t t) { return copy.data_ptr<float>() + t * copy_stride; }
  float* extra_of(int64_t t) { return extra_stride ? extra.data_ptr<float>() + t * extra_stride : nullptr; }
};

void run_forward(const convk::Plan& p, const float* src, const float* bias, float* out, bool avx512) {
  const int64_t partial = p.nb > 1 ? p.Co * p.R * p.Wo_r : 0;
  ThreadBuffers buf(p, partial, false);
  run_tasks(p.ngroups * p.ntiles, [&](int64_t t, int64_t tid) {
    if (avx512)
      convk::avx512::fwd_task(p, src, bias, out, t, buf.copy_of(tid), buf.extra_of(tid));
    else
      convk::avx2::fwd_task(p, src, bias, out, t, buf.copy_of(tid), buf.extra_of(tid));
  });
}

// ---- float64 (and reference) loops ------------------------------------------------------------------
template <typename scalar_t>
void plain_forward(const Geometry& g, const scalar_t* xp, const scalar_t* wp, const scalar_t* bp,
                   const int32_t* rp, const int32_t* ci, scalar_t* yp) {
  const int64_t KK = g.KH * g.KW, Kc = g.Ci * KK;
  at::parallel_for(0, g.N * g.Co, 1, [&](int64_t b0, int64_t b1) {
    for (int64_t b = b0; b < b1; ++b) {
      const int64_t n = b / g.Co, co = b % g.Co;
      scalar_t* out = yp + b * g.Ho * g.Wo;
      for (int64_t i = 0; i < g.Ho * g.Wo; ++i) out[i] = bp ? bp[co] : scalar_t(0);
      for (int32_t j = rp[co]; j < rp[co + 1]; ++j) {
        const int64_t c = ci[j] / KK, kh = (ci[j] % KK) / g.KW, kw = ci[j] % g.KW;
        const scalar_t v = wp[co * Kc + ci[j]];
        const scalar_t* in = xp + (n * g.Ci + c) * g.H * g.W;
        for (int64_t oy = 0; oy < g.Ho; ++oy) {
          const int64_t iy = oy * g.sh - g.ph + kh * g.dh;
          if (iy < 0 || iy >= g.H) continue;
          for (int64_t ox = 0; ox < g.Wo; ++ox) {
            const int64_t ix = ox * g.sw - g.pw + kw * g.dw;
            if (ix >= 0 && ix < g.W) out[oy * g.Wo + ox] += v * in[iy * g.W + ix];
          }
        }
      }
    }
  });
}

template <typename scalar_t>
void plain_grad_input(const Geometry& g, const scalar_t* dyp, const scalar_t* wp, const int32_t* cp,
                      const int32_t* ri, scalar_t* dxp) {
  const int64_t KK = g.KH * g.KW, Kc = g.Ci * KK;
  at::parallel_for(0, g.N * g.Ci, 1, [&](int64_t b0, int64_t b1) {
    for (int64_t b = b0; b < b1; ++b) {
      const int64_t n = b / g.Ci, c = b % g.Ci;
      scalar_t* in = dxp + b * g.H * g.W;
      for (int64_t col = c * KK; col < (c + 1) * KK; ++col) {
        const int64_t kh = (col % KK) / g.KW, kw = col % g.KW;
        for (int32_t j = cp[col]; j < cp[col + 1]; ++j) {
          const int64_t co = ri[j];
          const scalar_t v = wp[co * Kc + col];
          const scalar_t* out = dyp + (n * g.Co + co) * g.Ho * g.Wo;
          for (int64_t oy = 0; oy < g.Ho; ++oy) {
            const int64_t iy = oy * g.sh - g.ph + kh * g.dh;
            if (iy < 0 || iy >= g.H) continue;
            for (int64_t ox = 0; ox < g.Wo; ++ox) {
              const int64_t ix = ox * g.sw - g.pw + kw * g.dw;
              if (ix >= 0 && ix < g.W) in[iy * g.W + ix] += v * out[oy * g.Wo + ox];
            }
          }
        }
      }
    }
  });
}

template <typename scalar_t>
void plain_grad_weight(const Geometry& g, const scalar_t* dyp, const scalar_t* xp, const int32_t* rp,
                       const int32_t* ci, scalar_t* dwp) {
  const int64_t KK = g.KH * g.KW, Kc = g.Ci * KK;
  at::parallel_for(0, g.Co, 1, [&](int64_t c0, int64_t c1) {
    for (int64_t co = c0; co < c1; ++co)
      for (int32_t j = rp[co]; j < rp[co + 1]; ++j) {
        const int64_t c = ci[j] / KK, kh = (ci[j] % KK) / g.KW, kw = ci[j] % g.KW;
        scalar_t acc = 0;
        for (int64_t n = 0; n < g.N; ++n) {
          const scalar_t* in = xp + (n * g.Ci + c) * g.H * g.W;
          const scalar_t* out = dyp + (n * g.Co + co) * g.Ho * g.Wo;
          for (int64_t oy = 0; oy < g.Ho; ++oy) {
            const int64_t iy = oy * g.sh - g.ph + kh * g.dh;
            if (iy < 0 || iy >= g.H) continue;
            for (int64_t ox = 0; ox < g.Wo; ++ox) {
              const int64_t ix = ox * g.sw - g.pw + kw * g.dw;
              if (ix >= 0 && ix < g.W) acc += out[oy * g.Wo + ox] * in[iy * g.W + ix];
            }
          }
        }
        dwp[co * Kc + ci[j]] = acc;
      }
  });
}

}  // namespace

namespace convk {

int64_t copy_floats(const Plan& p) { return p.Cb * p.KW * p.rows_copy * p.Wo_r; }

int64_t dy_tile_floats(const Plan& p) { return p.G > 1 ? p.Co * p.R * p.Wo_r : 0; }

void source_rows(const Plan& p, int64_t oy0, int64_t rows_valid, int64_t* rows) {
  const int64_t rows_needed = (rows_valid - 1) * p.sh + (p.KH - 1) * p.dh + 1;
  for (int64_t rr = 0; rr < p.rows_copy; ++rr) {
    const int64_t t = oy0 * p.sh + rr - p.pt;
    rows[rr] = rr < rows_needed && t >= 0 && t < p.Hs ? t : kZeroRow;
  }
}

void source_cols(const Plan& p, int32_t* cols) {
  for (int64_t kw = 0; kw < p.KW; ++kw)
    for (int64_t x = 0; x < p.Wo_r; ++x) {
      const int64_t u = x * p.sw + kw * p.dw - p.pl;  // column of the virtual input V
      cols[kw * p.Wo_r + x] = x < p.Wo && u >= 0 && u < p.Ws ? int32_t(u) : -1;
    }
}

void build_copy(const Plan& p, const float* src, int64_t n0, int64_t b, const int64_t* rows, const int32_t* cols,
                float* dst) {
  const int64_t c_lo = b * p.Cb, c_hi = std::min(p.Cs, c_lo + p.Cb);
  const int64_t images = std::min(p.G, p.N - n0);
  for (int64_t cl = 0; cl < c_hi - c_lo; ++cl)
    for (int64_t kw = 0; kw < p.KW; ++kw) {
      const int32_t* col = cols + kw * p.Wo_r;
      float* d_row = dst + (cl * p.KW + kw) * p.rows_copy * p.Wo_r;
      for (int64_t rr = 0; rr < p.rows_copy; ++rr, d_row += p.Wo_r) {
        std::fill(d_row, d_row + p.Wo_r, 0.f);
        if (rows[rr] < 0) continue;
        for (int64_t g = 0; g < images; ++g) {  // image g in lanes [g * Wo, (g + 1) * Wo)
          const float* s = src + (n0 + g) * p.s_sn + (c_lo + cl) * p.s_sc + rows[rr] * p.Ws;
          float* d = d_row + g * p.Wo;
          for (int64_t x = 0; x < p.Wo; ++x)
            if (col[x] >= 0) d[x] = s[col[x]];
        }
      }
    }
}

}  // namespace convk

// y[n, co, oy, ox] = bias[co] + sum_{(c, kh, kw) kept in row co} w[co, c, kh, kw] *
//                    x[n, c, oy*sh - ph + kh*dh, ox*sw - pw + kw*dw]   (zero outside x)
at::Tensor csr_conv2d(const at::Tensor& input, const at::Tensor& weight,
                      const std::optional<at::Tensor>& bias, const at::Tensor& row_ptr,
                      const at::Tensor& col_idx, at::IntArrayRef stride, at::IntArrayRef padding,
                      at::IntArrayRef dilation) {
  auto x = input.contiguous();
  auto w = weight.contiguous();
  const Geometry g = geometry(x.sizes(), w.sizes(), stride, padding, dilation);
  auto y = at::empty({g.N, g.Co, g.Ho, g.Wo}, x.options());
  if (y.numel() == 0) return y;
  const int32_t* rp = row_ptr.data_ptr<int32_t>();
  const int32_t* ci = col_idx.data_ptr<int32_t>();
  at::Tensor b = bias ? bias->contiguous() : at::Tensor();
  if (x.scalar_type() == at::kDouble) {
    plain_forward<double>(g, x.data_ptr<double>(), w.data_ptr<double>(), b.defined() ? b.data_ptr<double>() : nullptr,
                          rp, ci, y.data_ptr<double>());
    return y;
  }
  const bool avx512 = have_avx512();
  convk::Plan p = conv_plan(g, Engine::kForward, avx512, rp[g.Co]);
  const int64_t KK = g.KH * g.KW, Kc = g.Ci * KK;
  const auto pk = cached_pack(Engine::kForward, -1, row_ptr, col_idx, g, p, rp[g.Co], [&](auto&& visit) {
    for (int64_t co = 0; co < g.Co; ++co)
      for (int32_t j = rp[co]; j < rp[co + 1]; ++j) {
        const int64_t col = ci[j];
        visit(co, col / KK, (col % KK) / g.KW, col % g.KW, co * Kc + col);
      }
  });
  const at::Tensor vals = gather_values(*pk, w.data_ptr<float>());
  p.bptr = pk->bptr.data(), p.gptr = pk->groups(), p.off = pk->off.data(), p.val = vals.data_ptr<float>();
  run_forward(p, x.data_ptr<float>(), b.defined() ? b.data_ptr<float>() : nullptr, y.data_ptr<float>(), avx512);
  return y;
}

// dx[n, c, iy, ix] = sum over kept (co, c, kh, kw) and (oy, ox) with oy*sh - ph + kh*dh = iy,
// ox*sw - pw + kw*dw = ix of w[co, c, kh, kw] * dy[n, co, oy, ox]. Run as the forward engine over
// dy padded by (K - 1) * dil - pad (zero-upsampled by the stride, phase by phase below), with the
// kernel flipped and the roles of c and co swapped; the CSC gives each input channel its kept
// weights without a transpose.
at::Tensor csr_conv2d_grad_input(const at::Tensor& grad_output, const at::Tensor& weight,
                                 const at::Tensor& col_ptr, const at::Tensor& row_idx,
                                 at::IntArrayRef input_size, at::IntArrayRef stride,
                                 at::IntArrayRef padding, at::IntArrayRef dilation) {
  auto dy = grad_output.scalar_type() == at::kFloat ? planes_readable(grad_output) : grad_output.contiguous();
  auto w = weight.contiguous();
  const Geometry g = geometry(input_size, w.sizes(), stride, padding, dilation);
  TORCH_CHECK(dy.size(0) == g.N && dy.size(2) == g.Ho && dy.size(3) == g.Wo, "grad_output: expected (", g.N,
              ", ", g.Co, ", ", g.Ho, ", ", g.Wo, "), got ", dy.sizes());
  const int32_t* cp = col_ptr.data_ptr<int32_t>();
  const int32_t* ri = row_idx.data_ptr<int32_t>();
  if (dy.scalar_type() == at::kDouble) {
    auto dx = at::zeros({g.N, g.Ci, g.H, g.W}, dy.options());
    plain_grad_input<double>(g, dy.data_ptr<double>(), w.data_ptr<double>(), cp, ri, dx.data_ptr<double>());
    return dx;
  }
  auto dx = at::empty({g.N, g.Ci, g.H, g.W}, dy.options());
  if (dx.numel() == 0) return dx;
  const bool avx512 = have_avx512();
  convk::Plan base{};
  base.N = g.N, base.Cs = g.Co, base.Hs = g.Ho, base.Ws = g.Wo;
  base.s_sn = dy.stride(0), base.s_sc = dy.stride(1);
  base.Co = g.Ci, base.sh = 1, base.sw = 1;  // the rest per phase below
  const int64_t KK = g.KH * g.KW, Kc = g.Ci * KK;
  // One stride-1 engine per phase (py, px) of dx over dy itself (cpu/stride_phases.h; a single
  // phase at stride 1), so a strided conv's grad-input runs the unit-stride copies and tap groups;
  // the column phases of a row phase go to scratch planes that one pass interleaves into dx's rows.
  const int64_t phases_h = std::min(g.sh, g.H), phases_w = std::min(g.sw, g.W);
  const int64_t largest_phase = g.N * g.Ci * phase_size(g.H, 0, g.sh) * phase_size(g.W, 0, g.sw);
  at::Tensor scratch = phases_w > 1 ? at::empty({phases_w, largest_phase}, dy.options()) : at::Tensor();
  for (int64_t py = 0; py < phases_h; ++py) {
    const int64_t hp = phase_size(g.H, py, g.sh);
    const PhaseTaps rows = phase_taps(py, g.KH, g.dh, g.ph, g.sh);
    std::vector<const float*> phase_values(phases_w, nullptr);  // nullptr: no tap reaches the phase
    for (int64_t px = 0; px < phases_w; ++px) {
      const PhaseTaps cols = phase_taps(px, g.KW, g.dw, g.pw, g.sw);
      float* out = phases_w > 1 ? scratch.data_ptr<float>() + px * scratch.size(1) : dx.data_ptr<float>();
      if (rows.count == 0 || cols.count == 0) {
        if (phases_w == 1)
          for (int64_t b = 0; b < g.N * g.Ci; ++b)
            for (int64_t y = 0; y < hp; ++y) std::fill_n(out + (b * g.H + py + y * g.sh) * g.W, g.W, 0.f);
        continue;
      }
      phase_values[px] = out;
      convk::Plan p = base;
      p.Ho = hp, p.Wo = phase_size(g.W, px, g.sw);
      p.KH = rows.count, p.KW = cols.count, p.dh = rows.dil, p.dw = cols.dil, p.pt = -rows.shift, p.pl = -cols.shift;
      if (phases_w > 1)  // this phase's scratch plane: (N * Ci, hp, wp), contiguous
        p.Ho_out = hp, p.oy_first = 0, p.oy_step = 1;
      else  // straight into dx's rows py, py + sh, ...
        p.Ho_out = g.H, p.oy_first = py, p.oy_step = g.sh;
      // Weight column col (input channel, tap) in the engine's orientation (the kernel flipped).
      auto engine_kh = [&](int64_t col) { return g.KH - 1 - (col % KK) / g.KW; };
      auto engine_kw = [&](int64_t col) { return g.KW - 1 - col % g.KW; };
      auto in_phase = [&](int64_t col) { return rows.has(engine_kh(col)) && cols.has(engine_kw(col)); };
      // The kept taps of this phase, at their (row, column) in the phase's sub-kernel.
      auto taps = [&](auto&& visit) {
        for (int64_t col = 0; col < Kc; ++col)
          if (in_phase(col))
            for (int32_t j = cp[col]; j < cp[col + 1]; ++j)
              visit(col / KK, ri[j], rows.index(engine_kh(col)), cols.index(engine_kw(col)), ri[j] * Kc + col);
      };
      int64_t nnz = 0;
      for (int64_t col = 0; col < Kc; ++col)
        if (in_phase(col)) nnz += cp[col + 1] - cp[col];
      choose_tiling(p, Engine::kGradInput, avx512, nnz);
      const auto pk = cached_pack(Engine::kGradInput, py * g.sw + px, col_ptr, row_idx, g, p, nnz, taps);
      const at::Tensor vals = gather_values(*pk, w.data_ptr<float>());
      p.bptr = pk->bptr.data(), p.gptr = pk->groups(), p.off = pk->off.data(), p.val = vals.data_ptr<float>();
      run_forward(p, dy.data_ptr<float>(), nullptr, out, avx512);
    }
    if (phases_w > 1)
      interleave_phases(g.N * g.Ci, g.H, g.W, g.sh, g.sw, py, phase_values.data(), dx.data_ptr<float>());
  }
  return dx;
}

namespace {

// dw[co, c, kh, kw] = sum_{n, oy, ox} dy[n, co, oy, ox] * x[n, c, oy*sh - ph + kh*dh, ox*sw - pw + kw*dw]
// at kept positions only (SDDMM), zero elsewhere. Tasks are (n, row tile) as in the forward, so
// each task slot accumulates its own copy of the kept-weight sums; the copies are added at the end.
// With grad_bias, also dy summed over images and pixels, by the same tasks while their dy rows pass
// through cache for the kernels (a separate sum would read dy back from memory).
at::Tensor grad_weight_engine(const at::Tensor& grad_output, const at::Tensor& input, const at::Tensor& row_ptr,
                              const at::Tensor& col_idx, at::IntArrayRef weight_size, at::IntArrayRef stride,
                              at::IntArrayRef padding, at::IntArrayRef dilation, at::Tensor* grad_bias) {
  auto dy = grad_output.scalar_type() == at::kFloat ? planes_readable(grad_output) : grad_output.contiguous();
  auto x = input.contiguous();
  const Geometry g = geometry(x.sizes(), weight_size, stride, padding, dilation);
  TORCH_CHECK(dy.size(0) == g.N && dy.size(2) == g.Ho && dy.size(3) == g.Wo, "grad_output: expected (", g.N,
              ", ", g.Co, ", ", g.Ho, ", ", g.Wo, "), got ", dy.sizes());
  const int32_t* rp = row_ptr.data_ptr<int32_t>();
  const int32_t* ci = col_idx.data_ptr<int32_t>();
  const int64_t nnz = rp[g.Co];
  if (nnz == 0 || g.N * g.Ho * g.Wo == 0 || x.scalar_type() == at::kDouble) {
    auto dw = at::zeros(weight_size, x.options());
    if (nnz > 0 && g.N * g.Ho * g.Wo > 0)
      plain_grad_weight<double>(g, dy.data_ptr<double>(), x.data_ptr<double>(), rp, ci, dw.data_ptr<double>());
    if (grad_bias) *grad_bias = dy.sum({0, 2, 3});
    return dw;
  }
  auto dw = at::empty(weight_size, x.options());
  const bool avx512 = have_avx512();
  convk::Plan p = conv_plan(g, Engine::kGradWeight, avx512, nnz);
  p.dy_sn = dy.stride(0), p.dy_sc = dy.stride(1);
  const int64_t KK = g.KH * g.KW, Kc = g.Ci * KK;
  const auto pk = cached_pack(Engine::kGradWeight, -1, row_ptr, col_idx, g, p, nnz, [&](auto&& visit) {
    for (int64_t co = 0; co < g.Co; ++co)
      for (int32_t j = rp[co]; j < rp[co + 1]; ++j) {
        const int64_t col = ci[j];
        visit(co, col / KK, (col % KK) / g.KW, col % g.KW, co * Kc + col);
      }
  });
  p.bptr = pk->bptr.data(), p.gptr = pk->groups(), p.off = pk->off.data(), p.val = nullptr;
  // Per task slot (cpu/tasks.h: the same sums on every call): the kept-weight sums, then (with
  // grad_bias) one sum per output channel.
  const int64_t sum_floats = nnz + (grad_bias ? g.Co : 0);
  const int64_t slots = task_slots(p.ngroups * p.ntiles);
  ThreadBuffers buf(p, sum_floats, true, slots);
  const int64_t tile_floats = (convk::dy_tile_floats(p) + 15) / 16 * 16;
  const at::Tensor dy_tiles = at::empty({at::get_num_threads() * tile_floats}, at::kFloat);
  const float* xp = x.data_ptr<float>();
  const float* dyp = dy.data_ptr<float>();
  run_task_slots(p.ngroups * p.ntiles, slots, [&](int64_t t, int64_t tid, int64_t slot) {
    float* tiles = tile_floats ? dy_tiles.data_ptr<float>() + tid * tile_floats : nullptr;
    float* bias_acc = grad_bias ? buf.extra_of(slot) + nnz : nullptr;
    if (avx512)
      convk::avx512::gw_task(p, xp, dyp, t, buf.copy_of(tid), buf.extra_of(slot), tiles, bias_acc);
    else
      convk::avx2::gw_task(p, xp, dyp, t, buf.copy_of(tid), buf.extra_of(slot), tiles, bias_acc);
  });
  // The dense-shaped gradient is zeroed and filled one block of output rows at a time, so each row
  // is written while it is in cache and the pass over the whole weight (megabytes at low density,
  // where the kernels themselves take little time) is split between the threads.
  float* dwp = dw.data_ptr<float>();
  std::vector<const float*> parts(slots);
  for (int64_t t = 0; t < slots; ++t) parts[t] = buf.extra_of(t);
  const int64_t* pos = pk->pos.data();
  const int64_t* row_start = pk->bptr.data();  // entries of output row o: [row_start[o * nb], row_start[(o + 1) * nb])
  const int64_t rows_per_chunk = std::max<int64_t>(kFillChunkFloats / std::max<int64_t>(Kc, 1), 1);
  at::parallel_for(0, g.Co, rows_per_chunk, [&](int64_t begin, int64_t end) {
    for (int64_t o0 = begin; o0 < end; o0 += rows_per_chunk) {
      const int64_t o1 = std::min(end, o0 + rows_per_chunk);
      std::memset(dwp + o0 * Kc, 0, (o1 - o0) * Kc * sizeof(float));
      for (int64_t k = row_start[o0 * p.nb]; k < row_start[o1 * p.nb]; ++k) {
        float s = 0.f;
        for (int64_t t = 0; t < slots; ++t) s += parts[t][k];
        dwp[pos[k]] = s;
      }
    }
  });
  if (grad_bias) {
    *grad_bias = at::empty({g.Co}, x.options());
    float* db = grad_bias->data_ptr<float>();
    for (int64_t o = 0; o < g.Co; ++o) {
      float s = 0.f;
      for (int64_t t = 0; t < slots; ++t) s += parts[t][nnz + o];
      db[o] = s;
    }
  }
  return dw;
}

}  // namespace

at::Tensor csr_conv2d_grad_weight(const at::Tensor& grad_output, const at::Tensor& input,
                                  const at::Tensor& row_ptr, const at::Tensor& col_idx,
                                  at::IntArrayRef weight_size, at::IntArrayRef stride,
                                  at::IntArrayRef padding, at::IntArrayRef dilation) {
  return grad_weight_engine(grad_output, input, row_ptr, col_idx, weight_size, stride, padding, dilation, nullptr);
}

std::tuple<at::Tensor, at::Tensor> csr_conv2d_grad_weight_bias(const at::Tensor& grad_output,
                                                               const at::Tensor& input, const at::Tensor& row_ptr,
                                                               const at::Tensor& col_idx,
                                                               at::IntArrayRef weight_size, at::IntArrayRef stride,
                                                               at::IntArrayRef padding, at::IntArrayRef dilation) {
  at::Tensor grad_bias;
  at::Tensor grad_weight =
      grad_weight_engine(grad_output, input, row_ptr, col_idx, weight_size, stride, padding, dilation, &grad_bias);
  return {grad_weight, grad_bias};
}

}  // namespace ebsparse
