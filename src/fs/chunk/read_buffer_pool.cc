#include "read_buffer_pool.h"

#include <bit>
#include <cstdlib>

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

}  // namespace

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
    void* raw = std::aligned_alloc(kAlignment, (bytes + kAlignment - 1) / kAlignment * kAlignment);
    if (raw == nullptr) return nullptr;
    acquired_.fetch_add(1, std::memory_order_relaxed);
    return std::shared_ptr<std::byte>(static_cast<std::byte*>(raw), [](std::byte* p) { std::free(p); });
  }
  std::byte* buffer = nullptr;
  {
    std::lock_guard lock(mutex_);
    auto& buffers = idle_[static_cast<size_t>(size_class)];
    if (!buffers.empty()) {
      buffer = buffers.back();
      buffers.pop_back();
      idle_bytes_ -= class_bytes(size_class);
    }
  }
  if (buffer != nullptr) {
    reused_.fetch_add(1, std::memory_order_relaxed);
  } else {
    buffer = static_cast<std::byte*>(std::aligned_alloc(kAlignment, class_bytes(size_class)));
    if (buffer == nullptr) return nullptr;
  }
  acquired_.fetch_add(1, std::memory_order_relaxed);
  // The deleter holds the pool: a buffer released after the engine closed still has somewhere to go.
  return std::shared_ptr<std::byte>(buffer, [pool = shared_from_this(), size_class](std::byte* p) {
    pool->release(p, size_class);
  });
}

void ReadBufferPool::release(std::byte* buffer, int size_class) {
  const uint64_t size = class_bytes(size_class);
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
