// The etcd v3 engine, over etcd's own gRPC API (the etcdserverpb protos fs_rpc generates, reused).
// A transaction reads at one revision: the first read learns the store's current revision from the
// response header, later reads pass it as RangeRequest.revision. commit() sends one Txn:
//   compare: mod_revision(k) == the revision k had when read (0 when absent), for every key read and
//            every key a range returned (catches updates and deletions), and
//            mod_revision < snapshot + 1 over every range read (catches keys inserted into it);
//   success: the buffered writes (cleared ranges split around keys set later, since etcd rejects a
//            Txn whose puts overlap its deletes).
// A failed compare is a conflict. Reads of a compacted revision are conflicts too (retry afresh).
#include <map>

#include <grpcpp/grpcpp.h>

#include "etcd/etcdserverpb/rpc.grpc.pb.h"
#include "ff/common/assert.h"
#include "ff/fs/kv_engines.h"
#include "ff/fs/rpc/etcd_channel.h"
#include "ff/fs/rpc/grpc_status.h"
#include "txn_support.h"

namespace ff::fs::kv {
namespace {

using internal::BufferedTransaction;
using internal::KeyRange;
using internal::WriteBuffer;

class EtcdKv;

class EtcdTransaction final : public BufferedTransaction {
 public:
  explicit EtcdTransaction(EtcdKv& engine) : engine_(engine) {}

  Result<std::optional<std::string>> get(std::string_view key) override;
  Result<std::vector<KeyValue>> range(std::string_view begin, std::string_view end, size_t limit) override;
  Status add_read_conflict(std::string_view key) override;
  Status commit() override;
  uint64_t read_version() const override { return static_cast<uint64_t>(revision_); }

 private:
  // Reads [begin, end) (store keys, unprefixed; end "" = unbounded) at the snapshot revision.
  Result<std::vector<mvccpb::KeyValue>> read(std::string_view begin, std::string_view end, int64_t limit);
  void note_read(const std::string& key, int64_t mod_revision) { read_keys_.emplace(key, mod_revision); }

  EtcdKv& engine_;
  int64_t revision_ = 0;                      // 0 until the first read
  std::map<std::string, int64_t> read_keys_;  // unprefixed key -> mod revision seen (0: absent)
  std::vector<KeyRange> read_ranges_;         // unprefixed
};

class EtcdKv final : public KvEngine {
 public:
  EtcdKv(EtcdKvOptions options, std::unique_ptr<rpc::EtcdChannel> channel)
      : options_(std::move(options)), channel_(std::move(channel)) {}

  Result<std::unique_ptr<Transaction>> begin() override {
    return std::unique_ptr<Transaction>(new EtcdTransaction(*this));
  }
  std::string_view name() const override { return "etcd"; }

 private:
  friend class EtcdTransaction;
  std::string store_key(std::string_view key) const { return options_.prefix + std::string(key); }
  // The store range end for an unprefixed end ("" = the end of our prefix).
  std::string store_end(std::string_view end) const {
    return end.empty() ? prefix_end(options_.prefix) : options_.prefix + std::string(end);
  }
  void set_deadline(grpc::ClientContext* context) const {
    context->set_deadline(std::chrono::system_clock::now() + std::chrono::milliseconds(options_.timeout_ms));
  }
  Status convert(const grpc::Status& status, std::string_view what) const {
    // A snapshot revision compacted away: the transaction can only start over.
    if (status.error_message().find("compacted") != std::string::npos) {
      return kv_conflict(fmt::format("etcd {} {}: {}", channel_->names(), what, status.error_message()));
    }
    return rpc::from_grpc_status(status, fmt::format("etcd {} {}", channel_->names(), what));
  }

  EtcdKvOptions options_;
  std::unique_ptr<rpc::EtcdChannel> channel_;
};

Result<std::vector<mvccpb::KeyValue>> EtcdTransaction::read(std::string_view begin, std::string_view end,
                                                            int64_t limit) {
  etcdserverpb::RangeRequest request;
  request.set_key(engine_.store_key(begin));
  request.set_range_end(engine_.store_end(end));
  request.set_limit(limit);
  request.set_revision(revision_);
  request.set_sort_order(etcdserverpb::RangeRequest::ASCEND);
  request.set_sort_target(etcdserverpb::RangeRequest::KEY);
  etcdserverpb::RangeResponse response;
  grpc::ClientContext context;
  engine_.set_deadline(&context);
  grpc::Status status =
      engine_.channel_->call([&](rpc::EtcdStubs& stubs) { return stubs.kv->Range(&context, request, &response); });
  if (!status.ok()) return engine_.convert(status, fmt::format("Range '{}'", internal::printable_key(begin)));
  if (revision_ == 0) revision_ = response.header().revision();
  std::vector<mvccpb::KeyValue> rows(response.kvs().begin(), response.kvs().end());
  size_t prefix = engine_.options_.prefix.size();
  for (auto& row : rows) {
    FF_ASSERT(row.key().size() > prefix, "etcd returned a key outside the prefix");
    row.set_key(row.key().substr(prefix));
  }
  return rows;
}

Result<std::optional<std::string>> EtcdTransaction::get(std::string_view key) {
  FF_ASSERT(!finished_, "transaction used after commit");
  FF_ASSERT(!key.empty(), "KV keys must be non-empty");
  std::string value;
  switch (writes_.lookup(key, &value)) {
    case WriteBuffer::Lookup::kSet: return std::optional<std::string>(std::move(value));
    case WriteBuffer::Lookup::kCleared: return std::optional<std::string>();
    case WriteBuffer::Lookup::kNotBuffered: break;
  }
  // A single-key Range: no range_end.
  etcdserverpb::RangeRequest request;
  request.set_key(engine_.store_key(key));
  request.set_revision(revision_);
  etcdserverpb::RangeResponse response;
  grpc::ClientContext context;
  engine_.set_deadline(&context);
  grpc::Status status =
      engine_.channel_->call([&](rpc::EtcdStubs& stubs) { return stubs.kv->Range(&context, request, &response); });
  if (!status.ok()) return engine_.convert(status, fmt::format("Range '{}'", internal::printable_key(key)));
  if (revision_ == 0) revision_ = response.header().revision();
  if (response.kvs_size() == 0) {
    note_read(std::string(key), 0);
    return std::optional<std::string>();
  }
  note_read(std::string(key), response.kvs(0).mod_revision());
  return std::optional<std::string>(response.kvs(0).value());
}

Status EtcdTransaction::add_read_conflict(std::string_view key) {
  FF_ASSERT(!finished_, "transaction used after commit");
  // The key's revision is needed for the compare; reading it is the only way to learn it.
  std::string ignored;
  if (writes_.lookup(key, &ignored) != WriteBuffer::Lookup::kNotBuffered) {
    // Read the store's copy anyway: a buffered write does not tell the stored revision.
    WriteBuffer saved = std::move(writes_);
    writes_ = WriteBuffer();
    auto result = get(key);
    writes_ = std::move(saved);
    return result.status();
  }
  return get(key).status();
}

Result<std::vector<KeyValue>> EtcdTransaction::range(std::string_view begin, std::string_view end, size_t limit) {
  FF_ASSERT(!finished_, "transaction used after commit");
  auto read_page = [this](const std::string& from, std::string_view to, size_t page) -> Result<std::vector<KeyValue>> {
    FF_ASSIGN_OR_RETURN(auto rows, read(from, to, static_cast<int64_t>(page)));
    std::vector<KeyValue> out;
    out.reserve(rows.size());
    for (auto& row : rows) {
      note_read(row.key(), row.mod_revision());
      out.push_back(KeyValue{row.key(), row.value()});
    }
    return out;
  };
  std::string covered_end;
  FF_ASSIGN_OR_RETURN(auto rows, internal::merged_range(writes_, begin, end, limit, read_page, &covered_end));
  read_ranges_.push_back(KeyRange{std::string(begin), covered_end});
  return rows;
}

Status EtcdTransaction::commit() {
  FF_ASSERT(!finished_, "commit() called twice");
  finished_ = true;
  if (writes_.empty()) return Status::ok();
  etcdserverpb::TxnRequest request;
  for (const auto& [key, mod_revision] : read_keys_) {
    auto* compare = request.add_compare();
    compare->set_target(etcdserverpb::Compare::MOD);
    compare->set_result(etcdserverpb::Compare::EQUAL);
    compare->set_key(engine_.store_key(key));
    compare->set_mod_revision(mod_revision);
  }
  for (const auto& range : read_ranges_) {
    auto* compare = request.add_compare();
    compare->set_target(etcdserverpb::Compare::MOD);
    compare->set_result(etcdserverpb::Compare::LESS);
    compare->set_key(engine_.store_key(range.begin));
    compare->set_range_end(engine_.store_end(range.end));
    compare->set_mod_revision(revision_ + 1);
  }
  // Cleared ranges, split around keys set inside them (the points are applied after the ranges).
  for (const auto& range : writes_.cleared_ranges()) {
    std::string from = range.begin;
    auto point = writes_.points().lower_bound(range.begin);
    auto add_delete = [&](const std::string& begin, const std::string& store_end) {
      auto* op = request.add_success()->mutable_request_delete_range();
      op->set_key(engine_.store_key(begin));
      op->set_range_end(store_end);
    };
    for (; point != writes_.points().end() && internal::in_range(point->first, range.begin, range.end); ++point) {
      if (!point->second) continue;
      if (from < point->first) add_delete(from, engine_.store_key(point->first));
      from = point->first + std::string(1, '\0');
    }
    if (range.end.empty() || from < range.end) add_delete(from, engine_.store_end(range.end));
  }
  for (const auto& [key, value] : writes_.points()) {
    if (value) {
      auto* op = request.add_success()->mutable_request_put();
      op->set_key(engine_.store_key(key));
      op->set_value(*value);
    } else {
      bool covered = false;
      for (const auto& range : writes_.cleared_ranges())
        covered = covered || internal::in_range(key, range.begin, range.end);
      if (covered) continue;
      auto* op = request.add_success()->mutable_request_delete_range();
      op->set_key(engine_.store_key(key));
    }
  }
  auto max_ops = static_cast<int>(engine_.options_.max_txn_ops);
  if (request.compare_size() > max_ops || request.success_size() > max_ops) {
    return resource_exhausted(
        "etcd transaction needs {} compares and {} writes, more than max_txn_ops={} (raise etcd's --max-txn-ops "
        "and EtcdKvOptions::max_txn_ops together)",
        request.compare_size(), request.success_size(), max_ops);
  }
  etcdserverpb::TxnResponse response;
  grpc::ClientContext context;
  engine_.set_deadline(&context);
  grpc::Status status =
      engine_.channel_->call([&](rpc::EtcdStubs& stubs) { return stubs.kv->Txn(&context, request, &response); });
  if (!status.ok()) return engine_.convert(status, "Txn");
  if (!response.succeeded()) {
    return kv_conflict(fmt::format("etcd: a key or range among {} compares changed after revision {}",
                                   request.compare_size(), revision_));
  }
  committed_version_ = static_cast<uint64_t>(response.header().revision());
  return Status::ok();
}

}  // namespace

Result<std::unique_ptr<KvEngine>> open_etcd_kv(const EtcdKvOptions& options) {
  if (options.prefix.empty()) return invalid_argument("etcd KV prefix is empty; use e.g. \"/ff/kv/\"");
  if (options.timeout_ms <= 0) return invalid_argument("etcd KV timeout_ms={} must be positive", options.timeout_ms);
  if (options.max_txn_ops == 0) return invalid_argument("etcd KV max_txn_ops must be positive");
  std::vector<std::string> endpoints{options.endpoint};
  endpoints.insert(endpoints.end(), options.more_endpoints.begin(), options.more_endpoints.end());
  FF_ASSIGN_OR_RETURN(std::unique_ptr<rpc::EtcdChannel> channel, rpc::EtcdChannel::open(endpoints));
  return std::unique_ptr<KvEngine>(new EtcdKv(options, std::move(channel)));
}

}  // namespace ff::fs::kv
