// ff-eplb: computes an expert placement from measured expert loads.
//
//   ff-eplb loads.csv --replicas 16 --groups 4 --nodes 2 --gpus 8 --policy refine
//           --out placement.json --svg heatmap.svg
//
// Reads loads per layer and expert (CSV, JSON or .npy), runs the anchor and the refine policy, prints
// the per-GPU loads of the first layers and a summary over all layers for both, writes the chosen
// placement as JSON and draws a heatmap of GPU loads before (each expert once, in order) and after.
#include <CLI/CLI.hpp>
#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <string>
#include <vector>

#include "ff/common/assert.h"
#include "ff/common/file.h"
#include "ff/common/svg.h"
#include "ff/eplb/eplb.h"
#include "ff/eplb/load_file.h"

namespace {

using ff::Result;
using ff::Status;
namespace eplb = ff::eplb;

struct Arguments {
  std::string input;
  int64_t num_replicas = 0;
  int64_t num_groups = 1;
  int64_t num_nodes = 1;
  int64_t num_gpus = 0;
  std::string policy = "anchor";
  std::string out_path;
  std::string svg_path;
  int64_t layers_shown = 4;
};

// GPU loads (num_layers, num_gpus) of one placement with its per-layer imbalance.
struct Evaluated {
  std::string name;
  std::vector<double> loads;
  std::vector<double> imbalance;
  double mean_imbalance = 0;
};

Evaluated evaluate(std::string name, const std::vector<double>& loads, int64_t num_gpus) {
  Evaluated result{std::move(name), loads, eplb::imbalance_per_layer(loads, num_gpus), 0};
  for (double value : result.imbalance) result.mean_imbalance += value;
  result.mean_imbalance /= static_cast<double>(result.imbalance.size());
  return result;
}

// "Before": no redundancy, expert e on GPU e * num_gpus / num_experts (contiguous blocks of
// num_experts / num_gpus when that divides; otherwise blocks differ by one, as reported).
std::vector<double> loads_without_redundancy(const eplb::LoadMatrix& weight, int64_t num_gpus) {
  std::vector<double> loads(weight.num_layers * num_gpus, 0.0);
  for (int64_t layer = 0; layer < weight.num_layers; ++layer) {
    for (int64_t expert = 0; expert < weight.num_experts; ++expert) {
      const int64_t gpu = expert * num_gpus / weight.num_experts;
      loads[layer * num_gpus + gpu] += weight.values[layer * weight.num_experts + expert];
    }
  }
  return loads;
}

void print_table(const Evaluated& evaluated, int64_t num_layers, int64_t num_gpus, int64_t layers_shown) {
  fmt::print("{}: per-GPU load\n", evaluated.name);
  const int64_t shown = std::min(layers_shown, num_layers);
  for (int64_t layer = 0; layer < shown; ++layer) {
    fmt::print("  layer {:>3}:", layer);
    for (int64_t gpu = 0; gpu < num_gpus; ++gpu) fmt::print(" {:>8.1f}", evaluated.loads[layer * num_gpus + gpu]);
    fmt::print("   imbalance {:.4f}\n", evaluated.imbalance[layer]);
  }
  if (shown < num_layers) fmt::print("  ... {} more layers\n", num_layers - shown);
  double sum_max = 0;
  double sum_mean = 0;
  double worst = 0;
  int64_t worst_layer = 0;
  for (int64_t layer = 0; layer < num_layers; ++layer) {
    const auto row = evaluated.loads.begin() + layer * num_gpus;
    double total = 0;
    for (int64_t gpu = 0; gpu < num_gpus; ++gpu) total += row[gpu];
    sum_max += *std::max_element(row, row + num_gpus);
    sum_mean += total / static_cast<double>(num_gpus);
    if (evaluated.imbalance[layer] > worst) {
      worst = evaluated.imbalance[layer];
      worst_layer = layer;
    }
  }
  fmt::print("  all {} layers: max GPU load {:.1f}, mean GPU load {:.1f} (averaged over layers), imbalance "
             "{:.4f} mean, {:.4f} worst (layer {})\n",
             num_layers, sum_max / num_layers, sum_mean / num_layers, evaluated.mean_imbalance, worst, worst_layer);
}

// Rows = layers, columns = GPUs, colour = load / the layer's mean load; two panels side by side.
Status write_heatmap(const std::string& path, const Evaluated& before, const std::string& before_title,
                     const Evaluated& after, int64_t num_layers, int64_t num_gpus, const std::string& title) {
  // Panels at least 320 px wide so their captions fit above them.
  const double cell_width = std::max(std::clamp(360.0 / static_cast<double>(num_gpus), 2.0, 28.0),
                                     320.0 / static_cast<double>(num_gpus));
  const double cell_height = std::clamp(480.0 / static_cast<double>(num_layers), 2.0, 20.0);
  const double panel_width = cell_width * static_cast<double>(num_gpus);
  const double panel_height = cell_height * static_cast<double>(num_layers);
  const double left = 60;
  const double top = 70;
  const double gap = 70;
  const double legend_width = 110;
  const double width = left + 2 * panel_width + gap + legend_width + 20;
  const double height = top + panel_height + 60;
  // The colour scale: 0 to the largest ratio seen (at least 2, so "twice the mean" is always red-ish).
  double scale = 2.0;
  for (const Evaluated* evaluated : {&before, &after}) {
    for (int64_t layer = 0; layer < num_layers; ++layer) {
      double total = 0;
      for (int64_t gpu = 0; gpu < num_gpus; ++gpu) total += evaluated->loads[layer * num_gpus + gpu];
      const double mean = total / static_cast<double>(num_gpus);
      for (int64_t gpu = 0; gpu < num_gpus; ++gpu) {
        if (mean > 0) scale = std::max(scale, evaluated->loads[layer * num_gpus + gpu] / mean);
      }
    }
  }
  ff::svg::SvgWriter svg(width, height);
  svg.text(width / 2, 24, title, 16, "middle");
  const struct {
    const Evaluated* evaluated;
    std::string caption;
  } panels[] = {{&before, before_title}, {&after, fmt::format("after: {} (imbalance {:.3f})", after.name,
                                                                after.mean_imbalance)}};
  for (int panel = 0; panel < 2; ++panel) {
    const Evaluated& evaluated = *panels[panel].evaluated;
    const double x0 = left + panel * (panel_width + gap);
    svg.text(x0 + panel_width / 2, top - 22, panels[panel].caption, 11, "middle");
    for (int64_t layer = 0; layer < num_layers; ++layer) {
      double total = 0;
      for (int64_t gpu = 0; gpu < num_gpus; ++gpu) total += evaluated.loads[layer * num_gpus + gpu];
      const double mean = total / static_cast<double>(num_gpus);
      for (int64_t gpu = 0; gpu < num_gpus; ++gpu) {
        const double load = evaluated.loads[layer * num_gpus + gpu];
        const double ratio = mean > 0 ? load / mean : 1.0;
        svg.rect(x0 + gpu * cell_width, top + layer * cell_height, cell_width, cell_height,
                 ff::svg::heat_color(ratio / scale),
                 fmt::format("layer {}, GPU {}: load {:.1f} = {:.2f} x mean", layer, gpu, load, ratio));
      }
    }
    svg.rect(x0, top, panel_width, panel_height, "none", {}, "#444444");
    // Axis labels and a few ticks.
    svg.text(x0 + panel_width / 2, top + panel_height + 34, "GPU", 12, "middle");
    const int64_t gpu_step = std::max<int64_t>(1, num_gpus / 8);
    for (int64_t gpu = 0; gpu < num_gpus; gpu += gpu_step) {
      svg.text(x0 + (gpu + 0.5) * cell_width, top + panel_height + 14, std::to_string(gpu), 9, "middle");
    }
    const int64_t layer_step = std::max<int64_t>(1, num_layers / 10);
    for (int64_t layer = 0; layer < num_layers; layer += layer_step) {
      svg.text(x0 - 4, top + (layer + 0.5) * cell_height + 3, std::to_string(layer), 9, "end");
    }
  }
  svg.text(18, top + panel_height / 2, "layer", 12, "middle");
  // Legend: the colour ramp from 0 to `scale` times the layer's mean load.
  const double legend_x = left + 2 * panel_width + gap + 20;
  const int kSteps = 40;
  const double legend_height = std::min(panel_height, 240.0);
  svg.text(legend_x, top - 22, "load / layer mean", 11);
  for (int step = 0; step < kSteps; ++step) {
    const double t = 1.0 - (step + 0.5) / kSteps;
    svg.rect(legend_x, top + step * legend_height / kSteps, 16, legend_height / kSteps + 0.5, ff::svg::heat_color(t));
  }
  svg.rect(legend_x, top, 16, legend_height, "none", {}, "#444444");
  for (double mark : {scale, 1.0, 0.0}) {
    const double y = top + (1.0 - mark / scale) * legend_height;
    svg.text(legend_x + 22, y + 4, fmt::format("{:.2f}{}", mark, mark == 1.0 ? " (mean)" : ""), 10);
  }
  return svg.write_to(path);
}

nlohmann::json rows(const std::vector<int64_t>& values, int64_t num_rows, int64_t row_length) {
  nlohmann::json result = nlohmann::json::array();
  for (int64_t row = 0; row < num_rows; ++row) {
    result.push_back(std::vector<int64_t>(values.begin() + row * row_length, values.begin() + (row + 1) * row_length));
  }
  return result;
}

Status run(const Arguments& arguments) {
  FF_ASSIGN_OR_RETURN(const eplb::Policy policy, eplb::parse_policy(arguments.policy));
  FF_ASSIGN_OR_RETURN(const eplb::LoadMatrix weight, eplb::read_load_file(arguments.input));
  eplb::RebalanceOptions options{.num_replicas = arguments.num_replicas, .num_groups = arguments.num_groups,
                                 .num_nodes = arguments.num_nodes, .num_gpus = arguments.num_gpus,
                                 .policy = eplb::Policy::kAnchor};
  const int64_t num_gpus = options.num_gpus;
  const auto started = std::chrono::steady_clock::now();
  FF_ASSIGN_OR_RETURN(const eplb::Placement anchor, eplb::rebalance_experts(weight.view(), options));
  const auto anchor_done = std::chrono::steady_clock::now();
  options.policy = eplb::Policy::kRefine;
  FF_ASSIGN_OR_RETURN(const eplb::Placement refined, eplb::rebalance_experts(weight.view(), options));
  const auto refine_done = std::chrono::steady_clock::now();
  const eplb::Placement& chosen = policy == eplb::Policy::kRefine ? refined : anchor;

  fmt::print("{}: {} layers x {} experts -> {} replicas on {} GPUs in {} nodes ({} groups, {} placement)\n",
             arguments.input, weight.num_layers, weight.num_experts, options.num_replicas, num_gpus, options.num_nodes,
             options.num_groups, eplb::is_hierarchical(options) ? "hierarchical" : "global");
  fmt::print("rebalance took {:.3f} ms (anchor), {:.3f} ms (refine)\n",
             std::chrono::duration<double, std::milli>(anchor_done - started).count(),
             std::chrono::duration<double, std::milli>(refine_done - anchor_done).count());
  FF_ASSIGN_OR_RETURN(std::vector<double> anchor_loads,
                      eplb::gpu_loads(weight.view(), anchor.phy2log, anchor.logcnt, options.num_replicas, num_gpus));
  FF_ASSIGN_OR_RETURN(std::vector<double> refined_loads, eplb::gpu_loads(weight.view(), refined.phy2log,
                                                                         refined.logcnt, options.num_replicas, num_gpus));
  const Evaluated anchor_evaluated = evaluate("anchor", anchor_loads, num_gpus);
  const Evaluated refined_evaluated = evaluate("refine", refined_loads, num_gpus);
  print_table(anchor_evaluated, weight.num_layers, num_gpus, arguments.layers_shown);
  print_table(refined_evaluated, weight.num_layers, num_gpus, arguments.layers_shown);
  fmt::print("imbalance (max / mean GPU load, mean over layers): anchor {:.4f}, refine {:.4f} ({:+.2f}%)\n",
             anchor_evaluated.mean_imbalance, refined_evaluated.mean_imbalance,
             100.0 * (refined_evaluated.mean_imbalance / anchor_evaluated.mean_imbalance - 1.0));
  const Evaluated& chosen_evaluated = policy == eplb::Policy::kRefine ? refined_evaluated : anchor_evaluated;

  if (!arguments.out_path.empty()) {
    nlohmann::json document;
    document["input"] = arguments.input;
    document["policy"] = arguments.policy;
    document["num_layers"] = weight.num_layers;
    document["num_experts"] = weight.num_experts;
    document["num_replicas"] = options.num_replicas;
    document["num_groups"] = options.num_groups;
    document["num_nodes"] = options.num_nodes;
    document["num_gpus"] = num_gpus;
    document["hierarchical"] = eplb::is_hierarchical(options);
    document["phy2log"] = rows(chosen.phy2log, chosen.num_layers, chosen.num_replicas);
    nlohmann::json log2phy = nlohmann::json::array();
    for (int64_t layer = 0; layer < chosen.num_layers; ++layer) {
      const std::vector<int64_t> layer_values(
          chosen.log2phy.begin() + layer * chosen.num_experts * chosen.max_replicas,
          chosen.log2phy.begin() + (layer + 1) * chosen.num_experts * chosen.max_replicas);
      log2phy.push_back(rows(layer_values, chosen.num_experts, chosen.max_replicas));
    }
    document["log2phy"] = std::move(log2phy);
    document["logcnt"] = rows(chosen.logcnt, chosen.num_layers, chosen.num_experts);
    nlohmann::json gpu_loads = nlohmann::json::array();
    for (int64_t layer = 0; layer < chosen.num_layers; ++layer) {
      gpu_loads.push_back(std::vector<double>(chosen_evaluated.loads.begin() + layer * num_gpus,
                                              chosen_evaluated.loads.begin() + (layer + 1) * num_gpus));
    }
    document["gpu_loads"] = std::move(gpu_loads);
    document["imbalance"] = {{"per_layer", chosen_evaluated.imbalance}, {"mean", chosen_evaluated.mean_imbalance}};
    document["anchor_imbalance"] = anchor_evaluated.mean_imbalance;
    document["refined_imbalance"] = refined_evaluated.mean_imbalance;
    FF_RETURN_IF_ERROR(ff::write_file_atomically(arguments.out_path, document.dump(1) + "\n"));
    fmt::print("wrote placement to {}\n", arguments.out_path);
  }

  if (!arguments.svg_path.empty()) {
    std::string before_title;
    if (weight.num_experts % num_gpus == 0) {
      before_title = fmt::format("before: each expert once, {} per GPU", weight.num_experts / num_gpus);
    } else {
      // Without redundancy the anchor itself needs num_experts divisible by num_gpus; show the nearest
      // layout: contiguous blocks whose sizes differ by one.
      fmt::print("note: {} experts do not divide into {} GPUs; the 'before' panel places expert e on GPU "
                 "e * {} / {} (blocks of {} or {})\n",
                 weight.num_experts, num_gpus, num_gpus, weight.num_experts, weight.num_experts / num_gpus,
                 weight.num_experts / num_gpus + 1);
      before_title = fmt::format("before: each expert once, {} / {} uneven", weight.num_experts, num_gpus);
    }
    const Evaluated before = evaluate("before", loads_without_redundancy(weight, num_gpus), num_gpus);
    before_title += fmt::format(" (imbalance {:.3f})", before.mean_imbalance);
    FF_RETURN_IF_ERROR(write_heatmap(
        arguments.svg_path, before, before_title, chosen_evaluated, weight.num_layers, num_gpus,
        fmt::format("GPU load / layer mean: {} layers, {} experts, {} replicas on {} GPUs", weight.num_layers,
                    weight.num_experts, options.num_replicas, num_gpus)));
    fmt::print("wrote heatmap to {}\n", arguments.svg_path);
  }
  return Status::ok();
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"ff-eplb: expert placement (redundant experts, hierarchical or global) from measured expert loads"};
  Arguments arguments;
  app.add_option("loads", arguments.input, "loads per layer and expert: .csv (rows = layers), .json or .npy")
      ->required();
  app.add_option("--replicas", arguments.num_replicas, "physical experts per layer over all GPUs")->required();
  app.add_option("--groups", arguments.num_groups, "expert groups (packed onto nodes whole)")->capture_default_str();
  app.add_option("--nodes", arguments.num_nodes, "server nodes")->capture_default_str();
  app.add_option("--gpus", arguments.num_gpus, "GPUs over all nodes")->required();
  app.add_option("--policy", arguments.policy, "anchor (DeepSeek EPLB's placement) or refine")
      ->check(CLI::IsMember({"anchor", "refine"}))
      ->capture_default_str();
  app.add_option("--out", arguments.out_path, "write the placement as JSON here");
  app.add_option("--svg", arguments.svg_path, "draw a heatmap of GPU loads before and after here");
  app.add_option("--layers-shown", arguments.layers_shown, "layers printed in the load table")->capture_default_str();
  CLI11_PARSE(app, argc, argv);
  const Status status = run(arguments);
  if (!status.is_ok()) {
    fmt::print(stderr, "ff-eplb: error: {}\n", status.message());
    return 1;
  }
  return 0;
}
