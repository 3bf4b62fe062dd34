// Waiting a bounded time for a call that cannot be bounded or cancelled itself (a device
// synchronization, NCCL's init): the call runs on a thread of its own, which stays behind past the
// bound.
#pragma once

#include <chrono>
#include <condition_variable>
#include <memory>
#include <mutex>
#include <thread>
#include <utility>

namespace tpcomm {

// Runs `work` (returning R) on a thread of its own and waits for it at most `bound`. True, with
// its result in *result, if it ended by then; otherwise false, and once it ends, its result goes
// to `late` on that thread (to release what it made).
template <typename R, typename Work, typename Late>
bool runWithin(std::chrono::milliseconds bound, Work work, Late late, R* result) {
  struct Shared {
    std::mutex mutex;
    std::condition_variable ended;
    bool finished = false;
    bool abandoned = false;
    R value{};
  };
  auto shared = std::make_shared<Shared>();
  std::thread([shared, work = std::move(work), late = std::move(late)]() mutable {
    R value = work();
    std::lock_guard<std::mutex> lock(shared->mutex);
    if (shared->abandoned) {
      late(std::move(value));
      return;
    }
    shared->value = std::move(value);
    shared->finished = true;
    shared->ended.notify_all();
  }).detach();
  std::unique_lock<std::mutex> lock(shared->mutex);
  if (!shared->ended.wait_for(lock, bound, [&] { return shared->finished; })) {
    shared->abandoned = true;
    return false;
  }
  *result = std::move(shared->value);
  return true;
}

}  // namespace tpcomm
