// ff-pipe: generate, validate and simulate pipeline-parallel schedules (1F1B, ZB1P, DualPipe,
// DualPipeV), and pick the fastest under a memory limit. See docs/pipe.md.
#include <CLI/CLI.hpp>
#include <cstdio>
#include <string>

#include "ff/common/file.h"
#include "ff/pipe/simulate.h"

namespace {

using ff::pipe::Schedule;

int fail(const ff::Status& status) {
  std::fprintf(stderr, "ff-pipe: %s\n", status.to_string().c_str());
  return 1;
}

ff::Result<Schedule> generate(const std::string& name, int pp, int chunks) {
  FF_ASSIGN_OR_RETURN(ff::pipe::ScheduleKind kind, ff::pipe::parse_schedule_kind(name));
  return ff::pipe::generate_schedule(kind, pp, chunks);
}

ff::Status write_pictures(const Schedule& schedule, const ff::pipe::SimulationResult& result,
                          const std::string& trace_path, const std::string& svg_path) {
  if (!trace_path.empty()) {
    FF_RETURN_IF_ERROR(ff::pipe::write_simulation_trace(schedule, result, trace_path));
    std::printf("trace written to %s\n", trace_path.c_str());
  }
  if (!svg_path.empty()) {
    FF_RETURN_IF_ERROR(ff::write_file_atomically(svg_path, ff::pipe::render_schedule_svg(schedule, result)));
    std::printf("svg written to %s\n", svg_path.c_str());
  }
  return ff::Status::ok();
}

ff::Status simulate_and_print(const Schedule& schedule, const std::string& cost_text, const std::string& trace_path,
                              const std::string& svg_path) {
  FF_ASSIGN_OR_RETURN(ff::pipe::Costs costs, ff::pipe::parse_costs(cost_text));
  FF_ASSIGN_OR_RETURN(ff::pipe::SimulationResult result, ff::pipe::simulate_schedule(schedule, costs));
  std::fputs(ff::pipe::render_simulation_table(schedule, result, costs).c_str(), stdout);
  return write_pictures(schedule, result, trace_path, svg_path);
}

int run(int argc, char** argv) {
  CLI::App app{"ff-pipe: pipeline-parallel schedules (1f1b, zb1p, dualpipe, dualpipev)"};
  app.require_subcommand(1);
  std::string schedule_name = "dualpipe";
  int pp = 8;
  int chunks = 20;
  std::string cost_text = "F=1,B=2,W=1,FB=2.5";
  std::string trace_path, svg_path, out_path, in_path;
  double memory_limit = 0;
  int channel_capacity = 0;

  auto add_shape = [&](CLI::App* command) {
    command->add_option("--schedule", schedule_name, "1f1b, zb1p, dualpipe or dualpipev")->capture_default_str();
    command->add_option("--pp", pp, "Pipeline stages (PP; DualPipeV runs them on pp/2 ranks)")->capture_default_str();
    command->add_option("--chunks", chunks, "Micro-batches per step (both directions together)")
        ->capture_default_str();
  };
  auto add_costs = [&](CLI::App* command) {
    command->add_option("--cost", cost_text,
                        "Op costs KEY=VALUE,...: F, B (full backward), W, FB (overlapped F&B), latency, "
                        "bandwidth, bytes, act_mem, param_mem")
        ->capture_default_str();
  };

  CLI::App* simulate = app.add_subcommand("simulate", "Simulate a schedule (generated, or --file) and print a table");
  add_shape(simulate);
  add_costs(simulate);
  simulate->add_option("--file", in_path, "Simulate this schedule file instead of generating one");
  simulate->add_option("--trace", trace_path, "Write a Chrome trace (Perfetto) of the simulated step");
  simulate->add_option("--svg", svg_path, "Write an SVG picture of the schedule");

  CLI::App* best = app.add_subcommand("best", "Rank every schedule for --pp/--chunks by simulated step time");
  best->add_option("--pp", pp, "Pipeline stages")->capture_default_str();
  best->add_option("--chunks", chunks, "Micro-batches per step")->capture_default_str();
  add_costs(best);
  best->add_option("--memory-limit", memory_limit,
                   "Peak memory per rank allowed, in units of act_mem/param_mem (<= 0: no limit)")
      ->capture_default_str();

  CLI::App* generate_command = app.add_subcommand("generate", "Write a schedule as a JSON file");
  add_shape(generate_command);
  generate_command->add_option("--out", out_path, "Output file (JSON, one op per line)")->required();

  CLI::App* validate = app.add_subcommand("validate", "Validate a (hand-edited) schedule file");
  validate->add_option("file", in_path, "Schedule JSON file")->required();
  validate->add_option("--channel-capacity", channel_capacity,
                       "Messages a link buffers before a send blocks (0: unbounded)")
      ->capture_default_str();

  CLI11_PARSE(app, argc, argv);

  if (simulate->parsed()) {
    Schedule schedule;
    if (!in_path.empty()) {
      ff::Result<std::string> text = ff::read_file(in_path);
      if (!text.is_ok()) return fail(text.status());
      ff::Result<Schedule> parsed = ff::pipe::schedule_from_json(*text);
      if (!parsed.is_ok()) return fail(parsed.status().with_context(in_path));
      schedule = std::move(parsed).value();
    } else {
      ff::Result<Schedule> generated = generate(schedule_name, pp, chunks);
      if (!generated.is_ok()) return fail(generated.status());
      schedule = std::move(generated).value();
    }
    ff::Status status = simulate_and_print(schedule, cost_text, trace_path, svg_path);
    return status.is_ok() ? 0 : fail(status);
  }
  if (best->parsed()) {
    ff::Result<ff::pipe::Costs> costs = ff::pipe::parse_costs(cost_text);
    if (!costs.is_ok()) return fail(costs.status());
    ff::Result<std::vector<ff::pipe::Candidate>> ranked = ff::pipe::rank_schedules(pp, chunks, *costs, memory_limit);
    if (!ranked.is_ok()) return fail(ranked.status());
    std::printf("%-10s %6s %10s %12s  %s\n", "schedule", "ranks", "step", "peak_mem", "note");
    for (const ff::pipe::Candidate& c : *ranked) {
      std::printf("%-10s %6d %10.3f %12.3f  %s\n", std::string(ff::pipe::schedule_kind_name(c.kind)).c_str(),
                  c.num_ranks, c.step_time, c.max_peak_memory, c.feasible ? "" : c.reason.c_str());
    }
    if (ranked->empty() || !ranked->front().feasible) {
      return fail(ff::resource_exhausted("no schedule fits pp={} chunks={} under memory limit {}", pp, chunks,
                                         memory_limit));
    }
    std::printf("best: %s\n", std::string(ff::pipe::schedule_kind_name(ranked->front().kind)).c_str());
    return 0;
  }
  if (generate_command->parsed()) {
    ff::Result<Schedule> schedule = generate(schedule_name, pp, chunks);
    if (!schedule.is_ok()) return fail(schedule.status());
    ff::Status status = ff::write_file_atomically(out_path, ff::pipe::schedule_to_json(*schedule));
    if (!status.is_ok()) return fail(status);
    std::printf("%s: %s pp=%d chunks=%d, %zu ops on %d ranks\n", out_path.c_str(), schedule_name.c_str(), pp,
                chunks, schedule->num_ops(), schedule->num_ranks);
    return 0;
  }
  if (validate->parsed()) {
    ff::Result<std::string> text = ff::read_file(in_path);
    if (!text.is_ok()) return fail(text.status());
    ff::Result<Schedule> schedule = ff::pipe::schedule_from_json(*text);
    if (!schedule.is_ok()) return fail(schedule.status().with_context(in_path));
    ff::pipe::ValidateOptions options;
    options.channel_capacity = channel_capacity;
    ff::Result<ff::pipe::ValidationReport> report = ff::pipe::validate_schedule(*schedule, options);
    if (!report.is_ok()) return fail(report.status().with_context(in_path));
    std::printf("%s: valid %s schedule, %zu ops, %zu transfers on %d ranks\n", in_path.c_str(),
                std::string(ff::pipe::schedule_kind_name(schedule->kind)).c_str(), report->num_ops,
                report->num_transfers, schedule->num_ranks);
    std::printf("%5s %10s %8s %12s\n", "rank", "peak_act", "params", "peak_msgs");
    for (int32_t rank = 0; rank < schedule->num_ranks; ++rank) {
      std::printf("%5d %10d %8d %12d\n", rank, report->peak_activations[rank], report->parameters[rank],
                  report->peak_pending_messages[rank]);
    }
    return 0;
  }
  return 0;
}

}  // namespace

int main(int argc, char** argv) { return run(argc, argv); }
