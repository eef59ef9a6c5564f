#include "ff/fs/rpc/grpc_transport.h"

#include <gtest/gtest.h>

#include <cstdlib>
#include <future>
#include <mutex>
#include <set>
#include <stdexcept>
#include <vector>

#include "ff/fs/mem_chunk_store.h"
#include "ff/fs/mgmtd.h"
#include "ff/fs/rpc/map_stores.h"
#include "ff/fs/storage_service.h"
#include "test_util.h"

namespace ff::fs::rpc {
namespace {

using testing::kSecond;
using testing::make_bytes;

TEST(GrpcTransportTest, LocalReadFieldsRoundTrip) {
  ThreadExecutor server_executor("server");
  ThreadExecutor client_executor("client");
  const LocalExtent extent{.path = "/data/t1/blocks.65536",
                           .device = 2049,
                           .inode = 77,
                           .file_offset = 131072,
                           .position = 4096,
                           .verify_bytes = 10000,
                           .skip = 100,
                           .count = 9000,
                           .segment_bytes = 4096,
                           .segment_crcs = {1, 0xffffffffu, 3}};
  auto server =
      GrpcServer::start("127.0.0.1:0", server_executor, [&](const ServerContext&, Request request, Reply reply) {
        auto* read = std::get_if<ReadReq>(&request);
        ASSERT_NE(read, nullptr);
        ReadRsp rsp;
        rsp.meta.id = read->chunk;
        if (read->local_host == "host-a") rsp.local = extent;
        reply(Response{std::move(rsp)});
      });
  ASSERT_TRUE(server.is_ok()) << server.status();
  GrpcRpcClient client(client_executor);
  ReadReq read{1, 2, 1001, ChunkId{5, 6}, 0, 100, ReadMode::kStrict};
  read.local_host = "host-a";
  auto local = response_as<ReadRsp>(call_blocking(client, (*server)->address(), Request{read}, 5 * kSecond));
  ASSERT_TRUE(local.is_ok()) << local.status();
  ASSERT_TRUE(local->local.has_value());
  const LocalExtent& got = *local->local;
  EXPECT_EQ(got.path, extent.path);
  EXPECT_EQ(got.device, extent.device);
  EXPECT_EQ(got.inode, extent.inode);
  EXPECT_EQ(got.file_offset, extent.file_offset);
  EXPECT_EQ(got.position, extent.position);
  EXPECT_EQ(got.verify_bytes, extent.verify_bytes);
  EXPECT_EQ(got.skip, extent.skip);
  EXPECT_EQ(got.count, extent.count);
  EXPECT_EQ(got.segment_bytes, extent.segment_bytes);
  EXPECT_EQ(got.segment_crcs, extent.segment_crcs);
  read.local_host = "host-b";
  auto plain = response_as<ReadRsp>(call_blocking(client, (*server)->address(), Request{read}, 5 * kSecond));
  ASSERT_TRUE(plain.is_ok()) << plain.status();
  EXPECT_FALSE(plain->local.has_value());
  EXPECT_EQ(plain->meta.id, (ChunkId{5, 6}));
}

// Calls to one address share channels_per_peer connections: one after the other they stay on the first
// (a lone caller keeps its warm connection), several in flight at once each take the least busy one.
TEST(GrpcTransportTest, CallsInFlightSpreadOverThePeersChannels) {
  ThreadExecutor server_executor("server");
  std::mutex mutex;  // guards peers, held
  std::vector<std::string> peers;
  std::vector<Reply> held;
  std::atomic<bool> hold{false};
  auto server =
      GrpcServer::start("127.0.0.1:0", server_executor, [&](const ServerContext& context, Request, Reply reply) {
        std::lock_guard lock(mutex);
        peers.push_back(context.peer);
        if (hold.load()) {
          held.push_back(std::move(reply));
          if (held.size() < 4) return;
          for (auto& waiting : held) waiting(Response{GetRoutingRsp{}});
          held.clear();
          return;
        }
        reply(Response{GetRoutingRsp{}});
      });
  ASSERT_TRUE(server.is_ok()) << server.status();
  ThreadExecutor client_executor("client");
  GrpcRpcClient client(client_executor, GrpcClientOptions{.channels_per_peer = 4});
  for (int i = 0; i < 5; ++i) {
    ASSERT_TRUE(call_blocking(client, (*server)->address(), Request{GetRoutingReq{}}, 5 * kSecond).is_ok());
  }
  auto distinct = [&] {
    std::lock_guard lock(mutex);
    return std::set<std::string>(peers.begin(), peers.end());
  };
  EXPECT_EQ(distinct().size(), 1u) << "calls one after the other left the first connection";
  {
    std::lock_guard lock(mutex);
    peers.clear();
  }
  // Four calls the server answers only once all four have arrived: each is on its own connection.
  hold = true;
  std::vector<std::future<Result<Response>>> calls;
  for (int i = 0; i < 4; ++i) {
    auto promise = std::make_shared<std::promise<Result<Response>>>();
    calls.push_back(promise->get_future());
    client.call((*server)->address(), Request{GetRoutingReq{}}, 5 * kSecond,
                [promise](Result<Response> result) { promise->set_value(std::move(result)); });
  }
  for (auto& call : calls) {
    ASSERT_EQ(call.wait_for(std::chrono::seconds(10)), std::future_status::ready);
    EXPECT_TRUE(call.get().is_ok());
  }
  EXPECT_EQ(distinct().size(), 4u);
}

TEST(GrpcTransportTest, BadChannelCountFromTheEnvironmentIsRefused) {
  ThreadExecutor executor("client");
  for (const char* bad : {"0", "65", "four", "4x"}) {
    ::setenv("FF_RPC_CHANNELS", bad, 1);
    try {
      GrpcRpcClient client(executor);
      ADD_FAILURE() << "FF_RPC_CHANNELS=" << bad << " was accepted";
    } catch (const std::invalid_argument& error) {
      EXPECT_NE(std::string(error.what()).find(std::string("FF_RPC_CHANNELS=") + bad), std::string::npos)
          << error.what();
      EXPECT_NE(std::string(error.what()).find("from 1 to 64"), std::string::npos) << error.what();
    }
  }
  ::setenv("FF_RPC_CHANNELS", "2", 1);
  EXPECT_NO_THROW(GrpcRpcClient client(executor));
  ::unsetenv("FF_RPC_CHANNELS");
}

// A whole cluster in one process over real gRPC on loopback: mgmtd + 3 storage services (MemChunkStore).
// A write retried with the same request id is applied once.
TEST(GrpcTransportTest, RetriedWriteIsAppliedOnce) {
  testing::TempDir dir;
  auto store = open_rocksdb_map_store(dir.path() + "/map");
  ASSERT_TRUE(store.is_ok()) << store.status();
  ThreadExecutor mgmtd_executor("mgmtd", 1);
  MgmtdConfig mgmtd_config;
  mgmtd_config.heartbeat_timeout_ns = 4 * kSecond;
  mgmtd_config.scan_interval_ns = 100'000'000;
  mgmtd_config.grace_after_start = false;
  Mgmtd mgmtd(mgmtd_config, mgmtd_executor, **store);
  Status started;
  ASSERT_TRUE(mgmtd_executor.run_sync([&] { started = mgmtd.start(); }, 10000).is_ok());
  ASSERT_TRUE(started.is_ok()) << started;
  auto mgmtd_server = GrpcServer::start("127.0.0.1:0", mgmtd_executor, [&](const ServerContext& c, Request r, Reply reply) {
    mgmtd.handle(c, std::move(r), std::move(reply));
  });
  ASSERT_TRUE(mgmtd_server.is_ok());

  struct Node {
    std::unique_ptr<ThreadExecutor> executor;
    std::unique_ptr<GrpcRpcClient> rpc;
    std::unique_ptr<StorageService> service;
    std::unique_ptr<GrpcServer> server;
    std::map<TargetId, std::shared_ptr<MemChunkStore>> stores;
  };
  std::vector<Node> nodes(3);
  for (uint32_t i = 0; i < 3; ++i) {
    Node& node = nodes[i];
    node.executor = std::make_unique<ThreadExecutor>("storage", 2);
    node.rpc = std::make_unique<GrpcRpcClient>(*node.executor);
    uint16_t port = testing::free_port();
    StorageConfig config;
    config.node = i + 1;
    config.address = "127.0.0.1:" + std::to_string(port);
    config.mgmtd_address = (*mgmtd_server)->address();
    config.heartbeat_interval_ns = 200'000'000;
    config.heartbeat_timeout_ns = 4 * kSecond;
    node.service = std::make_unique<StorageService>(config, *node.executor, *node.rpc, [&node](TargetId target) {
      auto store = std::make_shared<MemChunkStore>();
      node.stores[target] = store;
      return Result<std::shared_ptr<ChunkStore>>(std::shared_ptr<ChunkStore>(store));
    });
    // As ff-storage: plain reads take the fast lane (no executor hop, reply from the worker).
    auto server = GrpcServer::start(
        config.address, *node.executor,
        [&node](const ServerContext& c, Request r, Reply reply) { node.service->handle(c, std::move(r), std::move(reply)); },
        nullptr, 256 << 20,
        [&node](const ServerContext& c, Request& r, Reply& reply) { return node.service->try_handle_read(c, r, reply); });
    ASSERT_TRUE(server.is_ok()) << server.status();
    node.server = std::move(*server);
    Status s;
    ASSERT_TRUE(node.executor->run_sync([&] { s = node.service->start(); }, 10000).is_ok());
    ASSERT_TRUE(s.is_ok()) << s;
  }
  ThreadExecutor client_executor("client");
  GrpcRpcClient client(client_executor);
  const std::string mgmtd_address = (*mgmtd_server)->address();
  // Wait for the 3 registrations, then make one chain of 3.
  CreateChainTableReq create{1, 3, 1, {1, 2, 3}};
  Result<CreateChainTableRsp> created = internal_error("not tried");
  for (int attempt = 0; attempt < 100; ++attempt) {
    created = response_as<CreateChainTableRsp>(call_blocking(client, mgmtd_address, Request{create}, 5 * kSecond));
    if (created.is_ok()) break;
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
  }
  ASSERT_TRUE(created.is_ok()) << created.status();
  ASSERT_EQ(created->chains.size(), 1u);
  ChainId chain_id = created->chains[0];
  // Wait until the chain serves on all three (its version moves while the targets come up), then
  // write through its head; retry the first send with fresh routing until the head accepts it.
  std::optional<ChainInfo> chain;
  std::string head_address;
  WriteReq write{ClientRequestId{42, 0, 1}, chain_id, 0, ChunkId{9, 0}, 0, make_bytes(8192, 1)};
  Result<WriteRsp> first = internal_error("not tried");
  for (int attempt = 0; attempt < 150; ++attempt) {
    auto routing = response_as<GetRoutingRsp>(call_blocking(client, mgmtd_address, Request{GetRoutingReq{}}, 5 * kSecond));
    if (routing.is_ok() && routing->routing) {
      const ChainInfo* c = routing->routing->chain(chain_id);
      if (c != nullptr && c->serving().size() == 3) {
        chain = *c;
        head_address = routing->routing->address_of(chain->targets[0].target).value_or("");
        write.chain_version = chain->version;
        first = response_as<WriteRsp>(call_blocking(client, head_address, Request{write}, 5 * kSecond));
        if (first.is_ok()) break;
      }
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
  }
  ASSERT_TRUE(chain.has_value()) << "chain never served on 3 targets";
  ASSERT_TRUE(first.is_ok()) << first.status();
  EXPECT_EQ(first->version, 1u);
  auto retried = response_as<WriteRsp>(call_blocking(client, head_address, Request{write}, 5 * kSecond));
  ASSERT_TRUE(retried.is_ok()) << retried.status();
  EXPECT_EQ(retried->version, 1u) << "a retried write must not create a new version";
  EXPECT_EQ(retried->crc32c, first->crc32c);
  // Every replica holds version 1 (the tail committed it before the acknowledgement; its
  // predecessors commit right after acknowledging), and a new request id creates version 2.
  for (const ChainTarget& target : chain->targets) {
    NodeId node = static_cast<NodeId>(target.target / kTargetsPerNodeLimit);
    Result<ChunkMeta> meta = internal_error("not read");
    for (int i = 0; i < 250; ++i) {
      meta = nodes[node - 1].stores.at(target.target)->stat(ChunkId{9, 0});
      if (meta.is_ok() && meta->committed_version == 1 && meta->pending_version == 0) break;
      std::this_thread::sleep_for(std::chrono::milliseconds(20));
    }
    ASSERT_TRUE(meta.is_ok()) << meta.status();
    EXPECT_EQ(meta->committed_version, 1u);
    EXPECT_EQ(meta->pending_version, 0u);
  }
  write.request_id.seq = 2;
  auto second = response_as<WriteRsp>(call_blocking(client, head_address, Request{write}, 5 * kSecond));
  ASSERT_TRUE(second.is_ok()) << second.status();
  EXPECT_EQ(second->version, 2u);

  // Reads through the fast lane: every replica answers version 2's bytes once it committed it (until
  // then [chunk_dirty]); a stale chain version still gets its distinct error.
  for (const ChainTarget& target : chain->targets) {
    std::string address = nodes[target.target / kTargetsPerNodeLimit - 1].server->address();
    ReadReq read{chain_id, chain->version, target.target, ChunkId{9, 0}, 0, 8192, ReadMode::kStrict};
    Result<ReadRsp> got = internal_error("not read");
    for (int i = 0; i < 250; ++i) {
      got = response_as<ReadRsp>(call_blocking(client, address, Request{read}, 5 * kSecond));
      if (got.is_ok() || fs_error_of(got.status()) != FsError::kChunkDirty) break;
      std::this_thread::sleep_for(std::chrono::milliseconds(20));
    }
    ASSERT_TRUE(got.is_ok()) << got.status();
    EXPECT_EQ(got->meta.committed_version, 2u);
    EXPECT_EQ(got->data, write.data);
    read.chain_version = chain->version + 7;
    auto stale = response_as<ReadRsp>(call_blocking(client, address, Request{read}, 5 * kSecond));
    EXPECT_EQ(fs_error_of(stale.status()), FsError::kStaleChainVersion) << stale.status();
  }

  for (auto& node : nodes) {
    node.server->shutdown(500);
    (void)node.executor->run_sync([&] { node.service->stop(); }, 5000);
  }
  (*mgmtd_server)->shutdown(500);
  (void)mgmtd_executor.run_sync([&] { mgmtd.stop(); }, 5000);
  for (auto& node : nodes) {
    for (int i = 0; i < 100 && node.rpc->in_flight() > 0; ++i) std::this_thread::sleep_for(std::chrono::milliseconds(20));
    node.executor->stop();
  }
}

}  // namespace
}  // namespace ff::fs::rpc
