// dropout_mask.h's block masks for AVX-512, reached only when cpu_capability() chose it: sixteen
// counters (two blocks) per vector, one compare mask giving a byte of each block. The include comes
// first, built for the AVX2 baseline; the pragma raises the target of everything below it.
#include <immintrin.h>

#include "cpu/activation/dropout_mask.h"

#pragma GCC push_options
#pragma GCC target("avx512f,avx512vl,avx512bw,avx512dq,fma")

namespace ebsparse::dropout {
namespace {

// (hi, lo) of m * a in each of sixteen 32-bit lanes.
inline void mulhilo16(__m512i a, __m512i m, __m512i* hi, __m512i* lo) {
  const __m512i even = _mm512_mul_epu32(a, m), odd = _mm512_mul_epu32(_mm512_srli_epi64(a, 32), m);
  *lo = _mm512_mask_blend_epi32(0xAAAA, even, _mm512_slli_epi64(odd, 32));
  *hi = _mm512_mask_blend_epi32(0xAAAA, _mm512_srli_epi64(even, 32), odd);
}

// The 8 mask bytes of blocks b and b + 1.
inline void two_blocks(const Draw& d, int64_t b, uint8_t* bytes) {
  const uint64_t first = uint64_t(b) * 8;  // the caller keeps the 16 counters within one high word
  __m512i c0 = _mm512_add_epi32(_mm512_set1_epi32(int(uint32_t(first))),
                                _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15));
  __m512i c1 = _mm512_set1_epi32(int(uint32_t(first >> 32)));
  __m512i c2 = _mm512_setzero_si512(), c3 = _mm512_setzero_si512();
  __m512i k0 = _mm512_set1_epi32(int(d.key0)), k1 = _mm512_set1_epi32(int(d.key1));
  const __m512i m0 = _mm512_set1_epi32(int(kMul0)), m1 = _mm512_set1_epi32(int(kMul1));
  const __m512i w0 = _mm512_set1_epi32(int(kWeyl0)), w1 = _mm512_set1_epi32(int(kWeyl1));
  for (int r = 0; r < kRounds; ++r) {
    __m512i hi0, lo0, hi1, lo1;
    mulhilo16(c0, m0, &hi0, &lo0);
    mulhilo16(c2, m1, &hi1, &lo1);
    c0 = _mm512_ternarylogic_epi32(hi1, c1, k0, 0x96);  // three-way xor
    c2 = _mm512_ternarylogic_epi32(hi0, c3, k1, 0x96);
    c1 = lo1;
    c3 = lo0;
    k0 = _mm512_add_epi32(k0, w0);
    k1 = _mm512_add_epi32(k1, w1);
  }
  const __m512i t = _mm512_set1_epi32(int(uint32_t(d.threshold)));
  const __m512i words[4] = {c0, c1, c2, c3};
  for (int w = 0; w < 4; ++w) {
    const __mmask16 keep = _mm512_cmplt_epu32_mask(words[w], t);
    bytes[w] = uint8_t(keep);
    bytes[4 + w] = uint8_t(keep >> 8);
  }
}

}  // namespace

void block_masks_avx512(const Draw& d, int64_t first, int64_t count, uint8_t* bytes) {
  if (d.threshold >> 32) {  // p = 0
    for (int64_t i = 0; i < 4 * count; ++i) bytes[i] = 0xFF;
    return;
  }
  int64_t i = 0;
  for (; i + 2 <= count; i += 2) {
    if (uint32_t(uint64_t(first + i) * 8) > 0xFFFFFFF0u) {  // the low counter word wraps inside the pair
      block_masks_avx2(d, first + i, 2, bytes + 4 * i);
    } else {
      two_blocks(d, first + i, bytes + 4 * i);
    }
  }
  if (i < count) block_masks_avx2(d, first + i, 1, bytes + 4 * i);
}

}  // namespace ebsparse::dropout

#pragma GCC pop_options
