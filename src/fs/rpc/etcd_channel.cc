#include "ff/fs/rpc/etcd_channel.h"

#include <fmt/ranges.h>

namespace ff::fs::rpc {
namespace {

std::shared_ptr<EtcdStubs> make_stubs(const std::string& target) {
  // NOTE: short reconnect backoff: gRPC's default grows to 120 s, so a client that started before etcd
  // (or saw it restart) would otherwise fail fast for seconds after etcd is back.
  grpc::ChannelArguments args;
  args.SetInt(GRPC_ARG_INITIAL_RECONNECT_BACKOFF_MS, 100);
  // The minimum backoff is also gRPC's connect timeout: keep it long enough for a loaded machine.
  args.SetInt(GRPC_ARG_MIN_RECONNECT_BACKOFF_MS, 1000);
  args.SetInt(GRPC_ARG_MAX_RECONNECT_BACKOFF_MS, 2000);
  auto stubs = std::make_shared<EtcdStubs>();
  stubs->channel = grpc::CreateCustomChannel(target, grpc::InsecureChannelCredentials(), args);
  stubs->kv = etcdserverpb::KV::NewStub(stubs->channel);
  stubs->lease = etcdserverpb::Lease::NewStub(stubs->channel);
  return stubs;
}

}  // namespace

EtcdChannel::EtcdChannel(std::vector<std::string> targets, std::string names)
    : targets_(std::move(targets)), names_(std::move(names)), stubs_(make_stubs(targets_[0])) {}

Result<std::unique_ptr<EtcdChannel>> EtcdChannel::open(const std::vector<std::string>& endpoints) {
  if (endpoints.empty())
    return invalid_argument("etcd endpoints: none given (expected host:port, e.g. 127.0.0.1:2379)");
  std::vector<std::string> targets;
  for (const std::string& endpoint : endpoints) {
    std::string target = endpoint.starts_with("http://") ? endpoint.substr(7) : endpoint;
    if (target.empty() || target.find(':') == std::string::npos) {
      return invalid_argument("etcd endpoint '{}' is not host:port (e.g. 127.0.0.1:2379)", endpoint);
    }
    targets.push_back(std::move(target));
  }
  std::string names = fmt::format("{}", fmt::join(targets, ","));
  return std::unique_ptr<EtcdChannel>(new EtcdChannel(std::move(targets), std::move(names)));
}

std::shared_ptr<EtcdStubs> EtcdChannel::current() {
  std::lock_guard<std::mutex> lock(mutex_);
  return stubs_;
}

void EtcdChannel::replace_after(const grpc::Status& status, const std::shared_ptr<EtcdStubs>& used) {
  // A member that hangs (cut off from the majority, it cannot serve a linearizable request) shows as a
  // deadline: with other members to try, that moves too. With one member a fresh channel buys nothing.
  const bool hung = status.error_code() == grpc::StatusCode::DEADLINE_EXCEEDED && targets_.size() > 1;
  if (status.error_code() != grpc::StatusCode::UNAVAILABLE && !hung) return;
  std::lock_guard<std::mutex> lock(mutex_);
  if (stubs_ != used) return;
  index_ = (index_ + 1) % targets_.size();
  stubs_ = make_stubs(targets_[index_]);
}

}  // namespace ff::fs::rpc
