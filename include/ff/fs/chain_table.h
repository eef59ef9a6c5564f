// Chain-table generation: N storage nodes x T targets each, chains of R replicas, such that every
// target appears in exactly one chain (per chain table) and the chains a target shares with each of its
// peers are spread evenly, so a failed target's read traffic and its recovery reads are spread over many
// peers instead of two (3FS design notes: "balanced traffic during recovery").
//
// Thread-safety: pure functions.
#pragma once

#include <cstdint>
#include <map>
#include <vector>

#include "ff/common/result.h"
#include "ff/fs/types.h"

namespace ff::fs {

struct ChainLayout {
  // chains[c] lists the R targets of chain c, head first; targets are make_target_id(node, local index).
  std::vector<std::vector<TargetId>> chains;
};

enum class ChainLayoutMethod : uint8_t {
  kBalanced = 0,    // balanced incomplete block design approximation: greedy, then local search (default)
  kRoundRobin = 1,  // naive: chain i takes the i-th target of R consecutive nodes; for comparison
};

// Builds a layout for `nodes` (distinct, non-zero ids) with `targets_per_node` targets each at
// replication `replication`. Requires replication <= nodes.size() and nodes.size() * targets_per_node
// divisible by replication (invalid_argument naming the numbers otherwise). Replicas of one chain are
// always on distinct nodes. Deterministic: same input, same layout.
Result<ChainLayout> generate_chain_layout(const std::vector<NodeId>& nodes, uint32_t targets_per_node,
                                          uint32_t replication,
                                          ChainLayoutMethod method = ChainLayoutMethod::kBalanced);

// Recovery spread of a layout: for each target, how many chains it shares with each other *node*.
// When a target fails, its chains' reads (and the recovery reads when it returns) go to those nodes.
// Each target is in one chain, so the balance that matters is per node (a node's targets fail and
// return together): node_shared counts, for each node, the chains it shares with each other node.
struct RecoverySpread {
  // per target: peer node -> number of shared chains
  std::map<TargetId, std::map<NodeId, uint32_t>> shared;
  // per node: peer node -> number of chains the two share (max_shared/min_peers/mean_peers are over
  // this per-node view)
  std::map<NodeId, std::map<NodeId, uint32_t>> node_shared;
  uint32_t max_shared = 0;       // over all (node, peer node) pairs
  uint32_t min_shared = 0;       // over all (node, peer node) pairs that share at least one chain
  uint32_t min_peers = 0;        // the fewest distinct peer nodes of any node
  double mean_peers = 0.0;
};
RecoverySpread recovery_spread(const ChainLayout& layout);

}  // namespace ff::fs
