// Private to cpu/activation/dropout*.cpp: the keep masks of dropout's counter-based generator,
// one translation unit per instruction set (as cpu/capability.h describes); both give the same bits.
//
// Philox4x32-10 (Salmon et al., SC'11) keyed by the call's 64-bit seed. Elements go in blocks of
// 32: element e = 32 b + 8 w + j takes word w of counter (8 b + j, 0, 0) (its low 64 bits as two
// words), so eight counters fill four vectors of eight consecutive elements with no transpose; it is
// kept when that word is below round((1 - p) 2^32), unsigned. Bit e % 8 of byte e / 8 holds keep(e).
#pragma once

#include <cstdint>

namespace ebsparse::dropout {

constexpr uint32_t kMul0 = 0xD2511F53u, kMul1 = 0xCD9E8D57u;    // Philox4x32 multipliers
constexpr uint32_t kWeyl0 = 0x9E3779B9u, kWeyl1 = 0xBB67AE85u;  // key schedule increments
constexpr int kRounds = 10;
constexpr int64_t kBlock = 32;  // elements per eight counters

struct Draw {
  uint32_t key0, key1;
  uint64_t threshold;  // keep when word < threshold; 2^32 keeps every element
};

// The 4 * count mask bytes of the whole blocks first .. first + count - 1, into bytes.
void block_masks_avx2(const Draw& d, int64_t first, int64_t count, uint8_t* bytes);
void block_masks_avx512(const Draw& d, int64_t first, int64_t count, uint8_t* bytes);

}  // namespace ebsparse::dropout
