// AVX-512 instantiation of the direct sparse conv engine (conv_simd.h). Only reached after a run-time
// check of __builtin_cpu_supports("avx512f"); the file is built with the AVX2 baseline flags and
// every function below carries the AVX-512 target through the pragma.
#include <immintrin.h>

#include <cstdint>
#include <cstring>
#include <vector>

#include "conv_impl.h"
#include "simd_vec.h"

#pragma GCC push_options
#pragma GCC target("avx512f,avx512vl,avx512bw,avx512dq,fma")

namespace ebsparse::convk::avx512 {
using Vec = simd::Avx512;

#include "conv_simd.h"

}  // namespace ebsparse::convk::avx512

#pragma GCC pop_options
