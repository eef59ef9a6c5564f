#include <nanobind/stl/string.h>
#include <nanobind/stl/vector.h>

#include "binding.h"
#include "ff/common/device.h"
#include "ff/common/log.h"

namespace ff::python {

void throw_if_error(const Status& status) {
  if (status.is_ok()) return;
  const std::string& message = status.message();
  switch (status.code()) {
    case StatusCode::kInvalidArgument:
    case StatusCode::kOutOfRange: throw nb::value_error(message.c_str());
    case StatusCode::kNotFound: throw nb::builtin_exception(nb::exception_type::key_error, message.c_str());
    case StatusCode::kIoError:
    case StatusCode::kDataLoss:
    case StatusCode::kPermissionDenied: {
      PyErr_SetString(PyExc_OSError, message.c_str());
      throw nb::python_error();
    }
    case StatusCode::kDeadlineExceeded: {
      PyErr_SetString(PyExc_TimeoutError, message.c_str());
      throw nb::python_error();
    }
    case StatusCode::kUnimplemented: throw nb::builtin_exception(nb::exception_type::runtime_error, message.c_str());
    default: throw std::runtime_error(status.to_string());
  }
}

void bind_common(nb::module_& module) {
  module.def(
      "set_log_level", [](const std::string& level) { throw_if_error(set_log_level(level)); }, nb::arg("level"),
      "Sets the native log level: trace, debug, info, warn, error or off.");
  module.def("built_with_cuda", &built_with_cuda, "True when the extension was built with CUDA kernels.");
  module.def(
      "visible_gpus",
      [] {
        std::vector<nb::dict> gpus;
        for (const GpuInfo& gpu : visible_gpus()) {
          nb::dict entry;
          entry["index"] = gpu.index;
          entry["name"] = gpu.name;
          entry["sm_count"] = gpu.sm_count;
          entry["compute_capability"] = nb::make_tuple(gpu.major, gpu.minor);
          entry["memory_bytes"] = gpu.memory_bytes;
          gpus.push_back(entry);
        }
        return gpus;
      },
      "The GPUs this process can use, as dicts; empty without CUDA or a GPU.");
}

}  // namespace ff::python
