// The chunk metadata record's byte format (src/fs/chunk/chunk_record.h): what a target's RocksDB holds, so it must
// stay readable across builds. The expected bytes are spelled out field by field, little-endian, as
// docs/fs-chunk-engine.md describes the record.
#include <gtest/gtest.h>

#include <string>

#include "chunk_record.h"

namespace ff::fs::chunk_internal {
namespace {

// Little-endian bytes of `value`, `width` of them.
void le(std::string& out, uint64_t value, int width) {
  for (int i = 0; i < width; ++i) out.push_back(static_cast<char>((value >> (8 * i)) & 0xFF));
}

ChunkRecord sample() {
  ChunkRecord record;
  record.chain_version = 7;
  record.committed.version = 3;
  record.committed.length = 9000;
  record.committed.crc32c = 0xAABBCCDDu;
  record.committed.location = BlockLocation{1, 5};
  record.committed.segment_crcs = {1u, 0x01020304u, 0xFFFFFFFFu};
  record.pending.version = 4;
  record.pending.length = 9000;
  record.pending.crc32c = 0x11223344u;
  record.pending.location = BlockLocation{1, 5};
  record.pending.segment_crcs = {2u, 0xDEADBEEFu, 0x80000000u};
  record.pending.patch.offset = 4096;
  record.pending.patch.length = 3;
  record.pending.patch.bytes = "xyz";
  return record;
}

std::string expected_bytes() {
  std::string out;
  le(out, 2, 1);  // format 2 (with patches)
  le(out, 7, 4);  // chain version
  // committed: version, length, crc, block class, block, segment count, segments, patch (class, block, offset,
  // length, inline byte count, bytes)
  le(out, 3, 4), le(out, 9000, 8), le(out, 0xAABBCCDD, 4), le(out, 1, 1), le(out, 5, 4), le(out, 3, 4);
  le(out, 1, 4), le(out, 0x01020304, 4), le(out, 0xFFFFFFFF, 4);
  le(out, kNoClass, 1), le(out, 0, 4), le(out, 0, 8), le(out, 0, 8), le(out, 0, 4);
  // pending
  le(out, 4, 4), le(out, 9000, 8), le(out, 0x11223344, 4), le(out, 1, 1), le(out, 5, 4), le(out, 3, 4);
  le(out, 2, 4), le(out, 0xDEADBEEF, 4), le(out, 0x80000000, 4);
  le(out, kNoClass, 1), le(out, 0, 4), le(out, 4096, 8), le(out, 3, 8), le(out, 3, 4);
  out += "xyz";
  return out;
}

TEST(ChunkRecordTest, EncodesTheStoredFormatByteForByte) { EXPECT_EQ(encode(sample()), expected_bytes()); }

TEST(ChunkRecordTest, DecodesWhatItEncodes) {
  const ChunkId id{0x42, 9};
  auto decoded = decode(id, expected_bytes());
  ASSERT_TRUE(decoded.is_ok()) << decoded.status().to_string();
  const ChunkRecord want = sample();
  EXPECT_EQ(decoded->chain_version, want.chain_version);
  for (auto [got, expected] :
       {std::pair{&decoded->committed, &want.committed}, std::pair{&decoded->pending, &want.pending}}) {
    EXPECT_EQ(got->version, expected->version);
    EXPECT_EQ(got->length, expected->length);
    EXPECT_EQ(got->crc32c, expected->crc32c);
    EXPECT_EQ(got->location, expected->location);
    EXPECT_EQ(got->segment_crcs, expected->segment_crcs);
    EXPECT_EQ(got->patch, expected->patch);
  }
}

TEST(ChunkRecordTest, TruncatedOrOverlongRecordsAreDataLossNamingTheChunk) {
  const ChunkId id{0x42, 9};
  const std::string bytes = expected_bytes();
  // Cut inside the segment CRCs, inside the patch bytes, and one byte too many.
  for (const std::string& bad : {bytes.substr(0, 40), bytes.substr(0, bytes.size() - 1), bytes + "!"}) {
    auto decoded = decode(id, bad);
    ASSERT_FALSE(decoded.is_ok()) << bad.size() << " bytes decoded";
    EXPECT_EQ(decoded.status().code(), StatusCode::kDataLoss);
    EXPECT_NE(decoded.status().message().find(id.to_string()), std::string::npos) << decoded.status().to_string();
  }
  // A segment count that runs past the record.
  std::string huge = bytes;
  huge[1 + 4 + 4 + 8 + 4 + 1 + 4] = static_cast<char>(0xFF);
  EXPECT_EQ(decode(id, huge).status().code(), StatusCode::kDataLoss);
}

}  // namespace
}  // namespace ff::fs::chunk_internal
