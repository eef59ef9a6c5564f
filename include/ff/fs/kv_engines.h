// The three engines of the transactional KV interface (kv.h).
//
// Thread-safety: the factories may be called from any thread; see kv.h for the engines.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "ff/common/result.h"
#include "ff/fs/kv.h"

namespace ff::fs::kv {

// In-memory multi-version store for tests: snapshots are versions, old versions are dropped once no
// transaction can read them. Nothing survives the object.
std::unique_ptr<KvEngine> open_memory_kv();

// What an engine from open_memory_kv() holds: keys, their stored versions (values a running
// transaction may still read, and the live ones) and, among those, deletion markers.
struct MemoryKvFootprint {
  size_t keys = 0;
  size_t versions = 0;
  size_t tombstones = 0;
};
// `engine` must come from open_memory_kv() (asserted).
MemoryKvFootprint memory_kv_footprint(KvEngine& engine);

struct RocksDbKvOptions {
  std::string path;                     // database directory; created when missing
  bool sync = true;                     // fsync the write-ahead log before commit() returns (durable commits)
  int64_t conflict_window_ms = 10'000;  // a transaction older than this may fail with a conflict
};
// Embedded RocksDB (the default store of a single meta server): snapshot reads, conflict checking in
// this process against the write sets of recent commits, group commit (concurrent commits share one
// WAL fsync). One process may open a path at a time (RocksDB's LOCK file).
Result<std::unique_ptr<KvEngine>> open_rocksdb_kv(const RocksDbKvOptions& options);

struct EtcdKvOptions {
  std::string endpoint;  // "host:port" of an etcd v3 member (client URL without scheme)
  // Other members of the same cluster: after an `unavailable` call the engine moves to the next.
  std::vector<std::string> more_endpoints;
  std::string prefix = "/ff/kv/";  // every key is stored under this prefix
  int64_t timeout_ms = 5'000;      // deadline of each RPC
  // etcd's --max-txn-ops (128 by default): a commit needing more compares or writes than this fails
  // with resource_exhausted naming the counts instead of being sent.
  uint32_t max_txn_ops = 128;
};
// etcd v3 over its gRPC API: reads at one revision (the first read's), commit as one Txn whose
// compares check the mod revision of every key read (0 for absent ones) and that no key in a read
// range was modified after the snapshot revision. Several processes may share one etcd.
Result<std::unique_ptr<KvEngine>> open_etcd_kv(const EtcdKvOptions& options);

}  // namespace ff::fs::kv
