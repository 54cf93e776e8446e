// The conv engine's kernels (kernels.h) for AVX-512, reached only when cpu_capability() chose it.
// The includes come first, built for the AVX2 baseline like the rest of the library; the pragma
// then raises the target of everything defined below, and kernels.h gives all of it internal
// linkage except the two task entry points, so no AVX-512 code can stand in for a baseline copy.
#include <immintrin.h>

#include <cstdint>
#include <cstring>
#include <vector>

#include "cpu/conv/engine.h"
#include "cpu/simd_vec.h"

#pragma GCC push_options
#pragma GCC target("avx512f,avx512vl,avx512bw,avx512dq,fma")

namespace ebsparse::convk::avx512 {
using Vec = simd::Avx512;

#include "cpu/conv/kernels.h"

}  // namespace ebsparse::convk::avx512

#pragma GCC pop_options
