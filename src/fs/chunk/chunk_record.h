// The chunk engine's RocksDB records (internal to ff::fs_chunk).
//
// Keys: 'c' + big-endian inode + big-endian index (so RocksDB's byte order is ChunkId order), and
// "\0format" for the engine's format record, "\0scrub" for the background scrub's place. Values: little-endian fixed
// fields, see encode().
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "ff/common/result.h"
#include "ff/fs/chunk_store.h"

namespace ff::fs::chunk_internal {

inline constexpr uint8_t kNoClass = 0xFF;

// Where a version's bytes live: block `block` of class `block_class`; kNoClass for an empty version.
struct BlockLocation {
  uint8_t block_class = kNoClass;
  uint32_t block = 0;
  bool valid() const { return block_class != kNoClass; }
  friend bool operator==(const BlockLocation&, const BlockLocation&) = default;
};

// Bytes [offset, offset + length) of a version that live in their own block (from its position 0)
// instead of in the version's block: how a small overwrite is stored without copying the chunk.
// A pending version with a patch shares the committed version's block; commit applies the patch to
// that block in place (after the commit batch, redone at open after a crash) and then drops it.
// A patch of at most ChunkEngineOptions::inline_patch_bytes is kept inline, in the record itself (then
// `location` is invalid): its bytes become durable with the batch, without a separate data write.
struct PatchRecord {
  uint64_t offset = 0;  // a multiple of the crc segment size
  uint64_t length = 0;
  BlockLocation location;
  std::string bytes;  // an inline patch's `length` bytes
  bool present() const { return location.valid() || !bytes.empty(); }
  friend bool operator==(const PatchRecord&, const PatchRecord&) = default;
};

struct VersionRecord {
  uint32_t version = 0;  // 0: absent
  uint64_t length = 0;
  uint32_t crc32c = 0;  // of the whole version
  BlockLocation location;
  std::vector<uint32_t> segment_crcs;  // CRC32C of each crc segment (the last one may be partial)
  PatchRecord patch;                   // none for most versions
  bool present() const { return version != 0; }
};

struct ChunkRecord {
  uint32_t chain_version = 0;
  VersionRecord committed;
  VersionRecord pending;
};

std::string chunk_key(const ChunkId& id);
Result<ChunkId> decode_chunk_key(std::string_view key);
inline constexpr std::string_view kFormatKey{"\0format", 7};
inline constexpr std::string_view kScrubKey{"\0scrub", 6};

std::string encode(const ChunkRecord& record);
// data_loss naming the chunk when the value is malformed.
Result<ChunkRecord> decode(const ChunkId& id, std::string_view value);

// The scrub record: pass, inode, index (24 bytes); data_loss when malformed.
std::string encode(const ChunkStore::ScrubCursor& cursor);
Result<ChunkStore::ScrubCursor> decode_scrub_cursor(std::string_view value);

ChunkMeta to_meta(const ChunkId& id, const ChunkRecord& record);

}  // namespace ff::fs::chunk_internal
