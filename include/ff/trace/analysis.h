// Trace analysis: reads a Chrome trace (written by ff::trace::Recorder, by the PyTorch profiler, or
// anything else in the Chrome trace event format) and summarises where time went: busy time and
// utilisation per process and thread (GPU and stream for PyTorch traces), communication vs
// computation per process and how much communication was hidden under computation, the top events
// by total time, and an SVG timeline summary.
//
// Input: the JSON object form {"traceEvents": [...], ...} or the bare array form [...] (whose
// closing bracket may be missing, as Chrome tolerates), plain or gzip-compressed. Complete events
// ("X") and begin/end pairs ("B"/"E") are intervals; instant, counter, flow, async and metadata
// events are counted but never busy; "process_name"/"thread_name" metadata names the rows.
//
// Memory is bounded whatever the trace size: the file is streamed through a fixed buffer, each
// interval is kept as a 24-byte record, and records beyond memory_limit_mb are spilled to sorted
// run files in tmp_dir and merged. Per-name statistics are bounded by max_distinct_names.
//
// Thread-safety: the functions are reentrant; distinct calls may run concurrently.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "ff/common/result.h"
#include "ff/common/status.h"

namespace ff::trace {

// What an interval event is counted as. kOther: its category is ignored (CPU-side ops of a PyTorch
// trace); it still counts toward its own thread's busy time and the top events, but is neither
// communication nor computation.
enum class EventClass : uint8_t { kCompute = 0, kComm = 1, kOther = 2 };
std::string_view event_class_name(EventClass event_class);

// Name patterns that mark communication: case-insensitive ECMAScript regular expressions searched
// anywhere in the event name, so a plain word such as "nccl" is a substring match.
std::vector<std::string> default_comm_patterns();
// Categories (exact, case-insensitive) that are neither compute nor comm: the CPU side of PyTorch.
std::vector<std::string> default_ignore_categories();

// Classifies events by name and category. Immutable after create(); safe to share across threads.
class EventClassifier {
 public:
  // Fails with invalid_argument naming the pattern when a pattern is not a valid regex.
  static Result<EventClassifier> create(const std::vector<std::string>& comm_patterns,
                                        const std::vector<std::string>& ignore_categories);
  static EventClassifier defaults();

  bool is_comm_name(std::string_view name) const;
  bool is_ignored_category(std::string_view category) const;
  // kOther when the category is ignored, else kComm when the name matches a comm pattern, else kCompute.
  EventClass classify(std::string_view name, std::string_view category) const;

 private:
  struct Impl;
  explicit EventClassifier(std::shared_ptr<const Impl> impl) : impl_(std::move(impl)) {}
  std::shared_ptr<const Impl> impl_;
};

struct AnalysisProgress {
  uint64_t file_bytes_read = 0;   // Of the file on disk (compressed bytes for gzip).
  uint64_t file_size_bytes = 0;
  double elapsed_s = 0;
};

struct AnalysisOptions {
  size_t top_n = 20;
  std::vector<std::string> comm_patterns = default_comm_patterns();
  std::vector<std::string> ignore_categories = default_ignore_categories();
  // Budget for interval records in memory (half of it) and merge buffers; beyond it records spill.
  size_t memory_limit_mb = 1024;
  // Where spilled runs go; empty: $TMPDIR, else /tmp. Run files are unlinked as soon as they are
  // created, so nothing is left behind even if the process is killed.
  std::string tmp_dir;
  // Writes the SVG timeline summary here when not empty.
  std::string svg_path;
  size_t svg_buckets = 400;
  size_t svg_max_rows = 96;  // The tracks with most events are drawn; the rest are named as omitted.
  // Names beyond this many distinct ones are counted under "(other names)".
  size_t max_distinct_names = 200000;
  // Tracks (pid, tid) beyond this many are an error: a trace with millions of threads is not a
  // profile this tool can summarise.
  size_t max_tracks = 1 << 20;
  // Deepest nesting of "B" events per track; deeper is an error (unbalanced B/E, usually).
  size_t max_begin_depth = 256;
  // For tests: when > 0, overrides the number of interval records held before a spill, and the
  // merge fan-in, so the spill and multi-pass merge paths run on small traces.
  size_t max_buffered_intervals = 0;
  size_t max_merge_fan_in = 64;
  // Called about every progress_interval_bytes of file read, and once at the end.
  std::function<void(const AnalysisProgress&)> progress;
  uint64_t progress_interval_bytes = uint64_t{64} << 20;
};

// One (pid, tid) row: a CPU thread, or a GPU stream in PyTorch traces.
struct TrackReport {
  std::string pid;  // As in the trace: a number or a string.
  std::string tid;
  std::string process_name;  // From "process_name" metadata; empty when there was none.
  std::string thread_name;   // From "thread_name" metadata; empty when there was none.
  uint64_t events = 0;       // Interval events on this track.
  int64_t first_ns = 0;      // Start of its first interval (trace time).
  int64_t last_ns = 0;       // End of its last interval.
  int64_t busy_ns = 0;       // Length of the union of its intervals: nested/overlapping count once.
  int64_t compute_ns = 0;    // Union of its compute intervals.
  int64_t comm_ns = 0;       // Union of its comm intervals.
  double utilisation = 0;    // busy_ns / (last_ns - first_ns); 0 for an empty span.
};

struct ProcessReport {
  std::string pid;
  std::string name;  // From "process_name" metadata; empty when there was none.
  size_t tracks = 0;
  uint64_t events = 0;
  int64_t first_ns = 0;
  int64_t last_ns = 0;
  int64_t busy_ns = 0;     // Union over all its tracks and classes.
  int64_t compute_ns = 0;  // |union(compute)| over its tracks.
  int64_t comm_ns = 0;     // |union(comm)| over its tracks.
  // |union(comm) ∩ union(compute)|: communication overlapped by computation on this process.
  int64_t hidden_comm_ns = 0;
  double hidden_fraction = 0;  // hidden_comm_ns / comm_ns; 0 when there is no comm.
  double utilisation = 0;      // busy_ns / span.
};

struct NameReport {
  std::string name;
  std::string category;  // Of its first occurrence.
  EventClass event_class = EventClass::kCompute;
  uint64_t count = 0;
  int64_t total_ns = 0;  // Sum of durations (nested calls of the same name are counted each time).
  int64_t max_ns = 0;
  double mean_ns = 0;
  double percent_of_busy = 0;  // 100 * total_ns / TraceReport::busy_ns.
};

struct TraceReport {
  std::string source;  // The path analysed.
  uint64_t bytes_read = 0;  // Decompressed JSON bytes.
  double elapsed_s = 0;

  uint64_t events = 0;           // Every element of traceEvents.
  uint64_t interval_events = 0;  // Complete events and matched B/E pairs.
  uint64_t instant_events = 0;
  uint64_t counter_events = 0;
  uint64_t flow_events = 0;
  uint64_t metadata_events = 0;
  uint64_t other_events = 0;     // Async, sample, object and unknown phases.
  uint64_t skipped_events = 0;   // Missing or invalid ts/dur, or a negative duration.
  uint64_t unmatched_end_events = 0;   // "E" with no open "B" on its track.
  uint64_t unclosed_begin_events = 0;  // "B" never closed.
  uint64_t distinct_names = 0;
  bool names_truncated = false;  // More than max_distinct_names names were seen.

  int64_t first_ns = 0;  // First interval start over the trace.
  int64_t last_ns = 0;   // Last interval end.
  int64_t span_ns = 0;
  // Sums over processes (busy: over tracks).
  int64_t busy_ns = 0;
  int64_t compute_ns = 0;
  int64_t comm_ns = 0;
  int64_t hidden_comm_ns = 0;
  double hidden_fraction = 0;

  uint64_t spilled_runs = 0;  // Sorted runs written to tmp_dir (0: everything fit in memory).
  uint64_t spilled_bytes = 0;

  std::vector<ProcessReport> processes;  // Sorted by pid (numbers numerically, then strings).
  std::vector<TrackReport> tracks;       // Sorted by pid, then tid.
  std::vector<NameReport> top;           // By total_ns, descending; at most top_n.
  std::string svg_path;                  // Written when options.svg_path was set.
};

// Analyses the trace at path. Errors: io_error (cannot open or read), invalid_argument (malformed
// JSON: "<path>: byte N: <what>"; bad patterns; no usable events although events were present),
// resource_exhausted (too many tracks).
Result<TraceReport> analyze_trace_file(const std::string& path, const AnalysisOptions& options = {});

// A human-readable report (fixed-width tables).
std::string render_text(const TraceReport& report);
// The report as one JSON object (keys as in the structs above, times in nanoseconds).
std::string render_json(const TraceReport& report);

}  // namespace ff::trace
