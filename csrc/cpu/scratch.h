#pragma once
// Per-thread scratch buffers shared by the CPU kernel families.

#include <c10/util/Exception.h>

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <cstdlib>

namespace ebsparse {

// A thread's scratch for `n` elements of T in buffer `slot`, 64-byte aligned, grown on demand and
// kept between calls: kernels rewrite their panels on every call, and reusing the pages avoids a
// page fault per 4 KB of fresh scratch (a large share of the fixed cost at high sparsity). `Owner`
// (a caller's own slot enum, kSlots of them) keeps each kernel family's buffers apart; `slot` tells
// apart the buffers a thread holds at the same time.
template <typename Owner, int kSlots, typename T>
T* thread_scratch(Owner slot, int64_t n, const char* what) {
  struct Buf {
    void* p = nullptr;
    size_t bytes = 0;
    ~Buf() { std::free(p); }
  };
  thread_local Buf bufs[kSlots];
  Buf& b = bufs[static_cast<int>(slot)];
  const size_t need = (size_t(std::max<int64_t>(n, 1)) * sizeof(T) + 63) & ~size_t(63);
  if (b.bytes < need) {
    std::free(b.p);
    b.p = std::aligned_alloc(64, need);
    TORCH_CHECK(b.p, "ebsparse: out of memory for ", need, " bytes of ", what, " scratch");
    b.bytes = need;
  }
  return static_cast<T*>(b.p);
}

}  // namespace ebsparse
