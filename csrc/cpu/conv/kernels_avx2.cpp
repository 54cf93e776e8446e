// The conv engine's kernels (kernels.h) for AVX2+FMA, the library's baseline.
#include <immintrin.h>

#include <cstdint>
#include <cstring>
#include <vector>

#include "cpu/conv/engine.h"
#include "cpu/simd_vec.h"

namespace ebsparse::convk::avx2 {
using Vec = simd::Avx2;

#include "cpu/conv/kernels.h"

}  // namespace ebsparse::convk::avx2
