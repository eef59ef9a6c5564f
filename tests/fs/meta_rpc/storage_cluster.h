// A storage cluster in one process for the meta_rpc tests: mgmtd (RocksDB map store) + N storage
// services on MemChunkStores, all over gRPC on 127.0.0.1, and a StorageClient on its own executor.
// start() waits (bounded) until a chain table's chains serve on every target.
#pragma once

#include <chrono>
#include <memory>
#include <thread>
#include <vector>

#include <gtest/gtest.h>

#include "../rpc/test_util.h"
#include "ff/fs/client.h"
#include "ff/fs/mem_chunk_store.h"
#include "ff/fs/mgmtd.h"
#include "ff/fs/rpc/grpc_transport.h"
#include "ff/fs/rpc/map_stores.h"
#include "ff/fs/storage_service.h"

namespace ff::fs::meta::testing {

class StorageCluster {
 public:
  // nodes storage services with targets_per_node targets each; one chain table (id 1) of
  // `replication`. Returns an error naming what did not come up in time.
  Status start(uint32_t nodes, uint32_t targets_per_node, uint32_t replication) {
    auto store = rpc::open_rocksdb_map_store(dir_.path() + "/map");
    FF_RETURN_IF_ERROR(store.status());
    map_store_ = std::move(*store);
    mgmtd_executor_ = std::make_unique<rpc::ThreadExecutor>("mgmtd", 1);
    MgmtdConfig mgmtd_config;
    mgmtd_config.heartbeat_timeout_ns = 4'000'000'000;
    mgmtd_config.scan_interval_ns = 100'000'000;
    mgmtd_config.grace_after_start = false;
    mgmtd_ = std::make_unique<Mgmtd>(mgmtd_config, *mgmtd_executor_, *map_store_);
    Status started;
    FF_RETURN_IF_ERROR(mgmtd_executor_->run_sync([&] { started = mgmtd_->start(); }, 10000));
    FF_RETURN_IF_ERROR(started);
    auto mgmtd_server = rpc::GrpcServer::start(
        "127.0.0.1:0", *mgmtd_executor_,
        [this](const ServerContext& c, Request r, Reply reply) { mgmtd_->handle(c, std::move(r), std::move(reply)); });
    FF_RETURN_IF_ERROR(mgmtd_server.status());
    mgmtd_server_ = std::move(*mgmtd_server);
    for (uint32_t i = 0; i < nodes; ++i) {
      auto node = std::make_unique<Node>();
      node->executor = std::make_unique<rpc::ThreadExecutor>("storage", 2);
      node->rpc = std::make_unique<rpc::GrpcRpcClient>(*node->executor);
      StorageConfig config;
      config.node = i + 1;
      config.address = "127.0.0.1:" + std::to_string(rpc::testing::free_port());
      config.mgmtd_address = mgmtd_address();
      config.heartbeat_interval_ns = 200'000'000;
      config.heartbeat_timeout_ns = 4'000'000'000;
      Node* raw = node.get();
      node->service = std::make_unique<StorageService>(config, *node->executor, *node->rpc, [raw](TargetId) {
        return Result<std::shared_ptr<ChunkStore>>(std::shared_ptr<ChunkStore>(std::make_shared<MemChunkStore>()));
      });
      auto server = rpc::GrpcServer::start(config.address, *node->executor,
                                           [raw](const ServerContext& c, Request r, Reply reply) {
                                             raw->service->handle(c, std::move(r), std::move(reply));
                                           });
      FF_RETURN_IF_ERROR(server.status());
      node->server = std::move(*server);
      Status s;
      FF_RETURN_IF_ERROR(node->executor->run_sync([&] { s = raw->service->start(); }, 10000));
      FF_RETURN_IF_ERROR(s);
      nodes_.push_back(std::move(node));
    }
    client_executor_ = std::make_unique<rpc::ThreadExecutor>("client", 2);
    client_rpc_ = std::make_unique<rpc::GrpcRpcClient>(*client_executor_);
    client_ = std::make_unique<StorageClient>(
        ClientConfig{.client_id = 7, .mgmtd_address = mgmtd_address(), .op_timeout_ns = 20'000'000'000},
        *client_executor_, *client_rpc_);
    std::vector<NodeId> ids;
    for (uint32_t i = 0; i < nodes; ++i) ids.push_back(i + 1);
    CreateChainTableReq create{1, replication, targets_per_node, ids};
    Result<CreateChainTableRsp> created = internal_error("not tried");
    for (int attempt = 0; attempt < 100 && !created.is_ok(); ++attempt) {
      created = response_as<CreateChainTableRsp>(
          rpc::call_blocking(*client_rpc_, mgmtd_address(), Request{create}, 5'000'000'000));
      if (!created.is_ok()) std::this_thread::sleep_for(std::chrono::milliseconds(100));
    }
    FF_RETURN_IF_ERROR(created.status());
    chains_ = created->chains;
    for (int attempt = 0; attempt < 200; ++attempt) {
      auto routing = response_as<GetRoutingRsp>(
          rpc::call_blocking(*client_rpc_, mgmtd_address(), Request{GetRoutingReq{}}, 5'000'000'000));
      if (routing.is_ok() && routing->routing) {
        bool all = true;
        for (ChainId chain : chains_) {
          const ChainInfo* info = routing->routing->chain(chain);
          all = all && info != nullptr && info->serving().size() == replication;
        }
        if (all) return Status::ok();
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(100));
    }
    return deadline_exceeded("chains did not all serve on {} targets within 20 s", replication);
  }

  ~StorageCluster() {
    client_.reset();
    for (auto& node : nodes_) {
      node->server->shutdown(500);
      (void)node->executor->run_sync([&] { node->service->stop(); }, 5000);
    }
    if (mgmtd_server_) mgmtd_server_->shutdown(500);
    if (mgmtd_executor_) (void)mgmtd_executor_->run_sync([&] { mgmtd_->stop(); }, 5000);
    for (auto& node : nodes_) {
      for (int i = 0; i < 100 && node->rpc->in_flight() > 0; ++i) {
        std::this_thread::sleep_for(std::chrono::milliseconds(20));
      }
      node->executor->stop();
    }
    if (client_rpc_) {
      for (int i = 0; i < 100 && client_rpc_->in_flight() > 0; ++i) {
        std::this_thread::sleep_for(std::chrono::milliseconds(20));
      }
    }
    if (client_executor_) client_executor_->stop();
    if (mgmtd_executor_) mgmtd_executor_->stop();
  }

  std::string mgmtd_address() const { return mgmtd_server_->address(); }
  const std::vector<ChainId>& chains() const { return chains_; }
  StorageClient& client() { return *client_; }
  rpc::ThreadExecutor& client_executor() { return *client_executor_; }

 private:
  struct Node {
    std::unique_ptr<rpc::ThreadExecutor> executor;
    std::unique_ptr<rpc::GrpcRpcClient> rpc;
    std::unique_ptr<StorageService> service;
    std::unique_ptr<rpc::GrpcServer> server;
  };
  rpc::testing::TempDir dir_;
  std::unique_ptr<MapStore> map_store_;
  std::unique_ptr<rpc::ThreadExecutor> mgmtd_executor_;
  std::unique_ptr<Mgmtd> mgmtd_;
  std::unique_ptr<rpc::GrpcServer> mgmtd_server_;
  std::vector<std::unique_ptr<Node>> nodes_;
  std::unique_ptr<rpc::ThreadExecutor> client_executor_;
  std::unique_ptr<rpc::GrpcRpcClient> client_rpc_;
  std::unique_ptr<StorageClient> client_;
  std::vector<ChainId> chains_;
};

}  // namespace ff::fs::meta::testing
