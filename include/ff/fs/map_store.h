// MapStore: persistence of mgmtd's cluster map. mgmtd writes the whole map after every change that must
// survive a restart (chain tables, chain order and versions, public target states, registered nodes)
// and loads it at start. Implementations: MemMapStore (here; for tests and the simulation, survives a
// simulated mgmtd restart because the object outlives the service), RocksDB and etcd (fs/rpc).
//
// Thread-safety: called only from mgmtd's executor; implementations need not be thread-safe unless
// shared.
#pragma once

#include <cstdint>
#include <map>
#include <mutex>
#include <optional>
#include <string>
#include <string_view>

#include "ff/common/result.h"
#include "ff/common/status.h"
#include "ff/fs/types.h"

namespace ff::fs {

// The persisted part of the cluster map (RoutingInfo without liveness; node status is soft state).
struct ClusterMap {
  RoutingVersion routing_version = 0;
  std::map<NodeId, NodeInfo> nodes;
  std::map<TargetId, TargetInfo> targets;
  std::map<ChainId, ChainInfo> chains;
  std::map<ChainTableId, ChainTable> chain_tables;
  friend bool operator==(const ClusterMap&, const ClusterMap&) = default;
};

class MapStore {
 public:
  virtual ~MapStore() = default;
  // The last saved map, or nullopt when nothing was ever saved.
  virtual Result<std::optional<ClusterMap>> load() = 0;
  // Saves the map durably (returns after it is durable). Atomic: a crash leaves the old or the new map.
  virtual Status save(const ClusterMap& map) = 0;
};

// In memory. Thread-safe (a mutex), so a test may inspect it while mgmtd runs elsewhere.
class MemMapStore final : public MapStore {
 public:
  Result<std::optional<ClusterMap>> load() override;
  Status save(const ClusterMap& map) override;
  // Test hook: the next `count` saves fail with io_error.
  void fail_next_saves(int count);
  uint64_t saves() const;

 private:
  mutable std::mutex mutex_;  // guards everything below
  std::optional<ClusterMap> map_;
  int fail_saves_ = 0;
  uint64_t saves_ = 0;
};

// Serialises a map to bytes and back (a compact binary encoding; versioned), for stores that keep one
// value (RocksDB key, etcd key).
std::string encode_cluster_map(const ClusterMap& map);
Result<ClusterMap> decode_cluster_map(std::string_view bytes);

}  // namespace ff::fs
