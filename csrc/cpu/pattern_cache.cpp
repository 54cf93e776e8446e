// cpu_pattern_cache_stats (schemas.cpp): how many layouts the pattern caches hold and have built, so
// that tests can see hits, builds and the purge of dead patterns (pattern_cache.h).
#include <torch/library.h>

#include <vector>

#include "cpu/pattern_cache.h"

namespace ebsparse {
namespace {
std::vector<int64_t> pattern_cache_stats() {
  return {PatternCacheCounters::entries().load(), PatternCacheCounters::builds().load()};
}
}  // namespace
}  // namespace ebsparse

// No tensor arguments, so no dispatch key: CompositeExplicitAutograd serves every call.
TORCH_LIBRARY_IMPL(ebsparse, CompositeExplicitAutograd, m) {
  m.impl("cpu_pattern_cache_stats", &ebsparse::pattern_cache_stats);
}
