// Private to csrc/cpu: running independent tasks on torch's thread pool.
#pragma once
#include <ATen/Parallel.h>

#include <algorithm>
#include <atomic>
#include <cstdint>

namespace ebsparse {

// Runs f(task, thread) for every task in [0, ntasks) on torch's pool, thread in [0, pool size).
// Threads pull tasks from a shared counter instead of taking a fixed share each: on a shared
// machine one core is often descheduled, and a static split then leaves the other idling at the
// barrier. Inside another parallel region (thread ids are not ours) it runs serially as thread 0.
template <class F>
void run_tasks(int64_t ntasks, F&& f) {
  const int64_t pool = at::get_num_threads();
  if (pool == 1 || ntasks == 1 || at::in_parallel_region()) {
    for (int64_t t = 0; t < ntasks; ++t) f(t, int64_t(0));
    return;
  }
  std::atomic<int64_t> next{0};
  at::parallel_for(0, std::min(pool, ntasks), 1, [&](int64_t, int64_t) {
    const int64_t tid = at::get_thread_num();
    TORCH_INTERNAL_ASSERT(tid >= 0 && tid < pool, "thread id ", tid, " outside the pool of ", pool);
    for (int64_t t = next.fetch_add(1); t < ntasks; t = next.fetch_add(1)) f(t, tid);
  });
}

}  // namespace ebsparse
