// Placeholder until the pipeline component lands.
#include "binding.h"

namespace ff::python {
void bind_pipe(nb::module_&) {}
}  // namespace ff::python
