#include "ff/fs/mem_chunk_store.h"

#include <algorithm>
#include <cstring>

#include "ff/common/assert.h"
#include "ff/fs/crc32c.h"
#include "ff/fs/types.h"

namespace ff::fs {

MemChunkStore::MemChunkStore(uint64_t max_chunk_bytes) : max_chunk_bytes_(max_chunk_bytes) {
  FF_ASSERT_GT(max_chunk_bytes, 0u);
}

void MemChunkStore::set_faults(MemChunkStoreFaults faults) {
  std::lock_guard lock(mutex_);
  FF_ASSERT(faults.uniform || (faults.write_error_probability == 0 && faults.read_error_probability == 0),
            "fault probabilities need a random source");
  faults_ = std::move(faults);
}

void MemChunkStore::set_commit_hook(CommitHook hook) {
  std::lock_guard lock(mutex_);
  commit_hook_ = std::move(hook);
}

bool MemChunkStore::fail(double probability) { return probability > 0 && faults_.uniform() < probability; }

Result<ChunkMeta> MemChunkStore::stat(const ChunkId& id) {
  std::lock_guard lock(mutex_);
  auto it = chunks_.find(id);
  if (it == chunks_.end()) return fs_error(FsError::kChunkNotFound, fmt::format("chunk {} not found", id.to_string()));
  return it->second.meta;
}

Result<ChunkRead> MemChunkStore::read(const ChunkId& id, uint64_t offset, uint64_t length, ReadMode mode) {
  std::lock_guard lock(mutex_);
  auto it = chunks_.find(id);
  if (it == chunks_.end() || it->second.meta.committed_version == 0) {
    return fs_error(FsError::kChunkNotFound, fmt::format("chunk {} has no committed version", id.to_string()));
  }
  if (fail(faults_.read_error_probability)) return io_error("injected read error on chunk {}", id.to_string());
  const Chunk& chunk = it->second;
  ChunkRead result;
  result.meta = chunk.meta;
  result.dirty = chunk.meta.pending_version != 0;
  if (crc32c(chunk.committed) != chunk.meta.committed_crc32c) {
    return fs_error(FsError::kChecksumMismatch,
                    fmt::format("chunk {} version {}: CRC32C mismatch", id.to_string(), chunk.meta.committed_version));
  }
  if (result.dirty && mode == ReadMode::kStrict) return result;
  uint64_t size = chunk.committed.size();
  if (offset < size) {
    uint64_t end = std::min(size, offset + std::min(length, size - offset));
    result.data.assign(chunk.committed.begin() + static_cast<ptrdiff_t>(offset),
                       chunk.committed.begin() + static_cast<ptrdiff_t>(end));
  }
  return result;
}

Result<std::vector<std::byte>> MemChunkStore::new_contents(const ChunkUpdate& update) {
  if (update.full_replacement ? update.data.size() > max_chunk_bytes_
                              : update.offset > max_chunk_bytes_ || update.data.size() > max_chunk_bytes_ - update.offset) {
    return fs_error(FsError::kOversize, fmt::format("update of chunk {} at offset {} with {} bytes exceeds the chunk size {}",
                                                    update.id.to_string(), update.offset, update.data.size(),
                                                    max_chunk_bytes_));
  }
  auto it = chunks_.find(update.id);
  uint32_t committed = it == chunks_.end() ? 0 : it->second.meta.committed_version;
  if (update.version != committed + 1) {
    return fs_error(FsError::kVersionMismatch,
                    fmt::format("chunk {}: update version {} but committed version is {} (pending {})",
                                update.id.to_string(), update.version, committed,
                                it == chunks_.end() ? 0 : it->second.meta.pending_version));
  }
  std::vector<std::byte> contents;
  if (update.full_replacement) {
    contents.assign(update.data.begin(), update.data.end());
  } else if (it != chunks_.end()) {
    const Chunk& chunk = it->second;
    if (crc32c(chunk.committed) != chunk.meta.committed_crc32c) {
      return fs_error(FsError::kChecksumMismatch, fmt::format("chunk {} version {}: CRC32C mismatch under a partial update",
                                                              update.id.to_string(), chunk.meta.committed_version));
    }
    contents = chunk.committed;
  }
  if (!update.full_replacement) {
    if (contents.size() < update.offset + update.data.size()) contents.resize(update.offset + update.data.size());
    if (!update.data.empty()) std::memcpy(contents.data() + update.offset, update.data.data(), update.data.size());
  }
  return contents;
}

Result<ChunkMeta> MemChunkStore::preview_pending(const ChunkUpdate& update) {
  std::lock_guard lock(mutex_);
  FF_ASSIGN_OR_RETURN(std::vector<std::byte> contents, new_contents(update));
  auto it = chunks_.find(update.id);
  ChunkMeta meta = it == chunks_.end() ? ChunkMeta{.id = update.id} : it->second.meta;
  meta.pending_version = update.version;
  meta.pending_length = contents.size();
  meta.pending_crc32c = crc32c(contents);
  return meta;
}

Status MemChunkStore::put_pending(const ChunkUpdate& update) {
  std::lock_guard lock(mutex_);
  FF_ASSIGN_OR_RETURN(std::vector<std::byte> contents, new_contents(update));
  if (fail(faults_.write_error_probability)) return io_error("injected write error on chunk {}", update.id.to_string());
  Chunk& chunk = chunks_[update.id];
  chunk.meta.id = update.id;
  lazy_.clear();  // a synced write: every earlier lazy commit is durable too
  chunk.pending = std::move(contents);
  chunk.meta.pending_version = update.version;
  chunk.meta.pending_length = chunk.pending.size();
  chunk.meta.pending_crc32c = crc32c(chunk.pending);
  chunk.meta.chain_version = update.chain_version;
  return Status::ok();
}

Status MemChunkStore::commit(const ChunkId& id, uint32_t version) { return commit_locked(id, version, /*lazy=*/false); }

Status MemChunkStore::commit_lazily(const ChunkId& id, uint32_t version) { return commit_locked(id, version, /*lazy=*/true); }

Status MemChunkStore::commit_locked(const ChunkId& id, uint32_t version, bool lazy) {
  std::lock_guard lock(mutex_);
  auto it = chunks_.find(id);
  if (it != chunks_.end() && it->second.meta.committed_version == version && version != 0) return Status::ok();
  if (it == chunks_.end() || it->second.meta.pending_version != version || version == 0) {
    return fs_error(FsError::kVersionMismatch,
                    fmt::format("commit of chunk {} version {}: committed {}, pending {}", id.to_string(), version,
                                it == chunks_.end() ? 0 : it->second.meta.committed_version,
                                it == chunks_.end() ? 0 : it->second.meta.pending_version));
  }
  if (fail(faults_.write_error_probability)) return io_error("injected commit error on chunk {}", id.to_string());
  Chunk& chunk = it->second;
  if (lazy) {
    // Lost by a crash until the next synced write: keep what a crash brings back (the version pending).
    if (lazy_.count(id) == 0) lazy_.emplace(id, chunk);
  } else {
    lazy_.clear();
  }
  chunk.committed = std::move(chunk.pending);
  chunk.pending.clear();
  chunk.meta.committed_version = version;
  chunk.meta.committed_length = chunk.committed.size();
  chunk.meta.committed_crc32c = chunk.meta.pending_crc32c;
  chunk.meta.pending_version = 0;
  chunk.meta.pending_length = 0;
  chunk.meta.pending_crc32c = 0;
  if (commit_hook_) commit_hook_(id, version, chunk.meta.committed_crc32c);
  return Status::ok();
}

Status MemChunkStore::put_full_replacement(const ChunkId& id, uint32_t version, uint32_t chain_version,
                                           std::span<const std::byte> data) {
  std::lock_guard lock(mutex_);
  if (version == 0) return invalid_argument("full replacement of chunk {} with version 0", id.to_string());
  if (data.size() > max_chunk_bytes_) {
    return fs_error(FsError::kOversize, fmt::format("replacement of chunk {} with {} bytes exceeds the chunk size {}",
                                                    id.to_string(), data.size(), max_chunk_bytes_));
  }
  if (fail(faults_.write_error_probability)) return io_error("injected write error on chunk {}", id.to_string());
  lazy_.clear();
  Chunk& chunk = chunks_[id];
  chunk.meta = ChunkMeta{};
  chunk.meta.id = id;
  chunk.committed.assign(data.begin(), data.end());
  chunk.pending.clear();
  chunk.meta.committed_version = version;
  chunk.meta.chain_version = chain_version;
  chunk.meta.committed_length = data.size();
  chunk.meta.committed_crc32c = crc32c(data);
  if (commit_hook_) commit_hook_(id, version, chunk.meta.committed_crc32c);
  return Status::ok();
}

Status MemChunkStore::abort_pending(const ChunkId& id, uint32_t version) {
  std::lock_guard lock(mutex_);
  auto it = chunks_.find(id);
  if (it == chunks_.end() || it->second.meta.pending_version != version) return Status::ok();
  lazy_.clear();
  Chunk& chunk = it->second;
  chunk.pending.clear();
  chunk.meta.pending_version = 0;
  chunk.meta.pending_length = 0;
  chunk.meta.pending_crc32c = 0;
  if (chunk.meta.committed_version == 0) chunks_.erase(it);
  return Status::ok();
}

Result<uint64_t> MemChunkStore::remove_range(const ChunkId& begin, const ChunkId& end) {
  std::lock_guard lock(mutex_);
  if (fail(faults_.write_error_probability)) return io_error("injected error removing chunks from {}", begin.to_string());
  lazy_.clear();
  uint64_t removed = 0;
  for (auto it = chunks_.lower_bound(begin); it != chunks_.end() && it->first < end;) {
    it = chunks_.erase(it);
    ++removed;
  }
  return removed;
}

Result<std::vector<ChunkMeta>> MemChunkStore::list(const ChunkId& begin, const ChunkId& end, uint64_t limit) {
  std::lock_guard lock(mutex_);
  if (fail(faults_.list_error_probability)) return io_error("injected error listing chunks from {}", begin.to_string());
  std::vector<ChunkMeta> result;
  for (auto it = chunks_.lower_bound(begin); it != chunks_.end() && it->first < end && result.size() < limit; ++it) {
    result.push_back(it->second.meta);
  }
  return result;
}

Result<std::optional<ChunkStore::ScrubCursor>> MemChunkStore::load_scrub_cursor() {
  std::lock_guard lock(mutex_);
  return scrub_cursor_;
}

Status MemChunkStore::save_scrub_cursor(const ScrubCursor& cursor) {
  std::lock_guard lock(mutex_);
  scrub_cursor_ = cursor;
  return Status::ok();
}

std::optional<ChunkStore::Space> MemChunkStore::space() const {
  std::lock_guard lock(mutex_);
  return space_;
}

void MemChunkStore::set_space(std::optional<Space> space) {
  std::lock_guard lock(mutex_);
  space_ = space;
}

Status MemChunkStore::sync() {
  std::lock_guard lock(mutex_);
  lazy_.clear();
  return Status::ok();
}

void MemChunkStore::set_health(Status health) {
  std::lock_guard lock(mutex_);
  health_ = std::move(health);
}

Status MemChunkStore::health() const {
  std::lock_guard lock(mutex_);
  return health_;
}

uint64_t MemChunkStore::lose_unsynced() {
  std::lock_guard lock(mutex_);
  const uint64_t lost = lazy_.size();
  for (auto& [id, before] : lazy_) chunks_[id] = std::move(before);
  lazy_.clear();
  return lost;
}

bool MemChunkStore::commit_is_durable(const ChunkId& id) const {
  std::lock_guard lock(mutex_);
  return lazy_.count(id) == 0;
}

bool MemChunkStore::corrupt(const ChunkId& id) {
  std::lock_guard lock(mutex_);
  auto it = chunks_.find(id);
  if (it == chunks_.end() || it->second.committed.empty()) return false;
  it->second.committed[it->second.committed.size() / 2] ^= std::byte{0x5a};
  return true;
}

std::vector<std::byte> MemChunkStore::committed_bytes(const ChunkId& id) const {
  std::lock_guard lock(mutex_);
  auto it = chunks_.find(id);
  return it == chunks_.end() ? std::vector<std::byte>{} : it->second.committed;
}

std::vector<ChunkMeta> MemChunkStore::all() const {
  std::lock_guard lock(mutex_);
  std::vector<ChunkMeta> result;
  for (const auto& [id, chunk] : chunks_) result.push_back(chunk.meta);
  return result;
}

}  // namespace ff::fs
