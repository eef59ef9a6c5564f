#include "ff/common/svg.h"

#include <algorithm>
#include <array>
#include <cmath>

#include "ff/common/assert.h"
#include "ff/common/file.h"

namespace ff::svg {

std::string escape(std::string_view text) {
  std::string escaped;
  escaped.reserve(text.size());
  for (char c : text) {
    switch (c) {
      case '&': escaped += "&amp;"; break;
      case '<': escaped += "&lt;"; break;
      case '>': escaped += "&gt;"; break;
      case '"': escaped += "&quot;"; break;
      case '\'': escaped += "&apos;"; break;
      default: escaped += c;
    }
  }
  return escaped;
}

std::string heat_color(double t) {
  if (!std::isfinite(t)) t = 0;
  t = std::clamp(t, 0.0, 1.0);
  // White (t=0) to yellow (t=0.5) to red (t=1).
  int red = 255;
  int green = t < 0.5 ? 255 : static_cast<int>(std::lround(255 * (1 - (t - 0.5) * 2)));
  int blue = t < 0.5 ? static_cast<int>(std::lround(255 * (1 - t * 2))) : 0;
  return fmt::format("#{:02x}{:02x}{:02x}", red, green, blue);
}

std::string category_color(size_t index) {
  static constexpr std::array<const char*, 12> kPalette = {
      "#4e79a7", "#f28e2b", "#59a14f", "#e15759", "#76b7b2", "#edc948",
      "#b07aa1", "#ff9da7", "#9c755f", "#bab0ac", "#1f77b4", "#8c564b",
  };
  return kPalette[index % kPalette.size()];
}

SvgWriter::SvgWriter(double width, double height) : width_(width), height_(height) {
  FF_ASSERT(width > 0 && height > 0, "SVG size {}x{}", width, height);
}

void SvgWriter::rect(double x, double y, double width, double height, std::string_view fill,
                     std::string_view tooltip, std::string_view stroke) {
  FF_ASSERT(!finished_);
  fmt::format_to(std::back_inserter(body_), R"(<rect x="{:.2f}" y="{:.2f}" width="{:.2f}" height="{:.2f}" fill="{}")",
                 x, y, std::max(width, 0.0), std::max(height, 0.0), fill);
  if (!stroke.empty()) fmt::format_to(std::back_inserter(body_), R"( stroke="{}" stroke-width="0.5")", stroke);
  if (tooltip.empty()) {
    body_ += "/>\n";
  } else {
    fmt::format_to(std::back_inserter(body_), "><title>{}</title></rect>\n", escape(tooltip));
  }
}

void SvgWriter::line(double x1, double y1, double x2, double y2, std::string_view stroke, double stroke_width) {
  FF_ASSERT(!finished_);
  fmt::format_to(std::back_inserter(body_),
                 R"(<line x1="{:.2f}" y1="{:.2f}" x2="{:.2f}" y2="{:.2f}" stroke="{}" stroke-width="{}"/>)"
                 "\n",
                 x1, y1, x2, y2, stroke, stroke_width);
}

void SvgWriter::text(double x, double y, std::string_view content, double font_size, std::string_view anchor,
                     std::string_view fill) {
  FF_ASSERT(!finished_);
  fmt::format_to(std::back_inserter(body_),
                 R"(<text x="{:.2f}" y="{:.2f}" font-size="{}" text-anchor="{}" fill="{}">{}</text>)"
                 "\n",
                 x, y, font_size, anchor, fill, escape(content));
}

std::string SvgWriter::finish() {
  FF_ASSERT(!finished_);
  finished_ = true;
  std::string document = fmt::format(
      R"(<svg xmlns="http://www.w3.org/2000/svg" width="{0:.0f}" height="{1:.0f}" viewBox="0 0 {0:.0f} {1:.0f}" )"
      R"(font-family="Helvetica, Arial, sans-serif">)"
      "\n"
      R"(<rect x="0" y="0" width="{0:.0f}" height="{1:.0f}" fill="#ffffff"/>)"
      "\n",
      width_, height_);
  document += body_;
  document += "</svg>\n";
  body_.clear();
  return document;
}

Status SvgWriter::write_to(const std::string& path) { return write_file_atomically(path, finish()); }

}  // namespace ff::svg
