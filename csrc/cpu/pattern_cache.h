// Private to csrc/cpu: derived layouts (k-blocked entry lists, conv packing, checks passed) kept per
// sparsity pattern, so that a layout built from a pattern is built once per pattern instead of on
// every call.
//
// A pattern changes when the mask does (every ΔT steps under RigL, never under static sparsity);
// the weight values change every step, so only positions are cached, never values.
//
// The layouts belong to the pattern's index tensors: entries are grouped by the first tensor (a
// layer's row_ptr or col_ptr), each group keeps its `per_pattern` most recently used layouts (one
// per engine, phase and input shape), and nothing else bounds the cache, so a model with many
// layers never outgrows it (a global LRU of 256 missed on every call of a U-Net that cycles
// through ~270 layouts per step). An entry is valid while both tensors are alive and unmodified
// (same TensorImpl, same version counter) and the parameters the layout was built for are equal;
// inference tensors, which have no version counter, are never cached.
// Entries whose tensors died or were modified (a RigL update builds a new index; the old one is
// freed) are purged whenever a layout is built. A weak reference keeps the TensorImpl object (not
// its storage) allocated, so a freed pattern's address cannot be taken by a new tensor while its
// entry exists: no stale hits.
#pragma once
#include <ATen/ATen.h>
#include <c10/util/intrusive_ptr.h>

#include <atomic>
#include <list>
#include <memory>
#include <mutex>
#include <unordered_map>
#include <vector>

namespace ebsparse {

// Entries held and layouts built by every PatternCache of the process (cpu_pattern_cache_stats).
struct PatternCacheCounters {
  static std::atomic<int64_t>& entries() {
    static std::atomic<int64_t> n{0};
    return n;
  }
  static std::atomic<int64_t>& builds() {
    static std::atomic<int64_t> n{0};
    return n;
  }
};

template <class Layout>
class PatternCache {
 public:
  explicit PatternCache(size_t per_pattern) : per_pattern_(per_pattern) {}

  // The cached layout of (a, b, params), or build() (returning std::shared_ptr<const Layout>),
  // stored as the most recently used entry of a's group. Thread-safe; build() runs outside the lock.
  template <class Build>
  std::shared_ptr<const Layout> get(const at::Tensor& a, const at::Tensor& b,
                                    const std::vector<int64_t>& params, Build&& build) {
    if (a.is_inference() || b.is_inference()) {
      // No version counter, and inference mode may modify them in place: nothing would tell a
      // cached layout that it went stale, so theirs are built on every call.
      PatternCacheCounters::builds()++;
      return build();
    }
    const c10::TensorImpl* key = a.unsafeGetTensorImpl();
    {
      std::lock_guard<std::mutex> lock(mutex_);
      auto group = groups_.find(key);
      if (group != groups_.end()) {
        auto& entries = group->second;
        for (auto it = entries.begin(); it != entries.end(); ++it)
          if (it->matches(a, b, params)) {
            entries.splice(entries.begin(), entries, it);
            return it->layout;
          }
      }
    }
    std::shared_ptr<const Layout> layout = build();
    PatternCacheCounters::builds()++;
    std::lock_guard<std::mutex> lock(mutex_);
    purge();
    auto& entries = groups_[key];
    entries.push_front({Weak(a.getIntrusivePtr()), Weak(b.getIntrusivePtr()), version(a), version(b),
                        params, layout});
    PatternCacheCounters::entries()++;
    if (entries.size() > per_pattern_) {
      entries.pop_back();
      PatternCacheCounters::entries()--;
    }
    return layout;
  }

 private:
  using Weak = c10::weak_intrusive_ptr<c10::TensorImpl, c10::UndefinedTensorImpl>;

  static int64_t version(const at::Tensor& t) { return t._version(); }

  struct Entry {
    Weak a, b;
    int64_t a_version, b_version;
    std::vector<int64_t> params;
    std::shared_ptr<const Layout> layout;

    bool matches(const at::Tensor& ta, const at::Tensor& tb, const std::vector<int64_t>& p) const {
      return a._unsafe_get_target() == ta.unsafeGetTensorImpl() &&
             b._unsafe_get_target() == tb.unsafeGetTensorImpl() && !a.expired() && !b.expired() &&
             a_version == version(ta) && b_version == version(tb) && params == p;
    }

    // Can never match again: a tensor died, or moved past the version the layout was built for
    // (version counters only grow).
    bool dead() const {
      if (a.expired() || b.expired()) return true;
      const auto ta = a.lock(), tb = b.lock();
      return (ta && ta->version_counter().current_version() != a_version) ||
             (tb && tb->version_counter().current_version() != b_version);
    }
  };

  // O(entries), paid only when a layout is built (a new pattern, shape or version), never on a hit.
  void purge() {
    for (auto group = groups_.begin(); group != groups_.end();) {
      auto& entries = group->second;
      for (auto it = entries.begin(); it != entries.end();)
        if (it->dead()) {
          it = entries.erase(it);
          PatternCacheCounters::entries()--;
        } else {
          ++it;
        }
      group = entries.empty() ? groups_.erase(group) : std::next(group);
    }
  }

  size_t per_pattern_;
  std::mutex mutex_;
  std::unordered_map<const c10::TensorImpl*, std::list<Entry>> groups_;  // each most recently used first
};

}  // namespace ebsparse
