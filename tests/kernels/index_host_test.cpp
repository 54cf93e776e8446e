// Host unit test of kernels/index.cuh (the CUDA kernels' index arithmetic), compiled with the host
// compiler by tests/kernels/test_index_host.py. Exits non-zero with a message on the first failure.
#include <cmath>
#include <cstdio>
#include <cstdlib>

#include "index.cuh"

using namespace ebsparse::index;

static int failures = 0;
#define EXPECT(cond)                                                   \
  do {                                                                 \
    if (!(cond)) {                                                     \
      std::printf("%s:%d: expected %s\n", __FILE__, __LINE__, #cond); \
      ++failures;                                                      \
    }                                                                  \
  } while (0)

int main() {
  // every mask of 4: a code exactly for the 6 that keep two, decoding back to the same positions
  int valid = 0;
  for (int bits = 0; bits < 16; ++bits) {
    const bool kept[4] = {bool(bits & 1), bool(bits & 2), bool(bits & 4), bool(bits & 8)};
    const int count = kept[0] + kept[1] + kept[2] + kept[3];
    const int code = two_four_code(kept);
    EXPECT((code >= 0) == (count == 2));
    if (code >= 0) {
      ++valid;
      int p0, p1;
      EXPECT(two_four_decode(static_cast<uint8_t>(code), p0, p1));
      EXPECT(kept[p0] && kept[p1] && p0 < p1);
    }
  }
  EXPECT(valid == 6);
  // every byte: valid codes are exactly the 6 above
  int decodable = 0;
  for (int code = 0; code < 256; ++code) {
    int p0, p1;
    if (two_four_decode(static_cast<uint8_t>(code), p0, p1)) ++decodable;
  }
  EXPECT(decodable == 6);
  // selection: largest two magnitudes, lowest index on ties
  {
    const float a[4] = {1.f, 3.f, 2.f, 3.f};
    int best, second;
    two_four_select(a, best, second);
    EXPECT(best == 1 && second == 3);
    const float z[4] = {0.f, 0.f, 0.f, 0.f};
    two_four_select(z, best, second);
    EXPECT(best == 0 && second == 1);
    const float n[4] = {0.f, 5.f, 0.f, 0.f};
    two_four_select(n, best, second);
    EXPECT(best == 1 && second == 0);
  }
  // grid tiles: at least one, capped, covering n
  EXPECT(grid_tiles(0, 256, 65535) == 1);
  EXPECT(grid_tiles(256, 256, 65535) == 1);
  EXPECT(grid_tiles(257, 256, 65535) == 2);
  EXPECT(grid_tiles(int64_t(1) << 40, 256, 65535) == 65535);
  if (failures) return 1;
  std::printf("ok\n");
  return 0;
}
