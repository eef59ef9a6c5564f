// KvCache (include/ff/fs/kvcache.h): byte blobs as files under a fan-out directory tree, an in-memory
// LRU index, and a background evictor.
//
// Lock order: Impl::mutex guards the index and stats; no meta or storage call is made while it is held.
#include "ff/fs/kvcache.h"

#include <atomic>
#include <cerrno>
#include <chrono>
#include <condition_variable>
#include <list>
#include <mutex>
#include <thread>
#include <unordered_map>

#include "ff/common/assert.h"
#include "ff/common/log.h"

namespace ff::fs {

namespace {

using meta::errno_of;
using meta::meta_error;

uint64_t mix64(uint64_t x) {
  x ^= x >> 33;
  x *= 0xff51afd7ed558ccdull;
  x ^= x >> 33;
  x *= 0xc4ceb9fe1a85ec53ull;
  x ^= x >> 33;
  return x;
}

uint64_t rotl(uint64_t x, int r) { return (x << r) | (x >> (64 - r)); }

// Two 64-bit lanes, each word mixed into both with different constants, finished by a cross-mix.
class Hasher128 {
 public:
  void add(uint64_t word) {
    a_ = rotl(a_ ^ mix64(word + 0x9e3779b97f4a7c15ull), 27) * 0x87c37b91114253d5ull + 0x52dce729;
    b_ = rotl(b_ ^ mix64(word ^ 0x4cf5ad432745937full), 31) * 0x4cf5ad432745937full + 0x38495ab5;
    ++count_;
  }
  KvCacheKey finish() const {
    uint64_t a = a_ ^ count_, b = b_ ^ (count_ * 0x9e3779b97f4a7c15ull);
    a += b;
    b += a;
    return KvCacheKey{mix64(a), mix64(b ^ 0xd6e8feb86659fd93ull)};
  }

 private:
  uint64_t a_ = 0x6a09e667f3bcc908ull;
  uint64_t b_ = 0xbb67ae8584caa73bull;
  uint64_t count_ = 0;
};

int64_t wall_now_ns() {
  return std::chrono::duration_cast<std::chrono::nanoseconds>(std::chrono::system_clock::now().time_since_epoch())
      .count();
}

struct KeyHash {
  size_t operator()(const KvCacheKey& key) const { return static_cast<size_t>(key.hi ^ mix64(key.lo)); }
};

}  // namespace

std::string KvCacheKey::hex() const { return fmt::format("{:016x}{:016x}", hi, lo); }

Result<KvCacheKey> KvCacheKey::from_hex(std::string_view text) {
  if (text.size() != 32)
    return invalid_argument("KV cache key '{}' has {} characters, expected 32 hex digits", text, text.size());
  KvCacheKey key;
  for (size_t i = 0; i < 32; ++i) {
    char c = text[i];
    uint64_t digit;
    if (c >= '0' && c <= '9') {
      digit = c - '0';
    } else if (c >= 'a' && c <= 'f') {
      digit = c - 'a' + 10;
    } else if (c >= 'A' && c <= 'F') {
      digit = c - 'A' + 10;
    } else {
      return invalid_argument("KV cache key '{}' has a non-hex character at {}", text, i);
    }
    uint64_t& half = i < 16 ? key.hi : key.lo;
    half = (half << 4) | digit;
  }
  return key;
}

std::vector<KvCacheKey> prefix_hashes(std::span<const int32_t> tokens, size_t block_tokens, KvCacheKey parent,
                                      uint64_t extra) {
  FF_ASSERT_GE(block_tokens, 1u, "prefix_hashes needs a block of at least one token");
  std::vector<KvCacheKey> keys;
  keys.reserve(tokens.size() / block_tokens);
  for (size_t begin = 0; begin + block_tokens <= tokens.size(); begin += block_tokens) {
    Hasher128 hasher;
    hasher.add(parent.hi);
    hasher.add(parent.lo);
    hasher.add(block_tokens);
    hasher.add(extra);
    for (size_t i = begin; i < begin + block_tokens; ++i) hasher.add(static_cast<uint32_t>(tokens[i]));
    parent = hasher.finish();
    keys.push_back(parent);
  }
  return keys;
}

struct KvCache::Impl {
  FileClient& client;
  meta::MetaApi& meta;
  KvCacheConfig config;
  meta::InodeId root = 0;
  std::vector<std::atomic<meta::InodeId>> dirs;  // subdirectory inodes (0: not known yet)
  std::atomic<uint64_t> temp_counter{0};

  struct Entry {
    uint64_t bytes = 0;
    int64_t put_ns = 0;  // wall clock
    std::list<KvCacheKey>::iterator lru;
  };
  mutable std::mutex mutex;  // guards index, lru, stats
  std::unordered_map<KvCacheKey, Entry, KeyHash> index;
  std::list<KvCacheKey> lru;  // front: most recently used
  Stats stats;

  std::mutex thread_mutex;  // guards stopping
  std::condition_variable wake;
  bool stopping = false;
  std::thread evictor;

  Impl(FileClient& c, KvCacheConfig cfg) : client(c), meta(c.meta()), config(std::move(cfg)), dirs(config.fanout) {}

  size_t dir_index(const KvCacheKey& key) const { return (key.hi >> 56) % config.fanout; }
  std::string dir_name(size_t index) const { return fmt::format("{:02x}", index); }

  Result<meta::InodeId> ensure_dir(meta::InodeId parent, const std::string& name) {
    Result<meta::Inode> made = meta.mkdir(config.caller, parent, name, 0755);
    if (made.is_ok()) return made->id;
    if (errno_of(made.status()) != EEXIST) return made.status();
    FF_ASSIGN_OR_RETURN(meta::Inode found, meta.lookup(config.caller, parent, name));
    if (found.type != meta::FileType::kDirectory) {
      return meta_error(ENOTDIR,
                        fmt::format("KV cache path component '{}' is a {}", name, meta::file_type_name(found.type)));
    }
    return found.id;
  }

  Result<meta::InodeId> dir_of(const KvCacheKey& key) {
    size_t index = dir_index(key);
    meta::InodeId known = dirs[index].load(std::memory_order_acquire);
    if (known != 0) return known;
    FF_ASSIGN_OR_RETURN(meta::InodeId id, ensure_dir(root, dir_name(index)));
    dirs[index].store(id, std::memory_order_release);
    return id;
  }

  void touch(const KvCacheKey& key, uint64_t bytes, int64_t put_ns, bool is_put) {
    std::lock_guard lock(mutex);
    auto it = index.find(key);
    if (it == index.end()) {
      lru.push_front(key);
      index.emplace(key, Entry{bytes, put_ns, lru.begin()});
      stats.bytes += bytes;
      return;
    }
    lru.splice(lru.begin(), lru, it->second.lru);
    if (is_put) {
      stats.bytes = stats.bytes - it->second.bytes + bytes;
      it->second.bytes = bytes;
      it->second.put_ns = put_ns;
    }
  }

  void forget(const KvCacheKey& key) {
    std::lock_guard lock(mutex);
    auto it = index.find(key);
    if (it == index.end()) return;
    stats.bytes -= it->second.bytes;
    lru.erase(it->second.lru);
    index.erase(it);
  }

  bool expired(int64_t put_ns, int64_t now_ns) const {
    return config.ttl_ms > 0 && now_ns - put_ns > config.ttl_ms * 1'000'000;
  }

  static int64_t put_time(const meta::Inode& inode) { return std::max(inode.ctime_ns, inode.mtime_ns); }

  Status put(const KvCacheKey& key, std::span<const std::byte> value) {
    FF_ASSIGN_OR_RETURN(meta::InodeId dir, dir_of(key));
    std::string name = key.hex();
    std::string temp = fmt::format("{}.tmp-{:x}-{}", name, client.client_id(), temp_counter.fetch_add(1));
    FF_ASSIGN_OR_RETURN(FileHandle fh, client.create(config.caller, dir, temp, config.mode, meta::kOpenWrite));
    Status written = Status::ok();
    if (!value.empty()) {
      Result<size_t> n = client.write(fh, 0, value);
      if (!n.is_ok()) written = n.status();
    }
    Status closed = client.close(fh);
    if (written.is_ok()) written = closed;
    if (written.is_ok()) written = meta.rename(config.caller, dir, temp, dir, name);
    if (!written.is_ok()) {
      (void)meta.unlink(config.caller, dir, temp);
      return written;
    }
    touch(key, value.size(), wall_now_ns(), true);
    std::lock_guard lock(mutex);
    ++stats.puts;
    return Status::ok();
  }

  // Looks the entry up and opens it: the handle and its length, or a miss (ENOENT).
  Result<std::pair<FileHandle, uint64_t>> open_entry(const KvCacheKey& key) {
    FF_ASSIGN_OR_RETURN(meta::InodeId dir, dir_of(key));
    FF_ASSIGN_OR_RETURN(meta::Inode inode, meta.lookup(config.caller, dir, key.hex()));
    if (expired(put_time(inode), wall_now_ns())) {
      return meta_error(ENOENT, fmt::format("KV cache entry {} expired", key.hex()));
    }
    FF_ASSIGN_OR_RETURN(FileHandle fh, client.open(config.caller, inode.id, meta::kOpenRead));
    Result<meta::Inode> opened = client.stat(fh);
    if (!opened.is_ok()) {
      (void)client.close(fh);
      return opened.status();
    }
    // An entry put by another instance joins this index with its put time.
    {
      std::lock_guard lock(mutex);
      if (!index.count(key)) {
        lru.push_front(key);
        index.emplace(key, Entry{opened->length, put_time(inode), lru.begin()});
        stats.bytes += opened->length;
      }
    }
    return std::make_pair(fh, opened->length);
  }

  void count(bool hit) {
    std::lock_guard lock(mutex);
    ++(hit ? stats.hits : stats.misses);
  }

  std::vector<Result<std::vector<std::byte>>> get_batch(std::span<const KvCacheKey> keys) {
    std::vector<Result<std::vector<std::byte>>> results(keys.size(),
                                                        Result<std::vector<std::byte>>(std::vector<std::byte>{}));
    std::vector<FileHandle> handles(keys.size(), 0);
    std::vector<FileClient::ReadOp> reads;
    std::vector<size_t> read_key;
    for (size_t i = 0; i < keys.size(); ++i) {
      auto opened = open_entry(keys[i]);
      if (!opened.is_ok()) {
        results[i] = opened.status();
        continue;
      }
      handles[i] = opened->first;
      results[i]->resize(opened->second);
      reads.push_back(FileClient::ReadOp{opened->first, 0, std::span<std::byte>(*results[i])});
      read_key.push_back(i);
    }
    auto done = client.read_batch(reads);
    for (size_t r = 0; r < reads.size(); ++r) {
      size_t i = read_key[r];
      if (!done[r].is_ok()) {
        results[i] = done[r].status();
      } else {
        results[i]->resize(*done[r]);
      }
    }
    for (size_t i = 0; i < keys.size(); ++i) {
      if (handles[i] != 0) {
        Status closed = client.close(handles[i]);
        if (!closed.is_ok()) FF_LOG_DEBUG("kv cache: close of entry {}: {}", keys[i].hex(), closed);
      }
      if (results[i].is_ok()) {
        int64_t put_ns;
        {
          std::lock_guard lock(mutex);
          auto it = index.find(keys[i]);
          put_ns = it != index.end() ? it->second.put_ns : wall_now_ns();
        }
        touch(keys[i], results[i]->size(), put_ns, false);
        count(true);
      } else {
        if (errno_of(results[i].status()) == ENOENT) {
          forget(keys[i]);
          results[i] = meta_error(ENOENT, fmt::format("KV cache miss: {}", keys[i].hex()));
        }
        count(false);
      }
    }
    return results;
  }

  Result<bool> remove(const KvCacheKey& key) {
    FF_ASSIGN_OR_RETURN(meta::InodeId dir, dir_of(key));
    Status removed = meta.unlink(config.caller, dir, key.hex());
    forget(key);
    if (removed.is_ok()) return true;
    if (errno_of(removed) == ENOENT) return false;
    return removed;
  }

  Result<size_t> evict_now() {
    int64_t now = wall_now_ns();
    std::vector<std::pair<KvCacheKey, bool>> victims;  // (key, for capacity)
    {
      std::lock_guard lock(mutex);
      uint64_t remaining = stats.bytes;
      if (config.ttl_ms > 0) {
        for (auto& [key, entry] : index) {
          if (expired(entry.put_ns, now)) {
            victims.emplace_back(key, false);
            remaining -= entry.bytes;
          }
        }
      }
      if (config.capacity_bytes > 0 && remaining > config.capacity_bytes) {
        uint64_t target = static_cast<uint64_t>(config.evict_to * static_cast<double>(config.capacity_bytes));
        for (auto it = lru.rbegin(); it != lru.rend() && remaining > target; ++it) {
          const Entry& entry = index.at(*it);
          if (expired(entry.put_ns, now)) continue;  // already a victim
          victims.emplace_back(*it, true);
          remaining -= entry.bytes;
        }
      }
    }
    size_t removed = 0;
    Status first_error = Status::ok();
    for (auto& [key, capacity] : victims) {
      auto gone = remove(key);
      if (!gone.is_ok()) {
        if (first_error.is_ok()) first_error = gone.status();
        continue;
      }
      ++removed;
      std::lock_guard lock(mutex);
      ++(capacity ? stats.evictions : stats.expirations);
    }
    if (!first_error.is_ok() && removed == 0) return first_error;
    return removed;
  }

  void evictor_loop() {
    std::unique_lock lock(thread_mutex);
    int64_t next_sweep_ns = wall_now_ns() + config.temp_sweep_interval_ms * 1'000'000;
    while (!stopping) {
      wake.wait_for(lock, std::chrono::milliseconds(config.eviction_interval_ms), [&] { return stopping; });
      if (stopping) break;
      lock.unlock();
      auto evicted = evict_now();
      if (!evicted.is_ok()) FF_LOG_WARN("kv cache {}: eviction failed: {}", config.root, evicted.status());
      if (config.temp_sweep_interval_ms > 0 && config.stale_temp_ms > 0 && wall_now_ns() >= next_sweep_ns) {
        next_sweep_ns = wall_now_ns() + config.temp_sweep_interval_ms * 1'000'000;
        if (Status swept = sweep_temporaries(); !swept.is_ok()) {
          FF_LOG_WARN("kv cache {}: sweeping stale temporaries failed: {}", config.root, swept);
        }
      }
      lock.lock();
    }
  }

  // A put's temporary (`<key>.tmp-<client>-<n>`) in `dir`: removed once older than any put still
  // running could be (stale_temp_ms). True when `entry` is a temporary (removed or not).
  bool handle_temporary(meta::InodeId dir, const meta::DirEntry& entry) {
    if (entry.type != meta::FileType::kRegular || entry.name.find(".tmp-") == std::string::npos ||
        KvCacheKey::from_hex(entry.name).is_ok()) {
      return false;
    }
    if (config.stale_temp_ms <= 0) return true;
    auto inode = meta.getattr(entry.inode);
    if (inode.is_ok() && wall_now_ns() - put_time(*inode) > config.stale_temp_ms * 1'000'000 &&
        meta.unlink(config.caller, dir, entry.name).is_ok()) {
      std::lock_guard lock(mutex);
      ++stats.temporaries_removed;
    }
    return true;
  }

  // Every subdirectory known so far, for stale temporaries (of puts of this or another instance that
  // crashed, or of an instance that never reopens).
  Status sweep_temporaries() {
    for (size_t i = 0; i < config.fanout; ++i) {
      const meta::InodeId dir = dirs[i].load(std::memory_order_acquire);
      if (dir == 0) continue;
      std::string cursor;
      while (!stopping_requested()) {
        FF_ASSIGN_OR_RETURN(meta::ReadDirPage page, meta.readdir(config.caller, dir, cursor, 1024));
        for (const meta::DirEntry& entry : page.entries) handle_temporary(dir, entry);
        if (!page.more || page.entries.empty()) break;
        cursor = page.entries.back().name;
      }
    }
    return Status::ok();
  }
  bool stopping_requested() {
    std::lock_guard lock(thread_mutex);
    return stopping;
  }

  // Indexes the entries already under root (a restart): size and put time from their inodes.
  Status index_existing() {
    std::string after;
    std::vector<std::pair<size_t, meta::InodeId>> subdirs;
    while (true) {
      FF_ASSIGN_OR_RETURN(meta::ReadDirPage page, meta.readdir(config.caller, root, after, 1024));
      for (const meta::DirEntry& entry : page.entries) {
        if (entry.type != meta::FileType::kDirectory || entry.name.size() != 2) continue;
        for (size_t i = 0; i < config.fanout; ++i) {
          if (entry.name == dir_name(i)) subdirs.emplace_back(i, entry.inode);
        }
      }
      if (!page.more || page.entries.empty()) break;
      after = page.entries.back().name;
    }
    for (auto& [index_in_fanout, dir] : subdirs) {
      dirs[index_in_fanout].store(dir, std::memory_order_release);
      std::string cursor;
      while (true) {
        FF_ASSIGN_OR_RETURN(meta::ReadDirPage page, meta.readdir(config.caller, dir, cursor, 1024));
        for (const meta::DirEntry& entry : page.entries) {
          if (handle_temporary(dir, entry)) continue;
          auto key = KvCacheKey::from_hex(entry.name);
          if (!key.is_ok() || entry.type != meta::FileType::kRegular) continue;  // strangers
          auto inode = meta.getattr(entry.inode);
          if (!inode.is_ok()) continue;  // removed meanwhile
          std::lock_guard lock(mutex);
          if (index.count(*key)) continue;
          // Older puts go to the LRU end.
          int64_t put_ns = put_time(*inode);
          auto position = lru.begin();
          while (position != lru.end() && index.at(*position).put_ns > put_ns) ++position;
          auto it = lru.insert(position, *key);
          index.emplace(*key, Entry{inode->length, put_ns, it});
          stats.bytes += inode->length;
        }
        if (!page.more || page.entries.empty()) break;
        cursor = page.entries.back().name;
      }
    }
    return Status::ok();
  }
};

Result<std::unique_ptr<KvCache>> KvCache::open(FileClient& client, KvCacheConfig config) {
  if (config.fanout == 0 || config.fanout > 256)
    return invalid_argument("KvCacheConfig.fanout is {}, expected 1..256", config.fanout);
  if (!config.root.starts_with("/"))
    return invalid_argument("KvCacheConfig.root '{}' is not an absolute path", config.root);
  if (config.eviction_interval_ms <= 0) {
    return invalid_argument("KvCacheConfig.eviction_interval_ms is {}, expected > 0", config.eviction_interval_ms);
  }
  if (config.temp_sweep_interval_ms < 0) {
    return invalid_argument("KvCacheConfig.temp_sweep_interval_ms is {}, expected >= 0 (0: only at open)",
                            config.temp_sweep_interval_ms);
  }
  if (!(config.evict_to >= 0.0 && config.evict_to <= 1.0)) {
    return invalid_argument("KvCacheConfig.evict_to is {}, expected 0..1", config.evict_to);
  }
  auto impl = std::make_unique<Impl>(client, config);
  // Create the root with its parents.
  meta::InodeId dir = meta::kRootInode;
  std::string_view rest = std::string_view(config.root).substr(1);
  while (!rest.empty()) {
    size_t slash = rest.find('/');
    std::string name(rest.substr(0, slash));
    rest = slash == std::string_view::npos ? std::string_view() : rest.substr(slash + 1);
    if (name.empty()) continue;
    FF_ASSIGN_OR_RETURN(dir, impl->ensure_dir(dir, name));
  }
  impl->root = dir;
  if (config.index_existing) FF_RETURN_IF_ERROR(impl->index_existing());
  Impl* raw = impl.get();
  impl->evictor = std::thread([raw] { raw->evictor_loop(); });
  return std::unique_ptr<KvCache>(new KvCache(std::move(impl)));
}

KvCache::KvCache(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}

KvCache::~KvCache() {
  {
    std::lock_guard lock(impl_->thread_mutex);
    impl_->stopping = true;
  }
  impl_->wake.notify_all();
  if (impl_->evictor.joinable()) impl_->evictor.join();
}

Status KvCache::put(const KvCacheKey& key, std::span<const std::byte> value) { return impl_->put(key, value); }

Result<std::vector<std::byte>> KvCache::get(const KvCacheKey& key) {
  return std::move(impl_->get_batch(std::span<const KvCacheKey>(&key, 1))[0]);
}

std::vector<Result<std::vector<std::byte>>> KvCache::get_batch(std::span<const KvCacheKey> keys) {
  return impl_->get_batch(keys);
}

Result<bool> KvCache::remove(const KvCacheKey& key) { return impl_->remove(key); }

Result<size_t> KvCache::evict_now() { return impl_->evict_now(); }

KvCache::Stats KvCache::stats() const {
  std::lock_guard lock(impl_->mutex);
  Stats stats = impl_->stats;
  stats.entries = impl_->index.size();
  return stats;
}

}  // namespace ff::fs
