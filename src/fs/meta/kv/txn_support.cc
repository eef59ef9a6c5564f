#include "txn_support.h"

#include <algorithm>
#include <chrono>
#include <random>
#include <thread>

#include <fmt/format.h>

#include "ff/common/assert.h"

namespace ff::fs::kv {

Status kv_conflict(std::string message) { return Status(StatusCode::kAborted, "[kv_conflict] " + message); }

bool is_kv_conflict(const Status& status) {
  return status.code() == StatusCode::kAborted && status.message().starts_with("[kv_conflict]");
}

std::string prefix_end(std::string_view prefix) {
  std::string end(prefix);
  while (!end.empty()) {
    auto last = static_cast<unsigned char>(end.back());
    if (last < 0xff) {
      end.back() = static_cast<char>(last + 1);
      return end;
    }
    end.pop_back();
  }
  return end;  // "": unbounded
}

Status run_transaction(KvEngine& engine, const std::function<Status(Transaction&)>& body, const RetryOptions& options) {
  FF_ASSERT(options.max_attempts > 0);
  // Jitter keeps colliding transactions from retrying in lock step; seeded per thread.
  thread_local std::minstd_rand random(static_cast<uint32_t>(std::hash<std::thread::id>()(std::this_thread::get_id())));
  int64_t backoff_us = options.initial_backoff_us;
  Status last;
  for (uint32_t attempt = 1; attempt <= options.max_attempts; ++attempt) {
    Status status;
    {
      auto transaction = engine.begin();
      if (transaction.is_ok()) {
        status = body(**transaction);
        if (status.is_ok()) status = (*transaction)->commit();
      } else {
        status = transaction.status();
      }
    }
    if (status.is_ok()) return status;
    bool transient = status.code() == StatusCode::kUnavailable || status.code() == StatusCode::kDeadlineExceeded;
    if (!is_kv_conflict(status) && !(transient && options.retry_unavailable)) return status;
    last = status;
    if (attempt == options.max_attempts) break;
    int64_t sleep_us = backoff_us / 2 + static_cast<int64_t>(random() % static_cast<uint32_t>(backoff_us / 2 + 1));
    std::this_thread::sleep_for(std::chrono::microseconds(sleep_us));
    backoff_us = std::min(backoff_us * 2, options.max_backoff_us);
  }
  return aborted("{} transaction gave up after {} attempts; last error: {}", engine.name(), options.max_attempts,
                 last.to_string());
}

namespace internal {

std::string printable_key(std::string_view key) {
  std::string out;
  for (char c : key) {
    if (out.size() >= 80) {
      out += "...";
      break;
    }
    auto byte = static_cast<unsigned char>(c);
    if (byte >= 0x20 && byte < 0x7f && byte != '\\') {
      out.push_back(c);
    } else {
      out += fmt::format("\\x{:02x}", byte);
    }
  }
  return out;
}

void WriteBuffer::set(std::string_view key, std::string_view value) {
  FF_ASSERT(!key.empty(), "KV keys must be non-empty");
  auto it = points_.find(key);
  if (it == points_.end()) {
    points_.emplace(std::string(key), std::string(value));
  } else {
    it->second = std::string(value);
  }
}

void WriteBuffer::clear(std::string_view key) {
  FF_ASSERT(!key.empty(), "KV keys must be non-empty");
  auto it = points_.find(key);
  if (it == points_.end()) {
    points_.emplace(std::string(key), std::nullopt);
  } else {
    it->second.reset();
  }
}

void WriteBuffer::clear_range(std::string_view begin, std::string_view end) {
  if (!end.empty() && end <= begin) return;
  auto first = points_.lower_bound(begin);
  auto last = end.empty() ? points_.end() : points_.lower_bound(end);
  points_.erase(first, last);
  cleared_.push_back(KeyRange{std::string(begin), std::string(end)});
}

WriteBuffer::Lookup WriteBuffer::lookup(std::string_view key, std::string* value) const {
  auto it = points_.find(key);
  if (it != points_.end()) {
    if (!it->second) return Lookup::kCleared;
    *value = *it->second;
    return Lookup::kSet;
  }
  for (const auto& range : cleared_) {
    if (in_range(key, range.begin, range.end)) return Lookup::kCleared;
  }
  return Lookup::kNotBuffered;
}

bool WriteBuffer::hides(std::string_view key) const {
  if (points_.contains(key)) return true;
  for (const auto& range : cleared_) {
    if (in_range(key, range.begin, range.end)) return true;
  }
  return false;
}

Result<std::vector<KeyValue>> merged_range(const WriteBuffer& buffer, std::string_view begin, std::string_view end,
                                           size_t limit, const PageReader& read_page, std::string* covered_end) {
  std::vector<KeyValue> from_store;
  bool store_done = false;
  std::string cursor(begin);
  std::string last_fetched;
  // Read pages until `limit` visible store keys are collected or the store range is exhausted. Each page
  // asks for the shortfall plus the buffered keys that might hide some of it.
  while (!store_done && (limit == 0 || from_store.size() < limit)) {
    size_t page = limit == 0 ? 1024 : limit - from_store.size() + std::min<size_t>(buffer.op_count(), 1024);
    FF_ASSIGN_OR_RETURN(std::vector<KeyValue> rows, read_page(cursor, end, page));
    if (rows.size() < page) store_done = true;
    for (auto& row : rows) {
      last_fetched = row.key;
      if (!buffer.hides(row.key)) from_store.push_back(std::move(row));
    }
    if (!rows.empty()) cursor = last_fetched + std::string(1, '\0');
  }
  std::vector<KeyValue> merged;
  merged.reserve(from_store.size());
  auto point = buffer.points().lower_bound(begin);
  auto store = from_store.begin();
  while (true) {
    // Buffered sets beyond the last fetched store key are only valid when the store had nothing more.
    while (point != buffer.points().end() && !point->second) ++point;
    bool point_ok = point != buffer.points().end() && in_range(point->first, begin, end) &&
                    (store_done || point->first <= last_fetched);
    bool store_ok = store != from_store.end();
    if (!point_ok && !store_ok) break;
    if (point_ok && (!store_ok || point->first < store->key)) {
      merged.push_back(KeyValue{point->first, *point->second});
      ++point;
    } else {
      merged.push_back(std::move(*store));
      ++store;
    }
    if (limit != 0 && merged.size() == limit) break;
  }
  if (limit != 0 && merged.size() == limit) {
    *covered_end = merged.back().key + std::string(1, '\0');
  } else {
    *covered_end = std::string(end);
  }
  return merged;
}

Status ConflictLog::check(uint64_t read_version, const ReadSet& reads) const {
  if (read_version < horizon_) {
    return kv_conflict(fmt::format("transaction too old: snapshot version {} is before the conflict horizon {}",
                                   read_version, horizon_));
  }
  // NOTE: newest entries last; walk back only over commits newer than the snapshot.
  for (auto it = entries_.rbegin(); it != entries_.rend() && it->version > read_version; ++it) {
    for (const auto& key : reads.points) {
      if (std::binary_search(it->keys.begin(), it->keys.end(), key)) {
        return kv_conflict(fmt::format("key '{}' read at version {} was written at version {}", printable_key(key),
                                       read_version, it->version));
      }
      for (const auto& range : it->ranges) {
        if (in_range(key, range.begin, range.end)) {
          return kv_conflict(fmt::format("key '{}' read at version {} was cleared at version {}", printable_key(key),
                                         read_version, it->version));
        }
      }
    }
    for (const auto& range : reads.ranges) {
      auto first = std::lower_bound(it->keys.begin(), it->keys.end(), range.begin);
      if (first != it->keys.end() && in_range(*first, range.begin, range.end)) {
        return kv_conflict(fmt::format("range ['{}', '{}') read at version {} had key '{}' written at version {}",
                                       printable_key(range.begin), printable_key(range.end), read_version,
                                       printable_key(*first), it->version));
      }
      for (const auto& cleared : it->ranges) {
        if (ranges_overlap(range.begin, range.end, cleared.begin, cleared.end)) {
          return kv_conflict(fmt::format("range ['{}', '{}') read at version {} was cleared at version {}",
                                         printable_key(range.begin), printable_key(range.end), read_version,
                                         it->version));
        }
      }
    }
  }
  return Status::ok();
}

void ConflictLog::add(uint64_t version, int64_t time_ms, const WriteBuffer& writes) {
  FF_ASSERT(entries_.empty() || entries_.back().version < version, "commit versions must increase");
  Entry entry;
  entry.version = version;
  entry.time_ms = time_ms;
  entry.keys.reserve(writes.points().size());
  for (const auto& [key, value] : writes.points()) entry.keys.push_back(key);  // std::map: already sorted
  entry.ranges = writes.cleared_ranges();
  entries_.push_back(std::move(entry));
}

void ConflictLog::trim(uint64_t oldest_needed_version, int64_t now_ms, int64_t window_ms) {
  while (!entries_.empty() &&
         (entries_.front().version <= oldest_needed_version || entries_.front().time_ms < now_ms - window_ms)) {
    horizon_ = std::max(horizon_, entries_.front().version);
    entries_.pop_front();
  }
}

void ActiveSnapshots::remove(uint64_t version) {
  auto it = counts_.find(version);
  FF_ASSERT(it != counts_.end(), "snapshot {} is not active", version);
  if (--it->second == 0) counts_.erase(it);
}

}  // namespace internal
}  // namespace ff::fs::kv
