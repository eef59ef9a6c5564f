// Discrete-event simulator of a pipeline schedule, and its pictures (Chrome trace, SVG).
//
// Each rank runs its ops in order; an op starts when the rank is free and every message it needs
// has arrived; a message leaves when its producer op ends and arrives after the link latency plus
// bytes / bandwidth, links sending one message at a time. Times are in abstract units (the costs'
// unit: the anchor's tables use F = 1); pictures draw one unit as one millisecond.
//
// Thread-safety: pure functions.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "ff/common/result.h"
#include "ff/pipe/schedule.h"
#include "ff/pipe/validate.h"

namespace ff::pipe {

struct Costs {
  double forward = 1;           // F
  double backward = 2;          // B: a full backward (input + weight gradients)
  double weight = 1;            // W: the weight-gradient part of B; I costs backward - weight
  double forward_backward = 3;  // FB: an F and a full B overlapped; F + B means no overlap gain
  double link_latency = 0;      // Per message, in time units.
  double link_bytes_per_unit = 0;  // Link bandwidth; 0 = infinite.
  double message_bytes = 0;        // Bytes of one activation or gradient message.
  // Memory model for peak_memory and the `best` search: one micro-batch activation at one stage, and
  // one stage's parameters (any unit, e.g. GiB).
  double activation_memory = 1;
  double parameter_memory = 1;
};

// Parses "F=1,B=2,W=1,FB=2.5" (also latency=, bandwidth=, bytes=, act_mem=, param_mem=) over the
// defaults; keys missing keep their default, except that FB defaults to F + B of the parsed values.
Result<Costs> parse_costs(std::string_view text);
// Rejects negative or non-finite costs and W > B.
Status check_costs(const Costs& costs);

struct OpTiming {
  double start = 0;
  double end = 0;
};

struct TransferTiming {
  Transfer transfer;
  double sent = 0;     // When the producer op ended.
  double arrived = 0;  // When the consumer may use it.
};

struct RankStats {
  double busy = 0;    // Sum of op durations.
  double bubble = 0;  // step_time - busy: idle time inside the step.
  double finish = 0;  // End of the rank's last op.
  int32_t peak_activations = 0;
  int32_t parameters = 0;
  double peak_memory = 0;  // peak_activations * activation_memory + parameters * parameter_memory
};

struct SimulationResult {
  double step_time = 0;  // End of the last op on any rank.
  std::vector<RankStats> ranks;
  std::vector<std::vector<OpTiming>> timeline;  // [rank][op index]
  std::vector<TransferTiming> transfers;
  double max_bubble() const;
  double max_peak_memory() const;
};

// Validates (so a deadlocking schedule is an error naming the blocked op), then simulates.
Result<SimulationResult> simulate_schedule(const Schedule& schedule, const Costs& costs);

// The anchor's closed-form bubble for this schedule's kind with these costs: 1F1B (PP-1)(F+B),
// ZB1P (PP-1)(F+B-2W), DualPipe and DualPipeV (PP/2-1)(FB+B-3W). With zero link cost the
// simulator's largest per-rank bubble equals it (tests check this).
double table_bubble(ScheduleKind kind, int32_t num_stages, const Costs& costs);

// A Chrome trace: one track per rank ("rank 3"), one complete event per op (argument: the
// micro-batch), a flow arrow per transfer. Recorded through ff::trace::Recorder on a ManualClock.
Status write_simulation_trace(const Schedule& schedule, const SimulationResult& result, const std::string& path);
// An SVG in the style of the anchor's figures: ranks top to bottom, time left to right, each op a box
// coloured by kind and labelled with its micro-batch (FB boxes show both).
std::string render_schedule_svg(const Schedule& schedule, const SimulationResult& result);

// A plain-text table of the simulation (step time, bubble and peak memory per rank).
std::string render_simulation_table(const Schedule& schedule, const SimulationResult& result, const Costs& costs);

struct Candidate {
  ScheduleKind kind = ScheduleKind::k1F1B;
  bool feasible = false;     // Generated, and fits the memory limit.
  std::string reason;        // Why not, when not feasible.
  double step_time = 0;
  double max_peak_memory = 0;
  int32_t num_ranks = 0;
};

// Every schedule kind for (num_stages, num_micro_batches), fastest feasible first; infeasible ones
// (bad shape for that kind, or over memory_limit per rank; <= 0 means no limit) last, with reasons.
Result<std::vector<Candidate>> rank_schedules(int32_t num_stages, int32_t num_micro_batches, const Costs& costs,
                                              double memory_limit);

}  // namespace ff::pipe
