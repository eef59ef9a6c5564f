// ff-mgmtd: the fs cluster manager. Serves mgmtd's RPCs over gRPC, persists the cluster map in RocksDB
// (default) or etcd, and with etcd runs as primary or standby: the instance holding the leader key
// (attached to an etcd lease it keeps alive) serves; standbys wait for the key to disappear and take
// over. A primary that cannot renew its lease exits rather than serve with a stale map.
//
//   ff-mgmtd --config deploy/fs/mgmtd.toml
#include <CLI/CLI.hpp>

#include <atomic>
#include <thread>

#include "ff/common/log.h"
#include "ff/fs/mgmtd.h"
#include "ff/fs/rpc/etcd_client.h"
#include "ff/fs/rpc/grpc_transport.h"
#include "ff/fs/rpc/map_stores.h"
#include "ff/fs/rpc/metrics.h"
#include "ff/fs/rpc/process.h"
#include "ff/fs/rpc/toml_config.h"

namespace {

using namespace ff;
using namespace ff::fs;
using namespace ff::fs::rpc;

struct Config {
  std::string listen = "127.0.0.1:9000";
  std::string address_file;
  double heartbeat_timeout_s = 10;
  double scan_interval_s = 0.5;
  std::string store = "rocksdb";
  std::string path;
  std::vector<std::string> etcd_endpoints;
  std::string etcd_prefix = "/ff/fs/";
  int64_t lease_ttl_s = 3;
  std::string id;
  std::string metrics_listen = "127.0.0.1:0";
  double stats_interval_s = 10;
};

Result<Config> load_config(const std::string& path) {
  FF_ASSIGN_OR_RETURN(TomlReader reader, TomlReader::from_file(path));
  Config c;
  FF_RETURN_IF_ERROR(reader.read("mgmtd.listen", &c.listen));
  FF_RETURN_IF_ERROR(reader.read("mgmtd.address_file", &c.address_file));
  FF_RETURN_IF_ERROR(reader.read("mgmtd.heartbeat_timeout_s", &c.heartbeat_timeout_s));
  FF_RETURN_IF_ERROR(reader.read("mgmtd.scan_interval_s", &c.scan_interval_s));
  FF_RETURN_IF_ERROR(reader.read("mgmtd.id", &c.id));
  FF_RETURN_IF_ERROR(reader.read("store.kind", &c.store));
  FF_RETURN_IF_ERROR(reader.read("store.path", &c.path));
  FF_RETURN_IF_ERROR(reader.read("store.etcd_endpoints", &c.etcd_endpoints));
  FF_RETURN_IF_ERROR(reader.read("store.etcd_prefix", &c.etcd_prefix));
  FF_RETURN_IF_ERROR(reader.read("store.lease_ttl_s", &c.lease_ttl_s));
  FF_RETURN_IF_ERROR(reader.read("metrics.listen", &c.metrics_listen));
  FF_RETURN_IF_ERROR(reader.read("metrics.stats_interval_s", &c.stats_interval_s));
  FF_RETURN_IF_ERROR(reader.finish());
  FF_RETURN_IF_ERROR(parse_host_port(c.listen).status());
  if (c.heartbeat_timeout_s <= 0) {
    return invalid_argument("{}: mgmtd.heartbeat_timeout_s = {} must be positive", path, c.heartbeat_timeout_s);
  }
  if (c.scan_interval_s <= 0)
    return invalid_argument("{}: mgmtd.scan_interval_s = {} must be positive", path, c.scan_interval_s);
  if (c.store == "rocksdb") {
    if (c.path.empty()) return invalid_argument("{}: store.kind = \"rocksdb\" needs store.path", path);
  } else if (c.store == "etcd") {
    if (c.etcd_endpoints.empty()) return invalid_argument("{}: store.kind = \"etcd\" needs store.etcd_endpoints", path);
    if (c.lease_ttl_s < 1) return invalid_argument("{}: store.lease_ttl_s = {} must be >= 1", path, c.lease_ttl_s);
  } else {
    return invalid_argument("{}: store.kind = \"{}\", expected \"rocksdb\" or \"etcd\"", path, c.store);
  }
  if (c.id.empty()) c.id = c.listen;
  return c;
}

int run(const Config& config) {
  MetricsRegistry metrics;
  auto metrics_server = start_metrics_endpoint(metrics, config.metrics_listen, "ff-mgmtd " + config.id);
  if (!metrics_server.is_ok()) {
    FF_LOG_ERROR("{}", metrics_server.status());
    return metrics_server.status().code() == StatusCode::kInvalidArgument ? 2 : 1;
  }
  Gauge& is_primary = metrics.gauge("ff_mgmtd_primary", "1 while this mgmtd is the primary.");

  // Election (etcd only): hold the leader key under a lease before serving.
  std::shared_ptr<EtcdClient> etcd;
  int64_t lease = 0;
  std::string leader_key = config.etcd_prefix + "mgmtd_leader";
  std::atomic<bool> lost_leadership{false};
  if (config.store == "etcd") {
    auto client = EtcdClient::connect(config.etcd_endpoints, 2000);
    if (!client.is_ok()) {
      FF_LOG_ERROR("{}", client.status());
      return 1;
    }
    etcd = std::move(*client);
    FF_LOG_INFO("ff-mgmtd {}: standby, waiting for the leader key {}", config.id, leader_key);
    bool stop = false;
    while (!stop) {
      auto granted = etcd->lease_grant(config.lease_ttl_s);
      if (granted.is_ok()) {
        auto won = etcd->create_if_absent(leader_key, config.id, *granted);
        if (won.is_ok() && *won) {
          lease = *granted;
          break;
        }
        (void)etcd->lease_revoke(*granted);
      } else {
        FF_LOG_WARN("etcd: {}", granted.status());
      }
      // Poll a few times per lease: a takeover happens within lease_ttl_s + this period of the
      // primary's death.
      int signal_number = wait_for_termination([] { return true; }, 300);
      stop = signal_number != 0;
    }
    if (lease == 0) return 0;
    FF_LOG_INFO("ff-mgmtd {}: primary (lease {:x})", config.id, lease);
  }
  is_primary.set(1);

  std::unique_ptr<MapStore> store;
  auto opened = config.store == "etcd" ? open_etcd_map_store(etcd, config.etcd_prefix, leader_key, config.id)
                                       : open_rocksdb_map_store(config.path);
  if (!opened.is_ok()) {
    FF_LOG_ERROR("{}", opened.status());
    return 1;
  }
  store = std::move(*opened);

  ThreadExecutor executor("mgmtd", 1);
  MgmtdConfig mgmtd_config;
  mgmtd_config.heartbeat_timeout_ns = static_cast<int64_t>(config.heartbeat_timeout_s * 1e9);
  mgmtd_config.scan_interval_ns = static_cast<int64_t>(config.scan_interval_s * 1e9);
  Mgmtd mgmtd(mgmtd_config, executor, *store);
  Status started;
  Status ran = executor.run_sync([&] { started = mgmtd.start(); }, 30000);
  if (!ran.is_ok() || !started.is_ok()) {
    FF_LOG_ERROR("mgmtd start: {}", ran.is_ok() ? started : ran);
    return 1;
  }
  Counter& requests = metrics.counter("ff_mgmtd_requests_total", "Requests handled by mgmtd.");
  auto server = GrpcServer::start(
      config.listen, executor,
      [&](const ServerContext& context, Request request, Reply reply) {
        requests.add();
        mgmtd.handle(context, std::move(request), std::move(reply));
      },
      &metrics);
  if (!server.is_ok()) {
    FF_LOG_ERROR("{}", server.status());
    return 1;
  }
  Status written = write_address_file(config.address_file, (*server)->address());
  if (!written.is_ok()) FF_LOG_WARN("address file: {}", written);
  FF_LOG_INFO("ff-mgmtd {}: serving at {} (store {})", config.id, (*server)->address(), config.store);

  Gauge& nodes_alive = metrics.gauge("ff_mgmtd_nodes_alive", "Storage nodes with a live lease.");
  Gauge& targets_serving = metrics.gauge("ff_mgmtd_targets_serving", "Targets in public state serving.");
  Gauge& routing_version = metrics.gauge("ff_mgmtd_routing_version", "Current routing version.");
  auto stats_line = [&] {
    RoutingInfo routing;
    (void)executor.run_sync([&] { routing = mgmtd.routing(); }, 5000);
    int alive = 0, serving = 0;
    std::map<PublicTargetState, int> states;
    for (const auto& [id, node] : routing.nodes) alive += node.status == NodeStatus::kAlive;
    for (const auto& [id, target] : routing.targets) {
      ++states[target.public_state];
      serving += target.public_state == PublicTargetState::kServing;
    }
    nodes_alive.set(alive);
    targets_serving.set(serving);
    routing_version.set(static_cast<int64_t>(routing.version));
    std::string by_state;
    for (const auto& [state, count] : states) by_state += fmt::format(" {}={}", state, count);
    return fmt::format("routing_version={} nodes_alive={}/{} chains={} targets:{} requests={}", routing.version, alive,
                       routing.nodes.size(), routing.chains.size(), by_state, requests.value());
  };
  StatsReporter stats(static_cast<int64_t>(config.stats_interval_s * 1000), stats_line);

  // Lease keeper: renew every ttl/3; when the lease is gone, stop serving and exit.
  std::thread keeper;
  std::atomic<bool> stopping{false};
  if (etcd) {
    keeper = std::thread([&] {
      int64_t period_ms = std::max<int64_t>(config.lease_ttl_s * 1000 / 3, 200);
      int64_t last_ok_ms = system_clock().now_ms();
      while (!stopping.load()) {
        std::this_thread::sleep_for(std::chrono::milliseconds(period_ms));
        auto ttl = etcd->lease_keep_alive(lease);
        if (ttl.is_ok()) {
          last_ok_ms = system_clock().now_ms();
        } else if (ttl.status().code() == StatusCode::kNotFound ||
                   system_clock().now_ms() - last_ok_ms > config.lease_ttl_s * 1000) {
          FF_LOG_ERROR("ff-mgmtd {}: lost the leader lease: {}", config.id, ttl.status());
          lost_leadership.store(true);
          return;
        }
      }
    });
  }

  int signal_number = wait_for_termination([&] { return lost_leadership.load(); });
  FF_LOG_INFO("ff-mgmtd {}: stopping ({})", config.id, signal_number != 0 ? "signal" : "lost leadership");
  stopping.store(true);
  if (keeper.joinable()) keeper.join();
  stats.stop();
  (*server)->shutdown(1000);
  (void)executor.run_sync([&] { mgmtd.stop(); }, 5000);
  executor.stop();
  if (etcd && !lost_leadership.load()) (void)etcd->lease_revoke(lease);
  return lost_leadership.load() ? 3 : 0;
}

}  // namespace

int main(int argc, char** argv) {
  ff::fs::rpc::block_termination_signals();
  CLI::App app{"ff-mgmtd: the fs cluster manager (docs/fs-operations.md)"};
  std::string config_path;
  app.add_option("--config", config_path, "TOML config (see deploy/fs/mgmtd.toml)")->required();
  CLI11_PARSE(app, argc, argv);
  auto config = load_config(config_path);
  if (!config.is_ok()) {
    FF_LOG_ERROR("{}", config.status());
    return 2;
  }
  return run(*config);
}
