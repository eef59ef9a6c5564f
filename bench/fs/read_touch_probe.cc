// read_touch_probe: what touching the bytes an O_DIRECT read just brought in costs, on this host's disk.
// Random reads of one block at a time (depth 1, as fio --iodepth=1) into one aligned buffer on 4 KiB pages, three
// ways: the bytes never touched (what fio measures), one byte of each 4 KiB page read, and the CRC32C of every byte
// (what a checked read does); then two more into a buffer on huge pages (2 MiB-aligned, MADV_HUGEPAGE): never
// touched, and the CRC32C of each 64 KiB followed by its copy into the 4 KiB-page buffer (what a local read for a
// caller's buffer does since); then the client's own local read (read_local_bytes) three ways, and the huge-page way
// with the reads landing in 8 buffers in turn. Per way: the mean time of the read call and of the pass over the
// bytes. One JSON line per way, the ways interleaved over --rounds rounds (docs/fs-client.md, "What a read at P = 1
// costs", "The local read itself beside plain reads").
#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <CLI/CLI.hpp>
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <nlohmann/json.hpp>
#include <random>
#include <string>

#include "ff/fs/crc32c.h"
#include "ff/fs/local_read.h"

namespace {

using Clock = std::chrono::steady_clock;

double micros(Clock::time_point a, Clock::time_point b) {
  return std::chrono::duration<double, std::micro>(b - a).count();
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"read_touch_probe: the cost of touching freshly read O_DIRECT bytes (docs/fs-client.md)"};
  std::string path;
  uint64_t file_mb = 128, block = 1 << 20;
  int reads = 500, rounds = 3;
  app.add_option("--file", path, "file to read (created with --file-mb MiB when shorter)")->required();
  app.add_option("--file-mb", file_mb, "file size in MiB")->check(CLI::Range(1, 1 << 20));
  app.add_option("--block-bytes", block, "bytes per read, a multiple of 4096")->check(CLI::Range(4096, 64 << 20));
  app.add_option("--reads", reads, "reads per way and round")->check(CLI::PositiveNumber);
  app.add_option("--rounds", rounds, "rounds (the ways interleaved)")->check(CLI::PositiveNumber);
  CLI11_PARSE(app, argc, argv);
  if (block % 4096 != 0) {
    std::fprintf(stderr, "--block-bytes %llu: expected a multiple of 4096 (O_DIRECT)\n",
                 static_cast<unsigned long long>(block));
    return 2;
  }
  const uint64_t file_bytes = file_mb << 20;
  if (file_bytes < block) {
    std::fprintf(stderr, "--file-mb %llu: expected at least one block of %llu bytes\n",
                 static_cast<unsigned long long>(file_mb), static_cast<unsigned long long>(block));
    return 2;
  }
  std::unique_ptr<std::byte, decltype(&std::free)> buffer(static_cast<std::byte*>(std::aligned_alloc(4096, block)),
                                                          &std::free);
  {
    int fd = ::open(path.c_str(), O_WRONLY | O_CREAT, 0644);
    if (fd < 0) return std::perror(path.c_str()), 1;
    const off_t size = ::lseek(fd, 0, SEEK_END);
    for (uint64_t offset = static_cast<uint64_t>(size); offset < file_bytes; offset += block) {
      for (uint64_t i = 0; i < block; ++i) buffer.get()[i] = static_cast<std::byte>((offset + i) * 131);
      if (::pwrite(fd, buffer.get(), block, static_cast<off_t>(offset)) != static_cast<ssize_t>(block)) {
        return std::perror("write"), 1;
      }
    }
    ::fsync(fd);
    ::close(fd);
  }
  const int fd = ::open(path.c_str(), O_RDONLY | O_DIRECT);
  if (fd < 0) return std::perror(path.c_str()), 1;
  const uint64_t huge_bytes = (block + (2 << 20) - 1) / (2 << 20) * (2 << 20);
  std::unique_ptr<std::byte, decltype(&std::free)> huge(
      static_cast<std::byte*>(std::aligned_alloc(2 << 20, huge_bytes)), &std::free);
  ::madvise(huge.get(), huge_bytes, MADV_HUGEPAGE);
  std::memset(huge.get(), 0, huge_bytes);
  // Ways 5-7 are the client's own local read (read_local_bytes) of the block as a chunk version with 4 KiB
  // CRC segments: staged for the 4 KiB-page buffer in pieces of 256 KiB (the default), staged as one read, and into
  // a pool buffer of its own in pieces (a read ahead).
  struct stat info {};
  if (::fstat(fd, &info) != 0) return std::perror("fstat"), 1;
  ff::fs::LocalExtent extent{.path = path,
                             .device = static_cast<uint64_t>(info.st_dev),
                             .inode = static_cast<uint64_t>(info.st_ino),
                             .verify_bytes = block,
                             .count = block,
                             .segment_bytes = 4096,
                             .segment_crcs = std::vector<uint32_t>(block / 4096)};
  // Way 8: as way 4, the reads landing in kRotate huge-page buffers in turn instead of one.
  constexpr int kRotate = 8;
  std::unique_ptr<std::byte, decltype(&std::free)> rotating(
      static_cast<std::byte*>(std::aligned_alloc(2 << 20, huge_bytes * kRotate)), &std::free);
  ::madvise(rotating.get(), huge_bytes * kRotate, MADV_HUGEPAGE);
  std::memset(rotating.get(), 0, huge_bytes * kRotate);
  constexpr int kWays = 9;
  const char* ways[kWays] = {"untouched",
                             "one byte per page",
                             "crc32c of every byte",
                             "huge pages, untouched",
                             "huge pages, crc32c and copy per 64 KiB",
                             "local read for the caller, pieces of 256 KiB",
                             "local read for the caller, one read",
                             "local read into its own buffer, pieces of 256 KiB",
                             "huge pages, 8 buffers in turn, crc32c and copy per 64 KiB"};
  double read_us[kWays] = {}, touch_us[kWays] = {};
  std::mt19937_64 rng(7);
  uint32_t sink = 0;
  for (int round = 0; round < rounds; ++round) {
    for (int way = 0; way < kWays; ++way) {
      std::byte* into = way >= 3 ? huge.get() : buffer.get();
      for (int i = 0; i < reads; ++i) {
        if (way == 8) into = rotating.get() + static_cast<uint64_t>(i % kRotate) * huge_bytes;
        const off_t offset = static_cast<off_t>(rng() % (file_bytes / block) * block);
        const auto start = Clock::now();
        if (way >= 5 && way <= 7) {
          extent.file_offset = static_cast<uint64_t>(offset);
          const std::span<std::byte> caller = way == 7 ? std::span<std::byte>() : std::span(buffer.get(), block);
          ff::Result<ff::fs::LocalBytes> bytes = ff::fs::read_local_bytes(extent, caller, way == 6 ? 0 : 256 << 10);
          if (!bytes.is_ok()) return std::fprintf(stderr, "%s\n", bytes.status().to_string().c_str()), 1;
          sink ^= bytes->crcs.front();
          read_us[way] += micros(start, Clock::now());
          continue;
        }
        if (::pread(fd, into, block, offset) != static_cast<ssize_t>(block)) return std::perror("pread"), 1;
        const auto read = Clock::now();
        if (way == 1) {
          for (uint64_t b = 0; b < block; b += 4096) sink += static_cast<uint32_t>(buffer.get()[b]);
        } else if (way == 2) {
          sink ^= ff::fs::crc32c(std::span<const std::byte>(buffer.get(), block));
        } else if (way == 4 || way == 8) {
          for (uint64_t at = 0; at < block; at += 64 << 10) {
            const uint64_t n = std::min<uint64_t>(64 << 10, block - at);
            sink ^= ff::fs::crc32c(std::span<const std::byte>(into + at, n));
            std::memcpy(buffer.get() + at, into + at, n);
          }
        }
        const auto end = Clock::now();
        read_us[way] += micros(start, read);
        touch_us[way] += micros(read, end);
      }
    }
  }
  ::close(fd);
  for (int way = 0; way < kWays; ++way) {
    const double n = static_cast<double>(reads) * rounds;
    const double per_read = (read_us[way] + touch_us[way]) / n;
    nlohmann::json line = {{"way", ways[way]},
                           {"block_bytes", block},
                           {"reads", reads * rounds},
                           {"read_us", read_us[way] / n},
                           {"touch_us", touch_us[way] / n},
                           {"MB_per_s", static_cast<double>(block) / per_read},
                           {"sink", sink & 1}};
    std::printf("%s\n", line.dump().c_str());
  }
  return 0;
}
