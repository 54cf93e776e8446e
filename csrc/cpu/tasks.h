// Private to csrc/cpu: running independent tasks on torch's thread pool.
#pragma once
#include <ATen/Parallel.h>

#include <algorithm>
#include <atomic>
#include <cstdint>

namespace ebsparse {

// Runs f(task, thread, slot) for every task in [0, ntasks) on torch's pool, thread in [0, pool size):
// task t belongs to slot t % slots, each slot's tasks run in order on one thread, and the threads
// pull whole slots from a shared counter instead of taking a fixed share each (on a shared machine
// one core is often descheduled, and a static split then leaves the other idling at the barrier).
// Inside another parallel region (thread ids are not ours) it runs serially as thread 0.
//
// Sums kept per thread would depend on which thread ran which task, so they would differ between
// calls in their last bits and a training run could not be repeated or resumed exactly. A sum kept
// per slot and added over the slots in order is the same on every call with the same thread count.
// Scratch stays per thread. Such sums take one slot per thread (task_slots), which gives up the
// balancing that a slot per task (run_tasks) has when one core is descheduled: more slots, each
// with its own sums, measured slower still (every task then updates sums another slot's task left
// out of cache). Interleaving the slots' tasks keeps the threads on neighbouring tasks.
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

// The slot count for tasks that keep sums per slot: one per thread (or 1 inside another region).
inline int64_t task_slots(int64_t ntasks) {
  if (at::in_parallel_region()) return 1;
  return std::max<int64_t>(std::min<int64_t>(at::get_num_threads(), ntasks), 1);
}

// Runs f(task, thread) for every task, each task pulled on its own: for tasks that write disjoint
// outputs (no sums shared between tasks).
template <class F>
void run_tasks(int64_t ntasks, F&& f) {
  run_task_slots(ntasks, ntasks, [&](int64_t t, int64_t tid, int64_t) { f(t, tid); });
}

}  // namespace ebsparse
