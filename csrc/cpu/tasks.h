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

// Sums that tasks accumulate per thread under run_tasks depend on which thread ran which task, so
// they differ between calls in their last bits and a training run cannot be repeated or resumed
// exactly. For such sums, run_task_slots(ntasks, slots, f) gives task t to slot t % slots, runs each
// slot's tasks in order on one thread, and lets the threads pull whole slots: f(task, thread, slot).
// A sum kept per slot and added over the slots in order at the end is then the same on every call
// with the same thread count. Scratch stays per thread. One slot per thread (task_slots): more,
// each with its own sums, measured slower (every task then updates sums another slot's task left
// out of cache), and interleaving the slots' tasks keeps the threads on neighbouring tasks.
inline int64_t task_slots(int64_t ntasks) {
  if (at::in_parallel_region()) return 1;
  return std::max<int64_t>(std::min<int64_t>(at::get_num_threads(), ntasks), 1);
}

template <class F>
void run_task_slots(int64_t ntasks, int64_t slots, F&& f) {
  const int64_t pool = at::get_num_threads();
  auto run_slot = [&](int64_t s, int64_t tid) {
    for (int64_t t = s; t < ntasks; t += slots) f(t, tid, s);
  };
  if (pool == 1 || slots <= 1 || at::in_parallel_region()) {
    for (int64_t s = 0; s < slots; ++s) run_slot(s, int64_t(0));
    return;
  }
  std::atomic<int64_t> next{0};
  at::parallel_for(0, std::min(pool, slots), 1, [&](int64_t, int64_t) {
    const int64_t tid = at::get_thread_num();
    TORCH_INTERNAL_ASSERT(tid >= 0 && tid < pool, "thread id ", tid, " outside the pool of ", pool);
    for (int64_t s = next.fetch_add(1); s < slots; s = next.fetch_add(1)) run_slot(s, tid);
  });
}

}  // namespace ebsparse
