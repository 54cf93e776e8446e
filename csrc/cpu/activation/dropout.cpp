// Dropout on the CPU from a counter-based generator: forward (output and a bit mask) and backward.
// ATen's CPU dropout draws each element from its Mersenne-Twister stream (`bernoulli_`, ~8 ns per
// element on one core) and saves a float mask; in the DDPM U-Net's training step that was 11-15%.
//
// Random numbers: Philox4x32-10 keyed by the 64-bit seed the Python op draws once from torch's
// generator; which word each element takes is in dropout_mask.h. Each element's draw depends only on
// (seed, e), so results do not depend on how threads split the work or on the instruction set.
//
// keep(e) = word < round((1 - p) 2^32) (unsigned), y = keep ? x * s : 0 with s = 1 / (1 - p) rounded
// to the dtype, ATen's own scaling (it multiplies by the divided mask). The forward also writes bit
// e % 8 of byte e / 8 of a uint8 mask, which the backward reads: dx = keep ? dy * s : 0. A bit per
// element is 1/32 of a float32 activation (ATen keeps a float per element), and reading it is far
// cheaper than running the generator again.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <immintrin.h>
#include <torch/library.h>

#include <cmath>
#include <cstdint>
#include <type_traits>

#include "cpu/activation/dropout_mask.h"
#include "cpu/capability.h"

namespace ebsparse::dropout {
namespace {

constexpr int64_t kGrainBlocks = 2048;  // 64K elements per task
constexpr int64_t kChunkBlocks = 64;    // masks made, then applied, 2K elements at a time (in L1)

Draw make_draw(int64_t seed, double p) {
  const double keep = 1.0 - p;
  return {uint32_t(uint64_t(seed)), uint32_t(uint64_t(seed) >> 32), uint64_t(std::llround(keep * 4294967296.0))};
}

// One Philox4x32-10 call, lane by lane (the block tail).
inline void philox(uint32_t c[4], uint32_t k0, uint32_t k1) {
  for (int r = 0; r < kRounds; ++r) {
    const uint64_t p0 = uint64_t(kMul0) * c[0], p1 = uint64_t(kMul1) * c[2];
    const uint32_t n0 = uint32_t(p1 >> 32) ^ c[1] ^ k0, n2 = uint32_t(p0 >> 32) ^ c[3] ^ k1;
    c[1] = uint32_t(p1);
    c[3] = uint32_t(p0);
    c[0] = n0;
    c[2] = n2;
    k0 += kWeyl0;
    k1 += kWeyl1;
  }
}

// (hi, lo) of m * a in each of eight 32-bit lanes.
inline void mulhilo8(__m256i a, __m256i m, __m256i* hi, __m256i* lo) {
  const __m256i even = _mm256_mul_epu32(a, m), odd = _mm256_mul_epu32(_mm256_srli_epi64(a, 32), m);
  *lo = _mm256_blend_epi32(even, _mm256_slli_epi64(odd, 32), 0xAA);
  *hi = _mm256_blend_epi32(_mm256_srli_epi64(even, 32), odd, 0xAA);
}

// The four mask bytes of block b (elements 32 b .. 32 b + 31), eight counters at once.
inline void block_mask8(const Draw& d, int64_t b, uint8_t* bytes) {
  const uint64_t first = uint64_t(b) * 8;
  __m256i c0 = _mm256_add_epi32(_mm256_set1_epi32(int(uint32_t(first))), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
  __m256i c1 = _mm256_set1_epi32(int(uint32_t(first >> 32)));
  __m256i c2 = _mm256_setzero_si256(), c3 = _mm256_setzero_si256();
  __m256i k0 = _mm256_set1_epi32(int(d.key0)), k1 = _mm256_set1_epi32(int(d.key1));
  const __m256i m0 = _mm256_set1_epi32(int(kMul0)), m1 = _mm256_set1_epi32(int(kMul1));
  const __m256i w0 = _mm256_set1_epi32(int(kWeyl0)), w1 = _mm256_set1_epi32(int(kWeyl1));
  for (int r = 0; r < kRounds; ++r) {
    __m256i hi0, lo0, hi1, lo1;
    mulhilo8(c0, m0, &hi0, &lo0);
    mulhilo8(c2, m1, &hi1, &lo1);
    c0 = _mm256_xor_si256(_mm256_xor_si256(hi1, c1), k0);
    c2 = _mm256_xor_si256(_mm256_xor_si256(hi0, c3), k1);
    c1 = lo1;
    c3 = lo0;
    k0 = _mm256_add_epi32(k0, w0);
    k1 = _mm256_add_epi32(k1, w1);
  }
  // Unsigned word < threshold as a signed compare after flipping both sign bits.
  const __m256i flip = _mm256_set1_epi32(int(0x80000000u));
  const __m256i t = _mm256_set1_epi32(int(uint32_t(d.threshold) ^ 0x80000000u));
  const __m256i words[4] = {c0, c1, c2, c3};
  for (int w = 0; w < 4; ++w) {
    const __m256i keep = _mm256_cmpgt_epi32(t, _mm256_xor_si256(words[w], flip));
    bytes[w] = uint8_t(_mm256_movemask_ps(_mm256_castsi256_ps(keep)));
  }
}

// The mask bits of the last, partial block's elements [32 b, n), lane by lane.
inline void mask_tail(const Draw& d, int64_t b, int64_t n, uint8_t* bytes) {
  const int64_t count = n - b * kBlock;
  for (int64_t i = 0; i < (count + 7) / 8; ++i) bytes[i] = 0;
  for (int64_t i = 0; i < count; ++i) {
    const uint64_t counter = uint64_t(b) * 8 + uint64_t(i & 7);
    uint32_t c[4] = {uint32_t(counter), uint32_t(counter >> 32), 0, 0};
    philox(c, d.key0, d.key1);
    if (uint64_t(c[i >> 3]) < d.threshold) bytes[i >> 3] |= uint8_t(1u << (i & 7));
  }
}

// out[i] = bit i of bits ? in[i] * s : 0 for i < count; eight (float) or four (double)
// lanes per vector, lane by lane past the last whole byte.
template <class T>
inline void apply_bits(const T* in, T* out, const uint8_t* bits, int64_t count, T s) {
  int64_t i = 0;
  if constexpr (std::is_same_v<T, float>) {
    const __m256i lanes = _mm256_setr_epi32(1, 2, 4, 8, 16, 32, 64, 128);
    const __m256 scale = _mm256_set1_ps(s);
    for (; i + 8 <= count; i += 8) {
      const __m256i bit = _mm256_and_si256(_mm256_set1_epi32(bits[i >> 3]), lanes);
      const __m256 keep = _mm256_castsi256_ps(_mm256_cmpeq_epi32(bit, lanes));
      _mm256_storeu_ps(out + i, _mm256_and_ps(keep, _mm256_mul_ps(_mm256_loadu_ps(in + i), scale)));
    }
  } else {
    const __m256i lanes = _mm256_setr_epi64x(1, 2, 4, 8);
    const __m256d scale = _mm256_set1_pd(s);
    for (; i + 4 <= count; i += 4) {
      const __m256i bit = _mm256_and_si256(_mm256_set1_epi64x(bits[i >> 3] >> (i & 4)), lanes);
      const __m256d keep = _mm256_castsi256_pd(_mm256_cmpeq_epi64(bit, lanes));
      _mm256_storeu_pd(out + i, _mm256_and_pd(keep, _mm256_mul_pd(_mm256_loadu_pd(in + i), scale)));
    }
  }
  for (; i < count; ++i) out[i] = (bits[i >> 3] >> (i & 7)) & 1 ? in[i] * s : T(0);
}

template <class T>
void forward_kernel(const T* x, T* y, uint8_t* mask, int64_t n, const Draw& d, T s) {
  const int64_t blocks = (n + kBlock - 1) / kBlock, whole = n / kBlock;
  const auto block_masks = cpu_capability() == CpuCapability::kAvx512 ? block_masks_avx512 : block_masks_avx2;
  at::parallel_for(0, blocks, kGrainBlocks, [&](int64_t lo, int64_t hi) {
    for (int64_t b = lo; b < hi; b += kChunkBlocks) {
      const int64_t end = std::min(hi, b + kChunkBlocks), full_end = std::min(end, whole);
      uint8_t* bytes = mask + b * (kBlock / 8);
      if (full_end > b) block_masks(d, b, full_end - b, bytes);
      if (end > full_end) mask_tail(d, full_end, n, mask + full_end * (kBlock / 8));
      const int64_t first = b * kBlock;
      apply_bits(x + first, y + first, bytes, std::min(end * kBlock, n) - first, s);
    }
  });
}

template <class T>
void backward_kernel(const T* g, T* dx, const uint8_t* mask, int64_t n, T s) {
  const int64_t blocks = (n + kBlock - 1) / kBlock;
  at::parallel_for(0, blocks, kGrainBlocks, [&](int64_t lo, int64_t hi) {
    for (int64_t b = lo; b < hi; ++b) {
      const int64_t first = b * kBlock;
      apply_bits(g + first, dx + first, mask + b * (kBlock / 8), std::min<int64_t>(kBlock, n - first), s);
    }
  });
}

void check_input(const at::Tensor& x, const char* name) {
  TORCH_CHECK(x.device().is_cpu(), name, ": expected a CPU tensor, got ", x.device());
  TORCH_CHECK(x.scalar_type() == at::kFloat || x.scalar_type() == at::kDouble, name,
              ": expected float32 or float64, got ", x.scalar_type());
}

void check_p(double p) {
  TORCH_CHECK(p >= 0.0 && p <= 1.0, "p: expected a probability in [0, 1], got ", p);
}

// s = 1 / (1 - p) in the dtype; 0 at p = 1, where nothing is kept (no inf to reach a NaN).
template <class T>
T keep_scale(double p) {
  return p >= 1.0 ? T(0) : T(1.0 / (1.0 - p));
}

std::tuple<at::Tensor, at::Tensor> dropout_cpu(const at::Tensor& input, double p, int64_t seed) {
  check_input(input, "input");
  check_p(p);
  const at::Tensor x = input.contiguous();
  at::Tensor y = at::empty_like(x, at::MemoryFormat::Contiguous);
  const int64_t n = x.numel();
  at::Tensor mask = at::empty({(n + 7) / 8}, x.options().dtype(at::kByte));
  const Draw d = make_draw(seed, p);
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "dropout", [&] {
    forward_kernel<scalar_t>(x.const_data_ptr<scalar_t>(), y.data_ptr<scalar_t>(), mask.data_ptr<uint8_t>(), n, d,
                             keep_scale<scalar_t>(p));
  });
  return {y, mask};
}

at::Tensor dropout_backward_cpu(const at::Tensor& grad_output, const at::Tensor& mask, double p) {
  check_input(grad_output, "grad_output");
  check_p(p);
  const int64_t n = grad_output.numel();
  TORCH_CHECK(mask.device().is_cpu() && mask.scalar_type() == at::kByte && mask.dim() == 1 &&
                  mask.size(0) == (n + 7) / 8,
              "mask: expected the forward's uint8 bit mask of ", (n + 7) / 8, " bytes on the CPU, got ",
              mask.scalar_type(), " ", mask.sizes(), " on ", mask.device());
  const at::Tensor g = grad_output.contiguous(), bits = mask.contiguous();
  at::Tensor dx = at::empty_like(g, at::MemoryFormat::Contiguous);
  AT_DISPATCH_FLOATING_TYPES(g.scalar_type(), "dropout_backward", [&] {
    backward_kernel<scalar_t>(g.const_data_ptr<scalar_t>(), dx.data_ptr<scalar_t>(), bits.const_data_ptr<uint8_t>(),
                              n, keep_scale<scalar_t>(p));
  });
  return dx;
}

}  // namespace

void block_masks_avx2(const Draw& d, int64_t first, int64_t count, uint8_t* bytes) {
  if (d.threshold >> 32) {  // p = 0
    for (int64_t i = 0; i < 4 * count; ++i) bytes[i] = 0xFF;
    return;
  }
  for (int64_t i = 0; i < count; ++i) block_mask8(d, first + i, bytes + 4 * i);
}

}  // namespace ebsparse::dropout

TORCH_LIBRARY_IMPL(ebsparse, CPU, m) {
  m.impl("dropout", &ebsparse::dropout::dropout_cpu);
  m.impl("dropout_backward", &ebsparse::dropout::dropout_backward_cpu);
}
