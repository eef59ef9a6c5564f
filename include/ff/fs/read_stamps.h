// Read stamps: a small file a storage target shares with the clients on its host, so that a client that was
// told where a chunk's committed bytes lie (a local read's answer, local_read.h) can read them again later
// without asking the target, and know that nothing changed in between.
//
// The file holds, for each of `slots` slots (a chunk's slot: read_stamp_slot), two counters: changes begun
// and changes ended. The chunk engine counts a change begun before it touches any chunk of the slot (its
// metadata, its blocks, a block it frees) and ended once it is done; a change of the whole target (opening it,
// a chain change, losing the lease) counts in one more pair for every slot at once. A reader that sees a pair
// with begun == ended (nothing in progress) and the same begun again later knows that no change of the slot
// began in between, so what it was told about a chunk of the slot is still true for the whole interval.
// Beside them, the target's lease: until when (CLOCK_MONOTONIC, nanoseconds; 0: not serving) the target is
// serving by its own rule (it stops serving once it has not reached mgmtd for half the heartbeat timeout), so a
// reader never trusts a target longer than the target itself would answer reads. Design: docs/fs.md, "Cached
// local reads".
#pragma once

#include <atomic>
#include <cstdint>
#include <memory>
#include <optional>
#include <string>

#include "ff/common/result.h"
#include "ff/fs/chunk_store.h"

namespace ff::fs {

// Slots of a chunk engine's stamps file: its lock stripes (a chunk's changes all take its stripe's lock).
inline constexpr uint32_t kReadStampSlots = 1024;

// The slot of chunk `id` among `slots` (the chunk engine's lock stripe for slots == kReadStampSlots).
inline uint32_t read_stamp_slot(const ChunkId& id, uint32_t slots) {
  const uint64_t mixed = id.inode * 0x9E3779B97F4A7C15ull ^ (id.index + 0x632BE59BD9B4E019ull) * 0xC2B2AE3D27D4EB4Full;
  return static_cast<uint32_t>((mixed >> 29) % slots);
}

// CLOCK_MONOTONIC in nanoseconds: the clock of the lease (one clock for every process of the host).
int64_t monotonic_now_ns();

// The target's side: creates the file (or opens the one an earlier run of the target left, so that readers
// still mapping it see every change from then on) and counts changes. Thread-safe.
class ReadStamps {
 public:
  // The file at `path` with `slots` slots; an existing file of another size or format is made anew in place.
  // Opening counts a change of the whole target begun (end_all() once the target is open) and sets no lease.
  static Result<std::unique_ptr<ReadStamps>> open(const std::string& path, uint32_t slots = kReadStampSlots);
  ~ReadStamps();
  ReadStamps(const ReadStamps&) = delete;
  ReadStamps& operator=(const ReadStamps&) = delete;

  void begin(uint32_t slot);
  void end(uint32_t slot);
  void begin_all();
  void end_all();
  // A change of the whole target, begun and ended (chain changes: the reader checks its routing for the rest).
  void bump_all();
  // Until when readers may trust the target (CLOCK_MONOTONIC ns; 0: not serving).
  void set_lease(int64_t until_ns);

  const std::string& path() const { return path_; }
  uint32_t slots() const { return slots_; }

 private:
  ReadStamps(std::string path, void* map, size_t bytes, uint32_t slots);
  std::string path_;
  void* map_ = nullptr;
  size_t bytes_ = 0;
  uint32_t slots_ = 0;
};

// A reader's view (read-only mapping) of a target's stamps file. Thread-safe.
class ReadStampsView {
 public:
  // Maps the file at `path`; unavailable when it cannot be opened, invalid_argument when it is not a stamps file.
  static Result<std::shared_ptr<ReadStampsView>> map(const std::string& path);
  ~ReadStampsView();
  ReadStampsView(const ReadStampsView&) = delete;
  ReadStampsView& operator=(const ReadStampsView&) = delete;

  // What a reader remembers: the changes begun of a chunk's slot and of the whole target.
  struct Stamp {
    uint64_t slot = 0;
    uint64_t all = 0;
    bool operator==(const Stamp&) const = default;
  };
  // The stamp of `chunk` now, or nullopt while a change of its slot or of the target is in progress, or the
  // target's lease has run out (at `now_ns`, CLOCK_MONOTONIC).
  std::optional<Stamp> stamp(const ChunkId& chunk, int64_t now_ns) const;
  // Whether no change of chunk's slot or of the target began since `stamp` was taken, and the lease still holds.
  bool unchanged(const ChunkId& chunk, const Stamp& stamp, int64_t now_ns) const;

  const std::string& path() const { return path_; }
  uint64_t device() const { return device_; }
  uint64_t inode() const { return inode_; }

 private:
  ReadStampsView(std::string path, const void* map, size_t bytes, uint32_t slots, uint64_t device, uint64_t inode);
  std::string path_;
  const void* map_ = nullptr;
  size_t bytes_ = 0;
  uint32_t slots_ = 0;
  uint64_t device_ = 0, inode_ = 0;
};

}  // namespace ff::fs
