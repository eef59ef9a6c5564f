// KvCache: a cache of byte blobs (e.g. an inference engine's KV-cache blocks) stored as files of the
// fs, keyed by token-prefix hashes (issue #6 item 5). See docs/fs-client.md, "KV cache".
//
//   auto keys = prefix_hashes(tokens, 64);                 // one key per full block of 64 tokens
//   auto cache = KvCache::open(client, {.root = "/kvcache", .capacity_bytes = 64ull << 30});
//   FF_RETURN_IF_ERROR((*cache)->put(keys[0], block0_bytes));
//   auto blocks = (*cache)->get_batch(keys);               // one batched read for all hits
//
// Layout: entry `key` is the file <root>/<dd>/<32 hex digits of key>, dd = two hex digits of the key's
// top byte modulo `fanout` (fan-out keeps directories small). A put writes a temporary file in the
// same directory and renames it over the name, so a reader sees the old or the new value, never a mix.
//
// Eviction (a background thread every eviction_interval_ms): entries older than ttl_ms since their put
// are removed (and a get of one is a miss); when the bytes this instance knows of exceed capacity_bytes,
// the least recently used (get or put) entries are removed until evict_to * capacity_bytes remain.
// Access times live in memory; at open the index is rebuilt from the directory (access time = file
// mtime, i.e. the put), so an LRU order survives a restart only as put order. Several instances may
// share a root (each evicts what its own index holds; a get finds entries put by any of them); they
// should then share one capacity policy.
//
// Thread-safety: every method may be called from any thread. `client` must outlive the cache.
#pragma once

#include <compare>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "ff/common/result.h"
#include "ff/fs/file_client.h"
#include "ff/fs/meta.h"

namespace ff::fs {

// A 128-bit key. hex(): 32 lowercase hex digits (hi then lo), the entry's file name.
struct KvCacheKey {
  uint64_t hi = 0;
  uint64_t lo = 0;
  std::string hex() const;
  // Parses 32 hex digits; invalid_argument naming the text otherwise.
  static Result<KvCacheKey> from_hex(std::string_view text);
  friend auto operator<=>(const KvCacheKey&, const KvCacheKey&) = default;
};

// Keys of the prefixes of a token sequence, one per full block of block_tokens tokens, chained like
// vLLM's prefix-caching block hashes: key[i] = H(key[i-1], block_tokens, extra, tokens of block i),
// key[-1] = parent (zero for a sequence's start). Equal prefixes give equal keys, and a key names its
// whole prefix, not only its block. A partial last block gets no key. `extra` separates namespaces
// (model, LoRA, cache dtype). H is a 128-bit non-cryptographic hash (64-bit multiply-xorshift lanes):
// fine against accidental collisions, not against adversarial ones. block_tokens must be >= 1.
std::vector<KvCacheKey> prefix_hashes(std::span<const int32_t> tokens, size_t block_tokens, KvCacheKey parent = {},
                                      uint64_t extra = 0);

struct KvCacheConfig {
  std::string root = "/kvcache";  // absolute directory path in the fs; created with parents if missing
  uint32_t fanout = 256;          // subdirectories (1..256)
  uint64_t capacity_bytes = 0;    // 0: unlimited
  double evict_to = 0.9;          // capacity eviction stops at this fraction of capacity_bytes
  int64_t ttl_ms = 0;             // 0: entries never expire
  int64_t eviction_interval_ms = 1'000;
  bool index_existing = true;  // at open, index the entries already under root
  // The temporaries of puts older than this are removed (a put that crashed before its rename leaves
  // one): at open (with index_existing) and by the background thread every temp_sweep_interval_ms;
  // younger ones may belong to a live instance's put. 0: keep them.
  int64_t stale_temp_ms = 600'000;
  int64_t temp_sweep_interval_ms = 600'000;  // 0: only at open
  uint32_t mode = 0644;        // of entry files (directories: 0755)
  meta::Caller caller;         // who reads and writes (uid 0 by default)
};

class KvCache {
 public:
  static Result<std::unique_ptr<KvCache>> open(FileClient& client, KvCacheConfig config);
  ~KvCache();
  KvCache(const KvCache&) = delete;
  KvCache& operator=(const KvCache&) = delete;

  // Stores value under key, replacing an existing value atomically.
  Status put(const KvCacheKey& key, std::span<const std::byte> value);
  // The value, or a miss: not_found tagged [ENOENT] (also for an expired entry).
  Result<std::vector<std::byte>> get(const KvCacheKey& key);
  // get() of many keys: the files are looked up and opened, then all read in one
  // FileClient::read_batch; results in key order.
  std::vector<Result<std::vector<std::byte>>> get_batch(std::span<const KvCacheKey> keys);
  // Removes the entry; false when there was none.
  Result<bool> remove(const KvCacheKey& key);
  // One eviction pass now (the background thread runs the same); returns the entries removed.
  Result<size_t> evict_now();

  struct Stats {
    uint64_t hits = 0;
    uint64_t misses = 0;
    uint64_t puts = 0;
    uint64_t evictions = 0;    // removed for capacity
    uint64_t expirations = 0;  // removed for age (ttl)
    uint64_t bytes = 0;        // bytes of the entries in this instance's index
    uint64_t entries = 0;
    uint64_t temporaries_removed = 0;  // stale temporaries of crashed puts, removed at open or by the sweep
  };
  Stats stats() const;

 private:
  struct Impl;
  explicit KvCache(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

}  // namespace ff::fs
