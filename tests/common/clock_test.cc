#include <gtest/gtest.h>

#include <thread>

#include "ff/common/clock.h"

namespace ff {
namespace {

TEST(ClockTest, SystemClockIsMonotonicAndSleeps) {
  Clock& clock = system_clock();
  int64_t before = clock.now_ns();
  clock.sleep_for_ns(2'000'000);
  int64_t after = clock.now_ns();
  EXPECT_GE(after - before, 2'000'000);
}

TEST(ClockTest, ManualClockAutoAdvancesOnSleep) {
  ManualClock clock(1000);
  EXPECT_EQ(clock.now_ns(), 1000);
  clock.sleep_for_ns(500);
  EXPECT_EQ(clock.now_ns(), 1500);
  clock.advance_ns(10);
  EXPECT_EQ(clock.now_ns(), 1510);
  clock.set_ns(2000);
  EXPECT_EQ(clock.now_ns(), 2000);
}

TEST(ClockTest, ManualClockWithoutAutoAdvanceWaitsForAnotherThread) {
  ManualClock clock(0, /*auto_advance=*/false);
  std::atomic<bool> woke{false};
  std::thread sleeper([&] {
    clock.sleep_for_ns(100);
    woke = true;
  });
  // Wait (bounded) until the sleeper is blocked, so its wake-up time is 100.
  for (int i = 0; i < 5000 && clock.sleepers() == 0; ++i) std::this_thread::sleep_for(std::chrono::milliseconds(1));
  ASSERT_EQ(clock.sleepers(), 1);
  clock.advance_ns(50);
  std::this_thread::sleep_for(std::chrono::milliseconds(20));
  EXPECT_FALSE(woke.load());
  clock.advance_ns(50);
  sleeper.join();
  EXPECT_TRUE(woke.load());
}

TEST(ClockTest, DeadlineExpiresOnSimulatedTime) {
  ManualClock clock;
  Deadline deadline = Deadline::after_ms(clock, 5);
  EXPECT_FALSE(deadline.expired());
  EXPECT_EQ(deadline.remaining_ns(), 5'000'000);
  clock.advance_ns(5'000'000);
  EXPECT_TRUE(deadline.expired());
  EXPECT_EQ(deadline.remaining_ns(), 0);
}

TEST(ClockDeathTest, ManualClockRefusesToGoBackwards) {
  ManualClock clock(100);
  EXPECT_DEATH(clock.set_ns(50), "must not move backwards");
}

}  // namespace
}  // namespace ff
