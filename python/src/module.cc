// fireflyer._C: one submodule per component; the Python package wraps each in fireflyer.<component>.
#include "binding.h"

NB_MODULE(_C, module) {
  module.doc() = "Fireflyer native extension";
  auto common = module.def_submodule("common", "Status, logging, devices");
  ff::python::bind_common(common);
  auto trace = module.def_submodule("trace", "Chrome-trace recording and analysis");
  ff::python::bind_trace(trace);
  ff::python::bind_trace_analysis(trace);
  auto eplb = module.def_submodule("eplb", "Expert-parallel load balancer");
  ff::python::bind_eplb(eplb);
  auto pipe = module.def_submodule("pipe", "Pipeline-parallel schedules, validator, simulator, executor");
  ff::python::bind_pipe(pipe);
  auto mla = module.def_submodule("mla", "MLA decode attention");
  ff::python::bind_mla(mla);
  auto gemm = module.def_submodule("gemm", "FP8 GEMM with fine-grained scaling");
  ff::python::bind_gemm(gemm);
  auto ep = module.def_submodule("ep", "Expert-parallel dispatch and combine");
  ff::python::bind_ep(ep);
}
