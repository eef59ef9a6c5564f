// Schedule validator: completeness, then an untimed run under blocking communication.
#include "ff/pipe/validate.h"

#include <fmt/format.h>

#include <set>
#include <unordered_map>

#include "internal.h"

namespace ff::pipe {

namespace {

std::string describe_transfer(const Transfer& transfer) {
  return fmt::format("the {} of mb={} s={} d={} from rank {}",
                     transfer.kind == TransferKind::kActivation ? "activation" : "gradient", transfer.task.micro_batch,
                     transfer.task.stage, transfer.task.direction, transfer.src_rank);
}

// Counts of each task's ops, checked before running anything.
Status check_completeness(const Schedule& schedule, const TaskIndex& index) {
  const size_t num_tasks = index.size();
  std::vector<int32_t> forwards(num_tasks, 0), backwards(num_tasks, 0), inputs(num_tasks, 0), weights(num_tasks, 0);
  std::vector<int32_t> direction_of(schedule.num_micro_batches, -1);
  auto note = [&](const Task& task, std::vector<int32_t>& counts, int32_t rank, size_t i) -> Status {
    int32_t& direction = direction_of[task.micro_batch];
    if (direction >= 0 && direction != task.direction) {
      return invalid_argument("rank {} op #{}: micro-batch {} runs in direction {} here but direction {} elsewhere",
                              rank, i, task.micro_batch, task.direction, direction);
    }
    direction = task.direction;
    ++counts[index(task)];
    return Status::ok();
  };
  for (int32_t rank = 0; rank < schedule.num_ranks; ++rank) {
    const std::vector<Op>& ops = schedule.ranks[rank];
    for (size_t i = 0; i < ops.size(); ++i) {
      const Op& op = ops[i];
      switch (op.kind) {
        case OpKind::kForward: FF_RETURN_IF_ERROR(note(op.task, forwards, rank, i)); break;
        case OpKind::kBackward: FF_RETURN_IF_ERROR(note(op.task, backwards, rank, i)); break;
        case OpKind::kBackwardInput: FF_RETURN_IF_ERROR(note(op.task, inputs, rank, i)); break;
        case OpKind::kWeight: FF_RETURN_IF_ERROR(note(op.task, weights, rank, i)); break;
        case OpKind::kForwardBackward:
          FF_RETURN_IF_ERROR(note(op.task, forwards, rank, i));
          FF_RETURN_IF_ERROR(note(op.backward, backwards, rank, i));
          break;
      }
    }
  }
  for (int32_t mb = 0; mb < schedule.num_micro_batches; ++mb) {
    if (direction_of[mb] < 0) return invalid_argument("micro-batch {} never runs on any rank", mb);
    for (int32_t stage = 0; stage < schedule.num_stages; ++stage) {
      const Task task{mb, stage, direction_of[mb]};
      const size_t k = index(task);
      const int32_t rank = schedule.rank_of(task);
      if (forwards[k] != 1) {
        return invalid_argument("rank {} runs F of mb={} s={} d={} {} times, expected once", rank, mb, stage,
                                task.direction, forwards[k]);
      }
      if (backwards[k] + inputs[k] != 1) {
        return invalid_argument("rank {} runs the backward (B or I) of mb={} s={} d={} {} times, expected once", rank,
                                mb, stage, task.direction, backwards[k] + inputs[k]);
      }
      if (backwards[k] + weights[k] != 1) {
        return invalid_argument(
            "rank {} computes the weight gradient (B or W) of mb={} s={} d={} {} times, expected once", rank, mb,
            stage, task.direction, backwards[k] + weights[k]);
      }
    }
  }
  return Status::ok();
}

}  // namespace

Result<ValidationReport> validate_schedule(const Schedule& schedule, const ValidateOptions& options) {
  FF_ASSERT_EQ(static_cast<int32_t>(schedule.ranks.size()), schedule.num_ranks, "validate a finalized schedule");
  if (options.channel_capacity < 0) {
    return invalid_argument("channel_capacity={} must be >= 0 (0: never block a send)", options.channel_capacity);
  }
  FF_ASSIGN_OR_RETURN(TaskIndex index, TaskIndex::make(schedule));
  FF_RETURN_IF_ERROR(check_completeness(schedule, index));

  const int32_t num_ranks = schedule.num_ranks;
  ValidationReport report;
  report.peak_activations.assign(num_ranks, 0);
  report.parameters.assign(num_ranks, 0);
  report.peak_pending_messages.assign(num_ranks, 0);
  report.num_ops = schedule.num_ops();
  for (int32_t rank = 0; rank < num_ranks; ++rank) {
    std::set<int32_t> stages;
    for (const std::vector<int32_t>& row : schedule.stage_rank) {
      for (size_t s = 0; s < row.size(); ++s) {
        if (row[s] == rank) stages.insert(static_cast<int32_t>(s));
      }
    }
    report.parameters[rank] = static_cast<int32_t>(stages.size());
  }

  // Untimed execution. done_* flags are per task; messages wait in per-link sets.
  std::vector<uint8_t> forward_done(index.size(), 0), backward_done(index.size(), 0), input_done(index.size(), 0);
  std::vector<std::unordered_map<uint64_t, int32_t>> inbox(num_ranks);  // key -> copies waiting
  std::vector<int32_t> link_count(static_cast<size_t>(num_ranks) * num_ranks, 0);
  std::vector<int32_t> link_capacity(link_count.size(), 0);
  std::vector<int32_t> pending_into(num_ranks, 0);
  for (const std::vector<Op>& ops : schedule.ranks) {
    for (const Op& op : ops) {
      for (const Transfer& t : op.sends) ++link_capacity[static_cast<size_t>(t.src_rank) * num_ranks + t.dst_rank];
      report.num_transfers += op.sends.size();
    }
  }
  if (options.channel_capacity > 0) {
    for (int32_t& capacity : link_capacity) capacity = std::min(capacity, options.channel_capacity);
  }
  std::vector<size_t> pc(num_ranks, 0);
  std::vector<int32_t> activations(num_ranks, 0);

  // Returns "" when op can run now, else why not (for the deadlock report).
  auto blocker = [&](int32_t rank, const Op& op) -> std::string {
    auto local_forward = [&](const Task& task) -> std::string {
      if (task.stage == 0) return "";
      Task producer{task.micro_batch, task.stage - 1, task.direction};
      if (schedule.rank_of(producer) != rank || forward_done[index(producer)]) return "";
      return fmt::format("waits for F(mb={} s={} d={}) of its own rank, which its order puts later",
                         producer.micro_batch, producer.stage, producer.direction);
    };
    auto local_backward = [&](const Task& task) -> std::string {
      if (!forward_done[index(task)]) {
        return fmt::format("runs before F(mb={} s={} d={}), which its order puts later", task.micro_batch,
                           task.stage, task.direction);
      }
      if (task.stage + 1 == schedule.num_stages) return "";
      Task producer{task.micro_batch, task.stage + 1, task.direction};
      if (schedule.rank_of(producer) != rank || backward_done[index(producer)]) return "";
      return fmt::format("waits for the backward of mb={} s={} d={} on its own rank, which its order puts later",
                         producer.micro_batch, producer.stage, producer.direction);
    };
    std::string why;
    switch (op.kind) {
      case OpKind::kForward: why = local_forward(op.task); break;
      case OpKind::kBackward:
      case OpKind::kBackwardInput: why = local_backward(op.task); break;
      case OpKind::kWeight:
        if (!input_done[index(op.task)]) {
          why = fmt::format("runs before its I(mb={} s={} d={}), which its order puts later", op.task.micro_batch,
                            op.task.stage, op.task.direction);
        }
        break;
      case OpKind::kForwardBackward:
        why = local_forward(op.task);
        if (why.empty()) why = local_backward(op.backward);
        break;
    }
    if (!why.empty()) return why;
    for (const Transfer& t : op.recvs) {
      auto it = inbox[rank].find(transfer_key(t, index));
      if (it == inbox[rank].end() || it->second == 0) {
        const size_t src_pc = pc[t.src_rank];
        const std::vector<Op>& src_ops = schedule.ranks[t.src_rank];
        if (src_pc < src_ops.size()) {
          return fmt::format("waits forever for {}, which is blocked at op #{} {}", describe_transfer(t), src_pc,
                             describe_op(src_ops[src_pc]));
        }
        return fmt::format("waits forever for {}, which finished without sending it", describe_transfer(t));
      }
    }
    for (const Transfer& t : op.sends) {
      const size_t link = static_cast<size_t>(t.src_rank) * num_ranks + t.dst_rank;
      if (link_count[link] >= link_capacity[link]) {
        return fmt::format("cannot send to rank {}: its channel holds {} messages (capacity {}) rank {} has not taken",
                           t.dst_rank, link_count[link], link_capacity[link], t.dst_rank);
      }
    }
    return "";
  };

  auto run = [&](int32_t rank, const Op& op) {
    for (const Transfer& t : op.recvs) {
      auto it = inbox[rank].find(transfer_key(t, index));
      FF_ASSERT(it != inbox[rank].end() && it->second > 0);
      if (--it->second == 0) inbox[rank].erase(it);
      --link_count[static_cast<size_t>(t.src_rank) * num_ranks + t.dst_rank];
      --pending_into[rank];
    }
    auto forward = [&](const Task& task) {
      forward_done[index(task)] = 1;
      report.peak_activations[rank] = std::max(report.peak_activations[rank], ++activations[rank]);
    };
    auto backward = [&](const Task& task) {
      backward_done[index(task)] = 1;
      --activations[rank];
    };
    switch (op.kind) {
      case OpKind::kForward: forward(op.task); break;
      case OpKind::kBackward: backward(op.task); break;
      case OpKind::kBackwardInput:
        backward(op.task);
        input_done[index(op.task)] = 1;
        break;
      case OpKind::kWeight: break;
      case OpKind::kForwardBackward:
        // The forward's activation exists while the backward's is still held: both count at the peak.
        forward(op.task);
        backward(op.backward);
        break;
    }
    for (const Transfer& t : op.sends) {
      ++inbox[t.dst_rank][transfer_key(t, index)];
      ++link_count[static_cast<size_t>(t.src_rank) * num_ranks + t.dst_rank];
      report.peak_pending_messages[t.dst_rank] =
          std::max(report.peak_pending_messages[t.dst_rank], ++pending_into[t.dst_rank]);
    }
  };

  // Each pass runs every op that can run; a pass without progress before the end is a deadlock.
  // Bounded: each pass but the last runs at least one op.
  const size_t max_passes = report.num_ops + 1;
  size_t remaining = report.num_ops;
  for (size_t pass = 0; pass < max_passes && remaining > 0; ++pass) {
    bool progress = false;
    for (int32_t rank = 0; rank < num_ranks; ++rank) {
      const std::vector<Op>& ops = schedule.ranks[rank];
      while (pc[rank] < ops.size() && blocker(rank, ops[pc[rank]]).empty()) {
        run(rank, ops[pc[rank]]);
        ++pc[rank];
        --remaining;
        progress = true;
      }
    }
    if (!progress) break;
  }
  if (remaining > 0) {
    std::string message = "deadlock:";
    for (int32_t rank = 0; rank < num_ranks; ++rank) {
      const std::vector<Op>& ops = schedule.ranks[rank];
      if (pc[rank] >= ops.size()) continue;
      message += fmt::format(" rank {} op #{} {} {};", rank, pc[rank], describe_op(ops[pc[rank]]),
                             blocker(rank, ops[pc[rank]]));
    }
    message.pop_back();
    return invalid_argument("{}", message);
  }
  return report;
}

}  // namespace ff::pipe
