// Rendering of a TraceReport: text tables, JSON, and the SVG timeline summary.
#include <fmt/format.h>

#include <algorithm>
#include <cmath>
#include <nlohmann/json.hpp>

#include "ff/common/assert.h"
#include "ff/common/svg.h"
#include "ff/trace/analysis.h"
#include "timeline_svg.h"

namespace ff::trace {

namespace {

double ms(int64_t ns) { return static_cast<double>(ns) / 1e6; }

std::string shorten(std::string_view text, size_t width) {
  if (text.size() <= width) return std::string(text);
  return std::string(text.substr(0, width - 3)) + "...";
}

std::string track_label(const TrackReport& track) {
  std::string process = track.process_name.empty() ? "pid " + track.pid : track.process_name;
  std::string thread = track.thread_name.empty() ? "tid " + track.tid : track.thread_name;
  return process + " / " + thread;
}

template <typename... Args>
void add_to(std::string& out, fmt::format_string<Args...> format, Args&&... args) {
  fmt::format_to(std::back_inserter(out), format, std::forward<Args>(args)...);
}

// Text tables list at most this many tracks; the JSON report has all of them.
constexpr size_t kTextMaxTracks = 64;

}  // namespace

std::string render_text(const TraceReport& report) {
  std::string out;
  add_to(out, "Trace: {} ({:.1f} MB read in {:.2f} s)\n", report.source, static_cast<double>(report.bytes_read) / 1e6,
      report.elapsed_s);
  add_to(out, "Events: {} total, {} intervals, {} instant, {} counter, {} flow, {} metadata, {} other\n", report.events,
      report.interval_events, report.instant_events, report.counter_events, report.flow_events,
      report.metadata_events, report.other_events);
  if (report.skipped_events > 0 || report.unmatched_end_events > 0 || report.unclosed_begin_events > 0) {
    add_to(out, "Skipped: {} events without a usable ts/dur, {} 'E' without 'B', {} 'B' never closed\n",
        report.skipped_events, report.unmatched_end_events, report.unclosed_begin_events);
  }
  if (report.interval_events == 0) {
    add_to(out, "No interval events: nothing to analyse.\n");
    return out;
  }
  add_to(out, "Span: {:.3f} ms; busy (sum over tracks) {:.3f} ms; compute {:.3f} ms; comm {:.3f} ms; "
      "comm hidden under compute {:.3f} ms ({:.1f}%)\n",
      ms(report.span_ns), ms(report.busy_ns), ms(report.compute_ns), ms(report.comm_ns), ms(report.hidden_comm_ns),
      100 * report.hidden_fraction);
  if (report.spilled_runs > 0) {
    add_to(out, "Spilled {} sorted runs ({:.1f} MB) to disk to stay within the memory limit\n", report.spilled_runs,
        static_cast<double>(report.spilled_bytes) / 1e6);
  }
  if (report.names_truncated) add_to(out, "Note: more distinct names than the limit; the rest are under \"(other names)\"\n");

  add_to(out, "\nProcesses (compute/comm are unions over the process's tracks; hidden = comm overlapped by compute)\n");
  add_to(out, "{:>10} {:<24} {:>6} {:>9} {:>12} {:>6} {:>12} {:>12} {:>12} {:>7}\n", "pid", "name", "tracks", "events",
      "busy ms", "util%", "compute ms", "comm ms", "hidden ms", "hidden%");
  for (const ProcessReport& process : report.processes) {
    add_to(out, "{:>10} {:<24} {:>6} {:>9} {:>12.3f} {:>6.1f} {:>12.3f} {:>12.3f} {:>12.3f} {:>7.1f}\n",
        shorten(process.pid, 10), shorten(process.name, 24), process.tracks, process.events, ms(process.busy_ns),
        100 * process.utilisation, ms(process.compute_ns), ms(process.comm_ns), ms(process.hidden_comm_ns),
        100 * process.hidden_fraction);
  }

  add_to(out, "\nTracks (busy = union of the track's intervals; util = busy / span of the track)\n");
  add_to(out, "{:<44} {:>9} {:>12} {:>12} {:>6} {:>12} {:>12}\n", "process / thread", "events", "busy ms", "span ms",
      "util%", "compute ms", "comm ms");
  std::vector<const TrackReport*> tracks;
  for (const TrackReport& track : report.tracks) tracks.push_back(&track);
  if (tracks.size() > kTextMaxTracks) {
    // Show the busiest tracks, still in (pid, tid) order.
    std::stable_sort(tracks.begin(), tracks.end(), [](auto* a, auto* b) { return a->busy_ns > b->busy_ns; });
    tracks.resize(kTextMaxTracks);
    std::stable_sort(tracks.begin(), tracks.end(), [&](auto* a, auto* b) { return a < b; });
  }
  for (const TrackReport* track : tracks) {
    add_to(out, "{:<44} {:>9} {:>12.3f} {:>12.3f} {:>6.1f} {:>12.3f} {:>12.3f}\n", shorten(track_label(*track), 44),
        track->events, ms(track->busy_ns), ms(track->last_ns - track->first_ns), 100 * track->utilisation,
        ms(track->compute_ns), ms(track->comm_ns));
  }
  if (report.tracks.size() > tracks.size()) {
    add_to(out, "... {} more tracks (see the JSON report)\n", report.tracks.size() - tracks.size());
  }

  add_to(out, "\nTop {} events by total time\n", report.top.size());
  add_to(out, "{:>12} {:>9} {:>11} {:>11} {:>7} {:<7} {}\n", "total ms", "count", "mean us", "max us", "%busy", "class",
      "name");
  for (const NameReport& name : report.top) {
    add_to(out, "{:>12.3f} {:>9} {:>11.2f} {:>11.2f} {:>7.2f} {:<7} {}\n", ms(name.total_ns), name.count, name.mean_ns / 1e3,
        static_cast<double>(name.max_ns) / 1e3, name.percent_of_busy, event_class_name(name.event_class),
        shorten(name.name, 100));
  }
  if (!report.svg_path.empty()) add_to(out, "\nTimeline: {}\n", report.svg_path);
  return out;
}

std::string render_json(const TraceReport& report) {
  using json = nlohmann::ordered_json;  // Keeps keys in the order written here.
  json root;
  root["source"] = report.source;
  root["bytes_read"] = report.bytes_read;
  root["elapsed_s"] = report.elapsed_s;
  root["events"] = {{"total", report.events},
                    {"interval", report.interval_events},
                    {"instant", report.instant_events},
                    {"counter", report.counter_events},
                    {"flow", report.flow_events},
                    {"metadata", report.metadata_events},
                    {"other", report.other_events},
                    {"skipped", report.skipped_events},
                    {"unmatched_end", report.unmatched_end_events},
                    {"unclosed_begin", report.unclosed_begin_events}};
  root["distinct_names"] = report.distinct_names;
  root["names_truncated"] = report.names_truncated;
  root["first_ns"] = report.first_ns;
  root["last_ns"] = report.last_ns;
  root["span_ns"] = report.span_ns;
  root["busy_ns"] = report.busy_ns;
  root["compute_ns"] = report.compute_ns;
  root["comm_ns"] = report.comm_ns;
  root["hidden_comm_ns"] = report.hidden_comm_ns;
  root["hidden_fraction"] = report.hidden_fraction;
  root["spilled_runs"] = report.spilled_runs;
  root["spilled_bytes"] = report.spilled_bytes;
  json processes = json::array();
  for (const ProcessReport& process : report.processes) {
    processes.push_back({{"pid", process.pid},
                         {"name", process.name},
                         {"tracks", process.tracks},
                         {"events", process.events},
                         {"first_ns", process.first_ns},
                         {"last_ns", process.last_ns},
                         {"busy_ns", process.busy_ns},
                         {"utilisation", process.utilisation},
                         {"compute_ns", process.compute_ns},
                         {"comm_ns", process.comm_ns},
                         {"hidden_comm_ns", process.hidden_comm_ns},
                         {"hidden_fraction", process.hidden_fraction}});
  }
  root["processes"] = std::move(processes);
  json tracks = json::array();
  for (const TrackReport& track : report.tracks) {
    tracks.push_back({{"pid", track.pid},
                      {"tid", track.tid},
                      {"process_name", track.process_name},
                      {"thread_name", track.thread_name},
                      {"events", track.events},
                      {"first_ns", track.first_ns},
                      {"last_ns", track.last_ns},
                      {"busy_ns", track.busy_ns},
                      {"compute_ns", track.compute_ns},
                      {"comm_ns", track.comm_ns},
                      {"utilisation", track.utilisation}});
  }
  root["tracks"] = std::move(tracks);
  json top = json::array();
  for (const NameReport& name : report.top) {
    top.push_back({{"name", name.name},
                   {"category", name.category},
                   {"class", std::string(event_class_name(name.event_class))},
                   {"count", name.count},
                   {"total_ns", name.total_ns},
                   {"mean_ns", name.mean_ns},
                   {"max_ns", name.max_ns},
                   {"percent_of_busy", name.percent_of_busy}});
  }
  root["top"] = std::move(top);
  root["svg_path"] = report.svg_path;
  // NOTE: names from a trace may hold invalid UTF-8; replace rather than throw.
  return root.dump(1, ' ', false, json::error_handler_t::replace) + "\n";
}

namespace internal {

namespace {

// A "nice" tick step (1, 2 or 5 x 10^k) giving about `target` ticks over span.
double nice_step(double span, int target) {
  const double raw = span / std::max(1, target);
  const double magnitude = std::pow(10.0, std::floor(std::log10(std::max(raw, 1e-12))));
  for (double factor : {1.0, 2.0, 5.0, 10.0}) {
    if (raw <= factor * magnitude) return factor * magnitude;
  }
  return 10 * magnitude;
}

std::string file_name(const std::string& path) {
  const size_t slash = path.find_last_of('/');
  return slash == std::string::npos ? path : path.substr(slash + 1);
}

}  // namespace

Status write_timeline_svg(const std::string& path, const Timeline& timeline, const TraceReport& report) {
  constexpr double kLeft = 260;
  constexpr double kRight = 20;
  constexpr double kTop = 70;
  constexpr double kRowHeight = 16;
  constexpr double kRowGap = 3;
  constexpr double kPlotWidth = 1200;
  const std::string compute_color = "#4e79a7";
  const std::string comm_color = "#e15759";
  const std::string other_color = "#9c9c9c";
  const size_t rows = std::max<size_t>(timeline.rows.size(), 1);
  const double plot_height = static_cast<double>(rows) * (kRowHeight + kRowGap);
  const double height = kTop + plot_height + 60;
  svg::SvgWriter writer(kLeft + kPlotWidth + kRight, height);

  writer.text(10, 22,
              fmt::format("ff-trace: {} — span {:.3f} ms, compute {:.3f} ms, comm {:.3f} ms, hidden {:.1f}% of comm",
                          file_name(report.source), ms(report.span_ns), ms(report.compute_ns), ms(report.comm_ns),
                          100 * report.hidden_fraction),
              15);
  // Legend.
  writer.rect(10, 36, 12, 12, compute_color);
  writer.text(26, 46, "compute (fraction of bucket busy)", 11);
  writer.rect(250, 36, 12, 12, comm_color);
  writer.text(266, 46, "communication", 11);
  writer.rect(370, 36, 12, 12, other_color);
  writer.text(386, 46, "other (CPU-side ops, ignored categories)", 11);
  if (timeline.omitted_rows > 0) {
    writer.text(640, 46, fmt::format("{} tracks with fewer events not drawn", timeline.omitted_rows), 11, "start",
                "#666666");
  }
  if (timeline.rows.empty()) {
    writer.text(kLeft, kTop + 12, "no interval events", 12);
    return writer.write_to(path);
  }
  FF_ASSERT_GT(timeline.buckets, size_t{0});
  const double bucket_width = kPlotWidth / static_cast<double>(timeline.buckets);
  const double bucket_ns = static_cast<double>(timeline.bucket_ns);
  for (size_t r = 0; r < timeline.rows.size(); ++r) {
    const Timeline::Row& row = timeline.rows[r];
    const double y = kTop + static_cast<double>(r) * (kRowHeight + kRowGap);
    writer.rect(kLeft, y, kPlotWidth, kRowHeight, "#f2f2f2");
    writer.text(kLeft - 6, y + kRowHeight - 4, shorten(row.label, 40), 10, "end");
    for (size_t b = 0; b < timeline.buckets; ++b) {
      // Stacked from the bottom: comm first, then compute, clamped to the row (a track can have
      // comm and compute at the same time; the union per class may then sum above 1).
      const double comm = std::clamp(static_cast<double>(row.comm_ns[b]) / bucket_ns, 0.0, 1.0);
      const double compute = std::clamp(static_cast<double>(row.compute_ns[b]) / bucket_ns, 0.0, 1.0 - comm);
      const double busy = std::clamp(static_cast<double>(row.busy_ns[b]) / bucket_ns, 0.0, 1.0);
      const double other = std::max(busy - comm - compute, 0.0);
      const double x = kLeft + static_cast<double>(b) * bucket_width;
      if (other > 0.005) {
        writer.rect(x, y + kRowHeight * (1 - comm - compute - other), bucket_width, kRowHeight * other, other_color);
      }
      if (comm > 0.005) {
        writer.rect(x, y + kRowHeight * (1 - comm), bucket_width, kRowHeight * comm, comm_color);
      }
      if (compute > 0.005) {
        writer.rect(x, y + kRowHeight * (1 - comm - compute), bucket_width, kRowHeight * compute, compute_color);
      }
    }
  }
  // Time axis, in ms from the first event.
  const double axis_y = kTop + plot_height + 4;
  writer.line(kLeft, axis_y, kLeft + kPlotWidth, axis_y, "#000000");
  const double span_ms = std::max(ms(report.span_ns), 1e-6);
  const double step_ms = nice_step(span_ms, 10);
  for (int tick = 0; tick <= 20; ++tick) {  // Bounded: nice_step gives at most ~10 ticks.
    const double at_ms = tick * step_ms;
    if (at_ms > span_ms * 1.0001) break;
    const double x = kLeft + kPlotWidth * at_ms / span_ms;
    writer.line(x, axis_y, x, axis_y + 5, "#000000");
    writer.text(x, axis_y + 18, fmt::format("{:g} ms", at_ms), 10, "middle");
  }
  writer.text(kLeft + kPlotWidth / 2, axis_y + 36,
              fmt::format("time since first event ({} buckets of {:.3f} ms)", timeline.buckets,
                          ms(timeline.bucket_ns)),
              11, "middle");
  return writer.write_to(path);
}

}  // namespace internal

}  // namespace ff::trace
