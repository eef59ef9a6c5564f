// Placeholder until the load balancer lands.
#include "binding.h"

namespace ff::python {
void bind_eplb(nb::module_&) {}
}  // namespace ff::python
