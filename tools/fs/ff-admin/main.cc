// ff-admin: talks to ff-mgmtd.
//   ff-admin --mgmtd 127.0.0.1:9000 routing [--json]           nodes, targets, chains and their states
//   ff-admin --mgmtd ... create-chain-table --table 1 --replication 3 --targets-per-node 2 --nodes 1,2,3
//   ff-admin --mgmtd ... offline --target 1001 [--clear]       take a target offline (or clear that)
//   ff-admin --mgmtd ... wait-serving --timeout-s 30           until every target of every chain serves (and its
//                                                              node reported it up to date)
#include <CLI/CLI.hpp>
#include <nlohmann/json.hpp>

#include <iostream>
#include <map>
#include <thread>

#include "ff/common/log.h"
#include "ff/fs/chain_table.h"
#include "ff/fs/messages.h"
#include "ff/fs/mgmtd_addresses.h"
#include "ff/fs/rpc/tcp_transport.h"
#include "ff/fs/rpc/toml_config.h"

namespace {

using namespace ff;
using namespace ff::fs;
using namespace ff::fs::rpc;

// Routing and the targets' reported space (GetRoutingRsp::space).
struct RoutingView {
  RoutingInfo routing;
  std::map<TargetId, TargetSpace> space;
};

// How a chain table spreads recovery: which nodes share chains (recovery_spread over the table's chains).
RecoverySpread table_spread(const RoutingInfo& routing, const ChainTable& table) {
  ChainLayout layout;
  for (ChainId id : table.chains) {
    auto chain = routing.chains.find(id);
    if (chain == routing.chains.end()) continue;
    std::vector<TargetId> targets;
    for (const auto& member : chain->second.targets) targets.push_back(member.target);
    layout.chains.push_back(std::move(targets));
  }
  return recovery_spread(layout);
}

std::string spread_line(const RecoverySpread& spread) {
  return fmt::format("each node shares chains with {} or more peer nodes; a pair of nodes shares {}-{} chains",
                     spread.min_peers, spread.min_shared, spread.max_shared);
}

nlohmann::json routing_json(const RoutingView& view) {
  const RoutingInfo& routing = view.routing;
  nlohmann::json out;
  out["routing_version"] = routing.version;
  out["nodes"] = nlohmann::json::array();
  for (const auto& [id, node] : routing.nodes) {
    out["nodes"].push_back({{"id", id}, {"address", node.address}, {"status", node.status == NodeStatus::kAlive ? "alive" : "failed"}});
  }
  out["targets"] = nlohmann::json::array();
  for (const auto& [id, target] : routing.targets) {
    nlohmann::json entry = {{"id", id},
                            {"node", target.node},
                            {"chain", target.chain},
                            {"public_state", std::string(public_state_name(target.public_state))},
                            {"local_state", std::string(local_state_name(target.local_state))}};
    if (auto space = view.space.find(id); space != view.space.end()) {
      entry["capacity_bytes"] = space->second.capacity_bytes;
      entry["free_bytes"] = space->second.free_bytes;
      entry["filesystem"] = space->second.filesystem;
    }
    out["targets"].push_back(std::move(entry));
  }
  out["chains"] = nlohmann::json::array();
  for (const auto& [id, chain] : routing.chains) {
    nlohmann::json targets = nlohmann::json::array();
    for (const auto& t : chain.targets) targets.push_back({{"target", t.target}, {"state", std::string(public_state_name(t.state))}});
    out["chains"].push_back({{"id", id}, {"version", chain.version}, {"targets", targets}});
  }
  out["chain_tables"] = nlohmann::json::array();
  for (const auto& [id, table] : routing.chain_tables) {
    const RecoverySpread spread = table_spread(routing, table);
    out["chain_tables"].push_back({{"id", id},
                                   {"replication", table.replication},
                                   {"chains", table.chains},
                                   {"min_peers", spread.min_peers},
                                   {"min_shared", spread.min_shared},
                                   {"max_shared", spread.max_shared}});
  }
  return out;
}

void print_routing(const RoutingView& view) {
  const RoutingInfo& routing = view.routing;
  std::cout << fmt::format("routing version {}\n\nnodes:\n", routing.version);
  for (const auto& [id, node] : routing.nodes) {
    std::cout << fmt::format("  {:>6}  {:<22} {}\n", id, node.address, node.status == NodeStatus::kAlive ? "alive" : "failed");
  }
  std::cout << "\ntargets:\n";
  for (const auto& [id, t] : routing.targets) {
    std::string space;
    if (auto found = view.space.find(id); found != view.space.end() && found->second.capacity_bytes > 0) {
      space = fmt::format("  {:.1f} of {:.1f} GiB free", found->second.free_bytes / double(1ull << 30),
                          found->second.capacity_bytes / double(1ull << 30));
    }
    std::cout << fmt::format("  {:>8}  node {:<5} chain {:<5} {:<8} (local {}){}\n", id, t.node, t.chain, t.public_state,
                             t.local_state, space);
  }
  std::cout << "\nchains:\n";
  for (const auto& [id, chain] : routing.chains) {
    std::string targets;
    for (const auto& t : chain.targets) targets += fmt::format(" {}({})", t.target, t.state);
    std::cout << fmt::format("  {:>6}  v{:<4}{}\n", id, chain.version, targets);
  }
  std::cout << "\nchain tables:\n";
  for (const auto& [id, table] : routing.chain_tables) {
    std::cout << fmt::format("  {:>6}  replication {} chains {}\n          {}\n", id, table.replication,
                             fmt::join(table.chains, ","), spread_line(table_spread(routing, table)));
  }
}

// One call to whichever mgmtd of the list serves: the next address after one that is unreachable,
// silent or not serving (a standby does not listen), each tried once.
Result<Response> call_mgmtd(RpcClient& rpc, MgmtdAddresses& mgmtd, Request request, int64_t timeout_ns) {
  Result<Response> response = internal_error("no mgmtd address");
  for (size_t tried = 0; tried < mgmtd.all().size(); ++tried) {
    const std::string address = mgmtd.current();
    response = call_blocking(rpc, address, request, timeout_ns);
    if (response.is_ok() || !mgmtd.failed(address, response.status())) break;
  }
  return response;
}

Result<RoutingView> get_routing(RpcClient& rpc, MgmtdAddresses& mgmtd, int64_t timeout_ns) {
  FF_ASSIGN_OR_RETURN(GetRoutingRsp rsp, response_as<GetRoutingRsp>(call_mgmtd(rpc, mgmtd, Request{GetRoutingReq{0}}, timeout_ns)));
  RoutingView view;
  for (TargetSpace& space : rsp.space) view.space[space.target] = std::move(space);
  if (!rsp.routing) {
    // An empty cluster (routing version 0) has nothing newer than what we know.
    if (rsp.routing_version == 0) return view;
    return internal_error("mgmtd {} answered GetRouting (version {}) without routing", mgmtd.current(),
                          rsp.routing_version);
  }
  view.routing = std::move(*rsp.routing);
  return view;
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"ff-admin: fs cluster administration (docs/fs-operations.md)"};
  app.require_subcommand(1);
  std::string mgmtd = "127.0.0.1:9000";
  double timeout_s = 5;
  app.add_option("--mgmtd", mgmtd, "ff-mgmtd address host:port, or a primary and its standbys: host:port,host:port");
  app.add_option("--rpc-timeout-s", timeout_s, "deadline of each call");

  auto* routing_cmd = app.add_subcommand("routing", "list nodes, targets, chains and their states");
  bool json = false;
  routing_cmd->add_flag("--json", json, "print JSON");

  auto* create_cmd = app.add_subcommand("create-chain-table", "create a chain table over storage nodes");
  CreateChainTableReq create;
  create_cmd->add_option("--table", create.table, "chain table id (>= 1)")->required();
  create_cmd->add_option("--replication", create.replication, "targets per chain");
  create_cmd->add_option("--targets-per-node", create.targets_per_node, "targets each node contributes");
  create_cmd->add_option("--nodes", create.nodes, "storage node ids")->delimiter(',')->required();

  auto* offline_cmd = app.add_subcommand("offline", "take a target offline (or clear that with --clear)");
  SetTargetOfflineReq offline;
  bool clear = false;
  offline_cmd->add_option("--target", offline.target, "target id")->required();
  offline_cmd->add_flag("--clear", clear, "let the target return (it recovers, then serves)");

  auto* wait_cmd = app.add_subcommand("wait-serving", "wait until every target of every chain is serving");
  double wait_timeout_s = 60;
  wait_cmd->add_option("--timeout-s", wait_timeout_s, "give up after this long (exit 1)");
  CLI11_PARSE(app, argc, argv);

  Status checked = check_host_port_list(mgmtd);
  if (!checked.is_ok()) {
    FF_LOG_ERROR("--mgmtd: {}", checked);
    return 2;
  }
  MgmtdAddresses mgmtd_list = MgmtdAddresses::unchecked(mgmtd);
  ThreadExecutor executor("admin", 1);
  NetRpcClient rpc(executor);
  int64_t timeout_ns = static_cast<int64_t>(timeout_s * 1e9);
  int code = 0;
  if (*routing_cmd) {
    auto routing = get_routing(rpc, mgmtd_list, timeout_ns);
    if (!routing.is_ok()) {
      FF_LOG_ERROR("{}", routing.status());
      code = 1;
    } else if (json) {
      std::cout << routing_json(*routing).dump(2) << "\n";
    } else {
      print_routing(*routing);
    }
  } else if (*create_cmd) {
    auto rsp = response_as<CreateChainTableRsp>(call_mgmtd(rpc, mgmtd_list, Request{create}, timeout_ns));
    if (!rsp.is_ok()) {
      FF_LOG_ERROR("create-chain-table: {}", rsp.status());
      code = 1;
    } else {
      std::cout << fmt::format("chain table {}: chains {}\n", create.table, fmt::join(rsp->chains, ","));
      auto routing = get_routing(rpc, mgmtd_list, timeout_ns);
      if (routing.is_ok()) {
        auto table = routing->routing.chain_tables.find(create.table);
        if (table != routing->routing.chain_tables.end()) {
          std::cout << spread_line(table_spread(routing->routing, table->second)) << "\n";
        }
      }
    }
  } else if (*offline_cmd) {
    offline.offline = !clear;
    auto rsp = response_as<SetTargetOfflineRsp>(call_mgmtd(rpc, mgmtd_list, Request{offline}, timeout_ns));
    if (!rsp.is_ok()) {
      FF_LOG_ERROR("offline: {}", rsp.status());
      code = 1;
    } else {
      std::cout << fmt::format("target {} {}; routing version {}\n", offline.target, clear ? "may return" : "offline",
                               rsp->routing_version);
    }
  } else if (*wait_cmd) {
    int64_t deadline = system_clock().now_ms() + static_cast<int64_t>(wait_timeout_s * 1000);
    code = 1;
    std::string last;
    while (system_clock().now_ms() < deadline) {
      auto routing = get_routing(rpc, mgmtd_list, timeout_ns);
      if (routing.is_ok()) {
        bool all = !routing->routing.chains.empty();
        for (const auto& [id, chain] : routing->routing.chains) all = all && routing->routing.fully_serving(chain);
        if (all) {
          code = 0;
          break;
        }
        last = "not every target serves and reports itself up to date yet";
      } else {
        last = routing.status().to_string();
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(200));
    }
    if (code != 0) FF_LOG_ERROR("wait-serving: gave up after {} s: {}", wait_timeout_s, last);
  }
  executor.stop();
  return code;
}
