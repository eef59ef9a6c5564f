// IoContext and IoContextPool: the chunk engine's I/O machinery (internal to ff::fs_chunk).
//
// A context is one io_uring ring plus one 4 KiB-aligned buffer; the pool holds a fixed number of them,
// all allocated at open. A caller borrows a context for the duration of one engine call, so at most
// `io_contexts` calls do I/O at once and a ring is only ever used by one thread at a time (no locking
// around submission and completion). Where io_uring cannot be set up (a kernel or seccomp policy that
// refuses it), contexts use pread/pwrite instead; the engine logs that once.
#pragma once

#include <liburing.h>

#include <condition_variable>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <mutex>
#include <span>
#include <vector>

#include "ff/common/result.h"
#include "ff/common/status.h"

namespace ff::fs::chunk_internal {

inline constexpr uint64_t kIoAlignment = 4096;

inline uint64_t align_up(uint64_t value, uint64_t alignment) { return (value + alignment - 1) / alignment * alignment; }
inline uint64_t align_down(uint64_t value, uint64_t alignment) { return value / alignment * alignment; }

// One read or write of `length` bytes at `offset` of `fd`. With O_DIRECT, data, offset and length are
// multiples of kIoAlignment.
struct IoOp {
  int fd = -1;
  uint64_t offset = 0;
  std::byte* data = nullptr;
  uint64_t length = 0;
  bool write = false;
};

// Called once for each op as soon as all its bytes have moved, while later ops may still be in flight
// (so a reader verifies one piece while the disk reads the next); an error stops submission.
struct IoOnComplete {
  void* context = nullptr;
  Status (*function)(void* context, size_t op_index) = nullptr;
};

struct IoSettings {
  bool use_io_uring = true;
  bool dsync_writes = false;  // RWF_DSYNC on every write (O_DIRECT data files with sync_data)
  uint32_t queue_depth = 32;
  uint64_t buffer_bytes = 4ull << 20;
  uint32_t timeout_ms = 30000;
};

class IoContext {
 public:
  // Sets up the ring (falling back to pread/pwrite when io_uring is refused; *uring_ok says which) and
  // allocates the aligned buffer.
  static Result<std::unique_ptr<IoContext>> create(const IoSettings& settings, bool* uring_ok);
  ~IoContext();
  IoContext(const IoContext&) = delete;
  IoContext& operator=(const IoContext&) = delete;

  std::span<std::byte> buffer() { return {buffer_, settings_.buffer_bytes}; }

  using OnComplete = IoOnComplete;

  // Runs all ops (at most queue_depth in flight), resubmitting the rest of short transfers; returns the
  // first error naming the file offset (or the first error of on_complete). A read that hits end of file
  // is an io_error.
  Status run(std::span<const IoOp> ops, OnComplete on_complete = {});
  Status run_one(const IoOp& op) { return run(std::span<const IoOp>(&op, 1)); }

  // False after a completion wait timed out: in-flight I/O may still target the buffer, so the pool
  // never lends this context again.
  bool usable() const { return usable_; }

 private:
  IoContext() = default;
  Status run_uring(std::span<const IoOp> ops, OnComplete on_complete);
  Status run_sync(std::span<const IoOp> ops, OnComplete on_complete);

  IoSettings settings_;
  bool have_ring_ = false;
  bool usable_ = true;
  io_uring ring_{};
  std::byte* buffer_ = nullptr;
};

class IoContextPool {
 public:
  static Result<std::unique_ptr<IoContextPool>> create(const IoSettings& settings, uint32_t count);

  // A borrowed context, returned to the pool on destruction.
  class Lease {
   public:
    Lease(IoContextPool* pool, IoContext* context) : pool_(pool), context_(context) {}
    Lease(Lease&& other) noexcept : pool_(other.pool_), context_(other.context_) { other.context_ = nullptr; }
    Lease(const Lease&) = delete;
    Lease& operator=(const Lease&) = delete;
    Lease& operator=(Lease&&) = delete;
    ~Lease() {
      if (context_ != nullptr) pool_->give_back(context_);
    }
    IoContext* operator->() const { return context_; }
    IoContext& operator*() const { return *context_; }

   private:
    IoContextPool* pool_;
    IoContext* context_;
  };

  // Waits up to timeout_ms for a free context; deadline_exceeded after that.
  Result<Lease> borrow();
  bool uring() const { return uring_; }

 private:
  void give_back(IoContext* context);

  IoSettings settings_;
  bool uring_ = false;
  std::vector<std::unique_ptr<IoContext>> contexts_;
  std::mutex mutex_;
  std::condition_variable available_;
  std::vector<IoContext*> free_;  // guarded by mutex_
};

}  // namespace ff::fs::chunk_internal
