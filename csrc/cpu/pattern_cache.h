// Private to csrc/cpu: a small cache of derived layouts keyed by the index tensors of a sparsity
// pattern, so that layouts built from a pattern (k-blocked entry lists, conv packing) are built once
// per pattern instead of on every call.
//
// A pattern changes when the mask does (every ΔT steps under RigL, never under static sparsity);
// the weight values change every step, so only positions are cached, never values.
//
// Entries hold weak references to the index tensors: an entry is valid while both tensors are
// alive and unmodified (same TensorImpl, same version counter) and the parameters the layout was
// built for are equal. A weak reference keeps the TensorImpl object (not its storage) allocated, so
// a freed pattern's address cannot be taken by a new tensor while its entry exists: no stale hits.
#pragma once
#include <ATen/ATen.h>
#include <c10/util/intrusive_ptr.h>

#include <list>
#include <memory>
#include <mutex>
#include <vector>

namespace ebsparse {

template <class Layout>
class PatternCache {
 public:
  explicit PatternCache(size_t capacity) : capacity_(capacity) {}

  // The cached layout of (a, b, params), or build() (returning std::shared_ptr<const Layout>),
  // stored as the most recently used entry. Thread-safe; build() runs outside the lock.
  template <class Build>
  std::shared_ptr<const Layout> get(const at::Tensor& a, const at::Tensor& b,
                                    const std::vector<int64_t>& params, Build&& build) {
    {
      std::lock_guard<std::mutex> lock(mutex_);
      for (auto it = entries_.begin(); it != entries_.end(); ++it)
        if (it->matches(a, b, params)) {
          entries_.splice(entries_.begin(), entries_, it);
          return it->layout;
        }
    }
    std::shared_ptr<const Layout> layout = build();
    std::lock_guard<std::mutex> lock(mutex_);
    entries_.push_front({Weak(a.getIntrusivePtr()), Weak(b.getIntrusivePtr()), version(a), version(b),
                         params, layout});
    if (entries_.size() > capacity_) entries_.pop_back();
    return layout;
  }

 private:
  using Weak = c10::weak_intrusive_ptr<c10::TensorImpl, c10::UndefinedTensorImpl>;

  // Inference tensors have no version counter (and cannot be modified outside inference mode).
  static int64_t version(const at::Tensor& t) { return t.is_inference() ? -1 : t._version(); }

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
  };

  size_t capacity_;
  std::mutex mutex_;
  std::list<Entry> entries_;  // most recently used first
};

}  // namespace ebsparse
