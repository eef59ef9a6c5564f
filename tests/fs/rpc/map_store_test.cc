#include "ff/fs/rpc/map_stores.h"

#include <gtest/gtest.h>

#include "test_util.h"

namespace ff::fs::rpc {
namespace {

ClusterMap sample_map() {
  ClusterMap map;
  map.routing_version = 9;
  map.nodes[1] = NodeInfo{1, "127.0.0.1:7001", NodeStatus::kAlive};
  map.targets[1001] = TargetInfo{1001, 1, 5, PublicTargetState::kServing, LocalTargetState::kUpToDate};
  map.chains[5] = ChainInfo{5, 3, {{1001, PublicTargetState::kServing}}};
  map.chain_tables[1] = ChainTable{1, 1, {5}};
  return map;
}

TEST(RocksDbMapStoreTest, SurvivesReopen) {
  testing::TempDir dir;
  {
    auto store = open_rocksdb_map_store(dir.path());
    ASSERT_TRUE(store.is_ok()) << store.status();
    auto empty = (*store)->load();
    ASSERT_TRUE(empty.is_ok());
    EXPECT_FALSE(empty->has_value());
    ASSERT_TRUE((*store)->save(sample_map()).is_ok());
  }
  auto store = open_rocksdb_map_store(dir.path());
  ASSERT_TRUE(store.is_ok());
  auto loaded = (*store)->load();
  ASSERT_TRUE(loaded.is_ok()) << loaded.status();
  ASSERT_TRUE(loaded->has_value());
  EXPECT_EQ(**loaded, sample_map());
}

TEST(EtcdMapStoreTest, SavesLoadsAndRefusesWithoutLeadership) {
  if (!testing::have_etcd()) GTEST_SKIP() << "etcd is not installed";
  auto server = testing::EtcdServer::start();
  ASSERT_TRUE(server.is_ok()) << server.status();
  auto client = EtcdClient::connect((*server)->endpoint(), 2000);
  ASSERT_TRUE(client.is_ok());
  std::shared_ptr<EtcdClient> etcd = std::move(*client);
  auto lease = etcd->lease_grant(5);
  ASSERT_TRUE(lease.is_ok());
  ASSERT_TRUE(*etcd->create_if_absent("/ff/fs/mgmtd_leader", "a", *lease));
  auto leader = open_etcd_map_store(etcd, "/ff/fs/", "/ff/fs/mgmtd_leader", "a");
  auto deposed = open_etcd_map_store(etcd, "/ff/fs/", "/ff/fs/mgmtd_leader", "b");
  ASSERT_TRUE(leader.is_ok() && deposed.is_ok());
  ASSERT_TRUE((*leader)->save(sample_map()).is_ok());
  ClusterMap other = sample_map();
  other.routing_version = 10;
  Status refused = (*deposed)->save(other);
  EXPECT_EQ(refused.code(), StatusCode::kFailedPrecondition) << refused;
  auto loaded = (*deposed)->load();
  ASSERT_TRUE(loaded.is_ok() && loaded->has_value());
  EXPECT_EQ(**loaded, sample_map());
}

}  // namespace
}  // namespace ff::fs::rpc
