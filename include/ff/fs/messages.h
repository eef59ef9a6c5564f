// Every request and response of the fs storage layer (mgmtd and storage service) as plain C++ structs.
// The simulation passes them as values; the RPC layer (fs/rpc, protobuf + gRPC) converts each to a
// protobuf message of the same name and fields. A response travels as Result<Response>: errors are a
// Status (code + message, the message starting with an FsError tag where one applies, see types.h).
//
// Conventions: chain_version is the version of the sender's routing entry for the chain; a target
// whose version differs answers [stale_chain_version] and the sender refreshes routing and retries.
//
// Thread-safety: plain values.
#pragma once

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <variant>
#include <vector>

#include "ff/common/status.h"
#include "ff/fs/chunk_store.h"
#include "ff/fs/types.h"

namespace ff::fs {

using Bytes = std::vector<std::byte>;

// ---------------------------------------------------------------- mgmtd
enum class NodeType : uint8_t { kStorage = 0, kClient = 1, kMeta = 2, kAdmin = 3 };

// A node announces itself (storage servers at start; others optional). Idempotent.
struct RegisterNodeReq {
  NodeId node = 0;
  NodeType type = NodeType::kStorage;
  std::string address;
  // Distinguishes process lifetimes of one node (e.g. start time in ns; a counter in the simulation).
  // A registration with a new incarnation tells mgmtd the previous one is gone: its lease ends at once
  // and its targets go offline, so they recover before serving again.
  uint64_t incarnation = 0;
};
struct RegisterNodeRsp {
  RoutingVersion routing_version = 0;
};

// A storage server's lease renewal, every heartbeat interval. Carries the local state of each of its
// targets. mgmtd answers with the routing information when the sender's is older.
struct TargetHeartbeat {
  TargetId target = 0;
  LocalTargetState local_state = LocalTargetState::kOnline;
  // The file system the target's data lives on (statvfs of its directory; 0 / 0 when unknown, e.g. in
  // memory). `filesystem` tells targets on one file system apart from targets on several.
  uint64_t capacity_bytes = 0;
  uint64_t free_bytes = 0;
  uint64_t filesystem = 0;
};
// A target's space as its node last reported it (GetRoutingRsp::space; not part of the cluster map).
struct TargetSpace {
  TargetId target = 0;
  NodeId node = 0;
  std::string host;  // of the node's address: targets of one host with one `filesystem` share the space
  uint64_t capacity_bytes = 0;
  uint64_t free_bytes = 0;
  uint64_t filesystem = 0;
  friend bool operator==(const TargetSpace&, const TargetSpace&) = default;
};
struct HeartbeatReq {
  NodeId node = 0;
  std::string address;
  RoutingVersion known_routing_version = 0;
  std::vector<TargetHeartbeat> targets;
  uint64_t incarnation = 0;  // as registered; heartbeats of an older incarnation are ignored
};
struct HeartbeatRsp {
  RoutingVersion routing_version = 0;
  std::optional<RoutingInfo> routing;  // present when newer than known_routing_version
};

struct GetRoutingReq {
  RoutingVersion known_routing_version = 0;  // 0: always send
};
struct GetRoutingRsp {
  RoutingVersion routing_version = 0;
  std::optional<RoutingInfo> routing;  // present when newer than known_routing_version
  std::vector<TargetSpace> space;      // always: every target with a reported space
};

// Creates a chain table over the given storage nodes (generate_chain_table in chain_table.h).
struct CreateChainTableReq {
  ChainTableId table = 0;
  uint32_t replication = 3;
  uint32_t targets_per_node = 1;
  std::vector<NodeId> nodes;
};
struct CreateChainTableRsp {
  std::vector<ChainId> chains;
};

// Admin: takes a target offline (its local state is forced offline until cleared by a later request
// with offline = false).
struct SetTargetOfflineReq {
  TargetId target = 0;
  bool offline = true;
};
struct SetTargetOfflineRsp {
  RoutingVersion routing_version = 0;
};

// ---------------------------------------------------------------- storage: client-facing
// A write of a byte range of one chunk, sent by a client to the chain's head.
struct WriteReq {
  ClientRequestId request_id;
  ChainId chain = 0;
  ChainVersion chain_version = 0;
  ChunkId chunk;
  uint64_t offset = 0;
  Bytes data;
  // Optional, instead of `data` (in-process senders share their buffer; the wire carries either the
  // same way, receivers over RPC get `data`). payload() picks the one that is set.
  SharedBytes shared_data;
  // Optional (0: unknown): the file's chunk size (ChunkUpdate::chunk_size), so the first write of a
  // chunk reserves the block class the chunk will grow to.
  uint64_t chunk_size = 0;
  // Instead of writing `data` (which must be empty): the chunk's next version is its committed bytes cut, or extended
  // with zeros, to exactly `offset` bytes (a file truncate's chunk that holds the new end). One replicated version,
  // atomic on every target like any write; a chunk already that long is left as it is (its version answered).
  bool truncate = false;
  std::span<const std::byte> payload() const { return shared_data.is_set() ? shared_data.bytes : std::span<const std::byte>(data); }
};
// The acknowledgement: the version the write created, committed on every target of the write chain.
struct WriteRsp {
  uint32_t version = 0;
  uint32_t crc32c = 0;  // CRC32C of the whole chunk at that version
  uint64_t length = 0;  // chunk length at that version
};

// Reads [offset, offset+length) of a chunk's committed version from one target of the chain (any
// serving target). Strict reads of a chunk with a pending version fail with [chunk_dirty].
struct ReadReq {
  ChainId chain = 0;
  ChainVersion chain_version = 0;
  TargetId target = 0;
  ChunkId chunk;
  uint64_t offset = 0;
  uint64_t length = 0;
  ReadMode mode = ReadMode::kStrict;
  // Repair fetch between storage targets: reads the committed version (relaxed) from a target in any
  // state (syncing, waiting: a returning target may hold the only good copy of a corrupted chunk) and
  // under any chain version; the reader checks version and CRC32C itself. Never repairs in turn.
  bool any_state = false;
  // The caller's host (this_host_id(), local_read.h), asking for a local read: a target on the same
  // host answers with where the bytes lie (ReadRsp::local) instead of the bytes, when its store can.
  // Empty: an ordinary read.
  std::string local_host;
  // With local_host: a target on the caller's host answers where the whole committed version lies (the extent of
  // [0, its length)) instead of [offset, offset + length), for the caller to keep and read any range of it again
  // while nothing changes (read_stamps.h, StorageClient's cached local reads); others answer the range as usual.
  bool whole_chunk = false;
  // Local to the caller, never sent: the caller accepts the answer's bytes in ReadRsp::pieces (a
  // transport that can leaves them where it received them instead of copying them into `data`), and
  // a successful answer's completion on the transport's own thread (fs/rpc then skips the hop to the
  // caller's executor; failures still complete there).
  bool accept_pieces = false;
};
// A received payload left in the pieces the transport received it in (gRPC's slices), in order;
// `owner` keeps every piece alive. No copy into one buffer.
struct PayloadPieces {
  std::shared_ptr<const void> owner;
  std::vector<std::span<const std::byte>> pieces;
  size_t size = 0;  // sum of the pieces' sizes

  bool is_set() const { return owner != nullptr; }
  // Copies the payload's bytes [offset, offset + out.size()) into out; the range must be inside.
  void copy_to(size_t offset, std::span<std::byte> out) const {
    size_t done = 0;
    for (std::span<const std::byte> piece : pieces) {
      if (done == out.size()) return;
      if (offset >= piece.size()) {
        offset -= piece.size();
        continue;
      }
      size_t take = std::min(piece.size() - offset, out.size() - done);
      std::memcpy(out.data() + done, piece.data() + offset, take);
      done += take;
      offset = 0;
    }
  }
};
struct ReadRsp {
  ChunkMeta meta;   // metadata of the chunk on that target (committed version, length, CRC, pending)
  Bytes data;       // short at the end of the chunk
  bool dirty = false;  // relaxed reads: a newer pending version exists
  // Optional, instead of `data`: set only by a storage service answering a transport that asked for
  // shared payloads (ServerContext::shared_payloads); receivers over RPC get `data`.
  SharedBytes shared_data;
  // Optional, instead of `data`: set only for a request with accept_pieces, by a transport that keeps
  // received payloads in pieces (fs/rpc's Fs/Frame); payload() is then empty.
  PayloadPieces pieces;
  // Set instead of any payload for a local read (ReadReq::local_host): the caller reads the bytes
  // from the file itself and checks them against the segment CRCs.
  std::optional<LocalExtent> local;
  std::span<const std::byte> payload() const { return shared_data.is_set() ? shared_data.bytes : std::span<const std::byte>(data); }
};

// Batches: items are independent; each has its own status. One batch goes to one node.
struct BatchReadReq {
  std::vector<ReadReq> reads;
};
struct ReadResult {
  Status status;
  ReadRsp rsp;
};
struct BatchReadRsp {
  std::vector<ReadResult> results;
};
struct BatchWriteReq {
  std::vector<WriteReq> writes;
};
struct WriteResult {
  Status status;
  WriteRsp rsp;
};
struct BatchWriteRsp {
  std::vector<WriteResult> results;
};

// The last chunk (highest index) of inode in [begin_index, end_index) on one serving target, for a
// file's length.
struct QueryLastChunkReq {
  ChainId chain = 0;
  ChainVersion chain_version = 0;
  TargetId target = 0;
  uint64_t inode = 0;
  uint64_t begin_index = 0;
  uint64_t end_index = UINT64_MAX;
};
struct QueryLastChunkRsp {
  bool found = false;
  ChunkId last;                 // valid when found
  uint64_t last_length = 0;     // committed length of the last chunk
  uint64_t chunk_count = 0;     // chunks of the inode in the range
};

// Removes the chunks [begin, end) on every target of the chain. Sent to the head, forwarded along the
// chain like a write.
struct RemoveChunksReq {
  ClientRequestId request_id;
  ChainId chain = 0;
  ChainVersion chain_version = 0;
  ChunkId begin;
  ChunkId end;
};
struct RemoveChunksRsp {
  uint64_t removed = 0;  // on the head
};

// ---------------------------------------------------------------- storage: between targets
// A write forwarded from a predecessor to its successor in the write chain. The response is the
// commit acknowledgement: on success the successor (and everything after it) has committed `version`,
// and the predecessor commits too, then acknowledges to its own predecessor.
struct ForwardReq {
  ClientRequestId request_id;
  ChainId chain = 0;
  ChainVersion chain_version = 0;
  TargetId target = 0;  // the successor target this is for
  ChunkId chunk;
  uint32_t version = 0;          // the version the update creates
  uint64_t offset = 0;
  Bytes data;
  bool full_replacement = false;  // data is the whole chunk (forwards to a syncing target)
  uint32_t expected_crc32c = 0;   // CRC32C of the whole chunk after the update (detects conflicts)
  uint64_t expected_length = 0;
  bool remove = false;            // a forwarded RemoveChunksReq over [chunk, remove_end)
  ChunkId remove_end;
  // Resolves an orphaned pending version (its write's driver is gone: a crashed head, a forward past
  // its deadline): no data; every target that holds pending `version` with CRC expected_crc32c passes
  // it on, the last serving target commits it, and the acknowledgement commits it upstream. A target
  // that never stored that version answers [version_mismatch] (then no target downstream committed it
  // and the head may drop it).
  bool resolve_pending = false;
  SharedBytes shared_data;  // optional, instead of `data` (as WriteReq::shared_data)
  uint64_t chunk_size = 0;  // as WriteReq::chunk_size
  std::span<const std::byte> payload() const { return shared_data.is_set() ? shared_data.bytes : std::span<const std::byte>(data); }
};
struct ForwardRsp {
  uint32_t committed_version = 0;
  uint32_t committed_crc32c = 0;
  uint64_t removed = 0;
};

// Recovery, predecessor -> syncing successor: the successor's chunk metadata.
// One page of a target's chunk metadata: the chunks with ids >= `from`, in id order, at most `limit` of them (0 or
// more than the target's page size, StorageConfig::sync_dump_page: that size), so no answer outgrows the message
// limit however many chunks a target holds.
struct SyncDumpMetaReq {
  ChainId chain = 0;
  ChainVersion chain_version = 0;
  TargetId target = 0;
  ChunkId from;
  uint32_t limit = 0;
};
struct SyncDumpMetaRsp {
  std::vector<ChunkMeta> chunks;
  bool more = false;  // the page is full: ask again from the chunk after the last one listed
};
// Recovery and repair: installs `data` as committed version `version` of `chunk` on `target`
// (put_full_replacement), or removes the chunk when remove is set.
struct SyncReplaceReq {
  ChainId chain = 0;
  ChainVersion chain_version = 0;
  TargetId target = 0;
  ChunkId chunk;
  uint32_t version = 0;
  uint32_t chunk_chain_version = 0;
  Bytes data;
  bool remove = false;
};
struct SyncReplaceRsp {};
// Recovery: every chunk has been transferred; the target reports up-to-date from now on.
struct SyncDoneReq {
  ChainId chain = 0;
  ChainVersion chain_version = 0;
  TargetId target = 0;
};
struct SyncDoneRsp {};

// A metadata call carried by this transport (ff-meta on a tcp:// address, include/ff/fs/meta_rpc.h): `body` is one
// serialized ff.fs.meta.pb.MetaRequest, or with `batch` a MetaBatchRequest; the answer's body the MetaResponse
// (MetaBatchResponse). The storage services and mgmtd do not serve it.
struct MetaCallReq {
  bool batch = false;
  std::string body;
};
struct MetaCallRsp {
  std::string body;
};

// ---------------------------------------------------------------- envelopes
using Request = std::variant<RegisterNodeReq, HeartbeatReq, GetRoutingReq, CreateChainTableReq, SetTargetOfflineReq,
                             WriteReq, ReadReq, BatchReadReq, BatchWriteReq, QueryLastChunkReq, RemoveChunksReq,
                             ForwardReq, SyncDumpMetaReq, SyncReplaceReq, SyncDoneReq, MetaCallReq>;
using Response = std::variant<RegisterNodeRsp, HeartbeatRsp, GetRoutingRsp, CreateChainTableRsp, SetTargetOfflineRsp,
                              WriteRsp, ReadRsp, BatchReadRsp, BatchWriteRsp, QueryLastChunkRsp, RemoveChunksRsp,
                              ForwardRsp, SyncDumpMetaRsp, SyncReplaceRsp, SyncDoneRsp, MetaCallRsp>;

// The name of a request's type ("WriteReq"), for logs and errors.
std::string_view request_name(const Request& request);

// Unpacks a Result<Response> into the expected alternative: the error, or [malformed] naming the
// alternative that arrived instead.
template <typename T>
Result<T> response_as(Result<Response> response) {
  if (!response.is_ok()) return response.status();
  if (auto* value = std::get_if<T>(&*response)) return std::move(*value);
  return fs_error(FsError::kMalformed, fmt::format("unexpected response alternative {}", response->index()));
}

}  // namespace ff::fs
