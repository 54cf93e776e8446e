// Block-sparse (BSR) linear and conv kernels on the CPU.
//
// One engine serves both ops: a convolution is a GEMM of the weight viewed as (Co, Ci * KH * KW)
// with the im2col of its input, and a linear layer is the 1x1 case on 1x1 maps. A block pattern
// keeps (bo x bi) blocks of the (out, in) channel plane, each shared by every (kh, kw) tap, so in the
// (Co, Ci * KH * KW) view a kept block is a dense (bo x bi * KH * KW) sub-matrix: the engine runs
// out (R, P) = S (R, Kdim) . B (Kdim, P) with S block-sparse (block rows of br, block columns of bck),
// P the output columns (batch rows for linear; images x output pixels for conv).
//
// Columns are processed in tiles of `ld` (a multiple of the micro-kernel's width), each task by one
// thread with its own scratch: the panel (Kdim x ld: the transposed activation for linear, an
// im2col of the tile for conv, only the input channels some kept block reads), the output tile
// (R x ld), then written to the (N, R) / (N, R, Ho, Wo) output. For stride-1 convolutions the
// columns of one image run over a padded-width grid (q = oy * Wp + ox, Wp the padded width), so an
// im2col row is one contiguous copy from the padded input; the columns with ox >= Wo are computed
// and discarded. With fewer tiles than 2 x threads, tasks also split the block rows.
//
//   forward      out = S . im2col(x)                       (register-tiled SpMM per block row)
//   grad-input   the forward engine on grad_output with the transposed pattern and flipped taps
//                (the gradient of a convolution is a convolution): each thread owns its outputs,
//                no scatter-add; strided convolutions first spread grad_output onto the stride grid
//   grad-weight  per tile, dot products of grad_output rows with panel rows at the kept blocks only
//                (SDDMM), summed per thread, then over threads, and written into a dense-shaped dW.
//
// fp32 runs kernels_avx512.cpp or kernels_avx2.cpp as cpu_capability() chooses; fp64 the portable
// loops below.
#include "cpu/block/block.h"

#include <ATen/Parallel.h>
#include <immintrin.h>

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <vector>

#include "cpu/block/kernels.h"
#include "cpu/capability.h"
#include "cpu/scratch.h"
#include "cpu/linear/kernels.h"
#include "cpu/norm/group_norm_silu_spans.h"
#include "cpu/tasks.h"

namespace ebsparse {
namespace {

// ---- kernels -------------------------------------------------------------------------------------

template <typename T>
void spmm_generic(const T* vals, const int32_t* idx, int64_t b0, int64_t b1, int br, int bc, const T* panel,
                  const T* const* rows, T* tile, int64_t ld, int64_t width) {
  for (int64_t j = b0; j < b1; ++j)
    for (int r = 0; r < br; ++r)
      for (int c = 0; c < bc; ++c) {
        const T w = vals[(j * br + r) * bc + c];
        const int64_t k = int64_t(idx[j]) * bc + c;
        const T* p = rows ? rows[k] : panel + k * ld;
        T* t = tile + r * ld;
        for (int64_t i = 0; i < width; ++i) t[i] += w * p[i];
      }
}

template <typename T>
void sddmm_generic(const T* dtile, const int32_t* idx, int64_t b0, int64_t b1, int br, int bc, const T* panel,
                   const T* const* rows, int64_t ld, int64_t n, const block_detail::Images& images, T* acc) {
  for (int64_t j = b0; j < b1; ++j)
    for (int r = 0; r < br; ++r)
      for (int c = 0; c < bc; ++c) {
        const int64_t k = int64_t(idx[j]) * bc + c;
        T s = 0;
        for (int64_t m = 0; m < images.count; ++m) {
          const T* a = dtile + m * images.dstep + r * ld;
          const T* p = (rows ? rows[k] : panel + k * ld) + m * images.rstep;
          for (int64_t i = 0; i < n; ++i) s += a[i] * p[i];
        }
        acc[(j * br + r) * bc + c] += s;
      }
}

template <typename T>
struct Kernels {
  int pt;  // columns per SpMM call
  void (*spmm)(const T*, const int32_t*, int64_t, int64_t, int, int, const T*, const T* const*, T*, int64_t,
               int64_t);
  void (*sddmm)(const T*, const int32_t*, int64_t, int64_t, int, int, const T*, const T* const*, int64_t, int64_t,
                const block_detail::Images&, T*);
  // The row-major linear kernels (kernels.h), for output widths of 2 or 4 vectors of `vec` (at one
  // vector the broadcasts outnumber the FMAs' other loads and the transposed kernels were faster:
  // bench/NOTES.md); null where there are none (fp64).
  int vec = 0;
  void (*rspmm)(const T*, int64_t, int64_t, const T*, const int32_t*, int64_t, int64_t, int, int, const T*, T*,
                int64_t, bool) = nullptr;
  void (*rsddmm)(const T*, int64_t, int, const T*, int64_t, int64_t, int, T*) = nullptr;
  bool rowwise(int64_t ow) const {
    return vec && ow % vec == 0 && (ow / vec == 2 || ow / vec == 4);
  }
};

template <typename T>
Kernels<T> pick_kernels();

template <>
Kernels<float> pick_kernels<float>() {
  namespace d = block_detail;
  if (cpu_capability() == CpuCapability::kAvx512)
    return {d::kPtAvx512, d::spmm_f32_avx512, d::sddmm_f32_avx512, 16, d::rspmm_f32_avx512, d::rsddmm_f32_avx512};
  return {d::kPtAvx2, d::spmm_f32_avx2, d::sddmm_f32_avx2, 8, d::rspmm_f32_avx2, d::rsddmm_f32_avx2};
}

template <>
Kernels<double> pick_kernels<double>() {
  return {8, spmm_generic<double>, sddmm_generic<double>};
}

// dst[c * ldd + r] = src[r * lds + c] for r < rows, c < cols.
void transpose(const float* src, int64_t lds, int64_t rows, int64_t cols, float* dst, int64_t ldd, bool dst_outer) {
  if (cpu_capability() == CpuCapability::kAvx512)
    linear_detail::transpose_f32_avx512(src, lds, rows, cols, dst, ldd, dst_outer);
  else
    linear_detail::transpose_f32_avx2(src, lds, rows, cols, dst, ldd, dst_outer);
}
void transpose(const double* src, int64_t lds, int64_t rows, int64_t cols, double* dst, int64_t ldd, bool) {
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t c = 0; c < cols; ++c) dst[c * ldd + r] = src[r * lds + c];
}

// The scratch buffers a thread holds at the same time (cpu/scratch.h).
// kSums (the blocks' gradient sums) and kPartial (other threads' sums: both the size of the kept
// weights) belong to the calling thread, reused between calls instead of fresh tensors. kColumns:
// the runs of a strided panel's rows (build_panel).
enum Slot { kPanel, kTile, kRowPtrs, kSums, kPartial, kColumns, kSlots };

template <typename T>
T* scratch(Slot slot, int64_t n) {
  return thread_scratch<Slot, kSlots, T>(slot, n, "block-sparse");
}

// ---- geometry: the GEMM view of a layer ----------------------------------------------------------

struct Geometry {
  bool linear;             // input (N, C), output (N, R); else NCHW
  int64_t N, C, H, W, R;   // input (N, C, H, W), R output rows (channels / features)
  int64_t KH, KW, sh, sw, ph, pw, dh, dw;  // ph / pw: top / left padding (negative crops)
  int64_t Ho, Wo;
  // derived
  int64_t Hp = 1, Wp = 1;  // the padded input the panels read
  int64_t rp = 1;          // column pitch of an output row (Wp for stride 1: the padded-width grid)
  int64_t qn = 1;          // columns per image

  void derive() {
    if (linear) return;
    Hp = (Ho - 1) * sh + (KH - 1) * dh + 1;
    Wp = (Wo - 1) * sw + (KW - 1) * dw + 1;
    const bool unit = sh == 1 && sw == 1;
    rp = unit ? Wp : Wo;
    qn = unit ? (Ho - 1) * Wp + Wo : Ho * Wo;
  }
  bool unit_stride() const { return sh == 1 && sw == 1; }
  // Stride-1 convolutions read their panel rows in place: row (ci, kh, kw) of the columns
  // [q0, q0 + n) of one image is the run at offset(ci, kh, kw) + q0 of that image's padded input.
  bool in_place() const { return !linear && unit_stride(); }
  int64_t kdim() const { return C * KH * KW; }
  int64_t columns() const { return N * qn; }
};

// Floats past the padded input that an in-place tile may read (columns discarded or zero in the
// gradient tile): a column tile (at most 4 micro-kernel widths) can start at the last column.
constexpr int64_t kOverRead = 4 * block_detail::kPtAvx512;

// Which input channels (rows of C) some kept block reads.
std::vector<uint8_t> used_channels(const Geometry& g, const int32_t* idx, int64_t nnzb, int64_t bci) {
  std::vector<uint8_t> used(g.C, 0);
  for (int64_t j = 0; j < nnzb; ++j)
    for (int64_t c = 0; c < bci; ++c) used[int64_t(idx[j]) * bci + c] = 1;
  return used;
}

// The input copied onto the (Hp, Wp) grid the panels read: zero where it falls outside; flat, with
// kOverRead zeros after it. Only the channels marked in `used` are copied (the kernels read no
// other plane); the others get zeros in their first kOverRead floats, the most a tile of the plane
// before reads past its end (columns the forward discards and the grad-weight multiplies by zero,
// so they must hold finite values).
template <typename T>
at::Tensor padded_input(const at::Tensor& x, const Geometry& g, const std::vector<uint8_t>& used) {
  const int64_t total = g.N * g.C * g.Hp * g.Wp, plane = g.Hp * g.Wp;
  at::Tensor out = at::empty({total + kOverRead}, x.options());
  T* dst = out.mutable_data_ptr<T>();
  std::fill(dst + total, dst + total + kOverRead, T(0));
  const T* src = x.const_data_ptr<T>();
  at::parallel_for(0, g.N * g.C, 16, [&](int64_t p0, int64_t p1) {
    for (int64_t p = p0; p < p1; ++p) {
      const T* s = src + p * g.H * g.W;
      T* d = dst + p * plane;
      if (!used[p % g.C]) {
        std::fill(d, d + std::min(plane, kOverRead), T(0));
        continue;
      }
      const int64_t x0 = std::clamp<int64_t>(g.pw, 0, g.Wp), x1 = std::clamp<int64_t>(g.pw + g.W, x0, g.Wp);
      for (int64_t y = 0; y < g.Hp; ++y) {
        T* row = d + y * g.Wp;
        const int64_t iy = y - g.ph;
        if (iy < 0 || iy >= g.H) {
          std::fill(row, row + g.Wp, T(0));
          continue;
        }
        std::fill(row, row + x0, T(0));
        std::memcpy(row + x0, s + iy * g.W + (x0 - g.pw), sizeof(T) * (x1 - x0));
        std::fill(row + x1, row + g.Wp, T(0));
      }
    }
  });
  return out;
}

// Whether the engines can read a 1x1 convolution's source (N, C, H, W) where it lies instead of a
// padded copy: the padded grid must be the source itself (no padding, and for a strided layer's
// grad-input no row or column of zeros added below the spread gradient), and no tile may
// read past its image's last column, where the copy's zeros would be (the micro-kernels round a
// tile's width up to 1, 2 or 4 vectors of pt / 4: so the image's columns must fill whole tiles of pt,
// or be 1, 2 or 4 vectors). For the U-Net's 1x1 layers this saves a copy of the input in the forward
// and the grad-weight and of grad_output in the grad-input: up to 12 MB each.
template <typename T>
bool reads_in_place(const Geometry& g, const Kernels<T>& kern) {
  const bool whole_tiles = g.qn % kern.pt == 0 || (kern.pt % g.qn == 0 && g.qn % (kern.pt / 4) == 0);
  return g.in_place() && g.KH == 1 && g.KW == 1 && g.ph == 0 && g.pw == 0 && g.Hp == g.H && g.Wp == g.W &&
         whole_tiles;
}

// What the engines read for source `src`: itself for linear layers and where reads_in_place allows,
// else its padded copy (the input channels of the nnzb kept blocks idx, of bc channels each).
template <typename T>
at::Tensor engine_source(const at::Tensor& src, const Geometry& g, const Kernels<T>& kern, const int32_t* idx,
                         int64_t nnzb, int64_t bc) {
  if (g.linear || reads_in_place(g, kern)) return src;
  return padded_input<T>(src, g, used_channels(g, idx, nnzb, bc));
}

// Offsets of the panel rows (ci, kh, kw) in one image's padded input (in-place geometries).
std::vector<int64_t> row_offsets(const Geometry& g) {
  std::vector<int64_t> off(g.kdim());
  for (int64_t ci = 0; ci < g.C; ++ci)
    for (int64_t kh = 0; kh < g.KH; ++kh)
      for (int64_t kw = 0; kw < g.KW; ++kw)
        off[(ci * g.KH + kh) * g.KW + kw] = ci * g.Hp * g.Wp + kh * g.dh * g.Wp + kw * g.dw;
  return off;
}

// dst[x] = src[x * step] for x < n; stride 2 (a downsampling convolution's) as its own loop, which
// GCC vectorises.
template <typename T>
void strided_copy(const T* __restrict src, int64_t step, int64_t n, T* __restrict dst) {
  if (step == 1) {
    std::memcpy(dst, src, sizeof(T) * n);
  } else if (step == 2) {
    for (int64_t x = 0; x < n; ++x) dst[x] = src[2 * x];
  } else {
    for (int64_t x = 0; x < n; ++x) dst[x] = src[x * step];
  }
}

// A run of a panel row: n columns of one output row, read from offset src of the padded plane
// (every sw-th float) into the row from column dst.
struct PanelRun {
  int64_t src, dst, n;
};

// Panel rows of the input channels marked in `used` for columns [c0, c1) (zero past c1).
template <typename T>
void build_panel(const Geometry& g, const T* src, const std::vector<uint8_t>& used, int64_t c0, int64_t c1,
                 T* panel, int64_t ld) {
  const int64_t kk = g.KH * g.KW, n = c1 - c0;
  if (g.linear) {
    transpose(src + c0 * g.C, g.C, n, g.C, panel, ld, false);
  } else {
    PanelRun* runs = scratch<PanelRun>(kColumns, ld);  // at most one a column
    for (int64_t col = c0; col < c1;) {
      const int64_t img = col / g.qn, q0 = col % g.qn, len = std::min(c1 - col, g.qn - q0), i0 = col - c0;
      // The piece's output rows, found once: a division per copied element took most of a strided
      // convolution's time.
      int64_t nruns = 0;
      for (int64_t t = 0, oy = q0 / g.Wo, ox = q0 % g.Wo; t < len; ox = 0, ++oy) {
        const int64_t n = std::min(g.Wo - ox, len - t);
        runs[nruns++] = {oy * g.sh * g.Wp + ox * g.sw, i0 + t, n};
        t += n;
      }
      for (int64_t ci = 0; ci < g.C; ++ci) {
        if (!used[ci]) continue;
        const T* plane = src + (img * g.C + ci) * g.Hp * g.Wp;
        for (int64_t kh = 0; kh < g.KH; ++kh)
          for (int64_t kw = 0; kw < g.KW; ++kw) {
            const T* tap = plane + kh * g.dh * g.Wp + kw * g.dw;
            T* row = panel + (ci * kk + kh * g.KW + kw) * ld;
            for (int64_t r = 0; r < nruns; ++r) strided_copy(tap + runs[r].src, g.sw, runs[r].n, row + runs[r].dst);
          }
      }
      col += len;
    }
  }
  if (n < ld)
    for (int64_t ci = 0; ci < g.C; ++ci)
      if (g.linear || used[ci])
        for (int64_t k = ci * kk; k < (ci + 1) * kk; ++k) std::fill(panel + k * ld + n, panel + (k + 1) * ld, T(0));
}

// The panel rows of column tile [c0, c1): read in place from src for in-place geometries (a tile
// lies in one image there: a table of row pointers), else copied into the thread's panel (rows ld
// apart, so the kernels compute addresses instead of loading them).
template <typename T>
struct PanelRows {
  const T* panel = nullptr;
  const T* const* rows = nullptr;
};

template <typename T>
PanelRows<T> panel_rows(const Geometry& g, const T* src, const std::vector<uint8_t>& used,
                        const std::vector<int64_t>& off, int64_t c0, int64_t c1, int64_t ld) {
  const int64_t kdim = g.kdim();
  if (g.in_place()) {
    const T** rows = scratch<const T*>(kRowPtrs, kdim);
    const T* base = src + (c0 / g.qn) * g.C * g.Hp * g.Wp + c0 % g.qn;
    for (int64_t k = 0; k < kdim; ++k) rows[k] = base + off[k];
    return {nullptr, rows};
  }
  T* panel = scratch<T>(kPanel, kdim * ld);
  build_panel(g, src, used, c0, c1, panel, ld);
  return {panel, nullptr};
}

// Calls f(img, q0, len, i0) for the pieces of columns [c0, c1) that lie in one image.
template <typename F>
void for_pieces(const Geometry& g, int64_t c0, int64_t c1, F&& f) {
  for (int64_t col = c0; col < c1;) {
    const int64_t img = col / g.qn, q0 = col % g.qn, len = std::min(c1 - col, g.qn - q0);
    f(img, q0, len, col - c0);
    col += len;
  }
}

// Calls f(oy, ox, offset, count) for the valid output pixels of columns [q0, q0 + len) of one image.
template <typename F>
void for_rows(const Geometry& g, int64_t q0, int64_t len, F&& f) {
  for (int64_t q = q0; q < q0 + len;) {
    const int64_t oy = q / g.rp, ox = q % g.rp, run = std::min(g.rp - ox, q0 + len - q);
    if (ox < g.Wo) f(oy, ox, q - q0, std::min(run, g.Wo - ox));
    q += run;
  }
}

// Output tile rows [r0, r1), columns [c0, c1) into out.
template <typename T>
void scatter_tile(const Geometry& g, const T* tile, int64_t ld, int64_t r0, int64_t r1, int64_t c0, int64_t c1,
                  T* out) {
  if (g.linear) {
    transpose(tile + r0 * ld, ld, r1 - r0, c1 - c0, out + c0 * g.R + r0, g.R, true);
    return;
  }
  for_pieces(g, c0, c1, [&](int64_t img, int64_t q0, int64_t len, int64_t i0) {
    for (int64_t r = r0; r < r1; ++r) {
      const T* s = tile + r * ld + i0;
      T* d = out + (img * g.R + r) * g.Ho * g.Wo;
      for_rows(g, q0, len, [&](int64_t oy, int64_t ox, int64_t off, int64_t cnt) {
        std::memcpy(d + oy * g.Wo + ox, s + off, sizeof(T) * cnt);
      });
    }
  });
}

// grad_output rows [r0, r1), columns [c0, c1) into a tile (zero at discarded and tail columns).
template <typename T>
void gather_tile(const Geometry& g, const T* dy, int64_t r0, int64_t r1, int64_t c0, int64_t c1, T* tile,
                 int64_t ld) {
  if (g.linear) {
    transpose(dy + c0 * g.R + r0, g.R, c1 - c0, r1 - r0, tile + r0 * ld, ld, false);
    for (int64_t r = r0; r < r1; ++r) std::fill(tile + r * ld + (c1 - c0), tile + (r + 1) * ld, T(0));
    return;
  }
  for (int64_t r = r0; r < r1; ++r) std::fill(tile + r * ld, tile + (r + 1) * ld, T(0));
  for_pieces(g, c0, c1, [&](int64_t img, int64_t q0, int64_t len, int64_t i0) {
    for (int64_t r = r0; r < r1; ++r) {
      T* d = tile + r * ld + i0;
      const T* s = dy + (img * g.R + r) * g.Ho * g.Wo;
      for_rows(g, q0, len, [&](int64_t oy, int64_t ox, int64_t off, int64_t cnt) {
        std::memcpy(d + off, s + oy * g.Wo + ox, sizeof(T) * cnt);
      });
    }
  });
}

// Tasks: column tiles (within one image for in-place geometries), times block-row chunks when the
// tiles alone cannot keep the threads busy. With `interleaved`, successive tiles lie in different
// images: threads pull tasks in order, and two threads on neighbouring tiles of one image write the
// output rows their common edge cuts through (a 16x16 map's row is one cache line), so each of those
// lines would bounce between the cores. The grad-weight writes no shared output and keeps the
// image-major order, whose tiles reuse the image's input in L2.
struct Split {
  int64_t tiles, chunks, rb, ld, per_image, columns, qn;
  bool interleaved;
  int64_t rows(int64_t chunk, int64_t& r1) const {
    r1 = rb * (chunk + 1) / chunks;
    return rb * chunk / chunks;
  }
  // Columns [c0, c1) of tile t.
  int64_t cols(int64_t t, int64_t& c1) const {
    if (per_image == 0) {
      c1 = std::min(columns, (t + 1) * ld);
      return t * ld;
    }
    const int64_t images = tiles / per_image;
    const int64_t img = interleaved ? t % images : t / per_image, k = interleaved ? t / images : t % per_image;
    const int64_t c0 = img * qn + k * ld;
    c1 = std::min(img * qn + qn, c0 + ld);
    return c0;
  }
};

// Block-row chunks per tile that give the threads at least two tasks each.
int64_t chunks_for(int64_t tiles, int64_t rb) {
  const int64_t threads = at::get_num_threads();
  if (tiles == 0 || tiles >= 2 * threads) return 1;  // no tiles: an empty batch (nothing to split)
  return std::clamp<int64_t>((2 * threads + tiles - 1) / tiles, 1, std::max<int64_t>(rb, 1));
}

Split split(const Geometry& g, int64_t ld, int64_t rb, bool interleaved) {
  const int64_t per_image = g.in_place() ? (g.qn + ld - 1) / ld : 0;
  const int64_t tiles = per_image ? g.N * per_image : (g.columns() + ld - 1) / ld;
  return {tiles, chunks_for(tiles, rb), rb, ld, per_image, g.columns(), g.qn, interleaved};
}

// SpMM widths per tile: up to 4, keeping the panel (kdim x width) within 2 MB.
int64_t panel_widen(int64_t kdim, int64_t pt, size_t bytes) {
  return std::clamp<int64_t>((int64_t(2) << 20) / std::max<int64_t>(1, kdim * pt * int64_t(bytes)), 1, 4);
}

// out = S . im2col(src) (+ bias), S in BSR (ptr, idx over block rows of br, block columns of bck
// panel rows = bci input channels), vals packed per block.
template <typename T>
void forward_engine(const Geometry& g, const T* src, const T* vals, const int32_t* ptr, const int32_t* idx,
                    int br, int bci, const T* bias, T* out) {
  const Kernels<T> kern = pick_kernels<T>();
  const int64_t kk = g.KH * g.KW, bck = bci * kk;
  const int64_t rb = g.R / br;
  const int64_t ld = kern.pt;  // wider tiles measured slower (the output tile leaves L1)
  const std::vector<uint8_t> used = used_channels(g, idx, ptr[rb], bci);
  const std::vector<int64_t> off = g.in_place() ? row_offsets(g) : std::vector<int64_t>();
  const Split s = split(g, ld, rb, /*interleaved=*/true);
  run_tasks(s.tiles * s.chunks, [&](int64_t task, int64_t) {
    int64_t c1, rb1;
    const int64_t c0 = s.cols(task / s.chunks, c1);
    const int64_t rb0 = s.rows(task % s.chunks, rb1);
    if (rb0 == rb1) return;
    T* tile = scratch<T>(kTile, g.R * ld);
    const PanelRows<T> p = ptr[rb1] > ptr[rb0] ? panel_rows(g, src, used, off, c0, c1, ld) : PanelRows<T>{};
    // Runs of block rows through the tile: all of them for linear (one transpose out: per block row,
    // small blocks would make it many partial ones), for conv each run of consecutive block rows
    // with kept blocks (the others are filled whole below).
    for (int64_t b = rb0; b < rb1;) {
      int64_t e = b + 1;
      if (!g.linear) {
        if (ptr[b + 1] == ptr[b]) {
          b = e;
          continue;
        }
        while (e < rb1 && ptr[e + 1] > ptr[e]) ++e;
      } else {
        e = rb1;
      }
      for (int64_t r = b * br; r < e * br; ++r) std::fill(tile + r * ld, tile + (r + 1) * ld, bias ? bias[r] : T(0));
      for (int64_t k = b; k < e; ++k)
        kern.spmm(vals, idx, ptr[k], ptr[k + 1], br, int(bck), p.panel, p.rows, tile + k * br * ld, ld, c1 - c0);
      scatter_tile(g, tile, ld, b * br, e * br, c0, c1, out);
      b = e;
    }
  });
  if (g.linear) return;
  // The output planes of block rows without kept blocks: the bias (or zero), written once instead of
  // copied row piece by row piece out of every tile (at 95% sparsity most block rows are empty).
  const int64_t plane = g.Ho * g.Wo;
  at::parallel_for(0, g.N * g.R, 16, [&](int64_t p0, int64_t p1) {
    for (int64_t p = p0; p < p1; ++p) {
      const int64_t r = p % g.R, b = r / br;
      if (ptr[b + 1] == ptr[b]) std::fill(out + p * plane, out + (p + 1) * plane, bias ? bias[r] : T(0));
    }
  });
}

// Columns a grad-weight task takes when it reads its panel rows in place: of one image, up to
// kGradWeightColumns (a 32x32 map's whole padded grid); or of several small images, up to
// kGroupColumns together, whose sums it adds before their horizontal sums (those of a 4x4 map's 32
// columns took longer than its FMAs). Fewer, larger groups leave too few tasks for the threads, so
// their block rows are split into chunks, each task re-reading the group's input: at a 16x16 map
// that cost more than the sums saved, hence the smaller budget for groups.
constexpr int64_t kGradWeightColumns = 2048;
constexpr int64_t kGroupColumns = 512;

// acc[j * br * bck + r * bck + c] = sum over columns of dy rows . panel rows, at the kept blocks.
// With bias (R outputs, conv only), also dy summed over images and pixels: each task gathers every
// dy row of its columns and block rows into its tile (rows of block rows without kept blocks too)
// and sums them there, so dy is not read again for the bias gradient.
template <typename T>
void grad_weight_engine(const Geometry& g, const T* src, const T* dy, const int32_t* ptr, const int32_t* idx,
                        int br, int bci, T* acc, T* bias) {
  const Kernels<T> kern = pick_kernels<T>();
  const int64_t kk = g.KH * g.KW, bck = bci * kk, kdim = g.kdim(), rb = g.R / br, nnzb = ptr[rb];
  // Wide tiles: the horizontal sums, the panel rows' set-up and the pass over the kept blocks are
  // paid once per task. In-place tiles lie in one image (up to kGradWeightColumns of it, split
  // evenly) or hold whole images, `group` of them (the batch split evenly between the groups).
  int64_t ld = kern.pt * panel_widen(kdim, kern.pt, sizeof(T)), group = 1;
  if (g.in_place()) {
    const int64_t per_image = (g.qn + kGradWeightColumns - 1) / kGradWeightColumns;
    ld = ((g.qn + per_image - 1) / per_image + kern.pt - 1) / kern.pt * kern.pt;
    if (per_image == 1 && g.N > 0) {
      const int64_t most = std::max<int64_t>(kGroupColumns / ld, 1);
      const int64_t groups = (g.N + most - 1) / most;
      group = (g.N + groups - 1) / groups;
    }
  }
  const std::vector<uint8_t> used = used_channels(g, idx, nnzb, bci);
  const std::vector<int64_t> off = g.in_place() ? row_offsets(g) : std::vector<int64_t>();
  Split s = split(g, ld, rb, /*interleaved=*/false);
  if (group > 1) {  // one tile per group; its chunks hold about equal numbers of kept blocks
    s.tiles = (g.N + group - 1) / group;
    s.chunks = chunks_for(s.tiles, rb);
  }
  // Block rows [r0, r1) of chunk c: those whose kept blocks start in its share of the nnzb.
  auto chunk_rows = [&](int64_t c, int64_t& r1) -> int64_t {
    if (group == 1) return s.rows(c, r1);
    auto first_at = [&](int64_t k) { return int64_t(std::lower_bound(ptr, ptr + rb, int32_t(k)) - ptr); };
    r1 = c + 1 == s.chunks ? rb : first_at(nnzb * (c + 1) / s.chunks);
    return first_at(nnzb * c / s.chunks);
  };
  // Each task slot (cpu/tasks.h: the same sums on every call) sums into its own copy of the block
  // gradients, the first into acc.
  const int64_t per = nnzb * br * bck, plane = g.R * ld;
  const int64_t slots = task_slots(s.tiles * s.chunks);
  T* partial = scratch<T>(kPartial, (slots - 1) * per);
  std::fill(partial, partial + (slots - 1) * per, T(0));
  std::fill(acc, acc + per, T(0));
  std::vector<T> bias_parts(bias ? slots * g.R : 0, T(0));
  run_task_slots(s.tiles * s.chunks, slots, [&](int64_t task, int64_t, int64_t slot) {
    int64_t c0, c1, rb1;
    block_detail::Images images;
    if (group > 1) {  // images [t * group, + count), each whole: one column tile per image
      const int64_t t = task / s.chunks;
      c0 = t * group * g.qn, c1 = c0 + g.qn;
      images = {std::min(group, g.N - t * group), plane, g.C * g.Hp * g.Wp};
    } else {
      c0 = s.cols(task / s.chunks, c1);
    }
    const int64_t rb0 = chunk_rows(task % s.chunks, rb1);
    const bool kept = ptr[rb1] > ptr[rb0];
    if (!kept && !bias) return;
    T* tile = scratch<T>(kTile, images.count * plane);
    if (g.linear) {  // one transpose: per block row, small blocks would make it many partial ones
      gather_tile(g, dy, rb0 * br, rb1 * br, c0, c1, tile, ld);
    } else {
      for (int64_t m = 0; m < images.count; ++m)
        for (int64_t b = rb0; b < rb1; ++b)  // only the rows some kept block reads, but all for the bias
          if (ptr[b + 1] > ptr[b] || bias) {
            T* rows = tile + m * plane;
            gather_tile(g, dy, b * br, (b + 1) * br, c0 + m * g.qn, c1 + m * g.qn, rows, ld);
            if (bias)
              for (int64_t r = b * br; r < (b + 1) * br; ++r)
                bias_parts[slot * g.R + r] += norm_spans::sum(rows + r * ld, ld);
          }
    }
    if (!kept) return;
    const PanelRows<T> p = panel_rows(g, src, used, off, c0, c1, ld);
    // The dot products run over whole vectors: the tile is zero past c1 - c0.
    const int64_t n = std::min(ld, (c1 - c0 + kern.pt / 4 - 1) / (kern.pt / 4) * (kern.pt / 4));
    T* a = slot == 0 ? acc : partial + (slot - 1) * per;
    for (int64_t b = rb0; b < rb1; ++b)
      kern.sddmm(tile + b * br * ld, idx, ptr[b], ptr[b + 1], br, int(bck), p.panel, p.rows, ld, n, images, a);
  });
  for (int64_t t = 1; t < slots; ++t)
    for (int64_t e = 0; e < per; ++e) acc[e] += partial[(t - 1) * per + e];
  if (bias)
    for (int64_t r = 0; r < g.R; ++r) {
      T sum = 0;
      for (int64_t t = 0; t < slots; ++t) sum += bias_parts[t * g.R + r];
      bias[r] = sum;
    }
}

// ---- the linear layer in row-major layout (kernels.h's rspmm / rsddmm) ------------------------------
// The activations are read where they lie, so the forward and grad-input skip the transposes of the
// input and output (as costly as the kernel at 95% sparsity) and the grad-weight those of the input
// and grad_output, and its horizontal sums.

// out (N, nb * ow) = a (N, lda) . block-sparse S, S's block row b holding blocks j in [ptr[b], ptr[b+1])
// at block columns idx[j] of kb rows, packed [j][k][i] (the (kb x ow) block as right-hand operand).
// Each task transposes its rows of a into a k-major strip first (the kernel's layout, kernels.h).
template <typename T>
void rowwise_spmm(const Kernels<T>& kern, const T* a, int64_t N, int64_t lda, const T* packed, const int32_t* ptr,
                  const int32_t* idx, int64_t nb, int kb, int ow, const T* bias, T* out) {
  constexpr int64_t kRowsPerTask = 48;  // the strip stays in L2 across the block rows
  const int64_t tiles = (N + kRowsPerTask - 1) / kRowsPerTask, threads = at::get_num_threads();
  const int64_t chunks =
      tiles > 0 && tiles < 2 * threads ? std::clamp<int64_t>((2 * threads + tiles - 1) / tiles, 1, nb) : 1;
  const int64_t ldo = nb * ow;
  // An output larger than a core's L2 leaves it before the next layer reads it anyway; streamed, it
  // is not read in first (a plain store's extra pass over memory, which bounds the 95% sparse
  // forward at two threads). Smaller ones stay in cache for their reader.
  const bool stream = N * ldo * int64_t(sizeof(T)) >= (int64_t(2) << 20);
  run_tasks(tiles * chunks, [&](int64_t task, int64_t) {
    const int64_t n0 = (task / chunks) * kRowsPerTask, rows = std::min(N - n0, kRowsPerTask);
    const int64_t c = task % chunks, b0 = nb * c / chunks, b1 = nb * (c + 1) / chunks;
    T* strip = scratch<T>(kPanel, lda * kRowsPerTask);  // read only by kept blocks
    if (ptr[b1] > ptr[b0]) transpose(a + n0 * lda, lda, rows, lda, strip, kRowsPerTask, false);
    for (int64_t b = b0; b < b1; ++b)
      kern.rspmm(strip, kRowsPerTask, rows, packed, idx, ptr[b], ptr[b + 1], kb, ow, bias ? bias + b * ow : nullptr,
                 out + n0 * ldo + b * ow, ldo, stream);
    _mm_sfence();  // the kernels' streamed output is complete before the task counts as done
  });
}

// acc[j * br * bc + r * bc + c] = sum_n dy[n, b * br + r] * x[n, idx[j] * bc + c] at the kept blocks.
template <typename T>
void rowwise_sddmm(const Kernels<T>& kern, const T* dy, const T* x, int64_t N, int64_t R, int64_t C,
                   const int32_t* ptr, const int32_t* idx, int64_t rb, int br, int bc, T* acc) {
  // Tasks are passes over kRowsPerPass batch rows, every kept block inside: the pass's rows of x are
  // copied whole (one memcpy a row) into thread scratch with rows padded by one cache line, and stay
  // in L2 while every block reads them. Read in place, rows a power of two apart share one L1 set and
  // every row tile of a block re-reads them from L2 (measured ~10% slower at 75-90%). The copies this
  // replaces (x regrouped by block column, dy strips per block row: 128-byte memcpys) took as long as
  // the kernel at 95% sparsity (bench/NOTES.md, fourth pass). Each task slot (cpu/tasks.h) sums into
  // its own copy of the blocks' gradients, added up in order at the end.
  constexpr int64_t kRowsPerPass = 128, kPad = 64 / sizeof(T);
  const int64_t per = int64_t(br) * bc, total = ptr[rb] * per;
  // dy's rows are broadcast (one cache line per batch row and row tile), x's read as vectors by every
  // row tile: x is always copied, dy only when a block row holds several kept blocks that re-read it
  // (a copy pays for itself only when it is read more than a few times).
  const bool copy_dy = ptr[rb] > 3 * rb;
  const int64_t ldx = C + kPad, passes = (N + kRowsPerPass - 1) / kRowsPerPass;
  const int64_t slots = task_slots(passes);
  T* partial = scratch<T>(kPartial, (slots - 1) * total);
  std::fill(partial, partial + (slots - 1) * total, T(0));
  std::fill(acc, acc + total, T(0));
  run_task_slots(passes, slots, [&](int64_t pass, int64_t, int64_t slot) {
    const int64_t n0 = pass * kRowsPerPass, rows = std::min(N - n0, kRowsPerPass);
    T* xp = scratch<T>(kPanel, kRowsPerPass * ldx);
    for (int64_t n = 0; n < rows; ++n) std::memcpy(xp + n * ldx, x + (n0 + n) * C, sizeof(T) * C);
    const T* dsrc = dy + n0 * R;
    int64_t ldd = R;
    if (copy_dy) {
      T* dp = scratch<T>(kTile, kRowsPerPass * (R + kPad));
      ldd = R + kPad;
      for (int64_t n = 0; n < rows; ++n) std::memcpy(dp + n * ldd, dy + (n0 + n) * R, sizeof(T) * R);
      dsrc = dp;
    }
    T* a = slot == 0 ? acc : partial + (slot - 1) * total;
    for (int64_t b = 0; b < rb; ++b)
      for (int64_t j = ptr[b]; j < ptr[b + 1]; ++j)
        kern.rsddmm(dsrc + b * br, ldd, br, xp + int64_t(idx[j]) * bc, ldx, rows, bc, a + j * per);
  });
  for (int64_t t = 1; t < slots; ++t)
    for (int64_t e = 0; e < total; ++e) acc[e] += partial[(t - 1) * total + e];
}

// ---- weights packed per call -----------------------------------------------------------------------

// vals[j][c][r] = W[(b * br + r), idx[j] * bc + c]: the kept blocks transposed (the right-hand
// operand of the row-major forward).
template <typename T>
at::Tensor pack_forward_rowwise(const at::Tensor& w, const int32_t* ptr, const int32_t* idx, int64_t rb, int64_t br,
                                int64_t bc) {
  const int64_t K = w.size(1);
  at::Tensor vals = at::empty({ptr[rb] * br * bc}, w.options());
  const T* W = w.const_data_ptr<T>();
  T* v = vals.mutable_data_ptr<T>();
  at::parallel_for(0, rb, 1, [&](int64_t b0, int64_t b1) {
    for (int64_t b = b0; b < b1; ++b)
      for (int64_t j = ptr[b]; j < ptr[b + 1]; ++j)
        transpose(W + b * br * K + int64_t(idx[j]) * bc, K, br, bc, v + j * bc * br, br, false);
  });
  return vals;
}

// vals[j][r][c] = W2d[(b * br + r), idx[j] * bck + c] for the kept blocks (forward order).
template <typename T>
at::Tensor pack_forward(const at::Tensor& w, const int32_t* ptr, const int32_t* idx, int64_t rb, int64_t br,
                        int64_t bck) {
  const int64_t kdim = w.numel() / w.size(0);
  at::Tensor vals = at::empty({ptr[rb] * br * bck}, w.options());
  const T* W = w.const_data_ptr<T>();
  T* v = vals.mutable_data_ptr<T>();
  at::parallel_for(0, rb, 1, [&](int64_t b0, int64_t b1) {
    for (int64_t b = b0; b < b1; ++b)
      for (int64_t j = ptr[b]; j < ptr[b + 1]; ++j)
        for (int64_t r = 0; r < br; ++r)
          std::memcpy(v + (j * br + r) * bck, W + (b * br + r) * kdim + idx[j] * bck, sizeof(T) * bck);
  });
  return vals;
}

// vals[j][r][c] = W[ridx[j] * bo + r, b * bi + c] in the transposed pattern's order (cptr over
// block columns b): the right-hand operand of the row-major grad-input.
template <typename T>
at::Tensor pack_columns_rowwise(const at::Tensor& w, const int32_t* cptr, const int32_t* ridx, int64_t cb, int64_t bo,
                                int64_t bi) {
  const int64_t K = w.size(1);
  at::Tensor vals = at::empty({cptr[cb] * bo * bi}, w.options());
  const T* W = w.const_data_ptr<T>();
  T* v = vals.mutable_data_ptr<T>();
  at::parallel_for(0, cb, 1, [&](int64_t b0, int64_t b1) {
    for (int64_t b = b0; b < b1; ++b)
      for (int64_t j = cptr[b]; j < cptr[b + 1]; ++j)
        for (int64_t r = 0; r < bo; ++r)
          std::memcpy(v + (j * bo + r) * bi, W + (int64_t(ridx[j]) * bo + r) * K + b * bi, sizeof(T) * bi);
  });
  return vals;
}

// The transposed, tap-flipped weight W'[ci, co, kh, kw] = W[co, ci, KH-1-kh, KW-1-kw] packed in the
// order of the transposed pattern (cptr over block columns of bi, ridx the block rows of bo).
template <typename T>
at::Tensor pack_transposed(const at::Tensor& w, const int32_t* cptr, const int32_t* ridx, int64_t cb, int64_t bo,
                           int64_t bi, int64_t KH, int64_t KW) {
  const int64_t ci_total = w.size(1), kk = KH * KW, bck = bo * kk;
  at::Tensor vals = at::empty({cptr[cb] * bi * bck}, w.options());
  const T* W = w.const_data_ptr<T>();
  T* v = vals.mutable_data_ptr<T>();
  at::parallel_for(0, cb, 1, [&](int64_t b0, int64_t b1) {
    for (int64_t b = b0; b < b1; ++b)
      for (int64_t j = cptr[b]; j < cptr[b + 1]; ++j)
        for (int64_t c = 0; c < bi; ++c)
          for (int64_t r = 0; r < bo; ++r)
            for (int64_t t = 0; t < kk; ++t)
              v[(j * bi + c) * bck + r * kk + t] =
                  W[((int64_t(ridx[j]) * bo + r) * ci_total + b * bi + c) * kk + (kk - 1 - t)];
  });
  return vals;
}

// dW (dense-shaped, zero off the pattern) from the per-block sums, each row zeroed and filled while
// it is in cache (at::zeros first would write the whole dW to memory twice).
template <typename T>
at::Tensor unpack_grad(const T* a, at::IntArrayRef shape, const int32_t* ptr, const int32_t* idx,
                       int64_t rb, int64_t br, int64_t bck, const at::TensorOptions& opt) {
  at::Tensor dw = at::empty(shape, opt);
  const int64_t kdim = dw.numel() / shape[0];
  T* d = dw.mutable_data_ptr<T>();
  at::parallel_for(0, rb, 1, [&](int64_t b0, int64_t b1) {
    for (int64_t b = b0; b < b1; ++b)
      for (int64_t r = 0; r < br; ++r) {
        T* row = d + (b * br + r) * kdim;
        std::fill(row, row + kdim, T(0));
        for (int64_t j = ptr[b]; j < ptr[b + 1]; ++j)
          std::memcpy(row + idx[j] * bck, a + (j * br + r) * bck, sizeof(T) * bck);
      }
  });
  return dw;
}

// ---- the ops -------------------------------------------------------------------------------------

Geometry linear_geometry(int64_t n, int64_t c, int64_t r) {
  Geometry g{true, n, c, 1, 1, r, 1, 1, 1, 1, 0, 0, 1, 1, 1, 1};
  g.derive();
  return g;
}

Geometry conv_geometry(const at::Tensor& x, int64_t r, int64_t kh, int64_t kw, at::IntArrayRef stride,
                       at::IntArrayRef padding, at::IntArrayRef dilation, int64_t ho, int64_t wo) {
  Geometry g{false, x.size(0), x.size(1), x.size(2), x.size(3), r, kh, kw, stride[0], stride[1], padding[0],
             padding[1], dilation[0], dilation[1], ho, wo};
  g.derive();
  return g;
}

int64_t out_size(int64_t size, int64_t k, int64_t s, int64_t p, int64_t d) {
  return (size + 2 * p - d * (k - 1) - 1) / s + 1;
}

template <typename T>
at::Tensor forward_typed(const Geometry& g, const at::Tensor& x, const at::Tensor& w,
                         const std::optional<at::Tensor>& bias, const int32_t* ptr, const int32_t* idx, int64_t bo,
                         int64_t bi) {
  const int64_t rb = g.R / bo, kk = g.KH * g.KW;
  const Kernels<T> kern = pick_kernels<T>();
  if (g.linear && kern.rowwise(bo)) {
    at::Tensor vals = pack_forward_rowwise<T>(w, ptr, idx, rb, bo, bi);
    at::Tensor out = at::empty({g.N, g.R}, x.options());
    at::Tensor b = bias ? bias->contiguous() : at::Tensor();
    rowwise_spmm<T>(kern, x.const_data_ptr<T>(), g.N, g.C, vals.const_data_ptr<T>(), ptr, idx, rb, int(bi), int(bo),
                    bias ? b.const_data_ptr<T>() : nullptr, out.mutable_data_ptr<T>());
    return out;
  }
  at::Tensor vals = pack_forward<T>(w, ptr, idx, rb, bo, bi * kk);
  at::Tensor out = g.linear ? at::empty({g.N, g.R}, x.options()) : at::empty({g.N, g.R, g.Ho, g.Wo}, x.options());
  const at::Tensor src = engine_source(x, g, kern, idx, ptr[rb], bi);
  at::Tensor b = bias ? bias->contiguous() : at::Tensor();
  forward_engine<T>(g, src.const_data_ptr<T>(), vals.const_data_ptr<T>(), ptr, idx, int(bo), int(bi),
                    bias ? b.const_data_ptr<T>() : nullptr, out.mutable_data_ptr<T>());
  return out;
}

// dX: the forward engine on grad_output (spread onto the stride grid) with the transposed pattern.
template <typename T>
at::Tensor grad_input_typed(const Geometry& fwd, const at::Tensor& dy, const at::Tensor& w, const int32_t* cptr,
                            const int32_t* ridx, int64_t bo, int64_t bi) {
  const int64_t cb = fwd.C / bi;
  const Kernels<T> kern = pick_kernels<T>();
  if (fwd.linear && kern.rowwise(bi)) {
    at::Tensor vals = pack_columns_rowwise<T>(w, cptr, ridx, cb, bo, bi);
    at::Tensor out = at::empty({fwd.N, fwd.C}, dy.options());
    rowwise_spmm<T>(kern, dy.const_data_ptr<T>(), fwd.N, fwd.R, vals.const_data_ptr<T>(), cptr, ridx, cb, int(bo),
                    int(bi), nullptr, out.mutable_data_ptr<T>());
    return out;
  }
  at::Tensor vals = pack_transposed<T>(w, cptr, ridx, cb, bo, bi, fwd.KH, fwd.KW);
  if (fwd.linear) {
    Geometry g = linear_geometry(fwd.N, fwd.R, fwd.C);
    at::Tensor out = at::empty({fwd.N, fwd.C}, dy.options());
    forward_engine<T>(g, dy.const_data_ptr<T>(), vals.const_data_ptr<T>(), cptr, ridx, int(bi), int(bo), nullptr,
                      out.mutable_data_ptr<T>());
    return out;
  }
  at::Tensor spread = dy;
  if (fwd.sh != 1 || fwd.sw != 1) {
    spread = at::zeros({fwd.N, fwd.R, (fwd.Ho - 1) * fwd.sh + 1, (fwd.Wo - 1) * fwd.sw + 1}, dy.options());
    spread.slice(2, 0, c10::nullopt, fwd.sh).slice(3, 0, c10::nullopt, fwd.sw).copy_(dy);
  }
  Geometry g{false, fwd.N, fwd.R, spread.size(2), spread.size(3), fwd.C, fwd.KH, fwd.KW, 1, 1,
             fwd.dh * (fwd.KH - 1) - fwd.ph, fwd.dw * (fwd.KW - 1) - fwd.pw, fwd.dh, fwd.dw, fwd.H, fwd.W};
  g.derive();
  const at::Tensor src = engine_source(spread, g, kern, ridx, cptr[cb], bo);
  at::Tensor out = at::empty({fwd.N, fwd.C, fwd.H, fwd.W}, dy.options());
  forward_engine<T>(g, src.const_data_ptr<T>(), vals.const_data_ptr<T>(), cptr, ridx, int(bi), int(bo), nullptr,
                    out.mutable_data_ptr<T>());
  return out;
}

template <typename T>
at::Tensor grad_weight_typed(const Geometry& g, const at::Tensor& x, const at::Tensor& dy, const at::Tensor& w,
                             const int32_t* ptr, const int32_t* idx, int64_t bo, int64_t bi, T* bias = nullptr) {
  const int64_t rb = g.R / bo, bck = bi * g.KH * g.KW;
  T* acc = scratch<T>(kSums, ptr[rb] * bo * bck);
  const Kernels<T> kern = pick_kernels<T>();
  if (g.linear && kern.rowwise(bi)) {
    rowwise_sddmm<T>(kern, dy.const_data_ptr<T>(), x.const_data_ptr<T>(), g.N, g.R, g.C, ptr, idx, rb, int(bo),
                     int(bi), acc);
    return unpack_grad<T>(acc, w.sizes(), ptr, idx, rb, bo, bck, w.options());
  }
  const at::Tensor src = engine_source(x, g, kern, idx, ptr[rb], bi);
  grad_weight_engine<T>(g, src.const_data_ptr<T>(), dy.const_data_ptr<T>(), ptr, idx, int(bo), int(bi), acc, bias);
  return unpack_grad<T>(acc, w.sizes(), ptr, idx, rb, bo, bck, w.options());
}

template <typename F>
auto by_dtype(const at::Tensor& t, F&& f) {
  if (t.scalar_type() == at::kFloat) return f(float{});
  return f(double{});
}

}  // namespace

at::Tensor bsr_linear(const at::Tensor& input, const at::Tensor& weight, const std::optional<at::Tensor>& bias,
                      const at::Tensor& brow_ptr, const at::Tensor& bcol_idx, int64_t bo, int64_t bi) {
  const at::Tensor x = input.contiguous(), w = weight.contiguous();
  const Geometry g = linear_geometry(x.size(0), x.size(1), w.size(0));
  return by_dtype(x, [&](auto t) {
    using T = decltype(t);
    return forward_typed<T>(g, x, w, bias, brow_ptr.const_data_ptr<int32_t>(), bcol_idx.const_data_ptr<int32_t>(),
                            bo, bi);
  });
}

std::tuple<at::Tensor, at::Tensor> bsr_linear_backward(const at::Tensor& grad_output, const at::Tensor& input,
                                                       const at::Tensor& weight, const at::Tensor& brow_ptr,
                                                       const at::Tensor& bcol_idx, const at::Tensor& bcol_ptr,
                                                       const at::Tensor& brow_idx, int64_t bo, int64_t bi,
                                                       bool input_grad, bool weight_grad) {
  const at::Tensor dy = grad_output.contiguous(), x = input.contiguous(), w = weight.contiguous();
  const Geometry g = linear_geometry(x.size(0), x.size(1), w.size(0));
  return by_dtype(x, [&](auto t) {
    using T = decltype(t);
    at::Tensor gi = input_grad ? grad_input_typed<T>(g, dy, w, bcol_ptr.const_data_ptr<int32_t>(),
                                                     brow_idx.const_data_ptr<int32_t>(), bo, bi)
                               : at::empty({0, 0}, x.options());
    at::Tensor gw = weight_grad ? grad_weight_typed<T>(g, x, dy, w, brow_ptr.const_data_ptr<int32_t>(),
                                                       bcol_idx.const_data_ptr<int32_t>(), bo, bi)
                                : at::empty({0, 0}, x.options());
    return std::make_tuple(gi, gw);
  });
}

at::Tensor bsr_conv2d(const at::Tensor& input, const at::Tensor& weight, const std::optional<at::Tensor>& bias,
                      const at::Tensor& brow_ptr, const at::Tensor& bcol_idx, int64_t bo, int64_t bi,
                      at::IntArrayRef stride, at::IntArrayRef padding, at::IntArrayRef dilation) {
  const at::Tensor x = input.contiguous(), w = weight.contiguous();
  const int64_t kh = w.size(2), kw = w.size(3);
  const Geometry g = conv_geometry(x, w.size(0), kh, kw, stride, padding, dilation,
                                   out_size(x.size(2), kh, stride[0], padding[0], dilation[0]),
                                   out_size(x.size(3), kw, stride[1], padding[1], dilation[1]));
  return by_dtype(x, [&](auto t) {
    using T = decltype(t);
    return forward_typed<T>(g, x, w, bias, brow_ptr.const_data_ptr<int32_t>(), bcol_idx.const_data_ptr<int32_t>(),
                            bo, bi);
  });
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> bsr_conv2d_backward(
    const at::Tensor& grad_output, const at::Tensor& input, const at::Tensor& weight, const at::Tensor& brow_ptr,
    const at::Tensor& bcol_idx, const at::Tensor& bcol_ptr, const at::Tensor& brow_idx, int64_t bo, int64_t bi,
    at::IntArrayRef stride, at::IntArrayRef padding, at::IntArrayRef dilation, bool input_grad, bool weight_grad,
    bool bias_grad) {
  const at::Tensor dy = grad_output.contiguous(), x = input.contiguous(), w = weight.contiguous();
  const int64_t kh = w.size(2), kw = w.size(3);
  const Geometry g = conv_geometry(x, w.size(0), kh, kw, stride, padding, dilation, dy.size(2), dy.size(3));
  return by_dtype(x, [&](auto t) {
    using T = decltype(t);
    at::Tensor gi = input_grad ? grad_input_typed<T>(g, dy, w, bcol_ptr.const_data_ptr<int32_t>(),
                                                     brow_idx.const_data_ptr<int32_t>(), bo, bi)
                               : at::empty({0, 0}, x.options());
    // The bias gradient comes from the grad-weight's pass over dy when there is one.
    at::Tensor gb = at::empty({bias_grad ? w.size(0) : 0}, x.options());
    at::Tensor gw = weight_grad ? grad_weight_typed<T>(g, x, dy, w, brow_ptr.const_data_ptr<int32_t>(),
                                                       bcol_idx.const_data_ptr<int32_t>(), bo, bi,
                                                       bias_grad ? gb.mutable_data_ptr<T>() : nullptr)
                                : at::empty({0, 0}, x.options());
    if (bias_grad && !weight_grad) gb = dy.sum({0, 2, 3});
    return std::make_tuple(gi, gw, gb);
  });
}

}  // namespace ebsparse
