// Pictures of a simulated schedule: Chrome trace and SVG.
#include <fmt/format.h>

#include <algorithm>
#include <bit>

#include "ff/common/clock.h"
#include "ff/common/svg.h"
#include "ff/pipe/simulate.h"
#include "ff/trace/recorder.h"

namespace ff::pipe {

namespace {

// One time unit of the simulation is drawn as one millisecond.
constexpr double kNsPerUnit = 1e6;

int64_t to_ns(double units) { return static_cast<int64_t>(units * kNsPerUnit + 0.5); }

// The recorder needs a `const char*` that outlives it: op_kind_name returns views of string literals,
// which are null-terminated and static.
const char* event_name(OpKind kind) { return op_kind_name(kind).data(); }

// Colours chosen to echo the anchor's figures: forwards warm, backwards green, W blue; the reverse
// direction uses a second shade of each.
std::string op_color(OpKind kind, int32_t direction) {
  size_t base = 0;
  switch (kind) {
    case OpKind::kForward: base = 1; break;
    case OpKind::kBackward: base = 2; break;
    case OpKind::kBackwardInput: base = 2; break;
    case OpKind::kWeight: base = 0; break;
    case OpKind::kForwardBackward: base = 3; break;
  }
  return svg::category_color(base + (direction == 1 ? 6 : 0));
}

}  // namespace

Status write_simulation_trace(const Schedule& schedule, const SimulationResult& result, const std::string& path) {
  FF_ASSERT_EQ(result.timeline.size(), schedule.ranks.size(), "result belongs to another schedule");
  ManualClock clock(0);
  const size_t events = schedule.num_ops() + 2 * result.transfers.size() + 16;
  trace::RecorderOptions options;
  options.events_per_thread = std::bit_ceil(std::max<size_t>(events, 1024));
  options.clock = &clock;
  options.process_name = fmt::format("pipe {} pp={} mb={} (simulated)", schedule_kind_name(schedule.kind),
                                     schedule.num_stages, schedule.num_micro_batches);
  trace::Recorder recorder(options);
  recorder.set_enabled(true);
  constexpr int32_t kPid = 1;
  recorder.set_process_name(options.process_name, kPid);
  for (int32_t rank = 0; rank < schedule.num_ranks; ++rank) {
    recorder.set_track_name(trace::Track{kPid, rank}, fmt::format("rank {}", rank));
    const std::vector<Op>& ops = schedule.ranks[rank];
    for (size_t i = 0; i < ops.size(); ++i) {
      const OpTiming& timing = result.timeline[rank][i];
      recorder.complete(event_name(ops[i].kind), ops[i].task.direction == 0 ? "pipe" : "pipe.reverse",
                        to_ns(timing.start), to_ns(timing.end) - to_ns(timing.start), "micro_batch",
                        ops[i].task.micro_batch, trace::Track{kPid, rank});
    }
  }
  // A flow arrow per transfer, from inside the producer's box to inside the consumer's.
  uint64_t flow_id = 1;
  for (const TransferTiming& t : result.transfers) {
    const char* name = t.transfer.kind == TransferKind::kActivation ? "activation" : "gradient";
    recorder.flow_start(name, "pipe.p2p", flow_id, trace::Track{kPid, t.transfer.src_rank}, to_ns(t.sent) - 1);
    recorder.flow_end(name, "pipe.p2p", flow_id, trace::Track{kPid, t.transfer.dst_rank}, to_ns(t.arrived) + 1);
    ++flow_id;
  }
  FF_ASSERT_EQ(recorder.stats().dropped, uint64_t{0}, "ring sized for every event");
  return recorder.write_json(path);
}

std::string render_schedule_svg(const Schedule& schedule, const SimulationResult& result) {
  FF_ASSERT_EQ(result.timeline.size(), schedule.ranks.size(), "result belongs to another schedule");
  constexpr double kLeft = 70, kTop = 40, kRowHeight = 30, kRowGap = 4, kPlotWidth = 1400;
  const double step = result.step_time > 0 ? result.step_time : 1;
  const double px_per_unit = kPlotWidth / step;
  const double height = kTop + schedule.num_ranks * (kRowHeight + kRowGap) + 60;
  svg::SvgWriter writer(kLeft + kPlotWidth + 20, height);
  writer.text(kLeft, 22,
              fmt::format("{} pp={} ranks={} micro-batches={} step={:.2f} max bubble={:.2f}",
                          schedule_kind_name(schedule.kind), schedule.num_stages, schedule.num_ranks,
                          schedule.num_micro_batches, result.step_time, result.max_bubble()),
              14);
  for (int32_t rank = 0; rank < schedule.num_ranks; ++rank) {
    const double y = kTop + rank * (kRowHeight + kRowGap);
    writer.text(kLeft - 8, y + kRowHeight * 0.65, fmt::format("rank {}", rank), 12, "end");
    writer.rect(kLeft, y, kPlotWidth, kRowHeight, "#f4f4f4");
    const std::vector<Op>& ops = schedule.ranks[rank];
    for (size_t i = 0; i < ops.size(); ++i) {
      const Op& op = ops[i];
      const OpTiming& timing = result.timeline[rank][i];
      const double x = kLeft + timing.start * px_per_unit;
      const double width = std::max(0.5, (timing.end - timing.start) * px_per_unit);
      const std::string tooltip =
          fmt::format("rank {} op #{} {} [{:.3f}, {:.3f})", rank, i, describe_op(op), timing.start, timing.end);
      const double font = std::clamp(width / 2.2, 6.0, 11.0);
      if (op.kind == OpKind::kForwardBackward) {
        // Top half the forward, bottom half the backward, like the anchor's overlapped boxes.
        writer.rect(x, y, width, kRowHeight / 2, op_color(OpKind::kForward, op.task.direction), tooltip, "#ffffff");
        writer.rect(x, y + kRowHeight / 2, width, kRowHeight / 2, op_color(OpKind::kBackward, op.backward.direction),
                    tooltip, "#ffffff");
        if (width >= 10) {
          writer.text(x + width / 2, y + kRowHeight * 0.4, std::to_string(op.task.micro_batch), font * 0.9, "middle");
          writer.text(x + width / 2, y + kRowHeight * 0.9, std::to_string(op.backward.micro_batch), font * 0.9,
                      "middle");
        }
      } else {
        writer.rect(x, y, width, kRowHeight, op_color(op.kind, op.task.direction), tooltip, "#ffffff");
        if (width >= 10) {
          const std::string label = op.kind == OpKind::kWeight || op.kind == OpKind::kBackwardInput
                                        ? fmt::format("{}{}", op_kind_name(op.kind), op.task.micro_batch)
                                        : std::to_string(op.task.micro_batch);
          writer.text(x + width / 2, y + kRowHeight * 0.65, label, font, "middle");
        }
      }
    }
  }
  // Legend.
  const double legend_y = kTop + schedule.num_ranks * (kRowHeight + kRowGap) + 20;
  const std::pair<OpKind, const char*> legend[] = {{OpKind::kForward, "F forward"},
                                                  {OpKind::kBackward, "B backward (I: input grad only)"},
                                                  {OpKind::kWeight, "W weight grad"},
                                                  {OpKind::kForwardBackward, "FB overlapped (top F, bottom B)"}};
  double x = kLeft;
  for (const auto& [kind, label] : legend) {
    writer.rect(x, legend_y, 14, 14, kind == OpKind::kForwardBackward ? op_color(OpKind::kForward, 0)
                                                                      : op_color(kind, 0));
    writer.text(x + 18, legend_y + 11, label, 11);
    x += 250;
  }
  if (schedule.num_directions == 2) {
    writer.rect(x, legend_y, 14, 14, op_color(OpKind::kForward, 1));
    writer.text(x + 18, legend_y + 11, "reverse direction", 11);
  }
  return writer.finish();
}

}  // namespace ff::pipe
