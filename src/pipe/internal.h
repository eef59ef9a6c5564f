// Helpers shared by the pipe sources; not a public header.
#pragma once

#include <cstdint>

#include "ff/pipe/schedule.h"

namespace ff::pipe {

// Dense index of (micro-batch, stage, direction), so per-task state lives in flat vectors.
class TaskIndex {
 public:
  static Result<TaskIndex> make(const Schedule& schedule) {
    // NOTE: flat vectors beat hash maps by ~10x here; the bound keeps them below ~100 MB.
    constexpr int64_t kMaxTasks = int64_t{1} << 24;
    const int64_t size = int64_t{schedule.num_micro_batches} * schedule.num_stages * schedule.num_directions;
    if (size > kMaxTasks) {
      return invalid_argument("schedule has {} (micro-batch, stage, direction) tasks, above the limit {}", size,
                              kMaxTasks);
    }
    return TaskIndex(schedule.num_stages, schedule.num_micro_batches, static_cast<size_t>(size));
  }
  size_t operator()(const Task& task) const {
    return (static_cast<size_t>(task.direction) * num_stages_ + task.stage) * num_micro_batches_ + task.micro_batch;
  }
  size_t size() const { return size_; }

 private:
  TaskIndex(int32_t num_stages, int32_t num_micro_batches, size_t size)
      : num_stages_(num_stages), num_micro_batches_(num_micro_batches), size_(size) {}
  size_t num_stages_;
  size_t num_micro_batches_;
  size_t size_;
};

// A message's identity: its kind and the consumer's task (unique within a step).
inline uint64_t transfer_key(const Transfer& transfer, const TaskIndex& index) {
  return uint64_t{index(transfer.task)} * 2 + (transfer.kind == TransferKind::kGradient ? 1 : 0);
}

}  // namespace ff::pipe
