// Internals shared by the anchor (rebalance.cc) and the refine policy (refine.cc). Not a public header.
#pragma once

#include <cstdint>
#include <span>
#include <vector>

#include "ff/eplb/eplb.h"

namespace ff::eplb::internal {

// The sizes of one rebalance, derived once from validated options.
struct Shape {
  int64_t num_experts = 0;
  int64_t num_replicas = 0;
  int64_t num_groups = 0;  // 1 in global mode
  int64_t num_nodes = 0;   // 1 in global mode
  int64_t num_gpus = 0;
  int64_t group_size = 0;          // experts per group
  int64_t groups_per_node = 0;
  int64_t experts_per_node = 0;    // logical experts whose groups a node holds
  int64_t replicas_per_node = 0;   // physical slots per node
  int64_t gpus_per_node = 0;
  int64_t replicas_per_gpu = 0;    // physical slots per GPU
};

Shape make_shape(int64_t num_experts, const RebalanceOptions& options);

// Objective of the refine policy, compared lexicographically: the largest GPU load first, then the
// sum of squared GPU loads (which separates placements with the same maximum).
struct Objective {
  double max_load = 0;
  double sum_squares = 0;
  bool operator<(const Objective& other) const {
    if (max_load != other.max_load) return max_load < other.max_load;
    return sum_squares < other.sum_squares;
  }
};

// Scratch memory for refining one layer, reused across layers so the search allocates nothing
// once it is sized.
struct RefineWorkspace {
  std::vector<int64_t> slot_expert;       // (num_replicas) current placement
  std::vector<int64_t> count;             // (num_experts) current replica counts
  std::vector<double> weight;             // (num_experts) float32 loads widened to double
  std::vector<double> gpu_load;           // (num_gpus)
  std::vector<int64_t> best_slot_expert;  // (num_replicas) best placement seen
  std::vector<int64_t> best_count;        // (num_experts)
  std::vector<int64_t> node_experts;      // (<= num_experts) experts of the node being searched
  std::vector<int64_t> recipients;        // (<= num_experts) candidates for an extra replica
  std::vector<int64_t> donors;            // (<= num_experts) candidates to give one up
  std::vector<int64_t> items;             // (replicas_per_node) experts to pack, one per replica
  std::vector<int64_t> packed;            // (replicas_per_node) a trial packing of the node's slots
  std::vector<int64_t> best_packed;       // (replicas_per_node)
  std::vector<double> pack_load;          // (gpus_per_node)
  std::vector<int64_t> pack_fill;         // (gpus_per_node)
  std::vector<int64_t> heap;              // (gpus_per_node)
  std::vector<int64_t> fill;              // (num_experts)

  void resize(const Shape& shape);
};

struct RefineResult {
  double anchor_max_load = 0;
  double refined_max_load = 0;
  bool improved = false;  // false: the anchor's placement is kept unchanged
};

// Improves one layer's anchor placement in place: phy2log (num_replicas), phyrank (num_replicas),
// logcnt (num_experts). When it finds a better placement, ranks are renumbered in physical order.
RefineResult refine_layer(std::span<const float> weight, const Shape& shape, std::span<int64_t> phy2log,
                          std::span<int64_t> phyrank, std::span<int64_t> logcnt, RefineWorkspace& workspace);

// The load of each GPU (num_gpus) of one layer and the layer's imbalance; used for statistics.
void layer_gpu_loads(std::span<const float> weight, std::span<const int64_t> phy2log,
                     std::span<const int64_t> logcnt, int64_t replicas_per_gpu, std::span<double> loads);
double layer_imbalance(std::span<const double> loads);

}  // namespace ff::eplb::internal
