// ff::eplb: the expert-parallel load balancer. Given the load of every expert of every MoE layer, it
// decides how many replicas each expert gets and on which GPU each replica lives. It is the
// counterpart of DeepSeek's EPLB `rebalance_experts` ("the anchor") and reproduces its results
// exactly (policy kAnchor); policy kRefine improves the anchor's placement by a bounded local search.
//
// Shapes are written next to every array, row-major: (num_layers, num_replicas) means
// phy2log[layer * num_replicas + physical].
//
// Ownership: every function takes its inputs as non-owning views that must stay alive for the call
// and returns owned values. Thread-safety: all functions are pure (no global state); distinct calls
// may run on distinct threads concurrently.
#pragma once

#include <cstdint>
#include <span>
#include <string_view>
#include <vector>

#include "ff/common/result.h"
#include "ff/common/status.h"

namespace ff::eplb {

// A non-owning row-major (num_layers, num_experts) float32 view of expert loads (tokens routed to
// each expert, or any non-negative measure of work). float32 because the anchor converts its input
// with `weight.float()` and decides every comparison in float32.
struct LoadView {
  const float* data = nullptr;
  int64_t num_layers = 0;
  int64_t num_experts = 0;

  float at(int64_t layer, int64_t expert) const { return data[layer * num_experts + expert]; }
  std::span<const float> row(int64_t layer) const {
    return {data + layer * num_experts, static_cast<size_t>(num_experts)};
  }
};

// An owned (num_layers, num_experts) load matrix, as read from a file.
struct LoadMatrix {
  int64_t num_layers = 0;
  int64_t num_experts = 0;
  std::vector<float> values;  // (num_layers, num_experts)

  LoadView view() const { return {values.data(), num_layers, num_experts}; }
};

enum class Policy {
  kAnchor,  // DeepSeek EPLB's placement, bit for bit.
  kRefine,  // The anchor's placement improved by a deterministic local search; never worse.
};

std::string_view policy_name(Policy policy);
// Accepts "anchor" and "refine".
Result<Policy> parse_policy(std::string_view name);

struct RebalanceOptions {
  int64_t num_replicas = 0;  // physical experts per layer, over all GPUs
  int64_t num_groups = 1;    // expert groups (DeepSeek-V3: 8); groups are packed onto nodes whole
  int64_t num_nodes = 1;     // server nodes
  int64_t num_gpus = 1;      // GPUs over all nodes
  Policy policy = Policy::kAnchor;
};

// True when the options select the hierarchical policy (groups packed to nodes, then replicas
// within nodes): the anchor does this exactly when num_groups is a multiple of num_nodes, and
// otherwise balances globally as if num_groups = num_nodes = 1.
bool is_hierarchical(const RebalanceOptions& options);

// Checks the options and the loads against each other; the error message names the bad values,
// e.g. "num_replicas=10 is not a multiple of num_gpus=4", "load at layer 3, expert 7 is -1 (loads
// must be finite and non-negative)".
Status validate(LoadView weight, const RebalanceOptions& options);

struct Placement {
  int64_t num_layers = 0;
  int64_t num_experts = 0;
  int64_t num_replicas = 0;
  int64_t max_replicas = 0;      // the largest logcnt over all layers and experts
  std::vector<int64_t> phy2log;  // (num_layers, num_replicas): logical expert of each physical slot
  std::vector<int64_t> log2phy;  // (num_layers, num_experts, max_replicas): slots of each expert, -1 padded
  std::vector<int64_t> logcnt;   // (num_layers, num_experts): replicas of each expert, >= 1

  // Physical slots are GPU-major: slot s lives on GPU s / (num_replicas / num_gpus).
};

// Imbalance = max GPU load / mean GPU load of a layer (1.0 for a layer without load), under the load
// model: an expert's load is split evenly over its replicas; a GPU's load is the sum over its slots.
struct RebalanceStats {
  std::vector<double> anchor_imbalance;   // (num_layers)
  std::vector<double> refined_imbalance;  // (num_layers); equal to anchor_imbalance for kAnchor
  double anchor_imbalance_mean = 0;       // mean over layers
  double refined_imbalance_mean = 0;
};

// The load balancer. On success every expert has >= 1 replica, each GPU holds exactly
// num_replicas / num_gpus slots, and the three arrays agree. stats, when not null, is filled.
Result<Placement> rebalance_experts(LoadView weight, const RebalanceOptions& options,
                                    RebalanceStats* stats = nullptr);

// (num_layers, num_gpus) loads of a placement under the load model above. Errors when the arrays do
// not fit the shapes (phy2log: (num_layers, num_replicas), logcnt: (num_layers, num_experts)) or
// name an expert out of range.
Result<std::vector<double>> gpu_loads(LoadView weight, std::span<const int64_t> phy2log,
                                      std::span<const int64_t> logcnt, int64_t num_replicas, int64_t num_gpus);

// (num_layers) max / mean of each row of a (num_layers, num_gpus) load matrix; 1.0 for a zero row.
std::vector<double> imbalance_per_layer(std::span<const double> loads, int64_t num_gpus);

// Building blocks of the anchor, one layer at a time (exposed for tests; they allocate their outputs).
// Preconditions are asserted: these take already validated input.

struct Packing {
  std::vector<int64_t> pack_index;    // (num_items): the pack each item went to
  std::vector<int64_t> rank_in_pack;  // (num_items): items placed in that pack before it
};
// Packs num_items = weight.size() items into num_packs packs of num_items / num_packs items each:
// items in descending weight order (ties: lower index first) go to the lightest pack with room
// (ties: lower pack index). With one item per pack it is the identity.
Packing balanced_packing(std::span<const float> weight, int64_t num_packs);

struct Replication {
  std::vector<int64_t> phy2log;  // (num_physical)
  std::vector<int64_t> phyrank;  // (num_physical): which replica of its expert each slot is
  std::vector<int64_t> logcnt;   // (num_logical)
};
// Slot i < num_logical holds expert i; each further slot goes to the expert with the highest
// float32 weight / logcnt (ties: lower index).
Replication replicate_experts(std::span<const float> weight, int64_t num_physical);

}  // namespace ff::eplb
