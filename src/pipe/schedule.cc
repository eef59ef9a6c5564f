// Schedule generators (1F1B, ZB1P, DualPipe, DualPipeV) and the derivation of transfers.
#include "ff/pipe/schedule.h"

#include <fmt/format.h>

#include <array>
#include <cstdint>
#include <deque>

namespace ff::pipe {

std::string_view schedule_kind_name(ScheduleKind kind) {
  switch (kind) {
    case ScheduleKind::k1F1B: return "1f1b";
    case ScheduleKind::kZB1P: return "zb1p";
    case ScheduleKind::kDualPipe: return "dualpipe";
    case ScheduleKind::kDualPipeV: return "dualpipev";
  }
  FF_UNREACHABLE("schedule kind {}", static_cast<int>(kind));
}

Result<ScheduleKind> parse_schedule_kind(std::string_view name) {
  for (ScheduleKind kind : kAllScheduleKinds) {
    if (schedule_kind_name(kind) == name) return kind;
  }
  return invalid_argument("unknown schedule '{}': expected 1f1b, zb1p, dualpipe or dualpipev", name);
}

std::string_view op_kind_name(OpKind kind) {
  switch (kind) {
    case OpKind::kForward: return "F";
    case OpKind::kBackward: return "B";
    case OpKind::kBackwardInput: return "I";
    case OpKind::kWeight: return "W";
    case OpKind::kForwardBackward: return "FB";
  }
  FF_UNREACHABLE("op kind {}", static_cast<int>(kind));
}

Result<OpKind> parse_op_kind(std::string_view name) {
  for (OpKind kind : {OpKind::kForward, OpKind::kBackward, OpKind::kBackwardInput, OpKind::kWeight,
                      OpKind::kForwardBackward}) {
    if (op_kind_name(kind) == name) return kind;
  }
  return invalid_argument("unknown op '{}': expected F, B, I, W or FB", name);
}

namespace {
std::string describe_task(const Task& task) {
  return fmt::format("mb={} s={} d={}", task.micro_batch, task.stage, task.direction);
}
}  // namespace

std::string describe_op(const Op& op) {
  if (op.kind == OpKind::kForwardBackward) {
    return fmt::format("FB(F {} | B {})", describe_task(op.task), describe_task(op.backward));
  }
  return fmt::format("{}({})", op_kind_name(op.kind), describe_task(op.task));
}

size_t Schedule::num_ops() const {
  size_t total = 0;
  for (const std::vector<Op>& ops : ranks) total += ops.size();
  return total;
}

namespace {

// Emits one rank's ops in terms of the anchor's local "phases": a rank holds one stage (phase 0) or
// two (phases 0 and 1), each fed its micro-batches in order. Weight gradients deferred by a split
// backward queue up first-in first-out, as the anchor's WeightGradStore does.
class RankBuilder {
 public:
  struct Phase {
    int32_t stage = 0;
    int32_t direction = 0;
    int32_t first_micro_batch = 0;  // Micro-batch ids of this phase: first, first+1, ...
  };

  RankBuilder(std::vector<Op>& ops, std::array<Phase, 2> phases) : ops_(ops), phases_(phases) {}

  void forward(int phase) { ops_.push_back(Op{OpKind::kForward, next_forward(phase), {}, {}, {}}); }

  // A full backward, or with defer_weight an I whose W is queued.
  void backward(int phase, bool defer_weight) {
    Task task = next_backward(phase);
    if (defer_weight) {
      ops_.push_back(Op{OpKind::kBackwardInput, task, {}, {}, {}});
      deferred_weights_.push_back(task);
    } else {
      ops_.push_back(Op{OpKind::kBackward, task, {}, {}, {}});
    }
  }

  void weight() {
    FF_ASSERT(!deferred_weights_.empty(), "W with no deferred weight gradient");
    ops_.push_back(Op{OpKind::kWeight, deferred_weights_.front(), {}, {}, {}});
    deferred_weights_.pop_front();
  }

  void forward_backward(int forward_phase, int backward_phase) {
    Task forward_task = next_forward(forward_phase);
    Task backward_task = next_backward(backward_phase);
    ops_.push_back(Op{OpKind::kForwardBackward, forward_task, backward_task, {}, {}});
  }

  size_t pending_weights() const { return deferred_weights_.size(); }

 private:
  Task next_forward(int phase) {
    const Phase& p = phases_[phase];
    return Task{p.first_micro_batch + forward_count_[phase]++, p.stage, p.direction};
  }
  Task next_backward(int phase) {
    const Phase& p = phases_[phase];
    FF_ASSERT_LT(backward_count_[phase], forward_count_[phase], "backward before its forward in phase {}", phase);
    return Task{p.first_micro_batch + backward_count_[phase]++, p.stage, p.direction};
  }

  std::vector<Op>& ops_;
  std::array<Phase, 2> phases_;
  std::array<int32_t, 2> forward_count_{0, 0};
  std::array<int32_t, 2> backward_count_{0, 0};
  std::deque<Task> deferred_weights_;
};

Schedule empty_schedule(ScheduleKind kind, int32_t num_stages, int32_t num_ranks, int32_t num_micro_batches,
                        int32_t num_directions) {
  Schedule schedule;
  schedule.kind = kind;
  schedule.num_stages = num_stages;
  schedule.num_ranks = num_ranks;
  schedule.num_micro_batches = num_micro_batches;
  schedule.num_directions = num_directions;
  schedule.stage_rank.assign(num_directions, std::vector<int32_t>(num_stages, 0));
  schedule.ranks.assign(num_ranks, {});
  return schedule;
}

// 1F1B: rank r runs PP-1-r warm-up forwards, then alternates F and B, then drains the backwards.
Schedule generate_1f1b(int32_t pp, int32_t chunks) {
  Schedule schedule = empty_schedule(ScheduleKind::k1F1B, pp, pp, chunks, 1);
  for (int32_t rank = 0; rank < pp; ++rank) {
    schedule.stage_rank[0][rank] = rank;
    RankBuilder builder(schedule.ranks[rank], {RankBuilder::Phase{rank, 0, 0}, RankBuilder::Phase{}});
    const int32_t warmup = std::min(pp - 1 - rank, chunks);
    for (int32_t i = 0; i < warmup; ++i) builder.forward(0);
    for (int32_t i = 0; i < chunks - warmup; ++i) {
      builder.forward(0);
      builder.backward(0, /*defer_weight=*/false);
    }
    for (int32_t i = 0; i < warmup; ++i) builder.backward(0, false);
  }
  return schedule;
}

// ZB1P (zero-bubble ZB-H1): 1F1B's memory (rank r holds at most PP-r activations) with every
// backward split into I and W. The I goes upstream at once, which shortens the gradient's trip back
// through the pipeline, and the W's fill the waits. Like the zero-bubble paper, the order comes
// from a greedy list schedule on unit costs (F = I = W = 1): a free rank runs an I whose gradient
// has arrived, else an F whose input has arrived and that fits the memory bound, else a pending W.
// This realises the anchor's bubble (PP-1)(F+B-2W) for those costs.
Schedule generate_zb1p(int32_t pp, int32_t chunks) {
  Schedule schedule = empty_schedule(ScheduleKind::kZB1P, pp, pp, chunks, 1);
  constexpr int64_t kNever = INT64_MAX;
  // forward_end[rank][mb], input_end[rank][mb]: unit-time step at which that op finished.
  std::vector<std::vector<int64_t>> forward_end(pp, std::vector<int64_t>(chunks, kNever));
  std::vector<std::vector<int64_t>> input_end(pp, std::vector<int64_t>(chunks, kNever));
  std::vector<int32_t> next_forward(pp, 0), next_input(pp, 0);
  std::vector<std::deque<int32_t>> pending_weights(pp);
  std::vector<int32_t> weights_done(pp, 0);
  for (int32_t rank = 0; rank < pp; ++rank) schedule.stage_rank[0][rank] = rank;
  // Bounded: every rank finishes within 3*chunks ops plus at most 2*pp steps of start-up wait.
  const int64_t max_time = int64_t{3} * chunks + 2 * int64_t{pp} + 4;
  for (int64_t t = 0; t < max_time; ++t) {
    for (int32_t rank = 0; rank < pp; ++rank) {
      std::vector<Op>& ops = schedule.ranks[rank];
      const int32_t f = next_forward[rank];
      const int32_t b = next_input[rank];
      const bool gradient_ready =
          b < f && (rank + 1 == pp ? forward_end[rank][b] <= t : input_end[rank + 1][b] <= t);
      const bool input_ready = f < chunks && (rank == 0 || forward_end[rank - 1][f] <= t);
      const bool memory_ok = f - b < pp - rank;
      if (gradient_ready) {
        ops.push_back(Op{OpKind::kBackwardInput, Task{b, rank, 0}, {}, {}, {}});
        input_end[rank][b] = t + 1;
        pending_weights[rank].push_back(b);
        ++next_input[rank];
      } else if (input_ready && memory_ok) {
        ops.push_back(Op{OpKind::kForward, Task{f, rank, 0}, {}, {}, {}});
        forward_end[rank][f] = t + 1;
        ++next_forward[rank];
      } else if (!pending_weights[rank].empty()) {
        ops.push_back(Op{OpKind::kWeight, Task{pending_weights[rank].front(), rank, 0}, {}, {}, {}});
        pending_weights[rank].pop_front();
        ++weights_done[rank];
      }
    }
  }
  for (int32_t rank = 0; rank < pp; ++rank) {
    FF_ASSERT_EQ(weights_done[rank], chunks, "ZB1P list schedule did not finish rank {} in {} steps", rank, max_time);
  }
  return schedule;
}

// DualPipe and DualPipeV share the anchor's eight phases; they differ in what the two local phases
// of a rank are. `half_rank` is the rank's distance from the nearer end of its half pipeline,
// `num_half_ranks` the half length, `chunks_per_phase` the micro-batches each phase sees.
void emit_dual_phases(RankBuilder& b, int32_t half_rank, int32_t num_half_ranks, int32_t chunks_per_phase,
                      bool is_middle_rank) {
  // 1: warm-up forwards of the rank's own direction.
  for (int32_t i = 0; i < (num_half_ranks - half_rank - 1) * 2; ++i) b.forward(0);
  // 2: forwards of both directions, alternating.
  for (int32_t i = 0; i < half_rank + 1; ++i) {
    b.forward(0);
    b.forward(1);
  }
  // 3: zero bubble: I, W, F of the other direction.
  for (int32_t i = 0; i < num_half_ranks - half_rank - 1; ++i) {
    b.backward(1, /*defer_weight=*/true);
    b.weight();
    b.forward(1);
  }
  // 4: the steady state, F of one direction overlapped with B of the other, both ways round. The
  // middle ranks run the very first pair unoverlapped: its backward's gradient comes from the rank
  // beside them, which is waiting for this rank's forward, and splitting lets that forward go first.
  const int32_t main_steps = chunks_per_phase - 2 * num_half_ranks + half_rank + 1;
  for (int32_t i = 0; i < main_steps; ++i) {
    if (i == 0 && is_middle_rank) {
      b.forward(0);
      b.backward(1, false);
    } else {
      b.forward_backward(0, 1);
    }
    b.forward_backward(1, 0);
  }
  // 5: B of the other direction, then the last overlapped pairs.
  for (int32_t i = 0; i < num_half_ranks - half_rank - 1; ++i) {
    b.backward(1, false);
    b.forward_backward(1, 0);
  }
  // 6: backwards of both directions; the second half of them defer W to fill the cool-down.
  const int32_t step6 = half_rank + 1;
  bool defer = false;
  for (int32_t i = 0; i < step6; ++i) {
    if (i == step6 / 2 && half_rank % 2 == 1) defer = true;
    b.backward(1, defer);
    if (i == step6 / 2 && half_rank % 2 == 0) defer = true;
    b.backward(0, defer);
  }
  // 7: W, then a split B of the own direction.
  for (int32_t i = 0; i < num_half_ranks - half_rank - 1; ++i) {
    b.weight();
    b.backward(0, true);
  }
  // 8: the remaining deferred W's.
  for (int32_t i = 0; i < half_rank + 1; ++i) b.weight();
  FF_ASSERT_EQ(b.pending_weights(), size_t{0}, "DualPipe phases left weight gradients behind");
}

// DualPipe: direction 0 enters at rank 0 (stage s on rank s), direction 1 at rank PP-1 (stage s on
// rank PP-1-s). Rank r's phase 0 is the direction entering at its end of the pipeline.
Schedule generate_dualpipe(int32_t pp, int32_t chunks) {
  Schedule schedule = empty_schedule(ScheduleKind::kDualPipe, pp, pp, chunks, 2);
  const int32_t half_chunks = chunks / 2;
  const int32_t num_half_ranks = pp / 2;
  for (int32_t s = 0; s < pp; ++s) {
    schedule.stage_rank[0][s] = s;
    schedule.stage_rank[1][s] = pp - 1 - s;
  }
  for (int32_t rank = 0; rank < pp; ++rank) {
    const bool second_half = rank >= num_half_ranks;
    RankBuilder::Phase dir0{rank, 0, 0};
    RankBuilder::Phase dir1{pp - 1 - rank, 1, half_chunks};
    RankBuilder builder(schedule.ranks[rank], second_half ? std::array{dir1, dir0} : std::array{dir0, dir1});
    const int32_t half_rank = std::min(rank, pp - 1 - rank);
    const bool is_middle = rank == num_half_ranks - 1 || rank == num_half_ranks;
    emit_dual_phases(builder, half_rank, num_half_ranks, half_chunks, is_middle);
  }
  return schedule;
}

// DualPipeV: PP stages on PP/2 ranks in a V: rank r holds stage r (phase 0, going down) and stage
// PP-1-r (phase 1, coming back). Micro-batches enter and leave at rank 0.
Schedule generate_dualpipev(int32_t pp, int32_t chunks) {
  const int32_t num_ranks = pp / 2;
  Schedule schedule = empty_schedule(ScheduleKind::kDualPipeV, pp, num_ranks, chunks, 1);
  for (int32_t s = 0; s < pp; ++s) schedule.stage_rank[0][s] = s < num_ranks ? s : pp - 1 - s;
  for (int32_t rank = 0; rank < num_ranks; ++rank) {
    RankBuilder builder(schedule.ranks[rank],
                        {RankBuilder::Phase{rank, 0, 0}, RankBuilder::Phase{pp - 1 - rank, 0, 0}});
    // The V's bottom is the last rank, which plays the part of DualPipe's middle rank.
    emit_dual_phases(builder, rank, num_ranks, chunks, rank == num_ranks - 1);
  }
  return schedule;
}

}  // namespace

Result<Schedule> generate_schedule(ScheduleKind kind, int32_t num_stages, int32_t num_micro_batches) {
  constexpr int32_t kMaxStages = 4096;
  constexpr int32_t kMaxMicroBatches = 1 << 20;
  if (num_stages < 1 || num_stages > kMaxStages) {
    return invalid_argument("pp={} must be in [1, {}]", num_stages, kMaxStages);
  }
  if (num_micro_batches < 1 || num_micro_batches > kMaxMicroBatches) {
    return invalid_argument("micro-batches={} must be in [1, {}]", num_micro_batches, kMaxMicroBatches);
  }
  Schedule schedule;
  switch (kind) {
    case ScheduleKind::k1F1B: schedule = generate_1f1b(num_stages, num_micro_batches); break;
    case ScheduleKind::kZB1P: schedule = generate_zb1p(num_stages, num_micro_batches); break;
    case ScheduleKind::kDualPipe:
      if (num_stages % 2 != 0) {
        return invalid_argument("dualpipe needs an even pp (rank r pairs with rank pp-1-r), got pp={}", num_stages);
      }
      if (num_micro_batches % 2 != 0 || num_micro_batches < 2 * num_stages) {
        return invalid_argument(
            "dualpipe needs an even number of micro-batches >= 2*pp={} (half enter at each end), got {}",
            2 * num_stages, num_micro_batches);
      }
      schedule = generate_dualpipe(num_stages, num_micro_batches);
      break;
    case ScheduleKind::kDualPipeV:
      if (num_stages % 2 != 0) {
        return invalid_argument("dualpipev needs an even pp (two stages per rank on pp/2 ranks), got pp={}",
                                num_stages);
      }
      if (num_micro_batches < num_stages) {
        return invalid_argument("dualpipev needs micro-batches >= pp={}, got {}", num_stages, num_micro_batches);
      }
      schedule = generate_dualpipev(num_stages, num_micro_batches);
      break;
  }
  FF_RETURN_IF_ERROR(finalize_schedule(schedule));
  return schedule;
}

namespace {

Status check_task(const Schedule& schedule, const Task& task, int32_t rank, size_t index) {
  if (task.direction < 0 || task.direction >= schedule.num_directions) {
    return invalid_argument("rank {} op #{}: direction {} not in [0, {})", rank, index, task.direction,
                            schedule.num_directions);
  }
  if (task.stage < 0 || task.stage >= schedule.num_stages) {
    return invalid_argument("rank {} op #{}: stage {} not in [0, {})", rank, index, task.stage, schedule.num_stages);
  }
  if (task.micro_batch < 0 || task.micro_batch >= schedule.num_micro_batches) {
    return invalid_argument("rank {} op #{}: micro-batch {} not in [0, {})", rank, index, task.micro_batch,
                            schedule.num_micro_batches);
  }
  if (schedule.rank_of(task) != rank) {
    return invalid_argument("rank {} op #{}: stage {} of direction {} lives on rank {}, not rank {}", rank, index,
                            task.stage, task.direction, schedule.rank_of(task), rank);
  }
  return Status::ok();
}

// Messages of a forward: the activation from the previous stage in, the activation to the next out.
void add_forward_transfers(const Schedule& schedule, const Task& task, Op& op) {
  const int32_t rank = schedule.rank_of(task);
  if (task.stage > 0) {
    Task producer{task.micro_batch, task.stage - 1, task.direction};
    const int32_t src = schedule.rank_of(producer);
    if (src != rank) op.recvs.push_back(Transfer{TransferKind::kActivation, task, src, rank});
  }
  if (task.stage + 1 < schedule.num_stages) {
    Task consumer{task.micro_batch, task.stage + 1, task.direction};
    const int32_t dst = schedule.rank_of(consumer);
    if (dst != rank) op.sends.push_back(Transfer{TransferKind::kActivation, consumer, rank, dst});
  }
}

// Messages of a backward: the gradient from the next stage in, the gradient to the previous out.
void add_backward_transfers(const Schedule& schedule, const Task& task, Op& op) {
  const int32_t rank = schedule.rank_of(task);
  if (task.stage + 1 < schedule.num_stages) {
    Task producer{task.micro_batch, task.stage + 1, task.direction};
    const int32_t src = schedule.rank_of(producer);
    if (src != rank) op.recvs.push_back(Transfer{TransferKind::kGradient, task, src, rank});
  }
  if (task.stage > 0) {
    Task consumer{task.micro_batch, task.stage - 1, task.direction};
    const int32_t dst = schedule.rank_of(consumer);
    if (dst != rank) op.sends.push_back(Transfer{TransferKind::kGradient, consumer, rank, dst});
  }
}

}  // namespace

Status finalize_schedule(Schedule& schedule) {
  if (schedule.num_stages < 1 || schedule.num_ranks < 1 || schedule.num_micro_batches < 1) {
    return invalid_argument("schedule needs num_stages, num_ranks and num_micro_batches >= 1 (got {}, {}, {})",
                            schedule.num_stages, schedule.num_ranks, schedule.num_micro_batches);
  }
  if (schedule.num_directions != 1 && schedule.num_directions != 2) {
    return invalid_argument("num_directions={} must be 1 or 2", schedule.num_directions);
  }
  if (static_cast<int32_t>(schedule.stage_rank.size()) != schedule.num_directions) {
    return invalid_argument("stage_rank has {} rows, expected one per direction ({})", schedule.stage_rank.size(),
                            schedule.num_directions);
  }
  for (size_t d = 0; d < schedule.stage_rank.size(); ++d) {
    if (static_cast<int32_t>(schedule.stage_rank[d].size()) != schedule.num_stages) {
      return invalid_argument("stage_rank[{}] has {} entries, expected num_stages={}", d,
                              schedule.stage_rank[d].size(), schedule.num_stages);
    }
    for (int32_t rank : schedule.stage_rank[d]) {
      if (rank < 0 || rank >= schedule.num_ranks) {
        return invalid_argument("stage_rank[{}] names rank {}, outside [0, {})", d, rank, schedule.num_ranks);
      }
    }
  }
  if (static_cast<int32_t>(schedule.ranks.size()) != schedule.num_ranks) {
    return invalid_argument("schedule lists ops for {} ranks, expected num_ranks={}", schedule.ranks.size(),
                            schedule.num_ranks);
  }
  for (int32_t rank = 0; rank < schedule.num_ranks; ++rank) {
    std::vector<Op>& ops = schedule.ranks[rank];
    for (size_t i = 0; i < ops.size(); ++i) {
      Op& op = ops[i];
      op.recvs.clear();
      op.sends.clear();
      FF_RETURN_IF_ERROR(check_task(schedule, op.task, rank, i));
      switch (op.kind) {
        case OpKind::kForward: add_forward_transfers(schedule, op.task, op); break;
        case OpKind::kBackward:
        case OpKind::kBackwardInput: add_backward_transfers(schedule, op.task, op); break;
        case OpKind::kWeight: break;  // Local: uses what its I kept.
        case OpKind::kForwardBackward:
          FF_RETURN_IF_ERROR(check_task(schedule, op.backward, rank, i));
          add_forward_transfers(schedule, op.task, op);
          add_backward_transfers(schedule, op.backward, op);
          break;
      }
    }
  }
  return Status::ok();
}

}  // namespace ff::pipe
