// fireflyer._C.pipe: schedules cross as JSON text (the schedule file format), results as dicts.
// The Python wrapper (fireflyer/pipe.py) is the documented surface.
#include <nanobind/stl/string.h>

#include "binding.h"
#include "ff/common/file.h"
#include "ff/pipe/executor.h"
#include "ff/pipe/simulate.h"

namespace ff::python {

namespace {

using namespace ff::pipe;

Schedule parse(const std::string& json) { return value_or_throw(schedule_from_json(json)); }

// Costs from a {"F": 1, "B": 2, ...} dict, through the same parser as the command line so the
// defaults (FB = F + B) and checks are one piece of code.
Costs costs_from(const nb::dict& costs) {
  std::string text;
  for (auto [key, value] : costs) {
    const std::string name = nb::cast<std::string>(key);
    const double number = nb::cast<double>(value);
    text += fmt::format("{}{}={}", text.empty() ? "" : ",", name, number);
  }
  return value_or_throw(parse_costs(text));
}

nb::list int_list(const std::vector<int32_t>& values) {
  nb::list out;
  for (int32_t value : values) out.append(value);
  return out;
}

nb::dict simulation_dict(const Schedule& schedule, const SimulationResult& result, const Costs& costs) {
  nb::dict out;
  out["schedule"] = std::string(schedule_kind_name(schedule.kind));
  out["pp"] = schedule.num_stages;
  out["num_ranks"] = schedule.num_ranks;
  out["chunks"] = schedule.num_micro_batches;
  out["num_ops"] = schedule.num_ops();
  out["step_time"] = result.step_time;
  out["max_bubble"] = result.max_bubble();
  out["table_bubble"] = table_bubble(schedule.kind, schedule.num_stages, costs);
  nb::list bubble, busy, finish, peak_activations, parameters, peak_memory;
  for (const RankStats& rank : result.ranks) {
    bubble.append(rank.bubble);
    busy.append(rank.busy);
    finish.append(rank.finish);
    peak_activations.append(rank.peak_activations);
    parameters.append(rank.parameters);
    peak_memory.append(rank.peak_memory);
  }
  out["bubble"] = bubble;
  out["busy"] = busy;
  out["finish"] = finish;
  out["peak_activations"] = peak_activations;
  out["parameters"] = parameters;
  out["peak_memory"] = peak_memory;
  out["num_transfers"] = result.transfers.size();
  out["table"] = render_simulation_table(schedule, result, costs);
  return out;
}

}  // namespace

void bind_pipe(nb::module_& module) {
  module.def(
      "generate",
      [](const std::string& kind, int32_t pp, int32_t chunks) {
        ScheduleKind parsed = value_or_throw(parse_schedule_kind(kind));
        return schedule_to_json(value_or_throw(generate_schedule(parsed, pp, chunks)));
      },
      nb::arg("schedule"), nb::arg("pp"), nb::arg("chunks"), "Generates a schedule; returns its JSON file text.");
  module.def(
      "normalize",
      [](const std::string& json) { return schedule_to_json(parse(json)); }, nb::arg("schedule_json"),
      "Parses and re-writes a schedule (ValueError naming the rank and op of a malformed op).");
  module.def(
      "validate",
      [](const std::string& json, int32_t channel_capacity) {
        Schedule schedule = parse(json);
        ValidateOptions options;
        options.channel_capacity = channel_capacity;
        ValidationReport report = value_or_throw(validate_schedule(schedule, options));
        nb::dict out;
        out["peak_activations"] = int_list(report.peak_activations);
        out["parameters"] = int_list(report.parameters);
        out["peak_pending_messages"] = int_list(report.peak_pending_messages);
        out["num_ops"] = report.num_ops;
        out["num_transfers"] = report.num_transfers;
        return out;
      },
      nb::arg("schedule_json"), nb::arg("channel_capacity") = 0);
  module.def(
      "simulate",
      [](const std::string& json, const nb::dict& costs_dict, const std::string& trace_path,
         const std::string& svg_path) {
        Schedule schedule = parse(json);
        Costs costs = costs_from(costs_dict);
        SimulationResult result = value_or_throw(simulate_schedule(schedule, costs));
        if (!trace_path.empty()) throw_if_error(write_simulation_trace(schedule, result, trace_path));
        if (!svg_path.empty()) throw_if_error(write_file_atomically(svg_path, render_schedule_svg(schedule, result)));
        return simulation_dict(schedule, result, costs);
      },
      nb::arg("schedule_json"), nb::arg("costs"), nb::arg("trace_path") = "", nb::arg("svg_path") = "");
  module.def(
      "rank_schedules",
      [](int32_t pp, int32_t chunks, const nb::dict& costs_dict, double memory_limit) {
        std::vector<Candidate> ranked = value_or_throw(rank_schedules(pp, chunks, costs_from(costs_dict), memory_limit));
        nb::list out;
        for (const Candidate& c : ranked) {
          nb::dict item;
          item["schedule"] = std::string(schedule_kind_name(c.kind));
          item["feasible"] = c.feasible;
          item["reason"] = c.reason;
          item["step_time"] = c.step_time;
          item["max_peak_memory"] = c.max_peak_memory;
          item["num_ranks"] = c.num_ranks;
          out.append(item);
        }
        return out;
      },
      nb::arg("pp"), nb::arg("chunks"), nb::arg("costs"), nb::arg("memory_limit") = 0.0);
  module.def(
      "table_bubble",
      [](const std::string& kind, int32_t pp, const nb::dict& costs_dict) {
        return table_bubble(value_or_throw(parse_schedule_kind(kind)), pp, costs_from(costs_dict));
      },
      nb::arg("schedule"), nb::arg("pp"), nb::arg("costs"));
  module.def(
      "execute",
      [](const std::string& json, int32_t hidden, int32_t ffn, int32_t rows, uint64_t seed, int64_t timeout_ms,
         int32_t channel_capacity, const std::string& trace_path) {
        if (hidden < 1 || ffn < 1 || rows < 1) {
          throw nb::value_error(fmt::format("hidden={}, ffn={}, rows={} must be >= 1", hidden, ffn, rows).c_str());
        }
        Schedule schedule = parse(json);
        MlpConfig config{hidden, ffn, rows, seed};
        const MlpModel model = make_mlp_model(config, schedule.num_stages);
        const Batch batch = make_batch(config, schedule.num_micro_batches);
        ExecutorOptions options;
        options.timeout_ms = timeout_ms;
        options.channel_capacity = channel_capacity;
        std::unique_ptr<trace::Recorder> recorder;
        if (!trace_path.empty()) {
          trace::RecorderOptions recorder_options;
          recorder_options.events_per_thread = size_t{1} << 16;
          recorder = std::make_unique<trace::Recorder>(recorder_options);
          recorder->set_enabled(true);
          options.recorder = recorder.get();
        }
        ExecutionResult result;
        {
          nb::gil_scoped_release release;  // The step runs its own threads; Python may go on.
          Result<ExecutionResult> run = execute_schedule(schedule, model, batch, options);
          if (run.is_ok()) result = std::move(run).value();
          else {
            nb::gil_scoped_acquire acquire;
            throw_if_error(run.status());
          }
        }
        if (recorder) throw_if_error(recorder->write_json(trace_path));
        const Gradients reference = run_reference(model, batch);
        double max_relative_error = 0;
        for (size_t s = 0; s < reference.stages.size(); ++s) {
          double diff = 0, norm = 0;
          for (size_t i = 0; i < reference.stages[s].size(); ++i) {
            diff = std::max(diff, std::abs(result.gradients.stages[s][i] - reference.stages[s][i]));
            norm = std::max(norm, std::abs(reference.stages[s][i]));
          }
          max_relative_error = std::max(max_relative_error, norm > 0 ? diff / norm : diff);
        }
        nb::dict out;
        out["wall_s"] = result.wall_s;
        nb::list busy;
        for (double value : result.busy_s) busy.append(value);
        out["busy_s"] = busy;
        nb::dict mean_op_s;
        for (int k = 0; k < 5; ++k) mean_op_s[op_kind_name(static_cast<OpKind>(k)).data()] = result.mean_op_s[k];
        out["mean_op_s"] = mean_op_s;
        out["max_relative_error"] = max_relative_error;
        double loss = 0;
        for (double value : result.gradients.losses) loss += value;
        out["loss"] = loss;
        return out;
      },
      nb::arg("schedule_json"), nb::arg("hidden") = 8, nb::arg("ffn") = 16, nb::arg("rows") = 4,
      nb::arg("seed") = 1, nb::arg("timeout_ms") = 10000, nb::arg("channel_capacity") = 0,
      nb::arg("trace_path") = "",
      "Runs one step of the built-in MLP with one thread per rank; compares gradients with an "
      "unpipelined run (max_relative_error).");
}

}  // namespace ff::python
