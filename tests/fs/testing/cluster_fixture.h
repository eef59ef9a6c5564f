// A whole fs cluster in one process, for tests of the file client and what is built on it (ff-fuse,
// USRBIO, the KV cache): the storage cluster of storage_cluster.h (mgmtd + N storage services on
// MemChunkStores over real gRPC on 127.0.0.1, a chain table) and an EmbeddedFs (MetaService on the
// in-memory KV, its FileStorage over the storage cluster). Include it (do not copy it); link
// ff_fs_test_cluster and ff::fs_client. (tests/fs/client/cluster_fixture.h forwards here.)
//
//   auto cluster = InProcessCluster::start({});            // ~1-3 s on the shared 2-core machine
//   ASSERT_TRUE(cluster.is_ok()) << cluster.status();
//   auto client = (*cluster)->make_client();               // FileClient over the cluster's meta
//   auto fh = (*client)->create(root, meta::kRootInode, "a", 0644, meta::kOpenRead | meta::kOpenWrite);
//
// Storage nodes can be restarted (restart_storage()); wait_serving() waits until every chain serves on
// all targets (both from StorageCluster).
//
// Thread-safety: the fixture's methods are for the test's main thread; the clients it makes are
// thread-safe as documented in file_client.h.
#pragma once

#include <memory>
#include <optional>

#include "ff/fs/file_client.h"
#include "storage_cluster.h"

namespace ff::fs::testing {

struct InProcessClusterOptions {
  uint32_t nodes = 3;
  uint32_t targets_per_node = 2;  // chains = nodes * targets_per_node / replication
  uint32_t replication = 3;
  uint32_t chunk_size = 64 << 10;                 // small, so tests cross chunk boundaries with little data
  uint32_t stripe = 0;                            // chains per file; 0: all
  int64_t heartbeat_timeout_ns = 10'000'000'000;  // see StorageClusterOptions
  FileClientConfig client;                        // defaults for make_client() and the embedded meta's own client
  int64_t client_lease_ms = 60'000;               // the embedded meta's client lease (sessions reclaimed every 200 ms)
  std::string engine_root;                        // StorageClusterOptions::engine_root (ChunkEngine targets)
};

class InProcessCluster {
 public:
  static Result<std::unique_ptr<InProcessCluster>> start(InProcessClusterOptions options) {
    std::unique_ptr<InProcessCluster> cluster(new InProcessCluster());
    cluster->options_ = options;
    FF_ASSIGN_OR_RETURN(cluster->storage_, StorageCluster::start({.nodes = options.nodes,
                                                                  .targets_per_node = options.targets_per_node,
                                                                  .replication = options.replication,
                                                                  .max_chunk_bytes = options.chunk_size,
                                                                  .heartbeat_timeout_ns = options.heartbeat_timeout_ns,
                                                                  .engine_root = options.engine_root}));
    FileClientConfig client = options.client;
    client.mgmtd_address = cluster->storage_->mgmtd_address();
    EmbeddedFsConfig embedded;
    embedded.chunk_size = options.chunk_size;
    embedded.stripe = options.stripe;
    embedded.gc_interval_ms = 200;
    embedded.client_lease_ms = options.client_lease_ms;
    FF_ASSIGN_OR_RETURN(cluster->embedded_, EmbeddedFs::open(client, embedded));
    return cluster;
  }

  ~InProcessCluster() {
    embedded_.reset();  // before the storage cluster it talks to
    storage_.reset();
  }

  const std::string& mgmtd_address() const { return storage_->mgmtd_address(); }
  // The metadata service (in-process, memory KV) every client of this cluster shares.
  meta::MetaService& meta() { return embedded_->meta(); }
  // The embedded meta's own FileClient (also usable by tests).
  FileClient& embedded_client() { return embedded_->client(); }
  const std::vector<ChainId>& chains() const { return storage_->chains(); }
  Executor& client_executor() { return storage_->client_executor(); }
  RpcClient& client_rpc() { return storage_->client_rpc(); }
  StorageCluster& storage() { return *storage_; }

  // A FileClient over this cluster (FileClient::create on the fixture's client executor and gRPC
  // client). Owned by the caller; destroy it before the cluster.
  Result<std::unique_ptr<FileClient>> make_client(std::optional<FileClientConfig> config = std::nullopt) {
    FileClientConfig c = config.value_or(options_.client);
    c.mgmtd_address = mgmtd_address();
    return FileClient::create(c, meta(), client_executor(), client_rpc());
  }

  std::shared_ptr<MemChunkStore> store(TargetId target) { return storage_->store(target); }
  Result<RoutingInfo> routing() { return storage_->routing(); }
  Status wait_serving(int64_t timeout_ms) { return storage_->wait_serving(timeout_ms); }
  Status restart_storage(NodeId node, int64_t down_ms) { return storage_->restart_storage(node, down_ms); }

 private:
  InProcessCluster() = default;

  InProcessClusterOptions options_;
  std::unique_ptr<StorageCluster> storage_;
  std::unique_ptr<EmbeddedFs> embedded_;
};

}  // namespace ff::fs::testing
