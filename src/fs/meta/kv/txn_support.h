// Pieces shared by the KV engines: a transaction's write buffer (read-your-writes), its read set, the
// merge of buffered writes into a store range scan, and the in-process conflict log used by the memory
// and RocksDB engines.
//
// Thread-safety: WriteBuffer and ReadSet belong to one transaction (one thread at a time);
// ConflictLog is not synchronized: its engine guards it with the engine's commit mutex.
#pragma once

#include <cstdint>
#include <deque>
#include <functional>
#include <map>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "ff/common/result.h"
#include "ff/fs/kv.h"

namespace ff::fs::kv::internal {

// True when `key` lies in [begin, end) ("" end: unbounded).
inline bool in_range(std::string_view key, std::string_view begin, std::string_view end) {
  return key >= begin && (end.empty() || key < end);
}
// True when [a_begin, a_end) and [b_begin, b_end) share a key.
inline bool ranges_overlap(std::string_view a_begin, std::string_view a_end, std::string_view b_begin,
                           std::string_view b_end) {
  bool a_before_b_ends = b_end.empty() || a_begin < b_end;
  bool b_before_a_ends = a_end.empty() || b_begin < a_end;
  return a_before_b_ends && b_before_a_ends;
}

struct KeyRange {
  std::string begin;
  std::string end;  // "" = unbounded
};

// Buffered writes of one transaction. A clear_range drops earlier point writes in it; later point
// writes win over it. Applying = every cleared range first, then every point write.
class WriteBuffer {
 public:
  void set(std::string_view key, std::string_view value);
  void clear(std::string_view key);
  void clear_range(std::string_view begin, std::string_view end);

  enum class Lookup { kNotBuffered, kSet, kCleared };
  // For kSet, *value is the buffered value.
  Lookup lookup(std::string_view key, std::string* value) const;
  // True when the store's `key` is hidden by a buffered write (point or range).
  bool hides(std::string_view key) const;

  bool empty() const { return points_.empty() && cleared_.empty(); }
  const std::map<std::string, std::optional<std::string>, std::less<>>& points() const { return points_; }
  const std::vector<KeyRange>& cleared_ranges() const { return cleared_; }
  size_t op_count() const { return points_.size() + cleared_.size(); }

 private:
  std::map<std::string, std::optional<std::string>, std::less<>> points_;  // nullopt: cleared key
  std::vector<KeyRange> cleared_;
};

struct ReadSet {
  std::vector<std::string> points;
  std::vector<KeyRange> ranges;
  bool empty() const { return points.empty() && ranges.empty(); }
};

// A store page reader: keys in [begin, end) ascending, at most limit (> 0).
using PageReader =
    std::function<Result<std::vector<KeyValue>>(const std::string& begin, std::string_view end, size_t limit)>;

// A range scan of the store overlaid with the buffer: store keys hidden by buffered writes are
// skipped (reading further pages as needed), buffered sets in the range are merged in. Returns at most
// `limit` (0: all) pairs ascending, and sets *covered_end to the end of the key range the answer covers
// (the key after the last returned one when the limit cut the answer short, else `end`).
Result<std::vector<KeyValue>> merged_range(const WriteBuffer& buffer, std::string_view begin, std::string_view end,
                                           size_t limit, const PageReader& read_page, std::string* covered_end);

// The write sets of recent commits, by commit version, for optimistic conflict checks: a transaction
// with snapshot version V conflicts when an entry with version > V wrote a key in its read set.
// Entries no running transaction can need are trimmed; a transaction whose snapshot is older than
// the trimmed horizon conflicts ("too old").
class ConflictLog {
 public:
  struct Entry {
    uint64_t version = 0;
    int64_t time_ms = 0;
    std::vector<std::string> keys;  // sorted
    std::vector<KeyRange> ranges;
  };
  // OK or kv_conflict naming the key/range.
  Status check(uint64_t read_version, const ReadSet& reads) const;
  void add(uint64_t version, int64_t time_ms, const WriteBuffer& writes);
  // Drops entries with version <= oldest_needed_version, and (bounding memory when a transaction is
  // left open) entries older than now_ms - window_ms.
  void trim(uint64_t oldest_needed_version, int64_t now_ms, int64_t window_ms);
  size_t size() const { return entries_.size(); }

 private:
  std::deque<Entry> entries_;
  uint64_t horizon_ = 0;  // every entry with version <= horizon_ was dropped
};

// Tracks the snapshot versions of running transactions (a multiset), for trimming.
class ActiveSnapshots {
 public:
  void add(uint64_t version) { ++counts_[version]; }
  void remove(uint64_t version);
  // The oldest running snapshot, or `fallback` when none runs.
  uint64_t oldest(uint64_t fallback) const { return counts_.empty() ? fallback : counts_.begin()->first; }

 private:
  std::map<uint64_t, uint32_t> counts_;
};

// Human-readable key for messages: printable ASCII kept, other bytes as \xNN, cut at 80 characters.
std::string printable_key(std::string_view key);

// What every engine's transaction shares: buffered writes (read-your-writes), the finished flag and the
// commit version. Engines add their read tracking and implement get, range, add_read_conflict and commit.
class BufferedTransaction : public Transaction {
 public:
  void set(std::string_view key, std::string_view value) override { writes_.set(key, value); }
  void clear(std::string_view key) override { writes_.clear(key); }
  void clear_range(std::string_view begin, std::string_view end) override { writes_.clear_range(begin, end); }
  uint64_t committed_version() const override { return committed_version_; }

 protected:
  WriteBuffer writes_;
  bool finished_ = false;
  uint64_t committed_version_ = 0;
};

}  // namespace ff::fs::kv::internal
