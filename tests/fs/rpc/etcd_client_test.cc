#include "ff/fs/rpc/etcd_client.h"

#include <gtest/gtest.h>

#include "test_util.h"

namespace ff::fs::rpc {
namespace {

class EtcdClientTest : public ::testing::Test {
 protected:
  void SetUp() override {
    if (!testing::have_etcd()) GTEST_SKIP() << "etcd is not installed";
    auto server = testing::EtcdServer::start();
    ASSERT_TRUE(server.is_ok()) << server.status();
    server_ = std::move(*server);
    auto client = EtcdClient::connect(server_->endpoint(), 2000);
    ASSERT_TRUE(client.is_ok()) << client.status();
    client_ = std::move(*client);
  }
  std::unique_ptr<testing::EtcdServer> server_;
  std::unique_ptr<EtcdClient> client_;
};

TEST_F(EtcdClientTest, PutGetRangeDelete) {
  ASSERT_TRUE(client_->put("/ff/a", "1").is_ok());
  ASSERT_TRUE(client_->put("/ff/b", std::string("\0\xff", 2)).is_ok());
  ASSERT_TRUE(client_->put("/fg", "other").is_ok());
  auto a = client_->get("/ff/a");
  ASSERT_TRUE(a.is_ok()) << a.status();
  ASSERT_TRUE(a->has_value());
  EXPECT_EQ((*a)->value, "1");
  auto range = client_->range("/ff/", "");
  ASSERT_TRUE(range.is_ok()) << range.status();
  ASSERT_EQ(range->size(), 2u);
  EXPECT_EQ((*range)[1].value, std::string("\0\xff", 2));
  auto deleted = client_->delete_range("/ff/", EtcdClient::prefix_end("/ff/"));
  ASSERT_TRUE(deleted.is_ok());
  EXPECT_EQ(*deleted, 2);
  auto gone = client_->get("/ff/a");
  ASSERT_TRUE(gone.is_ok());
  EXPECT_FALSE(gone->has_value());
}

TEST_F(EtcdClientTest, CreateIfAbsentAndGuardedWrites) {
  auto lease = client_->lease_grant(5);
  ASSERT_TRUE(lease.is_ok()) << lease.status();
  auto first = client_->create_if_absent("/leader", "mgmtd-1", *lease);
  ASSERT_TRUE(first.is_ok()) << first.status();
  EXPECT_TRUE(*first);
  auto second = client_->create_if_absent("/leader", "mgmtd-2", 0);
  ASSERT_TRUE(second.is_ok());
  EXPECT_FALSE(*second);
  auto allowed = client_->write_if_equal("/leader", "mgmtd-1", {{"/map/x", "v", false}});
  ASSERT_TRUE(allowed.is_ok());
  EXPECT_TRUE(*allowed);
  auto refused = client_->write_if_equal("/leader", "mgmtd-2", {{"/map/x", "w", false}});
  ASSERT_TRUE(refused.is_ok());
  EXPECT_FALSE(*refused);
  EXPECT_EQ((*client_->get("/map/x"))->value, "v");
  // Revoking the lease deletes the leader key.
  auto ttl = client_->lease_keep_alive(*lease);
  ASSERT_TRUE(ttl.is_ok()) << ttl.status();
  EXPECT_GT(*ttl, 0);
  ASSERT_TRUE(client_->lease_revoke(*lease).is_ok());
  EXPECT_FALSE((*client_->get("/leader")).has_value());
  EXPECT_EQ(client_->lease_keep_alive(*lease).status().code(), StatusCode::kNotFound);
}

TEST(EtcdClientErrorsTest, UnreachableEndpointFailsWithinTheDeadline) {
  auto client = EtcdClient::connect("127.0.0.1:" + std::to_string(testing::free_port()), 300);
  ASSERT_TRUE(client.is_ok());
  auto start = std::chrono::steady_clock::now();
  auto result = (*client)->get("/x");
  EXPECT_FALSE(result.is_ok());
  EXPECT_LT(std::chrono::steady_clock::now() - start, std::chrono::seconds(3));
  EXPECT_FALSE(EtcdClient::connect("no-port", 100).is_ok());
}

// A client made before etcd listens (its first calls refused) must reach etcd soon after it starts:
// it replaces its channel after `unavailable` instead of waiting out gRPC's reconnect backoff.
TEST(EtcdClientErrorsTest, ClientStartedBeforeEtcdConnectsOnceItListens) {
  if (!testing::have_etcd()) GTEST_SKIP() << "etcd is not installed";
  uint16_t port = testing::free_port();
  auto client = EtcdClient::connect("127.0.0.1:" + std::to_string(port), 1000);
  ASSERT_TRUE(client.is_ok());
  for (int i = 0; i < 3; ++i) EXPECT_EQ((*client)->get("/x").status().code(), StatusCode::kUnavailable);
  auto server = testing::EtcdServer::start(port);
  ASSERT_TRUE(server.is_ok()) << server.status();
  auto start = std::chrono::steady_clock::now();
  Status ready = (*client)->wait_ready(10'000);
  ASSERT_TRUE(ready.is_ok()) << ready;
  EXPECT_LT(std::chrono::steady_clock::now() - start, std::chrono::seconds(5));
  ASSERT_TRUE((*client)->put("/after", "1").is_ok());
}

// With several members, a member that does not answer moves the client to the next one.
TEST(EtcdClientErrorsTest, DeadMemberFailsOverToTheNextEndpoint) {
  if (!testing::have_etcd()) GTEST_SKIP() << "etcd is not installed";
  auto server = testing::EtcdServer::start();
  ASSERT_TRUE(server.is_ok()) << server.status();
  const std::string dead = "127.0.0.1:" + std::to_string(testing::free_port());
  auto client = EtcdClient::connect(std::vector<std::string>{dead, (*server)->endpoint()}, 1000);
  ASSERT_TRUE(client.is_ok()) << client.status();
  EXPECT_EQ((*client)->endpoint(), dead + "," + (*server)->endpoint());
  EXPECT_EQ((*client)->get("/x").status().code(), StatusCode::kUnavailable);  // the dead one answers first
  Status ready = (*client)->wait_ready(5'000);
  ASSERT_TRUE(ready.is_ok()) << ready;
  ASSERT_TRUE((*client)->put("/after", "1").is_ok());
  EXPECT_FALSE(EtcdClient::connect(std::vector<std::string>{}, 100).is_ok());
  EXPECT_FALSE(EtcdClient::connect(std::vector<std::string>{(*server)->endpoint(), "no-port"}, 100).is_ok());
}

}  // namespace
}  // namespace ff::fs::rpc
