// FileClient: the native client library of fs (issue #6 item 3). Files are named by inode; names go
// through the metadata service (meta::MetaApi: an in-process MetaService or the RPC client of ff-meta),
// data goes straight between the client and storage: chunk i of a file is ChunkId{inode, i} on chain
// inode.layout.chain_of(i), so no metadata call is on the data path except open, close, fsync and the
// length reports.
//
//   auto client = FileClient::connect({.mgmtd_address = "127.0.0.1:9000"}, meta);
//   FF_ASSIGN_OR_RETURN(auto fh, client->create(caller, meta::kRootInode, "a", 0644, meta::kOpenWrite));
//   FF_RETURN_IF_ERROR(client->write(fh, 0, bytes).status());
//   FF_RETURN_IF_ERROR(client->close(fh));
//
// Semantics:
//   - read/write split at chunk boundaries and run up to max_parallel_chunks chunk I/Os at once over
//     StorageClient, which retries across chain changes, dirty chunks and unreachable servers;
//   - a write that ends past the known length reports the new end to meta (report_length) at most once
//     per report_interval_ms, and exactly on fsync and close (which make the length exact);
//   - reads stop at the file's length (short read at the end); holes read as zeros;
//   - the client renews its sessions' lease every lease_renew_interval_ms; when it dies, meta reclaims
//     its sessions after the lease runs out.
// Errors are meta-style Status values (errno-tagged, meta::errno_of): EBADF for an unknown handle,
// EACCES/EISDIR/ETXTBSY etc. from meta, EIO for storage failures after retries (the message names the
// chunk, chain and the storage error).
//
// Thread-safety: every method may be called from any thread; one handle may be used by many threads at
// once (positional I/O). close() while another thread uses the handle is the caller's bug (EBADF).
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "ff/common/result.h"
#include "ff/fs/chunk_store.h"
#include "ff/fs/client.h"
#include "ff/fs/meta.h"
#include "ff/fs/transport.h"
#include "ff/fs/types.h"

namespace ff::fs {

struct FileClientConfig {
  std::string mgmtd_address;           // routing for storage (connect())
  uint64_t client_id = 0;              // 0: a random id (session owner and write-dedupe key)
  uint32_t max_parallel_chunks = 16;   // chunk I/Os in flight per call
  // With read coalescing on (read_rpcs_per_node > 0), chunk reads small enough to coalesce
  // (ClientConfig::coalesce_read_max_bytes) count against this limit instead: they go to each storage node in a few
  // batches, so more of them in flight cost no server parallelism, and 16 at a time starved a batch of 4 KiB reads
  // (docs/fs-usrbio.md).
  uint32_t max_parallel_small_reads = 256;
  int64_t rpc_timeout_ms = 5'000;      // one storage RPC
  int64_t op_timeout_ms = 60'000;      // one chunk I/O, retries included
  int64_t report_interval_ms = 1'000;  // length reports while writing
  int64_t lease_renew_interval_ms = 10'000;
  // Chunk reads longer than this are split into pieces read in parallel (StorageClient spreads them
  // over the chain's serving replicas), so one large read is not served by one server alone. 0: off.
  uint32_t read_split_bytes = 1u << 20;
  // Local reads (include/ff/fs/local_read.h): chunks on a storage target of this host are read from
  // the target's file by this process (checked against their CRC32C; over RPC when that fails), on
  // `local_read_threads` threads of the client's own executor (connect()).
  bool local_reads = true;
  uint32_t local_read_threads = 32;
  // A local read longer than this reads in pieces of this length, each checked as it lands (ClientConfig).
  uint64_t local_read_piece_bytes = ClientConfig{}.local_read_piece_bytes;
  // With local reads: the chunk I/Os of at most 64 KiB of one call (a read_batch, as the USRBIO ring's and the KV
  // cache's, or a read across chunks) whose chunks a kept answer serves (cached local reads) are read together by the
  // calling thread, up to this many in flight through one io_uring (StorageClient::CachedReadQueue); 0: one after
  // the other (StorageClient::read_cached_now each).
  uint32_t read_queue_depth = 32;
  // Small reads over RPC beyond this many read RPCs in flight to a storage node go out together as one batch
  // (ClientConfig::read_rpcs_per_node; 0: off).
  uint32_t read_rpcs_per_node = ClientConfig{}.read_rpcs_per_node;
  // With local reads: a read that continues the handle's previous read also reads the next ranges of the same
  // length ahead, from the targets' files on this host (StorageClient::read_ahead); a later read keeps those
  // bytes only if its own answer names the same place and every CRC matches (docs/fs-client.md, "Read-ahead").
  bool read_ahead = true;
  // How far ahead a sequential reader is read: as many ranges of its reads' length as fit in this many bytes,
  // at least one.
  uint64_t read_ahead_window_bytes = 4ull << 20;
  // Reads longer than this read nothing ahead (they keep many chunk I/Os in flight already, and their next
  // range would crowd out other handles' read-ahead: StorageClient::kMaxReadAheads ranges in all).
  uint64_t read_ahead_max_bytes = 8ull << 20;
  // Closes of handles that wrote nothing (nothing for meta to settle but the session) return at once; a thread of
  // the client sends them to meta in batches (MetaApi::close_batch: one round trip and one transaction for all
  // closes queued meanwhile). Until sent, meta still counts the session open: an unlinked file's inode lives on
  // until then. Closes of handles that wrote stay synchronous (they make the length exact). Off by default; on in
  // ff-fuse, whose RELEASE the kernel sends after close(2) has returned anyway (docs/fs-client.md).
  bool async_closes = false;
};

using FileHandle = uint64_t;

class FileClient {
 public:
  // Starts the client's own executor and gRPC client for storage. `meta` must outlive the client.
  static Result<std::unique_ptr<FileClient>> connect(FileClientConfig config, meta::MetaApi& meta);
  // Over a caller's executor and RpcClient (tests with in-process services); all must outlive it.
  static Result<std::unique_ptr<FileClient>> create(FileClientConfig config, meta::MetaApi& meta, Executor& executor,
                                                    RpcClient& rpc);
  // Closes the handles still open (best effort, errors logged).
  ~FileClient();
  FileClient(const FileClient&) = delete;
  FileClient& operator=(const FileClient&) = delete;

  meta::MetaApi& meta();
  uint64_t client_id() const;
  // Local reads so far (FileClientConfig::local_reads); any thread.
  StorageClient::LocalReadCounts local_read_counts() const;
  // Read coalescing (FileClientConfig::read_rpcs_per_node) so far; any thread.
  StorageClient::CoalescedReadCounts coalesced_read_counts() const;
  // Background closes (FileClientConfig::async_closes) so far; any thread.
  struct CloseCounts {
    uint64_t queued = 0;   // closes queued
    uint64_t batches = 0;  // close_batch calls sent
    uint64_t failed = 0;   // closes that failed for good (logged; meta reclaims the session with the client's lease)
  };
  CloseCounts close_counts() const;
  // Waits until no close is queued or being sent (or timeout_ms passed: then deadline_exceeded); closes queued
  // meanwhile are waited for too. Immediately OK without async_closes.
  Status flush_closes(int64_t timeout_ms);

  // flags: meta::OpenFlags (kOpenRead, kOpenWrite, kOpenTruncate).
  Result<FileHandle> open(const meta::Caller& caller, meta::InodeId inode, uint32_t flags);
  // Creates the file (EEXIST when the name exists) and opens it. parent_after (optional) receives the parent
  // directory as the create left it when the metadata service says (meta::OpenFile::parent), else is reset.
  Result<FileHandle> create(const meta::Caller& caller, meta::InodeId parent, std::string_view name, uint32_t mode,
                            uint32_t flags, std::optional<meta::Inode>* parent_after = nullptr);
  // Returns the bytes read (short at the end of the file).
  Result<size_t> read(FileHandle handle, uint64_t offset, std::span<std::byte> out);
  // The same read without copying the bytes anywhere: up to `length` bytes as pieces in file order,
  // left where the transport received them (gRPC's slices); holes are pieces of a shared zero buffer.
  // Each piece keeps its own bytes alive. ff-fuse replies with them as one iovec list.
  Result<std::vector<SharedBytes>> read_pieces(FileHandle handle, uint64_t offset, size_t length);
  // Returns data.size() or an error (a failed write may have written a prefix).
  Result<size_t> write(FileHandle handle, uint64_t offset, std::span<const std::byte> data);
  // Makes the written data's length exact in meta; returns the inode as meta now holds it.
  Result<meta::Inode> fsync(FileHandle handle);
  Status close(FileHandle handle);
  // The inode as this handle knows it (length: the larger of meta's and this client's writes).
  Result<meta::Inode> stat(FileHandle handle) const;

  // Many I/Os on any open handles in one call: all their chunk I/Os run in parallel (bounded by
  // max_parallel_chunks); results in request order. Used by the USRBIO-style ring API and the KV cache.
  struct ReadOp {
    FileHandle handle = 0;
    uint64_t offset = 0;
    std::span<std::byte> out;
  };
  struct WriteOp {
    FileHandle handle = 0;
    uint64_t offset = 0;
    std::span<const std::byte> data;
  };
  std::vector<Result<size_t>> read_batch(std::span<const ReadOp> ops);
  std::vector<Result<size_t>> write_batch(std::span<const WriteOp> ops);

  // meta().setattr plus this client's view of the length: a truncate through here is seen at once by
  // reads on this client's open handles of the inode (a truncate straight through meta() is seen only
  // when a read crosses the old end, or after the next open/fsync). ff-fuse uses this for setattr.
  Result<meta::Inode> setattr(const meta::Caller& caller, meta::InodeId inode, const meta::SetAttr& attr);

  // The storage side of the metadata service (file lengths from storage, truncation, chunk removal)
  // over this client's StorageClient (a meta::StorageFiles, ff/fs/storage_files.h), for an in-process
  // MetaService (tests, EmbeddedFs, tools). Lives as long as the client; blocking; callable from any
  // thread except the client's executor.
  meta::FileStorage& file_storage();

  // Open handles now (tests, tools).
  size_t open_handles() const;

 private:
  struct Impl;
  explicit FileClient(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

// A whole single-process client over a cluster: mgmtd's routing, an in-process MetaService on a KV
// engine (RocksDB directory, or memory) whose FileStorage is the client's, and the FileClient. For the
// Python bindings, the KV cache, benchmarks and tools when no ff-meta runs. Two processes must not open
// one RocksDB directory (RocksDB's LOCK refuses the second); share metadata through ff-meta instead.
// A background thread reclaims expired client sessions and removes deleted files' chunks.
struct EmbeddedFsConfig {
  std::string kv_path;                  // RocksDB directory (created when missing); empty: memory KV
  bool kv_sync = true;                  // fsync RocksDB's WAL per commit
  ChainTableId chain_table = 1;         // files are striped over this table's chains (from mgmtd)
  uint32_t stripe = 0;                  // chains per file; 0: every chain of the table
  uint32_t chunk_size = 1u << 20;       // bytes per chunk (the storage servers' max or less)
  int64_t routing_timeout_ms = 30'000;  // waits this long for mgmtd and the chain table
  int64_t gc_interval_ms = 1'000;       // session reclaim + garbage collection period
  int64_t client_lease_ms = 60'000;     // a client silent this long loses its sessions
};

class EmbeddedFs {
 public:
  static Result<std::unique_ptr<EmbeddedFs>> open(FileClientConfig client_config, EmbeddedFsConfig config);
  ~EmbeddedFs();
  EmbeddedFs(const EmbeddedFs&) = delete;
  EmbeddedFs& operator=(const EmbeddedFs&) = delete;

  FileClient& client();
  meta::MetaService& meta();

 private:
  struct Impl;
  explicit EmbeddedFs(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

}  // namespace ff::fs
