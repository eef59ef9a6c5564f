// EtcdChannel: the gRPC channel to an etcd cluster that EtcdClient (etcd_client.h) and the etcd KV
// engine (kv_engines.h) share: one member at a time; after an `unavailable` call (or a deadline, with
// other members to try) a fresh channel to the next member (the same one when there is one) serves the
// calls after it. A fresh channel, not gRPC's
// reconnect: a channel whose first connects were refused (etcd not yet listening) was seen to keep
// failing for many seconds after etcd came up on the 2-core CPU machine.
//
// Internal to fs (includes gRPC and the generated etcd stubs); tools and tests use EtcdClient.
//
// Thread-safety: every method may be called from any thread (gRPC stubs are thread-safe).
#pragma once

#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include <grpcpp/grpcpp.h>

#include "etcd/etcdserverpb/rpc.grpc.pb.h"
#include "ff/common/result.h"

namespace ff::fs::rpc {

struct EtcdStubs {
  std::shared_ptr<grpc::Channel> channel;
  std::unique_ptr<etcdserverpb::KV::Stub> kv;
  std::unique_ptr<etcdserverpb::Lease::Stub> lease;
};

class EtcdChannel {
 public:
  // endpoints: "host:port" (an "http://" prefix is dropped) of members of ONE etcd cluster.
  static Result<std::unique_ptr<EtcdChannel>> open(const std::vector<std::string>& endpoints);

  // The stubs calls use now; pass them back to replace_after with the call's status.
  std::shared_ptr<EtcdStubs> current();
  // After `unavailable` on `used`, or `deadline exceeded` when there are other members: moves to the
  // next member, once per failed channel (concurrent failures of one channel move once). Other
  // statuses change nothing.
  void replace_after(const grpc::Status& status, const std::shared_ptr<EtcdStubs>& used);

  // One unary call: fn(EtcdStubs&) -> grpc::Status.
  template <typename Fn>
  grpc::Status call(Fn&& fn) {
    std::shared_ptr<EtcdStubs> used = current();
    grpc::Status status = fn(*used);
    replace_after(status, used);
    return status;
  }

  // The members, comma-separated (for messages).
  const std::string& names() const { return names_; }

 private:
  EtcdChannel(std::vector<std::string> targets, std::string names);
  std::vector<std::string> targets_;
  std::string names_;
  std::mutex mutex_;  // guards stubs_ and index_
  std::shared_ptr<EtcdStubs> stubs_;
  size_t index_ = 0;  // targets_[index_] is the member stubs_ talk to
};

}  // namespace ff::fs::rpc
