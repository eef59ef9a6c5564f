// Internal to ff::trace: the SVG timeline summary drawn from per-track bucket fractions.
#pragma once

#include <string>
#include <vector>

#include "ff/common/status.h"
#include "ff/trace/analysis.h"

namespace ff::trace::internal {

// Busy time per fixed-width bucket for the tracks that are drawn, split by class. Memory is
// rows x buckets x 3 floats, bounded by AnalysisOptions::svg_max_rows and svg_buckets.
struct Timeline {
  int64_t first_ns = 0;
  int64_t bucket_ns = 1;  // Width of one bucket.
  size_t buckets = 0;
  struct Row {
    std::string label;
    std::vector<float> compute_ns;  // Per bucket: union of compute intervals within the bucket.
    std::vector<float> comm_ns;     // Per bucket: union of comm intervals within the bucket.
    std::vector<float> busy_ns;     // Per bucket: union of all intervals (other = busy - compute - comm).
  };
  std::vector<Row> rows;
  size_t omitted_rows = 0;  // Tracks with events that were not drawn.
};

Status write_timeline_svg(const std::string& path, const Timeline& timeline, const TraceReport& report);

}  // namespace ff::trace::internal
