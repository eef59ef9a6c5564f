// ff-meta: the fs metadata server. Serves meta::MetaApi over our TCP transport (a tcp:// listen address) or gRPC
// (host:port; include/ff/fs/meta_rpc.h) from a
// MetaService on a transactional KV store: embedded RocksDB (one server) or etcd (any number of
// stateless servers on one store). New files are striped over the chains of one chain table, taken
// from mgmtd's routing (waited for at start, refreshed periodically); lengths are made exact and
// removed files' chunks deleted through the storage servers (StorageFiles). Periodically reclaims the
// sessions of clients whose lease ran out and collects removed files' chunks.
//
//   ff-meta --config deploy/fs/meta.toml          serve until SIGTERM/SIGINT
//   ff-meta --config deploy/fs/meta.toml --fsck   check the namespace in the store (server stopped
//                                                 for RocksDB) and print a JSON report; exit 1 if bad
#include <CLI/CLI.hpp>
#include <nlohmann/json.hpp>

#include <atomic>
#include <condition_variable>
#include <cstdio>
#include <cstdlib>
#include <future>
#include <mutex>
#include <random>
#include <thread>

#include "ff/common/log.h"
#include "ff/common/malloc_tuning.h"
#include "ff/fs/client.h"
#include "ff/fs/kv_engines.h"
#include "ff/fs/meta.h"
#include "ff/fs/meta_rpc.h"
#include "ff/fs/rpc/metrics.h"
#include "ff/fs/rpc/process.h"
#include "ff/fs/rpc/tcp_transport.h"
#include "ff/fs/rpc/toml_config.h"

namespace {

using namespace ff;
using namespace ff::fs;
using namespace ff::fs::rpc;

struct Config {
  std::string listen = "127.0.0.1:9300";
  std::string address_file;
  std::string mgmtd;  // "" = no storage: standalone_chains chains 1..N, lengths from client reports only
  uint32_t standalone_chains = 0;
  uint32_t chain_table = 1;
  uint32_t stripe = 1;
  uint32_t chunk_size = 1u << 20;
  uint32_t inode_batch = 256;
  double client_lease_s = 60;
  double maintenance_interval_s = 5;
  double routing_refresh_s = 10;
  double routing_wait_s = 60;
  double storage_timeout_s = 30;
  // The longest a SIGTERM / SIGINT stop waits for running operations before the process exits anyway.
  double stop_timeout_s = 10;
  uint32_t rpc_threads = 256;
  uint64_t rpc_max_queued = meta::MetaServerOptions{}.max_queued;
  std::string kv_kind = "rocksdb";
  std::string kv_path;
  bool kv_sync = true;
  std::vector<std::string> kv_endpoints;
  std::string kv_prefix = "/ff/meta/";
  std::string metrics_listen = "127.0.0.1:0";
  double stats_interval_s = 10;
};

Result<Config> load_config(const std::string& path) {
  FF_ASSIGN_OR_RETURN(TomlReader reader, TomlReader::from_file(path));
  Config c;
  FF_RETURN_IF_ERROR(reader.read("meta.listen", &c.listen));
  FF_RETURN_IF_ERROR(reader.read("meta.address_file", &c.address_file));
  FF_RETURN_IF_ERROR(reader.read("meta.mgmtd", &c.mgmtd));
  FF_RETURN_IF_ERROR(reader.read("meta.standalone_chains", &c.standalone_chains));
  FF_RETURN_IF_ERROR(reader.read("meta.chain_table", &c.chain_table));
  FF_RETURN_IF_ERROR(reader.read("meta.stripe", &c.stripe));
  FF_RETURN_IF_ERROR(reader.read("meta.chunk_size", &c.chunk_size));
  FF_RETURN_IF_ERROR(reader.read("meta.inode_batch", &c.inode_batch));
  FF_RETURN_IF_ERROR(reader.read("meta.client_lease_s", &c.client_lease_s));
  FF_RETURN_IF_ERROR(reader.read("meta.maintenance_interval_s", &c.maintenance_interval_s));
  FF_RETURN_IF_ERROR(reader.read("meta.routing_refresh_s", &c.routing_refresh_s));
  FF_RETURN_IF_ERROR(reader.read("meta.routing_wait_s", &c.routing_wait_s));
  FF_RETURN_IF_ERROR(reader.read("meta.storage_timeout_s", &c.storage_timeout_s));
  FF_RETURN_IF_ERROR(reader.read("meta.stop_timeout_s", &c.stop_timeout_s));
  FF_RETURN_IF_ERROR(reader.read("meta.rpc_threads", &c.rpc_threads));
  FF_RETURN_IF_ERROR(reader.read("meta.rpc_max_queued", &c.rpc_max_queued));
  FF_RETURN_IF_ERROR(reader.read("kv.kind", &c.kv_kind));
  FF_RETURN_IF_ERROR(reader.read("kv.path", &c.kv_path));
  FF_RETURN_IF_ERROR(reader.read("kv.sync", &c.kv_sync));
  FF_RETURN_IF_ERROR(reader.read("kv.etcd_endpoints", &c.kv_endpoints));
  FF_RETURN_IF_ERROR(reader.read("kv.etcd_prefix", &c.kv_prefix));
  FF_RETURN_IF_ERROR(reader.read("metrics.listen", &c.metrics_listen));
  FF_RETURN_IF_ERROR(reader.read("metrics.stats_interval_s", &c.stats_interval_s));
  FF_RETURN_IF_ERROR(reader.finish());
  if (!c.listen.starts_with("unix:")) {
    std::string_view host_port = c.listen;
    if (host_port.starts_with(kTcpScheme)) host_port.remove_prefix(kTcpScheme.size());  // our TCP transport
    FF_RETURN_IF_ERROR(parse_host_port(host_port).status());
  }
  if (c.mgmtd.empty()) {
    if (c.standalone_chains == 0) {
      return invalid_argument(
          "{}: meta.mgmtd is empty and meta.standalone_chains = 0: name mgmtd's address (the "
          "chain table's chains come from its routing) or, without storage, a chain count",
          path);
    }
  } else {
    FF_RETURN_IF_ERROR(check_host_port_list(c.mgmtd));
  }
  if (c.chain_table == 0) return invalid_argument("{}: meta.chain_table = 0 is invalid (ids start at 1)", path);
  if (c.stripe == 0) return invalid_argument("{}: meta.stripe = 0, expected >= 1", path);
  if (c.client_lease_s <= 0 || c.maintenance_interval_s <= 0 || c.routing_refresh_s <= 0 || c.routing_wait_s <= 0 ||
      c.storage_timeout_s <= 0 || c.stop_timeout_s <= 0 || c.stats_interval_s <= 0) {
    return invalid_argument("{}: every *_s setting of [meta] and [metrics] must be positive", path);
  }
  if (c.rpc_threads < 2) return invalid_argument("{}: meta.rpc_threads = {}, expected >= 2", path, c.rpc_threads);
  if (c.rpc_max_queued < 1 || c.rpc_max_queued > (uint64_t{1} << 24)) {
    return invalid_argument("{}: meta.rpc_max_queued = {}, expected 1..16777216", path, c.rpc_max_queued);
  }
  if (c.kv_kind == "rocksdb") {
    if (c.kv_path.empty()) return invalid_argument("{}: kv.kind = \"rocksdb\" needs kv.path", path);
  } else if (c.kv_kind == "etcd") {
    if (c.kv_endpoints.empty()) return invalid_argument("{}: kv.kind = \"etcd\" needs kv.etcd_endpoints", path);
    for (const auto& endpoint : c.kv_endpoints) FF_RETURN_IF_ERROR(parse_host_port(endpoint).status());
  } else {
    return invalid_argument("{}: kv.kind = \"{}\", expected \"rocksdb\" or \"etcd\"", path, c.kv_kind);
  }
  return c;
}

Result<std::unique_ptr<kv::KvEngine>> open_kv(const Config& config) {
  if (config.kv_kind == "rocksdb") return kv::open_rocksdb_kv({.path = config.kv_path, .sync = config.kv_sync});
  // NOTE: the etcd engine talks to one member; the others of the list are not used yet.
  return kv::open_etcd_kv({.endpoint = config.kv_endpoints.front(),
                           .more_endpoints = {config.kv_endpoints.begin() + 1, config.kv_endpoints.end()},
                           .prefix = config.kv_prefix});
}

meta::MetaConfig meta_config(const Config& config, std::vector<ChainId> chains) {
  meta::MetaConfig out;
  out.chain_table = config.chain_table;
  out.chains = std::move(chains);
  out.stripe = std::min<uint32_t>(config.stripe, static_cast<uint32_t>(out.chains.size()));
  out.chunk_size = config.chunk_size;
  out.inode_batch = config.inode_batch;
  out.client_lease_ms = static_cast<int64_t>(config.client_lease_s * 1000);
  return out;
}

// Storage access for lengths and removals: StorageClient on its own executor.
struct Storage {
  ThreadExecutor executor{"meta-storage", 2};
  NetRpcClient rpc{executor};
  std::unique_ptr<StorageClient> client;
  std::unique_ptr<meta::StorageFiles> files;

  Storage(const Config& config) {
    ClientConfig client_config;
    client_config.client_id = std::random_device{}() | (uint64_t{std::random_device{}()} << 32);
    client_config.mgmtd_address = config.mgmtd;
    client_config.op_timeout_ns = static_cast<int64_t>(config.storage_timeout_s * 1e9);
    client = std::make_unique<StorageClient>(client_config, executor, rpc);
    files = std::make_unique<meta::StorageFiles>(
        *client, executor,
        meta::StorageFilesOptions{.op_timeout_ms = static_cast<int64_t>(config.storage_timeout_s * 1000)});
  }
  ~Storage() {
    for (int i = 0; i < 100 && rpc.in_flight() > 0; ++i) std::this_thread::sleep_for(std::chrono::milliseconds(20));
    executor.stop();
  }

  // The chain table from fresh routing: its chains (empty when mgmtd does not list the table yet) and
  // its space (nullopt while none of its targets has reported any), from the same answer.
  struct Table {
    std::vector<ChainId> chains;
    std::optional<ChainTableSpace> space;
    // Hands the space to `service` for statfs (when known).
    void report_space(meta::MetaService& service) const {
      if (space) service.set_storage_space(space->capacity_bytes, space->free_bytes);
    }
  };
  Result<Table> table(ChainTableId id) {
    auto promise = std::make_shared<std::promise<Result<Table>>>();
    auto future = promise->get_future();
    StorageClient* storage_client = client.get();
    executor.post([storage_client, promise, id] {
      storage_client->refresh_routing([storage_client, promise, id](Result<RoutingVersion> version) {
        if (!version.is_ok()) return promise->set_value(version.status());
        const RoutingInfo& routing = storage_client->routing();
        auto found = routing.chain_tables.find(id);
        promise->set_value(Table{found == routing.chain_tables.end() ? std::vector<ChainId>{} : found->second.chains,
                                 chain_table_space(routing, storage_client->space(), id)});
      });
    });
    if (future.wait_for(std::chrono::seconds(30)) != std::future_status::ready) {
      return deadline_exceeded("routing from mgmtd did not arrive within 30 s");
    }
    return future.get();
  }
};

int fsck(const Config& config) {
  auto engine = open_kv(config);
  if (!engine.is_ok()) {
    FF_LOG_ERROR("{}", engine.status());
    return 2;
  }
  auto service = meta::MetaService::open(**engine, meta_config(config, {1}));
  if (!service.is_ok()) {
    FF_LOG_ERROR("{}", service.status());
    return 2;
  }
  auto report = (*service)->fsck();
  if (!report.is_ok()) {
    FF_LOG_ERROR("fsck: {}", report.status());
    return 2;
  }
  nlohmann::json out = {{"inodes", report->inodes}, {"entries", report->entries}, {"problems", report->problems}};
  std::printf("%s\n", out.dump().c_str());
  return report->problems.empty() ? 0 : 1;
}

int serve(const Config& config) {
  MetricsRegistry metrics;
  auto metrics_server = start_metrics_endpoint(metrics, config.metrics_listen, "ff-meta");
  if (!metrics_server.is_ok()) {
    FF_LOG_ERROR("{}", metrics_server.status());
    return metrics_server.status().code() == StatusCode::kInvalidArgument ? 2 : 1;
  }
  auto engine = open_kv(config);
  if (!engine.is_ok()) {
    FF_LOG_ERROR("kv: {}", engine.status());
    return 1;
  }

  // Chains: from mgmtd's routing (waited for), or 1..N without storage.
  std::unique_ptr<Storage> storage;
  std::vector<ChainId> chains;
  Storage::Table table;  // with mgmtd: the chain table as the start found it
  if (config.mgmtd.empty()) {
    for (ChainId chain = 1; chain <= config.standalone_chains; ++chain) chains.push_back(chain);
    FF_LOG_WARN(
        "ff-meta: no mgmtd configured: {} standalone chains, lengths from client reports only, removed "
        "files' chunks are not deleted",
        chains.size());
  } else {
    storage = std::make_unique<Storage>(config);
    int64_t give_up_ms = system_clock().now_ms() + static_cast<int64_t>(config.routing_wait_s * 1000);
    while (true) {
      auto found = storage->table(config.chain_table);
      if (found.is_ok() && !found->chains.empty()) {
        table = std::move(*found);
        chains = table.chains;
        break;
      }
      if (system_clock().now_ms() >= give_up_ms) {
        FF_LOG_ERROR("ff-meta: chain table {} did not appear in mgmtd {}'s routing within {} s (last: {})",
                     config.chain_table, config.mgmtd, config.routing_wait_s,
                     found.is_ok() ? "no such chain table yet" : found.status().to_string());
        return 1;
      }
      if (wait_for_termination([] { return true; }, 300) != 0) return 0;
    }
  }
  meta::FileStorage* file_storage = storage ? storage->files.get() : nullptr;
  // Opening formats or reads the root inode. A store that is not serving yet (an etcd that restarted
  // and has no leader yet, or whose connection was refused at first) is waited for, as the routing is.
  int64_t kv_give_up_ms = system_clock().now_ms() + static_cast<int64_t>(config.routing_wait_s * 1000);
  auto opened = meta::MetaService::open(**engine, meta_config(config, chains), file_storage);
  // (The transaction's bounded retry ends an unreachable store's run in kAborted, naming the last error.)
  while (!opened.is_ok() &&
         (opened.status().code() == StatusCode::kUnavailable || opened.status().code() == StatusCode::kAborted ||
          opened.status().code() == StatusCode::kDeadlineExceeded) &&
         system_clock().now_ms() < kv_give_up_ms) {
    FF_LOG_WARN("ff-meta: the {} store is not serving yet ({}); retrying for up to {} s", config.kv_kind,
                opened.status(), config.routing_wait_s);
    if (wait_for_termination([] { return true; }, 500) != 0) return 0;
    opened = meta::MetaService::open(**engine, meta_config(config, chains), file_storage);
  }
  if (!opened.is_ok()) {
    FF_LOG_ERROR("ff-meta: {}", opened.status());
    return 1;
  }
  std::shared_ptr<meta::MetaService> service = std::move(*opened);
  std::mutex service_mutex;  // guards service (swapped when the chain table changes)
  // Until the targets' space is known (their first heartbeats may come after ff-meta starts), the
  // routing is refreshed every second instead of every routing_refresh_s.
  table.report_space(*service);
  bool space_known = table.space.has_value();

  auto server =
      meta::MetaRpcServer::start(service, meta::MetaServerOptions{.listen = config.listen,
                                                                  .max_threads = static_cast<int>(config.rpc_threads),
                                                                  .max_queued = config.rpc_max_queued,
                                                                  .inline_reads = config.kv_kind == "rocksdb",
                                                                  .metrics = &metrics});
  if (!server.is_ok()) {
    FF_LOG_ERROR("ff-meta: {}", server.status());
    return 1;
  }
  Status written = write_address_file(config.address_file, (*server)->address());
  if (!written.is_ok()) FF_LOG_WARN("address file: {}", written);
  FF_LOG_INFO("ff-meta: serving at {} (kv {}, chain table {} with {} chains, stripe {}, chunk {} bytes)",
              (*server)->address(), config.kv_kind, config.chain_table, chains.size(),
              std::min<size_t>(config.stripe, chains.size()), config.chunk_size);

  Counter& reclaimed = metrics.counter("ff_meta_sessions_reclaimed_total", "Sessions of expired clients removed.");
  Counter& collected = metrics.counter("ff_meta_files_collected_total", "Removed files whose chunks were deleted.");
  Gauge& chain_count = metrics.gauge("ff_meta_chains", "Chains new files are striped over.");
  chain_count.set(static_cast<int64_t>(chains.size()));

  // Maintenance: lease reclaim + garbage collection, routing refresh (a changed chain table swaps in a
  // new service instance; running requests finish on the old one).
  std::mutex stop_mutex;
  std::condition_variable stop_wake;
  bool stopping = false;
  std::thread maintenance([&] {
    int64_t next_maintenance_ms = 0,
            next_routing_ms = system_clock().now_ms() + (space_known ? config.routing_refresh_s * 1000 : 1000);
    std::unique_lock lock(stop_mutex);
    while (!stopping) {
      stop_wake.wait_for(lock, std::chrono::milliseconds(200));
      if (stopping) break;
      lock.unlock();
      int64_t now = system_clock().now_ms();
      std::shared_ptr<meta::MetaService> current;
      {
        std::lock_guard guard(service_mutex);
        current = service;
      }
      if (now >= next_maintenance_ms) {
        next_maintenance_ms = now + static_cast<int64_t>(config.maintenance_interval_s * 1000);
        auto sessions = current->reclaim_expired_sessions();
        if (!sessions.is_ok()) FF_LOG_WARN("reclaim_expired_sessions: {}", sessions.status());
        if (sessions.is_ok() && *sessions > 0) {
          reclaimed.add(*sessions);
          FF_LOG_INFO("ff-meta: reclaimed {} sessions of expired clients", *sessions);
        }
        auto files = current->collect_garbage();
        if (!files.is_ok()) FF_LOG_WARN("collect_garbage: {}", files.status());
        if (files.is_ok()) collected.add(*files);
      }
      if (storage && now >= next_routing_ms) {
        auto fresh = storage->table(config.chain_table);
        if (!fresh.is_ok()) {
          FF_LOG_WARN("routing refresh: {}", fresh.status());
        } else {
          fresh->report_space(*current);
          space_known = fresh->space.has_value();
        }
        next_routing_ms = now + (space_known ? static_cast<int64_t>(config.routing_refresh_s * 1000) : 1000);
        if (fresh.is_ok() && !fresh->chains.empty() && fresh->chains != current->config().chains) {
          auto next = meta::MetaService::open(**engine, meta_config(config, fresh->chains), file_storage);
          if (next.is_ok()) {
            std::shared_ptr<meta::MetaService> swapped = std::move(*next);
            fresh->report_space(*swapped);
            {
              std::lock_guard guard(service_mutex);
              service = swapped;
            }
            (*server)->replace_api(swapped);
            chain_count.set(static_cast<int64_t>(fresh->chains.size()));
            FF_LOG_INFO("ff-meta: chain table {} now has {} chains; new files use them", config.chain_table,
                        fresh->chains.size());
          } else {
            FF_LOG_WARN("ff-meta: chain table changed but the service could not reopen: {}", next.status());
          }
        }
      }
      lock.lock();
    }
  });

  Histogram& latency = metrics.histogram("ff_meta_server_seconds", "Time to execute one meta request.");
  RateMeter request_rate;
  auto stats_line = [&] {
    meta::MetaRpcServer::Stats stats = (*server)->stats();
    return fmt::format(
        "req/s={:.0f} requests={} errors={} expired={} deduplicated={} p50_us={} p99_us={} sessions_reclaimed={} "
        "files_collected={} chains={}",
        request_rate.rate_per_s(stats.requests, system_clock().now_ns()), stats.requests, stats.errors, stats.expired,
        stats.deduplicated, latency.quantile_us(0.5), latency.quantile_us(0.99), reclaimed.value(), collected.value(),
        chain_count.value());
  };
  StatsReporter stats(static_cast<int64_t>(config.stats_interval_s * 1000), stats_line);

  wait_for_termination(nullptr);
  FF_LOG_INFO("ff-meta: stopping");
  // NOTE: a bounded stop. The clean stop waits for running operations, and one stuck in the KV store
  // (etcd unreachable: every attempt waits out its RPC deadline, up to max_attempts) would hold it for
  // minutes. Past stop_timeout_s the process exits without it: nothing acknowledged is lost, since an
  // operation commits in one KV transaction before it replies (what the SIGKILL tests rely on too).
  std::mutex stopped_mutex;
  std::condition_variable stopped_wake;
  bool stopped = false;
  std::thread stop_watchdog([&] {
    std::unique_lock lock(stopped_mutex);
    const auto limit = std::chrono::milliseconds(static_cast<int64_t>(config.stop_timeout_s * 1000));
    if (stopped_wake.wait_for(lock, limit, [&] { return stopped; })) return;
    FF_LOG_ERROR("ff-meta: the clean stop did not finish within meta.stop_timeout_s = {} s (an operation stuck in the "
                 "{} store?); exiting without it",
                 config.stop_timeout_s, config.kv_kind);
    ff::logger().flush();
    std::_Exit(3);
  });
  (*server)->shutdown(2000);
  {
    std::lock_guard lock(stop_mutex);
    stopping = true;
  }
  stop_wake.notify_all();
  maintenance.join();
  stats.stop();
  server->reset();
  service.reset();
  engine->reset();
  storage.reset();
  {
    std::lock_guard lock(stopped_mutex);
    stopped = true;
  }
  stopped_wake.notify_all();
  stop_watchdog.join();
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  ff::tune_malloc_for_io_buffers();  // its file I/O (fsck, StorageFiles) moves MiB-sized buffers (malloc_tuning.h)
  ff::fs::rpc::block_termination_signals();
  CLI::App app{"ff-meta: the fs metadata server (docs/fs-meta.md, docs/fs-operations.md)"};
  std::string config_path;
  bool run_fsck = false;
  app.add_option("--config", config_path, "TOML config (see deploy/fs/meta.toml)")->required();
  app.add_flag("--fsck", run_fsck, "check the namespace in the configured store, print a JSON report, exit");
  CLI11_PARSE(app, argc, argv);
  auto config = load_config(config_path);
  if (!config.is_ok()) {
    FF_LOG_ERROR("{}", config.status());
    return 2;
  }
  return run_fsck ? fsck(*config) : serve(*config);
}
