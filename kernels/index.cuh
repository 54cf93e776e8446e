// Index arithmetic of the CUDA kernels as __host__ __device__ functions, so the host unit tests
// (tests/kernels/test_index_host.py compiles tests/kernels/index_host_test.cpp with the host
// compiler) check exactly the code the kernels run. No ATen/CUDA headers: plain C++ outside nvcc.
#pragma once
#include <cstdint>

#ifdef __CUDACC__
#define EBSPARSE_HD __host__ __device__ __forceinline__
#else
#define EBSPARSE_HD inline
#endif

namespace ebsparse::index {

// The 2:4 magnitude rule: the largest |a[i]| and then the largest of the other three, the lowest i
// winning ties (csrc/cpu/twofour.cpp's rule). Writes the two kept positions, best first.
EBSPARSE_HD void two_four_select(const float a[4], int& best, int& second) {
  best = 0;
  for (int i = 1; i < 4; ++i)
    if (a[i] > a[best]) best = i;
  second = -1;
  for (int i = 0; i < 4; ++i)
    if (i != best && (second < 0 || a[i] > a[second])) second = i;
}

// The 2:4 metadata code of a group's mask: p0 | (p1 << 2) with p0 < p1 the kept positions, or -1
// when the group does not keep exactly two.
EBSPARSE_HD int two_four_code(const bool kept[4]) {
  int slot = 0, code = 0;
  for (int i = 0; i < 4; ++i)
    if (kept[i]) {
      if (slot == 2) return -1;
      code |= i << (2 * slot);
      ++slot;
    }
  return slot == 2 ? code : -1;
}

// A code's two positions; false for a code that is not two increasing 2-bit positions.
EBSPARSE_HD bool two_four_decode(uint8_t code, int& p0, int& p1) {
  p0 = code & 3;
  p1 = (code >> 2) & 3;
  return p0 < p1 && (code >> 4) == 0;
}

// Blocks of `tile` items covering n, capped at `cap` (the kernels grid-stride past the cap).
EBSPARSE_HD int64_t grid_tiles(int64_t n, int64_t tile, int64_t cap) {
  const int64_t tiles = (n + tile - 1) / tile;
  return tiles < 1 ? 1 : (tiles > cap ? cap : tiles);
}

}  // namespace ebsparse::index
