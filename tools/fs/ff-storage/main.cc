// ff-storage: one storage server. Serves the CRAQ storage service (ff/fs/storage_service.h) over gRPC for
// several targets, each a ChunkEngine in its own directory; registers with ff-mgmtd and heartbeats.
// Target ids are the ones mgmtd assigns when it creates a chain table: make_target_id(node_id, i) for
// the i-th entry of storage.targets.
//
//   ff-storage --config deploy/fs/storage.toml
#include <CLI/CLI.hpp>

#include "ff/common/log.h"
#include "ff/common/malloc_tuning.h"
#include "ff/fs/chunk_engine.h"
#include "ff/fs/rpc/metrics.h"
#include "ff/fs/rpc/process.h"
#include "ff/fs/rpc/tcp_transport.h"
#include "ff/fs/rpc/toml_config.h"
#include "ff/fs/storage_service.h"

namespace {

using namespace ff;
using namespace ff::fs;
using namespace ff::fs::rpc;

struct Config {
  uint32_t node_id = 0;
  std::string listen;
  std::string mgmtd;
  std::vector<std::string> targets;
  double heartbeat_interval_s = 1;
  double heartbeat_timeout_s = 10;
  double rpc_timeout_s = 2;
  uint32_t worker_threads = 8;
  uint32_t sync_batch = StorageConfig{}.sync_batch;          // chunks replaced at once during recovery
  uint32_t sync_dump_page = StorageConfig{}.sync_dump_page;  // chunk metadata per recovery listing page
  double scrub_mb_per_s = 8;                                 // background scrub read rate (0: off)
  double scrub_pass_pause_s = 86400;                         // between scrub passes
  bool direct_io = true;
  bool sync_data = true;
  uint32_t group_sync_ms = 0;  // ChunkEngineOptions::group_sync_ms (0: every write durable before it is acknowledged)
  bool use_io_uring = true;
  uint64_t preallocate_mb = 64;
  bool lazy_commits = true;                  // ChunkEngineOptions::lazy_commits
  bool settle_patches_in_background = true;  // ChunkEngineOptions::settle_patches_in_background
  uint32_t settle_delay_us = ChunkEngineOptions{}.settle_delay_us;
  uint64_t merge_patch_bytes = ChunkEngineOptions{}.merge_patch_bytes;
  std::string metrics_listen = "127.0.0.1:0";
  double stats_interval_s = 10;
};

Result<Config> load_config(const std::string& path) {
  FF_ASSIGN_OR_RETURN(TomlReader reader, TomlReader::from_file(path));
  Config c;
  FF_RETURN_IF_ERROR(reader.read_required("storage.node_id", &c.node_id));
  FF_RETURN_IF_ERROR(reader.read_required("storage.listen", &c.listen));
  FF_RETURN_IF_ERROR(reader.read_required("storage.mgmtd", &c.mgmtd));
  FF_RETURN_IF_ERROR(reader.read_required("storage.targets", &c.targets));
  FF_RETURN_IF_ERROR(reader.read("storage.heartbeat_interval_s", &c.heartbeat_interval_s));
  FF_RETURN_IF_ERROR(reader.read("storage.heartbeat_timeout_s", &c.heartbeat_timeout_s));
  FF_RETURN_IF_ERROR(reader.read("storage.rpc_timeout_s", &c.rpc_timeout_s));
  FF_RETURN_IF_ERROR(reader.read("storage.worker_threads", &c.worker_threads));
  FF_RETURN_IF_ERROR(reader.read("storage.sync_batch", &c.sync_batch));
  FF_RETURN_IF_ERROR(reader.read("storage.sync_dump_page", &c.sync_dump_page));
  FF_RETURN_IF_ERROR(reader.read("storage.scrub_mb_per_s", &c.scrub_mb_per_s));
  FF_RETURN_IF_ERROR(reader.read("storage.scrub_pass_pause_s", &c.scrub_pass_pause_s));
  FF_RETURN_IF_ERROR(reader.read("chunk.direct_io", &c.direct_io));
  FF_RETURN_IF_ERROR(reader.read("chunk.sync_data", &c.sync_data));
  FF_RETURN_IF_ERROR(reader.read("chunk.group_sync_ms", &c.group_sync_ms));
  FF_RETURN_IF_ERROR(reader.read("chunk.use_io_uring", &c.use_io_uring));
  FF_RETURN_IF_ERROR(reader.read("chunk.preallocate_mb", &c.preallocate_mb));
  FF_RETURN_IF_ERROR(reader.read("chunk.lazy_commits", &c.lazy_commits));
  FF_RETURN_IF_ERROR(reader.read("chunk.settle_patches_in_background", &c.settle_patches_in_background));
  FF_RETURN_IF_ERROR(reader.read("chunk.settle_delay_us", &c.settle_delay_us));
  FF_RETURN_IF_ERROR(reader.read("chunk.merge_patch_bytes", &c.merge_patch_bytes));
  FF_RETURN_IF_ERROR(reader.read("metrics.listen", &c.metrics_listen));
  FF_RETURN_IF_ERROR(reader.read("metrics.stats_interval_s", &c.stats_interval_s));
  FF_RETURN_IF_ERROR(reader.finish());
  if (c.node_id == 0) return invalid_argument("{}: storage.node_id = 0 is invalid (ids start at 1)", path);
  FF_ASSIGN_OR_RETURN(HostPort listen, parse_host_port(c.listen));
  if (listen.port == 0) {
    return invalid_argument("{}: storage.listen = \"{}\" needs a fixed port (mgmtd and peers find the node there)",
                            path, c.listen);
  }
  FF_RETURN_IF_ERROR(check_host_port_list(c.mgmtd));
  if (c.targets.empty() || c.targets.size() >= kTargetsPerNodeLimit) {
    return invalid_argument("{}: storage.targets has {} entries, expected 1 to {}", path, c.targets.size(),
                            kTargetsPerNodeLimit - 1);
  }
  if (c.heartbeat_interval_s <= 0 || c.heartbeat_timeout_s <= 2 * c.heartbeat_interval_s) {
    return invalid_argument("{}: storage.heartbeat_timeout_s = {} must exceed twice heartbeat_interval_s = {}", path,
                            c.heartbeat_timeout_s, c.heartbeat_interval_s);
  }
  if (c.worker_threads == 0) return invalid_argument("{}: storage.worker_threads must be >= 1", path);
  if (c.group_sync_ms > 60'000) {
    return invalid_argument("{}: chunk.group_sync_ms = {}, expected 0 (off) to 60000", path, c.group_sync_ms);
  }
  if (c.sync_batch == 0) return invalid_argument("{}: storage.sync_batch = 0, expected >= 1", path);
  if (c.sync_dump_page == 0) return invalid_argument("{}: storage.sync_dump_page = 0, expected >= 1", path);
  if (!(c.scrub_mb_per_s >= 0)) {
    return invalid_argument("{}: storage.scrub_mb_per_s = {}, expected >= 0 (0: no scrub)", path, c.scrub_mb_per_s);
  }
  if (!(c.scrub_pass_pause_s >= 0)) {
    return invalid_argument("{}: storage.scrub_pass_pause_s = {}, expected >= 0", path, c.scrub_pass_pause_s);
  }
  return c;
}

int run(const Config& config) {
  MetricsRegistry metrics;
  auto metrics_server =
      start_metrics_endpoint(metrics, config.metrics_listen, fmt::format("ff-storage node {}", config.node_id));
  if (!metrics_server.is_ok()) {
    FF_LOG_ERROR("{}", metrics_server.status());
    return metrics_server.status().code() == StatusCode::kInvalidArgument ? 2 : 1;
  }

  ThreadExecutor executor(fmt::format("storage-{}", config.node_id), config.worker_threads);
  NetRpcClient rpc(executor, {}, {}, &metrics);
  // Engines are opened when routing first lists a target (the factory runs on the executor); keep them
  // here too for the stats line.
  std::mutex engines_mutex;
  std::map<TargetId, std::shared_ptr<ChunkEngine>> engines;
  ChunkStoreFactory factory = [&](TargetId target) -> Result<std::shared_ptr<ChunkStore>> {
    uint64_t base = static_cast<uint64_t>(config.node_id) * kTargetsPerNodeLimit;
    if (target <= base || target > base + config.targets.size()) {
      return fs_error(FsError::kUnknownTarget, fmt::format("target {} is not one of node {}'s {} targets", target,
                                                           config.node_id, config.targets.size()));
    }
    ChunkEngineOptions options;
    options.directory = config.targets[target - base - 1];
    options.direct_io = config.direct_io;
    options.sync_data = config.sync_data;
    options.group_sync_ms = config.group_sync_ms;
    options.use_io_uring = config.use_io_uring;
    options.preallocate_bytes_per_class = config.preallocate_mb << 20;
    options.lazy_commits = config.lazy_commits;
    options.settle_patches_in_background = config.settle_patches_in_background;
    options.settle_delay_us = config.settle_delay_us;
    options.merge_patch_bytes = config.merge_patch_bytes;
    FF_ASSIGN_OR_RETURN(std::unique_ptr<ChunkEngine> engine, ChunkEngine::open(options));
    std::shared_ptr<ChunkEngine> shared = std::move(engine);
    FF_LOG_INFO("target {}: chunk engine at {} (direct_io={}, io_uring={}, group_sync_ms={})", target,
                options.directory, shared->stats().direct_io, shared->stats().io_uring, options.group_sync_ms);
    std::lock_guard lock(engines_mutex);
    engines[target] = shared;
    return std::shared_ptr<ChunkStore>(shared);
  };

  StorageConfig storage_config;
  storage_config.node = config.node_id;
  // FF_RPC_TRANSPORT=tcp|grpc picks the transport for every server of a run (benchmark A/B); the address
  // registered with mgmtd names it, so clients and peers pick the same one.
  auto listen = listen_with_transport(config.listen);
  if (!listen.is_ok()) {
    FF_LOG_ERROR("{}", listen.status());
    return 2;
  }
  storage_config.address = *listen;
  storage_config.mgmtd_address = config.mgmtd;
  storage_config.heartbeat_interval_ns = static_cast<int64_t>(config.heartbeat_interval_s * 1e9);
  storage_config.heartbeat_timeout_ns = static_cast<int64_t>(config.heartbeat_timeout_s * 1e9);
  storage_config.rpc_timeout_ns = static_cast<int64_t>(config.rpc_timeout_s * 1e9);
  storage_config.sync_batch = config.sync_batch;
  storage_config.sync_dump_page = config.sync_dump_page;
  storage_config.scrub_bytes_per_s = static_cast<uint64_t>(config.scrub_mb_per_s * 1e6);
  storage_config.scrub_pass_pause_ns = static_cast<int64_t>(config.scrub_pass_pause_s * 1e9);
  StorageService service(storage_config, executor, rpc, factory);

  Counter& requests = metrics.counter("ff_storage_requests_total", "Requests received by the storage service.");
  auto server = start_rpc_server(
      *listen, executor,
      [&](const ServerContext& context, Request request, Reply reply) {
        requests.add();
        service.handle(context, std::move(request), std::move(reply));
      },
      &metrics,
      // Plain reads skip the executor: checked against the service's published snapshot on the
      // transport's thread, read and answered on an offload worker.
      [&](const ServerContext& context, Request& request, Reply& reply) {
        if (!service.try_handle_read(context, request, reply)) return false;
        requests.add();
        return true;
      });
  if (!server.is_ok()) {
    FF_LOG_ERROR("{}", server.status());
    return 1;
  }
  Status started;
  Status ran = executor.run_sync([&] { started = service.start(); }, 30000);
  if (!ran.is_ok() || !started.is_ok()) {
    FF_LOG_ERROR("storage start: {}", ran.is_ok() ? started : ran);
    return 1;
  }
  FF_LOG_INFO("ff-storage node {}: serving at {} with {} targets, mgmtd {}", config.node_id, (*server)->address(),
              config.targets.size(), config.mgmtd);

  Gauge& serving = metrics.gauge("ff_storage_serving", "1 while the service holds a lease from mgmtd.");
  Counter& read_bytes = metrics.counter("ff_storage_read_bytes_total", "Bytes returned by chunk reads.");
  Counter& write_bytes = metrics.counter("ff_storage_write_bytes_total", "Bytes written to chunk data files.");
  // Counters of the chunk engines: synced I/O (docs/fs-operations.md, "Synced I/Os per write") and local
  // reads answered (docs/fs.md, "Local reads").
  struct EngineCounter {
    Counter* counter;
    uint64_t ChunkEngineStats::*field;
    uint64_t last = 0;
  };
  std::vector<EngineCounter> engine_counters = {
      {&metrics.counter("ff_storage_synced_batches_total", "RocksDB batches written with sync=true."),
       &ChunkEngineStats::synced_batches},
      {&metrics.counter("ff_storage_unsynced_batches_total", "RocksDB batches written without sync."),
       &ChunkEngineStats::unsynced_batches},
      {&metrics.counter("ff_storage_wal_syncs_total", "Explicit RocksDB WAL syncs."), &ChunkEngineStats::wal_syncs},
      {&metrics.counter("ff_storage_dsync_writes_total", "O_DIRECT+RWF_DSYNC data writes."),
       &ChunkEngineStats::dsync_data_writes},
      {&metrics.counter("ff_storage_lazy_commits_total", "Commits written as unsynced batches."),
       &ChunkEngineStats::lazy_commits},
      {&metrics.counter("ff_storage_rocksdb_wal_file_syncs_total", "RocksDB WAL file syncs (its WAL_FILE_SYNCED)."),
       &ChunkEngineStats::rocksdb_wal_file_syncs},
      {&metrics.counter("ff_storage_rocksdb_writes_grouped_total",
                        "RocksDB writes merged into another writer's group (its WRITE_DONE_BY_OTHER)."),
       &ChunkEngineStats::rocksdb_writes_by_other},
      {&metrics.counter("ff_storage_zero_copy_write_bytes_total",
                        "Bytes written to data files straight from the received payload (no copy)."),
       &ChunkEngineStats::zero_copy_write_bytes},
      {&metrics.counter("ff_storage_patched_writes_total",
                        "Small overwrites stored as a patch of the crc segments they touch."),
       &ChunkEngineStats::patched_writes},
      {&metrics.counter("ff_storage_merged_patches_total",
                        "Patches that took in the committed version's patch not yet applied (no data write)."),
       &ChunkEngineStats::merged_patches},
      {&metrics.counter("ff_storage_patches_settled_total", "Committed patches applied in place."),
       &ChunkEngineStats::patches_settled},
      {&metrics.counter("ff_storage_patches_settled_by_updates_total",
                        "Committed patches applied in place by the chunk's next update, on its critical path."),
       &ChunkEngineStats::patches_settled_by_updates},
      {&metrics.counter("ff_storage_local_reads_total",
                        "Reads answered with where the bytes lie, for a client on this host that reads them itself."),
       &ChunkEngineStats::locates},
  };
  RateMeter read_rate, write_rate, request_rate;
  uint64_t last_read = 0, last_write = 0;
  auto stats_line = [&] {
    StorageService::Stats stats;
    bool is_serving = false;
    RoutingVersion version = 0;
    (void)executor.run_sync(
        [&] {
          stats = service.stats();
          is_serving = service.serving();
          version = service.routing_version();
        },
        5000);
    serving.set(is_serving ? 1 : 0);
    uint64_t reads = 0, writes = 0;
    ChunkEngineStats sums;
    {
      std::lock_guard lock(engines_mutex);
      for (const auto& [id, engine] : engines) {
        ChunkEngineStats engine_stats = engine->stats();
        reads += engine_stats.read_bytes;
        writes += engine_stats.write_bytes;
        for (EngineCounter& counter : engine_counters) sums.*counter.field += engine_stats.*counter.field;
      }
    }
    for (EngineCounter& counter : engine_counters) {
      counter.counter->add(sums.*counter.field - counter.last);
      counter.last = sums.*counter.field;
    }
    read_bytes.add(reads - last_read);
    write_bytes.add(writes - last_write);
    last_read = reads;
    last_write = writes;
    int64_t now = system_clock().now_ns();
    return fmt::format(
        "node={} serving={} routing_version={} req/s={:.0f} read_MB/s={:.1f} write_MB/s={:.1f} writes={} forwards={} "
        "parallel_forwards={} tail_commits_in_worker={} "
        "reads={} local_reads={} inline_reads={} dirty={} syncs_done={} chunks_synced={} busy={} stale_chain={} "
        "dedupe_hits={} "
        "scrubbed={} scrub_corruptions={} scrub_passes={} "
        "synced_batches={} unsynced_batches={} wal_syncs={} dsync_writes={} lazy_commits={} "
        "rocksdb_wal_file_syncs={} rocksdb_writes_grouped={} patched_writes={} merged_patches={} patches_settled={} "
        "patches_settled_by_updates={}",
        config.node_id, is_serving, version, request_rate.rate_per_s(requests.value(), now),
        read_rate.rate_per_s(reads, now) / 1e6, write_rate.rate_per_s(writes, now) / 1e6, stats.writes, stats.forwards,
        stats.parallel_forwards, stats.tail_commits_in_worker, stats.reads, stats.local_reads, stats.inline_reads,
        stats.dirty_reads, stats.syncs_done, stats.chunks_synced, stats.busy, stats.stale_chain, stats.dedupe_hits,
        stats.chunks_scrubbed, stats.scrub_corruptions, stats.scrub_passes, sums.synced_batches, sums.unsynced_batches,
        sums.wal_syncs, sums.dsync_data_writes, sums.lazy_commits, sums.rocksdb_wal_file_syncs,
        sums.rocksdb_writes_by_other, sums.patched_writes, sums.merged_patches, sums.patches_settled,
        sums.patches_settled_by_updates);
  };
  StatsReporter stats(static_cast<int64_t>(config.stats_interval_s * 1000), stats_line);

  wait_for_termination(nullptr);
  FF_LOG_INFO("ff-storage node {}: stopping", config.node_id);
  stats.stop();
  (*server)->shutdown(1000);
  (void)executor.run_sync([&] { service.stop(); }, 5000);
  // In-flight client calls complete (each has a deadline) before the executor goes away.
  for (int i = 0; i < 100 && rpc.in_flight() > 0; ++i) std::this_thread::sleep_for(std::chrono::milliseconds(50));
  executor.stop();
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  ff::tune_malloc_for_io_buffers();  // MiB-sized payload buffers per request (malloc_tuning.h)
  ff::fs::rpc::block_termination_signals();
  CLI::App app{"ff-storage: an fs storage server (docs/fs-operations.md)"};
  std::string config_path;
  app.add_option("--config", config_path, "TOML config (see deploy/fs/storage.toml)")->required();
  CLI11_PARSE(app, argc, argv);
  auto config = load_config(config_path);
  if (!config.is_ok()) {
    FF_LOG_ERROR("{}", config.status());
    return 2;
  }
  return run(*config);
}
