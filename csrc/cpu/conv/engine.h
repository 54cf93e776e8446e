// Private to csrc/cpu/conv: the direct sparse convolution engine shared by the three conv ops.
//
// All three ops run one engine over a "virtual input" V derived from a source tensor S (N, Cs, Hs, Ws):
//   V[n, c, r, q] = S[n, c, r - pt, q - pl]  when in range, 0 otherwise,
// i.e. S zero-padded by (pt, pl) (negative = cropped).
//   forward:     S = x,  pad = padding, conv stride = stride
//   grad-input:  S = dy, conv stride = 1, flipped weight; a strided conv's grad-input runs one engine
//                per phase of dx with that phase's taps (conv.cpp), so no source is zero-upsampled
//   grad-weight: S = x as in forward; the engine walks the same tiles and forms dot products with dy.
// The engine computes O[n, o, y, x] = sum_{(c, kh, kw) kept in row o} w * V[n, c, y*sh + kh*dh, x*sw + kw*dw].
//
// Work is cut into tasks (group of G images from n0, tile of R output rows). For each block of Cb
// source channels the task builds, in a small per-thread buffer, one copy of V per kernel column kw:
//   copy[cl][kw][rr][g * Wo + x] = V[n0 + g, c0 + cl, oy0*sh + rr, x*sw + kw*dw],  x < Wo, g < G
// (zero up to Wo_r), so every load of the inner loops is an aligned full vector at a per-weight
// constant offset (((cl * KW + kw) * rows_copy + kh * dh) * Wo_r) and the row step is sh * Wo_r.
// G = 1 unless a row is narrower than half a vector: then G images sit side by side in one vector
// row (4 maps of width 4 fill a 16-lane AVX-512 vector instead of a quarter of it; the deep levels
// of a U-Net are 4x4 and 8x8), and every kernel runs unchanged on them. Cb trades L1 fit of the
// copies against the partial-sum pass each (output channel, block) pair costs (see choose_tiling).
// The "plan" lists, for each (output channel o, channel block b), the kept weights as (offset,
// value) pairs; the offsets come from CSR/CSC by a counting sort in O(nnz + Co * nb), cached per
// pattern and tiling (conv.cpp), and the values are gathered on every call.
//
// This header is included by translation units compiled for different instruction sets
// (kernels_<isa>.cpp), so it only declares plain data and functions, and constexpr / inline
// helpers that hold no vector code: nothing the linker could merge across instruction sets.
#pragma once
#include <cstdint>

namespace ebsparse::convk {

struct Plan {
  int64_t N, Cs, Hs, Ws;           // source tensor S
  int64_t s_sn, s_sc;              // S's image and channel strides in floats (its (Hs, Ws) planes are
                                   // contiguous; 0 where an expanded gradient repeats one plane)
  int64_t dy_sn, dy_sc;            // the same for dy (grad-weight only)
  int64_t Co, Ho, Wo;              // output channels and spatial size
  int64_t KH, KW, sh, sw, dh, dw;  // convolution over the virtual input V
  int64_t pt, pl;                  // V from S: padding (may be negative)
  int64_t vw;                      // floats per SIMD vector (16 AVX-512, 8 AVX2)
  int64_t G;                       // images side by side in a copy row (G * Wo <= Wo_r)
  int64_t ngroups;                 // image groups: ceil(N / G)
  int64_t Wo_r;                    // G * Wo rounded up to vw: length of a copy row
  int64_t nvec;                    // Wo_r / vw
  int64_t R;                       // output rows per task tile
  int64_t ntiles;                  // tiles per image: ceil(Ho / R)
  int64_t rows_copy;               // rows of V one tile reads: (R - 1) * sh + (KH - 1) * dh + 1
  int64_t Cb, nb;                  // source channels per block, number of blocks
  // Where the forward engine writes: engine output row y is row oy_first + oy_step * y of an output
  // tensor with Ho_out rows (0, 1 and Ho, except where a strided grad-input writes one row phase of
  // dx, conv.cpp).
  int64_t Ho_out, oy_first, oy_step;
  const int64_t* bptr;             // (Co * nb + 1): entries of (o, b) are [bptr[o*nb+b], bptr[o*nb+b+1])
  const int64_t* gptr;             // (Co * nb + 1): the same for tap groups (see kTapGroupMask); == bptr
                                   // where every entry is its own group
  const int32_t* off;              // per tap group: float offset of its first tap in the block copy,
                                   // with the group's kind in the low bits (forward, grad-input)
  const float* val;                // per entry: weight value (forward, grad-input); unused by grad-weight
};

// Tap groups (forward and grad-input with AVX-512, unit stride and dilation along the height): kept
// taps kh, kh + 1 (and kh + 2) of one (channel, kw) column read copy rows that are one row apart, so
// a group loads each of its rows once into a register and feeds every tap that reads it, instead of
// one load per FMA (any taps whose offsets are one row apart qualify: conv.cpp's group_taps). A
// group's `off` is its first tap's, its weights are consecutive in `val` (kh ascending), and its
// kind sits in the two low bits of `off` (offsets are multiples of Wo_r, itself a multiple of 8).
// Within each (o, b) the groups are sorted by kind, so the kernel's branch on it is predicted. Why:
// the single-tap loop is bound by its loads (one per FMA), not by the FMAs.
enum TapGroup : int32_t { kSingleTap = 0, kAdjacentTaps = 1, kGapTaps = 2, kTripleTaps = 3 };
constexpr int32_t kTapGroupMask = 3;
// Taps (and weights in `val`) of a group of this kind.
constexpr int taps_in(int32_t kind) { return kind == kTripleTaps ? 3 : kind == kSingleTap ? 1 : 2; }

// Whether forward / grad-input packs for plan p group taps: the kernel's row step must be the
// distance between the rows of taps kh and kh + 1; rows of at most 4 vectors give the kernels a
// compile-time row step (with a run-time one, GCC spills the row addresses of a group); and AVX2's
// 16 registers leave no room for the shared rows and three weights beside the accumulator tile.
inline bool groups_taps(const Plan& p) {
  return p.vw == 16 && p.sh == 1 && p.dh == 1 && p.KH >= 2 && p.nvec <= 4;
}

// Floats of the per-thread block-copy buffer (64-byte aligned by the caller) and of the forward
// partial-sum buffer (Co * R * Wo_r).
int64_t copy_floats(const Plan& p);

// rows[rr] for rr < rows_copy: the row of S that copy row rr of the tile starting at output row oy0
// (rows_valid rows) reads, kZeroRow where the copy row is zero (padding, or below the rows the tile
// needs). Computed once per task rather than per copy row of every channel.
constexpr int64_t kZeroRow = -1;
void source_rows(const Plan& p, int64_t oy0, int64_t rows_valid, int64_t* rows);

// cols[kw * Wo_r + x] for kw < KW, x < Wo_r: the column of S that copy column x of kernel column kw
// reads, or -1 where it is zero (padding, x >= Wo). Needed only where the copies are not plain
// shifted windows (sw != 1). Once per task, so the copies pay no division per element.
void source_cols(const Plan& p, int32_t* cols);

// Fills the copies of channel block b for images n0 .. n0 + G - 1 of the source S, copy row rr
// reading source row rows[rr] (source_rows) and copy column x of kernel column kw source column
// cols[kw * Wo_r + x] (source_cols). Scalar: the general case (strided and grouped) only.
void build_copy(const Plan& p, const float* src, int64_t n0, int64_t b, const int64_t* rows, const int32_t* cols,
                float* dst);

// Floats of the per-thread dy tiles grad-weight gathers when G > 1 (Co * R * Wo_r), else 0.
int64_t dy_tile_floats(const Plan& p);

// One task (image group, tile) of the forward engine: out (N, Co, Ho, Wo) for that tile, bias may
// be null. One task of the grad-weight engine: acc[e] += sum over the tile of dy * V at entry e's
// tap; dy_tiles: dy_tile_floats(p) of scratch; bias_acc (Co floats, or null) += dy summed over the
// tile, the bias gradient's share of the task.
#define EBS_CONV_ISA_DECLS                                                                              \
  void fwd_task(const Plan& p, const float* src, const float* bias, float* out, int64_t task,          \
                float* copy, float* partial);                                                          \
  void gw_task(const Plan& p, const float* src, const float* dy, int64_t task, float* copy, float* acc, \
               float* dy_tiles, float* bias_acc);

namespace avx512 { EBS_CONV_ISA_DECLS }
namespace avx2 { EBS_CONV_ISA_DECLS }
#undef EBS_CONV_ISA_DECLS

}  // namespace ebsparse::convk
