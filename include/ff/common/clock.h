// Clock: every component reads time and sleeps through this interface, so a deterministic simulation
// can replace real time (ManualClock) and run a timeout-heavy protocol in microseconds.
//
// Thread-safety: SystemClock and ManualClock are safe to use from any number of threads.
#pragma once

#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <mutex>

namespace ff {

class Clock {
 public:
  virtual ~Clock() = default;
  // Monotonic time in nanoseconds since an arbitrary, fixed origin.
  virtual int64_t now_ns() const = 0;
  // Blocks the caller until now_ns() has advanced by at least duration_ns.
  virtual void sleep_for_ns(int64_t duration_ns) = 0;

  int64_t now_us() const { return now_ns() / 1000; }
  int64_t now_ms() const { return now_ns() / 1000000; }
};

// Real monotonic time (std::chrono::steady_clock).
class SystemClock final : public Clock {
 public:
  int64_t now_ns() const override;
  void sleep_for_ns(int64_t duration_ns) override;
};

// The process-wide real clock. Lives for the whole process.
Clock& system_clock();

// Simulated time that only moves when told to. sleep_for_ns blocks until another thread advances the
// clock past the wake-up time, or, with auto_advance (the default for single-threaded simulations),
// advances the clock itself and returns at once.
class ManualClock final : public Clock {
 public:
  explicit ManualClock(int64_t start_ns = 0, bool auto_advance = true);

  int64_t now_ns() const override { return now_ns_.load(std::memory_order_acquire); }
  void sleep_for_ns(int64_t duration_ns) override;

  void advance_ns(int64_t delta_ns);
  void set_ns(int64_t now_ns);  // Must not move time backwards.
  // Threads blocked in sleep_for_ns now (never with auto_advance): lets a simulation step time
  // only once every actor is waiting.
  int sleepers() const { return sleepers_.load(std::memory_order_acquire); }

 private:
  std::atomic<int64_t> now_ns_;
  const bool auto_advance_;
  std::atomic<int> sleepers_{0};
  std::mutex mutex_;  // Guards nothing but the wait below; time itself is the atomic.
  std::condition_variable advanced_;
};

// A point in time after which a wait gives up. Every wait in Fireflyer has one.
class Deadline {
 public:
  Deadline(const Clock& clock, int64_t timeout_ns) : clock_(&clock), expires_ns_(clock.now_ns() + timeout_ns) {}
  static Deadline after_ms(const Clock& clock, int64_t timeout_ms) { return Deadline(clock, timeout_ms * 1000000); }

  bool expired() const { return clock_->now_ns() >= expires_ns_; }
  int64_t remaining_ns() const {
    int64_t remaining = expires_ns_ - clock_->now_ns();
    return remaining > 0 ? remaining : 0;
  }

 private:
  const Clock* clock_;
  int64_t expires_ns_;
};

}  // namespace ff
