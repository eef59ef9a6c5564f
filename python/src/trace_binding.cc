#include <nanobind/stl/string.h>

#include "binding.h"
#include "ff/trace/recorder.h"

namespace ff::python {

namespace {

using trace::Recorder;
using trace::Track;

// Python strings are not stable `const char*`, so every name crossing into the recorder is interned
// (one lock per call: Python-side tracing is for coarse events, not hot loops).
const char* interned(Recorder& recorder, const std::string& text) { return recorder.intern(text); }
const char* interned_or_null(Recorder& recorder, const std::string& text) {
  return text.empty() ? nullptr : recorder.intern(text);
}

}  // namespace

void bind_trace(nb::module_& module) {
  nb::class_<Recorder>(module, "Recorder",
                       "Chrome-trace recorder with per-thread ring buffers. Disabled until enabled.")
      .def(
          "__init__",
          [](Recorder* self, size_t events_per_thread, const std::string& process_name) {
            if (events_per_thread < 2 || (events_per_thread & (events_per_thread - 1)) != 0) {
              throw nb::value_error(
                  fmt::format("events_per_thread={} must be a power of two >= 2", events_per_thread).c_str());
            }
            trace::RecorderOptions options;
            options.events_per_thread = events_per_thread;
            options.process_name = process_name;
            new (self) Recorder(std::move(options));
          },
          nb::arg("events_per_thread") = size_t{1} << 16, nb::arg("process_name") = "")
      .def_prop_rw("enabled", &Recorder::enabled, &Recorder::set_enabled)
      .def("now_ns", &Recorder::now_ns, "The recorder clock, in nanoseconds.")
      .def(
          "complete",
          [](Recorder& self, const std::string& name, const std::string& category, int64_t start_ns,
             int64_t duration_ns, int32_t pid, int32_t tid) {
            self.complete(interned(self, name), interned_or_null(self, category), start_ns, duration_ns, nullptr, 0,
                          Track{pid, tid});
          },
          nb::arg("name"), nb::arg("category") = "", nb::arg("start_ns"), nb::arg("duration_ns"), nb::arg("pid") = -1,
          nb::arg("tid") = -1)
      .def(
          "instant",
          [](Recorder& self, const std::string& name, const std::string& category) {
            self.instant(interned(self, name), interned_or_null(self, category));
          },
          nb::arg("name"), nb::arg("category") = "")
      .def(
          "counter",
          [](Recorder& self, const std::string& name, double value, const std::string& series) {
            self.counter(interned(self, name), value, interned_or_null(self, series));
          },
          nb::arg("name"), nb::arg("value"), nb::arg("series") = "")
      .def(
          "flow",
          [](Recorder& self, const std::string& phase, const std::string& name, uint64_t id) {
            const char* interned_name = interned(self, name);
            if (phase == "start") {
              self.flow_start(interned_name, "flow", id);
            } else if (phase == "step") {
              self.flow_step(interned_name, "flow", id);
            } else if (phase == "end") {
              self.flow_end(interned_name, "flow", id);
            } else {
              throw nb::value_error(fmt::format("flow phase '{}' is not one of start, step, end", phase).c_str());
            }
          },
          nb::arg("phase"), nb::arg("name"), nb::arg("id"))
      .def("set_thread_name", [](Recorder& self, const std::string& name) { self.set_thread_name(name); })
      .def("set_process_name", [](Recorder& self, const std::string& name) { self.set_process_name(name); })
      .def("clear", &Recorder::clear)
      .def("stats",
           [](const Recorder& self) {
             trace::RecorderStats stats = self.stats();
             nb::dict result;
             result["recorded"] = stats.recorded;
             result["dropped"] = stats.dropped;
             result["threads"] = stats.threads;
             return result;
           })
      .def("to_json", &Recorder::to_json)
      .def(
          "write_json", [](const Recorder& self, const std::string& path) { throw_if_error(self.write_json(path)); },
          nb::arg("path"));

  module.def("global_recorder", &trace::global, nb::rv_policy::reference,
             "The process-wide recorder that native components record into.");
}

}  // namespace ff::python
