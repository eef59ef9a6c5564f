// MemChunkStore: the ChunkStore contract (chunk_store.h) in memory, for the simulation and tests.
// Crash semantics: put_pending and commit are durable when they return, so a simulated crash of the
// storage service loses nothing stored here (keep the object, drop the service), except lazy commits
// (commit_lazily) that no synced write followed yet: lose_unsynced() undoes them. Fault injection:
// failed writes and reads (io_error) with a probability, and silent corruption of a stored chunk that
// the CRC32C check finds on the next read (data_loss).
//
// Thread-safety: all methods are safe from any thread (one mutex).
#pragma once

#include <cstdint>
#include <functional>
#include <map>
#include <mutex>
#include <optional>
#include <vector>

#include "ff/fs/chunk_store.h"

namespace ff::fs {

struct MemChunkStoreFaults {
  double write_error_probability = 0.0;  // put_pending / commit / put_full_replacement fail (nothing changes)
  double read_error_probability = 0.0;   // read fails with io_error
  // Draws uniform numbers in [0, 1); the simulation passes its seeded RNG. Required when a
  // probability is non-zero.
  std::function<double()> uniform;
  double list_error_probability = 0.0;  // list fails with io_error (a metadata store that cannot be scanned)
};

class MemChunkStore final : public ChunkStore {
 public:
  explicit MemChunkStore(uint64_t max_chunk_bytes = 4 << 20);

  uint64_t max_chunk_bytes() const override { return max_chunk_bytes_; }
  Result<ChunkMeta> stat(const ChunkId& id) override;
  Result<ChunkRead> read(const ChunkId& id, uint64_t offset, uint64_t length, ReadMode mode) override;
  Status put_pending(const ChunkUpdate& update) override;
  Result<ChunkMeta> preview_pending(const ChunkUpdate& update) override;
  Status commit(const ChunkId& id, uint32_t version) override;
  // Committed at once; until the next synced write of this store (put_pending, commit,
  // put_full_replacement, abort_pending, remove_range, sync) lose_unsynced() brings the version back
  // to pending, as a crash loses the chunk engine's unsynced commit batch.
  Status commit_lazily(const ChunkId& id, uint32_t version) override;
  Status put_full_replacement(const ChunkId& id, uint32_t version, uint32_t chain_version,
                              std::span<const std::byte> data) override;
  Status abort_pending(const ChunkId& id, uint32_t version) override;
  Result<uint64_t> remove_range(const ChunkId& begin, const ChunkId& end) override;
  Result<std::vector<ChunkMeta>> list(const ChunkId& begin, const ChunkId& end, uint64_t limit) override;
  Status sync() override;
  Result<std::optional<ScrubCursor>> load_scrub_cursor() override;
  Status save_scrub_cursor(const ScrubCursor& cursor) override;
  // The space this store reports (nullopt unless set_space: a memory store has no file system).
  std::optional<Space> space() const override;
  void set_space(std::optional<Space> space);

  void set_faults(MemChunkStoreFaults faults);
  // What health() answers (tests: a medium failure); OK by default.
  void set_health(Status health);
  Status health() const override;
  // Called whenever a version becomes committed (commit(), put_full_replacement()), at that instant,
  // with the store's mutex held (the hook must not call back into the store). For the simulation's
  // checkers: a reader may see a commit before the service hears back from the disk.
  using CommitHook = std::function<void(const ChunkId&, uint32_t version, uint32_t crc32c)>;
  void set_commit_hook(CommitHook hook);
  // Flips one byte of the committed version of `id` without updating its CRC (silent corruption).
  // Returns false when the chunk has no committed bytes.
  bool corrupt(const ChunkId& id);
  // Committed contents (no CRC check), for checkers; empty when absent.
  std::vector<std::byte> committed_bytes(const ChunkId& id) const;
  // Every chunk's metadata, for checkers.
  std::vector<ChunkMeta> all() const;
  // A crash: lazy commits not yet made durable by a synced write are undone (their versions are
  // pending again). Returns how many.
  uint64_t lose_unsynced();
  // False while the committed version of `id` comes from a lazy commit a crash would undo.
  bool commit_is_durable(const ChunkId& id) const;

 private:
  struct Chunk {
    ChunkMeta meta;
    std::vector<std::byte> committed;
    std::vector<std::byte> pending;
  };
  bool fail(double probability);
  // put_pending's checks and the new version's contents (mutex_ held).
  Result<std::vector<std::byte>> new_contents(const ChunkUpdate& update);
  Status commit_locked(const ChunkId& id, uint32_t version, bool lazy);

  const uint64_t max_chunk_bytes_;
  mutable std::mutex mutex_;  // guards everything below
  std::optional<Space> space_;
  std::optional<ScrubCursor> scrub_cursor_;
  std::map<ChunkId, Chunk> chunks_;
  MemChunkStoreFaults faults_;
  Status health_;
  CommitHook commit_hook_;
  std::map<ChunkId, Chunk> lazy_;  // chunks committed lazily since the last synced write: their state before
};

}  // namespace ff::fs
