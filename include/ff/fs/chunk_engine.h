// ChunkEngine: one storage target's chunks on a local disk (see docs/fs-chunk-engine.md).
//
// Layout of a target directory:
//   <directory>/blocks.<block_bytes>   one preallocated file per power-of-two block class
//                                      (64 KiB .. 64 MiB by default); a chunk version lives in one block
//                                      of the smallest class that holds it.
//   <directory>/meta/                  RocksDB: one record per chunk (committed + pending version: length,
//                                      CRC32C of the whole version and of every crc segment, block
//                                      location, chain version) and the engine's format record.
// The free-block state is not stored: on open every block that no record references is free, so a crash
// can neither leak a block nor hand out one that a durable record still uses.
//
// Updates are copy-on-write: the new version's bytes go into a fresh block, then ONE synced RocksDB
// write batch makes them the pending version; commit is one atomic batch that also releases the old
// block. Appends (an update that starts at or after the committed length and still fits the committed
// block) take an in-place fast path: only bytes beyond the committed length are written, into the same
// block (see the doc for why this is crash-safe).
//
// I/O: io_uring on O_DIRECT descriptors with 4 KiB-aligned buffers from a bounded pool of I/O contexts
// (a ring + a buffer each), allocated at open; each call borrows one context for its duration. Where
// O_DIRECT is refused (tmpfs), buffered I/O + fdatasync; where io_uring is unavailable, pread/pwrite.
//
// Thread-safety: every method may be called from any thread (the ChunkStore contract). Callers serialise
// writes to one chunk (the storage service's chunk lock); the engine additionally takes a striped lock
// per chunk so that a block is never released while a read of it is in flight.
#pragma once

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "ff/common/result.h"
#include "ff/common/status.h"
#include "ff/fs/chunk_store.h"

namespace ff::fs {

// Points where the engine calls ChunkEngineOptions::fault_hook. A hook may return an error (the operation
// then fails with it, as if the disk had failed there) or never return (a crash test raises SIGKILL).
enum class ChunkFaultPoint {
  kAfterDataWrite,     // put_pending / put_full_replacement: new bytes written, metadata not yet
  kAfterPendingBatch,  // put_pending: the pending version is durable, not committed
  kBeforeCommitBatch,  // commit: about to write the commit batch
  kAfterCommitBatch,   // commit / put_full_replacement: batch durable, old block not yet released
  kBeforeDataRead,     // read: metadata read, data not yet read
  kAfterPatchApply,    // commit of a patched version: patch copied into the block, patch not yet dropped
  kBeforeGroupSync,    // group sync: about to sync the data files and the WAL (the chunk id is empty)
};
std::string_view chunk_fault_point_name(ChunkFaultPoint point);

struct ChunkEngineOptions {
  std::string directory;                   // the target directory; created when missing
  uint64_t min_block_bytes = 64ull << 10;  // smallest block class (power of two, >= 4 KiB)
  uint64_t max_block_bytes = 64ull << 20;  // largest block class, also max_chunk_bytes()
  // Each class file is preallocated (fallocate) to this many bytes (rounded up to whole blocks, at least
  // one) on creation and grows by the same step when it has no free block.
  uint64_t preallocate_bytes_per_class = 64ull << 20;
  bool direct_io = true;                  // O_DIRECT data files (falls back to buffered where refused)
  bool sync_data = true;                  // data writes durable before metadata (RWF_DSYNC or fdatasync)
  bool sync_metadata = true;              // RocksDB write batches with sync=true
  // Group sync, in milliseconds (0: off). Off, a call that changes a chunk returns once its data and metadata are
  // durable (as sync_data and sync_metadata say). On, data writes go to the device without RWF_DSYNC and metadata
  // batches to RocksDB's log without a sync, and a thread makes everything written so far durable every this many
  // milliseconds (fdatasync of the block-class files written to, then one WAL sync; sync() and closing the engine
  // do it at once); a block that a batch stopped referencing is reused only after the sync that covers the batch.
  // A process crash loses nothing (the bytes are in the kernel or on the device); a power loss of the machine may
  // lose this target's changes of the last interval, which then read as an older version or fail their CRC check
  // (and are repaired from a replica). A sync that fails is logged and the target then refuses every change
  // ([io_error] naming the failure) until it is opened again. docs/fs-chunk-engine.md, "Group sync".
  uint32_t group_sync_ms = 0;
  bool use_io_uring = true;               // false: pread/pwrite (also the fallback when io_uring is refused)
  uint32_t io_queue_depth = 32;           // entries of each ring; a call keeps at most this many I/Os in flight
  uint32_t io_contexts = 8;               // rings + aligned buffers in the pool: the bound on concurrent I/O calls
  uint64_t io_buffer_bytes = 4ull << 20;  // aligned buffer of each context (multiple of 4 KiB)
  // CRC32C granularity: besides the whole-version CRC, every crc segment of a version has its own CRC so
  // a partial read verifies only the segments it touches (power of two, >= 4 KiB).
  uint64_t crc_segment_bytes = 4096;
  // A small overwrite's patch up to this size lives in its metadata record (one synced RocksDB batch makes
  // data and metadata durable together) instead of in a patch block (a data write + the batch). 0: never.
  uint64_t inline_patch_bytes = 64ull << 10;
  // A small overwrite next to the committed version's inline patch that the settler has not applied yet takes it
  // in when both span at most this many bytes (docs/fs-chunk-engine.md, "Merged patches"); a multiple of
  // crc_segment_bytes (inline_patch_bytes caps it). 0: never (the patch is applied first). Each merged version's
  // record carries the whole span twice (pending, then committed): measured, 64 KiB made sequential 4 KiB writes at
  // depth 16 run at ~0.5x random ones, 16 KiB at ~1.0x.
  uint64_t merge_patch_bytes = 16ull << 10;
  uint32_t io_timeout_ms = 30000;  // bound on waiting for one I/O completion or for a free I/O context
  // read_shared's buffers are recycled through a pool (a fresh 1-4 MiB buffer per read costs a page fault
  // and a zeroed page per 4 KiB); this bounds the bytes of idle buffers it keeps. 0: a fresh buffer each time.
  uint64_t read_buffer_pool_bytes = 64ull << 20;
  // commit_lazily() writes an unsynced commit batch (durable with the next synced batch or WAL sync);
  // false: it is commit().
  bool lazy_commits = true;
  // A patched version's commit leaves its patch in the committed record and a background thread
  // applies it in place (after the commit batch is durable), off the caller's path; a read or update of
  // the chunk that finds the patch first applies it itself. false: commit() applies it before returning.
  bool settle_patches_in_background = true;
  // The settler waits this long after the first queued patch, so several commits share one WAL sync
  // (or the next synced batch of a write makes theirs durable for free). Measured 2 vs 10 ms
  // (docs/fs-operations.md): 10 ms saved ~0.6 WAL syncs per 1 MiB write at the head and middle.
  uint32_t settle_delay_us = 10000;
  std::function<Status(ChunkFaultPoint, const ChunkId&)> fault_hook;  // test-only fault injection
};

struct ChunkEngineClassStats {
  uint64_t block_bytes = 0;
  uint64_t total_blocks = 0;
  uint64_t free_blocks = 0;
};

struct ChunkEngineStats {
  uint64_t reads = 0;
  uint64_t locates = 0;      // locate() calls that found a committed version (the reader reads itself)
  uint64_t read_bytes = 0;   // bytes returned to callers
  uint64_t writes = 0;       // put_pending + put_full_replacement
  uint64_t write_bytes = 0;  // bytes written to data files
  uint64_t zero_copy_write_bytes = 0;  // of those, written straight from the caller's buffer (aligned payloads)
  uint64_t commits = 0;
  uint64_t inplace_appends = 0;  // put_pending calls that took the in-place fast path
  uint64_t patched_writes = 0;   // put_pending calls stored as a patch of the touched crc segments
  uint64_t merged_patches = 0;   // of those, patches that took in the committed version's unapplied patch
  uint64_t corruptions = 0;      // reads that found a CRC mismatch
  uint64_t read_buffers = 0;         // buffers read_shared took
  uint64_t read_buffers_reused = 0;  // of those, recycled from the pool
  // Synced I/O (docs/fs-operations.md, "Synced I/Os per write"):
  uint64_t synced_batches = 0;     // RocksDB write batches written with sync=true
  uint64_t unsynced_batches = 0;   // batches written without sync (deferred pending, lazy commits, patch drops)
  uint64_t wal_syncs = 0;          // explicit WAL syncs (before applying lazily committed patches, idle flushes)
  uint64_t dsync_data_writes = 0;  // O_DIRECT + RWF_DSYNC data writes (versions, patch blocks, in-place patches)
  uint64_t data_fdatasyncs = 0;    // fdatasync of a data file (buffered mode)
  uint64_t lazy_commits = 0;       // commits written as unsynced batches (commit_lazily)
  uint64_t patches_settled = 0;    // committed patches applied in place
  uint64_t patches_settled_by_updates = 0;  // of those, by the next update of the chunk (before its own write)
  // RocksDB's own tickers: WAL file syncs (one per write group that asked for sync, plus SyncWAL) and
  // writes done by the group leader itself vs. merged into another writer's group.
  uint64_t rocksdb_wal_file_syncs = 0;
  uint64_t rocksdb_writes_by_self = 0;
  uint64_t rocksdb_writes_by_other = 0;
  bool direct_io = false;        // O_DIRECT in use
  bool io_uring = false;         // io_uring in use
  std::vector<ChunkEngineClassStats> classes;
};

class ChunkEngine final : public ChunkStore {
 public:
  // Opens (creating when missing) the target in options.directory. Errors: invalid_argument (bad
  // options, or options that disagree with the target's stored format), io_error, data_loss (metadata
  // that references a block twice or outside its file).
  static Result<std::unique_ptr<ChunkEngine>> open(const ChunkEngineOptions& options);
  ~ChunkEngine() override;

  ChunkEngine(const ChunkEngine&) = delete;
  ChunkEngine& operator=(const ChunkEngine&) = delete;

  uint64_t max_chunk_bytes() const override;
  Result<ChunkMeta> stat(const ChunkId& id) override;
  Result<ChunkRead> read(const ChunkId& id, uint64_t offset, uint64_t length, ReadMode mode) override;
  // Into a 4 KiB-aligned buffer (rounded up to 4 KiB) from the engine's pool (recycled when the caller
  // drops the last reference; see ChunkEngineOptions::read_buffer_pool_bytes): ranges on crc-segment
  // boundaries go from the disk straight into it (read_into's zero-copy path), others through the
  // bounce buffer.
  Result<SharedChunkRead> read_shared(const ChunkId& id, uint64_t offset, uint64_t length, ReadMode mode) override;
  // The committed bytes' place in a block-class file (by its absolute path), whole crc segments.
  Result<LocalChunkRead> locate(const ChunkId& id, uint64_t offset, uint64_t length, ReadMode mode) override;
  // <directory>/read_stamps (read_stamps.h): every change takes its chunk's stripe lock, which counts it there.
  void set_local_read_lease(int64_t until_monotonic_ns) override;
  void local_reads_changed() override;
  Status put_pending(const ChunkUpdate& update) override;
  // Without I/O for a new chunk written from 0, a full replacement or overwrite from 0 past the end,
  // an append at the committed length; other overwrites read at most the first and last crc segment
  // they touch (verified) and fold the segment CRCs. unimplemented while the committed version still
  // has a patch to apply, or for an update that leaves a hole.
  Result<ChunkMeta> preview_pending(const ChunkUpdate& update) override;
  Status commit(const ChunkId& id, uint32_t version) override;
  Status commit_lazily(const ChunkId& id, uint32_t version) override;
  Status put_full_replacement(const ChunkId& id, uint32_t version, uint32_t chain_version,
                              std::span<const std::byte> data) override;
  Status abort_pending(const ChunkId& id, uint32_t version) override;
  Result<uint64_t> remove_range(const ChunkId& begin, const ChunkId& end) override;
  Result<std::vector<ChunkMeta>> list(const ChunkId& begin, const ChunkId& end, uint64_t limit) override;
  Status sync() override;
  // The failure of a group sync once one failed (the engine refuses changes from then on), else OK.
  Status health() const override;
  // One record in the metadata (key "\0scrub"), written without a sync.
  Result<std::optional<ScrubCursor>> load_scrub_cursor() override;
  Status save_scrub_cursor(const ScrubCursor& cursor) override;
  std::optional<Space> space() const override;  // statvfs of the directory

  // Like read(), but into caller memory: reads [offset, offset + out.size()) of the committed version
  // into out and returns the chunk's metadata, with bytes_read set to the bytes copied (short at the end
  // of the chunk; 0 for a strict read of a dirty chunk, with dirty set). When out is 4 KiB-aligned and
  // offset and out.size() are multiples of crc_segment_bytes (inside the chunk), the data goes from the
  // disk straight into out with no copy.
  struct ReadInto {
    ChunkMeta meta;
    uint64_t bytes_read = 0;
    bool dirty = false;
  };
  Result<ReadInto> read_into(const ChunkId& id, uint64_t offset, std::span<std::byte> out, ReadMode mode);

  ChunkEngineStats stats() const;

  // Diagnostic (tests, ff-admin): checks that the in-memory allocator marks used exactly the blocks
  // that metadata references, each once. data_loss or internal naming the first disagreement.
  Status check_allocator();
  const ChunkEngineOptions& options() const;
  const std::string& directory() const;

  struct Impl;

 private:
  explicit ChunkEngine(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

}  // namespace ff::fs
