// Pipeline-parallel schedules: 1F1B, ZB1P (zero-bubble H1), DualPipe and DualPipeV.
//
// A schedule is, for every rank, the ordered list of compute ops it runs. Each op names the
// micro-batch, the model stage and the direction (DualPipe feeds micro-batches in from both ends of
// the pipeline; every other schedule has one direction). The point-to-point transfers an op needs
// (the activation it receives, the gradient it sends, ...) follow from the stage placement and are
// derived once by finalize_schedule(), so a hand-edited schedule file only lists ops.
//
// Vocabulary (the anchor's, DeepSeek DualPipe): F a forward chunk, B a full backward chunk (input
// and weight gradients), I the input-gradient half of a split backward, W the weight-gradient half,
// FB a forward of one micro-batch overlapped with the full backward of another.
//
// Thread-safety: every type here is a plain value; the functions are pure.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "ff/common/result.h"
#include "ff/common/status.h"

namespace ff::pipe {

enum class ScheduleKind : int { k1F1B = 0, kZB1P, kDualPipe, kDualPipeV };

// "1f1b", "zb1p", "dualpipe", "dualpipev".
std::string_view schedule_kind_name(ScheduleKind kind);
Result<ScheduleKind> parse_schedule_kind(std::string_view name);
inline constexpr ScheduleKind kAllScheduleKinds[] = {ScheduleKind::k1F1B, ScheduleKind::kZB1P,
                                                     ScheduleKind::kDualPipe, ScheduleKind::kDualPipeV};

enum class OpKind : int {
  kForward = 0,        // F
  kBackward,           // B: input and weight gradients together
  kBackwardInput,      // I: input gradient only; the matching W comes later (zero bubble)
  kWeight,             // W: the deferred weight gradient of an earlier I
  kForwardBackward,    // FB: F of `task` overlapped with a full B of `backward`
};

// "F", "B", "I", "W", "FB".
std::string_view op_kind_name(OpKind kind);
Result<OpKind> parse_op_kind(std::string_view name);

// One unit of work of one micro-batch at one stage.
struct Task {
  int32_t micro_batch = 0;
  int32_t stage = 0;      // Model stage, 0 .. num_stages-1 in the order data flows in `direction`.
  int32_t direction = 0;  // 0, or 1 for DualPipe's reverse-direction micro-batches.
  friend bool operator==(const Task&, const Task&) = default;
};

enum class TransferKind : int { kActivation = 0, kGradient };

// A point-to-point message between two ranks. `task` is the consumer's task: an activation for
// F(task) produced by the previous stage, or a gradient for the backward of `task` produced by the
// next stage.
struct Transfer {
  TransferKind kind = TransferKind::kActivation;
  Task task;
  int32_t src_rank = 0;
  int32_t dst_rank = 0;
  friend bool operator==(const Transfer&, const Transfer&) = default;
};

struct Op {
  OpKind kind = OpKind::kForward;
  Task task;      // The forward part of FB; the only task otherwise.
  Task backward;  // Only for kForwardBackward: the backward part.
  // Filled by finalize_schedule(): messages this op waits for before it starts, and sends when done.
  std::vector<Transfer> recvs;
  std::vector<Transfer> sends;
};

// "F(mb=3 s=2 d=0)" or "FB(F mb=3 s=2 d=0 | B mb=1 s=5 d=1)".
std::string describe_op(const Op& op);

struct Schedule {
  ScheduleKind kind = ScheduleKind::k1F1B;
  int32_t num_stages = 0;         // Model stages (PP in the anchor's table).
  int32_t num_ranks = 0;          // Devices: num_stages, or num_stages/2 for DualPipeV.
  int32_t num_micro_batches = 0;  // In all directions together.
  int32_t num_directions = 1;
  // stage_rank[direction][stage]: the rank holding that stage for that direction.
  std::vector<std::vector<int32_t>> stage_rank;
  // ranks[rank]: that rank's ops in execution order.
  std::vector<std::vector<Op>> ranks;

  int32_t rank_of(const Task& task) const { return stage_rank[task.direction][task.stage]; }
  size_t num_ops() const;
};

// Builds a schedule. num_stages is the anchor's PP: the number of ranks for every schedule but
// DualPipeV, which puts two stages on each of num_stages/2 ranks. Errors (invalid argument) name the
// rule broken: DualPipe needs an even PP and an even number of micro-batches >= 2*PP; DualPipeV an
// even PP and micro-batches >= PP; 1F1B and ZB1P at least one stage and one micro-batch.
Result<Schedule> generate_schedule(ScheduleKind kind, int32_t num_stages, int32_t num_micro_batches);

// Checks the shape (placement, ranges) and fills every op's recvs and sends from the placement.
// Called by generate_schedule and by schedule_from_json; call it again after editing ops by hand.
Status finalize_schedule(Schedule& schedule);

// JSON schedule file, format "fireflyer.pipe.schedule/1":
//   {"format": "fireflyer.pipe.schedule/1", "schedule": "dualpipe", "num_stages": 4,
//    "num_ranks": 4, "num_micro_batches": 8, "num_directions": 2,
//    "stage_rank": [[0,1,2,3],[3,2,1,0]],
//    "ranks": [[{"op":"F","mb":0,"stage":0,"dir":0}, ...,
//               {"op":"FB","mb":4,"stage":0,"dir":0,"b_mb":0,"b_stage":3,"b_dir":1}], ...]}
// Transfers are derived, never stored. One op per line, so a schedule can be edited by hand.
std::string schedule_to_json(const Schedule& schedule);
// Parses and finalizes; errors name the rank and op index of a malformed op.
Result<Schedule> schedule_from_json(std::string_view text);

}  // namespace ff::pipe
