// The embedded RocksDB engine. Reads go to a RocksDB snapshot taken at begin(); commits are checked
// against the in-process ConflictLog and written with group commit: the first committer to find no
// write in flight becomes the leader and writes every queued batch as one WriteBatch with one WAL
// fsync, while the others wait for it. Because every queued batch passed its conflict check against all
// earlier ones, their union is one consistent state, and a snapshot sees either all or none of it.
#include <condition_variable>
#include <mutex>

#include <rocksdb/db.h>
#include <rocksdb/options.h>
#include <rocksdb/write_batch.h>

#include "ff/common/assert.h"
#include "ff/common/clock.h"
#include "ff/fs/kv_engines.h"
#include "txn_support.h"

namespace ff::fs::kv {
namespace {

using internal::ActiveSnapshots;
using internal::ConflictLog;
using internal::KeyRange;
using internal::ReadSet;
using internal::BufferedTransaction;
using internal::WriteBuffer;

// The commit version is kept in the store too (written with every batch), so versions keep increasing
// across restarts. User keys are non-empty, so the empty key is free for it.
const std::string kVersionKey;
constexpr int64_t kCommitWaitTimeoutMs = 60'000;

std::string encode_u64(uint64_t value) {
  std::string out(8, '\0');
  for (int i = 7; i >= 0; --i) {
    out[static_cast<size_t>(i)] = static_cast<char>(value & 0xff);
    value >>= 8;
  }
  return out;
}
uint64_t decode_u64(std::string_view bytes) {
  uint64_t value = 0;
  for (char c : bytes) value = (value << 8) | static_cast<unsigned char>(c);
  return value;
}

class RocksKv;

class RocksTransaction final : public BufferedTransaction {
 public:
  RocksTransaction(RocksKv& engine, uint64_t snapshot_version, const rocksdb::Snapshot* snapshot)
      : engine_(engine), snapshot_version_(snapshot_version), snapshot_(snapshot) {}
  ~RocksTransaction() override;

  Result<std::optional<std::string>> get(std::string_view key) override;
  Result<std::vector<KeyValue>> range(std::string_view begin, std::string_view end, size_t limit) override;
  Status add_read_conflict(std::string_view key) override {
    reads_.points.emplace_back(key);
    return Status::ok();
  }
  Status commit() override;
  uint64_t read_version() const override { return snapshot_version_; }

 private:
  RocksKv& engine_;
  uint64_t snapshot_version_;
  const rocksdb::Snapshot* snapshot_;
  ReadSet reads_;
};

class RocksKv final : public KvEngine {
 public:
  RocksKv(RocksDbKvOptions options, std::unique_ptr<rocksdb::DB> db, uint64_t version)
      : options_(std::move(options)), db_(std::move(db)), applied_version_(version), assigned_version_(version) {}
  ~RocksKv() override {
    std::lock_guard lock(mutex_);
    FF_ASSERT(!leader_active_ && queue_.empty(), "RocksDB KV destroyed during a commit");
  }

  Result<std::unique_ptr<Transaction>> begin() override {
    std::lock_guard lock(mutex_);
    active_.add(applied_version_);
    return std::unique_ptr<Transaction>(new RocksTransaction(*this, applied_version_, db_->GetSnapshot()));
  }
  std::string_view name() const override { return "rocksdb"; }

 private:
  friend class RocksTransaction;
  struct Pending {
    uint64_t version = 0;
    std::vector<KeyRange> cleared;
    std::vector<std::pair<std::string, std::optional<std::string>>> points;  // nullopt: delete
  };

  void end_transaction(uint64_t version, const rocksdb::Snapshot* snapshot) {
    db_->ReleaseSnapshot(snapshot);
    std::lock_guard lock(mutex_);
    active_.remove(version);
  }

  Status commit(uint64_t snapshot_version, const ReadSet& reads, const WriteBuffer& writes, uint64_t* version_out);

  RocksDbKvOptions options_;
  std::unique_ptr<rocksdb::DB> db_;
  std::mutex mutex_;  // guards everything below; never held across a RocksDB write
  std::condition_variable applied_;
  uint64_t applied_version_;           // every commit <= this is durable and visible
  uint64_t assigned_version_;          // last version handed to a committer
  uint64_t failed_from_ = UINT64_MAX;  // versions >= this whose group write failed (io error)
  Status failure_;
  bool leader_active_ = false;
  std::vector<Pending> queue_;
  ActiveSnapshots active_;
  ConflictLog log_;
};

RocksTransaction::~RocksTransaction() { engine_.end_transaction(snapshot_version_, snapshot_); }

Result<std::optional<std::string>> RocksTransaction::get(std::string_view key) {
  FF_ASSERT(!finished_, "transaction used after commit");
  FF_ASSERT(!key.empty(), "KV keys must be non-empty");
  reads_.points.emplace_back(key);
  std::string value;
  switch (writes_.lookup(key, &value)) {
    case WriteBuffer::Lookup::kSet: return std::optional<std::string>(std::move(value));
    case WriteBuffer::Lookup::kCleared: return std::optional<std::string>();
    case WriteBuffer::Lookup::kNotBuffered: break;
  }
  rocksdb::ReadOptions read_options;
  read_options.snapshot = snapshot_;
  rocksdb::Status status = engine_.db_->Get(read_options, rocksdb::Slice(key.data(), key.size()), &value);
  if (status.IsNotFound()) return std::optional<std::string>();
  if (!status.ok()) return io_error("rocksdb get '{}': {}", internal::printable_key(key), status.ToString());
  return std::optional<std::string>(std::move(value));
}

Result<std::vector<KeyValue>> RocksTransaction::range(std::string_view begin, std::string_view end, size_t limit) {
  FF_ASSERT(!finished_, "transaction used after commit");
  auto read_page = [this](const std::string& from, std::string_view to, size_t page) -> Result<std::vector<KeyValue>> {
    rocksdb::ReadOptions read_options;
    read_options.snapshot = snapshot_;
    rocksdb::Slice upper(to.data(), to.size());
    if (!to.empty()) read_options.iterate_upper_bound = &upper;
    std::unique_ptr<rocksdb::Iterator> it(engine_.db_->NewIterator(read_options));
    std::vector<KeyValue> rows;
    // The empty key holds the version counter: start at least at "\0".
    std::string start = from.empty() ? std::string(1, '\0') : from;
    for (it->Seek(start); it->Valid() && rows.size() < page; it->Next()) {
      rows.push_back(KeyValue{it->key().ToString(), it->value().ToString()});
    }
    if (!it->status().ok()) {
      return io_error("rocksdb scan from '{}': {}", internal::printable_key(from), it->status().ToString());
    }
    return rows;
  };
  std::string covered_end;
  FF_ASSIGN_OR_RETURN(auto rows, internal::merged_range(writes_, begin, end, limit, read_page, &covered_end));
  reads_.ranges.push_back(KeyRange{std::string(begin), covered_end});
  return rows;
}

Status RocksTransaction::commit() {
  FF_ASSERT(!finished_, "commit() called twice");
  finished_ = true;
  if (writes_.empty()) return Status::ok();
  return engine_.commit(snapshot_version_, reads_, writes_, &committed_version_);
}

Status RocksKv::commit(uint64_t snapshot_version, const ReadSet& reads, const WriteBuffer& writes,
                       uint64_t* version_out) {
  std::unique_lock lock(mutex_);
  FF_RETURN_IF_ERROR(log_.check(snapshot_version, reads));
  uint64_t version = ++assigned_version_;
  Pending pending;
  pending.version = version;
  pending.cleared = writes.cleared_ranges();
  pending.points.assign(writes.points().begin(), writes.points().end());
  int64_t now_ms = system_clock().now_ms();
  log_.add(version, now_ms, writes);
  log_.trim(active_.oldest(applied_version_), now_ms, options_.conflict_window_ms);
  queue_.push_back(std::move(pending));

  if (leader_active_) {
    // A leader is writing an earlier group; it (or the next leader) writes ours.
    bool done = applied_.wait_for(lock, std::chrono::milliseconds(kCommitWaitTimeoutMs),
                                  [&] { return applied_version_ >= version || failed_from_ <= version; });
    if (!done)
      return deadline_exceeded("rocksdb commit of version {} not written after {} ms", version, kCommitWaitTimeoutMs);
    if (applied_version_ >= version) {
      *version_out = version;
      return Status::ok();
    }
    return failure_;
  }
  leader_active_ = true;
  while (!queue_.empty() && failed_from_ == UINT64_MAX) {
    std::vector<Pending> group;
    group.swap(queue_);
    lock.unlock();
    rocksdb::WriteBatch combined;
    for (const auto& item : group) {
      for (const auto& range : item.cleared) {
        // DeleteRange needs a bound: "" (the end of the key space) becomes 16 0xff bytes, beyond every
        // key the meta service writes. The empty key (the version record) is never cleared.
        std::string begin = range.begin.empty() ? std::string(1, '\0') : range.begin;
        std::string end = range.end.empty() ? std::string(16, '\xff') : range.end;
        combined.DeleteRange(begin, end);
      }
      for (const auto& [key, value] : item.points) {
        if (value) {
          combined.Put(key, *value);
        } else {
          combined.Delete(key);
        }
      }
    }
    combined.Put(kVersionKey, encode_u64(group.back().version));
    rocksdb::WriteOptions write_options;
    write_options.sync = options_.sync;
    rocksdb::Status status = db_->Write(write_options, &combined);
    lock.lock();
    if (status.ok()) {
      applied_version_ = group.back().version;
    } else {
      // NOTE: the versions after a failed write would be out of order with it; the engine stops
      // accepting commits (every later commit fails) rather than risk a lost update.
      failed_from_ = group.front().version;
      failure_ = io_error("rocksdb commit of versions {}..{} failed: {}", group.front().version, group.back().version,
                          status.ToString());
    }
    applied_.notify_all();
  }
  leader_active_ = false;
  if (failed_from_ <= version) return failure_;
  if (!queue_.empty()) {
    // A failure stopped the loop: fail the rest of the queue.
    queue_.clear();
  }
  *version_out = version;
  return Status::ok();
}

}  // namespace

Result<std::unique_ptr<KvEngine>> open_rocksdb_kv(const RocksDbKvOptions& options) {
  if (options.path.empty()) return invalid_argument("rocksdb KV path is empty");
  if (options.conflict_window_ms <= 0) {
    return invalid_argument("rocksdb KV conflict_window_ms={} must be positive", options.conflict_window_ms);
  }
  rocksdb::Options db_options;
  db_options.create_if_missing = true;
  db_options.IncreaseParallelism(2);
  rocksdb::DB* raw = nullptr;
  rocksdb::Status status = rocksdb::DB::Open(db_options, options.path, &raw);
  if (!status.ok()) return io_error("open rocksdb KV at '{}': {}", options.path, status.ToString());
  std::unique_ptr<rocksdb::DB> db(raw);
  std::string value;
  uint64_t version = 0;
  status = db->Get(rocksdb::ReadOptions(), kVersionKey, &value);
  if (status.ok()) {
    if (value.size() != 8) {
      return data_loss("rocksdb KV at '{}': version record has {} bytes, expected 8", options.path, value.size());
    }
    version = decode_u64(value);
  } else if (!status.IsNotFound()) {
    return io_error("rocksdb KV at '{}': reading the version: {}", options.path, status.ToString());
  }
  return std::unique_ptr<KvEngine>(new RocksKv(options, std::move(db), version));
}

}  // namespace ff::fs::kv
