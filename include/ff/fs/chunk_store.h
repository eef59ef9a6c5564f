// ChunkStore: what one storage target keeps, the seam between the replication protocol (CRAQ, in
// storage_service) and the bytes on disk. Two implementations share this contract:
//   - ChunkEngine (chunk_engine.h): preallocated block-class files + RocksDB metadata + io_uring, on disk;
//   - MemChunkStore (fs/sim): in memory, with injectable disk errors and crash semantics, for the
//     deterministic simulation.
//
// Versions. Every chunk has a committed version (0: the chunk does not exist yet) and at most one pending
// version (0: none). A CRAQ write stores version committed+1 as pending on every target of the chain; the
// tail commits it and acknowledges; the acknowledgement commits it on each predecessor on its way back.
// A strict read of a chunk with a pending version answers "dirty" (ChunkRead::dirty, no data); a relaxed
// read returns the committed bytes and says that a newer version is pending.
//
// Durability. put_pending() returns only when the pending data and metadata are durable (fsync or
// O_DIRECT + a synced RocksDB write batch): after a crash the chunk is either still at its committed
// version or has the new pending version, never a mix. commit() is one atomic metadata update. A crash
// between writing new data and committing the metadata leaves the old committed version readable.
//
// Integrity. The CRC32C of each version's full contents is stored in its metadata and verified on every
// read; a mismatch returns kCorrupted (the storage service then repairs the chunk from a replica with
// put_full_replacement()).
//
// Thread-safety: every method may be called from any thread; calls on different chunks run concurrently;
// the caller (the storage service) serialises writes to one chunk with its chunk lock.
#pragma once

#include <cstdint>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <vector>

#include <fmt/format.h>

#include "ff/common/result.h"
#include "ff/common/status.h"

namespace ff::fs {

// A chunk is named by its file's inode and its index in the file; ordered by (inode, index), so a
// file's chunks are a contiguous key range.
struct ChunkId {
  uint64_t inode = 0;
  uint64_t index = 0;
  friend auto operator<=>(const ChunkId&, const ChunkId&) = default;
  // "inode:index" in hex and decimal, e.g. "0x2a:17".
  std::string to_string() const { return fmt::format("{:#x}:{}", inode, index); }
};

struct ChunkMeta {
  ChunkId id;
  uint32_t committed_version = 0;  // 0: no committed contents yet
  uint32_t pending_version = 0;    // 0: no pending update
  uint32_t chain_version = 0;      // version of the chain table entry under which the last update arrived
  uint64_t committed_length = 0;   // bytes of the committed version
  uint64_t pending_length = 0;     // bytes of the pending version (0 when none)
  uint32_t committed_crc32c = 0;   // CRC32C of the committed version's bytes
  uint32_t pending_crc32c = 0;
};

// One update of a chunk. offset/data write a byte range (the chunk grows as needed, holes read as zero);
// full_replacement replaces the whole contents with data (recovery and writes during sync).
struct ChunkUpdate {
  ChunkId id;
  uint32_t version = 0;        // the version this update creates: committed_version + 1
  uint32_t chain_version = 0;  // the chain version the update was sent under
  uint64_t offset = 0;
  std::span<const std::byte> data;
  bool full_replacement = false;
  // Optional (0: unknown): the chunk size of the chunk's file, the length it will grow to (as 3FS's
  // UpdateIO.chunkSize). A store may reserve that much room when it places a new version, so a chunk
  // written front to back is not copied into a bigger block at every step. Never limits the update.
  uint64_t chunk_size = 0;
  // The caller commits this version right after storing it (the chain's tail): a store may then make
  // the pending metadata durable only with the commit (ChunkEngine: an unsynced batch, made durable by
  // the commit's synced one, since RocksDB's WAL is ordered). put_pending then returns before the
  // pending version is durable; a crash before the commit may lose it (it was never acknowledged).
  // The data bytes are still durable before put_pending returns.
  bool defer_metadata_sync = false;
};

enum class ReadMode {
  kStrict,   // dirty (no data) if a pending version exists
  kRelaxed,  // committed bytes even if a pending version exists
};

struct ChunkRead {
  ChunkMeta meta;
  std::vector<std::byte> data;  // the requested range of the committed version (short at end of chunk)
  bool dirty = false;           // a pending version exists (strict reads then carry no data)
};

// Immutable bytes shared between owners without copying: a write's payload stored locally and forwarded
// to the successor, a read's buffer handed to the RPC layer. `owner` keeps `bytes` alive; a SharedBytes
// whose owner is null is "not set" (messages then carry their payload in their Bytes field).
//
// Thread-safety: the bytes are never written after construction; copies may live on any thread.
struct SharedBytes {
  std::shared_ptr<const void> owner;
  std::span<const std::byte> bytes;

  bool is_set() const { return owner != nullptr; }
  size_t size() const { return bytes.size(); }
  // Takes ownership of a vector (no copy of its bytes).
  static SharedBytes adopt(std::vector<std::byte>&& data) {
    auto held = std::make_shared<const std::vector<std::byte>>(std::move(data));
    std::span<const std::byte> view(held->data(), held->size());
    return SharedBytes{std::move(held), view};
  }
  std::vector<std::byte> to_vector() const { return std::vector<std::byte>(bytes.begin(), bytes.end()); }
};

// read_shared()'s answer: as ChunkRead, with the bytes in a buffer the store allocated.
struct SharedChunkRead {
  ChunkMeta meta;
  SharedBytes data;    // always set (possibly empty) on success
  bool dirty = false;
};

// Where the committed bytes of a read lie in a file of this machine, for a reader on the same host that
// reads them itself instead of receiving them over RPC ("local reads", docs/fs.md). The store keeps no
// hold on the bytes after answering: a later write may move the chunk and reuse its block. So the
// reader checks every crc segment it reads against `segment_crcs` (the committed version's, taken with
// the location) and reads again over RPC when one differs: bytes that match are the committed bytes.
struct LocalExtent {
  std::string path;     // the data file
  uint64_t device = 0;  // its st_dev and st_ino: the reader checks that it opened this file
  uint64_t inode = 0;
  uint64_t file_offset = 0;    // where version position `position` lies in the file
  uint64_t position = 0;       // first version byte to read (a crc segment start)
  uint64_t verify_bytes = 0;   // bytes from there that the segment CRCs cover (whole segments, short at the end)
  uint64_t skip = 0;           // the answer starts `skip` bytes after `position` (the read's offset)
  uint64_t count = 0;          // bytes of the answer (short at the end of the chunk)
  uint64_t segment_bytes = 0;  // the crc segment size
  std::vector<uint32_t> segment_crcs;  // CRC32C of each segment read, in order
  // The target's read stamps file (read_stamps.h; empty: none): a reader that watches it may use this answer again
  // while no change of the chunk or the target began (StorageClient's cached local reads).
  std::string stamps;
};

// locate()'s answer: as SharedChunkRead, with where the bytes lie instead of the bytes.
struct LocalChunkRead {
  ChunkMeta meta;
  bool dirty = false;
  std::optional<LocalExtent> extent;  // nullopt when there is nothing to read (count 0, strict dirty)
};

class ChunkStore {
 public:
  virtual ~ChunkStore() = default;

  // The largest chunk this store accepts (bytes); updates beyond it are invalid_argument.
  virtual uint64_t max_chunk_bytes() const = 0;

  // Metadata of one chunk; not_found if the chunk has neither a committed nor a pending version.
  virtual Result<ChunkMeta> stat(const ChunkId& id) = 0;

  // Reads [offset, offset+length) of the committed version, verifying its CRC32C over the whole
  // version. A pending version sets ChunkRead::dirty (strict reads then return no data). Errors:
  // not_found (no committed version), data_loss (CRC mismatch or unreadable data, naming the chunk).
  virtual Result<ChunkRead> read(const ChunkId& id, uint64_t offset, uint64_t length, ReadMode mode) = 0;

  // read() into a buffer the store chooses and shares (ChunkEngine: a 4 KiB-aligned buffer the disk
  // DMAs into, no bounce copy), so the caller can hand it on (an RPC reply) without copying. Same
  // semantics and errors as read(). The default adopts read()'s vector.
  virtual Result<SharedChunkRead> read_shared(const ChunkId& id, uint64_t offset, uint64_t length, ReadMode mode) {
    FF_ASSIGN_OR_RETURN(ChunkRead read_result, read(id, offset, length, mode));
    return SharedChunkRead{read_result.meta, SharedBytes::adopt(std::move(read_result.data)), read_result.dirty};
  }

  // What read() would read, as a location in a local file (LocalExtent) instead of bytes, for a reader
  // on this host. Same checks, errors and dirty answers as read(); corruption is found by the reader.
  // unimplemented where the bytes are not in a file (MemChunkStore): the caller then reads.
  virtual Result<LocalChunkRead> locate(const ChunkId& id, uint64_t offset, uint64_t length, ReadMode mode) {
    (void)offset, (void)length, (void)mode;
    return unimplemented("chunk {}: this store keeps no local files to read", id.to_string());
  }

  // Local readers' trust in what locate() told them (read_stamps.h), where the store keeps read stamps: until when
  // (CLOCK_MONOTONIC ns; 0: no longer) they may use an answer again without asking, as long as the chunk does not
  // change; and a change of the whole target (its chain changed), after which they ask again. No-ops elsewhere.
  virtual void set_local_read_lease(int64_t until_monotonic_ns) { (void)until_monotonic_ns; }
  virtual void local_reads_changed() {}

  // Stores an update as the pending version (copy-on-write: the committed version stays readable).
  // update.version must be committed_version + 1; an existing pending version with the same number is
  // replaced (a retried forward); other numbers are failed_precondition naming both versions.
  virtual Status put_pending(const ChunkUpdate& update) = 0;

  // What put_pending(update) would store, without storing anything: the new version's number, length
  // and CRC32C as ChunkMeta::pending_version / pending_length / pending_crc32c (the rest as stat()).
  // Lets the chain's head forward an update while its own store runs. Errors as put_pending's for bad
  // versions and sizes; unimplemented where the store cannot tell cheaply (the caller then stores
  // first and takes the CRC from stat()). The default is unimplemented.
  virtual Result<ChunkMeta> preview_pending(const ChunkUpdate& update) {
    return unimplemented("chunk {}: this store does not preview updates", update.id.to_string());
  }

  // Makes pending version `version` the committed one. Committing an already committed version is OK
  // (idempotent, for retried acknowledgements); anything else is failed_precondition.
  virtual Status commit(const ChunkId& id, uint32_t version) = 0;

  // commit() whose durability may wait for the store's next synced write (or sync()): a crash before
  // then may lose it, leaving `version` pending as if the crash came before the commit. Reads see the
  // commit at once. For targets that acknowledged before committing (docs/fs.md, "Lazy commits"); the
  // tail commits with commit(). The default is commit().
  virtual Status commit_lazily(const ChunkId& id, uint32_t version) { return commit(id, version); }

  // Recovery: installs `data` as committed version `version` directly (no pending step), dropping any
  // pending version. Used by the sync of a returning target and by repair of a corrupted chunk.
  virtual Status put_full_replacement(const ChunkId& id, uint32_t version, uint32_t chain_version,
                                      std::span<const std::byte> data) = 0;

  // Drops a pending version (a write that failed before it reached the tail).
  virtual Status abort_pending(const ChunkId& id, uint32_t version) = 0;

  // Removes chunks with ids in [begin, end); returns how many were removed.
  virtual Result<uint64_t> remove_range(const ChunkId& begin, const ChunkId& end) = 0;

  // Metadata of the chunks in [begin, end) in id order, at most `limit` of them.
  virtual Result<std::vector<ChunkMeta>> list(const ChunkId& begin, const ChunkId& end, uint64_t limit) = 0;

  // Flushes anything buffered; after it returns, everything returned before it is durable.
  virtual Status sync() = 0;

  // OK while the store takes changes; the error once it no longer does (a medium failure, e.g. a ChunkEngine whose
  // group sync failed). The storage service then reports the target offline, so its chain moves on without it.
  virtual Status health() const { return Status::ok(); }

  // The background scrub's place on this target (StorageConfig::scrub_bytes_per_s), kept across restarts so that a
  // server restarted more often than a pass takes still reaches every chunk: the pass the target is in and the next
  // chunk to read. save may be lazy (a crash may lose the last saves: the scrub then reads a few chunks again).
  // load answers nullopt when nothing was saved. The defaults keep nothing.
  struct ScrubCursor {
    uint64_t pass = 0;
    ChunkId next;
    friend bool operator==(const ScrubCursor&, const ScrubCursor&) = default;
  };
  virtual Result<std::optional<ScrubCursor>> load_scrub_cursor() { return std::optional<ScrubCursor>{}; }
  virtual Status save_scrub_cursor(const ScrubCursor& cursor) {
    (void)cursor;
    return Status::ok();
  }

  // The space of the file system the store keeps its data on (reported in heartbeats, summed by ff-meta
  // for statfs); nullopt when it has none (in memory).
  struct Space {
    uint64_t capacity_bytes = 0;
    uint64_t free_bytes = 0;    // available to the store (statvfs f_bavail)
    uint64_t filesystem = 0;    // statvfs f_fsid: stores on one file system share capacity and free
  };
  virtual std::optional<Space> space() const { return std::nullopt; }
};

}  // namespace ff::fs
