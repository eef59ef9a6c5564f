// Durable MapStores for ff-mgmtd (ff/fs/map_store.h): RocksDB (the default: one key holding the encoded
// map, written with a synced write) and etcd (one key under a prefix; with leader election, every save
// is guarded by the leader key so a deposed primary cannot overwrite its successor's map).
//
// Thread-safety: as MapStore (mgmtd's executor only).
#pragma once

#include <memory>
#include <string>

#include "ff/common/result.h"
#include "ff/fs/map_store.h"
#include "ff/fs/rpc/etcd_client.h"

namespace ff::fs::rpc {

// Opens (creating) a RocksDB database in `directory`.
Result<std::unique_ptr<MapStore>> open_rocksdb_map_store(const std::string& directory);

// Stores the map at `<prefix>cluster_map`. When guard_key is non-empty, save() succeeds only while
// guard_key holds guard_value (the leader key and this mgmtd's id); otherwise it fails
// failed_precondition ("lost leadership").
Result<std::unique_ptr<MapStore>> open_etcd_map_store(std::shared_ptr<EtcdClient> client, std::string prefix,
                                                      std::string guard_key = "", std::string guard_value = "");

}  // namespace ff::fs::rpc
