// ff-trace: summarises a Chrome trace (ours or a PyTorch profiler trace) as a text report, and
// optionally a JSON report and an SVG timeline. See docs/trace-analysis.md.
#include <unistd.h>

#include <CLI/CLI.hpp>
#include <cstdio>
#include <string>
#include <vector>

#include "ff/common/file.h"
#include "ff/trace/analysis.h"

namespace {

int run(int argc, char** argv) {
  CLI::App app{"ff-trace: analyse a Chrome trace (Fireflyer recorder or PyTorch profiler; .json or .json.gz)"};
  std::string trace_path;
  std::string json_path;
  bool progress_flag = false;
  std::vector<std::string> comm_patterns;
  std::vector<std::string> ignore_categories;
  bool no_default_patterns = false;
  bool no_default_ignores = false;
  ff::trace::AnalysisOptions options;
  app.add_option("trace", trace_path, "Chrome trace file (JSON object or array form, optionally gzip)")->required();
  app.add_option("--top", options.top_n, "Number of event names in the top table")->capture_default_str();
  app.add_option("--json", json_path, "Also write the report as JSON to this file");
  app.add_option("--svg", options.svg_path, "Also write an SVG timeline summary to this file");
  app.add_option("--comm-pattern", comm_patterns,
                 "Extra case-insensitive regex marking communication events by name (repeatable)");
  app.add_flag("--no-default-comm-patterns", no_default_patterns, "Use only the --comm-pattern patterns");
  app.add_option("--ignore-category", ignore_categories,
                 "Extra category that is neither compute nor comm (repeatable)");
  app.add_flag("--no-default-ignore-categories", no_default_ignores, "Use only the --ignore-category categories");
  app.add_option("--memory-limit-mb", options.memory_limit_mb, "Memory budget for interval records; beyond it "
                 "they spill to --tmp-dir")->capture_default_str()->check(CLI::Range(size_t{1}, size_t{1} << 30));
  app.add_option("--tmp-dir", options.tmp_dir, "Directory for spilled runs (default $TMPDIR or /tmp)");
  app.add_option("--buckets", options.svg_buckets, "Time buckets of the SVG timeline")->capture_default_str()
      ->check(CLI::Range(size_t{1}, size_t{100000}));
  app.add_flag("--progress", progress_flag, "Print progress to stderr even when it is not a terminal");
  CLI11_PARSE(app, argc, argv);

  if (no_default_patterns) options.comm_patterns.clear();
  options.comm_patterns.insert(options.comm_patterns.end(), comm_patterns.begin(), comm_patterns.end());
  if (no_default_ignores) options.ignore_categories.clear();
  options.ignore_categories.insert(options.ignore_categories.end(), ignore_categories.begin(), ignore_categories.end());

  const bool tty = ::isatty(STDERR_FILENO) != 0;
  bool printed_progress = false;
  if (tty || progress_flag) {
    options.progress_interval_bytes = uint64_t{64} << 20;
    options.progress = [&](const ff::trace::AnalysisProgress& progress) {
      const double read_mb = static_cast<double>(progress.file_bytes_read) / 1e6;
      const double total_mb = static_cast<double>(progress.file_size_bytes) / 1e6;
      const double rate_mb_per_s = progress.elapsed_s > 0 ? read_mb / progress.elapsed_s : 0;
      const double eta_s = rate_mb_per_s > 0 ? std::max(0.0, total_mb - read_mb) / rate_mb_per_s : 0;
      std::fprintf(stderr, "%sff-trace: %.0f / %.0f MB read, %.0f MB/s, ETA %.0f s%s", tty ? "\r" : "", read_mb,
                   total_mb, rate_mb_per_s, eta_s, tty ? "   " : "\n");
      printed_progress = true;
    };
  }
  ff::Result<ff::trace::TraceReport> report = ff::trace::analyze_trace_file(trace_path, options);
  if (printed_progress && tty) std::fprintf(stderr, "\n");
  if (!report.is_ok()) {
    std::fprintf(stderr, "ff-trace: %s\n", report.status().to_string().c_str());
    return 1;
  }
  std::fputs(ff::trace::render_text(*report).c_str(), stdout);
  if (!json_path.empty()) {
    ff::Status status = ff::write_file_atomically(json_path, ff::trace::render_json(*report));
    if (!status.is_ok()) {
      std::fprintf(stderr, "ff-trace: writing %s: %s\n", json_path.c_str(), status.to_string().c_str());
      return 1;
    }
  }
  return 0;
}

}  // namespace

int main(int argc, char** argv) { return run(argc, argv); }
