// Discrete-event simulation of a schedule, cost parsing, and the `best` search.
#include "ff/pipe/simulate.h"

#include <fmt/format.h>

#include <algorithm>
#include <charconv>
#include <cmath>
#include <limits>

#include "internal.h"

namespace ff::pipe {

namespace {

Result<double> parse_number(std::string_view key, std::string_view text) {
  // std::from_chars for double is in libstdc++ 11+; strtod needs a terminated string.
  std::string copy(text);
  char* end = nullptr;
  const double value = std::strtod(copy.c_str(), &end);
  if (copy.empty() || end != copy.c_str() + copy.size()) {
    return invalid_argument("cost {}='{}' is not a number", key, text);
  }
  return value;
}

}  // namespace

Status check_costs(const Costs& costs) {
  const std::pair<const char*, double> fields[] = {
      {"F", costs.forward},           {"B", costs.backward},
      {"W", costs.weight},            {"FB", costs.forward_backward},
      {"latency", costs.link_latency}, {"bandwidth", costs.link_bytes_per_unit},
      {"bytes", costs.message_bytes},  {"act_mem", costs.activation_memory},
      {"param_mem", costs.parameter_memory}};
  for (const auto& [name, value] : fields) {
    if (!std::isfinite(value) || value < 0) {
      return invalid_argument("cost {}={} must be a finite number >= 0", name, value);
    }
  }
  if (costs.weight > costs.backward) {
    return invalid_argument("W={} exceeds B={}: W is the weight-gradient part of a full backward B", costs.weight,
                            costs.backward);
  }
  return Status::ok();
}

Result<Costs> parse_costs(std::string_view text) {
  Costs costs;
  bool saw_forward_backward = false;
  size_t position = 0;
  // Bounded: each iteration consumes at least one character.
  while (position < text.size()) {
    size_t comma = text.find(',', position);
    if (comma == std::string_view::npos) comma = text.size();
    std::string_view item = text.substr(position, comma - position);
    position = comma + 1;
    if (item.empty()) continue;
    const size_t equals = item.find('=');
    if (equals == std::string_view::npos) {
      return invalid_argument("cost '{}' must look like KEY=VALUE (e.g. F=1,B=2,W=1,FB=2.5)", item);
    }
    const std::string_view key = item.substr(0, equals);
    FF_ASSIGN_OR_RETURN(double value, parse_number(key, item.substr(equals + 1)));
    if (key == "F") {
      costs.forward = value;
    } else if (key == "B") {
      costs.backward = value;
    } else if (key == "W") {
      costs.weight = value;
    } else if (key == "FB") {
      costs.forward_backward = value;
      saw_forward_backward = true;
    } else if (key == "latency") {
      costs.link_latency = value;
    } else if (key == "bandwidth") {
      costs.link_bytes_per_unit = value;
    } else if (key == "bytes") {
      costs.message_bytes = value;
    } else if (key == "act_mem") {
      costs.activation_memory = value;
    } else if (key == "param_mem") {
      costs.parameter_memory = value;
    } else {
      return invalid_argument("unknown cost '{}': expected F, B, W, FB, latency, bandwidth, bytes, act_mem, param_mem",
                              key);
    }
  }
  if (!saw_forward_backward) costs.forward_backward = costs.forward + costs.backward;
  FF_RETURN_IF_ERROR(check_costs(costs));
  return costs;
}

double SimulationResult::max_bubble() const {
  double worst = 0;
  for (const RankStats& rank : ranks) worst = std::max(worst, rank.bubble);
  return worst;
}

double SimulationResult::max_peak_memory() const {
  double worst = 0;
  for (const RankStats& rank : ranks) worst = std::max(worst, rank.peak_memory);
  return worst;
}

namespace {

double op_cost(const Op& op, const Costs& costs) {
  switch (op.kind) {
    case OpKind::kForward: return costs.forward;
    case OpKind::kBackward: return costs.backward;
    case OpKind::kBackwardInput: return costs.backward - costs.weight;
    case OpKind::kWeight: return costs.weight;
    case OpKind::kForwardBackward: return costs.forward_backward;
  }
  FF_UNREACHABLE("op kind {}", static_cast<int>(op.kind));
}

}  // namespace

Result<SimulationResult> simulate_schedule(const Schedule& schedule, const Costs& costs) {
  FF_RETURN_IF_ERROR(check_costs(costs));
  // Validation first: it proves every op below eventually finds its messages.
  FF_ASSIGN_OR_RETURN(ValidationReport report, validate_schedule(schedule));
  FF_ASSIGN_OR_RETURN(TaskIndex index, TaskIndex::make(schedule));

  const int32_t num_ranks = schedule.num_ranks;
  SimulationResult result;
  result.ranks.assign(num_ranks, RankStats{});
  result.timeline.resize(num_ranks);
  for (int32_t rank = 0; rank < num_ranks; ++rank) result.timeline[rank].resize(schedule.ranks[rank].size());
  result.transfers.reserve(report.num_transfers);

  constexpr double kNotYet = -1;
  std::vector<double> arrival(index.size() * 2, kNotYet);  // by transfer_key
  std::vector<double> link_free(static_cast<size_t>(num_ranks) * num_ranks, 0);
  const double wire_time =
      costs.link_bytes_per_unit > 0 ? costs.message_bytes / costs.link_bytes_per_unit : 0;
  std::vector<size_t> pc(num_ranks, 0);
  std::vector<double> rank_free(num_ranks, 0);

  // Each rank runs its next op once all its messages have arrival times. Messages on a link are
  // produced by one rank in op order, so processing ranks in this order keeps each link's queue in
  // send-time order and link serialisation exact. Bounded: validation proved progress each pass.
  size_t remaining = report.num_ops;
  for (size_t pass = 0; pass <= report.num_ops && remaining > 0; ++pass) {
    bool progress = false;
    for (int32_t rank = 0; rank < num_ranks; ++rank) {
      const std::vector<Op>& ops = schedule.ranks[rank];
      while (pc[rank] < ops.size()) {
        const Op& op = ops[pc[rank]];
        double start = rank_free[rank];
        bool ready = true;
        for (const Transfer& t : op.recvs) {
          const double at = arrival[transfer_key(t, index)];
          if (at == kNotYet) {
            ready = false;
            break;
          }
          start = std::max(start, at);
        }
        if (!ready) break;
        const double duration = op_cost(op, costs);
        const double end = start + duration;
        result.timeline[rank][pc[rank]] = OpTiming{start, end};
        result.ranks[rank].busy += duration;
        rank_free[rank] = end;
        for (const Transfer& t : op.sends) {
          double& free_at = link_free[static_cast<size_t>(t.src_rank) * num_ranks + t.dst_rank];
          const double leaves = std::max(end, free_at);
          free_at = leaves + wire_time;
          const double arrives = leaves + wire_time + costs.link_latency;
          arrival[transfer_key(t, index)] = arrives;
          result.transfers.push_back(TransferTiming{t, end, arrives});
        }
        ++pc[rank];
        --remaining;
        progress = true;
      }
    }
    FF_ASSERT(progress, "a validated schedule made no progress in the simulator");
  }
  FF_ASSERT_EQ(remaining, size_t{0});

  for (int32_t rank = 0; rank < num_ranks; ++rank) {
    result.ranks[rank].finish = rank_free[rank];
    result.step_time = std::max(result.step_time, rank_free[rank]);
  }
  for (int32_t rank = 0; rank < num_ranks; ++rank) {
    RankStats& stats = result.ranks[rank];
    stats.bubble = result.step_time - stats.busy;
    stats.peak_activations = report.peak_activations[rank];
    stats.parameters = report.parameters[rank];
    stats.peak_memory = stats.peak_activations * costs.activation_memory + stats.parameters * costs.parameter_memory;
  }
  return result;
}

double table_bubble(ScheduleKind kind, int32_t num_stages, const Costs& costs) {
  const double pp = num_stages;
  switch (kind) {
    case ScheduleKind::k1F1B: return (pp - 1) * (costs.forward + costs.backward);
    case ScheduleKind::kZB1P: return (pp - 1) * (costs.forward + costs.backward - 2 * costs.weight);
    case ScheduleKind::kDualPipe:
    case ScheduleKind::kDualPipeV:
      return (pp / 2 - 1) * (costs.forward_backward + costs.backward - 3 * costs.weight);
  }
  FF_UNREACHABLE("schedule kind {}", static_cast<int>(kind));
}

std::string render_simulation_table(const Schedule& schedule, const SimulationResult& result, const Costs& costs) {
  FF_ASSERT_EQ(result.ranks.size(), schedule.ranks.size());
  std::string out = fmt::format(
      "schedule {}: pp={} stages on {} ranks, {} micro-batches, {} ops\n"
      "costs: F={} B={} W={} FB={} latency={}\n"
      "step time {:.3f}; largest bubble {:.3f} (anchor table: {:.3f})\n",
      schedule_kind_name(schedule.kind), schedule.num_stages, schedule.num_ranks, schedule.num_micro_batches,
      schedule.num_ops(), costs.forward, costs.backward, costs.weight, costs.forward_backward, costs.link_latency,
      result.step_time, result.max_bubble(), table_bubble(schedule.kind, schedule.num_stages, costs));
  out += fmt::format("{:>5} {:>10} {:>10} {:>10} {:>10} {:>8} {:>10}\n", "rank", "busy", "bubble", "finish",
                     "peak_act", "params", "peak_mem");
  for (size_t rank = 0; rank < result.ranks.size(); ++rank) {
    const RankStats& s = result.ranks[rank];
    out += fmt::format("{:>5} {:>10.3f} {:>10.3f} {:>10.3f} {:>10} {:>8} {:>10.3f}\n", rank, s.busy, s.bubble,
                       s.finish, s.peak_activations, s.parameters, s.peak_memory);
  }
  return out;
}

Result<std::vector<Candidate>> rank_schedules(int32_t num_stages, int32_t num_micro_batches, const Costs& costs,
                                              double memory_limit) {
  FF_RETURN_IF_ERROR(check_costs(costs));
  std::vector<Candidate> candidates;
  for (ScheduleKind kind : kAllScheduleKinds) {
    Candidate candidate;
    candidate.kind = kind;
    Result<Schedule> schedule = generate_schedule(kind, num_stages, num_micro_batches);
    if (!schedule.is_ok()) {
      candidate.reason = schedule.status().message();
      candidates.push_back(std::move(candidate));
      continue;
    }
    candidate.num_ranks = schedule->num_ranks;
    FF_ASSIGN_OR_RETURN(SimulationResult result, simulate_schedule(*schedule, costs));
    candidate.step_time = result.step_time;
    candidate.max_peak_memory = result.max_peak_memory();
    if (memory_limit > 0 && candidate.max_peak_memory > memory_limit) {
      candidate.reason = fmt::format("peak memory {:.3f} per rank exceeds the limit {:.3f}",
                                     candidate.max_peak_memory, memory_limit);
    } else {
      candidate.feasible = true;
    }
    candidates.push_back(std::move(candidate));
  }
  std::stable_sort(candidates.begin(), candidates.end(), [](const Candidate& a, const Candidate& b) {
    if (a.feasible != b.feasible) return a.feasible;
    return a.feasible && a.step_time < b.step_time;
  });
  return candidates;
}

}  // namespace ff::pipe
