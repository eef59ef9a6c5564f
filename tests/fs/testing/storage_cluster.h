// A storage cluster in one process, for tests: mgmtd (memory map store) + N storage services on
// MemChunkStores (or ChunkEngines: engine_root), all over real gRPC (or our TCP transport: `transport`) on
// 127.0.0.1, one chain table (id 1), and a client executor with an RPC client for whatever the test puts on top (a
// StorageClient: storage_client(); a FileClient and an embedded meta: cluster_fixture.h). The one fixture for this in
// tests/fs: include it, do not copy it; link ff_fs_test_cluster (tests/fs/testing/CMakeLists.txt).
//
//   auto cluster = StorageCluster::start({.nodes = 3, .targets_per_node = 2, .replication = 3});
//   ASSERT_TRUE(cluster.is_ok()) << cluster.status();      // ~1 s; returns once every chain serves
//   (*cluster)->storage_client().write(...)                // on (*cluster)->client_executor() only
//
// Storage nodes can be restarted (a crash: the service and its RPC server go, the MemChunkStores stay,
// as a disk would) with restart_storage(); wait_serving() waits until every chain serves on all targets.
// Every wait is bounded.
//
// Thread-safety: the fixture's methods are for the test's main thread; the StorageClient only on the
// client executor (one thread).
#pragma once

#include <algorithm>
#include <bit>
#include <chrono>
#include <cstdlib>
#include <filesystem>
#include <functional>
#include <future>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "../rpc/test_util.h"
#include "ff/common/assert.h"
#include "ff/fs/chunk_engine.h"
#include "ff/fs/client.h"
#include "ff/fs/map_store.h"
#include "ff/fs/mem_chunk_store.h"
#include "ff/fs/mgmtd.h"
#include "ff/fs/rpc/tcp_transport.h"
#include "ff/fs/storage_service.h"

namespace ff::fs::testing {

struct StorageClusterOptions {
  uint32_t nodes = 3;
  uint32_t targets_per_node = 2;  // chains = nodes * targets_per_node / replication
  uint32_t replication = 3;
  uint64_t max_chunk_bytes = 64 << 10;  // the MemChunkStores' chunk size limit
  // Long enough that a loaded CI machine does not lapse leases; a restarted node re-registers with a
  // new incarnation, which ends its old lease at once anyway.
  int64_t heartbeat_timeout_ns = 10'000'000'000;
  int64_t serving_timeout_ms = 30'000;  // start() waits this long for every chain to serve
  // Non-empty: every target keeps its chunks in a ChunkEngine under <engine_root>/target-<id> (real
  // files: local reads, corruption on disk) instead of a MemChunkStore.
  std::string engine_root;
  // The storage nodes' transport: "tcp" (fs/rpc/tcp_transport.h) or "grpc"; empty: FF_TEST_RPC_TRANSPORT from the
  // environment, else tcp, the deployments' default (ctest runs fs_client_test once more with grpc). mgmtd always
  // serves gRPC.
  std::string transport;
  // Plain reads and batches of them skip the service's executor (StorageService::try_handle_read), as in
  // ff-storage.
  bool read_fast_lane = true;
  // StorageConfig's recovery settings (chunks replaced at once, chunk metadata per SyncDumpMeta page).
  uint32_t sync_batch = StorageConfig{}.sync_batch;
  uint32_t sync_dump_page = StorageConfig{}.sync_dump_page;
  // StorageConfig's background scrub (off by default).
  uint64_t scrub_bytes_per_s = 0;
  int64_t scrub_pass_pause_ns = StorageConfig{}.scrub_pass_pause_ns;
  int64_t scrub_save_interval_ns = StorageConfig{}.scrub_save_interval_ns;
};

class StorageCluster {
 public:
  static Result<std::unique_ptr<StorageCluster>> start(StorageClusterOptions options) {
    std::unique_ptr<StorageCluster> cluster(new StorageCluster());
    cluster->options_ = options;
    FF_RETURN_IF_ERROR(cluster->start_all());
    return cluster;
  }

  // Whatever the test built over the client executor (FileClients, a StorageClient) must be gone.
  ~StorageCluster() {
    storage_client_.reset();
    for (auto& [id, node] : nodes_) stop_node(node);
    if (mgmtd_server_) mgmtd_server_->shutdown(500);
    if (mgmtd_) (void)mgmtd_executor_->run_sync([&] { mgmtd_->stop(); }, 5000);
    for (auto& [id, node] : nodes_) {
      if (node.parts) wait_idle(*node.parts->rpc);
    }
    if (client_rpc_) wait_idle(*client_rpc_);
    if (client_executor_) client_executor_->stop();
    for (auto& dead : graveyard_) {
      if (dead->executor) dead->executor->stop();
    }
    for (auto& [id, node] : nodes_) {
      if (node.parts && node.parts->executor) node.parts->executor->stop();
    }
    if (mgmtd_executor_) mgmtd_executor_->stop();
  }

  const StorageClusterOptions& options() const { return options_; }
  const std::string& mgmtd_address() const { return mgmtd_address_; }
  const std::vector<ChainId>& chains() const { return chains_; }
  Executor& client_executor() { return *client_executor_; }
  RpcClient& client_rpc() { return *client_rpc_; }
  // Runs fn(done) on the client executor and waits up to 60 s for done's result.
  template <typename T>
  Result<T> on_client(std::function<void(std::function<void(Result<T>)>)> fn) {
    auto promise = std::make_shared<std::promise<Result<T>>>();
    auto future = promise->get_future();
    client_executor_->post([fn, promise] { fn([promise](Result<T> r) { promise->set_value(std::move(r)); }); });
    if (future.wait_for(std::chrono::seconds(60)) != std::future_status::ready) {
      return deadline_exceeded("no answer in 60 s");
    }
    return future.get();
  }

  // A StorageClient (client id 7, 20 s per operation) on the client executor, made on first use.
  StorageClient& storage_client() {
    if (!storage_client_) {
      storage_client_ = std::make_unique<StorageClient>(
          ClientConfig{.client_id = 7, .mgmtd_address = mgmtd_address_, .op_timeout_ns = 20'000'000'000},
          *client_executor_, *client_rpc_);
    }
    return *storage_client_;
  }

  // The chunk store of a target (every target of node n: n*1000 + 1 ..); null until the target
  // first served. store(): the MemChunkStore (null with engine_root).
  std::shared_ptr<ChunkStore> chunk_store(TargetId target) {
    NodeId node = static_cast<NodeId>(target / kTargetsPerNodeLimit);
    auto it = nodes_.find(node);
    if (it == nodes_.end()) return nullptr;
    std::lock_guard lock(*it->second.stores_mutex);
    auto found = it->second.stores->find(target);
    return found == it->second.stores->end() ? nullptr : found->second;
  }
  std::shared_ptr<MemChunkStore> store(TargetId target) {
    return std::dynamic_pointer_cast<MemChunkStore>(chunk_store(target));
  }
  // A node's service (null while it is down).
  StorageService* service(NodeId node) {
    auto it = nodes_.find(node);
    return it == nodes_.end() || !it->second.parts ? nullptr : it->second.parts->service.get();
  }

  // The routing as mgmtd has it now.
  Result<RoutingInfo> routing() {
    auto rsp = response_as<GetRoutingRsp>(
        rpc::call_blocking(*client_rpc_, mgmtd_address_, Request{GetRoutingReq{}}, 5'000'000'000));
    if (!rsp.is_ok()) return rsp.status();
    if (!rsp->routing) return unavailable("mgmtd sent no routing");
    return *rsp->routing;
  }

  // Waits until every chain serves on `replication` targets.
  Status wait_serving(int64_t timeout_ms) {
    auto deadline = std::chrono::steady_clock::now() + std::chrono::milliseconds(timeout_ms);
    std::string last = "no routing yet";
    while (std::chrono::steady_clock::now() < deadline) {
      auto routing_or = routing();
      if (routing_or.is_ok()) {
        bool all = !chains_.empty();
        for (ChainId chain : chains_) {
          const ChainInfo* info = routing_or->chain(chain);
          if (info == nullptr || info->targets.size() != options_.replication || !routing_or->fully_serving(*info)) {
            all = false;
            last =
                fmt::format("chain {} does not serve on {} targets reported up to date", chain, options_.replication);
          }
        }
        if (all) return Status::ok();
      } else {
        last = routing_or.status().to_string();
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(50));
    }
    return deadline_exceeded("chains not all serving on {} targets within {} ms: {}", options_.replication, timeout_ms,
                             last);
  }

  // A crash of node `node`: its service and RPC server stop at once (requests in flight are lost), its
  // chunk stores stay; after `down_ms` a new service (new incarnation) starts on the same address and
  // recovers through mgmtd.
  Status restart_storage(NodeId node, int64_t down_ms) {
    FF_RETURN_IF_ERROR(crash_storage(node));
    std::this_thread::sleep_for(std::chrono::milliseconds(down_ms));
    return start_storage(node);
  }
  // The two halves of restart_storage: the crash (mgmtd notices after the heartbeat timeout) and the start.
  Status crash_storage(NodeId node) {
    auto it = nodes_.find(node);
    if (it == nodes_.end() || !it->second.parts) return invalid_argument("no running storage node {}", node);
    stop_node(it->second);
    graveyard_.push_back(std::move(it->second.parts));
    return Status::ok();
  }
  Status start_storage(NodeId node) {
    auto it = nodes_.find(node);
    if (it == nodes_.end() || it->second.parts) return invalid_argument("no stopped storage node {}", node);
    return start_node(node);
  }

 private:
  // What dies with a storage process.
  struct NodeParts {
    std::unique_ptr<rpc::ThreadExecutor> executor;
    std::unique_ptr<rpc::NetRpcClient> rpc;
    std::unique_ptr<StorageService> service;
    std::unique_ptr<rpc::RpcServer> server;
  };
  struct Node {
    std::string address;
    std::shared_ptr<std::map<TargetId, std::shared_ptr<ChunkStore>>> stores;  // the "disks"
    // Guards *stores: the node's service opens a target's store on its thread (when it first serves
    // it), while a test may look stores up.
    std::shared_ptr<std::mutex> stores_mutex = std::make_shared<std::mutex>();
    std::unique_ptr<NodeParts> parts;
  };

  StorageCluster() = default;

  static void wait_idle(rpc::NetRpcClient& rpc) {
    for (int i = 0; i < 100 && rpc.in_flight() > 0; ++i) std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }

  Status start_all() {
    map_store_ = std::make_unique<MemMapStore>();
    mgmtd_executor_ = std::make_unique<rpc::ThreadExecutor>("mgmtd", 1);
    MgmtdConfig mgmtd_config;
    mgmtd_config.heartbeat_timeout_ns = options_.heartbeat_timeout_ns;
    mgmtd_config.scan_interval_ns = 100'000'000;
    mgmtd_config.grace_after_start = false;
    mgmtd_ = std::make_unique<Mgmtd>(mgmtd_config, *mgmtd_executor_, *map_store_);
    Status started;
    FF_RETURN_IF_ERROR(mgmtd_executor_->run_sync([&] { started = mgmtd_->start(); }, 10000));
    FF_RETURN_IF_ERROR(started);
    FF_ASSIGN_OR_RETURN(mgmtd_server_, rpc::GrpcServer::start("127.0.0.1:0", *mgmtd_executor_,
                                                              [this](const ServerContext& c, Request r, Reply reply) {
                                                                mgmtd_->handle(c, std::move(r), std::move(reply));
                                                              }));
    mgmtd_address_ = mgmtd_server_->address();
    client_executor_ = std::make_unique<rpc::ThreadExecutor>("client", 1);
    client_rpc_ = std::make_unique<rpc::NetRpcClient>(*client_executor_);
    for (NodeId id = 1; id <= options_.nodes; ++id) {
      Node& node = nodes_[id];
      node.address = transport_prefix() + "127.0.0.1:" + std::to_string(rpc::testing::free_port());
      node.stores = std::make_shared<std::map<TargetId, std::shared_ptr<ChunkStore>>>();
      FF_RETURN_IF_ERROR(start_node(id));
    }
    // The nodes register asynchronously: retry until the chain table can be made over all of them.
    std::vector<NodeId> ids;
    for (auto& [id, node] : nodes_) ids.push_back(id);
    CreateChainTableReq create{1, options_.replication, options_.targets_per_node, ids};
    Result<CreateChainTableRsp> created = internal_error("not tried");
    for (int attempt = 0; attempt < 200; ++attempt) {
      created = response_as<CreateChainTableRsp>(
          rpc::call_blocking(*client_rpc_, mgmtd_address_, Request{create}, 5'000'000'000));
      if (created.is_ok()) break;
      std::this_thread::sleep_for(std::chrono::milliseconds(50));
    }
    if (!created.is_ok()) return created.status().with_context("create chain table");
    chains_ = created->chains;
    return wait_serving(options_.serving_timeout_ms);
  }

  Status start_node(NodeId id) {
    Node& node = nodes_.at(id);
    auto parts = std::make_unique<NodeParts>();
    parts->executor = std::make_unique<rpc::ThreadExecutor>("storage", 2);
    parts->rpc = std::make_unique<rpc::NetRpcClient>(*parts->executor);
    StorageConfig config;
    config.node = id;
    config.address = node.address;
    config.mgmtd_address = mgmtd_address_;
    config.heartbeat_interval_ns = 200'000'000;
    config.heartbeat_timeout_ns = options_.heartbeat_timeout_ns;
    config.sync_batch = options_.sync_batch;
    config.sync_dump_page = options_.sync_dump_page;
    config.scrub_bytes_per_s = options_.scrub_bytes_per_s;
    config.scrub_pass_pause_ns = options_.scrub_pass_pause_ns;
    config.scrub_save_interval_ns = options_.scrub_save_interval_ns;
    auto stores = node.stores;
    auto stores_mutex = node.stores_mutex;
    const uint64_t max_chunk = options_.max_chunk_bytes;
    const std::string engine_root = options_.engine_root;
    parts->service = std::make_unique<StorageService>(
        config, *parts->executor, *parts->rpc,
        [stores, stores_mutex, max_chunk, engine_root](TargetId target) -> Result<std::shared_ptr<ChunkStore>> {
          std::lock_guard lock(*stores_mutex);
          auto& slot = (*stores)[target];
          if (!slot && engine_root.empty()) slot = std::make_shared<MemChunkStore>(max_chunk);
          if (!slot) {
            ChunkEngineOptions engine;
            engine.directory = fmt::format("{}/target-{}", engine_root, target);
            engine.max_block_bytes = std::bit_ceil(std::max<uint64_t>(max_chunk, engine.min_block_bytes));
            engine.preallocate_bytes_per_class = 4ull << 20;
            std::filesystem::create_directories(engine.directory);
            FF_ASSIGN_OR_RETURN(std::unique_ptr<ChunkEngine> opened, ChunkEngine::open(engine));
            slot = std::shared_ptr<ChunkStore>(std::move(opened));
          }
          return slot;
        });
    StorageService* service = parts->service.get();
    // A port just released may take a moment to bind again.
    Result<std::unique_ptr<rpc::RpcServer>> server = internal_error("not tried");
    for (int attempt = 0; attempt < 50; ++attempt) {
      rpc::FastHandler fast;
      if (options_.read_fast_lane) {
        fast = [service](const ServerContext& c, Request& r, Reply& reply) {
          return service->try_handle_read(c, r, reply);
        };
      }
      server = rpc::start_rpc_server(
          node.address, *parts->executor,
          [service](const ServerContext& c, Request r, Reply reply) {
            service->handle(c, std::move(r), std::move(reply));
          },
          nullptr, std::move(fast));
      if (server.is_ok()) break;
      std::this_thread::sleep_for(std::chrono::milliseconds(100));
    }
    if (!server.is_ok()) return server.status().with_context(fmt::format("storage node {} at {}", id, node.address));
    parts->server = std::move(*server);
    Status started;
    FF_RETURN_IF_ERROR(parts->executor->run_sync([&] { started = service->start(); }, 10000));
    FF_RETURN_IF_ERROR(started);
    node.parts = std::move(parts);
    return Status::ok();
  }

  // "tcp://" when the storage nodes serve our TCP transport (StorageClusterOptions::transport).
  std::string transport_prefix() const {
    std::string transport = options_.transport;
    if (transport.empty()) {
      const char* from_env = std::getenv("FF_TEST_RPC_TRANSPORT");
      transport = from_env != nullptr && *from_env != '\0' ? from_env : "tcp";
    }
    FF_ASSERT(transport == "grpc" || transport == "tcp", "storage cluster transport '{}': expected grpc or tcp",
              transport);
    return transport == "tcp" ? std::string(rpc::kTcpScheme) : std::string();
  }

  static void stop_node(Node& node) {
    if (!node.parts) return;
    NodeParts& parts = *node.parts;
    if (parts.service) (void)parts.executor->run_sync([&] { parts.service->stop(); }, 5000);
    if (parts.server) parts.server->shutdown(200);
  }

  StorageClusterOptions options_;
  std::unique_ptr<MemMapStore> map_store_;
  std::unique_ptr<rpc::ThreadExecutor> mgmtd_executor_;
  std::unique_ptr<Mgmtd> mgmtd_;
  std::unique_ptr<rpc::GrpcServer> mgmtd_server_;
  std::string mgmtd_address_;
  std::unique_ptr<rpc::ThreadExecutor> client_executor_;
  std::unique_ptr<rpc::NetRpcClient> client_rpc_;
  std::unique_ptr<StorageClient> storage_client_;
  std::map<NodeId, Node> nodes_;
  std::vector<std::unique_ptr<NodeParts>> graveyard_;  // crashed services: kept (stopped) until the end
  std::vector<ChainId> chains_;
};

}  // namespace ff::fs::testing
