#include "ff/fs/chain_table.h"

#include <algorithm>
#include <set>

#include "ff/common/assert.h"

namespace ff::fs {

namespace {

Status validate(const std::vector<NodeId>& nodes, uint32_t targets_per_node, uint32_t replication) {
  if (nodes.empty()) return invalid_argument("chain table needs at least one storage node, got none");
  std::set<NodeId> distinct(nodes.begin(), nodes.end());
  if (distinct.size() != nodes.size()) return invalid_argument("chain table node list has duplicates");
  if (distinct.count(0) != 0) return invalid_argument("node id 0 is invalid");
  if (replication == 0 || replication > nodes.size()) {
    return invalid_argument("replication {} needs 1..{} (the number of nodes)", replication, nodes.size());
  }
  if (targets_per_node == 0 || targets_per_node >= kTargetsPerNodeLimit) {
    return invalid_argument("targets_per_node {} must be in 1..{}", targets_per_node, kTargetsPerNodeLimit - 1);
  }
  uint64_t total = static_cast<uint64_t>(nodes.size()) * targets_per_node;
  if (total % replication != 0) {
    return invalid_argument("{} nodes x {} targets = {} targets is not a multiple of replication {}", nodes.size(),
                            targets_per_node, total, replication);
  }
  return Status::ok();
}

// Local search after the greedy pass: swap two nodes between two chains when that lowers the sum of
// squared pair counts (with the total fixed, the most even spread has the smallest sum) and keeps
// every chain on distinct nodes. Each node keeps its number of chains. First-improvement passes in a
// fixed order (deterministic), until a pass finds nothing or the work budget is spent (large tables
// keep the greedy result for the pairs not reached).
void refine(std::vector<std::vector<size_t>>& groups, std::vector<std::vector<uint32_t>>& pairs) {
  const size_t chains = groups.size();
  if (chains < 2) return;
  const size_t r = groups[0].size();
  int64_t budget = 40'000'000;  // move evaluations (x ~2R pair updates each)
  auto contains = [](const std::vector<size_t>& group, size_t node) {
    return std::find(group.begin(), group.end(), node) != group.end();
  };
  // Change in sum of squares when pair (a, b) moves by d (both directions kept in `pairs`).
  auto square_delta = [&](size_t a, size_t b, int d) {
    int64_t now = pairs[a][b];
    return (now + d) * (now + d) - now * now;
  };
  bool improved = true;
  while (improved && budget > 0) {
    improved = false;
    for (size_t c1 = 0; c1 < chains && budget > 0; ++c1) {
      for (size_t c2 = c1 + 1; c2 < chains && budget > 0; ++c2) {
        for (size_t i = 0; i < r; ++i) {
          for (size_t j = 0; j < r; ++j) {
            --budget;
            const size_t x = groups[c1][i], y = groups[c2][j];
            if (x == y || contains(groups[c1], y) || contains(groups[c2], x)) continue;
            // x leaves c1 for c2, y leaves c2 for c1: pair (x, u) of every other u in c1 goes down and
            // (y, u) up, and the same for c2 the other way. A node in both chains sees no change (its
            // pair with x and with y each goes down once and up once), so it is skipped. The pairs
            // touched are distinct, so their square deltas add up.
            auto for_each_change = [&](auto&& change) {
              for (size_t u : groups[c1]) {
                if (u == x || contains(groups[c2], u)) continue;
                change(x, u, -1), change(y, u, +1);
              }
              for (size_t v : groups[c2]) {
                if (v == y || contains(groups[c1], v)) continue;
                change(y, v, -1), change(x, v, +1);
              }
            };
            int64_t delta = 0;
            for_each_change([&](size_t a, size_t b, int d) { delta += square_delta(a, b, d); });
            if (delta >= 0) continue;
            for_each_change([&](size_t a, size_t b, int d) {
              pairs[a][b] += d;
              pairs[b][a] += d;
            });
            groups[c1][i] = y;
            groups[c2][j] = x;
            improved = true;
          }
        }
      }
    }
  }
}

}  // namespace

Result<ChainLayout> generate_chain_layout(const std::vector<NodeId>& nodes, uint32_t targets_per_node,
                                          uint32_t replication, ChainLayoutMethod method) {
  FF_RETURN_IF_ERROR(validate(nodes, targets_per_node, replication));
  const size_t n = nodes.size();
  const size_t chain_count = n * targets_per_node / replication;
  ChainLayout layout;
  layout.chains.reserve(chain_count);
  std::vector<uint32_t> next_index(n, 0);

  if (method == ChainLayoutMethod::kRoundRobin) {
    // Nodes in order, repeated targets_per_node times, cut into consecutive groups of R.
    std::vector<size_t> sequence;
    for (uint32_t round = 0; round < targets_per_node; ++round) {
      for (size_t i = 0; i < n; ++i) sequence.push_back(i);
    }
    for (size_t c = 0; c < chain_count; ++c) {
      std::vector<TargetId> chain;
      std::set<size_t> used;
      for (uint32_t r = 0; r < replication; ++r) {
        size_t node = sequence[c * replication + r];
        if (!used.insert(node).second) {
          return invalid_argument("round-robin layout puts two replicas of chain {} on node {}", c, nodes[node]);
        }
        chain.push_back(make_target_id(nodes[node], next_index[node]++));
      }
      layout.chains.push_back(std::move(chain));
    }
    return layout;
  }

  // Balanced: chain by chain, pick R distinct nodes minimising how often the picked nodes already share
  // chains (pair counts), so every node's chains spread over all peers. Feasibility: a node with as many
  // unused targets as chains left must be in every remaining chain, so it is picked first; with that
  // rule a valid completion always exists (sum of remaining = R x chains left, each <= chains left).
  std::vector<uint32_t> remaining(n, targets_per_node);
  std::vector<std::vector<uint32_t>> pairs(n, std::vector<uint32_t>(n, 0));
  std::vector<std::vector<size_t>> groups;  // per chain: node indices
  groups.reserve(chain_count);
  for (size_t c = 0; c < chain_count; ++c) {
    const uint32_t chains_left = static_cast<uint32_t>(chain_count - c);
    std::vector<size_t> picked;
    for (size_t i = 0; i < n; ++i) {
      FF_ASSERT_LE(remaining[i], chains_left);
      if (remaining[i] == chains_left) picked.push_back(i);
    }
    FF_ASSERT_LE(picked.size(), replication);
    while (picked.size() < replication) {
      size_t best = n;
      uint64_t best_cost = 0;
      for (size_t i = 0; i < n; ++i) {
        if (remaining[i] == 0 || std::find(picked.begin(), picked.end(), i) != picked.end()) continue;
        uint64_t pair_sum = 0;
        for (size_t p : picked) pair_sum += pairs[i][p];
        // Cost: shared chains first, then prefer nodes with more unused targets, then lower index.
        uint64_t cost = pair_sum * (targets_per_node + 1) + (targets_per_node - remaining[i]);
        if (best == n || cost < best_cost) {
          best = i;
          best_cost = cost;
        }
      }
      FF_ASSERT_LT(best, n, "no node left for chain {}", c);
      picked.push_back(best);
    }
    for (size_t a : picked) {
      for (size_t b : picked) {
        if (a != b) ++pairs[a][b];
      }
      --remaining[a];
    }
    groups.push_back(std::move(picked));
  }
  refine(groups, pairs);
  // Head: per chain, the node that has led the fewest chains so far, so head (write) load spreads too.
  std::vector<uint32_t> heads(n, 0);
  for (auto& group : groups) {
    std::sort(group.begin(), group.end());
    auto head = std::min_element(group.begin(), group.end(), [&](size_t a, size_t b) { return heads[a] < heads[b]; });
    std::rotate(group.begin(), head, group.end());
    ++heads[group.front()];
    std::vector<TargetId> chain;
    for (size_t i : group) chain.push_back(make_target_id(nodes[i], next_index[i]++));
    layout.chains.push_back(std::move(chain));
  }
  return layout;
}

RecoverySpread recovery_spread(const ChainLayout& layout) {
  RecoverySpread spread;
  auto node_of = [](TargetId target) { return static_cast<NodeId>(target / kTargetsPerNodeLimit); };
  std::set<NodeId> all_nodes;
  for (const auto& chain : layout.chains) {
    for (TargetId target : chain) {
      all_nodes.insert(node_of(target));
      auto& peers = spread.shared[target];
      for (TargetId other : chain) {
        if (other == target) continue;
        ++peers[node_of(other)];
        ++spread.node_shared[node_of(target)][node_of(other)];
      }
    }
  }
  spread.min_peers = UINT32_MAX;
  spread.min_shared = UINT32_MAX;
  uint64_t peer_total = 0;
  for (NodeId node : all_nodes) {
    const auto& peers = spread.node_shared[node];
    spread.min_peers = std::min<uint32_t>(spread.min_peers, static_cast<uint32_t>(peers.size()));
    peer_total += peers.size();
    for (const auto& [peer, count] : peers) {
      spread.max_shared = std::max(spread.max_shared, count);
      spread.min_shared = std::min(spread.min_shared, count);
    }
  }
  if (spread.min_peers == UINT32_MAX) spread.min_peers = 0;
  if (spread.min_shared == UINT32_MAX) spread.min_shared = 0;
  spread.mean_peers = all_nodes.empty() ? 0.0 : static_cast<double>(peer_total) / all_nodes.size();
  return spread;
}

}  // namespace ff::fs
