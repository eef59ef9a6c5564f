// Executor: one thread per rank, bounded keyed channels between ranks, every wait with a timeout.
#include "ff/pipe/executor.h"

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <deque>
#include <mutex>
#include <thread>
#include <unordered_map>

#include "ff/common/clock.h"
#include "ff/pipe/validate.h"
#include "internal.h"

namespace ff::pipe {

namespace {

using SteadyClock = std::chrono::steady_clock;

// Shared by all ranks: the first error stops every other rank's waits.
struct StepState {
  std::atomic<bool> aborted{false};
  std::mutex mutex;  // Guards first_error.
  Status first_error;
  void fail(Status status) {
    std::lock_guard<std::mutex> lock(mutex);
    if (first_error.is_ok()) first_error = std::move(status);
    aborted.store(true, std::memory_order_release);
  }
};

// A directed link's messages, matched by key (not arrival order), at most `capacity` at a time.
class Channel {
 public:
  explicit Channel(size_t capacity) : capacity_(capacity) {}

  // Returns false on timeout or abort.
  bool send(uint64_t key, Vector data, SteadyClock::time_point deadline, const StepState& step) {
    std::unique_lock<std::mutex> lock(mutex_);
    if (!wait(lock, deadline, step, [&] { return messages_.size() < capacity_; })) return false;
    messages_.push_back(Message{key, std::move(data)});
    changed_.notify_all();
    return true;
  }

  bool recv(uint64_t key, Vector& data, SteadyClock::time_point deadline, const StepState& step) {
    std::unique_lock<std::mutex> lock(mutex_);
    auto found = messages_.end();
    auto has_key = [&] {
      for (found = messages_.begin(); found != messages_.end(); ++found) {
        if (found->key == key) return true;
      }
      return false;
    };
    if (!wait(lock, deadline, step, has_key)) return false;
    data = std::move(found->data);
    messages_.erase(found);
    changed_.notify_all();
    return true;
  }

 private:
  struct Message {
    uint64_t key;
    Vector data;
  };

  // Waits in slices so an abort elsewhere is noticed within one slice; bounded by the deadline.
  template <typename Predicate>
  bool wait(std::unique_lock<std::mutex>& lock, SteadyClock::time_point deadline, const StepState& step,
            Predicate ready) {
    constexpr auto kSlice = std::chrono::milliseconds(20);
    while (!ready()) {
      if (step.aborted.load(std::memory_order_acquire)) return false;
      const auto now = SteadyClock::now();
      if (now >= deadline) return false;
      changed_.wait_until(lock, std::min(deadline, now + kSlice));
    }
    return true;
  }

  const size_t capacity_;
  std::mutex mutex_;  // Guards messages_.
  std::condition_variable changed_;
  std::deque<Message> messages_;
};

std::string describe_message(TransferKind kind, const Task& task, int32_t src_rank) {
  return fmt::format("the {} of mb={} s={} d={} from rank {}", kind == TransferKind::kActivation ? "activation" : "gradient",
                     task.micro_batch, task.stage, task.direction, src_rank);
}

class RankRunner {
 public:
  RankRunner(const Schedule& schedule, const MlpModel& model, const Batch& batch, const ExecutorOptions& options,
             const TaskIndex& index, std::vector<std::unique_ptr<Channel>>& channels, StepState& step, int32_t rank)
      : schedule_(schedule), batch_(batch), options_(options), index_(index), channels_(channels), step_(step),
        rank_(rank) {
    for (int32_t d = 0; d < schedule.num_directions; ++d) {
      for (int32_t s = 0; s < schedule.num_stages; ++s) {
        if (schedule.stage_rank[d][s] == rank) stages_[key(d, s)] = make_mlp_stage(model, s);
      }
    }
  }

  void run() {
    const std::vector<Op>& ops = schedule_.ranks[rank_];
    for (op_index_ = 0; op_index_ < ops.size(); ++op_index_) {
      Status status = run_op(ops[op_index_]);
      if (!status.is_ok()) {
        if (status.code() != StatusCode::kCancelled) step_.fail(std::move(status));
        return;
      }
    }
  }

  Stage& stage(int32_t direction, int32_t s) { return *stages_.at(key(direction, s)); }
  const std::unordered_map<int64_t, std::unique_ptr<Stage>>& stages() const { return stages_; }
  const Vector& losses() const { return losses_; }
  std::vector<int32_t>& loss_micro_batches() { return loss_micro_batches_; }
  double busy_s() const { return busy_s_; }
  const double* op_seconds() const { return op_seconds_; }
  const int64_t* op_counts() const { return op_counts_; }

 private:
  static int64_t key(int32_t direction, int32_t stage) { return int64_t{direction} << 32 | stage; }

  Status run_op(const Op& op) {
    switch (op.kind) {
      case OpKind::kForward: {
        FF_ASSIGN_OR_RETURN(Vector input, forward_input(op, op.task));
        const auto start = SteadyClock::now();
        Vector output = stage(op.task.direction, op.task.stage).forward(op.task.micro_batch, input);
        account(op, start);
        return forward_output(op, op.task, std::move(output));
      }
      case OpKind::kBackward:
      case OpKind::kBackwardInput: {
        FF_ASSIGN_OR_RETURN(Vector grad, backward_input(op, op.task));
        const auto start = SteadyClock::now();
        Vector input_grad = stage(op.task.direction, op.task.stage)
                                .backward(op.task.micro_batch, grad, op.kind == OpKind::kBackwardInput);
        account(op, start);
        return backward_output(op, op.task, std::move(input_grad));
      }
      case OpKind::kWeight: {
        const auto start = SteadyClock::now();
        stage(op.task.direction, op.task.stage).weight(op.task.micro_batch);
        account(op, start);
        return Status::ok();
      }
      case OpKind::kForwardBackward: {
        FF_ASSIGN_OR_RETURN(Vector input, forward_input(op, op.task));
        FF_ASSIGN_OR_RETURN(Vector grad, backward_input(op, op.backward));
        Vector output, input_grad;
        const auto start = SteadyClock::now();
        stage(op.task.direction, op.task.stage)
            .overlapped_forward_backward(op.task.micro_batch, input, output,
                                         stage(op.backward.direction, op.backward.stage), op.backward.micro_batch,
                                         grad, input_grad);
        account(op, start);
        FF_RETURN_IF_ERROR(forward_output(op, op.task, std::move(output)));
        return backward_output(op, op.backward, std::move(input_grad));
      }
    }
    FF_UNREACHABLE("op kind {}", static_cast<int>(op.kind));
  }

  void account(const Op& op, SteadyClock::time_point start) {
    const auto end = SteadyClock::now();
    const double seconds = std::chrono::duration<double>(end - start).count();
    busy_s_ += seconds;
    op_seconds_[static_cast<int>(op.kind)] += seconds;
    ++op_counts_[static_cast<int>(op.kind)];
    if (options_.recorder != nullptr) {
      trace::Recorder& recorder = *options_.recorder;
      const int64_t duration_ns = std::chrono::duration_cast<std::chrono::nanoseconds>(end - start).count();
      static constexpr const char* kNames[] = {"F", "B", "I", "W", "FB"};
      recorder.complete(kNames[static_cast<int>(op.kind)], "pipe.exec", recorder.now_ns() - duration_ns, duration_ns, "micro_batch",
                        op.task.micro_batch, trace::Track{kTracePid, rank_});
    }
  }

  Result<Vector> receive(const Op& op, TransferKind kind, const Task& task, int32_t src_rank) {
    // Same-rank hand-offs (DualPipeV's turn at the last rank) go through a local stash.
    const Transfer transfer{kind, task, src_rank, rank_};
    const uint64_t message_key = transfer_key(transfer, index_);
    if (src_rank == rank_) {
      auto it = local_.find(message_key);
      FF_ASSERT(it != local_.end(), "validated schedule: local {} missing", describe_message(kind, task, src_rank));
      Vector data = std::move(it->second);
      local_.erase(it);
      return data;
    }
    Vector data;
    const auto deadline = SteadyClock::now() + std::chrono::milliseconds(options_.timeout_ms);
    if (!channels_[link(src_rank, rank_)]->recv(message_key, data, deadline, step_)) {
      if (step_.aborted.load()) return cancelled("rank {} stopped: another rank failed", rank_);
      return deadline_exceeded("rank {} op #{} {}: timed out after {} ms waiting for {}", rank_, op_index_,
                               describe_op(op), options_.timeout_ms, describe_message(kind, task, src_rank));
    }
    if (options_.recorder != nullptr) {
      options_.recorder->flow_end("p2p", "pipe.exec", message_key + 1, trace::Track{kTracePid, rank_});
    }
    return data;
  }

  Status deliver(const Op& op, TransferKind kind, const Task& task, int32_t dst_rank, Vector data) {
    const Transfer transfer{kind, task, rank_, dst_rank};
    const uint64_t message_key = transfer_key(transfer, index_);
    if (dst_rank == rank_) {
      local_[message_key] = std::move(data);
      return Status::ok();
    }
    if (options_.recorder != nullptr) {
      options_.recorder->flow_start("p2p", "pipe.exec", message_key + 1, trace::Track{kTracePid, rank_});
    }
    const auto deadline = SteadyClock::now() + std::chrono::milliseconds(options_.timeout_ms);
    if (!channels_[link(rank_, dst_rank)]->send(message_key, std::move(data), deadline, step_)) {
      if (step_.aborted.load()) return cancelled("rank {} stopped: another rank failed", rank_);
      return deadline_exceeded("rank {} op #{} {}: timed out after {} ms sending to rank {}: its channel stayed full",
                               rank_, op_index_, describe_op(op), options_.timeout_ms, dst_rank);
    }
    return Status::ok();
  }

  Result<Vector> forward_input(const Op& op, const Task& task) {
    if (task.stage == 0) return batch_.inputs[task.micro_batch];
    const int32_t src = schedule_.rank_of(Task{task.micro_batch, task.stage - 1, task.direction});
    return receive(op, TransferKind::kActivation, task, src);
  }

  Status forward_output(const Op& op, const Task& task, Vector output) {
    if (task.stage + 1 == schedule_.num_stages) {
      // The loss stage: keep dL/dy for this micro-batch's backward.
      double loss = 0;
      const Vector& label = batch_.labels[task.micro_batch];
      for (size_t i = 0; i < output.size(); ++i) {
        output[i] -= label[i];
        loss += 0.5 * output[i] * output[i];
      }
      losses_.push_back(loss);
      loss_micro_batches_.push_back(task.micro_batch);
      loss_grads_[task.micro_batch] = std::move(output);
      return Status::ok();
    }
    const Task consumer{task.micro_batch, task.stage + 1, task.direction};
    return deliver(op, TransferKind::kActivation, consumer, schedule_.rank_of(consumer), std::move(output));
  }

  Result<Vector> backward_input(const Op& op, const Task& task) {
    if (task.stage + 1 == schedule_.num_stages) {
      auto it = loss_grads_.find(task.micro_batch);
      FF_ASSERT(it != loss_grads_.end(), "backward of mb={} before its loss", task.micro_batch);
      Vector grad = std::move(it->second);
      loss_grads_.erase(it);
      return grad;
    }
    const int32_t src = schedule_.rank_of(Task{task.micro_batch, task.stage + 1, task.direction});
    return receive(op, TransferKind::kGradient, task, src);
  }

  Status backward_output(const Op& op, const Task& task, Vector input_grad) {
    if (task.stage == 0) return Status::ok();
    const Task consumer{task.micro_batch, task.stage - 1, task.direction};
    return deliver(op, TransferKind::kGradient, consumer, schedule_.rank_of(consumer), std::move(input_grad));
  }

  size_t link(int32_t src, int32_t dst) const { return static_cast<size_t>(src) * schedule_.num_ranks + dst; }

  static constexpr int32_t kTracePid = 2;
  const Schedule& schedule_;
  const Batch& batch_;
  const ExecutorOptions& options_;
  const TaskIndex& index_;
  std::vector<std::unique_ptr<Channel>>& channels_;
  StepState& step_;
  const int32_t rank_;
  size_t op_index_ = 0;
  std::unordered_map<int64_t, std::unique_ptr<Stage>> stages_;
  std::unordered_map<uint64_t, Vector> local_;
  std::unordered_map<int32_t, Vector> loss_grads_;
  Vector losses_;
  std::vector<int32_t> loss_micro_batches_;
  double busy_s_ = 0;
  double op_seconds_[5] = {0, 0, 0, 0, 0};
  int64_t op_counts_[5] = {0, 0, 0, 0, 0};
};

}  // namespace

Result<ExecutionResult> execute_schedule(const Schedule& schedule, const MlpModel& model, const Batch& batch,
                                         const ExecutorOptions& options) {
  if (static_cast<int32_t>(model.w1.size()) != schedule.num_stages) {
    return invalid_argument("model has {} stages, schedule has {}", model.w1.size(), schedule.num_stages);
  }
  if (static_cast<int32_t>(batch.inputs.size()) != schedule.num_micro_batches ||
      batch.labels.size() != batch.inputs.size()) {
    return invalid_argument("batch has {} inputs and {} labels, schedule has {} micro-batches", batch.inputs.size(),
                            batch.labels.size(), schedule.num_micro_batches);
  }
  if (options.timeout_ms <= 0) return invalid_argument("timeout_ms={} must be > 0", options.timeout_ms);
  if (options.channel_capacity < 0) {
    return invalid_argument("channel_capacity={} must be >= 0", options.channel_capacity);
  }
  if (options.validate) {
    ValidateOptions validate_options;
    validate_options.channel_capacity = options.channel_capacity;
    FF_RETURN_IF_ERROR(validate_schedule(schedule, validate_options));
  }
  FF_ASSIGN_OR_RETURN(TaskIndex index, TaskIndex::make(schedule));

  const int32_t num_ranks = schedule.num_ranks;
  std::vector<size_t> sends_on_link(static_cast<size_t>(num_ranks) * num_ranks, 0);
  for (const std::vector<Op>& ops : schedule.ranks) {
    for (const Op& op : ops) {
      for (const Transfer& t : op.sends) ++sends_on_link[static_cast<size_t>(t.src_rank) * num_ranks + t.dst_rank];
    }
  }
  std::vector<std::unique_ptr<Channel>> channels;
  for (size_t count : sends_on_link) {
    const size_t capacity = options.channel_capacity > 0 ? static_cast<size_t>(options.channel_capacity)
                                                         : std::max<size_t>(count, 1);
    channels.push_back(std::make_unique<Channel>(capacity));
  }
  if (options.recorder != nullptr) {
    options.recorder->set_process_name("pipe executor", 2);
    for (int32_t rank = 0; rank < num_ranks; ++rank) {
      options.recorder->set_track_name(trace::Track{2, rank}, fmt::format("rank {}", rank));
    }
  }

  StepState step;
  std::vector<std::unique_ptr<RankRunner>> runners;
  for (int32_t rank = 0; rank < num_ranks; ++rank) {
    runners.push_back(std::make_unique<RankRunner>(schedule, model, batch, options, index, channels, step, rank));
  }
  const auto start = SteadyClock::now();
  std::vector<std::thread> threads;
  threads.reserve(num_ranks);
  for (int32_t rank = 0; rank < num_ranks; ++rank) threads.emplace_back([&runners, rank] { runners[rank]->run(); });
  for (std::thread& thread : threads) thread.join();
  const auto end = SteadyClock::now();
  if (!step.first_error.is_ok()) return step.first_error;

  ExecutionResult result;
  result.wall_s = std::chrono::duration<double>(end - start).count();
  result.gradients.stages.assign(schedule.num_stages, Vector{});
  result.gradients.losses.assign(schedule.num_micro_batches, 0.0);
  double op_seconds[5] = {0, 0, 0, 0, 0};
  int64_t op_counts[5] = {0, 0, 0, 0, 0};
  for (const auto& runner : runners) {
    result.busy_s.push_back(runner->busy_s());
    for (int k = 0; k < 5; ++k) {
      op_seconds[k] += runner->op_seconds()[k];
      op_counts[k] += runner->op_counts()[k];
    }
    for (const auto& [stage_key, stage] : runner->stages()) {
      const int32_t s = static_cast<int32_t>(stage_key & 0xffffffff);
      Vector grads = stage->gradients();
      Vector& total = result.gradients.stages[s];
      if (total.empty()) total.assign(grads.size(), 0.0);
      for (size_t i = 0; i < grads.size(); ++i) total[i] += grads[i];
    }
    for (size_t i = 0; i < runner->losses().size(); ++i) {
      result.gradients.losses[runner->loss_micro_batches()[i]] = runner->losses()[i];
    }
  }
  for (int k = 0; k < 5; ++k) result.mean_op_s[k] = op_counts[k] > 0 ? op_seconds[k] / op_counts[k] : 0;
  return result;
}

}  // namespace ff::pipe
