// A small SVG writer shared by every picture Fireflyer draws (load heatmaps, trace timelines,
// pipeline schedules). It only appends text; it does not lay anything out.
//
// Thread-safety: one SvgWriter per thread.
#pragma once

#include <string>
#include <string_view>

#include "ff/common/status.h"

namespace ff::svg {

// Escapes &, <, >, " and ' for use in SVG text and attribute values.
std::string escape(std::string_view text);

// A colour "#rrggbb" on a white -> yellow -> red ramp for t in [0, 1] (clamped).
std::string heat_color(double t);
// One of 12 well-separated colours, for categories (ops, streams, experts): index modulo 12.
std::string category_color(size_t index);

class SvgWriter {
 public:
  SvgWriter(double width, double height);

  void rect(double x, double y, double width, double height, std::string_view fill,
            std::string_view tooltip = {}, std::string_view stroke = {});
  void line(double x1, double y1, double x2, double y2, std::string_view stroke, double stroke_width = 1);
  // anchor: "start", "middle" or "end".
  void text(double x, double y, std::string_view content, double font_size = 12,
            std::string_view anchor = "start", std::string_view fill = "#000000");

  // Returns the finished document. The writer must not be used afterwards.
  std::string finish();
  // Writes the finished document to path.
  Status write_to(const std::string& path);

 private:
  std::string body_;
  double width_;
  double height_;
  bool finished_ = false;
};

}  // namespace ff::svg
