// fireflyer._C.trace.analyze_json: the trace analyzer (ff::trace::analyze_trace_file) returning the
// JSON report as a string; fireflyer.trace.analyze() wraps it with json.loads.
#include <nanobind/stl/optional.h>
#include <nanobind/stl/string.h>
#include <nanobind/stl/vector.h>

#include <optional>
#include <string>
#include <vector>

#include "binding.h"
#include "ff/trace/analysis.h"

namespace ff::python {

void bind_trace_analysis(nb::module_& module) {
  module.def(
      "analyze_json",
      [](const std::string& path, size_t top, std::optional<std::vector<std::string>> comm_patterns,
         std::optional<std::vector<std::string>> ignore_categories, size_t memory_limit_mb,
         const std::string& svg_path) {
        trace::AnalysisOptions options;
        options.top_n = top;
        if (comm_patterns) options.comm_patterns = std::move(*comm_patterns);
        if (ignore_categories) options.ignore_categories = std::move(*ignore_categories);
        options.memory_limit_mb = memory_limit_mb;
        options.svg_path = svg_path;
        Result<trace::TraceReport> report = [&] {
          // The analysis touches no Python object; other Python threads may run meanwhile.
          nb::gil_scoped_release release;
          return trace::analyze_trace_file(path, options);
        }();
        throw_if_error(report.status());
        return trace::render_json(*report);
      },
      nb::arg("path"), nb::arg("top") = 20, nb::arg("comm_patterns") = nb::none(),
      nb::arg("ignore_categories") = nb::none(), nb::arg("memory_limit_mb") = 1024, nb::arg("svg_path") = "",
      "Analyses a Chrome trace (JSON object or array form, optionally gzip) and returns the report as a JSON\n"
      "string. comm_patterns / ignore_categories replace the defaults when given. Raises ValueError for a\n"
      "malformed trace (the message has the byte offset) and OSError when the file cannot be read.");
  module.def("default_comm_patterns", &trace::default_comm_patterns,
             "Default case-insensitive regexes that mark communication events by name.");
  module.def("default_ignore_categories", &trace::default_ignore_categories,
             "Default categories that are neither compute nor communication (the CPU side of PyTorch traces).");
}

}  // namespace ff::python
