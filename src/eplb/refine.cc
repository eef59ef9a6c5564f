// The refine policy: a deterministic, bounded local search that starts from the anchor's placement of
// one layer and lowers its largest GPU load.
//
// Load model: an expert's load is split evenly over its replicas; a GPU's load is the sum over its
// slots. Two kinds of moves, both keeping every constraint of the anchor (each GPU keeps exactly
// replicas_per_gpu slots, every expert keeps >= 1 replica, in hierarchical mode every replica stays on
// the node its group was packed to, since moves never leave a node):
//  - swap: exchange the experts of a slot on the most loaded GPU and a slot on another GPU of the
//    same node, when that lowers the larger of the two GPU loads (repeated until no swap helps);
//  - recount: on the node of the most loaded GPU, move one replica from a donor (>= 2 replicas, low
//    load per replica) to a recipient (high load per replica), re-pack the node's replicas onto its
//    GPUs the anchor's way, and keep the best such candidate when it lowers the objective (largest GPU
//    load, then sum of squared GPU loads); then swaps again.
// Every accepted move strictly lowers the objective, the best placement seen is kept, and both loops
// are bounded, so the search ends and is never worse than the anchor.
#include <algorithm>

#include "ff/common/assert.h"
#include "internal.h"

namespace ff::eplb::internal {

namespace {

// Bounds of the search (TIGER_STYLE: every loop has one). Recount rounds: each moves one replica;
// swaps per round: each strictly lowers the objective.
constexpr int kMaxRecountRounds = 16;
constexpr int kSwapsPerReplica = 2;
// Recipients and donors tried per recount round: kCandidates^2 trial packings of one node.
constexpr size_t kCandidates = 6;

Objective objective_of(std::span<const double> loads) {
  Objective objective;
  for (double load : loads) {
    objective.max_load = std::max(objective.max_load, load);
    objective.sum_squares += load * load;
  }
  return objective;
}

int64_t most_loaded_gpu(std::span<const double> loads) {
  // Ties: the lowest index, so the search is deterministic.
  return std::max_element(loads.begin(), loads.end()) - loads.begin();
}

class LayerSearch {
 public:
  LayerSearch(std::span<const float> weight, const Shape& shape, RefineWorkspace& ws)
      : weight_(weight), shape_(shape), ws_(ws) {}

  void recompute_loads() {
    layer_gpu_loads(weight_, ws_.slot_expert, ws_.count, shape_.replicas_per_gpu, ws_.gpu_load);
  }

  double replica_load(int64_t expert) const {
    return ws_.weight[expert] / static_cast<double>(ws_.count[expert]);
  }

  // Swaps until no swap with the most loaded GPU lowers the larger of the two loads.
  void swap_descent() {
    const int64_t per_gpu = shape_.replicas_per_gpu;
    const int64_t max_swaps = kSwapsPerReplica * shape_.num_replicas;
    for (int64_t iteration = 0; iteration < max_swaps; ++iteration) {
      const int64_t top_gpu = most_loaded_gpu(ws_.gpu_load);
      const double top_load = ws_.gpu_load[top_gpu];
      const int64_t node_gpu_begin = top_gpu / shape_.gpus_per_node * shape_.gpus_per_node;
      double best_pair_max = top_load;
      int64_t best_from = -1;
      int64_t best_to = -1;
      double best_delta = 0;
      for (int64_t from = top_gpu * per_gpu; from < (top_gpu + 1) * per_gpu; ++from) {
        const double from_load = replica_load(ws_.slot_expert[from]);
        for (int64_t gpu = node_gpu_begin; gpu < node_gpu_begin + shape_.gpus_per_node; ++gpu) {
          if (gpu == top_gpu) continue;
          for (int64_t to = gpu * per_gpu; to < (gpu + 1) * per_gpu; ++to) {
            const double delta = from_load - replica_load(ws_.slot_expert[to]);
            if (delta <= 0) continue;
            const double pair_max = std::max(top_load - delta, ws_.gpu_load[gpu] + delta);
            if (pair_max < best_pair_max) {
              best_pair_max = pair_max;
              best_from = from;
              best_to = to;
              best_delta = delta;
            }
          }
        }
      }
      if (best_from < 0) return;
      FF_ASSERT(best_to / per_gpu / shape_.gpus_per_node == top_gpu / shape_.gpus_per_node, "swap left the node");
      std::swap(ws_.slot_expert[best_from], ws_.slot_expert[best_to]);
      ws_.gpu_load[top_gpu] -= best_delta;
      ws_.gpu_load[best_to / per_gpu] += best_delta;
    }
  }

  // One recount round on the node of the most loaded GPU: tries moving one replica from a donor (an
  // expert with >= 2 replicas and a low load per replica once it has one fewer) to a recipient (an
  // expert with a high load per replica), re-packs the node's replicas for each candidate, and applies
  // the best candidate if it beats the current placement. Returns whether it applied one.
  bool recount() {
    const int64_t per_gpu = shape_.replicas_per_gpu;
    const int64_t top_gpu = most_loaded_gpu(ws_.gpu_load);
    const int64_t node = top_gpu / shape_.gpus_per_node;
    const int64_t gpu_begin = node * shape_.gpus_per_node;
    const int64_t gpu_end = gpu_begin + shape_.gpus_per_node;
    // GPUs outside the node do not change; their share of the objective is computed once.
    Objective outside;
    for (int64_t gpu = 0; gpu < shape_.num_gpus; ++gpu) {
      if (gpu >= gpu_begin && gpu < gpu_end) continue;
      outside.max_load = std::max(outside.max_load, ws_.gpu_load[gpu]);
      outside.sum_squares += ws_.gpu_load[gpu] * ws_.gpu_load[gpu];
    }
    collect_node_experts(gpu_begin * per_gpu, gpu_end * per_gpu);

    // Candidates: the kCandidates experts with the highest load per replica receive, the kCandidates
    // with the lowest load per replica after giving one up donate. Ties: lower expert index first.
    auto by_replica_load_descending = [&](int64_t a, int64_t b) {
      const double load_a = replica_load(a);
      const double load_b = replica_load(b);
      return load_a > load_b || (load_a == load_b && a < b);
    };
    auto by_donated_load_ascending = [&](int64_t a, int64_t b) {
      const double load_a = ws_.weight[a] / static_cast<double>(ws_.count[a] - 1);
      const double load_b = ws_.weight[b] / static_cast<double>(ws_.count[b] - 1);
      return load_a < load_b || (load_a == load_b && a < b);
    };
    ws_.recipients.assign(ws_.node_experts.begin(), ws_.node_experts.end());
    const size_t recipient_count = std::min(ws_.recipients.size(), kCandidates);
    std::partial_sort(ws_.recipients.begin(), ws_.recipients.begin() + recipient_count, ws_.recipients.end(),
                      by_replica_load_descending);
    ws_.donors.clear();
    for (int64_t expert : ws_.node_experts) {
      if (ws_.count[expert] >= 2) ws_.donors.push_back(expert);
    }
    const size_t donor_count = std::min(ws_.donors.size(), kCandidates);
    std::partial_sort(ws_.donors.begin(), ws_.donors.begin() + donor_count, ws_.donors.end(),
                      by_donated_load_ascending);

    Objective best = objective_of(ws_.gpu_load);
    int64_t best_recipient = -1;
    int64_t best_donor = -1;
    for (size_t r = 0; r < recipient_count; ++r) {
      for (size_t d = 0; d < donor_count; ++d) {
        const int64_t recipient = ws_.recipients[r];
        const int64_t donor = ws_.donors[d];
        if (recipient == donor) continue;
        ws_.count[recipient] += 1;
        ws_.count[donor] -= 1;
        const Objective candidate = pack_node(gpu_begin, gpu_end, outside);
        ws_.count[recipient] -= 1;
        ws_.count[donor] += 1;
        if (candidate < best) {
          best = candidate;
          best_recipient = recipient;
          best_donor = donor;
          ws_.best_packed.assign(ws_.packed.begin(), ws_.packed.end());
        }
      }
    }
    if (best_recipient < 0) return false;
    FF_ASSERT(ws_.count[best_donor] >= 2, "a recount must leave expert {} a replica", best_donor);
    ws_.count[best_recipient] += 1;
    ws_.count[best_donor] -= 1;
    std::copy(ws_.best_packed.begin(), ws_.best_packed.end(), ws_.slot_expert.begin() + gpu_begin * per_gpu);
    recompute_loads();
    return true;
  }

 private:
  // ws_.node_experts := the distinct experts of slots [slot_begin, slot_end), in slot order.
  void collect_node_experts(int64_t slot_begin, int64_t slot_end) {
    ws_.node_experts.clear();
    for (int64_t slot = slot_begin; slot < slot_end; ++slot) {
      const int64_t expert = ws_.slot_expert[slot];
      if (ws_.fill[expert] == 0) ws_.node_experts.push_back(expert);
      ws_.fill[expert] = 1;
    }
    for (int64_t expert : ws_.node_experts) ws_.fill[expert] = 0;
  }

  // Packs the node's replicas under the current counts the way the anchor packs (heaviest replica
  // first onto the lightest GPU with room), into ws_.packed; returns the whole layer's objective.
  Objective pack_node(int64_t gpu_begin, int64_t gpu_end, const Objective& outside) {
    const int64_t per_gpu = shape_.replicas_per_gpu;
    const int64_t num_packs = gpu_end - gpu_begin;
    size_t num_items = 0;
    for (int64_t expert : ws_.node_experts) {
      for (int64_t k = 0; k < ws_.count[expert]; ++k) ws_.items[num_items++] = expert;
    }
    FF_ASSERT_EQ(static_cast<int64_t>(num_items), shape_.replicas_per_node, "counts must fill the node");
    std::sort(ws_.items.begin(), ws_.items.begin() + num_items, [&](int64_t a, int64_t b) {
      const double load_a = replica_load(a);
      const double load_b = replica_load(b);
      return load_a > load_b || (load_a == load_b && a < b);
    });
    ws_.heap.clear();
    for (int64_t p = 0; p < num_packs; ++p) {
      ws_.pack_load[p] = 0;
      ws_.pack_fill[p] = 0;
      ws_.heap.push_back(p);
    }
    auto heavier = [&](int64_t a, int64_t b) {
      return ws_.pack_load[a] > ws_.pack_load[b] || (ws_.pack_load[a] == ws_.pack_load[b] && a > b);
    };
    for (size_t i = 0; i < num_items; ++i) {
      std::pop_heap(ws_.heap.begin(), ws_.heap.end(), heavier);
      const int64_t pack = ws_.heap.back();
      ws_.heap.pop_back();
      ws_.packed[pack * per_gpu + ws_.pack_fill[pack]] = ws_.items[i];
      ws_.pack_load[pack] += replica_load(ws_.items[i]);
      if (++ws_.pack_fill[pack] < per_gpu) {
        ws_.heap.push_back(pack);
        std::push_heap(ws_.heap.begin(), ws_.heap.end(), heavier);
      }
    }
    Objective result = outside;
    for (int64_t p = 0; p < num_packs; ++p) {
      result.max_load = std::max(result.max_load, ws_.pack_load[p]);
      result.sum_squares += ws_.pack_load[p] * ws_.pack_load[p];
    }
    return result;
  }

  std::span<const float> weight_;
  const Shape& shape_;
  RefineWorkspace& ws_;
};

}  // namespace

void RefineWorkspace::resize(const Shape& shape) {
  slot_expert.resize(shape.num_replicas);
  count.resize(shape.num_experts);
  weight.resize(shape.num_experts);
  gpu_load.resize(shape.num_gpus);
  best_slot_expert.resize(shape.num_replicas);
  best_count.resize(shape.num_experts);
  node_experts.reserve(shape.num_experts);
  recipients.reserve(shape.num_experts);
  donors.reserve(shape.num_experts);
  items.resize(shape.replicas_per_node);
  packed.resize(shape.replicas_per_node);
  best_packed.resize(shape.replicas_per_node);
  pack_load.resize(shape.gpus_per_node);
  pack_fill.resize(shape.gpus_per_node);
  heap.reserve(shape.gpus_per_node);
  fill.assign(shape.num_experts, 0);
}

RefineResult refine_layer(std::span<const float> weight, const Shape& shape, std::span<int64_t> phy2log,
                          std::span<int64_t> phyrank, std::span<int64_t> logcnt, RefineWorkspace& ws) {
  FF_ASSERT(static_cast<int64_t>(phy2log.size()) == shape.num_replicas &&
            static_cast<int64_t>(logcnt.size()) == shape.num_experts);
  FF_ASSERT(static_cast<int64_t>(ws.slot_expert.size()) == shape.num_replicas, "workspace not sized");
  std::copy(phy2log.begin(), phy2log.end(), ws.slot_expert.begin());
  std::copy(logcnt.begin(), logcnt.end(), ws.count.begin());
  for (int64_t e = 0; e < shape.num_experts; ++e) ws.weight[e] = weight[e];

  FF_ASSERT(std::all_of(ws.fill.begin(), ws.fill.end(), [](int64_t f) { return f == 0; }), "marks left set");
  LayerSearch search(weight, shape, ws);
  search.recompute_loads();
  const Objective anchor = objective_of(ws.gpu_load);
  Objective best = anchor;
  bool improved = false;
  for (int round = 0; round < kMaxRecountRounds; ++round) {
    search.swap_descent();
    search.recompute_loads();  // exact loads; the descent updated them incrementally
    const Objective current = objective_of(ws.gpu_load);
    if (current < best) {
      best = current;
      improved = true;
      ws.best_slot_expert = ws.slot_expert;  // same sizes: copies without allocating
      ws.best_count = ws.count;
    }
    if (!search.recount()) break;
  }

  RefineResult result{anchor.max_load, best.max_load, improved};
  if (!improved) return result;
  FF_ASSERT(best.max_load <= anchor.max_load, "the search keeps only placements better than the anchor");
  std::copy(ws.best_slot_expert.begin(), ws.best_slot_expert.end(), phy2log.begin());
  std::copy(ws.best_count.begin(), ws.best_count.end(), logcnt.begin());
  // Replica ranks follow the physical order, so log2phy lists each expert's slots ascending.
  std::fill(ws.fill.begin(), ws.fill.end(), 0);
  for (int64_t slot = 0; slot < shape.num_replicas; ++slot) phyrank[slot] = ws.fill[phy2log[slot]]++;
  for (int64_t e = 0; e < shape.num_experts; ++e) FF_ASSERT_EQ(ws.fill[e], logcnt[e], "expert {}", e);
  std::fill(ws.fill.begin(), ws.fill.end(), 0);  // the marks collect_node_experts relies on
  return result;
}

}  // namespace ff::eplb::internal
