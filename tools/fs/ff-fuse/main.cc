// ff-fuse: mounts the fs namespace with FUSE (ff::fs_fuse, include/ff/fs/fuse.h; docs/fs-fuse.md).
//
//   ff-fuse --mount /mnt/ff --meta tcp://127.0.0.1:9300 --mgmtd 127.0.0.1:9000   ff-meta + storage (the cluster)
//   ff-fuse --mount /mnt/ff --embedded-meta /var/lib/ff/meta --mgmtd ...     metadata in this process (RocksDB)
//   ff-fuse --mount /mnt/ff --embedded-meta :memory: --memory-data           everything in memory (tests)
//   ff-fuse --config deploy/fs/fuse.toml                                     the same from a file
//
// Runs in the foreground until unmounted (fusermount3 -u) or SIGTERM/SIGINT/SIGHUP, then unmounts and
// exits 0. Exit 2: bad arguments or config; 1: start failed.
#include <signal.h>
#include <unistd.h>

#include <CLI/CLI.hpp>
#include <algorithm>
#include <atomic>
#include <condition_variable>
#include <fstream>
#include <mutex>
#include <optional>
#include <thread>

#include "ff/common/log.h"
#include "ff/common/malloc_tuning.h"
#include "ff/fs/fuse.h"
#include "ff/fs/kv_engines.h"
#include "ff/fs/rpc/metrics.h"
#include "ff/fs/rpc/toml_config.h"
#ifdef FF_FUSE_HAVE_FILE_CLIENT
#include "ff/fs/file_client.h"
#endif
#ifdef FF_FUSE_HAVE_REMOTE_META
#include "ff/fs/meta_rpc.h"
#endif
#ifdef FF_FUSE_HAVE_USRBIO
#include "ff/fs/usrbio.h"
#endif

namespace {

using namespace ff;
using namespace ff::fs;

struct Config {
  fuse::FuseOptions fuse;
  std::vector<std::string> meta_addresses;  // ff-meta servers (RemoteMeta)
  // RemoteMetaOptions::batches_in_flight; unset: scaled to the host (host_scaled_defaults).
  std::optional<uint32_t> meta_batches;
  std::string embedded_meta;                // RocksDB directory, or ":memory:"
  bool embedded_sync = true;
  std::string mgmtd;         // storage through FileClient
  bool memory_data = false;  // data in this process's memory
  uint32_t chain_table = 1;
  uint32_t stripe = 0;  // 0: every chain of the table
  uint32_t chunk_size = 1u << 20;
  uint32_t max_parallel_chunks = 16;
  bool local_reads = true;  // FileClientConfig::local_reads
  bool async_closes = true;  // FileClientConfig::async_closes
  double stats_interval_s = 30;
};

// What a setting left unset (0 worker threads, no batches_in_flight) gets: every FUSE request holds a libfuse worker
// for its meta round trip, and concurrent meta calls queue for the batches in flight, so both bound how many metadata
// operations are under way at once. 16 workers and 2 batches suit a 2-core host; on a 16-core host with 32 callers,
// 32 workers and 8 batches took creates+stats through the mount from 9,155/s to 16,765/s (docs/fs-fuse.md).
void host_scaled_defaults(Config* c) {
  const uint32_t cores = std::max(1u, std::thread::hardware_concurrency());
  if (c->fuse.max_threads == 0) c->fuse.max_threads = std::max(16u, 2 * cores);
  if (!c->meta_batches) c->meta_batches = std::max(2u, cores / 2);
}

Status load_toml(const std::string& path, Config* c) {
  FF_ASSIGN_OR_RETURN(rpc::TomlReader reader, rpc::TomlReader::from_file(path));
  FF_RETURN_IF_ERROR(reader.read("fuse.mountpoint", &c->fuse.mountpoint));
  FF_RETURN_IF_ERROR(reader.read("fuse.entry_timeout_s", &c->fuse.entry_timeout_s));
  FF_RETURN_IF_ERROR(reader.read("fuse.attr_timeout_s", &c->fuse.attr_timeout_s));
  FF_RETURN_IF_ERROR(reader.read("fuse.negative_timeout_s", &c->fuse.negative_timeout_s));
  FF_RETURN_IF_ERROR(reader.read("fuse.max_io_bytes", &c->fuse.max_io_bytes));
  FF_RETURN_IF_ERROR(reader.read("fuse.max_threads", &c->fuse.max_threads));
  FF_RETURN_IF_ERROR(reader.read("fuse.read_ahead_bytes", &c->fuse.read_ahead_bytes));
  FF_RETURN_IF_ERROR(reader.read("fuse.kernel_permissions", &c->fuse.kernel_permissions));
  FF_RETURN_IF_ERROR(reader.read("fuse.allow_other", &c->fuse.allow_other));
  FF_RETURN_IF_ERROR(reader.read("fuse.direct_io", &c->fuse.direct_io));
  FF_RETURN_IF_ERROR(reader.read("fuse.readdirplus", &c->fuse.readdirplus));
  FF_RETURN_IF_ERROR(reader.read("fuse.debug", &c->fuse.debug));
  FF_RETURN_IF_ERROR(reader.read("fuse.stats_interval_s", &c->stats_interval_s));
  FF_RETURN_IF_ERROR(reader.read("meta.addresses", &c->meta_addresses));
  uint32_t meta_batches = UINT32_MAX;
  FF_RETURN_IF_ERROR(reader.read("meta.batches_in_flight", &meta_batches));
  if (meta_batches != UINT32_MAX) c->meta_batches = meta_batches;
  FF_RETURN_IF_ERROR(reader.read("meta.embedded_path", &c->embedded_meta));
  FF_RETURN_IF_ERROR(reader.read("meta.embedded_sync", &c->embedded_sync));
  FF_RETURN_IF_ERROR(reader.read("meta.chain_table", &c->chain_table));
  FF_RETURN_IF_ERROR(reader.read("meta.stripe", &c->stripe));
  FF_RETURN_IF_ERROR(reader.read("meta.chunk_size", &c->chunk_size));
  FF_RETURN_IF_ERROR(reader.read("storage.mgmtd", &c->mgmtd));
  FF_RETURN_IF_ERROR(reader.read("storage.memory", &c->memory_data));
  FF_RETURN_IF_ERROR(reader.read("storage.max_parallel_chunks", &c->max_parallel_chunks));
  FF_RETURN_IF_ERROR(reader.read("storage.local_reads", &c->local_reads));
  FF_RETURN_IF_ERROR(reader.read("storage.async_closes", &c->async_closes));
  return reader.finish();
}

Status validate(const Config& c) {
  if (c.fuse.mountpoint.empty()) return invalid_argument("no mountpoint: give --mount DIR or fuse.mountpoint");
  bool remote = !c.meta_addresses.empty();
  bool embedded = !c.embedded_meta.empty();
  if (remote == embedded) {
    return invalid_argument(
        "give exactly one of --meta HOST:PORT (ff-meta) and --embedded-meta PATH|:memory: "
        "(got {} meta addresses and embedded path '{}')",
        c.meta_addresses.size(), c.embedded_meta);
  }
  if (c.memory_data == !c.mgmtd.empty()) {
    return invalid_argument("give exactly one of --mgmtd HOST:PORT (data on storage servers) and --memory-data");
  }
  if (c.memory_data && remote) {
    return invalid_argument("--memory-data keeps data in this process: it needs --embedded-meta, not --meta");
  }
  return Status::ok();
}

// The termination signals arrive in this thread (every thread blocks them), which asks the FUSE loop to
// end; run() then unmounts.
class SignalThread {
 public:
  explicit SignalThread(fuse::FuseFs& fs) : thread_([this, &fs] { loop(fs); }) {}
  ~SignalThread() {
    done_.store(true);
    thread_.join();
  }

 private:
  void loop(fuse::FuseFs& fs) {
    sigset_t set;
    sigemptyset(&set);
    sigaddset(&set, SIGINT);
    sigaddset(&set, SIGTERM);
    sigaddset(&set, SIGHUP);
    timespec poll{0, 100'000'000};
    while (!done_.load()) {
      int sig = sigtimedwait(&set, nullptr, &poll);
      if (sig > 0) {
        FF_LOG_INFO("ff-fuse: signal {}: unmounting", sig);
        fs.exit();
      }
    }
  }
  std::atomic<bool> done_{false};
  std::thread thread_;
};

#ifdef FF_FUSE_HAVE_USRBIO
// The virtual directory .ff/usrbio/ over the USRBIO registry: rings of other processes served with
// batched I/O through this daemon's FileClient.
class UsrbioRings final : public fuse::RingRegistry {
 public:
  explicit UsrbioRings(FileClient& client) : io_(client), registry_(io_, registry_options()) {}
  Status register_ring(std::string_view name, std::string_view target, const meta::Caller& caller,
                       int32_t pid) override {
    return registry_.register_ring(name, target, caller, pid);
  }
  Status unregister_ring(std::string_view name) override { return registry_.unregister_ring(name); }
  Result<std::string> target_of(std::string_view name) const override { return registry_.target_of(name); }
  std::vector<std::string> names() const override { return registry_.names(); }
  void set_invalidate_data(std::function<void(meta::InodeId, uint64_t, uint64_t)> invalidate) override {
    std::lock_guard lock(invalidate_mutex_);
    invalidate_ = std::move(invalidate);
  }

 private:
  // Every ring's writes drop the written range from the kernel's page cache of the mount.
  usrbio::RegistryOptions registry_options() {
    usrbio::RegistryOptions options;
    options.server.on_written = [this](meta::InodeId inode, uint64_t offset, uint64_t length) {
      std::lock_guard lock(invalidate_mutex_);
      if (invalidate_) invalidate_(inode, offset, length);
    };
    return options;
  }
  std::mutex invalidate_mutex_;
  std::function<void(meta::InodeId, uint64_t, uint64_t)> invalidate_;
  usrbio::FileClientBatchIo io_;
  usrbio::UsrbioRegistry registry_;
};

std::unique_ptr<fuse::RingRegistry> make_rings(FileClient& client) { return std::make_unique<UsrbioRings>(client); }
#elif defined(FF_FUSE_HAVE_FILE_CLIENT)
std::unique_ptr<fuse::RingRegistry> make_rings(FileClient&) { return nullptr; }
#endif

// client: the FileClient under `data`, if any (its local reads go into the stats line).
int serve(const Config& config, meta::MetaApi& meta, fuse::FileData& data, fuse::RingRegistry* rings = nullptr,
          const FileClient* client = nullptr, const meta::RemoteMeta* remote = nullptr) {
  auto fs = fuse::FuseFs::mount(config.fuse, meta, data, rings);
  if (!fs.is_ok()) {
    FF_LOG_ERROR("{}", fs.status());
    return 1;
  }
  std::unique_ptr<rpc::StatsReporter> reporter;
  if (config.stats_interval_s > 0) {
    fuse::FuseFs* raw = fs->get();
    reporter = std::make_unique<rpc::StatsReporter>(
        static_cast<int64_t>(config.stats_interval_s * 1000), [raw, client, remote] {
          fuse::FuseStats s = raw->stats();
          std::string line = fmt::format(
              "fuse requests={} errors={} read_MB={:.1f} write_MB={:.1f} invalidations={} reads={} read_KiB_avg={:.0f} "
              "most_concurrent_reads={} fresh_dir_hits={}",
              s.requests, s.errors, s.read_bytes / 1e6, s.write_bytes / 1e6, s.invalidations, s.reads,
              s.reads ? s.read_bytes / 1024.0 / s.reads : 0.0, s.most_concurrent_reads, s.fresh_dir_hits);
#ifdef FF_FUSE_HAVE_FILE_CLIENT
          if (client != nullptr) {
            const StorageClient::LocalReadCounts local = client->local_read_counts();
            line += fmt::format(
                " local_reads={} local_read_fallbacks={} read_ahead={} read_aheads_started={} "
                "read_aheads_dropped={}",
                local.served, local.fallbacks, local.read_ahead, local.read_aheads_started, local.read_aheads_dropped);
            const FileClient::CloseCounts closes = client->close_counts();
            line += fmt::format(" background_closes={} close_batches={} close_failures={}", closes.queued,
                                closes.batches, closes.failed);
          }
#endif
#ifdef FF_FUSE_HAVE_REMOTE_META
          if (remote != nullptr) {
            const meta::RemoteMeta::Stats m = remote->stats();
            line += fmt::format(" meta_calls={} meta_batches={} meta_batched_calls={} meta_failovers={}", m.calls,
                                m.batches, m.batched_calls, m.failovers);
          }
#endif
          return line;
        });
  }
  Status ran;
  {
    SignalThread signals(**fs);
    FF_LOG_INFO("ff-fuse: serving {} ({} libfuse workers)", config.fuse.mountpoint, config.fuse.max_threads);
    ran = (*fs)->run();
  }
  if (reporter) reporter->stop();
  fs->reset();
  if (!ran.is_ok()) {
    FF_LOG_ERROR("{}", ran);
    return 1;
  }
  return 0;
}

Result<std::unique_ptr<kv::KvEngine>> open_kv(const Config& config) {
  if (config.embedded_meta == ":memory:") return kv::open_memory_kv();
  return kv::open_rocksdb_kv({.path = config.embedded_meta, .sync = config.embedded_sync});
}

// Background upkeep of an in-process MetaService (ff-meta does this for remote metadata).
class MetaUpkeep {
 public:
  explicit MetaUpkeep(meta::MetaService& meta) : thread_([this, &meta] { loop(meta); }) {}
  ~MetaUpkeep() {
    {
      std::lock_guard lock(mutex_);
      stop_ = true;
    }
    wake_.notify_all();
    thread_.join();
  }

 private:
  void loop(meta::MetaService& meta) {
    std::unique_lock lock(mutex_);
    while (!wake_.wait_for(lock, std::chrono::seconds(1), [&] { return stop_; })) {
      lock.unlock();
      auto reclaimed = meta.reclaim_expired_sessions();
      if (!reclaimed.is_ok()) FF_LOG_WARN("ff-fuse: session reclaim: {}", reclaimed.status());
      auto collected = meta.collect_garbage();
      if (!collected.is_ok()) FF_LOG_WARN("ff-fuse: garbage collection: {}", collected.status());
      lock.lock();
    }
  }
  std::mutex mutex_;  // guards stop_
  std::condition_variable wake_;
  bool stop_ = false;
  std::thread thread_;
};

int run_memory_data(const Config& config) {
  auto engine = open_kv(config);
  if (!engine.is_ok()) {
    FF_LOG_ERROR("embedded meta at '{}': {}", config.embedded_meta, engine.status());
    return 1;
  }
  fuse::MemoryData data;
  meta::MetaConfig meta_config;
  meta_config.chunk_size = config.chunk_size;
  auto service = meta::MetaService::open(**engine, meta_config, &data);
  if (!service.is_ok()) {
    FF_LOG_ERROR("embedded meta: {}", service.status());
    return 1;
  }
  data.bind(**service);
  MetaUpkeep upkeep(**service);
  FF_LOG_INFO("ff-fuse: metadata in this process ({}), data in memory (nothing survives the process)",
              config.embedded_meta);
  return serve(config, **service, data);
}

int run_storage(const Config& config) {
#ifdef FF_FUSE_HAVE_FILE_CLIENT
  FileClientConfig client_config;
  client_config.mgmtd_address = config.mgmtd;
  client_config.max_parallel_chunks = config.max_parallel_chunks;
  client_config.local_reads = config.local_reads;
  client_config.async_closes = config.async_closes;
  if (!config.embedded_meta.empty()) {
    EmbeddedFsConfig embedded;
    embedded.kv_path = config.embedded_meta == ":memory:" ? "" : config.embedded_meta;
    embedded.kv_sync = config.embedded_sync;
    embedded.chain_table = config.chain_table;
    embedded.stripe = config.stripe;
    embedded.chunk_size = config.chunk_size;
    auto fs = EmbeddedFs::open(client_config, embedded);
    if (!fs.is_ok()) {
      FF_LOG_ERROR("embedded fs (meta '{}', mgmtd {}): {}", config.embedded_meta, config.mgmtd, fs.status());
      return 1;
    }
    auto data = fuse::file_client_data((*fs)->client());
    auto rings = make_rings((*fs)->client());
    FF_LOG_INFO("ff-fuse: metadata in this process ({}), data on the cluster of mgmtd {}", config.embedded_meta,
                config.mgmtd);
    return serve(config, (*fs)->meta(), *data, rings.get(), &(*fs)->client());
  }
#ifdef FF_FUSE_HAVE_REMOTE_META
  meta::RemoteMetaOptions remote_options;
  remote_options.addresses = config.meta_addresses;
  remote_options.batches_in_flight = static_cast<int>(*config.meta_batches);
  auto remote = meta::RemoteMeta::connect(remote_options);
  if (!remote.is_ok()) {
    FF_LOG_ERROR("ff-meta {}: {}", fmt::join(config.meta_addresses, ","), remote.status());
    return 1;
  }
  auto client = FileClient::connect(client_config, **remote);
  if (!client.is_ok()) {
    FF_LOG_ERROR("file client (mgmtd {}): {}", config.mgmtd, client.status());
    return 1;
  }
  auto data = fuse::file_client_data(**client);
  auto rings = make_rings(**client);
  FF_LOG_INFO("ff-fuse: metadata from ff-meta {} ({} batches of calls in flight), data on the cluster of mgmtd {}",
              fmt::join(config.meta_addresses, ","), *config.meta_batches, config.mgmtd);
  int rc = serve(config, **remote, *data, rings.get(), client->get(), remote->get());
  rings.reset();
  data.reset();
  client->reset();
  return rc;
#else
  FF_LOG_ERROR("--meta needs ff::fs_meta_rpc (RemoteMeta), which this build does not have; use --embedded-meta");
  return 2;
#endif
#else
  FF_LOG_ERROR("--mgmtd needs ff::fs_client (FileClient), which this build does not have; use --memory-data");
  return 2;
#endif
}

}  // namespace

int main(int argc, char** argv) {
  ff::tune_malloc_for_io_buffers();  // 1 MiB reads and writes through the mount (malloc_tuning.h)
  // Before any thread starts: every thread inherits the blocked set, so the signals wait for the
  // signal thread (sigtimedwait) instead of interrupting a random thread.
  sigset_t set;
  sigemptyset(&set);
  sigaddset(&set, SIGINT);
  sigaddset(&set, SIGTERM);
  sigaddset(&set, SIGHUP);
  pthread_sigmask(SIG_BLOCK, &set, nullptr);

  CLI::App app{"ff-fuse: mount the fs namespace with FUSE (docs/fs-fuse.md)"};
  std::string config_path, mount, embedded, mgmtd, meta_list;
  bool memory_data = false, debug = false, direct_io = false;
  double entry_timeout_s = -1, attr_timeout_s = -1;
  uint32_t threads = 0;
  int meta_batches = -1;
  app.add_option("--config", config_path, "TOML config (see deploy/fs/fuse.toml); flags override it");
  app.add_option("--mount", mount, "mountpoint (an existing directory)");
  app.add_option("--meta", meta_list,
                 "ff-meta addresses host:port (gRPC) or tcp://host:port (our TCP transport), comma-separated");
  app.add_option("--meta-batches", meta_batches,
                 "batches of calls to ff-meta in flight before concurrent calls wait to share one (reads and changes "
                 "apart; 0: every call its own RPC; default max(2, cores / 2))");
  app.add_option("--embedded-meta", embedded, "metadata in this process: a RocksDB directory, or :memory:");
  app.add_option("--mgmtd", mgmtd, "ff-mgmtd host:port: file data on the cluster's storage servers");
  app.add_flag("--memory-data", memory_data, "file data in this process's memory (tests; nothing survives)");
  app.add_option("--entry-timeout-s", entry_timeout_s, "kernel name cache timeout");
  app.add_option("--attr-timeout-s", attr_timeout_s, "kernel attribute cache timeout");
  app.add_option("--threads", threads, "libfuse worker threads (default max(16, 2 x cores))");
  app.add_flag("--direct-io", direct_io, "bypass the kernel page cache");
  bool readdirplus = false, no_local_reads = false, sync_closes = false;
  app.add_flag("--no-local-reads", no_local_reads, "read every chunk over RPC, also from storage targets on this host");
  app.add_flag("--sync-closes", sync_closes,
               "release waits for meta's close also for handles that wrote nothing (default: closed in batches in the "
               "background)");
  app.add_flag("--readdirplus", readdirplus, "listings carry attributes (one meta getattr per entry)");
  app.add_flag("--debug", debug, "libfuse request trace on stderr");
  CLI11_PARSE(app, argc, argv);

  Config config;
  config.fuse.max_threads = 0;  // unset: host_scaled_defaults
  if (!config_path.empty()) {
    Status loaded = load_toml(config_path, &config);
    if (!loaded.is_ok()) {
      FF_LOG_ERROR("{}", loaded);
      return 2;
    }
  }
  if (!mount.empty()) config.fuse.mountpoint = mount;
  if (!meta_list.empty()) {
    config.meta_addresses.clear();
    for (size_t start = 0; start <= meta_list.size();) {
      size_t end = meta_list.find(',', start);
      if (end == std::string::npos) end = meta_list.size();
      if (end > start) config.meta_addresses.push_back(meta_list.substr(start, end - start));
      start = end + 1;
    }
  }
  if (!embedded.empty()) config.embedded_meta = embedded;
  if (meta_batches >= 0) config.meta_batches = static_cast<uint32_t>(meta_batches);
  host_scaled_defaults(&config);
  if (!mgmtd.empty()) config.mgmtd = mgmtd;
  if (memory_data) config.memory_data = true;
  if (entry_timeout_s >= 0) config.fuse.entry_timeout_s = entry_timeout_s;
  if (attr_timeout_s >= 0) config.fuse.attr_timeout_s = attr_timeout_s;
  if (threads > 0) config.fuse.max_threads = threads;
  if (direct_io) config.fuse.direct_io = true;
  if (readdirplus) config.fuse.readdirplus = true;
  if (no_local_reads) config.local_reads = false;
  if (sync_closes) config.async_closes = false;
  if (debug) config.fuse.debug = true;
  if (config.fuse.allow_other && geteuid() != 0) {
    // fusermount3 refuses allow_other for users unless /etc/fuse.conf says user_allow_other.
    std::ifstream conf("/etc/fuse.conf");
    std::string line;
    bool allowed = false;
    while (std::getline(conf, line)) allowed |= line.rfind("user_allow_other", 0) == 0;
    if (!allowed) {
      FF_LOG_WARN("ff-fuse: not root and /etc/fuse.conf lacks user_allow_other: only this user may use the mount");
      config.fuse.allow_other = false;
    }
  }
  Status valid = validate(config);
  if (!valid.is_ok()) {
    FF_LOG_ERROR("{}", valid);
    return 2;
  }
  return config.memory_data ? run_memory_data(config) : run_storage(config);
}
