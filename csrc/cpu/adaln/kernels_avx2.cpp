// adaln.h's row kernels (kernels.h) for AVX2+FMA, the library's baseline: float32, eight lanes.
#include <immintrin.h>

#include <algorithm>
#include <cmath>
#include <cstdint>

#include "cpu/adaln/adaln.h"
#include "cpu/simd_vec.h"

namespace ebsparse::adaln::avx2 {
using Vec = simd::Avx2;
using Real = float;

#include "cpu/adaln/kernels.h"

}  // namespace ebsparse::adaln::avx2

namespace ebsparse::adaln {
const RowKernels<float>& kernels_avx2() { return avx2::kTable; }
}  // namespace ebsparse::adaln
