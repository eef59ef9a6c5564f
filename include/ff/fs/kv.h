// The transactional key-value interface under the fs metadata service: ordered byte-string keys,
// serializable transactions with optimistic concurrency control (read-set conflict detection at
// commit), commit versions, and run_transaction(), which retries a transaction body on conflict with
// bounded, jittered exponential backoff. Three engines implement it (kv_engines.h): in-memory (tests),
// embedded RocksDB (the default; durable on commit) and etcd v3 (distributed; a Txn comparing mod
// revisions). One conformance suite (tests/fs/meta/kv_conformance_test.cc) holds them to the same
// semantics:
//   - A transaction reads one consistent snapshot of the store (taken at its first read or at begin)
//     plus its own uncommitted writes (read-your-writes, also in range scans).
//   - commit() succeeds only if no key or range the transaction read was written by another
//     transaction that committed after the snapshot; otherwise it returns a conflict (kv_conflict(),
//     StatusCode::kAborted) and applies nothing. Writes that were not read (blind writes) never
//     conflict. A transaction with no writes commits trivially (its snapshot was consistent).
//   - A successful commit is atomic and, for the durable engines, durable when commit() returns.
//   - Keys are non-empty (an empty key is a programmer error). A range end of "" means "to the end of
//     the key space".
//
// Thread-safety: a KvEngine may be used from any number of threads at once; one Transaction object
// must be used by one thread at a time. A Transaction must not outlive the engine that began it.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "ff/common/result.h"
#include "ff/common/status.h"

namespace ff::fs::kv {

struct KeyValue {
  std::string key;
  std::string value;
  friend bool operator==(const KeyValue&, const KeyValue&) = default;
};

class Transaction {
 public:
  virtual ~Transaction() = default;

  // The value of `key`, or nullopt when absent. Adds `key` to the read set.
  virtual Result<std::optional<std::string>> get(std::string_view key) = 0;
  // Keys in [begin, end) in ascending byte order, at most `limit` of them (0: no limit). Adds the
  // range actually covered to the read set (up to the last returned key when the limit was reached),
  // so a key inserted into that range by another transaction is a conflict (no phantoms).
  virtual Result<std::vector<KeyValue>> range(std::string_view begin, std::string_view end, size_t limit) = 0;
  // Buffered until commit; visible to this transaction's later reads.
  virtual void set(std::string_view key, std::string_view value) = 0;
  virtual void clear(std::string_view key) = 0;
  // Clears every key in [begin, end).
  virtual void clear_range(std::string_view begin, std::string_view end) = 0;
  // Adds `key` to the read set without reading it: commit then fails if another transaction wrote it
  // after the snapshot. Lets a writer serialize with writers of a key it does not need to read.
  virtual Status add_read_conflict(std::string_view key) = 0;

  // Applies the buffered writes atomically if nothing read changed since the snapshot. Returns OK,
  // kv_conflict() (nothing applied; run the body again), or another error (I/O, unavailable: the
  // outcome is unknown only for etcd when the error is unavailable/deadline_exceeded). After commit()
  // the transaction must not be used again.
  virtual Status commit() = 0;
  // The version the commit was applied at (engine-wide, increasing with every writing commit; etcd's
  // revision). 0 before a successful commit and for transactions that wrote nothing.
  virtual uint64_t committed_version() const = 0;
  // The snapshot's version (0 while no snapshot has been taken yet).
  virtual uint64_t read_version() const = 0;
};

class KvEngine {
 public:
  virtual ~KvEngine() = default;
  // Starts a transaction. The engine must outlive it.
  virtual Result<std::unique_ptr<Transaction>> begin() = 0;
  // "memory", "rocksdb", "etcd".
  virtual std::string_view name() const = 0;
};

// The conflict error: StatusCode::kAborted with the "[kv_conflict] " prefix and a message naming the
// key or range whose change caused it.
Status kv_conflict(std::string message);
bool is_kv_conflict(const Status& status);

struct RetryOptions {
  uint32_t max_attempts = 64;       // bound on attempts (conflicts and transient errors)
  int64_t initial_backoff_us = 50;  // first backoff; doubles per retry, jittered in [0.5x, 1x]
  int64_t max_backoff_us = 20'000;  // cap of one backoff
  bool retry_unavailable = true;    // also retry unavailable / deadline_exceeded (etcd restarting)
};

// Runs `body` in a fresh transaction and commits it; on a conflict (from commit, or returned by the
// body) retries up to options.max_attempts times with backoff. The body may run several times: it
// must have no side effects outside the transaction, other than resetting what it fills in. A body
// error other than a conflict ends the loop and is returned (the transaction is discarded). After too
// many conflicts returns StatusCode::kAborted naming the attempts and the last conflict.
Status run_transaction(KvEngine& engine, const std::function<Status(Transaction&)>& body,
                       const RetryOptions& options = {});

// The smallest key greater than every key starting with `prefix` ("" when there is none: a prefix of
// only 0xff bytes, and "" as a range end means unbounded), for prefix scans:
// range(prefix, prefix_end(prefix), ...).
std::string prefix_end(std::string_view prefix);

}  // namespace ff::fs::kv
