// Identifiers, target states, chains, chain tables and routing information of the fs storage layer:
// the vocabulary shared by mgmtd, the storage service, clients, the RPC layer and the simulation.
//
// Thread-safety: plain values; distinct objects may be used from distinct threads freely.
#pragma once

#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include <fmt/format.h>

#include "ff/common/status.h"

namespace ff::fs {

using NodeId = uint32_t;        // a storage (or other) server process; 0 is invalid
using TargetId = uint64_t;      // one storage target (a disk/directory of one node); 0 is invalid
using ChainId = uint32_t;       // one replication chain; 0 is invalid
using ChainVersion = uint32_t;  // bumped whenever a chain's order or a target state in it changes
using ChainTableId = uint32_t;  // a named set of chains files are striped over; 0 is invalid
using RoutingVersion = uint64_t;  // bumped whenever anything in the routing information changes

// Target ids made by mgmtd when it creates a chain table: node_id * kTargetsPerNodeLimit + local index
// + 1, so a target id names its node ("target 3002 is the 2nd target of node 3").
inline constexpr uint64_t kTargetsPerNodeLimit = 1000;
inline TargetId make_target_id(NodeId node, uint32_t local_index) {
  return static_cast<TargetId>(node) * kTargetsPerNodeLimit + local_index + 1;
}

// Public state of a target (3FS): kept by mgmtd with the chain, distributed to everyone.
enum class PublicTargetState : uint8_t {
  kServing = 0,  // alive, up to date: serves reads, receives writes
  kSyncing = 1,  // alive, recovery in progress: receives writes (as full-chunk replacements), no reads
  kWaiting = 2,  // alive, recovery not started yet: neither reads nor writes
  kLastSrv = 3,  // down, and it was the last serving target of its chain
  kOffline = 4,  // down, or its storage medium failed
};

// Local state of a target (3FS): reported by its storage service in heartbeats, derived as offline by
// mgmtd when the service's lease runs out. Known only to the service and mgmtd.
enum class LocalTargetState : uint8_t {
  kUpToDate = 0,  // alive and holding every committed write of its chain
  kOnline = 1,    // alive, but needs (or is in) recovery
  kOffline = 2,   // down or medium failure
};

std::string_view public_state_name(PublicTargetState state);  // "serving", "syncing", ...
std::string_view local_state_name(LocalTargetState state);    // "up-to-date", "online", "offline"

// Does a target in this public state receive writes (serving or syncing)?
inline bool receives_writes(PublicTargetState state) {
  return state == PublicTargetState::kServing || state == PublicTargetState::kSyncing;
}

// The 3FS transition table: the next public state of a target from its local state, its current public
// state and whether its predecessor in the chain (the target right before it in the chain order) is
// serving / exists at all. Pure; mgmtd applies it to every target of a chain in chain order.
PublicTargetState next_public_state(LocalTargetState local, PublicTargetState current, bool has_predecessor,
                                    bool predecessor_serving);

// Errors specific to fs, carried in a Status as a bracketed tag at the start of the message
// ("[stale_chain_version] chain 7: request has version 3, target has 4"), so they survive any transport
// that keeps a Status' code and message. Each has a natural StatusCode too (see fs_error()).
enum class FsError : uint16_t {
  kNone = 0,
  kStaleChainVersion,   // failed_precondition: request's chain version differs from the target's
  kChunkNotFound,       // not_found: no committed version of the chunk
  kChunkDirty,          // unavailable: a strict read hit a pending version; retry or read relaxed
  kOversize,            // invalid_argument: beyond the chunk size
  kMisaligned,          // invalid_argument: offset/length not acceptable
  kChecksumMismatch,    // data_loss: stored CRC32C does not match the bytes
  kMalformed,           // invalid_argument: a message missing fields or inconsistent
  kNotServing,          // unavailable: the target/service is not serving (state, lease, shutdown)
  kNotHead,             // failed_precondition: a client write reached a target that is not the head
  kBusy,                // resource_exhausted: a bounded queue is full; retry later
  kVersionMismatch,     // failed_precondition: a forwarded update does not fit the successor's versions
  kVersionConflict,     // aborted: successor committed the same version with different contents
  kUnknownTarget,       // not_found: a target id this node/mgmtd does not know
  kUnknownChain,        // not_found: a chain id this node/mgmtd does not know
};
std::string_view fs_error_name(FsError error);  // "stale_chain_version", ...
// Builds a Status with the error's natural code and the "[name] " prefix.
Status fs_error(FsError error, std::string message);
// The FsError a Status carries (kNone when none).
FsError fs_error_of(const Status& status);

// One target's entry in a chain.
struct ChainTarget {
  TargetId target = 0;
  PublicTargetState state = PublicTargetState::kServing;
  friend bool operator==(const ChainTarget&, const ChainTarget&) = default;
};

// A chain: ordered targets. Invariant kept by mgmtd: serving targets first (head = first), then at most
// one syncing target, then waiting, then lastsrv/offline ones. Writes flow through the serving and
// syncing targets in order; reads go to any serving target.
struct ChainInfo {
  ChainId id = 0;
  ChainVersion version = 1;
  std::vector<ChainTarget> targets;

  // The targets that receive writes, in order (serving then syncing).
  std::vector<TargetId> write_chain() const;
  // The serving targets, in order.
  std::vector<TargetId> serving() const;
  // The index of `target` in targets, or -1.
  int index_of(TargetId target) const;
  friend bool operator==(const ChainInfo&, const ChainInfo&) = default;
};

struct ChainTable {
  ChainTableId id = 0;
  uint32_t replication = 0;
  std::vector<ChainId> chains;
  friend bool operator==(const ChainTable&, const ChainTable&) = default;
};

enum class NodeStatus : uint8_t { kAlive = 0, kFailed = 1 };

struct NodeInfo {
  NodeId id = 0;
  std::string address;  // where its RPC server listens ("127.0.0.1:9001"; "node-3" in the simulation)
  NodeStatus status = NodeStatus::kFailed;
  friend bool operator==(const NodeInfo&, const NodeInfo&) = default;
};

struct TargetInfo {
  TargetId id = 0;
  NodeId node = 0;
  ChainId chain = 0;
  PublicTargetState public_state = PublicTargetState::kServing;
  LocalTargetState local_state = LocalTargetState::kOffline;
  friend bool operator==(const TargetInfo&, const TargetInfo&) = default;
};

// Everything a client or storage server needs to route requests; a snapshot from mgmtd.
struct RoutingInfo {
  RoutingVersion version = 0;
  std::map<NodeId, NodeInfo> nodes;
  std::map<TargetId, TargetInfo> targets;
  std::map<ChainId, ChainInfo> chains;
  std::map<ChainTableId, ChainTable> chain_tables;

  const ChainInfo* chain(ChainId id) const;
  const TargetInfo* target(TargetId id) const;
  const NodeInfo* node(NodeId id) const;
  // Address of the node holding `target`, or nullopt.
  std::optional<std::string> address_of(TargetId target) const;
  // Every target of `chain` serves and its node reported it up to date. (A chain table is created serving on every
  // target before mgmtd has heard from all their nodes; mgmtd then takes the silent ones offline.)
  bool fully_serving(const ChainInfo& chain) const;
  friend bool operator==(const RoutingInfo&, const RoutingInfo&) = default;
};

// A client's identity for one write, so a retried write is applied once: (client, channel) is a
// sequential stream of writes, seq increases by one per new write on that channel.
struct ClientRequestId {
  uint64_t client = 0;
  uint32_t channel = 0;
  uint64_t seq = 0;
  friend auto operator<=>(const ClientRequestId&, const ClientRequestId&) = default;
};

}  // namespace ff::fs

template <>
struct fmt::formatter<ff::fs::PublicTargetState> : fmt::formatter<std::string_view> {
  auto format(ff::fs::PublicTargetState state, fmt::format_context& context) const {
    return fmt::formatter<std::string_view>::format(ff::fs::public_state_name(state), context);
  }
};
template <>
struct fmt::formatter<ff::fs::LocalTargetState> : fmt::formatter<std::string_view> {
  auto format(ff::fs::LocalTargetState state, fmt::format_context& context) const {
    return fmt::formatter<std::string_view>::format(ff::fs::local_state_name(state), context);
  }
};
