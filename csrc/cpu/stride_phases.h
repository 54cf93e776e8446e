// Private to csrc/cpu: the grad-input of a strided convolution as one stride-1 convolution per
// phase of the input positions (conv/conv.cpp). The block kernels (block/) keep the zero-upsampled
// gradient: their per-phase engines each copy a padded grad_output, which cost more than the zeros
// on the U-Net's 17x17 and 9x9 maps (bench/NOTES.md).
//
// The grad-input of a convolution is a convolution of grad_output, zero-upsampled by the stride,
// with the flipped kernel. Input position i = p + s * i' (phase p < s along an axis) reads only the
// taps k whose upsampled row lands on a real grad_output row, at grad_output row i' + shift(k). Per
// phase those taps form a progression, so each phase is a plain stride-1 convolution of grad_output
// itself with a sub-kernel, and no weight is multiplied by the (s - 1) zeros in s of the upsampled
// gradient.
#pragma once
#include <ATen/Parallel.h>

#include <cstdint>
#include <numeric>

namespace ebsparse {

// The taps of the flipped kernel (engine orientation, 0 <= k < K) that reach phase `phase` along
// one axis of a conv with stride s, dilation d and padding pad: k = first + m * step for m < count,
// reading grad_output at i' + shift + m * dil. count is 0 when no tap reaches the phase.
struct PhaseTaps {
  int64_t first = 0, count = 0, step = 1, shift = 0, dil = 1;
  bool has(int64_t k) const { return k >= first && (k - first) % step == 0 && (k - first) / step < count; }
  int64_t index(int64_t k) const { return (k - first) / step; }  // m of a tap that `has`
};

inline PhaseTaps phase_taps(int64_t phase, int64_t K, int64_t d, int64_t pad, int64_t s) {
  // The flipped kernel's tap k over the upsampled gradient padded by (K - 1) * d - pad reads its row
  // phase + k * d - ((K - 1) * d - pad), a real grad_output row when that is a multiple of s.
  const int64_t lead = (K - 1) * d - pad;
  PhaseTaps t;
  t.step = s / std::gcd(s, d), t.dil = d / std::gcd(s, d);
  for (int64_t k = 0; k < K && k < t.step; ++k) {
    const int64_t r = phase + k * d - lead;
    if (((r % s) + s) % s == 0) {
      t.first = k;
      t.shift = (r - ((r % s) + s) % s) / s;  // floor division of a multiple of s
      t.count = (K - 1 - k) / t.step + 1;
      break;
    }
  }
  return t;
}

// Positions of phase p along an axis of size n with stride s: p, p + s, ...
inline int64_t phase_size(int64_t n, int64_t p, int64_t s) { return (n - p + s - 1) / s; }

// Row phase py of dx (rows py, py + sh, ... of each of `planes` H x W planes) from its column
// phases: dx[b, py + sh * y, px + sw * x] = phases[px][(b * hp + y) * wp + x], zeros where
// phases[px] is null (no tap reaches that phase). Each dx row is written once, front to back.
inline void interleave_phases(int64_t planes, int64_t H, int64_t W, int64_t sh, int64_t sw, int64_t py,
                              const float* const* phases, float* dx) {
  const int64_t hp = phase_size(H, py, sh);
  at::parallel_for(0, planes, 1, [&](int64_t b0, int64_t b1) {
    for (int64_t b = b0; b < b1; ++b)
      for (int64_t y = 0; y < hp; ++y) {
        float* row = dx + (b * H + py + y * sh) * W;
        for (int64_t px = 0; px < sw && px < W; ++px) {
          const int64_t wp = phase_size(W, px, sw);
          if (phases[px] == nullptr) {
            for (int64_t x = 0; x < wp; ++x) row[px + x * sw] = 0.f;
            continue;
          }
          const float* src = phases[px] + (b * hp + y) * wp;
          for (int64_t x = 0; x < wp; ++x) row[px + x * sw] = src[x];
        }
      }
  });
}

}  // namespace ebsparse
