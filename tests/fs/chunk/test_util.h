// Helpers of the chunk engine tests: a temporary target directory, deterministic chunk contents, and damage on disk.
#pragma once

#include <fcntl.h>
#include <gtest/gtest.h>
#include <stdlib.h>
#include <unistd.h>

#include <cstddef>
#include <cstdint>
#include <cstring>
#include <filesystem>
#include <ostream>
#include <string>
#include <vector>

#include "ff/fs/chunk_engine.h"

// Defined once per test binary, whichever test helper header comes first.
#ifndef FF_TEST_STATUS_OSTREAM
#define FF_TEST_STATUS_OSTREAM
namespace ff {
// gtest prints a Status in failure messages.
inline std::ostream& operator<<(std::ostream& out, const Status& status) { return out << status.to_string(); }
}  // namespace ff
#endif

namespace ff::fs::testing {

// A fresh directory under `parent` (/tmp by default: a disk file system where O_DIRECT works), removed
// with everything in it on destruction.
class TempDir {
 public:
  explicit TempDir(const std::string& parent = "/tmp") {
    std::string pattern = parent + "/ff_chunk_test_XXXXXX";
    char* made = ::mkdtemp(pattern.data());
    EXPECT_NE(made, nullptr) << "mkdtemp " << pattern;
    path_ = pattern;
  }
  ~TempDir() {
    std::error_code error;
    std::filesystem::remove_all(path_, error);
  }
  TempDir(const TempDir&) = delete;
  TempDir& operator=(const TempDir&) = delete;
  const std::string& path() const { return path_; }

 private:
  std::string path_;
};

// `size` bytes that depend on seed and position (so a misplaced or stale block is caught).
inline std::vector<std::byte> pattern_bytes(uint64_t size, uint64_t seed) {
  std::vector<std::byte> bytes(size);
  uint64_t state = seed * 0x9E3779B97F4A7C15ull + 1;
  for (uint64_t i = 0; i < size; ++i) {
    state ^= state << 13;
    state ^= state >> 7;
    state ^= state << 17;
    bytes[i] = static_cast<std::byte>(state & 0xFF);
  }
  return bytes;
}

// Small classes and preallocation so tests are fast: 64 KiB .. 4 MiB, 1 MiB per class file.
inline ChunkEngineOptions small_options(const std::string& directory) {
  ChunkEngineOptions options;
  options.directory = directory;
  options.min_block_bytes = 64ull << 10;
  options.max_block_bytes = 4ull << 20;
  options.preallocate_bytes_per_class = 1ull << 20;
  options.io_contexts = 4;
  options.io_buffer_bytes = 1ull << 20;
  return options;
}

inline uint64_t total_free_blocks(const ChunkEngineStats& stats) {
  uint64_t free = 0;
  for (const auto& block_class : stats.classes) free += block_class.free_blocks;
  return free;
}
inline uint64_t total_used_blocks(const ChunkEngineStats& stats) {
  uint64_t used = 0;
  for (const auto& block_class : stats.classes) used += block_class.total_blocks - block_class.free_blocks;
  return used;
}

// Overwrites `count` bytes of a file at `offset` with 0xEE and syncs (what a bad disk or a reused block does).
inline void scribble(const std::string& path, uint64_t offset, size_t count) {
  const int fd = ::open(path.c_str(), O_WRONLY);
  ASSERT_GE(fd, 0) << path << ": " << std::strerror(errno);
  std::vector<char> junk(count, static_cast<char>(0xEE));
  ASSERT_EQ(::pwrite(fd, junk.data(), junk.size(), static_cast<off_t>(offset)), static_cast<ssize_t>(count));
  ASSERT_EQ(::fsync(fd), 0);
  ::close(fd);
}

}  // namespace ff::fs::testing
