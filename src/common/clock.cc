#include "ff/common/clock.h"

#include <chrono>
#include <thread>

#include "ff/common/assert.h"

namespace ff {

int64_t SystemClock::now_ns() const {
  return std::chrono::duration_cast<std::chrono::nanoseconds>(std::chrono::steady_clock::now().time_since_epoch())
      .count();
}

void SystemClock::sleep_for_ns(int64_t duration_ns) {
  if (duration_ns > 0) std::this_thread::sleep_for(std::chrono::nanoseconds(duration_ns));
}

Clock& system_clock() {
  static SystemClock clock;
  return clock;
}

ManualClock::ManualClock(int64_t start_ns, bool auto_advance) : now_ns_(start_ns), auto_advance_(auto_advance) {}

void ManualClock::sleep_for_ns(int64_t duration_ns) {
  if (duration_ns <= 0) return;
  if (auto_advance_) {
    advance_ns(duration_ns);
    return;
  }
  const int64_t wake_ns = now_ns() + duration_ns;
  std::unique_lock lock(mutex_);
  sleepers_.fetch_add(1, std::memory_order_acq_rel);
  advanced_.wait(lock, [&] { return now_ns() >= wake_ns; });
  sleepers_.fetch_sub(1, std::memory_order_acq_rel);
}

void ManualClock::advance_ns(int64_t delta_ns) {
  FF_ASSERT_GE(delta_ns, 0);
  {
    std::lock_guard lock(mutex_);
    now_ns_.fetch_add(delta_ns, std::memory_order_acq_rel);
  }
  advanced_.notify_all();
}

void ManualClock::set_ns(int64_t now_ns) {
  {
    std::lock_guard lock(mutex_);
    FF_ASSERT_GE(now_ns, now_ns_.load(), "ManualClock must not move backwards");
    now_ns_.store(now_ns, std::memory_order_release);
  }
  advanced_.notify_all();
}

}  // namespace ff
