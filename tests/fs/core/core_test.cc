// Chain-table generation, MemChunkStore and cluster-map encoding.
#include <fmt/format.h>
#include <gtest/gtest.h>

#include "ff/fs/chain_table.h"
#include "ff/fs/crc32c.h"
#include "ff/fs/map_store.h"
#include "ff/fs/messages.h"
#include "ff/fs/mem_chunk_store.h"
#include "ff/fs/mgmtd_addresses.h"

#include <algorithm>
#include <cstring>
#include <set>
#include <string>
#include <tuple>

namespace ff::fs {
namespace {

TEST(ChainTable, BalancedSpreadsRecoveryOverAllPeers) {
  std::vector<NodeId> nodes = {1, 2, 3, 4, 5, 6};
  // The 3FS design-note example: 6 nodes x 5 targets at replication 3 = 10 chains.
  Result<ChainLayout> balanced = generate_chain_layout(nodes, 5, 3);
  Result<ChainLayout> naive = generate_chain_layout(nodes, 5, 3, ChainLayoutMethod::kRoundRobin);
  ASSERT_TRUE(balanced.is_ok()) << balanced.status().to_string();
  ASSERT_TRUE(naive.is_ok()) << naive.status().to_string();
  ASSERT_EQ(balanced->chains.size(), 10u);
  RecoverySpread good = recovery_spread(*balanced);
  RecoverySpread bad = recovery_spread(*naive);
  // Every node shares chains with all 5 peers, 2 each (5 chains x 2 peers / 5 peers).
  // A 2-(6,3,2) design exists, and the layout finds it: every pair of nodes shares exactly 2 chains.
  EXPECT_EQ(good.min_peers, 5u);
  EXPECT_EQ(good.max_shared, 2u);
  EXPECT_EQ(good.min_shared, 2u);
  // Round-robin pairs each node with only 2 peers, 5 chains each.
  EXPECT_EQ(bad.min_peers, 2u);
  EXPECT_EQ(bad.max_shared, 5u);
  // Each chain's replicas are on distinct nodes; every target is used once.
  std::set<TargetId> seen;
  for (const auto& chain : balanced->chains) {
    std::set<NodeId> chain_nodes;
    for (TargetId target : chain) {
      EXPECT_TRUE(seen.insert(target).second);
      chain_nodes.insert(static_cast<NodeId>(target / kTargetsPerNodeLimit));
    }
    EXPECT_EQ(chain_nodes.size(), 3u);
  }
  EXPECT_EQ(seen.size(), 30u);
}

TEST(ChainTable, LargerLayoutsStayBalancedAndDeterministic) {
  std::vector<NodeId> nodes;
  for (NodeId i = 1; i <= 12; ++i) nodes.push_back(i);
  Result<ChainLayout> a = generate_chain_layout(nodes, 11, 3);
  Result<ChainLayout> b = generate_chain_layout(nodes, 11, 3);
  ASSERT_TRUE(a.is_ok()) << a.status().to_string();
  EXPECT_EQ(a->chains, b->chains);
  RecoverySpread spread = recovery_spread(*a);
  EXPECT_EQ(spread.min_peers, 11u);  // 11 chains x 2 peers = 22 slots over 11 peers: 2 each
  EXPECT_EQ(spread.max_shared, 2u);
  EXPECT_EQ(spread.min_shared, 2u);
  RecoverySpread naive = recovery_spread(*generate_chain_layout(nodes, 11, 3, ChainLayoutMethod::kRoundRobin));
  EXPECT_GT(naive.max_shared, spread.max_shared);
}

// Every valid shape up to 12 nodes x 8 targets, replication 2..4: a valid layout (each target once,
// replicas on distinct nodes, each node in targets_per_node chains) within one chain of the ideal pair
// count (ceil(T(R-1)/(N-1))) and of the most peers possible, and exactly balanced in every shape but two.
// 8 x 2 at R 4 has no exact layout: 4 chains of 4 with each node in 2 make 8 node-sharing chain pairs over
// 6 chain pairs, so two chains share two nodes, which then share 2 chains (ideal 1). 8 x 3 at R 4 neither: exact
// needs 8 node pairs in 2 chains and 20 in 1, so the 15 chain pairs' common nodes x sum to 24 with sum x(x-1)/2 = 8,
// and 24 spread over 15 gives at least 9.
TEST(ChainTable, EveryShapeIsValidAndNearTheIdealSpread) {
  int shapes = 0, exact = 0;
  std::set<std::string> not_exact;
  for (uint32_t n = 2; n <= 12; ++n) {
    for (uint32_t t = 1; t <= 8; ++t) {
      for (uint32_t r = 2; r <= 4; ++r) {
        if (r > n || (n * t) % r != 0) continue;
        std::vector<NodeId> nodes;
        for (NodeId i = 1; i <= n; ++i) nodes.push_back(i);
        Result<ChainLayout> layout = generate_chain_layout(nodes, t, r);
        ASSERT_TRUE(layout.is_ok()) << n << "x" << t << " r" << r << ": " << layout.status().to_string();
        ASSERT_EQ(layout->chains.size(), n * t / r);
        std::set<TargetId> seen;
        for (const auto& chain : layout->chains) {
          std::set<NodeId> chain_nodes;
          for (TargetId target : chain) {
            EXPECT_TRUE(seen.insert(target).second) << "target " << target << " twice";
            chain_nodes.insert(static_cast<NodeId>(target / kTargetsPerNodeLimit));
          }
          EXPECT_EQ(chain_nodes.size(), r) << n << "x" << t << " r" << r;
        }
        EXPECT_EQ(seen.size(), n * t);
        RecoverySpread spread = recovery_spread(*layout);
        const uint32_t ideal_max = (t * (r - 1) + n - 2) / (n - 1);
        const uint32_t most_peers = std::min(n - 1, t * (r - 1));
        EXPECT_LE(spread.max_shared, ideal_max + 1) << n << "x" << t << " r" << r;
        EXPECT_GE(spread.min_peers + 1, most_peers) << n << "x" << t << " r" << r;
        ++shapes;
        if (spread.max_shared == ideal_max && spread.min_peers == most_peers) {
          ++exact;
        } else {
          not_exact.insert(fmt::format("{}x{} r{}", n, t, r));
        }
      }
    }
  }
  EXPECT_EQ(not_exact, (std::set<std::string>{"8x2 r4", "8x3 r4"})) << exact << " of " << shapes << " exact";
}

// Where a Steiner triple system exists (13 and 15 nodes) or a 2-design with every pair in 2 chains (24 nodes x 23
// targets at R 3), the layout is one: every pair of nodes shares the same number of chains.
TEST(ChainTable, FindsTheBalancedDesignsThatExist) {
  for (auto [n, t, shared] :
       std::vector<std::tuple<uint32_t, uint32_t, uint32_t>>{{13, 6, 1}, {15, 7, 1}, {24, 23, 2}}) {
    std::vector<NodeId> nodes;
    for (NodeId i = 1; i <= n; ++i) nodes.push_back(i);
    Result<ChainLayout> layout = generate_chain_layout(nodes, t, 3);
    ASSERT_TRUE(layout.is_ok()) << layout.status().to_string();
    RecoverySpread spread = recovery_spread(*layout);
    EXPECT_EQ(spread.min_peers, n - 1) << n << "x" << t;
    EXPECT_EQ(spread.min_shared, shared) << n << "x" << t;
    EXPECT_EQ(spread.max_shared, shared) << n << "x" << t;
  }
}

TEST(ChainTable, RejectsImpossibleShapes) {
  EXPECT_FALSE(generate_chain_layout({1, 2}, 1, 3).is_ok());
  EXPECT_FALSE(generate_chain_layout({1, 2, 3, 4}, 1, 3).is_ok());  // 4 targets, not a multiple of 3
  EXPECT_FALSE(generate_chain_layout({1, 1, 2}, 1, 3).is_ok());
}

Bytes bytes_of(std::string_view text) {
  Bytes out(text.size());
  std::memcpy(out.data(), text.data(), text.size());
  return out;
}

TEST(MemChunkStore, PendingCommitDirtyAndCorruption) {
  MemChunkStore store(64);
  ChunkId id{7, 1};
  Bytes hello = bytes_of("hello");
  ASSERT_TRUE(store.put_pending({.id = id, .version = 1, .chain_version = 1, .offset = 0, .data = hello}).is_ok());
  EXPECT_EQ(fs_error_of(store.read(id, 0, 64, ReadMode::kStrict).status()), FsError::kChunkNotFound);
  ASSERT_TRUE(store.commit(id, 1).is_ok());
  ASSERT_TRUE(store.commit(id, 1).is_ok());  // idempotent
  Bytes world = bytes_of("world");
  ASSERT_TRUE(store.put_pending({.id = id, .version = 2, .chain_version = 1, .offset = 5, .data = world}).is_ok());
  Result<ChunkRead> strict = store.read(id, 0, 64, ReadMode::kStrict);
  ASSERT_TRUE(strict.is_ok());
  EXPECT_TRUE(strict->dirty);
  EXPECT_TRUE(strict->data.empty());
  Result<ChunkRead> relaxed = store.read(id, 0, 64, ReadMode::kRelaxed);
  ASSERT_TRUE(relaxed.is_ok());
  EXPECT_EQ(relaxed->data, hello);
  EXPECT_EQ(fs_error_of(store.put_pending({.id = id, .version = 4, .chain_version = 1, .offset = 0, .data = world})),
            FsError::kVersionMismatch);
  ASSERT_TRUE(store.commit(id, 2).is_ok());
  Result<ChunkRead> both = store.read(id, 0, 64, ReadMode::kStrict);
  ASSERT_TRUE(both.is_ok());
  EXPECT_EQ(both->data, bytes_of("helloworld"));
  EXPECT_EQ(both->meta.committed_crc32c, crc32c(both->data));
  EXPECT_EQ(fs_error_of(store.put_pending({.id = id, .version = 3, .chain_version = 1, .offset = 60, .data = world})),
            FsError::kOversize);
  ASSERT_TRUE(store.corrupt(id));
  EXPECT_EQ(store.read(id, 0, 64, ReadMode::kStrict).status().code(), StatusCode::kDataLoss);
  ASSERT_TRUE(store.put_full_replacement(id, 2, 1, both->data).is_ok());
  EXPECT_TRUE(store.read(id, 0, 64, ReadMode::kStrict).is_ok());
  Result<uint64_t> removed = store.remove_range({7, 0}, {8, 0});
  ASSERT_TRUE(removed.is_ok());
  EXPECT_EQ(*removed, 1u);
}

TEST(MapStore, EncodingRoundTripsAndRejectsGarbage) {
  ClusterMap map;
  map.routing_version = 9;
  map.nodes[1] = NodeInfo{.id = 1, .address = "127.0.0.1:9001", .status = NodeStatus::kAlive};
  map.targets[1001] = TargetInfo{.id = 1001, .node = 1, .chain = 1, .public_state = PublicTargetState::kSyncing,
                                 .local_state = LocalTargetState::kOnline};
  map.chains[1] = ChainInfo{.id = 1, .version = 4, .targets = {{1001, PublicTargetState::kSyncing}}};
  map.chain_tables[1] = ChainTable{.id = 1, .replication = 1, .chains = {1}};
  std::string bytes = encode_cluster_map(map);
  Result<ClusterMap> decoded = decode_cluster_map(bytes);
  ASSERT_TRUE(decoded.is_ok()) << decoded.status().to_string();
  EXPECT_EQ(*decoded, map);
  EXPECT_EQ(fs_error_of(decode_cluster_map(bytes.substr(0, bytes.size() - 3)).status()), FsError::kMalformed);
  EXPECT_FALSE(decode_cluster_map("nonsense").is_ok());
}


TEST(MgmtdAddresses, ParsesListsAndNamesAnEmptyElement) {
  auto one = MgmtdAddresses::parse("127.0.0.1:9000");
  ASSERT_TRUE(one.is_ok()) << one.status().to_string();
  EXPECT_EQ(one->all(), std::vector<std::string>{"127.0.0.1:9000"});
  auto two = MgmtdAddresses::parse("a:1, b:2");
  ASSERT_TRUE(two.is_ok()) << two.status().to_string();
  EXPECT_EQ(two->all(), (std::vector<std::string>{"a:1", "b:2"}));
  EXPECT_EQ(two->names(), "a:1,b:2");
  for (const char* bad : {"", "a:1,", ",a:1", "a:1,,b:2"}) {
    auto parsed = MgmtdAddresses::parse(bad);
    ASSERT_FALSE(parsed.is_ok()) << bad;
    EXPECT_EQ(parsed.status().code(), StatusCode::kInvalidArgument);
    EXPECT_NE(parsed.status().message().find("is empty"), std::string::npos) << parsed.status().to_string();
  }
}

TEST(MgmtdAddresses, MovesOnOnlyWhenTheCurrentOneIsUnreachableOrNotServing) {
  MgmtdAddresses list = MgmtdAddresses::unchecked("primary:1,standby:2");
  EXPECT_EQ(list.current(), "primary:1");
  // Errors that say nothing about reachability keep the address.
  EXPECT_FALSE(list.failed("primary:1", invalid_argument("bad request")));
  EXPECT_FALSE(list.failed("primary:1", Status::ok()));
  EXPECT_EQ(list.current(), "primary:1");
  EXPECT_TRUE(list.failed("primary:1", unavailable("connection refused")));
  EXPECT_EQ(list.current(), "standby:2");
  // A late failure of the address already left does not move the list again.
  EXPECT_FALSE(list.failed("primary:1", deadline_exceeded("late")));
  EXPECT_EQ(list.current(), "standby:2");
  EXPECT_TRUE(list.failed("standby:2", deadline_exceeded("silent")));
  EXPECT_EQ(list.current(), "primary:1");  // wraps around
  EXPECT_TRUE(list.failed("primary:1", fs_error(FsError::kNotServing, "standby")));
  EXPECT_EQ(list.current(), "standby:2");
  // One address never moves.
  MgmtdAddresses single = MgmtdAddresses::unchecked("only:1");
  EXPECT_FALSE(single.failed("only:1", unavailable("down")));
  EXPECT_EQ(single.current(), "only:1");
}

}  // namespace
}  // namespace ff::fs
