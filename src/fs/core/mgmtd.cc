#include "ff/fs/mgmtd.h"

#include <algorithm>
#include <string_view>
#include <set>

#include "ff/common/assert.h"
#include "ff/common/log.h"

namespace ff::fs {

struct Mgmtd::State {
  MgmtdConfig config;
  Executor& executor;
  MapStore& store;
  bool running = false;
  uint64_t generation = 0;  // timers of an older start() stop themselves
  ClusterMap map;
  struct NodeLease {
    int64_t last_heartbeat_ns = 0;
    uint64_t incarnation = 0;
  };
  std::map<NodeId, NodeLease> leases;
  std::map<TargetId, LocalTargetState> reported;  // last local state each target's node reported
  // Last space each target's node reported (not in the cluster map: not persisted, no routing version).
  std::map<TargetId, TargetSpace> space;
  std::set<TargetId> forced_offline;

  State(MgmtdConfig c, Executor& e, MapStore& s) : config(c), executor(e), store(s) {}

  int64_t now() const { return executor.clock().now_ns(); }

  RoutingInfo routing() const {
    RoutingInfo info;
    info.version = map.routing_version;
    info.nodes = map.nodes;
    info.targets = map.targets;
    info.chains = map.chains;
    info.chain_tables = map.chain_tables;
    return info;
  }

  Status persist() {
    Status status = store.save(map);
    if (!status.is_ok()) FF_LOG_ERROR("mgmtd: saving cluster map version {} failed: {}", map.routing_version, status);
    return status;
  }

  LocalTargetState effective_local(const TargetInfo& target) const {
    if (forced_offline.count(target.id) != 0) return LocalTargetState::kOffline;
    auto node = map.nodes.find(target.node);
    if (node == map.nodes.end() || node->second.status != NodeStatus::kAlive) return LocalTargetState::kOffline;
    auto it = reported.find(target.id);
    return it == reported.end() ? LocalTargetState::kOnline : it->second;
  }

  // Applies the 3FS transition table to one chain. Returns whether it changed.
  bool update_chain(ChainInfo& chain) {
    using P = PublicTargetState;
    std::vector<ChainTarget> serving, syncing_or_waiting, down;
    std::vector<ChainTarget> serving_failed;
    for (const ChainTarget& entry : chain.targets) {
      LocalTargetState local = effective_local(map.targets.at(entry.target));
      if (entry.state == P::kServing) {
        if (local == LocalTargetState::kOffline) {
          serving_failed.push_back(entry);
        } else {
          serving.push_back(entry);
        }
      } else {
        syncing_or_waiting.push_back(entry);  // sorted out below
      }
    }
    // Serving targets that failed: the first becomes lastsrv when no serving target is left (it holds
    // every acknowledged write), the rest go offline.
    for (size_t i = 0; i < serving_failed.size(); ++i) {
      bool predecessor = !serving.empty() || i > 0;
      down.push_back({serving_failed[i].target,
                      next_public_state(LocalTargetState::kOffline, P::kServing, predecessor, false)});
    }
    // A lastsrv target whose node is back serves again (3FS: lastsrv + online/up-to-date -> serving).
    std::vector<ChainTarget> rest;
    for (const ChainTarget& entry : syncing_or_waiting) {
      LocalTargetState local = effective_local(map.targets.at(entry.target));
      if (entry.state == P::kLastSrv && local != LocalTargetState::kOffline) {
        // Only when no other target serves: otherwise those took writes it has not seen, and it must
        // recover like any other returning target.
        if (serving.empty()) {
          serving.push_back({entry.target, P::kServing});
        } else {
          rest.push_back({entry.target, P::kOffline});
        }
      } else {
        rest.push_back(entry);
      }
    }
    // Syncing / waiting / offline / lastsrv, in their previous order (syncing first). The predecessor of
    // the first one is the last serving target; of the others, the one before them.
    std::stable_sort(rest.begin(), rest.end(), [](const ChainTarget& a, const ChainTarget& b) {
      auto rank = [](P state) {
        switch (state) {
          case P::kSyncing: return 0;
          case P::kWaiting: return 1;
          case P::kOffline: return 2;
          case P::kLastSrv: return 3;
          case P::kServing: return -1;
        }
        return 4;
      };
      return rank(a.state) < rank(b.state);
    });
    std::vector<ChainTarget> alive_rest, down_rest;
    bool predecessor_serving = !serving.empty();
    for (const ChainTarget& entry : rest) {
      LocalTargetState local = effective_local(map.targets.at(entry.target));
      P next = next_public_state(local, entry.state, true, predecessor_serving);
      if (next == P::kSyncing && !predecessor_serving) next = P::kWaiting;
      if (next == P::kServing && entry.state != P::kSyncing && entry.state != P::kLastSrv) next = P::kWaiting;
      if (next == P::kLastSrv || next == P::kOffline) {
        down_rest.push_back({entry.target, next});
      } else {
        alive_rest.push_back({entry.target, next});
        // Only one target syncs at a time: the one right after the serving targets.
        predecessor_serving = next == P::kServing;
      }
    }
    // Serving ones that came out of sync join the serving prefix (a syncing target is right after it).
    std::vector<ChainTarget> order = serving;
    for (const ChainTarget& entry : alive_rest) order.push_back(entry);
    for (const ChainTarget& entry : down) order.push_back(entry);
    for (const ChainTarget& entry : down_rest) order.push_back(entry);
    FF_ASSERT_EQ(order.size(), chain.targets.size());
    // Keep the invariant: serving prefix, then syncing (at most one), then the rest.
    std::stable_partition(order.begin(), order.end(), [](const ChainTarget& e) { return e.state == P::kServing; });
    if (order == chain.targets) return false;
    chain.targets = std::move(order);
    ++chain.version;
    return true;
  }

  // Lease check and state transitions of every chain; persists and bumps the routing version on change.
  void scan() {
    bool changed = false;
    int64_t now_ns = now();
    for (auto& [id, node] : map.nodes) {
      auto& lease = leases[id];
      if (node.status == NodeStatus::kAlive && now_ns - lease.last_heartbeat_ns > config.heartbeat_timeout_ns) {
        FF_LOG_INFO("mgmtd: node {} silent for {} ms, declared failed", id, (now_ns - lease.last_heartbeat_ns) / 1000000);
        node.status = NodeStatus::kFailed;
        changed = true;
      }
    }
    for (auto& [id, chain] : map.chains) {
      if (update_chain(chain)) {
        changed = true;
        std::string order;
        for (const ChainTarget& entry : chain.targets) {
          map.targets.at(entry.target).public_state = entry.state;
          order += fmt::format(" {}={}", entry.target, entry.state);
        }
        FF_LOG_DEBUG("mgmtd: chain {} v{}:{}", id, chain.version, order);
      }
    }
    for (auto& [id, target] : map.targets) target.local_state = effective_local(target);
    if (changed) {
      ++map.routing_version;
      (void)persist();  // soft failure: retried with the next change; logged
    }
  }

  void schedule_scan(uint64_t gen) {
    executor.post_after(config.scan_interval_ns, [this, gen] {
      if (!running || gen != generation) return;
      scan();
      schedule_scan(gen);
    });
  }

  Result<CreateChainTableRsp> create_chain_table(const CreateChainTableReq& request) {
    if (request.table == 0) return invalid_argument("chain table id 0 is invalid");
    if (map.chain_tables.count(request.table) != 0) {
      return already_exists("chain table {} already exists with {} chains", request.table,
                            map.chain_tables.at(request.table).chains.size());
    }
    // New targets continue each node's local index after the targets it already has.
    std::map<NodeId, uint32_t> used;
    for (const auto& [id, target] : map.targets) used[target.node] = std::max<uint32_t>(used[target.node], id % kTargetsPerNodeLimit);
    FF_ASSIGN_OR_RETURN(ChainLayout layout, generate_chain_layout(request.nodes, request.targets_per_node, request.replication));
    ChainId next_chain = map.chains.empty() ? 1 : map.chains.rbegin()->first + 1;
    ClusterMap updated = map;
    ChainTable table{.id = request.table, .replication = request.replication, .chains = {}};
    CreateChainTableRsp rsp;
    for (const auto& targets : layout.chains) {
      ChainInfo chain{.id = next_chain++, .version = 1, .targets = {}};
      for (TargetId layout_target : targets) {
        NodeId node = static_cast<NodeId>(layout_target / kTargetsPerNodeLimit);
        TargetId target = make_target_id(node, used[node] + static_cast<uint32_t>(layout_target % kTargetsPerNodeLimit) - 1);
        if (target % kTargetsPerNodeLimit == 0 || updated.targets.count(target) != 0) {
          return resource_exhausted("node {} has no target ids left (limit {})", node, kTargetsPerNodeLimit - 1);
        }
        chain.targets.push_back({target, PublicTargetState::kServing});
        updated.targets[target] = TargetInfo{.id = target, .node = node, .chain = chain.id,
                                             .public_state = PublicTargetState::kServing,
                                             .local_state = LocalTargetState::kOnline};
        if (updated.nodes.count(node) == 0) updated.nodes[node] = NodeInfo{.id = node, .address = "", .status = NodeStatus::kFailed};
      }
      table.chains.push_back(chain.id);
      rsp.chains.push_back(chain.id);
      updated.chains[chain.id] = std::move(chain);
    }
    updated.chain_tables[table.id] = std::move(table);
    ++updated.routing_version;
    FF_RETURN_IF_ERROR(store.save(updated));
    map = std::move(updated);
    for (const auto& [id, node] : map.nodes) {
      if (leases.count(id) == 0) leases[id].last_heartbeat_ns = now();
    }
    FF_LOG_INFO("mgmtd: chain table {} created: {} chains of {} over {} nodes", request.table, rsp.chains.size(),
                request.replication, request.nodes.size());
    return rsp;
  }

  Result<Response> dispatch(Request& request) {
    if (auto* req = std::get_if<HeartbeatReq>(&request)) {
      auto node = map.nodes.find(req->node);
      if (node == map.nodes.end()) {
        return fs_error(FsError::kUnknownTarget, fmt::format("heartbeat from unknown node {}", req->node));
      }
      auto& lease = leases[req->node];
      if (req->incarnation < lease.incarnation) {
        return fs_error(FsError::kNotServing, fmt::format("heartbeat of node {} from old incarnation {} (now {})",
                                                          req->node, req->incarnation, lease.incarnation));
      }
      lease.incarnation = req->incarnation;
      lease.last_heartbeat_ns = now();
      bool changed = false;
      if (node->second.status != NodeStatus::kAlive || node->second.address != req->address) {
        node->second.status = NodeStatus::kAlive;
        node->second.address = req->address;
        changed = true;
      }
      for (const TargetHeartbeat& target : req->targets) {
        auto it = map.targets.find(target.target);
        if (it == map.targets.end() || it->second.node != req->node) continue;
        LocalTargetState local = target.local_state;
        // A syncing target's "up-to-date" counts only from a node that knows the current routing: the
        // node then holds its sync-done flag for the chain version it syncs at (an older flag, from a
        // sync before the target lost its predecessor, would promote it without the writes it missed).
        if (local == LocalTargetState::kUpToDate && it->second.public_state == PublicTargetState::kSyncing &&
            req->known_routing_version != map.routing_version) {
          local = LocalTargetState::kOnline;
        }
        reported[target.target] = local;
        if (target.capacity_bytes > 0) {
          std::string_view host = req->address;
          if (host.starts_with("tcp://")) host.remove_prefix(6);  // a server on our TCP transport (fs/rpc)
          host = host.substr(0, std::min(host.size(), host.rfind(':')));
          space[target.target] = TargetSpace{target.target, req->node, std::string(host), target.capacity_bytes,
                                             target.free_bytes, target.filesystem};
        } else {
          space.erase(target.target);
        }
      }
      if (changed) ++map.routing_version;
      scan();
      if (changed) (void)persist();
      HeartbeatRsp rsp;
      rsp.routing_version = map.routing_version;
      if (req->known_routing_version != map.routing_version) rsp.routing = routing();
      return Response{std::move(rsp)};
    }
    if (auto* req = std::get_if<GetRoutingReq>(&request)) {
      GetRoutingRsp rsp;
      rsp.routing_version = map.routing_version;
      if (req->known_routing_version != map.routing_version) rsp.routing = routing();
      for (const auto& [id, target_space] : space) {
        if (map.targets.contains(id)) rsp.space.push_back(target_space);
      }
      return Response{std::move(rsp)};
    }
    if (auto* req = std::get_if<RegisterNodeReq>(&request)) {
      if (req->node == 0) return fs_error(FsError::kMalformed, "register of node id 0");
      auto& lease = leases[req->node];
      if (req->incarnation < lease.incarnation) {
        return fs_error(FsError::kNotServing, fmt::format("register of node {} from old incarnation {} (now {})",
                                                          req->node, req->incarnation, lease.incarnation));
      }
      NodeInfo& node = map.nodes[req->node];
      bool new_incarnation = req->incarnation != lease.incarnation;
      lease.incarnation = req->incarnation;
      node.id = req->node;
      node.address = req->address;
      if (new_incarnation && node.status == NodeStatus::kAlive) {
        // The previous process of this node is gone: end its lease now so its targets recover.
        FF_LOG_INFO("mgmtd: node {} re-registered (incarnation {}); previous lease ended", req->node, req->incarnation);
        node.status = NodeStatus::kFailed;
      }
      for (auto& [id, target] : map.targets) {
        if (target.node == req->node) reported.erase(id);
      }
      ++map.routing_version;
      scan();
      (void)persist();
      return Response{RegisterNodeRsp{map.routing_version}};
    }
    if (auto* req = std::get_if<CreateChainTableReq>(&request)) {
      FF_ASSIGN_OR_RETURN(CreateChainTableRsp rsp, create_chain_table(*req));
      return Response{std::move(rsp)};
    }
    if (auto* req = std::get_if<SetTargetOfflineReq>(&request)) {
      if (map.targets.count(req->target) == 0) {
        return fs_error(FsError::kUnknownTarget, fmt::format("target {} is not in the cluster map", req->target));
      }
      if (req->offline) {
        forced_offline.insert(req->target);
      } else {
        forced_offline.erase(req->target);
      }
      scan();
      return Response{SetTargetOfflineRsp{map.routing_version}};
    }
    return fs_error(FsError::kMalformed, fmt::format("mgmtd does not serve {}", request_name(request)));
  }
};

Mgmtd::Mgmtd(MgmtdConfig config, Executor& executor, MapStore& store)
    : state_(std::make_unique<State>(config, executor, store)) {
  FF_ASSERT_GT(config.heartbeat_timeout_ns, 0);
  FF_ASSERT_GT(config.scan_interval_ns, 0);
}

Mgmtd::~Mgmtd() = default;

Status Mgmtd::start() {
  State& s = *state_;
  FF_ASSIGN_OR_RETURN(std::optional<ClusterMap> loaded, s.store.load());
  s.map = loaded.value_or(ClusterMap{});
  s.leases.clear();
  s.reported.clear();
  // Grace: every known node gets a full lease from now. Nodes loaded as alive stay alive until then;
  // their targets' last reported state is unknown, so they count as online (serving stays serving).
  for (auto& [id, node] : s.map.nodes) s.leases[id].last_heartbeat_ns = s.now();
  // A syncing target must report up-to-date again (its sync may not have finished at this version).
  for (auto& [id, target] : s.map.targets) {
    if (target.local_state == LocalTargetState::kUpToDate && target.public_state != PublicTargetState::kSyncing) {
      s.reported[id] = LocalTargetState::kUpToDate;
    }
  }
  s.running = true;
  ++s.generation;
  s.schedule_scan(s.generation);
  FF_LOG_INFO("mgmtd: started with routing version {} ({} nodes, {} chains)", s.map.routing_version, s.map.nodes.size(),
              s.map.chains.size());
  return Status::ok();
}

void Mgmtd::stop() {
  state_->running = false;
  ++state_->generation;
}

void Mgmtd::handle(const ServerContext& /*context*/, Request request, Reply reply) {
  if (!state_->running) {
    reply(fs_error(FsError::kNotServing, "mgmtd is not running (stopped or standby)"));
    return;
  }
  reply(state_->dispatch(request));
}

Result<CreateChainTableRsp> Mgmtd::create_chain_table(const CreateChainTableReq& request) {
  return state_->create_chain_table(request);
}

RoutingInfo Mgmtd::routing() const { return state_->routing(); }

}  // namespace ff::fs
