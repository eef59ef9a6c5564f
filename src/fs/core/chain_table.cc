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

// Sum over node pairs of (chains the pair shares)^2: with the total fixed, the most even spread has the smallest.
int64_t square_sum(const std::vector<std::vector<uint32_t>>& pairs) {
  int64_t sum = 0;
  for (size_t a = 0; a < pairs.size(); ++a) {
    for (size_t b = a + 1; b < pairs.size(); ++b) sum += static_cast<int64_t>(pairs[a][b]) * pairs[a][b];
  }
  return sum;
}

// The smallest square_sum any layout can have: every pair shares floor or ceil of the mean. Reached exactly when
// a (near-)balanced design exists.
int64_t square_sum_bound(size_t nodes, size_t chains, size_t r) {
  const int64_t pair_count = static_cast<int64_t>(nodes * (nodes - 1) / 2);
  const int64_t incidences = static_cast<int64_t>(chains * r * (r - 1) / 2);
  const int64_t q = incidences / pair_count, rest = incidences % pair_count;
  return pair_count * q * q + rest * (2 * q + 1);
}

class LayoutSearch {
 public:
  LayoutSearch(std::vector<std::vector<size_t>>& groups, std::vector<std::vector<uint32_t>>& pairs)
      : groups_(groups), pairs_(pairs) {}

  // Swapping node groups_[c1][i] with groups_[c2][j]: false when it would put a node twice in a chain.
  bool valid(size_t c1, size_t i, size_t c2, size_t j) const {
    const size_t x = groups_[c1][i], y = groups_[c2][j];
    return x != y && !contains(groups_[c1], y) && !contains(groups_[c2], x);
  }

  // Change of square_sum if the (valid) swap were made.
  int64_t delta(size_t c1, size_t i, size_t c2, size_t j) const {
    int64_t sum = 0;
    for_each_change(c1, i, c2, j, [&](size_t a, size_t b, int d) {
      const int64_t now = pairs_[a][b];
      sum += (now + d) * (now + d) - now * now;
    });
    return sum;
  }

  void swap(size_t c1, size_t i, size_t c2, size_t j) {
    for_each_change(c1, i, c2, j, [&](size_t a, size_t b, int d) {
      pairs_[a][b] += d;
      pairs_[b][a] += d;
    });
    std::swap(groups_[c1][i], groups_[c2][j]);
  }

  // First-improvement passes in a fixed order (deterministic) until a pass finds nothing or `budget` (move
  // evaluations) is spent. Returns whether it stopped in a local minimum.
  bool descend(int64_t& budget) {
    const size_t chains = groups_.size(), r = groups_[0].size();
    bool improved = true;
    while (improved && budget > 0) {
      improved = false;
      for (size_t c1 = 0; c1 < chains && budget > 0; ++c1) {
        for (size_t c2 = c1 + 1; c2 < chains && budget > 0; ++c2) {
          for (size_t i = 0; i < r; ++i) {
            for (size_t j = 0; j < r; ++j) {
              --budget;
              if (!valid(c1, i, c2, j) || delta(c1, i, c2, j) >= 0) continue;
              swap(c1, i, c2, j);
              improved = true;
            }
          }
        }
      }
    }
    return !improved;
  }

 private:
  static bool contains(const std::vector<size_t>& group, size_t node) {
    return std::find(group.begin(), group.end(), node) != group.end();
  }

  // x leaves c1 for c2, y leaves c2 for c1: pair (x, u) of every other u in c1 goes down and (y, u) up, and the same
  // for c2 the other way. A node in both chains sees no change (its pair with x and with y each goes down once and
  // up once), so it is skipped. The pairs touched are distinct, so their square deltas add up.
  template <typename Change>
  void for_each_change(size_t c1, size_t i, size_t c2, size_t j, Change&& change) const {
    const size_t x = groups_[c1][i], y = groups_[c2][j];
    for (size_t u : groups_[c1]) {
      if (u == x || contains(groups_[c2], u)) continue;
      change(x, u, -1), change(y, u, +1);
    }
    for (size_t v : groups_[c2]) {
      if (v == y || contains(groups_[c1], v)) continue;
      change(y, v, -1), change(x, v, +1);
    }
  }

  std::vector<std::vector<size_t>>& groups_;
  std::vector<std::vector<uint32_t>>& pairs_;
};

// After the greedy pass: a local search (swap two nodes between two chains when that lowers square_sum, keeping
// every chain on distinct nodes and every node's number of chains), then, while the result is above the bound
// and the budget lasts, an iterated local search: a few random valid swaps from the best layout so far (a fixed
// seed, so the result is deterministic), a descent, kept when better. The first descent gets most of the budget
// (large tables keep the greedy result for pairs not reached); the restarts at most kRestartBudget evaluations.
void refine(std::vector<std::vector<size_t>>& groups, std::vector<std::vector<uint32_t>>& pairs, size_t nodes) {
  const size_t chains = groups.size();
  if (chains < 2) return;
  const size_t r = groups[0].size();
  constexpr int64_t kDescentBudget = 40'000'000;  // move evaluations (x ~2R pair updates each)
  constexpr int64_t kRestartBudget = 4'000'000;
  LayoutSearch search(groups, pairs);
  int64_t budget = kDescentBudget;
  if (!search.descend(budget)) return;
  const int64_t bound = square_sum_bound(nodes, chains, r);
  int64_t best_score = square_sum(pairs);
  std::vector<std::vector<size_t>> best_groups = groups;
  std::vector<std::vector<uint32_t>> best_pairs = pairs;
  budget = kRestartBudget;
  uint64_t state = 0x9E3779B97F4A7C15ull;  // splitmix64: the same sequence everywhere
  auto next = [&state](uint64_t below) {
    state += 0x9E3779B97F4A7C15ull;
    uint64_t z = state;
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return (z ^ (z >> 31)) % below;
  };
  while (best_score > bound && budget > 0) {
    const uint64_t kicks = 1 + next(3);
    for (uint64_t k = 0; k < kicks; ++k) {
      for (int tries = 0; tries < 16; ++tries) {
        --budget;
        const size_t c1 = next(chains), c2 = next(chains), i = next(r), j = next(r);
        if (c1 == c2 || !search.valid(c1, i, c2, j)) continue;
        search.swap(c1, i, c2, j);
        break;
      }
    }
    search.descend(budget);
    const int64_t score = square_sum(pairs);
    if (score < best_score) {
      best_score = score;
      best_groups = groups;
      best_pairs = pairs;
    } else {
      groups = best_groups;
      pairs = best_pairs;
    }
  }
  groups = std::move(best_groups);
  pairs = std::move(best_pairs);
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
  refine(groups, pairs, n);
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
