// Mgmtd: the cluster manager's logic. Keeps the cluster map (nodes, targets, chains, chain tables),
// treats storage heartbeats as leases, drives target public states by the 3FS transition table, and
// serves routing information. Persists the map through a MapStore.
//
// Rules (docs/fs.md has the full table):
//   - a storage node silent for heartbeat_timeout_ns (T) is declared failed; its targets' local state
//     becomes offline;
//   - every scan_interval_ns, each chain's targets get their next public state (next_public_state);
//     targets going lastsrv/offline move to the end of the chain; any change bumps the chain version
//     and the routing version;
//   - a returning target goes offline -> waiting -> syncing (when its predecessor serves) -> serving
//     (when its node reports it up-to-date after sync).
//
// Threading: every method runs on the executor given to the constructor (handle() is called there by
// the transport). Primary/standby election (etcd lease) is outside: a standby simply does not start()
// its Mgmtd until it holds the lease (fs/rpc).
#pragma once

#include <cstdint>
#include <map>
#include <memory>

#include "ff/common/result.h"
#include "ff/fs/chain_table.h"
#include "ff/fs/map_store.h"
#include "ff/fs/messages.h"
#include "ff/fs/transport.h"
#include "ff/fs/types.h"

namespace ff::fs {

struct MgmtdConfig {
  int64_t heartbeat_timeout_ns = 10'000'000'000;  // T: lease length
  int64_t scan_interval_ns = 500'000'000;         // chain state scan and lease check period
  // After a (re)start, mgmtd waits one lease length before declaring anyone failed, so servers that
  // were alive get a chance to heartbeat.
  bool grace_after_start = true;
};

class Mgmtd {
 public:
  // executor and store must outlive the Mgmtd.
  Mgmtd(MgmtdConfig config, Executor& executor, MapStore& store);
  ~Mgmtd();
  Mgmtd(const Mgmtd&) = delete;
  Mgmtd& operator=(const Mgmtd&) = delete;

  // Loads the map from the store and starts the periodic scan. Executor thread.
  Status start();
  // Stops the scan; later requests answer [not_serving]. Executor thread.
  void stop();

  // The RPC entry point (RegisterNodeReq, HeartbeatReq, GetRoutingReq, CreateChainTableReq,
  // SetTargetOfflineReq). Executor thread.
  void handle(const ServerContext& context, Request request, Reply reply);

  // Direct calls for tests and in-process admin. Executor thread.
  Result<CreateChainTableRsp> create_chain_table(const CreateChainTableReq& request);
  RoutingInfo routing() const;

 private:
  struct State;
  std::unique_ptr<State> state_;
};

}  // namespace ff::fs
