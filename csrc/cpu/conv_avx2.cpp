// AVX2+FMA instantiation of the direct sparse conv engine (conv_simd.h): the baseline path, used when
// the CPU has no AVX-512.
#include <immintrin.h>

#include <cstdint>
#include <cstring>
#include <vector>

#include "conv_impl.h"
#include "simd_vec.h"

namespace ebsparse::convk::avx2 {
using Vec = simd::Avx2;

#include "conv_simd.h"

}  // namespace ebsparse::convk::avx2
