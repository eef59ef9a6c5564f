// The recording path must not allocate (STYLE.md rule 8): this binary counts every operator new and
// checks that recording thousands of events after a thread's first event allocates nothing.
#include <gtest/gtest.h>

#include <atomic>
#include <cstdlib>
#include <new>

#include "ff/trace/recorder.h"

namespace {
std::atomic<size_t> allocations{0};
}  // namespace

void* operator new(size_t size) {
  allocations.fetch_add(1, std::memory_order_relaxed);
  if (void* pointer = std::malloc(size == 0 ? 1 : size)) return pointer;
  throw std::bad_alloc();
}
void operator delete(void* pointer) noexcept { std::free(pointer); }
void operator delete(void* pointer, size_t) noexcept { std::free(pointer); }

namespace ff::trace {
namespace {

TEST(RecorderAllocationTest, RecordingAllocatesOnlyOnAThreadsFirstEvent) {
  RecorderOptions options;
  options.events_per_thread = 1024;
  Recorder recorder(options);
  recorder.set_enabled(true);
  recorder.complete("warm-up", "t", 0, 1);  // allocates this thread's ring
  const size_t before = allocations.load();
  for (int i = 0; i < 10'000; ++i) {  // wraps the ring several times
    recorder.complete("step", "t", i, 1, "i", i);
    recorder.instant("mark", "t");
    recorder.counter("depth", i);
    recorder.flow_start("send", "t", static_cast<uint64_t>(i));
    recorder.flow_end("send", "t", static_cast<uint64_t>(i));
    Scope scope(recorder, "scope", "t");
  }
  EXPECT_EQ(allocations.load() - before, 0u);
  EXPECT_EQ(recorder.stats().recorded, 60'001u);
}

TEST(RecorderAllocationTest, DisabledRecorderNeverAllocates) {
  Recorder recorder;
  const size_t before = allocations.load();
  for (int i = 0; i < 1000; ++i) recorder.complete("step", "t", i, 1);
  EXPECT_EQ(allocations.load() - before, 0u);
  EXPECT_EQ(recorder.stats().threads, 0u);
}

}  // namespace
}  // namespace ff::trace
