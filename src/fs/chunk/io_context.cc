#include "io_context.h"

#include <fcntl.h>
#include <sys/uio.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <cstdlib>
#include <cstring>

#include "ff/common/assert.h"
#include "ff/common/log.h"

namespace ff::fs::chunk_internal {

Result<std::unique_ptr<IoContext>> IoContext::create(const IoSettings& settings, bool* uring_ok) {
  FF_ASSERT(settings.buffer_bytes % kIoAlignment == 0 && settings.buffer_bytes > 0);
  std::unique_ptr<IoContext> context(new IoContext());
  context->settings_ = settings;
  void* memory = nullptr;
  if (posix_memalign(&memory, kIoAlignment, settings.buffer_bytes) != 0) {
    return resource_exhausted("cannot allocate a {}-byte aligned I/O buffer", settings.buffer_bytes);
  }
  context->buffer_ = static_cast<std::byte*>(memory);
  std::memset(context->buffer_, 0, settings.buffer_bytes);
  *uring_ok = false;
  if (settings.use_io_uring) {
    const int rc = io_uring_queue_init(settings.queue_depth, &context->ring_, 0);
    if (rc == 0) {
      context->have_ring_ = true;
      *uring_ok = true;
    } else {
      FF_LOG_DEBUG("io_uring_queue_init({}) failed: {}", settings.queue_depth, std::strerror(-rc));
    }
  }
  return context;
}

IoContext::~IoContext() {
  if (have_ring_) io_uring_queue_exit(&ring_);
  // NOTE: a context whose wait timed out may still have I/O in flight into its buffer; leaking the buffer
  // is the safe choice (it only happens after a 30 s stall of the disk).
  if (usable_) std::free(buffer_);
}

Status IoContext::run(std::span<const IoOp> ops, OnComplete on_complete) {
  FF_ASSERT(usable_, "an I/O context whose wait timed out was used again");
  return have_ring_ ? run_uring(ops, on_complete) : run_sync(ops, on_complete);
}

Status IoContext::run_sync(std::span<const IoOp> ops, OnComplete on_complete) {
  for (size_t index = 0; index < ops.size(); ++index) {
    const IoOp& op = ops[index];
    uint64_t done = 0;
    while (done < op.length) {
      ssize_t n = 0;
      if (op.write) {
        iovec vector{op.data + done, op.length - done};
        n = pwritev2(op.fd, &vector, 1, static_cast<off_t>(op.offset + done), settings_.dsync_writes ? RWF_DSYNC : 0);
      } else {
        n = pread(op.fd, op.data + done, op.length - done, static_cast<off_t>(op.offset + done));
      }
      if (n < 0 && errno == EINTR) continue;
      if (n < 0) {
        return errno_error(errno, fmt::format("{} of {} bytes at file offset {}", op.write ? "write" : "read",
                                              op.length - done, op.offset + done));
      }
      if (n == 0) {
        return io_error("{} of {} bytes at file offset {} hit end of file", op.write ? "write" : "read",
                        op.length - done, op.offset + done);
      }
      done += static_cast<uint64_t>(n);
    }
    if (on_complete.function != nullptr) FF_RETURN_IF_ERROR(on_complete.function(on_complete.context, index));
  }
  return Status::ok();
}

Status IoContext::run_uring(std::span<const IoOp> ops, OnComplete on_complete) {
  // Progress of each op; an op is resubmitted from `done` after a short transfer.
  struct Progress {
    uint64_t done = 0;
  };
  // NOTE: ops per call are few (one per piece of at most buffer_bytes); a small vector here is not on the
  // per-byte path.
  std::vector<Progress> progress(ops.size());
  std::vector<size_t> queue;  // op indices waiting for submission
  queue.reserve(ops.size());
  for (size_t i = 0; i < ops.size(); ++i) {
    if (ops[i].length > 0) queue.push_back(i);
  }
  size_t queue_head = 0;
  uint32_t in_flight = 0;
  Status first_error;
  const auto submit = [&](size_t index) {
    const IoOp& op = ops[index];
    io_uring_sqe* sqe = io_uring_get_sqe(&ring_);
    FF_ASSERT(sqe != nullptr, "ring of depth {} full with {} in flight", settings_.queue_depth, in_flight);
    const uint64_t done = progress[index].done;
    if (op.write) {
      io_uring_prep_write(sqe, op.fd, op.data + done, static_cast<unsigned>(op.length - done), op.offset + done);
      if (settings_.dsync_writes) sqe->rw_flags = RWF_DSYNC;
    } else {
      io_uring_prep_read(sqe, op.fd, op.data + done, static_cast<unsigned>(op.length - done), op.offset + done);
    }
    io_uring_sqe_set_data64(sqe, index);
    ++in_flight;
  };
  while (queue_head < queue.size() || in_flight > 0) {
    while (queue_head < queue.size() && in_flight < settings_.queue_depth && first_error.is_ok()) {
      submit(queue[queue_head++]);
    }
    if (in_flight == 0) break;  // an error stopped submission and everything in flight has completed
    const int submitted = io_uring_submit(&ring_);
    if (submitted < 0 && submitted != -EBUSY && submitted != -EAGAIN) {
      return errno_error(-submitted, "io_uring_submit");
    }
    io_uring_cqe* cqe = nullptr;
    __kernel_timespec timeout{};
    timeout.tv_sec = settings_.timeout_ms / 1000;
    timeout.tv_nsec = static_cast<long long>(settings_.timeout_ms % 1000) * 1000000;
    int rc = io_uring_wait_cqe_timeout(&ring_, &cqe, &timeout);
    if (rc == -EINTR) continue;
    if (rc == -ETIME) {
      usable_ = false;
      return deadline_exceeded("an I/O did not complete within {} ms ({} in flight)", settings_.timeout_ms, in_flight);
    }
    if (rc < 0) return errno_error(-rc, "io_uring_wait_cqe_timeout");
    // Drain every completion that is ready.
    unsigned head = 0;
    unsigned seen = 0;
    io_uring_for_each_cqe(&ring_, head, cqe) {
      ++seen;
      --in_flight;
      const size_t index = static_cast<size_t>(io_uring_cqe_get_data64(cqe));
      const IoOp& op = ops[index];
      const int res = cqe->res;
      if (res == -EAGAIN || res == -EINTR) {
        queue.push_back(index);
      } else if (res < 0) {
        if (first_error.is_ok()) {
          first_error =
              errno_error(-res, fmt::format("{} of {} bytes at file offset {}", op.write ? "write" : "read",
                                            op.length - progress[index].done, op.offset + progress[index].done));
        }
      } else if (res == 0) {
        if (first_error.is_ok()) {
          first_error = io_error("{} of {} bytes at file offset {} hit end of file", op.write ? "write" : "read",
                                 op.length - progress[index].done, op.offset + progress[index].done);
        }
      } else {
        progress[index].done += static_cast<uint64_t>(res);
        if (progress[index].done < op.length) {
          queue.push_back(index);
        } else if (on_complete.function != nullptr && first_error.is_ok()) {
          first_error = on_complete.function(on_complete.context, index);
        }
      }
    }
    io_uring_cq_advance(&ring_, seen);
  }
  return first_error;
}

Result<std::unique_ptr<IoContextPool>> IoContextPool::create(const IoSettings& settings, uint32_t count) {
  FF_ASSERT(count > 0);
  std::unique_ptr<IoContextPool> pool(new IoContextPool());
  pool->settings_ = settings;
  pool->uring_ = settings.use_io_uring;
  for (uint32_t i = 0; i < count; ++i) {
    bool uring_ok = false;
    FF_ASSIGN_OR_RETURN(std::unique_ptr<IoContext> context, IoContext::create(settings, &uring_ok));
    pool->uring_ = pool->uring_ && uring_ok;
    pool->free_.push_back(context.get());
    pool->contexts_.push_back(std::move(context));
  }
  return pool;
}

Result<IoContextPool::Lease> IoContextPool::borrow() {
  std::unique_lock lock(mutex_);
  if (!available_.wait_for(lock, std::chrono::milliseconds(settings_.timeout_ms), [&] { return !free_.empty(); })) {
    return deadline_exceeded("no free I/O context within {} ms ({} contexts, all busy)", settings_.timeout_ms,
                             contexts_.size());
  }
  IoContext* context = free_.back();
  free_.pop_back();
  return Lease(this, context);
}

void IoContextPool::give_back(IoContext* context) {
  if (!context->usable()) {
    FF_LOG_ERROR("an I/O context is retired after a completion timeout");
    return;
  }
  {
    std::lock_guard lock(mutex_);
    free_.push_back(context);
  }
  available_.notify_one();
}

}  // namespace ff::fs::chunk_internal
