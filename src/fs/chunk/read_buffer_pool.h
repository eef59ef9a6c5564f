// ReadBufferPool: recycled 4 KiB-aligned buffers for ChunkEngine::read_shared.
//
// A read's buffer is handed on to the RPC layer (it becomes the reply's gRPC slice) and is released on
// whatever thread drops the last reference, usually gRPC's, long after read_shared returned. A fresh
// 1-4 MiB buffer per read costs a page fault and a zeroed page per 4 KiB (the kernel's clear_page was
// the top symbol of ff-storage under 1 MiB reads); a recycled one is already mapped.
//
// Buffers come in power-of-two size classes from 4 KiB up; a request is served from the smallest class
// that holds it. Idle buffers are kept up to a byte bound (`max_idle_bytes`, all classes together);
// beyond it a released buffer is freed. Buffers are handed out as SharedBytes-compatible owners: the
// deleter returns the buffer to the pool, which it keeps alive (a buffer may outlive the engine).
//
// Buffers of kHugeFrom (1 MiB) and more sit on 2 MiB-aligned memory marked MADV_HUGEPAGE, so that the kernel backs
// them with transparent huge pages where it offers them: an O_DIRECT transfer then pins one page per 2 MiB instead of
// 512. On the 2-core VM a 1 MiB O_DIRECT read into such a buffer took 386 us against 640 into 4 KiB pages
// (docs/fs-client.md, "What a read at P = 1 costs"). A 1 MiB buffer then takes a whole 2 MiB page; the idle bound
// counts that.
//
// Thread-safety: acquire and the release of a buffer may run on any thread (one mutex, held for a
// vector push/pop).
#pragma once

#include <array>
#include <atomic>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <mutex>
#include <vector>

namespace ff::fs::chunk_internal {

class ReadBufferPool : public std::enable_shared_from_this<ReadBufferPool> {
 public:
  static constexpr uint64_t kAlignment = 4096;
  static constexpr int kClasses = 16;  // 4 KiB .. 128 MiB
  static constexpr uint64_t kHugeFrom = 1ull << 20;  // buffers this large and larger: on huge pages

  // max_idle_bytes: bound on the bytes of idle buffers kept for reuse (0: never keep one).
  static std::shared_ptr<ReadBufferPool> create(uint64_t max_idle_bytes);
  ~ReadBufferPool();

  ReadBufferPool(const ReadBufferPool&) = delete;
  ReadBufferPool& operator=(const ReadBufferPool&) = delete;

  // A 4 KiB-aligned buffer of at least `bytes` bytes (bytes > 0), owned by the returned pointer; when
  // the last reference is dropped the buffer goes back to the pool (or is freed). nullptr when memory
  // is exhausted. Contents are unspecified (a recycled buffer holds an earlier read's bytes).
  std::shared_ptr<std::byte> acquire(uint64_t bytes);

  struct Stats {
    uint64_t acquired = 0;   // acquire() calls that returned a buffer
    uint64_t reused = 0;     // of those, served from an idle buffer
    uint64_t idle_bytes = 0; // bytes of idle buffers now
  };
  Stats stats() const;

 private:
  explicit ReadBufferPool(uint64_t max_idle_bytes) : max_idle_bytes_(max_idle_bytes) {}
  void release(std::byte* buffer, int size_class);

  const uint64_t max_idle_bytes_;
  mutable std::mutex mutex_;
  std::array<std::vector<std::byte*>, kClasses> idle_;  // guarded by mutex_
  uint64_t idle_bytes_ = 0;                             // guarded by mutex_
  std::atomic<uint64_t> acquired_{0};
  std::atomic<uint64_t> reused_{0};
};

// Whether this kernel gives transparent huge pages to memory marked MADV_HUGEPAGE (its mode is "always" or
// "madvise"), read once.
bool huge_pages_available();

// A process-wide pool (up to 64 MiB of idle buffers) for 4 KiB-aligned I/O buffers outside any engine: a
// client's local reads and the write payloads an RPC server receives. Never destroyed (buffers may be
// released on threads still running at exit).
ReadBufferPool& process_io_buffers();

}  // namespace ff::fs::chunk_internal
