// read_touch_probe: what touching the bytes an O_DIRECT read just brought in costs, on this host's disk.
// Random reads of one block at a time (depth 1, as fio --iodepth=1) into one aligned buffer on 4 KiB pages, three
// ways: the bytes never touched (what fio measures), one byte of each 4 KiB page read, and the CRC32C of every byte
// (what a checked read does); then two more into a buffer on huge pages (2 MiB-aligned, MADV_HUGEPAGE): never
// touched, and the CRC32C of each 64 KiB followed by its copy into the 4 KiB-page buffer (what a local read for a
// caller's buffer does since). Per way: the mean time of the read call and of the pass over the bytes. One JSON line
// per way, the ways interleaved over --rounds rounds (docs/fs-client.md, "What a read at P = 1 costs").
#include <fcntl.h>
#include <sys/mman.h>
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
  constexpr int kWays = 5;
  const char* ways[kWays] = {"untouched", "one byte per page", "crc32c of every byte", "huge pages, untouched",
                             "huge pages, crc32c and copy per 64 KiB"};
  double read_us[kWays] = {}, touch_us[kWays] = {};
  std::mt19937_64 rng(7);
  uint32_t sink = 0;
  for (int round = 0; round < rounds; ++round) {
    for (int way = 0; way < kWays; ++way) {
      std::byte* into = way >= 3 ? huge.get() : buffer.get();
      for (int i = 0; i < reads; ++i) {
        const off_t offset = static_cast<off_t>(rng() % (file_bytes / block) * block);
        const auto start = Clock::now();
        if (::pread(fd, into, block, offset) != static_cast<ssize_t>(block)) return std::perror("pread"), 1;
        const auto read = Clock::now();
        if (way == 1) {
          for (uint64_t b = 0; b < block; b += 4096) sink += static_cast<uint32_t>(buffer.get()[b]);
        } else if (way == 2) {
          sink ^= ff::fs::crc32c(std::span<const std::byte>(buffer.get(), block));
        } else if (way == 4) {
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
