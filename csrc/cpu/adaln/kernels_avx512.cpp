// adaln.h's row kernels (kernels.h) for AVX-512, reached only when cpu_capability() chose it. The
// includes come first, built for the AVX2 baseline; the pragma raises the target of the kernel
// bodies only, and the table accessor after it is baseline code.
#include <immintrin.h>

#include <algorithm>
#include <cmath>
#include <cstdint>

#include "cpu/adaln/adaln.h"
#include "cpu/simd_vec.h"

#pragma GCC push_options
#pragma GCC target("avx512f,avx512vl,avx512bw,avx512dq,fma")

namespace ebsparse::adaln::avx512 {
using Vec = simd::Avx512;
using Real = float;

#include "cpu/adaln/kernels.h"

}  // namespace ebsparse::adaln::avx512

#pragma GCC pop_options

namespace ebsparse::adaln {
const RowKernels<float>& kernels_avx512() { return avx512::kTable; }
}  // namespace ebsparse::adaln
