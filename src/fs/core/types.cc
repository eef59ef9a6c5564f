#include "ff/fs/types.h"

#include <algorithm>

#include "ff/fs/messages.h"

namespace ff::fs {

std::string_view public_state_name(PublicTargetState state) {
  switch (state) {
    case PublicTargetState::kServing: return "serving";
    case PublicTargetState::kSyncing: return "syncing";
    case PublicTargetState::kWaiting: return "waiting";
    case PublicTargetState::kLastSrv: return "lastsrv";
    case PublicTargetState::kOffline: return "offline";
  }
  return "invalid";
}

std::string_view local_state_name(LocalTargetState state) {
  switch (state) {
    case LocalTargetState::kUpToDate: return "up-to-date";
    case LocalTargetState::kOnline: return "online";
    case LocalTargetState::kOffline: return "offline";
  }
  return "invalid";
}

// The table of the 3FS design notes ("Failure detection"), row by row.
PublicTargetState next_public_state(LocalTargetState local, PublicTargetState current, bool has_predecessor,
                                    bool predecessor_serving) {
  using P = PublicTargetState;
  switch (local) {
    case LocalTargetState::kUpToDate:
      switch (current) {
        case P::kServing: return P::kServing;
        case P::kSyncing: return P::kServing;
        case P::kWaiting: return P::kWaiting;
        case P::kLastSrv: return P::kServing;
        case P::kOffline: return P::kWaiting;
      }
      break;
    case LocalTargetState::kOnline:
      switch (current) {
        case P::kServing: return P::kServing;
        case P::kSyncing: return predecessor_serving ? P::kSyncing : P::kWaiting;
        case P::kWaiting: return predecessor_serving ? P::kSyncing : P::kWaiting;
        case P::kLastSrv: return P::kServing;
        case P::kOffline: return P::kWaiting;
      }
      break;
    case LocalTargetState::kOffline:
      switch (current) {
        case P::kServing: return has_predecessor ? P::kOffline : P::kLastSrv;
        case P::kSyncing: return P::kOffline;
        case P::kWaiting: return P::kOffline;
        case P::kLastSrv: return P::kLastSrv;
        case P::kOffline: return P::kOffline;
      }
      break;
  }
  return current;
}

namespace {
struct ErrorEntry {
  FsError error;
  std::string_view name;
  StatusCode code;
};
constexpr ErrorEntry kErrors[] = {
    {FsError::kNone, "none", StatusCode::kInternal},
    {FsError::kStaleChainVersion, "stale_chain_version", StatusCode::kFailedPrecondition},
    {FsError::kChunkNotFound, "chunk_not_found", StatusCode::kNotFound},
    {FsError::kChunkDirty, "chunk_dirty", StatusCode::kUnavailable},
    {FsError::kOversize, "oversize", StatusCode::kInvalidArgument},
    {FsError::kMisaligned, "misaligned", StatusCode::kInvalidArgument},
    {FsError::kChecksumMismatch, "checksum_mismatch", StatusCode::kDataLoss},
    {FsError::kMalformed, "malformed", StatusCode::kInvalidArgument},
    {FsError::kNotServing, "not_serving", StatusCode::kUnavailable},
    {FsError::kNotHead, "not_head", StatusCode::kFailedPrecondition},
    {FsError::kBusy, "busy", StatusCode::kResourceExhausted},
    {FsError::kVersionMismatch, "version_mismatch", StatusCode::kFailedPrecondition},
    {FsError::kVersionConflict, "version_conflict", StatusCode::kAborted},
    {FsError::kUnknownTarget, "unknown_target", StatusCode::kNotFound},
    {FsError::kUnknownChain, "unknown_chain", StatusCode::kNotFound},
};
}  // namespace

std::string_view fs_error_name(FsError error) {
  for (const ErrorEntry& entry : kErrors) {
    if (entry.error == error) return entry.name;
  }
  return "invalid";
}

Status fs_error(FsError error, std::string message) {
  for (const ErrorEntry& entry : kErrors) {
    if (entry.error == error) return Status(entry.code, fmt::format("[{}] {}", entry.name, message));
  }
  return Status(StatusCode::kInternal, std::move(message));
}

FsError fs_error_of(const Status& status) {
  if (status.is_ok()) return FsError::kNone;
  const std::string& message = status.message();
  // The tag may follow context prefixes ("forward to 3001: [stale_chain_version] ..."): find it.
  for (const ErrorEntry& entry : kErrors) {
    if (entry.error == FsError::kNone) continue;
    if (message.find(fmt::format("[{}]", entry.name)) != std::string::npos) return entry.error;
  }
  return FsError::kNone;
}

std::vector<TargetId> ChainInfo::write_chain() const {
  std::vector<TargetId> result;
  for (const ChainTarget& entry : targets) {
    if (receives_writes(entry.state)) result.push_back(entry.target);
  }
  return result;
}

std::vector<TargetId> ChainInfo::serving() const {
  std::vector<TargetId> result;
  for (const ChainTarget& entry : targets) {
    if (entry.state == PublicTargetState::kServing) result.push_back(entry.target);
  }
  return result;
}

int ChainInfo::index_of(TargetId target) const {
  for (size_t i = 0; i < targets.size(); ++i) {
    if (targets[i].target == target) return static_cast<int>(i);
  }
  return -1;
}

const ChainInfo* RoutingInfo::chain(ChainId id) const {
  auto it = chains.find(id);
  return it == chains.end() ? nullptr : &it->second;
}
bool RoutingInfo::fully_serving(const ChainInfo& chain) const {
  for (const ChainTarget& member : chain.targets) {
    const TargetInfo* info = target(member.target);
    if (member.state != PublicTargetState::kServing || info == nullptr ||
        info->local_state != LocalTargetState::kUpToDate) {
      return false;
    }
  }
  return !chain.targets.empty();
}

const TargetInfo* RoutingInfo::target(TargetId id) const {
  auto it = targets.find(id);
  return it == targets.end() ? nullptr : &it->second;
}
const NodeInfo* RoutingInfo::node(NodeId id) const {
  auto it = nodes.find(id);
  return it == nodes.end() ? nullptr : &it->second;
}
std::optional<std::string> RoutingInfo::address_of(TargetId id) const {
  const TargetInfo* info = target(id);
  if (info == nullptr) return std::nullopt;
  const NodeInfo* node_info = node(info->node);
  if (node_info == nullptr) return std::nullopt;
  return node_info->address;
}

std::string_view request_name(const Request& request) {
  static constexpr std::string_view kNames[] = {
      "RegisterNodeReq", "HeartbeatReq",   "GetRoutingReq", "CreateChainTableReq", "SetTargetOfflineReq", "WriteReq",
      "ReadReq",         "BatchReadReq",   "BatchWriteReq", "QueryLastChunkReq",   "RemoveChunksReq",     "ForwardReq",
      "SyncDumpMetaReq", "SyncReplaceReq", "SyncDoneReq",   "MetaCallReq"};
  static_assert(std::size(kNames) == std::variant_size_v<Request>, "one name per Request alternative");
  return kNames[request.index()];
}

}  // namespace ff::fs
