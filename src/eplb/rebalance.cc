// The anchor algorithm (DeepSeek EPLB's rebalance_experts), reproduced from its description:
// hierarchical placement = pack expert groups onto nodes, replicate experts within each node, pack the
// replicas onto the node's GPUs. Global placement is the same with one group and one node.
//
// Every decision the anchor takes in float32 (sorting loads, comparing pack totals, weight / count)
// is taken here in float32 as well, with the same tie rules, so the placements agree bit for bit.
#include <algorithm>
#include <bit>
#include <cmath>
#include <functional>
#include <numeric>
#include <system_error>
#include <thread>

#include "ff/common/assert.h"
#include "ff/eplb/eplb.h"
#include "ff/trace/recorder.h"
#include "internal.h"

namespace ff::eplb {

namespace {

using internal::Shape;

// NOTE: the anchor's orders are "by float32 load, ties by lower index". For finite loads >= 0 the
// IEEE-754 bit pattern orders like the value, so (bits << 32 | index) is a 64-bit integer key with
// exactly that order; sorting and heaps then compare integers instead of chasing indices into float
// arrays, which halved the time of a 58 x 256 rebalance. Indices must fit in 32 bits (asserted).
uint64_t order_key(float value, uint64_t index) {
  // -0.0 == 0.0 in the anchor's comparisons, so both map to the bits of +0.0.
  const uint32_t bits = value == 0.0f ? 0u : std::bit_cast<uint32_t>(value);
  return (static_cast<uint64_t>(bits) << 32) | index;
}
constexpr uint64_t kIndexMask = 0xffffffffu;
constexpr int64_t kMaxIndex = int64_t{1} << 31;
// Pack counts up to this are searched by a linear scan, larger ones with a heap.
constexpr int64_t kLinearScanPacks = 16;

// Scratch memory of the anchor for one layer; sized once per call and reused for every layer, so
// the per-layer work allocates nothing.
struct AnchorWorkspace {
  std::vector<float> group_load;       // (num_groups)
  std::vector<int64_t> group_pack;     // (num_groups)
  std::vector<int64_t> group_rank;     // (num_groups)
  std::vector<int64_t> log2mlog;       // (num_experts)
  std::vector<int64_t> mlog2log;       // (num_experts)
  std::vector<int64_t> mlogcnt;        // (num_experts) in mlog order, all nodes
  std::vector<float> node_weight;      // (experts_per_node)
  std::vector<int64_t> phy2mlog;       // (replicas_per_node)
  std::vector<int64_t> node_phyrank;   // (replicas_per_node)
  std::vector<float> phy_weight;       // (replicas_per_node)
  std::vector<int64_t> phy_pack;       // (replicas_per_node)
  std::vector<int64_t> phy_rank;       // (replicas_per_node)
  // Shared by packing and replication.
  std::vector<uint64_t> order;         // (max items) sort keys, see order_key
  std::vector<float> bin_weight;       // (max items): pack totals or per-replica loads
  std::vector<int64_t> bin_items;      // (max items)
  std::vector<uint64_t> heap;          // (max items) heap keys, see order_key
  std::vector<uint64_t> tree;          // (4 * max items) tournament tree of pack keys

  explicit AnchorWorkspace(const Shape& shape) {
    const size_t max_items = static_cast<size_t>(
        std::max({shape.num_groups, shape.experts_per_node, shape.replicas_per_node}));
    group_load.resize(shape.num_groups);
    group_pack.resize(shape.num_groups);
    group_rank.resize(shape.num_groups);
    log2mlog.resize(shape.num_experts);
    mlog2log.resize(shape.num_experts);
    mlogcnt.resize(shape.num_experts);
    node_weight.resize(shape.experts_per_node);
    phy2mlog.resize(shape.replicas_per_node);
    node_phyrank.resize(shape.replicas_per_node);
    phy_weight.resize(shape.replicas_per_node);
    phy_pack.resize(shape.replicas_per_node);
    phy_rank.resize(shape.replicas_per_node);
    order.resize(max_items);
    bin_weight.resize(max_items);
    bin_items.resize(max_items);
    heap.reserve(max_items);
    tree.reserve(4 * max_items);
  }
};

// balanced_packing on caller-provided memory. weight: (num_items); outputs: (num_items).
void pack_into(std::span<const float> weight, int64_t num_packs, std::span<int64_t> pack_index,
               std::span<int64_t> rank_in_pack, AnchorWorkspace& workspace) {
  const int64_t num_items = static_cast<int64_t>(weight.size());
  FF_ASSERT(num_packs > 0 && num_items >= num_packs && num_items % num_packs == 0, "{} items into {} packs",
            num_items, num_packs);
  FF_ASSERT(pack_index.size() == weight.size() && rank_in_pack.size() == weight.size());
  const int64_t items_per_pack = num_items / num_packs;
  if (items_per_pack == 1) {
    // The anchor short-cuts this case to the identity (not to the load-sorted assignment).
    for (int64_t i = 0; i < num_items; ++i) {
      pack_index[i] = i;
      rank_in_pack[i] = 0;
    }
    return;
  }
  FF_ASSERT(num_items < kMaxIndex, "{} items do not fit the 32-bit index of the sort key", num_items);
  // Descending load, equal loads in index order: ascending keys of (~bits, index). Loads are >= 0,
  // so ~bits of a larger load is smaller.
  uint64_t* order = workspace.order.data();
  for (int64_t i = 0; i < num_items; ++i) {
    order[i] = order_key(weight[i], static_cast<uint64_t>(i)) ^ (uint64_t{0xffffffffu} << 32);
  }
  std::sort(order, order + num_items);
  float* pack_weight = workspace.bin_weight.data();
  int64_t* pack_items = workspace.bin_items.data();
  std::vector<uint64_t>& heap = workspace.heap;
  heap.clear();
  for (int64_t p = 0; p < num_packs; ++p) {
    pack_weight[p] = 0.0f;
    pack_items[p] = 0;
    heap.push_back(order_key(0.0f, p));  // ascending keys already form a valid min-heap
  }
  if (num_packs <= kLinearScanPacks) {
    // NOTE: with few packs (a node's 8 GPUs) a branch-free scan for the smallest key beats a heap,
    // whose sift branches mispredict; a full pack's key is set to the maximum so it is never chosen.
    uint64_t* keys = heap.data();
    for (int64_t k = 0; k < num_items; ++k) {
      const int64_t item = static_cast<int64_t>(order[k] & kIndexMask);
      uint64_t smallest = keys[0];
      for (int64_t p = 1; p < num_packs; ++p) smallest = std::min(smallest, keys[p]);
      const int64_t pack = static_cast<int64_t>(smallest & kIndexMask);
      pack_index[item] = pack;
      rank_in_pack[item] = pack_items[pack];
      pack_weight[pack] += weight[item];  // float32 accumulation in packing order, as the anchor
      keys[pack] = ++pack_items[pack] < items_per_pack ? order_key(pack_weight[pack], pack) : ~uint64_t{0};
    }
    return;
  }
  // A tournament tree over the packs (leaves = pack keys, inner node = the smaller child; a full pack's
  // key is the maximum) finds the anchor's "lightest pack with room, lowest index first" at the root.
  // NOTE: updating a leaf walks up with branch-free mins; for 144 GPUs this ran ~2x faster than a
  // binary heap, whose sift branches mispredict.
  int64_t leaves = 1;
  while (leaves < num_packs) leaves *= 2;
  std::vector<uint64_t>& tree = workspace.tree;
  FF_ASSERT(static_cast<int64_t>(tree.capacity()) >= 2 * leaves, "workspace sized for {} packs", num_packs);
  tree.assign(2 * leaves, ~uint64_t{0});
  for (int64_t p = 0; p < num_packs; ++p) tree[leaves + p] = order_key(0.0f, p);
  for (int64_t node = leaves - 1; node >= 1; --node) tree[node] = std::min(tree[2 * node], tree[2 * node + 1]);
  for (int64_t k = 0; k < num_items; ++k) {
    const int64_t item = static_cast<int64_t>(order[k] & kIndexMask);
    const int64_t pack = static_cast<int64_t>(tree[1] & kIndexMask);
    pack_index[item] = pack;
    rank_in_pack[item] = pack_items[pack];
    pack_weight[pack] += weight[item];  // float32 accumulation in packing order, as the anchor
    int64_t node = leaves + pack;
    tree[node] = ++pack_items[pack] < items_per_pack ? order_key(pack_weight[pack], pack) : ~uint64_t{0};
    for (node /= 2; node >= 1; node /= 2) tree[node] = std::min(tree[2 * node], tree[2 * node + 1]);
  }
  FF_ASSERT(tree[1] == ~uint64_t{0}, "every pack must be full after packing");
}

// replicate_experts on caller-provided memory. weight: (num_logical); phy2log, phyrank:
// (num_physical); logcnt: (num_logical).
void replicate_into(std::span<const float> weight, std::span<int64_t> phy2log, std::span<int64_t> phyrank,
                    std::span<int64_t> logcnt, AnchorWorkspace& workspace) {
  const int64_t num_logical = static_cast<int64_t>(weight.size());
  const int64_t num_physical = static_cast<int64_t>(phy2log.size());
  FF_ASSERT(num_physical >= num_logical && num_logical > 0, "{} physical < {} logical", num_physical, num_logical);
  FF_ASSERT(phyrank.size() == phy2log.size() && logcnt.size() == weight.size());
  FF_ASSERT(num_logical < kMaxIndex, "{} experts do not fit the 32-bit index of the heap key", num_logical);
  // The anchor takes argmax(weight / logcnt) with the first index winning ties: the largest key of
  // (float32 per-replica load, ~index) in a max-heap pops the same expert in O(log experts).
  auto replica_key = [](float per_replica, int64_t expert) {
    return order_key(per_replica, kIndexMask - static_cast<uint64_t>(expert));
  };
  std::vector<uint64_t>& heap = workspace.heap;
  heap.clear();
  for (int64_t e = 0; e < num_logical; ++e) {
    phy2log[e] = e;
    phyrank[e] = 0;
    logcnt[e] = 1;
    heap.push_back(replica_key(weight[e], e));
  }
  if (num_physical == num_logical) return;
  std::make_heap(heap.begin(), heap.end());
  for (int64_t slot = num_logical; slot < num_physical; ++slot) {
    std::pop_heap(heap.begin(), heap.end());
    const int64_t expert = static_cast<int64_t>(kIndexMask - (heap.back() & kIndexMask));
    phy2log[slot] = expert;
    phyrank[slot] = logcnt[expert];
    logcnt[expert] += 1;
    heap.back() = replica_key(weight[expert] / static_cast<float>(logcnt[expert]), expert);
    std::push_heap(heap.begin(), heap.end());
  }
}

// The hierarchical anchor for one layer. weight: (num_experts); phy2log, phyrank: (num_replicas);
// logcnt: (num_experts). Physical order: node-major, then GPU, then the order items were packed.
void rebalance_layer(std::span<const float> weight, const Shape& shape, std::span<int64_t> phy2log,
                     std::span<int64_t> phyrank, std::span<int64_t> logcnt, AnchorWorkspace& ws) {
  FF_ASSERT(static_cast<int64_t>(weight.size()) == shape.num_experts);
  FF_ASSERT(static_cast<int64_t>(phy2log.size()) == shape.num_replicas);
  // Step 1: pack whole groups onto nodes by their total load (float32, summed in index order).
  for (int64_t g = 0; g < shape.num_groups; ++g) {
    float sum = 0.0f;
    for (int64_t j = 0; j < shape.group_size; ++j) sum += weight[g * shape.group_size + j];
    ws.group_load[g] = sum;
  }
  pack_into(ws.group_load, shape.num_nodes, ws.group_pack, ws.group_rank, ws);
  // "mlog" numbers experts node by node: the node's groups in packing order, experts in index order.
  for (int64_t g = 0; g < shape.num_groups; ++g) {
    const int64_t base = (ws.group_pack[g] * shape.groups_per_node + ws.group_rank[g]) * shape.group_size;
    for (int64_t j = 0; j < shape.group_size; ++j) {
      const int64_t expert = g * shape.group_size + j;
      ws.log2mlog[expert] = base + j;
      ws.mlog2log[base + j] = expert;
    }
  }
  for (int64_t node = 0; node < shape.num_nodes; ++node) {
    const int64_t mlog_begin = node * shape.experts_per_node;
    // Step 2: replicate the node's experts into the node's slots.
    for (int64_t j = 0; j < shape.experts_per_node; ++j) ws.node_weight[j] = weight[ws.mlog2log[mlog_begin + j]];
    std::span<int64_t> node_mlogcnt(ws.mlogcnt.data() + mlog_begin, static_cast<size_t>(shape.experts_per_node));
    replicate_into(ws.node_weight, ws.phy2mlog, ws.node_phyrank, node_mlogcnt, ws);
    // Step 3: pack the node's replicas onto its GPUs by per-replica load (float32 division).
    for (int64_t p = 0; p < shape.replicas_per_node; ++p) {
      const int64_t mlog = ws.phy2mlog[p];
      ws.phy_weight[p] = ws.node_weight[mlog] / static_cast<float>(node_mlogcnt[mlog]);
    }
    pack_into(ws.phy_weight, shape.gpus_per_node, ws.phy_pack, ws.phy_rank, ws);
    const int64_t slot_begin = node * shape.replicas_per_node;
    for (int64_t p = 0; p < shape.replicas_per_node; ++p) {
      const int64_t slot = slot_begin + ws.phy_pack[p] * shape.replicas_per_gpu + ws.phy_rank[p];
      phy2log[slot] = ws.mlog2log[mlog_begin + ws.phy2mlog[p]];
      phyrank[slot] = ws.node_phyrank[p];
    }
  }
  for (int64_t e = 0; e < shape.num_experts; ++e) logcnt[e] = ws.mlogcnt[ws.log2mlog[e]];
}

// Runs work(begin, end) over [0, num_items) split into contiguous chunks on up to
// hardware_concurrency threads (the caller's thread takes the first chunk). Items are split only when
// each thread gets at least kMinWorkPerThread units of cost, so small inputs stay on one thread.
//
// NOTE: measured on the 2-core CI machine, 58 layers x 256 experts (288 replicas on 32 GPUs): ~1.1 ms
// on one thread, ~0.6 ms on two; starting a thread costs ~20-50 us, hence the threshold.
template <typename Work>
void run_in_parallel(int64_t num_items, int64_t cost_per_item, const Work& work) {
  constexpr int64_t kMinWorkPerThread = 4096;
  constexpr int64_t kMaxThreads = 16;
  const int64_t hardware = std::max<int64_t>(1, std::thread::hardware_concurrency());
  const int64_t by_work = std::max<int64_t>(1, num_items * cost_per_item / kMinWorkPerThread);
  const int64_t num_threads = std::min({hardware, by_work, num_items, kMaxThreads});
  std::vector<std::thread> threads;
  int64_t started_until = 0;
  for (int64_t t = 1; t < num_threads; ++t) {
    const int64_t begin = num_items * t / num_threads;
    const int64_t end = num_items * (t + 1) / num_threads;
    try {
      threads.emplace_back([&work, begin, end] {
        FF_TRACE_SCOPE("eplb layers (worker thread)", "eplb");
        work(begin, end);
      });
    } catch (const std::system_error&) {
      // No thread to be had (resource limits): do the rest on this thread; the result is the same.
      break;
    }
    started_until = end;
  }
  const int64_t first_end = num_threads > 1 ? num_items / num_threads : num_items;
  work(0, first_end);
  if (started_until < num_items && num_threads > 1) work(std::max(started_until, first_end), num_items);
  for (std::thread& thread : threads) thread.join();
}

}  // namespace

namespace internal {

Shape make_shape(int64_t num_experts, const RebalanceOptions& options) {
  Shape shape;
  const bool hierarchical = is_hierarchical(options);
  shape.num_experts = num_experts;
  shape.num_replicas = options.num_replicas;
  shape.num_groups = hierarchical ? options.num_groups : 1;
  shape.num_nodes = hierarchical ? options.num_nodes : 1;
  shape.num_gpus = options.num_gpus;
  shape.group_size = num_experts / shape.num_groups;
  shape.groups_per_node = shape.num_groups / shape.num_nodes;
  shape.experts_per_node = num_experts / shape.num_nodes;
  shape.replicas_per_node = shape.num_replicas / shape.num_nodes;
  shape.gpus_per_node = shape.num_gpus / shape.num_nodes;
  shape.replicas_per_gpu = shape.num_replicas / shape.num_gpus;
  FF_ASSERT(shape.group_size * shape.num_groups == num_experts, "validate() admits only divisible shapes");
  FF_ASSERT(shape.replicas_per_node >= shape.experts_per_node && shape.replicas_per_gpu >= 1);
  return shape;
}

void layer_gpu_loads(std::span<const float> weight, std::span<const int64_t> phy2log,
                     std::span<const int64_t> logcnt, int64_t replicas_per_gpu, std::span<double> loads) {
  FF_ASSERT(replicas_per_gpu > 0 && static_cast<int64_t>(loads.size()) * replicas_per_gpu ==
                                        static_cast<int64_t>(phy2log.size()));
  for (size_t gpu = 0; gpu < loads.size(); ++gpu) {
    double sum = 0;
    for (int64_t k = 0; k < replicas_per_gpu; ++k) {
      const int64_t expert = phy2log[gpu * replicas_per_gpu + k];
      sum += static_cast<double>(weight[expert]) / static_cast<double>(logcnt[expert]);
    }
    loads[gpu] = sum;
  }
}

double layer_imbalance(std::span<const double> loads) {
  FF_ASSERT(!loads.empty());
  double total = 0;
  double max_load = 0;
  for (double load : loads) {
    total += load;
    max_load = std::max(max_load, load);
  }
  // A layer that received no tokens is perfectly balanced, not undefined.
  if (total <= 0) return 1.0;
  return max_load / (total / static_cast<double>(loads.size()));
}

}  // namespace internal

std::string_view policy_name(Policy policy) {
  switch (policy) {
    case Policy::kAnchor: return "anchor";
    case Policy::kRefine: return "refine";
  }
  FF_UNREACHABLE("policy {}", static_cast<int>(policy));
}

Result<Policy> parse_policy(std::string_view name) {
  if (name == "anchor") return Policy::kAnchor;
  if (name == "refine") return Policy::kRefine;
  return invalid_argument("policy='{}' is not known; expected 'anchor' or 'refine'", name);
}

bool is_hierarchical(const RebalanceOptions& options) {
  return options.num_nodes > 0 && options.num_groups % options.num_nodes == 0;
}

Status validate(LoadView weight, const RebalanceOptions& options) {
  if (weight.num_layers <= 0 || weight.num_experts <= 0) {
    return invalid_argument("weight has shape ({}, {}); expected (layers, experts) with at least one of each",
                            weight.num_layers, weight.num_experts);
  }
  if (weight.data == nullptr) return invalid_argument("weight has no data");
  const struct {
    const char* name;
    int64_t value;
  } counts[] = {{"num_replicas", options.num_replicas},
                {"num_groups", options.num_groups},
                {"num_nodes", options.num_nodes},
                {"num_gpus", options.num_gpus}};
  for (const auto& count : counts) {
    if (count.value <= 0) return invalid_argument("{}={} must be positive", count.name, count.value);
  }
  if (options.num_replicas % options.num_gpus != 0) {
    return invalid_argument("num_replicas={} is not a multiple of num_gpus={}", options.num_replicas,
                            options.num_gpus);
  }
  if (options.num_gpus % options.num_nodes != 0) {
    return invalid_argument("num_gpus={} is not a multiple of num_nodes={}", options.num_gpus, options.num_nodes);
  }
  if (options.num_replicas < weight.num_experts) {
    return invalid_argument("num_replicas={} is fewer than the {} experts; every expert needs at least one replica",
                            options.num_replicas, weight.num_experts);
  }
  // Groups matter only to the hierarchical policy; the global one ignores them, as the anchor does.
  if (is_hierarchical(options) && weight.num_experts % options.num_groups != 0) {
    return invalid_argument("{} experts cannot be divided into num_groups={} groups of equal size",
                            weight.num_experts, options.num_groups);
  }
  // Bounds the (layers, experts, max_replicas) output so sizes cannot overflow.
  constexpr int64_t kMaxElements = int64_t{1} << 34;
  if (options.num_replicas >= kMaxIndex || weight.num_layers > kMaxElements / options.num_replicas ||
      weight.num_layers * weight.num_experts > kMaxElements / (options.num_replicas - weight.num_experts + 1)) {
    return invalid_argument("weight ({} layers, {} experts) with num_replicas={} is too large", weight.num_layers,
                            weight.num_experts, options.num_replicas);
  }
  for (int64_t layer = 0; layer < weight.num_layers; ++layer) {
    for (int64_t expert = 0; expert < weight.num_experts; ++expert) {
      const float load = weight.at(layer, expert);
      if (!std::isfinite(load) || load < 0.0f) {
        return invalid_argument("load at layer {}, expert {} is {} (loads must be finite and non-negative)", layer,
                                expert, load);
      }
    }
  }
  return Status::ok();
}

Result<Placement> rebalance_experts(LoadView weight, const RebalanceOptions& options, RebalanceStats* stats) {
  FF_TRACE_SCOPE("eplb rebalance_experts", "eplb");
  FF_RETURN_IF_ERROR(validate(weight, options));
  const Shape shape = internal::make_shape(weight.num_experts, options);
  const int64_t num_layers = weight.num_layers;
  Placement placement;
  placement.num_layers = num_layers;
  placement.num_experts = shape.num_experts;
  placement.num_replicas = shape.num_replicas;
  placement.phy2log.resize(num_layers * shape.num_replicas);
  placement.logcnt.resize(num_layers * shape.num_experts);
  std::vector<int64_t> phyrank(num_layers * shape.num_replicas);  // (num_layers, num_replicas)

  const bool want_stats = stats != nullptr || options.policy == Policy::kRefine;
  std::vector<double> anchor_imbalance(want_stats ? num_layers : 0);
  std::vector<double> refined_imbalance(want_stats ? num_layers : 0);
  // Layers are independent: each worker takes a contiguous range with its own scratch memory and
  // writes only its layers' rows, so the result does not depend on the number of workers.
  auto process_layers = [&](int64_t layer_begin, int64_t layer_end) {
    AnchorWorkspace workspace(shape);
    std::vector<double> loads(want_stats ? shape.num_gpus : 0);
    internal::RefineWorkspace refine_workspace;
    if (options.policy == Policy::kRefine) refine_workspace.resize(shape);
    for (int64_t layer = layer_begin; layer < layer_end; ++layer) {
      std::span<int64_t> layer_phy2log(placement.phy2log.data() + layer * shape.num_replicas,
                                       static_cast<size_t>(shape.num_replicas));
      std::span<int64_t> layer_phyrank(phyrank.data() + layer * shape.num_replicas,
                                       static_cast<size_t>(shape.num_replicas));
      std::span<int64_t> layer_logcnt(placement.logcnt.data() + layer * shape.num_experts,
                                      static_cast<size_t>(shape.num_experts));
      rebalance_layer(weight.row(layer), shape, layer_phy2log, layer_phyrank, layer_logcnt, workspace);
      if (!want_stats) continue;
      internal::layer_gpu_loads(weight.row(layer), layer_phy2log, layer_logcnt, shape.replicas_per_gpu, loads);
      anchor_imbalance[layer] = internal::layer_imbalance(loads);
      refined_imbalance[layer] = anchor_imbalance[layer];
      if (options.policy != Policy::kRefine) continue;
      internal::refine_layer(weight.row(layer), shape, layer_phy2log, layer_phyrank, layer_logcnt, refine_workspace);
      internal::layer_gpu_loads(weight.row(layer), layer_phy2log, layer_logcnt, shape.replicas_per_gpu, loads);
      refined_imbalance[layer] = internal::layer_imbalance(loads);
      FF_ASSERT(refined_imbalance[layer] <= anchor_imbalance[layer] * (1 + 1e-12), "refine made layer {} worse",
                layer);
    }
  };
  run_in_parallel(num_layers, shape.num_replicas * (options.policy == Policy::kRefine ? 64 : 1), process_layers);

  // log2phy: slot of replica r of expert e at [layer, e, r]; ranks come from the algorithm, not from
  // the physical order, exactly as the anchor scatters them.
  const int64_t max_replicas = *std::max_element(placement.logcnt.begin(), placement.logcnt.end());
  placement.max_replicas = max_replicas;
  placement.log2phy.assign(num_layers * shape.num_experts * max_replicas, -1);
  for (int64_t layer = 0; layer < num_layers; ++layer) {
    for (int64_t slot = 0; slot < shape.num_replicas; ++slot) {
      const int64_t index = layer * shape.num_replicas + slot;
      const int64_t expert = placement.phy2log[index];
      const int64_t rank = phyrank[index];
      FF_ASSERT(rank < placement.logcnt[layer * shape.num_experts + expert], "layer {} slot {}", layer, slot);
      int64_t& entry = placement.log2phy[(layer * shape.num_experts + expert) * max_replicas + rank];
      FF_ASSERT_EQ(entry, int64_t{-1}, "two slots claim replica {} of expert {} in layer {}", rank, expert, layer);
      entry = slot;
    }
  }

  if (stats != nullptr) {
    auto mean = [](const std::vector<double>& values) {
      double sum = 0;
      for (double value : values) sum += value;
      return sum / static_cast<double>(values.size());
    };
    stats->anchor_imbalance_mean = mean(anchor_imbalance);
    stats->refined_imbalance_mean = mean(refined_imbalance);
    stats->anchor_imbalance = std::move(anchor_imbalance);
    stats->refined_imbalance = std::move(refined_imbalance);
  }
  return placement;
}

Result<std::vector<double>> gpu_loads(LoadView weight, std::span<const int64_t> phy2log,
                                      std::span<const int64_t> logcnt, int64_t num_replicas, int64_t num_gpus) {
  if (weight.num_layers <= 0 || weight.num_experts <= 0 || weight.data == nullptr) {
    return invalid_argument("weight has shape ({}, {}); expected (layers, experts) with at least one of each",
                            weight.num_layers, weight.num_experts);
  }
  if (num_replicas <= 0 || num_gpus <= 0 || num_replicas % num_gpus != 0) {
    return invalid_argument("num_replicas={} must be a positive multiple of num_gpus={}", num_replicas, num_gpus);
  }
  if (static_cast<int64_t>(phy2log.size()) != weight.num_layers * num_replicas) {
    return invalid_argument("phy2log has {} entries; expected {} layers x {} replicas", phy2log.size(),
                            weight.num_layers, num_replicas);
  }
  if (static_cast<int64_t>(logcnt.size()) != weight.num_layers * weight.num_experts) {
    return invalid_argument("logcnt has {} entries; expected {} layers x {} experts", logcnt.size(),
                            weight.num_layers, weight.num_experts);
  }
  for (int64_t layer = 0; layer < weight.num_layers; ++layer) {
    for (int64_t slot = 0; slot < num_replicas; ++slot) {
      const int64_t expert = phy2log[layer * num_replicas + slot];
      if (expert < 0 || expert >= weight.num_experts) {
        return invalid_argument("phy2log[{}, {}]={} is not an expert in [0, {})", layer, slot, expert,
                                weight.num_experts);
      }
      if (logcnt[layer * weight.num_experts + expert] <= 0) {
        return invalid_argument("logcnt[{}, {}]={} but the expert has a replica", layer, expert,
                                logcnt[layer * weight.num_experts + expert]);
      }
    }
  }
  std::vector<double> loads(weight.num_layers * num_gpus);  // (num_layers, num_gpus)
  for (int64_t layer = 0; layer < weight.num_layers; ++layer) {
    internal::layer_gpu_loads(weight.row(layer), phy2log.subspan(layer * num_replicas, num_replicas),
                              logcnt.subspan(layer * weight.num_experts, weight.num_experts), num_replicas / num_gpus,
                              {loads.data() + layer * num_gpus, static_cast<size_t>(num_gpus)});
  }
  return loads;
}

std::vector<double> imbalance_per_layer(std::span<const double> loads, int64_t num_gpus) {
  FF_ASSERT(num_gpus > 0 && loads.size() % num_gpus == 0, "{} loads over {} GPUs", loads.size(), num_gpus);
  std::vector<double> result;
  for (size_t begin = 0; begin < loads.size(); begin += num_gpus) {
    result.push_back(internal::layer_imbalance(loads.subspan(begin, num_gpus)));
  }
  return result;
}

Packing balanced_packing(std::span<const float> weight, int64_t num_packs) {
  Shape shape;  // only sizes the shared scratch buffers
  shape.num_groups = static_cast<int64_t>(weight.size());
  AnchorWorkspace workspace(shape);
  Packing packing;
  packing.pack_index.resize(weight.size());
  packing.rank_in_pack.resize(weight.size());
  pack_into(weight, num_packs, packing.pack_index, packing.rank_in_pack, workspace);
  return packing;
}

Replication replicate_experts(std::span<const float> weight, int64_t num_physical) {
  Shape shape;
  shape.num_groups = std::max<int64_t>(static_cast<int64_t>(weight.size()), num_physical);
  AnchorWorkspace workspace(shape);
  Replication replication;
  replication.phy2log.resize(num_physical);
  replication.phyrank.resize(num_physical);
  replication.logcnt.resize(weight.size());
  replicate_into(weight, replication.phy2log, replication.phyrank, replication.logcnt, workspace);
  return replication;
}

}  // namespace ff::eplb
