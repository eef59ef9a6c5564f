#include "ff/fs/rpc/map_stores.h"

#include <rocksdb/db.h>
#include <rocksdb/options.h>

namespace ff::fs::rpc {

namespace {

constexpr const char* kMapKey = "cluster_map";

class RocksDbMapStore final : public MapStore {
 public:
  explicit RocksDbMapStore(std::unique_ptr<rocksdb::DB> db) : db_(std::move(db)) {}

  Result<std::optional<ClusterMap>> load() override {
    std::string value;
    rocksdb::Status status = db_->Get(rocksdb::ReadOptions(), kMapKey, &value);
    if (status.IsNotFound()) return std::optional<ClusterMap>();
    if (!status.ok()) return io_error("RocksDB map store: get {}: {}", kMapKey, status.ToString());
    FF_ASSIGN_OR_RETURN(ClusterMap map, decode_cluster_map(value));
    return std::optional<ClusterMap>(std::move(map));
  }

  Status save(const ClusterMap& map) override {
    rocksdb::WriteOptions options;
    options.sync = true;
    rocksdb::Status status = db_->Put(options, kMapKey, encode_cluster_map(map));
    if (!status.ok()) return io_error("RocksDB map store: put {}: {}", kMapKey, status.ToString());
    return Status::ok();
  }

 private:
  std::unique_ptr<rocksdb::DB> db_;
};

class EtcdMapStore final : public MapStore {
 public:
  EtcdMapStore(std::shared_ptr<EtcdClient> client, std::string prefix, std::string guard_key, std::string guard_value)
      : client_(std::move(client)),
        key_(std::move(prefix) + kMapKey),
        guard_key_(std::move(guard_key)),
        guard_value_(std::move(guard_value)) {}

  Result<std::optional<ClusterMap>> load() override {
    FF_ASSIGN_OR_RETURN(auto kv, client_->get(key_));
    if (!kv) return std::optional<ClusterMap>();
    FF_ASSIGN_OR_RETURN(ClusterMap map, decode_cluster_map(kv->value));
    return std::optional<ClusterMap>(std::move(map));
  }

  Status save(const ClusterMap& map) override {
    std::string value = encode_cluster_map(map);
    if (guard_key_.empty()) {
      auto revision = client_->put(key_, value);
      return revision.is_ok() ? Status::ok() : revision.status();
    }
    FF_ASSIGN_OR_RETURN(bool written, client_->write_if_equal(guard_key_, guard_value_, {{key_, value, false}}));
    if (!written) {
      return failed_precondition("etcd map store: lost leadership ({} no longer holds '{}'); map not saved",
                                 guard_key_, guard_value_);
    }
    return Status::ok();
  }

 private:
  std::shared_ptr<EtcdClient> client_;
  std::string key_;
  std::string guard_key_;
  std::string guard_value_;
};

}  // namespace

Result<std::unique_ptr<MapStore>> open_rocksdb_map_store(const std::string& directory) {
  rocksdb::Options options;
  options.create_if_missing = true;
  rocksdb::DB* db = nullptr;
  rocksdb::Status status = rocksdb::DB::Open(options, directory, &db);
  if (!status.ok()) return io_error("open RocksDB map store at {}: {}", directory, status.ToString());
  return std::unique_ptr<MapStore>(new RocksDbMapStore(std::unique_ptr<rocksdb::DB>(db)));
}

Result<std::unique_ptr<MapStore>> open_etcd_map_store(std::shared_ptr<EtcdClient> client, std::string prefix,
                                                      std::string guard_key, std::string guard_value) {
  if (client == nullptr) return invalid_argument("etcd map store needs a client");
  return std::unique_ptr<MapStore>(
      new EtcdMapStore(std::move(client), std::move(prefix), std::move(guard_key), std::move(guard_value)));
}

}  // namespace ff::fs::rpc
