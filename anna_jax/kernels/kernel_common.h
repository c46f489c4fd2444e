// What the anna CPU kernels share (anna_cpu.cc, anna_softmax_cpu.cc): float32 / bfloat16 reads and a parallel
// loop on XLA's intra-op thread pool.
#ifndef ANNA_JAX_KERNELS_KERNEL_COMMON_H_
#define ANNA_JAX_KERNELS_KERNEL_COMMON_H_

#include <algorithm>
#include <atomic>
#include <cstdlib>
#include <condition_variable>
#include <cstdint>
#include <cstring>
#include <memory>
#include <mutex>

#include "xla/ffi/api/ffi.h"

#if defined(__linux__)
#include <sys/mman.h>
#endif

namespace ffi = xla::ffi;

namespace anna_kernels {

// A thread's scratch memory, kept from call to call (fresh pages cost a fault each, microseconds on a VM) and on
// huge pages where the OS grants them (random rows of arrays many MiB large would otherwise miss the TLB).
class HugeBuffer {
 public:
  // At least `bytes` bytes, contents undefined; nullptr if out of memory.
  void* Reserve(size_t bytes) {
    if (bytes > capacity_) {
      std::free(memory_);
      constexpr size_t kHuge = size_t{1} << 21;
      capacity_ = (bytes + kHuge - 1) / kHuge * kHuge;
      memory_ = std::aligned_alloc(kHuge, capacity_);
      if (memory_ == nullptr) return capacity_ = 0, nullptr;
#ifdef MADV_HUGEPAGE
      madvise(memory_, capacity_, MADV_HUGEPAGE);
#endif
    }
    return memory_;
  }
  // Frees the memory if it is larger than `bytes`: a thread-local buffer of a long call is not kept for the next.
  void ReleaseAbove(size_t bytes) {
    if (capacity_ <= bytes) return;
    std::free(memory_);
    memory_ = nullptr, capacity_ = 0;
  }
  ~HugeBuffer() { std::free(memory_); }

 private:
  void* memory_ = nullptr;
  size_t capacity_ = 0;
};

// Inputs come as float32 or bfloat16 (the upper half of a float32), and are summed in float32.
inline float ToFloat(float x) { return x; }
inline float ToFloat(uint16_t bf16) {
  const uint32_t bits = static_cast<uint32_t>(bf16) << 16;
  float x;
  std::memcpy(&x, &bits, sizeof(x));
  return x;
}

// Runs task(i) for i in [0, num_tasks) on XLA's intra-op pool; false if any task returned false. Tasks pull
// indices from a shared counter and the calling thread works too, so the call finishes even if no pool thread
// ever starts; the state is shared so a task that starts late finds no work and exits safely.
template <typename Task>
bool ParallelFor(ffi::ThreadPool& pool, int64_t num_tasks, Task task) {
  struct State {
    std::atomic<int64_t> next{0}, done{0};
    std::atomic<bool> failed{false};
    std::mutex mutex;
    std::condition_variable finished;
  };
  auto state = std::make_shared<State>();
  auto work = [state, num_tasks, task]() {
    for (int64_t i; (i = state->next.fetch_add(1)) < num_tasks;) {
      if (!task(i)) state->failed = true;
      if (state->done.fetch_add(1) + 1 == num_tasks) {
        std::lock_guard<std::mutex> lock(state->mutex);
        state->finished.notify_all();
      }
    }
  };
  const int64_t helpers = std::min<int64_t>(pool.num_threads(), num_tasks) - 1;
  for (int64_t i = 0; i < helpers; ++i) pool.Schedule([work] { work(); });
  work();
  std::unique_lock<std::mutex> lock(state->mutex);
  state->finished.wait(lock, [&] { return state->done.load() == num_tasks; });
  return !state->failed;
}

}  // namespace anna_kernels

#endif  // ANNA_JAX_KERNELS_KERNEL_COMMON_H_
