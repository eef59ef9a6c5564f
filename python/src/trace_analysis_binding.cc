// Placeholder until the trace analyzer lands.
#include "binding.h"

namespace ff::python {
void bind_trace_analysis(nb::module_&) {}
}  // namespace ff::python
