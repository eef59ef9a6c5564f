#include "ff/fs/rpc/etcd_client.h"

#include <thread>
#include <vector>

#include <grpcpp/grpcpp.h>

#include "etcd/etcdserverpb/rpc.grpc.pb.h"
#include "ff/common/clock.h"
#include "ff/fs/rpc/etcd_channel.h"
#include "ff/fs/rpc/grpc_status.h"

namespace ff::fs::rpc {

struct EtcdClient::Impl {
  std::unique_ptr<EtcdChannel> channel;
  template <typename Fn>
  grpc::Status call(Fn&& fn) {
    return channel->call(std::forward<Fn>(fn));
  }
};

EtcdClient::EtcdClient(std::string endpoint, int64_t timeout_ms, std::unique_ptr<Impl> impl)
    : endpoint_(std::move(endpoint)), timeout_ms_(timeout_ms), impl_(std::move(impl)) {}
EtcdClient::~EtcdClient() = default;

Result<std::unique_ptr<EtcdClient>> EtcdClient::connect(const std::string& endpoint, int64_t timeout_ms) {
  return connect(std::vector<std::string>{endpoint}, timeout_ms);
}

Result<std::unique_ptr<EtcdClient>> EtcdClient::connect(const std::vector<std::string>& endpoints, int64_t timeout_ms) {
  if (timeout_ms <= 0) return invalid_argument("etcd timeout_ms={} must be positive", timeout_ms);
  auto impl = std::make_unique<Impl>();
  FF_ASSIGN_OR_RETURN(impl->channel, EtcdChannel::open(endpoints));
  std::string names = impl->channel->names();
  return std::unique_ptr<EtcdClient>(new EtcdClient(std::move(names), timeout_ms, std::move(impl)));
}

namespace {
void set_deadline(grpc::ClientContext* context, int64_t timeout_ms) {
  context->set_deadline(std::chrono::system_clock::now() + std::chrono::milliseconds(timeout_ms));
}
EtcdKeyValue convert(const mvccpb::KeyValue& kv) {
  return EtcdKeyValue{kv.key(), kv.value(), kv.create_revision(), kv.mod_revision(), kv.version(), kv.lease()};
}
}  // namespace

Status EtcdClient::wait_ready(int64_t timeout_ms) {
  int64_t deadline = system_clock().now_ms() + timeout_ms;
  Status last;
  while (true) {
    auto result = get("/ff-ready-probe");
    if (result.is_ok()) return Status::ok();
    last = result.status();
    if (system_clock().now_ms() >= deadline) break;
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
  return unavailable("etcd at {} not ready after {} ms: {}", endpoint_, timeout_ms, last.message());
}

std::string EtcdClient::prefix_end(const std::string& prefix) {
  std::string end = prefix;
  while (!end.empty()) {
    unsigned char last = static_cast<unsigned char>(end.back());
    if (last < 0xff) {
      end.back() = static_cast<char>(last + 1);
      return end;
    }
    end.pop_back();
  }
  return std::string(1, '\0');  // every key
}

Result<std::optional<EtcdKeyValue>> EtcdClient::get(const std::string& key) {
  etcdserverpb::RangeRequest request;
  request.set_key(key);
  etcdserverpb::RangeResponse response;
  grpc::ClientContext context;
  set_deadline(&context, timeout_ms_);
  grpc::Status status = impl_->call([&](EtcdStubs& stubs) { return stubs.kv->Range(&context, request, &response); });
  if (!status.ok()) return from_grpc_status(status, fmt::format("etcd {} Range {}", endpoint_, key));
  if (response.kvs_size() == 0) return std::optional<EtcdKeyValue>();
  return std::optional<EtcdKeyValue>(convert(response.kvs(0)));
}

Result<std::vector<EtcdKeyValue>> EtcdClient::range(const std::string& begin, const std::string& end, int64_t limit) {
  etcdserverpb::RangeRequest request;
  request.set_key(begin);
  request.set_range_end(end.empty() ? prefix_end(begin) : end);
  request.set_limit(limit);
  request.set_sort_order(etcdserverpb::RangeRequest::ASCEND);
  request.set_sort_target(etcdserverpb::RangeRequest::KEY);
  etcdserverpb::RangeResponse response;
  grpc::ClientContext context;
  set_deadline(&context, timeout_ms_);
  grpc::Status status = impl_->call([&](EtcdStubs& stubs) { return stubs.kv->Range(&context, request, &response); });
  if (!status.ok()) return from_grpc_status(status, fmt::format("etcd {} Range [{}, {})", endpoint_, begin, end));
  std::vector<EtcdKeyValue> result;
  result.reserve(static_cast<size_t>(response.kvs_size()));
  for (const auto& kv : response.kvs()) result.push_back(convert(kv));
  return result;
}

Result<int64_t> EtcdClient::put(const std::string& key, const std::string& value, int64_t lease) {
  etcdserverpb::PutRequest request;
  request.set_key(key);
  request.set_value(value);
  request.set_lease(lease);
  etcdserverpb::PutResponse response;
  grpc::ClientContext context;
  set_deadline(&context, timeout_ms_);
  grpc::Status status = impl_->call([&](EtcdStubs& stubs) { return stubs.kv->Put(&context, request, &response); });
  if (!status.ok()) return from_grpc_status(status, fmt::format("etcd {} Put {}", endpoint_, key));
  return response.header().revision();
}

Result<int64_t> EtcdClient::delete_range(const std::string& begin, const std::string& end) {
  etcdserverpb::DeleteRangeRequest request;
  request.set_key(begin);
  if (!end.empty()) request.set_range_end(end);
  etcdserverpb::DeleteRangeResponse response;
  grpc::ClientContext context;
  set_deadline(&context, timeout_ms_);
  grpc::Status status =
      impl_->call([&](EtcdStubs& stubs) { return stubs.kv->DeleteRange(&context, request, &response); });
  if (!status.ok()) return from_grpc_status(status, fmt::format("etcd {} DeleteRange {}", endpoint_, begin));
  return response.deleted();
}

Result<bool> EtcdClient::create_if_absent(const std::string& key, const std::string& value, int64_t lease) {
  etcdserverpb::TxnRequest request;
  auto* compare = request.add_compare();
  compare->set_key(key);
  compare->set_target(etcdserverpb::Compare::CREATE);
  compare->set_result(etcdserverpb::Compare::EQUAL);
  compare->set_create_revision(0);  // the key does not exist
  auto* put = request.add_success()->mutable_request_put();
  put->set_key(key);
  put->set_value(value);
  put->set_lease(lease);
  etcdserverpb::TxnResponse response;
  grpc::ClientContext context;
  set_deadline(&context, timeout_ms_);
  grpc::Status status = impl_->call([&](EtcdStubs& stubs) { return stubs.kv->Txn(&context, request, &response); });
  if (!status.ok()) return from_grpc_status(status, fmt::format("etcd {} Txn create {}", endpoint_, key));
  return response.succeeded();
}

Result<bool> EtcdClient::write_if_equal(const std::string& guard_key, const std::string& guard_value,
                                        const std::vector<Write>& writes) {
  etcdserverpb::TxnRequest request;
  auto* compare = request.add_compare();
  compare->set_key(guard_key);
  compare->set_target(etcdserverpb::Compare::VALUE);
  compare->set_result(etcdserverpb::Compare::EQUAL);
  compare->set_value(guard_value);
  for (const Write& write : writes) {
    auto* op = request.add_success();
    if (write.is_delete) {
      op->mutable_request_delete_range()->set_key(write.key);
    } else {
      op->mutable_request_put()->set_key(write.key);
      op->mutable_request_put()->set_value(write.value);
    }
  }
  etcdserverpb::TxnResponse response;
  grpc::ClientContext context;
  set_deadline(&context, timeout_ms_);
  grpc::Status status = impl_->call([&](EtcdStubs& stubs) { return stubs.kv->Txn(&context, request, &response); });
  if (!status.ok()) {
    return from_grpc_status(status, fmt::format("etcd {} Txn guarded by {}", endpoint_, guard_key));
  }
  return response.succeeded();
}

Result<int64_t> EtcdClient::lease_grant(int64_t ttl_s) {
  if (ttl_s <= 0) return invalid_argument("etcd lease ttl_s={} must be positive", ttl_s);
  etcdserverpb::LeaseGrantRequest request;
  request.set_ttl(ttl_s);
  etcdserverpb::LeaseGrantResponse response;
  grpc::ClientContext context;
  set_deadline(&context, timeout_ms_);
  grpc::Status status =
      impl_->call([&](EtcdStubs& stubs) { return stubs.lease->LeaseGrant(&context, request, &response); });
  if (!status.ok()) return from_grpc_status(status, fmt::format("etcd {} LeaseGrant", endpoint_));
  if (!response.error().empty()) return unavailable("etcd {} LeaseGrant: {}", endpoint_, response.error());
  return response.id();
}

Status EtcdClient::lease_revoke(int64_t lease) {
  etcdserverpb::LeaseRevokeRequest request;
  request.set_id(lease);
  etcdserverpb::LeaseRevokeResponse response;
  grpc::ClientContext context;
  set_deadline(&context, timeout_ms_);
  grpc::Status status =
      impl_->call([&](EtcdStubs& stubs) { return stubs.lease->LeaseRevoke(&context, request, &response); });
  if (!status.ok()) return from_grpc_status(status, fmt::format("etcd {} LeaseRevoke {:x}", endpoint_, lease));
  return Status::ok();
}

Result<int64_t> EtcdClient::lease_keep_alive(int64_t lease) {
  grpc::ClientContext context;
  set_deadline(&context, timeout_ms_);
  std::shared_ptr<EtcdStubs> stubs = impl_->channel->current();
  auto stream = stubs->lease->LeaseKeepAlive(&context);
  etcdserverpb::LeaseKeepAliveRequest request;
  request.set_id(lease);
  etcdserverpb::LeaseKeepAliveResponse response;
  bool ok = stream->Write(request) && stream->Read(&response);
  stream->WritesDone();
  grpc::Status status = stream->Finish();
  impl_->channel->replace_after(status, stubs);
  if (!ok) {
    return from_grpc_status(status.ok() ? grpc::Status(grpc::StatusCode::UNAVAILABLE, "stream closed") : status,
                            fmt::format("etcd {} LeaseKeepAlive {:x}", endpoint_, lease));
  }
  if (response.ttl() <= 0) return not_found("etcd lease {:x} expired", lease);
  return response.ttl();
}

}  // namespace ff::fs::rpc
