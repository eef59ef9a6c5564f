// EtcdClient: a minimal etcd v3 client over etcd's own gRPC API (KV Range/Put/DeleteRange/Txn, Lease
// Grant/Revoke/KeepAlive), enough for the cluster map store and mgmtd leader election. Every call has a
// deadline (the timeout given at connect); errors name the endpoint and the operation.
//
// Thread-safety: every method may be called from any thread (gRPC stubs are thread-safe).
#pragma once

#include <chrono>
#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "ff/common/result.h"
#include "ff/common/status.h"

namespace ff::fs::rpc {

struct EtcdKeyValue {
  std::string key;
  std::string value;
  int64_t create_revision = 0;
  int64_t mod_revision = 0;
  int64_t version = 0;
  int64_t lease = 0;
};

class EtcdClient {
 public:
  // endpoint: "host:port" of one etcd member (its client URL without scheme). Nothing is sent until
  // the first call; use wait_ready() to check the member answers.
  static Result<std::unique_ptr<EtcdClient>> connect(const std::string& endpoint, int64_t timeout_ms);
  // Several members of one etcd cluster: calls go to one member at a time; a call answered
  // `unavailable` moves the client to the next member for the calls after it (callers retry, as
  // mgmtd's election and map store do).
  static Result<std::unique_ptr<EtcdClient>> connect(const std::vector<std::string>& endpoints, int64_t timeout_ms);
  ~EtcdClient();

  // Waits up to timeout_ms until a Range call succeeds.
  Status wait_ready(int64_t timeout_ms);

  Result<std::optional<EtcdKeyValue>> get(const std::string& key);
  // Keys in [begin, end) in key order; end "" means "every key starting with begin" (prefix scan).
  Result<std::vector<EtcdKeyValue>> range(const std::string& begin, const std::string& end, int64_t limit = 0);
  // Returns the store revision after the put.
  Result<int64_t> put(const std::string& key, const std::string& value, int64_t lease = 0);
  // Deletes [begin, end) (end "": the single key); returns how many keys were deleted.
  Result<int64_t> delete_range(const std::string& begin, const std::string& end = "");

  // Atomically: if `key` does not exist, puts it (attached to `lease`) and returns true; otherwise
  // returns false and leaves it. The election primitive.
  Result<bool> create_if_absent(const std::string& key, const std::string& value, int64_t lease);
  // Atomically: if `guard_key` has value `guard_value`, applies the puts and deletes and returns true;
  // otherwise changes nothing and returns false. Lets a leader write only while it holds leadership.
  struct Write {
    std::string key;
    std::string value;
    bool is_delete = false;
  };
  Result<bool> write_if_equal(const std::string& guard_key, const std::string& guard_value,
                              const std::vector<Write>& writes);

  // Grants a lease of ttl_s seconds; returns its id.
  Result<int64_t> lease_grant(int64_t ttl_s);
  Status lease_revoke(int64_t lease);
  // Sends one keep-alive; returns the remaining TTL in seconds, not_found when the lease expired.
  Result<int64_t> lease_keep_alive(int64_t lease);

  // The members, comma-separated (for messages).
  const std::string& endpoint() const { return endpoint_; }

  // The smallest key greater than every key with this prefix (etcd's range_end for a prefix).
  static std::string prefix_end(const std::string& prefix);

 private:
  struct Impl;
  EtcdClient(std::string endpoint, int64_t timeout_ms, std::unique_ptr<Impl> impl);
  std::string endpoint_;
  int64_t timeout_ms_;
  std::unique_ptr<Impl> impl_;
};

}  // namespace ff::fs::rpc
