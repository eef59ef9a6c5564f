// Shared helpers of the nanobind extension: one bind_<component>() per component, and the single
// conversion from a Status to a Python exception (same message; bad input -> ValueError).
#pragma once

#include <nanobind/nanobind.h>

#include "ff/common/result.h"
#include "ff/common/status.h"

namespace ff::python {

namespace nb = nanobind;

// Raises the Python exception that matches status.code() when status is not OK.
void throw_if_error(const Status& status);

template <typename T>
T value_or_throw(Result<T> result) {
  throw_if_error(result.status());
  return std::move(result).value();
}

void bind_common(nb::module_& module);
void bind_trace(nb::module_& module);
void bind_trace_analysis(nb::module_& module);  // adds to the trace submodule
void bind_eplb(nb::module_& module);
void bind_pipe(nb::module_& module);
void bind_mla(nb::module_& module);
void bind_gemm(nb::module_& module);
void bind_ep(nb::module_& module);

}  // namespace ff::python
