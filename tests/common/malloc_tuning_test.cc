// tune_malloc_for_io_buffers: the environment wins, and with the tuning a process that frees and
// reallocates several MiB-sized buffers per round stops faulting them in again every round. Each
// case runs in a child process (malloc settings are process-wide).
#include <sys/resource.h>

#include <cstdlib>
#include <cstring>
#include <vector>

#include <gtest/gtest.h>

#include "ff/common/malloc_tuning.h"

namespace ff {
namespace {

// Minor page faults of 200 rounds of: 8 buffers of 1 MiB allocated, written, freed (what a server
// with 8 requests in flight does with their payloads).
long faults_of_buffer_rounds() {
  rusage before{};
  getrusage(RUSAGE_SELF, &before);
  for (int round = 0; round < 200; ++round) {
    std::vector<char*> buffers;
    for (int i = 0; i < 8; ++i) {
      auto* buffer = static_cast<char*>(std::malloc(size_t{1} << 20));
      std::memset(buffer, round, size_t{1} << 20);
      buffers.push_back(buffer);
    }
    for (char* buffer : buffers) std::free(buffer);
  }
  rusage after{};
  getrusage(RUSAGE_SELF, &after);
  return after.ru_minflt - before.ru_minflt;
}

#if defined(__GLIBC__)
TEST(MallocTuningDeathTest, WithoutItEveryRoundFaultsItsBuffersInAgain) {
  // 200 rounds x 8 MiB = 409,600 pages if every round faults; the first round alone is 2,048.
  EXPECT_EXIT(std::exit(faults_of_buffer_rounds() > 100'000 ? 0 : 1), ::testing::ExitedWithCode(0), "");
}

TEST(MallocTuningDeathTest, WithItTheBuffersAreReused) {
  EXPECT_EXIT(
      {
        unsetenv("MALLOC_TRIM_THRESHOLD_");
        unsetenv("MALLOC_MMAP_THRESHOLD_");
        if (!tune_malloc_for_io_buffers()) std::exit(2);
        std::exit(faults_of_buffer_rounds() < 20'000 ? 0 : 1);
      },
      ::testing::ExitedWithCode(0), "");
}

TEST(MallocTuningDeathTest, TheEnvironmentWins) {
  EXPECT_EXIT(
      {
        setenv("MALLOC_TRIM_THRESHOLD_", "131072", 1);
        std::exit(tune_malloc_for_io_buffers() ? 1 : 0);
      },
      ::testing::ExitedWithCode(0), "");
  EXPECT_EXIT(
      {
        unsetenv("MALLOC_TRIM_THRESHOLD_");
        setenv("GLIBC_TUNABLES", "glibc.malloc.trim_threshold=131072", 1);
        std::exit(tune_malloc_for_io_buffers() ? 1 : 0);
      },
      ::testing::ExitedWithCode(0), "");
}
#endif

}  // namespace
}  // namespace ff
