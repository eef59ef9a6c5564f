// fireflyer._fs: the native file client (FileClient), its metadata (an in-process MetaService on
// RocksDB or memory, or ff-meta through RemoteMeta where built) and the KV cache. A second extension
// module, built only where fs is built; the Python wrapper is fireflyer/fs.py (docs/fs-client.md).
//
// Errors: a Status becomes OSError(errno, message) (so ENOENT is FileNotFoundError, EEXIST
// FileExistsError, EACCES PermissionError, ...), except untagged invalid arguments (ValueError).
// Every call that may block releases the GIL. Buffers: reads fill a new bytes object or a caller's
// writable buffer (numpy array, bytearray, memoryview) in place; writes read any C-contiguous buffer in
// place: no copies besides the one into the chunk request.
#include <nanobind/nanobind.h>
#include <nanobind/ndarray.h>
#include <nanobind/stl/optional.h>
#include <nanobind/stl/pair.h>
#include <nanobind/stl/string.h>
#include <nanobind/stl/tuple.h>
#include <nanobind/stl/vector.h>

#include <cerrno>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "binding_common.h"
#include "ff/common/malloc_tuning.h"
#include "ff/fs/file_client.h"
#include "ff/fs/kvcache.h"
#ifdef FF_FS_HAVE_META_RPC
#include "ff/fs/meta_rpc.h"
#endif

namespace nb = nanobind;

namespace ff::fs::python {
namespace {

nb::dict inode_dict(const meta::Inode& inode) {
  nb::dict d;
  d["ino"] = inode.id;
  d["type"] = std::string(meta::file_type_name(inode.type));
  d["mode"] = inode.mode | meta::file_type_mode_bits(inode.type);
  d["uid"] = inode.uid;
  d["gid"] = inode.gid;
  d["nlink"] = inode.nlink;
  d["size"] = inode.length;
  d["atime_ns"] = inode.atime_ns;
  d["mtime_ns"] = inode.mtime_ns;
  d["ctime_ns"] = inode.ctime_ns;
  d["chunk_size"] = inode.layout.chunk_size;
  d["chains"] = inode.layout.chains;
  return d;
}

using ReadOnlyBuffer = nb::ndarray<nb::ro, nb::c_contig, nb::device::cpu>;
using WritableBuffer = nb::ndarray<nb::c_contig, nb::device::cpu>;

size_t nbytes_of(size_t size, size_t itemsize) { return size * itemsize; }

// One process's client: the FileClient plus where its metadata lives.
class PyClient {
 public:
  PyClient(const std::string& mgmtd, const std::vector<std::string>& meta_addresses, const std::string& meta_db,
           bool meta_memory, uint32_t chunk_size, uint32_t stripe, uint32_t max_parallel_chunks, bool kv_sync,
           int64_t timeout_ms, uint32_t uid, uint32_t gid, bool local_reads, bool async_closes) {
    caller_.uid = uid;
    caller_.gid = gid;
    FileClientConfig config;
    config.mgmtd_address = mgmtd;
    config.max_parallel_chunks = max_parallel_chunks;
    config.local_reads = local_reads;
    config.async_closes = async_closes;
    nb::gil_scoped_release release;
    if (!meta_addresses.empty()) {
#ifdef FF_FS_HAVE_META_RPC
      meta::RemoteMetaOptions options;
      options.addresses = meta_addresses;
      remote_ = value_of(meta::RemoteMeta::connect(options));
      client_ = value_of(FileClient::connect(config, *remote_));
#else
      (void)chunk_size;
      throw nb::value_error("this build has no ff-meta client (RemoteMeta): pass meta_db= for an in-process meta");
#endif
    } else {
      if (meta_db.empty() && !meta_memory)
        throw nb::value_error("give meta (ff-meta addresses) or meta_db (a RocksDB directory)");
      EmbeddedFsConfig embedded;
      embedded.kv_path = meta_db;
      embedded.kv_sync = kv_sync;
      embedded.chunk_size = chunk_size;
      embedded.stripe = stripe;
      embedded.routing_timeout_ms = timeout_ms;
      embedded_ = value_of(EmbeddedFs::open(config, embedded));
    }
  }

  FileClient& client() {
    if (embedded_) return embedded_->client();
    if (!client_) throw nb::value_error("the client is closed");
    return *client_;
  }
  meta::MetaApi& meta() { return client().meta(); }
  const meta::Caller& caller() const { return caller_; }

  void close() {
    if (open_caches > 0) throw nb::value_error("close the KVCache objects over this client first");
    nb::gil_scoped_release release;
    // In-process RingServers use the FileClient: they stop (finishing their batch) before it goes.
    users_->stop_all();
    client_.reset();
    embedded_.reset();
#ifdef FF_FS_HAVE_META_RPC
    remote_.reset();
#endif
  }
  bool closed() const { return !client_ && !embedded_; }
  const std::shared_ptr<ClientUsers>& users() const { return users_; }

  // ---- metadata by path
  meta::Inode resolve(const std::string& path, bool follow = true) {
    nb::gil_scoped_release release;
    return value_of(meta().resolve(caller_, path, follow));
  }
  // The parent directory's inode and the last name of a path.
  std::pair<meta::InodeId, std::string> parent_of(const std::string& path) {
    if (path.empty() || path[0] != '/') throw nb::value_error(("path '" + path + "' is not absolute").c_str());
    std::string trimmed = path;
    while (trimmed.size() > 1 && trimmed.back() == '/') trimmed.pop_back();
    size_t slash = trimmed.rfind('/');
    std::string name = trimmed.substr(slash + 1);
    if (name.empty()) throw nb::value_error("the root has no parent");
    std::string parent = slash == 0 ? "/" : trimmed.substr(0, slash);
    meta::Inode dir = resolve(parent);
    return {dir.id, name};
  }

  nb::dict stat(const std::string& path, bool follow) { return inode_dict(resolve(path, follow)); }
  nb::dict mkdir(const std::string& path, uint32_t mode) {
    auto [parent, name] = parent_of(path);
    nb::gil_scoped_release release;
    meta::Inode made = value_of(meta().mkdir(caller_, parent, name, mode));
    nb::gil_scoped_acquire acquire;
    return inode_dict(made);
  }
  std::vector<std::tuple<std::string, uint64_t, std::string>> listdir(const std::string& path) {
    meta::Inode dir = resolve(path);
    std::vector<std::tuple<std::string, uint64_t, std::string>> out;
    nb::gil_scoped_release release;
    std::string after;
    while (true) {
      meta::ReadDirPage page = value_of(meta().readdir(caller_, dir.id, after, 1024));
      for (auto& entry : page.entries)
        out.emplace_back(entry.name, entry.inode, std::string(meta::file_type_name(entry.type)));
      if (!page.more || page.entries.empty()) break;
      after = page.entries.back().name;
    }
    return out;
  }
  void unlink(const std::string& path) {
    auto [parent, name] = parent_of(path);
    nb::gil_scoped_release release;
    check(meta().unlink(caller_, parent, name));
  }
  void rmdir(const std::string& path) {
    auto [parent, name] = parent_of(path);
    nb::gil_scoped_release release;
    check(meta().rmdir(caller_, parent, name));
  }
  void rename(const std::string& from, const std::string& to, bool no_replace) {
    auto [parent, name] = parent_of(from);
    auto [new_parent, new_name] = parent_of(to);
    nb::gil_scoped_release release;
    check(meta().rename(caller_, parent, name, new_parent, new_name, no_replace));
  }
  nb::dict truncate(const std::string& path, uint64_t length) {
    meta::Inode inode = resolve(path);
    meta::SetAttr attr;
    attr.length = length;
    nb::gil_scoped_release release;
    meta::Inode updated = value_of(client().setattr(caller_, inode.id, attr));
    nb::gil_scoped_acquire acquire;
    return inode_dict(updated);
  }

  // ---- files by handle
  // flags: meta::OpenFlags bits; create: make the file first (exclusive: EEXIST when it exists).
  FileHandle open(const std::string& path, uint32_t flags, bool create, bool exclusive, uint32_t mode) {
    auto [parent, name] = parent_of(path);
    nb::gil_scoped_release release;
    if (create) {
      Result<FileHandle> made = client().create(caller_, parent, name, mode, flags);
      if (made.is_ok() || exclusive || meta::errno_of(made.status()) != EEXIST) return value_of(std::move(made));
    }
    meta::Inode inode = value_of(meta().lookup(caller_, parent, name));
    return value_of(client().open(caller_, inode.id, flags));
  }

  nb::bytes read(FileHandle handle, uint64_t offset, int64_t size) {
    if (size < 0) {
      meta::Inode inode;
      {
        nb::gil_scoped_release release;
        inode = value_of(client().stat(handle));
      }
      size = offset >= inode.length ? 0 : static_cast<int64_t>(inode.length - offset);
    }
    // NOTE: the bytes object is filled in place (no intermediate buffer), then shrunk to what was read.
    PyObject* bytes = PyBytes_FromStringAndSize(nullptr, static_cast<Py_ssize_t>(size));
    if (bytes == nullptr) throw nb::python_error();
    nb::object owner = nb::steal(bytes);
    Result<size_t> got = [&] {
      nb::gil_scoped_release release;
      return client().read(
          handle, offset,
          std::span<std::byte>(reinterpret_cast<std::byte*>(PyBytes_AS_STRING(bytes)), static_cast<size_t>(size)));
    }();
    size_t n = value_of(std::move(got));
    if (n != static_cast<size_t>(size)) {
      PyObject* resized = owner.release().ptr();
      if (_PyBytes_Resize(&resized, static_cast<Py_ssize_t>(n)) != 0) throw nb::python_error();
      owner = nb::steal(resized);
    }
    return nb::borrow<nb::bytes>(owner);
  }

  size_t readinto(FileHandle handle, uint64_t offset, WritableBuffer buffer) {
    std::span<std::byte> out(static_cast<std::byte*>(buffer.data()), nbytes_of(buffer.size(), buffer.itemsize()));
    nb::gil_scoped_release release;
    return value_of(client().read(handle, offset, out));
  }

  size_t write(FileHandle handle, uint64_t offset, ReadOnlyBuffer data) {
    std::span<const std::byte> in(static_cast<const std::byte*>(data.data()), nbytes_of(data.size(), data.itemsize()));
    nb::gil_scoped_release release;
    return value_of(client().write(handle, offset, in));
  }
  size_t write_bytes(FileHandle handle, uint64_t offset, nb::bytes data) {
    std::span<const std::byte> in(reinterpret_cast<const std::byte*>(data.c_str()), data.size());
    nb::gil_scoped_release release;
    return value_of(client().write(handle, offset, in));
  }

  nb::dict fsync(FileHandle handle) {
    meta::Inode inode;
    {
      nb::gil_scoped_release release;
      inode = value_of(client().fsync(handle));
    }
    return inode_dict(inode);
  }
  nb::dict fstat(FileHandle handle) {
    meta::Inode inode;
    {
      nb::gil_scoped_release release;
      inode = value_of(client().stat(handle));
    }
    return inode_dict(inode);
  }
  void close_handle(FileHandle handle) {
    nb::gil_scoped_release release;
    check(client().close(handle));
  }
  size_t open_handles() { return client().open_handles(); }
  nb::dict local_read_counts() {
    const StorageClient::LocalReadCounts counts = client().local_read_counts();
    nb::dict out;
    out["served"] = counts.served;
    out["fallbacks"] = counts.fallbacks;
    out["read_before_answer"] = counts.read_before_answer;
    out["read_ahead"] = counts.read_ahead;
    out["read_aheads_started"] = counts.read_aheads_started;
    out["read_aheads_dropped"] = counts.read_aheads_dropped;
    return out;
  }

  nb::dict close_counts() {
    const FileClient::CloseCounts counts = client().close_counts();
    nb::dict out;
    out["queued"] = counts.queued;
    out["batches"] = counts.batches;
    out["failed"] = counts.failed;
    return out;
  }

  void flush_closes(int64_t timeout_ms) {
    FileClient& c = client();
    Status flushed;
    {
      nb::gil_scoped_release release;
      flushed = c.flush_closes(timeout_ms);
    }
    check(flushed);
  }

  int open_caches = 0;  // KVCache objects open over this client (under the GIL)

 private:
  std::shared_ptr<ClientUsers> users_ = std::make_shared<ClientUsers>();  // stopped by close()
  meta::Caller caller_;
#ifdef FF_FS_HAVE_META_RPC
  std::unique_ptr<meta::RemoteMeta> remote_;  // declared before client_: destroyed after it (its meta)
#endif
  std::unique_ptr<EmbeddedFs> embedded_;
  std::unique_ptr<FileClient> client_;
};

KvCacheKey key_of(const nb::handle& key) {
  if (nb::isinstance<nb::str>(key)) {
    Result<KvCacheKey> parsed = KvCacheKey::from_hex(nb::cast<std::string>(key));
    if (!parsed.is_ok()) throw nb::value_error(parsed.status().message().c_str());
    return *parsed;
  }
  if (nb::isinstance<nb::bytes>(key)) {
    nb::bytes raw = nb::borrow<nb::bytes>(key);
    if (raw.size() != 16) throw nb::value_error("a KV cache key given as bytes must have 16 bytes");
    KvCacheKey k;
    const auto* p = reinterpret_cast<const unsigned char*>(raw.c_str());
    for (int i = 0; i < 8; ++i) k.hi = (k.hi << 8) | p[i];
    for (int i = 8; i < 16; ++i) k.lo = (k.lo << 8) | p[i];
    return k;
  }
  throw nb::type_error("a KV cache key is a 32-hex-digit str or 16 bytes");
}

class PyKvCache {
 public:
  PyKvCache(PyClient& client, const std::string& root, uint32_t fanout, uint64_t capacity_bytes, double evict_to,
            int64_t ttl_ms, int64_t eviction_interval_ms, bool index_existing)
      : client_(client) {
    KvCacheConfig config;
    config.root = root;
    config.fanout = fanout;
    config.capacity_bytes = capacity_bytes;
    config.evict_to = evict_to;
    config.ttl_ms = ttl_ms;
    config.eviction_interval_ms = eviction_interval_ms;
    config.index_existing = index_existing;
    config.caller = client.caller();
    {
      nb::gil_scoped_release release;
      cache_ = value_of(KvCache::open(client.client(), config));
    }
    ++client_.open_caches;
  }
  ~PyKvCache() {
    if (cache_) --client_.open_caches;
  }

  void put(const nb::handle& key, ReadOnlyBuffer value) {
    KvCacheKey k = key_of(key);
    std::span<const std::byte> in(static_cast<const std::byte*>(value.data()),
                                  nbytes_of(value.size(), value.itemsize()));
    nb::gil_scoped_release release;
    check(cache()->put(k, in));
  }
  void put_bytes(const nb::handle& key, nb::bytes value) {
    KvCacheKey k = key_of(key);
    std::span<const std::byte> in(reinterpret_cast<const std::byte*>(value.c_str()), value.size());
    nb::gil_scoped_release release;
    check(cache()->put(k, in));
  }
  std::optional<nb::bytes> from_result(Result<std::vector<std::byte>> result) {
    if (!result.is_ok()) {
      if (meta::errno_of(result.status()) == ENOENT) return std::nullopt;
      raise(result.status());
    }
    return nb::bytes(reinterpret_cast<const char*>(result->data()), result->size());
  }
  std::optional<nb::bytes> get(const nb::handle& key) {
    KvCacheKey k = key_of(key);
    Result<std::vector<std::byte>> result = [&] {
      nb::gil_scoped_release release;
      return cache()->get(k);
    }();
    return from_result(std::move(result));
  }
  std::vector<std::optional<nb::bytes>> get_batch(const nb::sequence& keys) {
    std::vector<KvCacheKey> parsed;
    for (nb::handle key : keys) parsed.push_back(key_of(key));
    std::vector<Result<std::vector<std::byte>>> results;
    {
      nb::gil_scoped_release release;
      results = cache()->get_batch(parsed);
    }
    std::vector<std::optional<nb::bytes>> out;
    for (auto& result : results) out.push_back(from_result(std::move(result)));
    return out;
  }
  bool remove(const nb::handle& key) {
    KvCacheKey k = key_of(key);
    nb::gil_scoped_release release;
    return value_of(cache()->remove(k));
  }
  size_t evict_now() {
    nb::gil_scoped_release release;
    return value_of(cache()->evict_now());
  }
  nb::dict stats() {
    KvCache::Stats s = cache()->stats();
    nb::dict d;
    d["hits"] = s.hits;
    d["misses"] = s.misses;
    d["puts"] = s.puts;
    d["evictions"] = s.evictions;
    d["expirations"] = s.expirations;
    d["bytes"] = s.bytes;
    d["entries"] = s.entries;
    return d;
  }
  void close() {
    if (!cache_) return;
    {
      nb::gil_scoped_release release;
      cache_.reset();
    }
    --client_.open_caches;
  }

 private:
  KvCache* cache() {
    if (!cache_) throw nb::value_error("the KV cache is closed");
    return cache_.get();
  }
  PyClient& client_;
  std::unique_ptr<KvCache> cache_;
};

std::vector<std::string> py_prefix_hashes(nb::ndarray<const int32_t, nb::ndim<1>, nb::c_contig, nb::device::cpu> tokens,
                                          size_t block_tokens, std::optional<std::string> parent, uint64_t extra) {
  if (block_tokens == 0) throw nb::value_error("block_tokens must be >= 1");
  KvCacheKey start{};
  if (parent) start = key_of(nb::str(parent->c_str()));
  std::vector<KvCacheKey> keys =
      prefix_hashes(std::span<const int32_t>(tokens.data(), tokens.shape(0)), block_tokens, start, extra);
  std::vector<std::string> out;
  out.reserve(keys.size());
  for (const KvCacheKey& key : keys) out.push_back(key.hex());
  return out;
}

}  // namespace

}  // namespace ff::fs::python

NB_MODULE(_fs, module) {
  using namespace ff::fs::python;
  namespace meta = ff::fs::meta;
  module.doc() = "fireflyer fs: native file client and KV cache (wrapped by fireflyer.fs)";
  nb::register_exception_translator(&translate);
  module.attr("O_READ") = static_cast<uint32_t>(meta::kOpenRead);
  module.attr("O_WRITE") = static_cast<uint32_t>(meta::kOpenWrite);
  module.attr("O_TRUNC") = static_cast<uint32_t>(meta::kOpenTruncate);
#ifdef FF_FS_HAVE_META_RPC
  module.attr("HAVE_REMOTE_META") = true;
#else
  module.attr("HAVE_REMOTE_META") = false;
#endif

  module.def("tune_malloc_for_io_buffers", &ff::tune_malloc_for_io_buffers, nb::arg("trim_bytes"),
             nb::arg("mmap_bytes"));

  nb::class_<PyClient>(module, "Client")
      .def(nb::init<const std::string&, const std::vector<std::string>&, const std::string&, bool, uint32_t, uint32_t,
                    uint32_t, bool, int64_t, uint32_t, uint32_t, bool, bool>(),
           nb::arg("mgmtd"), nb::arg("meta_addresses"), nb::arg("meta_db"), nb::arg("meta_memory"),
           nb::arg("chunk_size"), nb::arg("stripe"), nb::arg("max_parallel_chunks"), nb::arg("kv_sync"),
           nb::arg("timeout_ms"), nb::arg("uid"), nb::arg("gid"), nb::arg("local_reads"), nb::arg("async_closes"))
      .def("close", &PyClient::close)
      .def("local_read_counts", &PyClient::local_read_counts)
      .def("close_counts", &PyClient::close_counts)
      .def("flush_closes", &PyClient::flush_closes, nb::arg("timeout_ms"))
      .def_prop_ro("closed", &PyClient::closed)
      .def("stat", &PyClient::stat, nb::arg("path"), nb::arg("follow") = true)
      .def("mkdir", &PyClient::mkdir, nb::arg("path"), nb::arg("mode"))
      .def("listdir", &PyClient::listdir, nb::arg("path"))
      .def("unlink", &PyClient::unlink, nb::arg("path"))
      .def("rmdir", &PyClient::rmdir, nb::arg("path"))
      .def("rename", &PyClient::rename, nb::arg("src"), nb::arg("dst"), nb::arg("no_replace") = false)
      .def("truncate", &PyClient::truncate, nb::arg("path"), nb::arg("length"))
      .def("open", &PyClient::open, nb::arg("path"), nb::arg("flags"), nb::arg("create"), nb::arg("exclusive"),
           nb::arg("mode"))
      .def("read", &PyClient::read, nb::arg("handle"), nb::arg("offset"), nb::arg("size"))
      .def("readinto", &PyClient::readinto, nb::arg("handle"), nb::arg("offset"), nb::arg("buffer"))
      .def("write", &PyClient::write_bytes, nb::arg("handle"), nb::arg("offset"), nb::arg("data"))
      .def("write", &PyClient::write, nb::arg("handle"), nb::arg("offset"), nb::arg("data"))
      .def("fsync", &PyClient::fsync, nb::arg("handle"))
      .def("fstat", &PyClient::fstat, nb::arg("handle"))
      .def("close_handle", &PyClient::close_handle, nb::arg("handle"))
      .def("open_handles", &PyClient::open_handles);

  nb::class_<PyKvCache>(module, "KVCache")
      .def(nb::init<PyClient&, const std::string&, uint32_t, uint64_t, double, int64_t, int64_t, bool>(),
           nb::arg("client"), nb::arg("root"), nb::arg("fanout"), nb::arg("capacity_bytes"), nb::arg("evict_to"),
           nb::arg("ttl_ms"), nb::arg("eviction_interval_ms"), nb::arg("index_existing"), nb::keep_alive<1, 2>())
      .def("put", &PyKvCache::put_bytes, nb::arg("key"), nb::arg("value"))
      .def("put", &PyKvCache::put, nb::arg("key"), nb::arg("value"))
      .def("get", &PyKvCache::get, nb::arg("key"))
      .def("get_batch", &PyKvCache::get_batch, nb::arg("keys"))
      .def("remove", &PyKvCache::remove, nb::arg("key"))
      .def("evict_now", &PyKvCache::evict_now)
      .def("stats", &PyKvCache::stats)
      .def("close", &PyKvCache::close);

  bind_usrbio(module, [](nb::handle handle) {
    PyClient& client = nb::cast<PyClient&>(handle);
    return ClientRef{&client.client(), client.users()};
  });
  module.def("prefix_hashes", &py_prefix_hashes, nb::arg("tokens"), nb::arg("block_tokens"),
             nb::arg("parent") = nb::none(), nb::arg("extra") = 0);
}
