// The in-memory engine: a multi-version map. Every key keeps its values by commit version; a
// transaction reads the newest version <= its snapshot. Versions no running transaction can read are
// dropped when the key is next written, or, for a key nobody writes again (a deleted one, whose marker
// would otherwise stay forever), once the oldest running snapshot passes the version that left them
// (the garbage queue, collected at every commit and transaction end). Commits are checked against the
// ConflictLog and applied under one mutex (no I/O, so the critical section is short).
#include <algorithm>
#include <deque>
#include <mutex>

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

constexpr int64_t kConflictWindowMs = 10'000;

class MemoryKv;

class MemoryTransaction final : public BufferedTransaction {
 public:
  MemoryTransaction(MemoryKv& engine, uint64_t snapshot) : engine_(engine), snapshot_(snapshot) {}
  ~MemoryTransaction() override;

  Result<std::optional<std::string>> get(std::string_view key) override;
  Result<std::vector<KeyValue>> range(std::string_view begin, std::string_view end, size_t limit) override;
  Status add_read_conflict(std::string_view key) override {
    reads_.points.emplace_back(key);
    return Status::ok();
  }
  Status commit() override;
  uint64_t read_version() const override { return snapshot_; }

 private:
  MemoryKv& engine_;
  uint64_t snapshot_;
  ReadSet reads_;
};

class MemoryKv final : public KvEngine {
 public:
  Result<std::unique_ptr<Transaction>> begin() override {
    std::lock_guard lock(mutex_);
    active_.add(version_);
    return std::unique_ptr<Transaction>(new MemoryTransaction(*this, version_));
  }
  std::string_view name() const override { return "memory"; }

  MemoryKvFootprint footprint() {
    std::lock_guard lock(mutex_);
    MemoryKvFootprint result;
    result.keys = data_.size();
    for (const auto& [key, versions] : data_) {
      result.versions += versions.size();
      for (const auto& version : versions) result.tombstones += version.value ? 0 : 1;
    }
    return result;
  }

 private:
  friend class MemoryTransaction;
  struct Version {
    uint64_t version;
    std::optional<std::string> value;  // nullopt: deleted at this version
  };
  using Versions = std::vector<Version>;  // ascending versions

  // The value visible at `snapshot` (nullptr: absent). Caller holds mutex_.
  static const std::optional<std::string>* visible(const Versions& versions, uint64_t snapshot) {
    for (auto it = versions.rbegin(); it != versions.rend(); ++it) {
      if (it->version <= snapshot) return it->value ? &it->value : nullptr;
    }
    return nullptr;
  }

  void end_transaction(uint64_t snapshot) {
    std::lock_guard lock(mutex_);
    active_.remove(snapshot);
    collect(active_.oldest(version_));
  }

  // Drops the versions of `key` no snapshot >= oldest can see: keeps the newest version <= oldest
  // (what the oldest snapshot sees) and everything after it, and the key itself only while that is
  // more than a deletion marker. Returns whether something is left to drop later. Caller holds mutex_.
  bool prune(const std::string& key, uint64_t oldest) {
    auto it = data_.find(key);
    if (it == data_.end()) return false;
    Versions& versions = it->second;
    size_t keep_from = 0;
    for (size_t i = 0; i < versions.size(); ++i) {
      if (versions[i].version <= oldest) keep_from = i;
    }
    if (keep_from > 0) versions.erase(versions.begin(), versions.begin() + static_cast<ptrdiff_t>(keep_from));
    if (versions.size() == 1 && !versions.front().value && versions.front().version <= oldest) {
      data_.erase(it);
      return false;
    }
    return versions.size() > 1 || !versions.back().value;
  }

  // Appends a version of `key` and prunes it; what a running snapshot still needs waits in the garbage
  // queue for the oldest snapshot to reach `version`. Caller holds mutex_.
  void write_version(const std::string& key, std::optional<std::string> value, uint64_t version, uint64_t oldest) {
    data_[key].push_back(Version{version, std::move(value)});
    if (prune(key, oldest)) garbage_.emplace_back(version, key);
  }

  // Prunes the queued keys whose version the oldest running snapshot has reached (the queue is in
  // commit order, so its front is the oldest). Caller holds mutex_.
  void collect(uint64_t oldest) {
    while (!garbage_.empty() && garbage_.front().first <= oldest) {
      prune(garbage_.front().second, oldest);
      garbage_.pop_front();
    }
  }

  std::mutex mutex_;  // guards everything below
  std::map<std::string, Versions, std::less<>> data_;
  std::deque<std::pair<uint64_t, std::string>> garbage_;  // (version, key), ascending versions
  uint64_t version_ = 0;
  ActiveSnapshots active_;
  ConflictLog log_;
};

MemoryTransaction::~MemoryTransaction() { engine_.end_transaction(snapshot_); }

Result<std::optional<std::string>> MemoryTransaction::get(std::string_view key) {
  FF_ASSERT(!finished_, "transaction used after commit");
  FF_ASSERT(!key.empty(), "KV keys must be non-empty");
  reads_.points.emplace_back(key);
  std::string buffered;
  switch (writes_.lookup(key, &buffered)) {
    case WriteBuffer::Lookup::kSet: return std::optional<std::string>(std::move(buffered));
    case WriteBuffer::Lookup::kCleared: return std::optional<std::string>();
    case WriteBuffer::Lookup::kNotBuffered: break;
  }
  std::lock_guard lock(engine_.mutex_);
  auto it = engine_.data_.find(key);
  if (it == engine_.data_.end()) return std::optional<std::string>();
  const auto* value = MemoryKv::visible(it->second, snapshot_);
  return value ? std::optional<std::string>(**value) : std::optional<std::string>();
}

Result<std::vector<KeyValue>> MemoryTransaction::range(std::string_view begin, std::string_view end, size_t limit) {
  FF_ASSERT(!finished_, "transaction used after commit");
  auto read_page = [this](const std::string& from, std::string_view to, size_t page) -> Result<std::vector<KeyValue>> {
    std::vector<KeyValue> rows;
    std::lock_guard lock(engine_.mutex_);
    for (auto it = engine_.data_.lower_bound(from); it != engine_.data_.end() && rows.size() < page; ++it) {
      if (!to.empty() && it->first >= to) break;
      const auto* value = MemoryKv::visible(it->second, snapshot_);
      if (value) rows.push_back(KeyValue{it->first, **value});
    }
    return rows;
  };
  std::string covered_end;
  FF_ASSIGN_OR_RETURN(auto rows, internal::merged_range(writes_, begin, end, limit, read_page, &covered_end));
  reads_.ranges.push_back(KeyRange{std::string(begin), covered_end});
  return rows;
}

Status MemoryTransaction::commit() {
  FF_ASSERT(!finished_, "commit() called twice");
  finished_ = true;
  if (writes_.empty()) return Status::ok();
  std::lock_guard lock(engine_.mutex_);
  FF_RETURN_IF_ERROR(engine_.log_.check(snapshot_, reads_));
  uint64_t version = ++engine_.version_;
  uint64_t oldest = engine_.active_.oldest(engine_.version_);
  for (const auto& range : writes_.cleared_ranges()) {
    auto first = engine_.data_.lower_bound(range.begin);
    auto last = range.end.empty() ? engine_.data_.end() : engine_.data_.lower_bound(range.end);
    std::vector<std::string> keys;
    for (auto it = first; it != last; ++it) keys.push_back(it->first);
    for (const auto& key : keys) engine_.write_version(key, std::nullopt, version, oldest);
  }
  for (const auto& [key, value] : writes_.points()) engine_.write_version(key, value, version, oldest);
  engine_.collect(oldest);
  int64_t now_ms = system_clock().now_ms();
  engine_.log_.add(version, now_ms, writes_);
  engine_.log_.trim(oldest, now_ms, kConflictWindowMs);
  committed_version_ = version;
  return Status::ok();
}

}  // namespace

std::unique_ptr<KvEngine> open_memory_kv() { return std::make_unique<MemoryKv>(); }

MemoryKvFootprint memory_kv_footprint(KvEngine& engine) {
  auto* memory = dynamic_cast<MemoryKv*>(&engine);
  FF_ASSERT(memory != nullptr, "memory_kv_footprint of a '{}' engine; expected one from open_memory_kv()",
            engine.name());
  return memory->footprint();
}

}  // namespace ff::fs::kv
