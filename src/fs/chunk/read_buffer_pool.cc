#include "read_buffer_pool.h"

#include <sys/mman.h>

#include <bit>
#include <cstdlib>
#include <fstream>
#include <string>

#include "ff/common/assert.h"

namespace ff::fs::chunk_internal {

namespace {

// The class of a request: class c holds 4 KiB << c bytes; -1 when larger than the largest class.
int class_of(uint64_t bytes) {
  const uint64_t rounded = std::bit_ceil(std::max<uint64_t>(bytes, ReadBufferPool::kAlignment));
  const int size_class = std::countr_zero(rounded) - std::countr_zero(ReadBufferPool::kAlignment);
  return size_class < ReadBufferPool::kClasses ? size_class : -1;
}

uint64_t class_bytes(int size_class) { return ReadBufferPool::kAlignment << size_class; }

constexpr uint64_t kHugePage = 2ull << 20;

// The memory a buffer of `bytes` takes: 1 MiB and more on whole 2 MiB pages when the kernel gives huge pages.
uint64_t footprint(uint64_t bytes) {
  if (bytes < ReadBufferPool::kHugeFrom || !huge_pages_available()) return bytes;
  return (bytes + kHugePage - 1) / kHugePage * kHugePage;
}

std::byte* allocate(uint64_t bytes) {
  if (bytes < ReadBufferPool::kHugeFrom || !huge_pages_available()) {
    return static_cast<std::byte*>(std::aligned_alloc(ReadBufferPool::kAlignment, bytes));
  }
  const uint64_t size = footprint(bytes);
  void* raw = std::aligned_alloc(kHugePage, size);
  // Best effort: without huge pages the buffer works the same, on 4 KiB pages.
  if (raw != nullptr) ::madvise(raw, size, MADV_HUGEPAGE);
  return static_cast<std::byte*>(raw);
}

}  // namespace

bool huge_pages_available() {
  static const bool available = [] {
    std::ifstream in("/sys/kernel/mm/transparent_hugepage/enabled");
    std::string modes;
    std::getline(in, modes);
    return modes.find("[always]") != std::string::npos || modes.find("[madvise]") != std::string::npos;
  }();
  return available;
}

std::shared_ptr<ReadBufferPool> ReadBufferPool::create(uint64_t max_idle_bytes) {
  return std::shared_ptr<ReadBufferPool>(new ReadBufferPool(max_idle_bytes));
}

ReadBufferPool::~ReadBufferPool() {
  for (auto& buffers : idle_) {
    for (std::byte* buffer : buffers) std::free(buffer);
  }
}

std::shared_ptr<std::byte> ReadBufferPool::acquire(uint64_t bytes) {
  FF_ASSERT(bytes > 0, "read buffer of 0 bytes");
  const int size_class = class_of(bytes);
  if (size_class < 0) {
    // Larger than any class: not pooled.
    std::byte* raw = allocate((bytes + kAlignment - 1) / kAlignment * kAlignment);
    if (raw == nullptr) return nullptr;
    acquired_.fetch_add(1, std::memory_order_relaxed);
    return std::shared_ptr<std::byte>(raw, [](std::byte* p) { std::free(p); });
  }
  std::byte* buffer = nullptr;
  {
    std::lock_guard lock(mutex_);
    auto& buffers = idle_[static_cast<size_t>(size_class)];
    if (!buffers.empty()) {
      buffer = buffers.back();
      buffers.pop_back();
      idle_bytes_ -= footprint(class_bytes(size_class));
    }
  }
  if (buffer != nullptr) {
    reused_.fetch_add(1, std::memory_order_relaxed);
  } else {
    buffer = allocate(class_bytes(size_class));
    if (buffer == nullptr) return nullptr;
  }
  acquired_.fetch_add(1, std::memory_order_relaxed);
  // The deleter holds the pool: a buffer released after the engine closed still has somewhere to go.
  return std::shared_ptr<std::byte>(buffer, [pool = shared_from_this(), size_class](std::byte* p) {
    pool->release(p, size_class);
  });
}

void ReadBufferPool::release(std::byte* buffer, int size_class) {
  const uint64_t size = footprint(class_bytes(size_class));
  {
    std::lock_guard lock(mutex_);
    if (idle_bytes_ + size <= max_idle_bytes_) {
      idle_[static_cast<size_t>(size_class)].push_back(buffer);
      idle_bytes_ += size;
      return;
    }
  }
  std::free(buffer);
}

ReadBufferPool::Stats ReadBufferPool::stats() const {
  Stats stats;
  stats.acquired = acquired_.load(std::memory_order_relaxed);
  stats.reused = reused_.load(std::memory_order_relaxed);
  std::lock_guard lock(mutex_);
  stats.idle_bytes = idle_bytes_;
  return stats;
}

ReadBufferPool& process_io_buffers() {
  static std::shared_ptr<ReadBufferPool>* pool =
      new std::shared_ptr<ReadBufferPool>(ReadBufferPool::create(64ull << 20));
  return **pool;
}

}  // namespace ff::fs::chunk_internal
