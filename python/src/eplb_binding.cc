// fireflyer._C.eplb: the load balancer over numpy arrays. The Python wrapper (fireflyer/eplb.py)
// converts lists and torch tensors to a C-contiguous float32 numpy array first, as the anchor's
// `weight.float()` does; this layer only checks shapes and converts a Status to ValueError.
#include <nanobind/ndarray.h>
#include <nanobind/stl/string.h>
#include <nanobind/stl/vector.h>

#include <vector>

#include "binding.h"
#include "ff/eplb/eplb.h"

namespace ff::python {

namespace {

using FloatMatrix = nb::ndarray<const float, nb::ndim<2>, nb::c_contig, nb::device::cpu>;
using IndexMatrix = nb::ndarray<const int64_t, nb::c_contig, nb::device::cpu>;

// Moves values into a numpy array of the given shape that owns them (freed with the array).
template <typename T>
nb::object to_numpy(std::vector<T> values, std::initializer_list<size_t> shape) {
  auto* owned = new std::vector<T>(std::move(values));
  nb::capsule owner(owned, [](void* pointer) noexcept { delete static_cast<std::vector<T>*>(pointer); });
  return nb::cast(nb::ndarray<nb::numpy, T>(owned->data(), shape.size(), shape.begin(), owner));
}

eplb::LoadView view_of(const FloatMatrix& weight) {
  return {weight.data(), static_cast<int64_t>(weight.shape(0)), static_cast<int64_t>(weight.shape(1))};
}

nb::tuple rebalance(const FloatMatrix& weight, int64_t num_replicas, int64_t num_groups, int64_t num_nodes,
                    int64_t num_gpus, const std::string& policy, bool return_stats) {
  eplb::RebalanceOptions options;
  options.num_replicas = num_replicas;
  options.num_groups = num_groups;
  options.num_nodes = num_nodes;
  options.num_gpus = num_gpus;
  options.policy = value_or_throw(eplb::parse_policy(policy));
  eplb::RebalanceStats stats;
  Result<eplb::Placement> result = [&] {
    // The computation touches no Python object; other Python threads may run meanwhile.
    nb::gil_scoped_release release;
    return eplb::rebalance_experts(view_of(weight), options, return_stats ? &stats : nullptr);
  }();
  eplb::Placement placement = value_or_throw(std::move(result));
  const size_t layers = static_cast<size_t>(placement.num_layers);
  const size_t experts = static_cast<size_t>(placement.num_experts);
  nb::object phy2log = to_numpy(std::move(placement.phy2log), {layers, static_cast<size_t>(placement.num_replicas)});
  nb::object log2phy =
      to_numpy(std::move(placement.log2phy), {layers, experts, static_cast<size_t>(placement.max_replicas)});
  nb::object logcnt = to_numpy(std::move(placement.logcnt), {layers, experts});
  if (!return_stats) return nb::make_tuple(phy2log, log2phy, logcnt);
  nb::dict stats_dict;
  stats_dict["policy"] = policy;
  stats_dict["hierarchical"] = eplb::is_hierarchical(options);
  stats_dict["anchor_imbalance"] = stats.anchor_imbalance_mean;
  stats_dict["refined_imbalance"] = stats.refined_imbalance_mean;
  stats_dict["anchor_imbalance_per_layer"] = to_numpy(std::move(stats.anchor_imbalance), {layers});
  stats_dict["refined_imbalance_per_layer"] = to_numpy(std::move(stats.refined_imbalance), {layers});
  return nb::make_tuple(phy2log, log2phy, logcnt, stats_dict);
}

nb::object gpu_loads(const FloatMatrix& weight, const IndexMatrix& phy2log, const IndexMatrix& logcnt,
                     int64_t num_gpus) {
  if (phy2log.ndim() != 2 || phy2log.shape(0) != weight.shape(0)) {
    throw nb::value_error("phy2log must be 2-D (layers, num_replicas) with the layers of weight");
  }
  if (logcnt.ndim() != 2 || logcnt.shape(0) != weight.shape(0) || logcnt.shape(1) != weight.shape(1)) {
    throw nb::value_error("logcnt must be 2-D (layers, experts) with the shape of weight");
  }
  const int64_t num_replicas = static_cast<int64_t>(phy2log.shape(1));
  std::vector<double> loads = value_or_throw(eplb::gpu_loads(
      view_of(weight), {phy2log.data(), phy2log.size()}, {logcnt.data(), logcnt.size()}, num_replicas, num_gpus));
  return to_numpy(std::move(loads), {weight.shape(0), static_cast<size_t>(num_gpus)});
}

}  // namespace

void bind_eplb(nb::module_& module) {
  module.def("rebalance_experts", &rebalance, nb::arg("weight"), nb::arg("num_replicas"), nb::arg("num_groups"),
             nb::arg("num_nodes"), nb::arg("num_gpus"), nb::arg("policy") = "anchor", nb::arg("return_stats") = false,
             "Expert placement for float32 loads (layers, experts): (phy2log, log2phy, logcnt[, stats]).");
  module.def("gpu_loads", &gpu_loads, nb::arg("weight"), nb::arg("phy2log"), nb::arg("logcnt"), nb::arg("num_gpus"),
             "(layers, num_gpus) float64 GPU loads of a placement (expert load split evenly over replicas).");
}

}  // namespace ff::python
