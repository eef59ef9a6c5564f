// ChunkEngine behaviour: the ChunkStore contract (versions, pending/commit/abort/full replacement, errors,
// remove_range, list), block classes, the in-place append path, persistence across reopen, corruption
// detection and repair, and concurrent writers. Each test runs over every I/O mode.
#include "ff/fs/chunk_engine.h"

#include <fcntl.h>
#include <gtest/gtest.h>
#include <stdlib.h>
#include <unistd.h>

#include <array>
#include <atomic>
#include <chrono>
#include <cstring>
#include <thread>

#include "ff/fs/crc32c.h"
#include "test_util.h"

namespace ff::fs {
namespace {

using testing::pattern_bytes;
using testing::small_options;
using testing::TempDir;

struct IoMode {
  const char* name;
  bool direct_io;
  bool use_io_uring;
  const char* parent;
  // ChunkEngineOptions::group_sync_ms: a minute, so that within a test only sync() and reopening sync (the
  // behaviour is then deterministic; GroupSyncTest covers the thread).
  uint32_t group_sync_ms = 0;
};

class ChunkEngineTest : public ::testing::TestWithParam<IoMode> {
 protected:
  void SetUp() override {
    dir_ = std::make_unique<TempDir>(GetParam().parent);
    open_engine();
  }
  ChunkEngineOptions options() const {
    ChunkEngineOptions options = small_options(dir_->path());
    options.direct_io = GetParam().direct_io;
    options.use_io_uring = GetParam().use_io_uring;
    options.group_sync_ms = GetParam().group_sync_ms;
    return options;
  }
  void open_engine() {
    engine_.reset();
    auto engine = ChunkEngine::open(options());
    ASSERT_TRUE(engine.is_ok()) << engine.status();
    engine_ = std::move(*engine);
  }
  // Writes `data` as the next version (offset write) and commits it.
  void write_commit(const ChunkId& id, uint64_t offset, std::span<const std::byte> data) {
    const uint32_t version = stat_or_zero(id).committed_version + 1;
    ChunkUpdate update{id, version, 7, offset, data, false};
    ASSERT_TRUE(engine_->put_pending(update).is_ok());
    ASSERT_TRUE(engine_->commit(id, version).is_ok());
  }
  // Closes the engine and opens its directory again with `custom` options.
  void reopen_with(const ChunkEngineOptions& custom) {
    engine_.reset();
    auto opened = ChunkEngine::open(custom);
    ASSERT_TRUE(opened.is_ok()) << opened.status();
    engine_ = std::move(*opened);
  }
  ChunkMeta stat_or_zero(const ChunkId& id) {
    auto meta = engine_->stat(id);
    return meta.is_ok() ? *meta : ChunkMeta{};
  }
  std::vector<std::byte> read_all(const ChunkId& id) {
    auto read = engine_->read(id, 0, UINT64_MAX, ReadMode::kRelaxed);
    EXPECT_TRUE(read.is_ok()) << read.status();
    return read.is_ok() ? read->data : std::vector<std::byte>{};
  }
  // Blocks in use. With group sync a block that a batch stopped referencing is freed only by the next sync, so
  // that comes first.
  uint64_t used_blocks() {
    if (GetParam().group_sync_ms > 0) {
      EXPECT_TRUE(engine_->sync().is_ok());
    }
    return testing::total_used_blocks(engine_->stats());
  }
  // Tests of the per-write syncs (counters, lazy commits) do not apply with group sync (GroupSyncTest's do).
  bool group_sync() const { return GetParam().group_sync_ms > 0; }
  void expect_allocator_ok() {
    const Status status = engine_->check_allocator();
    EXPECT_TRUE(status.is_ok()) << status;
  }

  std::unique_ptr<TempDir> dir_;
  std::unique_ptr<ChunkEngine> engine_;
};

TEST_P(ChunkEngineTest, RoundTripAcrossBlockClasses) {
  const std::vector<uint64_t> sizes = {1, 4095, 4096, 65536, 65537, 300000, (1u << 20) + 3, 4u << 20};
  for (size_t i = 0; i < sizes.size(); ++i) {
    const ChunkId id{1, i};
    const auto data = pattern_bytes(sizes[i], i);
    write_commit(id, 0, data);
    auto meta = engine_->stat(id);
    ASSERT_TRUE(meta.is_ok()) << meta.status();
    EXPECT_EQ(meta->committed_version, 1u);
    EXPECT_EQ(meta->committed_length, sizes[i]);
    EXPECT_EQ(meta->committed_crc32c, crc32c(data));
    EXPECT_EQ(meta->chain_version, 7u);
    EXPECT_EQ(read_all(id), data) << "size " << sizes[i];
    // A partial read from an odd offset.
    const uint64_t offset = sizes[i] / 3;
    auto part = engine_->read(id, offset, 5000, ReadMode::kStrict);
    ASSERT_TRUE(part.is_ok()) << part.status();
    const uint64_t expected = std::min<uint64_t>(5000, sizes[i] - offset);
    ASSERT_EQ(part->data.size(), expected);
    EXPECT_EQ(std::memcmp(part->data.data(), data.data() + offset, expected), 0);
  }
  // Each size went to the smallest class holding it: 64K class holds sizes <= 64K (4 chunks), then
  // 128K (1), 512K (1), 2M (1), 4M (1).
  const ChunkEngineStats stats = engine_->stats();
  ASSERT_EQ(stats.classes.size(), 7u);  // 64K .. 4M
  EXPECT_EQ(stats.classes[0].total_blocks - stats.classes[0].free_blocks, 4u);
  EXPECT_EQ(stats.classes[1].total_blocks - stats.classes[1].free_blocks, 1u);
  EXPECT_EQ(stats.classes[2].total_blocks - stats.classes[2].free_blocks, 0u);
  EXPECT_EQ(stats.classes[3].total_blocks - stats.classes[3].free_blocks, 1u);
  EXPECT_EQ(stats.classes[5].total_blocks - stats.classes[5].free_blocks, 1u);
  EXPECT_EQ(stats.classes[6].total_blocks - stats.classes[6].free_blocks, 1u);
  EXPECT_EQ(stats.writes, sizes.size());
  EXPECT_EQ(stats.commits, sizes.size());
  expect_allocator_ok();
}

TEST_P(ChunkEngineTest, ReadPastEndAndUnknownChunk) {
  const ChunkId id{2, 0};
  write_commit(id, 0, pattern_bytes(100, 1));
  auto past = engine_->read(id, 200, 10, ReadMode::kStrict);
  ASSERT_TRUE(past.is_ok());
  EXPECT_TRUE(past->data.empty());
  EXPECT_EQ(engine_->read(ChunkId{2, 1}, 0, 10, ReadMode::kStrict).status().code(), StatusCode::kNotFound);
  EXPECT_EQ(engine_->stat(ChunkId{2, 1}).status().code(), StatusCode::kNotFound);
}

TEST_P(ChunkEngineTest, PendingCommitAbortSemantics) {
  const ChunkId id{3, 5};
  const auto v1 = pattern_bytes(10000, 1);
  write_commit(id, 0, v1);
  // Version numbers: only committed + 1 is accepted.
  const auto v2 = pattern_bytes(3000, 2);
  ChunkUpdate wrong{id, 3, 1, 0, v2, false};
  const Status wrong_status = engine_->put_pending(wrong);
  EXPECT_EQ(wrong_status.code(), StatusCode::kFailedPrecondition);
  EXPECT_EQ(wrong_status.message().rfind("[version_mismatch]", 0), 0u) << wrong_status;
  ChunkUpdate update{id, 2, 8, 1000, v2, false};
  ASSERT_TRUE(engine_->put_pending(update).is_ok());
  // Strict reads see "dirty" and no data; relaxed reads see the committed version.
  auto strict = engine_->read(id, 0, 100, ReadMode::kStrict);
  ASSERT_TRUE(strict.is_ok());
  EXPECT_TRUE(strict->dirty);
  EXPECT_TRUE(strict->data.empty());
  EXPECT_EQ(strict->meta.pending_version, 2u);
  auto relaxed = engine_->read(id, 0, UINT64_MAX, ReadMode::kRelaxed);
  ASSERT_TRUE(relaxed.is_ok());
  EXPECT_TRUE(relaxed->dirty);
  EXPECT_EQ(relaxed->data, v1);
  // The pending metadata describes the new contents.
  std::vector<std::byte> expected = v1;
  std::memcpy(expected.data() + 1000, v2.data(), v2.size());
  auto meta = engine_->stat(id);
  ASSERT_TRUE(meta.is_ok());
  EXPECT_EQ(meta->pending_length, expected.size());
  EXPECT_EQ(meta->pending_crc32c, crc32c(expected));
  EXPECT_EQ(meta->chain_version, 8u);
  // A retried forward (same version) replaces the pending version; another version is refused.
  const auto v2b = pattern_bytes(3000, 22);
  ChunkUpdate retry{id, 2, 8, 1000, v2b, false};
  ASSERT_TRUE(engine_->put_pending(retry).is_ok());
  std::memcpy(expected.data() + 1000, v2b.data(), v2b.size());
  // Commit: wrong version refused, right one applied, repeated commit idempotent.
  EXPECT_EQ(engine_->commit(id, 3).code(), StatusCode::kFailedPrecondition);
  ASSERT_TRUE(engine_->commit(id, 2).is_ok());
  EXPECT_TRUE(engine_->commit(id, 2).is_ok());
  EXPECT_EQ(engine_->commit(id, 1).code(), StatusCode::kFailedPrecondition);
  EXPECT_EQ(engine_->commit(id, 4).code(), StatusCode::kFailedPrecondition);
  EXPECT_EQ(read_all(id), expected);
  // Abort: drops the pending version, committed stays; a second abort or one of another version is a no-op.
  const auto v3_data = pattern_bytes(20000, 3);  // the update's span must outlive it
  ChunkUpdate v3{id, 3, 8, 0, v3_data, false};
  ASSERT_TRUE(engine_->put_pending(v3).is_ok());
  EXPECT_TRUE(engine_->abort_pending(id, 4).is_ok());
  EXPECT_EQ(engine_->stat(id)->pending_version, 3u);
  ASSERT_TRUE(engine_->abort_pending(id, 3).is_ok());
  EXPECT_TRUE(engine_->abort_pending(id, 3).is_ok());
  auto after = engine_->stat(id);
  ASSERT_TRUE(after.is_ok());
  EXPECT_EQ(after->committed_version, 2u);
  EXPECT_EQ(after->pending_version, 0u);
  EXPECT_EQ(read_all(id), expected);
  // Commit of an unknown chunk.
  EXPECT_EQ(engine_->commit(ChunkId{99, 0}, 1).code(), StatusCode::kFailedPrecondition);
  expect_allocator_ok();
}

TEST_P(ChunkEngineTest, FirstVersionPendingAndAbortRemovesChunk) {
  const ChunkId id{4, 0};
  const auto update_data = pattern_bytes(5000, 4);  // the update's span must outlive it
  ChunkUpdate update{id, 1, 1, 0, update_data, false};
  ASSERT_TRUE(engine_->put_pending(update).is_ok());
  // No committed version yet: not found, strict or relaxed (the same as MemChunkStore).
  EXPECT_EQ(engine_->read(id, 0, 10, ReadMode::kStrict).status().code(), StatusCode::kNotFound);
  EXPECT_EQ(engine_->read(id, 0, 10, ReadMode::kRelaxed).status().code(), StatusCode::kNotFound);
  EXPECT_EQ(engine_->stat(id)->pending_version, 1u);
  ASSERT_TRUE(engine_->abort_pending(id, 1).is_ok());
  EXPECT_EQ(engine_->stat(id).status().code(), StatusCode::kNotFound);
  EXPECT_EQ(used_blocks(), 0u);
  expect_allocator_ok();
}

TEST_P(ChunkEngineTest, FullReplacementAndHoles) {
  const ChunkId id{5, 1};
  // A write past the end leaves a hole that reads as zeros.
  const auto data = pattern_bytes(1000, 5);
  write_commit(id, 70000, data);
  auto all = read_all(id);
  ASSERT_EQ(all.size(), 71000u);
  for (size_t i = 0; i < 70000; ++i) ASSERT_EQ(all[i], std::byte{0}) << i;
  EXPECT_EQ(std::memcmp(all.data() + 70000, data.data(), data.size()), 0);
  // Full replacement through put_pending shrinks the chunk.
  const auto small = pattern_bytes(10, 6);
  ChunkUpdate replace{id, 2, 1, 0, small, true};
  ASSERT_TRUE(engine_->put_pending(replace).is_ok());
  ASSERT_TRUE(engine_->commit(id, 2).is_ok());
  EXPECT_EQ(read_all(id), small);
  ChunkUpdate bad{id, 3, 1, 5, small, true};
  EXPECT_EQ(engine_->put_pending(bad).code(), StatusCode::kInvalidArgument);
  // put_full_replacement installs a committed version directly, dropping a pending one.
  const auto pending_data = pattern_bytes(4, 7);  // the update's span must outlive it
  ChunkUpdate pending{id, 3, 1, 0, pending_data, false};
  ASSERT_TRUE(engine_->put_pending(pending).is_ok());
  const auto recovered = pattern_bytes(200000, 8);
  ASSERT_TRUE(engine_->put_full_replacement(id, 9, 4, recovered).is_ok());
  auto meta = engine_->stat(id);
  ASSERT_TRUE(meta.is_ok());
  EXPECT_EQ(meta->committed_version, 9u);
  EXPECT_EQ(meta->pending_version, 0u);
  EXPECT_EQ(meta->chain_version, 4u);
  EXPECT_EQ(read_all(id), recovered);
  // Empty contents are a valid version.
  ASSERT_TRUE(engine_->put_full_replacement(id, 10, 4, {}).is_ok());
  EXPECT_TRUE(read_all(id).empty());
  EXPECT_EQ(used_blocks(), 0u);
  expect_allocator_ok();
}

TEST_P(ChunkEngineTest, OversizeAndBadVersionsAreInvalidArgument) {
  const ChunkId id{6, 0};
  const auto data = pattern_bytes(16, 1);
  ChunkUpdate too_far{id, 1, 1, engine_->max_chunk_bytes() - 8, data, false};
  const Status too_far_status = engine_->put_pending(too_far);
  EXPECT_EQ(too_far_status.code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(too_far_status.message().rfind("[oversize]", 0), 0u) << too_far_status;
  ChunkUpdate zero{id, 0, 1, 0, data, false};
  EXPECT_EQ(engine_->put_pending(zero).code(), StatusCode::kInvalidArgument);
  std::vector<std::byte> huge(engine_->max_chunk_bytes() + 1);
  EXPECT_EQ(engine_->put_full_replacement(id, 1, 1, huge).code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(engine_->put_full_replacement(id, 0, 1, data).code(), StatusCode::kInvalidArgument);
  // Exactly the maximum is fine.
  std::vector<std::byte> max(engine_->max_chunk_bytes(), std::byte{0x5A});
  ASSERT_TRUE(engine_->put_full_replacement(id, 1, 1, max).is_ok());
  EXPECT_EQ(read_all(id), max);
}

TEST_P(ChunkEngineTest, InPlaceAppendKeepsCommittedVersion) {
  const ChunkId id{7, 0};
  std::vector<std::byte> expected = pattern_bytes(5000, 1);  // unaligned committed length
  write_commit(id, 0, expected);
  const uint64_t before = engine_->stats().inplace_appends;
  const uint64_t used_before = used_blocks();
  for (int round = 0; round < 5; ++round) {
    const auto more = pattern_bytes(3000 + 4096 * round, 10 + round);
    const uint32_t version = static_cast<uint32_t>(round) + 2;
    ChunkUpdate append{id, version, 1, expected.size(), more, false};
    ASSERT_TRUE(engine_->put_pending(append).is_ok());
    // The committed version is untouched while the append is pending.
    auto relaxed = engine_->read(id, 0, UINT64_MAX, ReadMode::kRelaxed);
    ASSERT_TRUE(relaxed.is_ok()) << relaxed.status();
    EXPECT_EQ(relaxed->data, expected);
    if (round == 2) {
      ASSERT_TRUE(engine_->abort_pending(id, version).is_ok());
      EXPECT_EQ(read_all(id), expected);
      ASSERT_TRUE(engine_->put_pending(append).is_ok());
    }
    ASSERT_TRUE(engine_->commit(id, version).is_ok());
    expected.insert(expected.end(), more.begin(), more.end());
    EXPECT_EQ(read_all(id), expected);
    EXPECT_EQ(engine_->stat(id)->committed_crc32c, crc32c(expected));
  }
  EXPECT_EQ(engine_->stats().inplace_appends - before, 6u);  // 5 rounds + the re-put after the abort
  EXPECT_EQ(used_blocks(), used_before);
  // An append that outgrows the block moves the chunk to a larger class (copy-on-write).
  const auto big = pattern_bytes(100000, 99);
  const uint64_t appends = engine_->stats().inplace_appends;
  write_commit(id, expected.size(), big);
  expected.insert(expected.end(), big.begin(), big.end());
  EXPECT_EQ(engine_->stats().inplace_appends, appends);
  EXPECT_EQ(read_all(id), expected);
  // An append with a gap fills it with zeros.
  write_commit(id, expected.size() + 10, pattern_bytes(1, 5));
  expected.resize(expected.size() + 10, std::byte{0});
  const auto one = pattern_bytes(1, 5);
  expected.push_back(one[0]);
  EXPECT_EQ(read_all(id), expected);
  expect_allocator_ok();
}

TEST_P(ChunkEngineTest, AlignedPayloadIsWrittenWithoutACopy) {
  // A payload at a 4 KiB-aligned address covering whole 4 KiB units is written from the caller's memory
  // (fs/rpc receives write payloads so); any other payload is copied into the engine's buffer first. Both
  // store the same bytes and CRCs.
  constexpr size_t kBytes = (256u << 10) + 4096;
  const auto pattern = pattern_bytes(kBytes + 1, 21);
  std::vector<std::byte> storage(kBytes + 2 * 4096);
  const auto address = reinterpret_cast<uintptr_t>(storage.data());
  std::byte* aligned = storage.data() + ((4096 - address % 4096) % 4096);
  std::memcpy(aligned, pattern.data(), kBytes);
  const std::span<const std::byte> aligned_span(aligned, kBytes);
  const std::span<const std::byte> expected(pattern.data(), kBytes);

  uint64_t before = engine_->stats().zero_copy_write_bytes;
  write_commit(ChunkId{80, 0}, 0, aligned_span);  // a new chunk
  EXPECT_EQ(engine_->stats().zero_copy_write_bytes - before, kBytes);
  EXPECT_EQ(read_all(ChunkId{80, 0}), std::vector<std::byte>(expected.begin(), expected.end()));
  EXPECT_EQ(engine_->stat(ChunkId{80, 0})->committed_crc32c, crc32c(expected));

  // An append at a 4 KiB boundary in place (the chunk size hint reserved the room) also goes straight from
  // the payload.
  ChunkUpdate first{ChunkId{80, 4}, 1, 7, 0, aligned_span, false};
  first.chunk_size = 1u << 20;
  ASSERT_TRUE(engine_->put_pending(first).is_ok());
  ASSERT_TRUE(engine_->commit(ChunkId{80, 4}, 1).is_ok());
  const uint64_t appends = engine_->stats().inplace_appends;
  before = engine_->stats().zero_copy_write_bytes;
  write_commit(ChunkId{80, 4}, kBytes, aligned_span);
  EXPECT_EQ(engine_->stats().inplace_appends - appends, 1u);
  EXPECT_EQ(engine_->stats().zero_copy_write_bytes - before, kBytes);
  std::vector<std::byte> twice(expected.begin(), expected.end());
  twice.insert(twice.end(), expected.begin(), expected.end());
  EXPECT_EQ(read_all(ChunkId{80, 4}), twice);
  EXPECT_EQ(engine_->stat(ChunkId{80, 4})->committed_crc32c, crc32c(twice));

  // Misaligned memory, a length that ends inside a 4 KiB unit, or an offset inside one: copied.
  std::memcpy(aligned + 1, pattern.data(), kBytes);
  before = engine_->stats().zero_copy_write_bytes;
  write_commit(ChunkId{80, 1}, 0, std::span<const std::byte>(aligned + 1, kBytes));
  std::memcpy(aligned, pattern.data(), kBytes);
  write_commit(ChunkId{80, 2}, 0, std::span<const std::byte>(aligned, kBytes - 100));
  write_commit(ChunkId{80, 3}, 512, aligned_span);
  EXPECT_EQ(engine_->stats().zero_copy_write_bytes, before);
  EXPECT_EQ(read_all(ChunkId{80, 1}), std::vector<std::byte>(expected.begin(), expected.end()));
  EXPECT_EQ(read_all(ChunkId{80, 2}), std::vector<std::byte>(expected.begin(), expected.end() - 100));
  std::vector<std::byte> shifted(512, std::byte{0});
  shifted.insert(shifted.end(), expected.begin(), expected.end());
  EXPECT_EQ(read_all(ChunkId{80, 3}), shifted);
  EXPECT_EQ(engine_->stat(ChunkId{80, 3})->committed_crc32c, crc32c(shifted));
  expect_allocator_ok();
}

TEST_P(ChunkEngineTest, ChunkSizeHintMakesFrontToBackWritesInPlace) {
  // A 1 MiB chunk written in 256 KiB pieces: with the file's chunk size given, the first piece goes into
  // a 1 MiB block and the rest are in-place appends; without it, each step copies into a bigger class.
  const auto piece = pattern_bytes(256u << 10, 3);
  for (const uint64_t hint : {uint64_t{1} << 20, uint64_t{0}}) {
    const ChunkId id{60, hint};
    const uint64_t appends_before = engine_->stats().inplace_appends;
    std::vector<std::byte> expected;
    for (uint32_t version = 1; version <= 4; ++version) {
      ChunkUpdate update{id, version, 1, expected.size(), piece, false, hint};
      ASSERT_TRUE(engine_->put_pending(update).is_ok());
      ASSERT_TRUE(engine_->commit(id, version).is_ok());
      expected.insert(expected.end(), piece.begin(), piece.end());
    }
    EXPECT_EQ(read_all(id), expected);
    EXPECT_EQ(engine_->stats().inplace_appends - appends_before, hint != 0 ? 3u : 1u) << "hint " << hint;
  }
  expect_allocator_ok();
}

TEST_P(ChunkEngineTest, SmallOverwriteIsAPatch) {
  const ChunkId id{8, 0};
  std::vector<std::byte> expected = pattern_bytes(300000, 1);
  write_commit(id, 0, expected);
  const auto patch = pattern_bytes(7000, 2);
  const uint64_t patched_before = engine_->stats().patched_writes;
  const uint64_t written_before = engine_->stats().write_bytes;
  ChunkUpdate update{id, 2, 1, 123457, patch, false};
  ASSERT_TRUE(engine_->put_pending(update).is_ok());
  // The patch is the two 4 KiB segments the update touches, not a copy of the chunk: inline in the
  // record (no data write, no block) or in a patch block of its own.
  const bool inline_patch = engine_->options().inline_patch_bytes >= 8192;
  EXPECT_EQ(used_blocks(), inline_patch ? 1u : 2u);
  EXPECT_EQ(engine_->stats().patched_writes - patched_before, 1u);
  EXPECT_EQ(engine_->stats().write_bytes - written_before, inline_patch ? 0u : 8192u);
  auto meta = engine_->stat(id);
  ASSERT_TRUE(meta.is_ok());
  std::vector<std::byte> next = expected;
  std::memcpy(next.data() + 123457, patch.data(), patch.size());
  EXPECT_EQ(meta->pending_crc32c, crc32c(next)) << "whole CRC folded from the segment CRCs";
  EXPECT_EQ(read_all(id), expected);
  ASSERT_TRUE(engine_->commit(id, 2).is_ok());
  // The patch block is freed once a synced batch made the unsynced batch that dropped it durable.
  ASSERT_TRUE(engine_->sync().is_ok());
  EXPECT_EQ(used_blocks(), 1u);
  EXPECT_EQ(read_all(id), next);
  EXPECT_EQ(engine_->stat(id)->committed_crc32c, crc32c(next));
  // Patches at the very start, across the version's end (growing it), and an abort.
  std::vector<std::byte> head = pattern_bytes(100, 5);
  ChunkUpdate at_start{id, 3, 1, 0, head, false};
  ASSERT_TRUE(engine_->put_pending(at_start).is_ok());
  ASSERT_TRUE(engine_->commit(id, 3).is_ok());
  std::memcpy(next.data(), head.data(), head.size());
  const auto tail = pattern_bytes(9000, 6);
  ChunkUpdate across_end{id, 4, 1, next.size() - 1000, tail, false};
  ASSERT_TRUE(engine_->put_pending(across_end).is_ok());
  EXPECT_EQ(engine_->stats().patched_writes - patched_before, 3u);
  ASSERT_TRUE(engine_->abort_pending(id, 4).is_ok());
  ASSERT_TRUE(engine_->sync().is_ok());
  EXPECT_EQ(used_blocks(), 1u);
  ASSERT_TRUE(engine_->put_pending(across_end).is_ok());
  ASSERT_TRUE(engine_->commit(id, 4).is_ok());
  next.resize(next.size() - 1000);
  next.insert(next.end(), tail.begin(), tail.end());
  EXPECT_EQ(read_all(id), next);
  EXPECT_EQ(engine_->stat(id)->committed_crc32c, crc32c(next));
  expect_allocator_ok();
}

TEST_P(ChunkEngineTest, OverwriteIsCopyOnWrite) {
  const ChunkId id{8, 1};
  std::vector<std::byte> expected = pattern_bytes(300000, 1);
  write_commit(id, 0, expected);
  // Half the chunk or more: copy-on-write into a new block.
  const auto patch = pattern_bytes(160000, 2);
  ChunkUpdate update{id, 2, 1, 123457, patch, false};
  ASSERT_TRUE(engine_->put_pending(update).is_ok());
  // Two blocks in use now: the committed and the pending version.
  EXPECT_EQ(used_blocks(), 2u);
  EXPECT_EQ(read_all(id), expected);
  ASSERT_TRUE(engine_->commit(id, 2).is_ok());
  EXPECT_EQ(used_blocks(), 1u);
  std::memcpy(expected.data() + 123457, patch.data(), patch.size());
  EXPECT_EQ(read_all(id), expected);
  expect_allocator_ok();
}

TEST_P(ChunkEngineTest, ReadIntoZeroCopyAndUnaligned) {
  const ChunkId id{9, 0};
  const auto data = pattern_bytes(2u << 20, 3);
  write_commit(id, 0, data);
  void* memory = nullptr;
  ASSERT_EQ(posix_memalign(&memory, 4096, 1u << 20), 0);
  std::span<std::byte> aligned(static_cast<std::byte*>(memory), 1u << 20);
  auto result = engine_->read_into(id, 4096 * 7, aligned, ReadMode::kStrict);
  ASSERT_TRUE(result.is_ok()) << result.status();
  EXPECT_EQ(result->bytes_read, aligned.size());
  EXPECT_EQ(std::memcmp(aligned.data(), data.data() + 4096 * 7, aligned.size()), 0);
  // Unaligned offset and destination go through the bounce buffer.
  auto odd = engine_->read_into(id, 12345, aligned.subspan(3, 100000), ReadMode::kStrict);
  ASSERT_TRUE(odd.is_ok()) << odd.status();
  EXPECT_EQ(odd->bytes_read, 100000u);
  EXPECT_EQ(std::memcmp(aligned.data() + 3, data.data() + 12345, 100000), 0);
  // Short at the end of the chunk.
  auto tail = engine_->read_into(id, data.size() - 4096, aligned, ReadMode::kStrict);
  ASSERT_TRUE(tail.is_ok());
  EXPECT_EQ(tail->bytes_read, 4096u);
  std::free(memory);
}

TEST_P(ChunkEngineTest, ReadSharedMatchesReadInAnAlignedBuffer) {
  const ChunkId id{9, 1};
  const auto data = pattern_bytes((2u << 20) + 777, 4);
  write_commit(id, 0, data);
  struct Range {
    uint64_t offset, length;
  };
  // Whole segments (zero-copy), unaligned (bounce), past the end (short), beyond the end (empty).
  for (Range range : {Range{4096 * 3, 1u << 20}, Range{12345, 100000}, Range{data.size() - 5000, 8192},
                      Range{data.size() + 10, 4096}}) {
    auto shared = engine_->read_shared(id, range.offset, range.length, ReadMode::kStrict);
    auto plain = engine_->read(id, range.offset, range.length, ReadMode::kStrict);
    ASSERT_TRUE(shared.is_ok()) << shared.status();
    ASSERT_TRUE(plain.is_ok()) << plain.status();
    ASSERT_TRUE(shared->data.is_set());
    EXPECT_EQ(shared->data.to_vector(), plain->data) << "offset " << range.offset;
    EXPECT_EQ(shared->meta.committed_version, plain->meta.committed_version);
    if (shared->data.size() > 0) {
      EXPECT_EQ(reinterpret_cast<uintptr_t>(shared->data.bytes.data()) % 4096, 0u);
    }
  }
  // A pending version: strict reads are dirty without data, relaxed ones return the committed bytes.
  const auto update_data = pattern_bytes(4096, 5);
  ASSERT_TRUE(engine_->put_pending(ChunkUpdate{id, 2, 1, 0, update_data, false}).is_ok());
  auto dirty = engine_->read_shared(id, 0, 4096, ReadMode::kStrict);
  ASSERT_TRUE(dirty.is_ok());
  EXPECT_TRUE(dirty->dirty);
  EXPECT_EQ(dirty->data.size(), 0u);
  auto relaxed = engine_->read_shared(id, 0, 4096, ReadMode::kRelaxed);
  ASSERT_TRUE(relaxed.is_ok());
  EXPECT_TRUE(relaxed->dirty);
  EXPECT_EQ(relaxed->data.to_vector(), std::vector<std::byte>(data.begin(), data.begin() + 4096));
  EXPECT_EQ(engine_->read_shared(ChunkId{9, 99}, 0, 1, ReadMode::kStrict).status().code(), StatusCode::kNotFound);
}

TEST_P(ChunkEngineTest, ReadSharedRecyclesItsBuffersWithinTheBound) {
  const ChunkId a{10, 1}, b{10, 2};
  const auto data_a = pattern_bytes(1u << 20, 6);
  const auto data_b = pattern_bytes(1u << 20, 7);
  write_commit(a, 0, data_a);
  write_commit(b, 0, data_b);
  const ChunkEngineStats before = engine_->stats();
  const std::byte* first_buffer = nullptr;
  {
    auto first = engine_->read_shared(a, 0, 1u << 20, ReadMode::kStrict);
    ASSERT_TRUE(first.is_ok()) << first.status();
    first_buffer = first->data.bytes.data();
    // While the first buffer is held, a second read gets another one.
    auto second = engine_->read_shared(b, 0, 1u << 20, ReadMode::kStrict);
    ASSERT_TRUE(second.is_ok()) << second.status();
    EXPECT_NE(second->data.bytes.data(), first_buffer);
    EXPECT_EQ(first->data.to_vector(), data_a);
    EXPECT_EQ(second->data.to_vector(), data_b);
  }
  // Both went back to the pool: the next read of the same size reuses one and holds the new bytes
  // (a recycled buffer's old contents must not leak into a shorter read either).
  SharedBytes kept;
  {
    auto again = engine_->read_shared(b, 0, 1u << 20, ReadMode::kStrict);
    ASSERT_TRUE(again.is_ok()) << again.status();
    EXPECT_EQ(again->data.to_vector(), data_b);
    kept = again->data;
  }
  auto shorter = engine_->read_shared(a, 4096, 1000000, ReadMode::kStrict);
  ASSERT_TRUE(shorter.is_ok()) << shorter.status();
  EXPECT_EQ(shorter->data.to_vector(), std::vector<std::byte>(data_a.begin() + 4096, data_a.begin() + 4096 + 1000000));
  const ChunkEngineStats after = engine_->stats();
  EXPECT_EQ(after.read_buffers - before.read_buffers, 4u);
  EXPECT_EQ(after.read_buffers_reused - before.read_buffers_reused, 2u);
  // A buffer may outlive its engine (gRPC releases reply slices whenever it is done with them).
  engine_.reset();
  EXPECT_EQ(kept.to_vector(), data_b);
  kept = SharedBytes{};
  open_engine();
}

TEST_P(ChunkEngineTest, ReadSharedWithoutAPoolAllocatesEachTime) {
  ChunkEngineOptions no_pool = options();
  no_pool.read_buffer_pool_bytes = 0;
  engine_.reset();
  auto engine = ChunkEngine::open(no_pool);
  ASSERT_TRUE(engine.is_ok()) << engine.status();
  engine_ = std::move(*engine);
  const ChunkId id{11, 1};
  const auto data = pattern_bytes(256u << 10, 8);
  write_commit(id, 0, data);
  for (int i = 0; i < 3; ++i) {
    auto read = engine_->read_shared(id, 0, data.size(), ReadMode::kStrict);
    ASSERT_TRUE(read.is_ok()) << read.status();
    EXPECT_EQ(read->data.to_vector(), data);
  }
  EXPECT_EQ(engine_->stats().read_buffers_reused, 0u);
}

TEST_P(ChunkEngineTest, DeferredPendingSyncCommitsDurably) {
  // The tail's path: put_pending with defer_metadata_sync, then commit: every path (copy-on-write,
  // in-place append, inline patch) reads back after a reopen, and the allocator stays consistent.
  const ChunkId id{21, 0};
  const auto first = pattern_bytes(64 << 10, 1);
  const auto append = pattern_bytes(10000, 2);
  const auto patch = pattern_bytes(4096, 3);
  std::vector<std::byte> expected = first;
  struct Step {
    uint64_t offset;
    std::span<const std::byte> data;
  };
  for (Step step : {Step{0, first}, Step{first.size(), append}, Step{8192, patch}}) {
    const uint32_t version = stat_or_zero(id).committed_version + 1;
    ChunkUpdate update{id, version, 7, step.offset, step.data, false};
    update.chunk_size = 1 << 20;
    update.defer_metadata_sync = true;
    ASSERT_TRUE(engine_->put_pending(update).is_ok());
    ASSERT_TRUE(engine_->commit(id, version).is_ok());
    if (expected.size() < step.offset + step.data.size()) expected.resize(step.offset + step.data.size());
    std::copy(step.data.begin(), step.data.end(), expected.begin() + static_cast<std::ptrdiff_t>(step.offset));
    EXPECT_EQ(read_all(id), expected) << "version " << version;
  }
  // A deferred pending version replaced by a retried one (same number) is synced: blocks are released.
  ChunkUpdate retried{id, 4, 7, 0, patch, false};
  retried.defer_metadata_sync = true;
  ASSERT_TRUE(engine_->put_pending(retried).is_ok());
  ASSERT_TRUE(engine_->put_pending(retried).is_ok());
  ASSERT_TRUE(engine_->abort_pending(id, 4).is_ok());
  open_engine();
  EXPECT_EQ(read_all(id), expected);
  EXPECT_EQ(stat_or_zero(id).committed_version, 3u);
  EXPECT_EQ(stat_or_zero(id).pending_version, 0u);
  expect_allocator_ok();
}

TEST_P(ChunkEngineTest, LazyCommitIsReadAtOnceAndFreesTheOldBlockAfterASyncedBatch) {
  if (group_sync()) GTEST_SKIP() << "per-write syncs; GroupSyncTest covers group sync";
  const ChunkId id{22, 0};
  std::vector<std::byte> expected = pattern_bytes(300000, 1);
  write_commit(id, 0, expected);
  // Copy-on-write (more than half the chunk), committed lazily: an unsynced batch.
  const auto update_bytes = pattern_bytes(160000, 2);
  ASSERT_TRUE(engine_->put_pending(ChunkUpdate{id, 2, 1, 1000, update_bytes, false}).is_ok());
  const ChunkEngineStats before = engine_->stats();
  ASSERT_TRUE(engine_->commit_lazily(id, 2).is_ok());
  const ChunkEngineStats after = engine_->stats();
  EXPECT_EQ(after.lazy_commits - before.lazy_commits, 1u);
  EXPECT_EQ(after.unsynced_batches - before.unsynced_batches, 1u);
  EXPECT_EQ(after.synced_batches, before.synced_batches);
  std::memcpy(expected.data() + 1000, update_bytes.data(), update_bytes.size());
  EXPECT_EQ(read_all(id), expected);
  EXPECT_EQ(stat_or_zero(id).committed_version, 2u);
  // The old block stays referenced by the durable record until a synced batch covers the commit.
  EXPECT_EQ(used_blocks(), 2u);
  expect_allocator_ok();
  // A synced batch of another chunk makes the commit durable (the WAL is ordered): the block is freed.
  write_commit(ChunkId{22, 1}, 0, pattern_bytes(1000, 3));
  EXPECT_EQ(used_blocks(), 2u);  // this chunk's block and the other's
  expect_allocator_ok();
  EXPECT_TRUE(engine_->commit_lazily(id, 2).is_ok()) << "retried commit of the committed version";
  open_engine();
  EXPECT_EQ(read_all(id), expected);
  EXPECT_EQ(stat_or_zero(id).pending_version, 0u);
  expect_allocator_ok();
}

TEST_P(ChunkEngineTest, CommittedPatchIsAppliedByTheSettlerOrTheNextRead) {
  for (bool settler_waits : {true, false}) {
    SCOPED_TRACE(settler_waits ? "read applies it" : "settler applies it");
    ChunkEngineOptions custom = options();
    custom.inline_patch_bytes = settler_waits ? 0 : custom.inline_patch_bytes;  // patch block / inline
    custom.settle_delay_us = settler_waits ? 60'000'000 : 0;
    reopen_with(custom);
    const ChunkId id{23, settler_waits ? 0u : 1u};
    std::vector<std::byte> expected = pattern_bytes(300000, 1);
    write_commit(id, 0, expected);
    const auto patch = pattern_bytes(5000, 2);
    ASSERT_TRUE(engine_->put_pending(ChunkUpdate{id, 2, 1, 70000, patch, false}).is_ok());
    const uint64_t settled_before = engine_->stats().patches_settled;
    ASSERT_TRUE(engine_->commit_lazily(id, 2).is_ok());
    std::memcpy(expected.data() + 70000, patch.data(), patch.size());
    if (!settler_waits) {
      for (int i = 0; i < 500 && engine_->stats().patches_settled == settled_before; ++i) {
        std::this_thread::sleep_for(std::chrono::milliseconds(10));
      }
      EXPECT_EQ(engine_->stats().patches_settled - settled_before, 1u) << "the settler applied it within 5 s";
    } else {
      EXPECT_EQ(engine_->stats().patches_settled, settled_before) << "the settler waits";
    }
    // The read finds the patch applied, or applies it itself (after a WAL sync: the commit was lazy).
    EXPECT_EQ(read_all(id), expected);
    EXPECT_EQ(engine_->stats().patches_settled - settled_before, 1u);
    EXPECT_EQ(engine_->stat(id)->committed_crc32c, crc32c(expected));
    // The next version of the chunk builds on the applied patch.
    const auto second = pattern_bytes(3000, 4);
    ASSERT_TRUE(engine_->put_pending(ChunkUpdate{id, 3, 1, 200000, second, false}).is_ok());
    ASSERT_TRUE(engine_->commit(id, 3).is_ok());
    std::memcpy(expected.data() + 200000, second.data(), second.size());
    EXPECT_EQ(read_all(id), expected);
    ASSERT_TRUE(engine_->sync().is_ok());
    // One block per chunk written so far (the first pass's chunk is still there in the second).
    EXPECT_EQ(used_blocks(), settler_waits ? 1u : 2u) << "patch blocks freed";
    expect_allocator_ok();
    // Closing the engine applies a patch still queued (a clean shutdown leaves none behind).
    ASSERT_TRUE(engine_->put_pending(ChunkUpdate{id, 4, 1, 0, patch, false}).is_ok());
    ASSERT_TRUE(engine_->commit_lazily(id, 4).is_ok());
    std::memcpy(expected.data(), patch.data(), patch.size());
    reopen_with(custom);
    EXPECT_EQ(read_all(id), expected);
    expect_allocator_ok();
  }
}

TEST_P(ChunkEngineTest, SmallOverwritesNearAnUnappliedPatchMergeIntoIt) {
  // The settler waits, so each committed patch is still there when the next overwrite comes.
  ChunkEngineOptions custom = options();
  custom.settle_delay_us = 60'000'000;
  custom.merge_patch_bytes = 64 << 10;  // the inline limit; the default is 16 KiB
  reopen_with(custom);
  const ChunkId id{26, 0};
  std::vector<std::byte> expected = pattern_bytes(300000, 1);
  write_commit(id, 0, expected);
  struct Step {
    uint64_t offset;
    uint64_t size;
    bool merges;  // takes in the committed patch (else applies it first)
  };
  const Step steps[] = {
      {16384, 4096, false},  // the first patch: nothing to merge with
      {20480, 4096, true},   // right after it (sequential 4 KiB writes)
      {24576, 4096, true},
      {18000, 100, true},     // inside it, unaligned: the partly covered segment's bytes come from the patch
      {36864, 5000, true},    // a gap of 2 segments, read from the block (the union is 28 KiB)
      {77824, 4096, true},    // the union grows to exactly 64 KiB (the inline limit)
      {81921, 4096, false},   // two segments past it: the committed patch is applied first
      {299000, 1000, false},  // far from it: the same
  };
  uint64_t seed = 40;
  for (const Step& step : steps) {
    SCOPED_TRACE(::testing::Message() << "offset " << step.offset << " size " << step.size);
    const ChunkEngineStats before = engine_->stats();
    const uint32_t version = stat_or_zero(id).committed_version + 1;
    const auto data = pattern_bytes(step.size, ++seed);
    ChunkUpdate update{id, version, 1, step.offset, data, false};
    auto preview = engine_->preview_pending(update);
    ASSERT_TRUE(preview.is_ok()) << preview.status();
    ASSERT_TRUE(engine_->put_pending(update).is_ok());
    const ChunkMeta stored = stat_or_zero(id);
    EXPECT_EQ(preview->pending_length, stored.pending_length);
    EXPECT_EQ(preview->pending_crc32c, stored.pending_crc32c);
    ASSERT_TRUE(engine_->commit_lazily(id, version).is_ok());
    std::memcpy(expected.data() + step.offset, data.data(), data.size());
    const ChunkEngineStats after = engine_->stats();
    EXPECT_EQ(after.patched_writes - before.patched_writes, 1u);
    EXPECT_EQ(after.merged_patches - before.merged_patches, step.merges ? 1u : 0u);
    // A merge writes no data: its bytes ride in the pending batch; the block is untouched until the settler.
    if (step.merges) {
      EXPECT_EQ(after.patches_settled, before.patches_settled);
      EXPECT_EQ(after.dsync_data_writes + after.data_fdatasyncs, before.dsync_data_writes + before.data_fdatasyncs);
    }
    EXPECT_EQ(stat_or_zero(id).committed_crc32c, crc32c(expected));
  }
  EXPECT_EQ(read_all(id), expected);  // the read applies the last patch
  ASSERT_TRUE(engine_->sync().is_ok());
  EXPECT_EQ(used_blocks(), 1u);
  expect_allocator_ok();
  // A merged patch committed and never applied before a close is applied at the next open.
  const uint32_t version = stat_or_zero(id).committed_version + 1;
  const auto last = pattern_bytes(4096, 99);
  ASSERT_TRUE(engine_->put_pending(ChunkUpdate{id, version, 1, 4096, last, false}).is_ok());
  ASSERT_TRUE(engine_->commit_lazily(id, version).is_ok());
  ASSERT_TRUE(engine_->put_pending(ChunkUpdate{id, version + 1, 1, 8192, last, false}).is_ok());
  ASSERT_TRUE(engine_->commit(id, version + 1).is_ok());
  EXPECT_EQ(engine_->stats().merged_patches, 6u);
  std::memcpy(expected.data() + 4096, last.data(), last.size());
  std::memcpy(expected.data() + 8192, last.data(), last.size());
  reopen_with(custom);
  EXPECT_EQ(read_all(id), expected);
  expect_allocator_ok();
}

TEST_P(ChunkEngineTest, SyncedIoCountersCountEachKindOfWrite) {
  if (group_sync()) GTEST_SKIP() << "per-write syncs; GroupSyncTest covers group sync";
  const ChunkId id{24, 0};
  const bool direct = engine_->stats().direct_io;
  auto delta = [&](auto&& action) {
    const ChunkEngineStats before = engine_->stats();
    action();
    const ChunkEngineStats after = engine_->stats();
    return std::array<uint64_t, 4>{
        after.synced_batches - before.synced_batches, after.unsynced_batches - before.unsynced_batches,
        after.dsync_data_writes - before.dsync_data_writes, after.data_fdatasyncs - before.data_fdatasyncs};
  };
  using Counts = std::array<uint64_t, 4>;  // synced batches, unsynced batches, DSYNC writes, fdatasyncs
  const Counts data_write = direct ? Counts{0, 0, 1, 0} : Counts{0, 0, 0, 1};
  const auto first = pattern_bytes(200000, 1);
  // A new version (copy-on-write): one data write, one synced batch.
  EXPECT_EQ(delta([&] {
              ASSERT_TRUE(engine_->put_pending(ChunkUpdate{id, 1, 1, 0, first, false}).is_ok());
            }),
            (Counts{1, 0, data_write[2], data_write[3]}));
  EXPECT_EQ(delta([&] { ASSERT_TRUE(engine_->commit(id, 1).is_ok()); }), (Counts{1, 0, 0, 0}));
  // An inline patch: the synced pending batch carries the bytes; the tail's deferred batch is unsynced.
  const auto patch = pattern_bytes(4096, 2);
  ChunkUpdate patched{id, 2, 1, 8192, patch, false};
  patched.defer_metadata_sync = true;
  EXPECT_EQ(delta([&] { ASSERT_TRUE(engine_->put_pending(patched).is_ok()); }), (Counts{0, 1, 0, 0}));
  // Its commit (synced), then the patch applied in place (one data write) and dropped (unsynced).
  EXPECT_EQ(delta([&] {
              ASSERT_TRUE(engine_->commit(id, 2).is_ok());
              ASSERT_EQ(read_all(id).size(), first.size());
            }),
            (Counts{1, 1, data_write[2], data_write[3]}));
  // A lazy commit of an in-place append: one unsynced batch.
  const auto append = pattern_bytes(1000, 3);
  EXPECT_EQ(delta([&] {
              ASSERT_TRUE(engine_->put_pending(ChunkUpdate{id, 3, 1, first.size(), append, false}).is_ok());
            }),
            (Counts{1, 0, data_write[2], data_write[3]}));
  EXPECT_EQ(delta([&] { ASSERT_TRUE(engine_->commit_lazily(id, 3).is_ok()); }), (Counts{0, 1, 0, 0}));
  const ChunkEngineStats stats = engine_->stats();
  EXPECT_GE(stats.rocksdb_wal_file_syncs, 1u);
  EXPECT_GE(stats.rocksdb_writes_by_self, stats.synced_batches);
}

TEST_P(ChunkEngineTest, PreviewPendingMatchesWhatPutPendingStores) {
  // The head forwards with the previewed CRC while it stores: every update shape must agree exactly.
  const ChunkId id{25, 0};
  struct Step {
    uint64_t offset;
    uint64_t size;
    bool full_replacement;
  };
  const Step steps[] = {
      {0, 100000, false},     // a new chunk
      {100000, 5000, false},  // append at the committed length (unaligned)
      {4096, 8192, false},    // aligned overwrite inside (a patch)
      {1234, 10000, false},   // unaligned overwrite inside, first and last segment partly covered
      {100000, 1, false},     // one byte
      {95000, 30000, false},  // across the end
      {0, 200000, false},     // from 0 past the end
      {0, 50000, true},       // full replacement (shrinks)
      {10, 40000, false},     // most of the chunk: copy-on-write
      {49990, 3, false},      // the last partial segment
  };
  uint64_t seed = 10;
  for (const Step& step : steps) {
    const uint32_t version = stat_or_zero(id).committed_version + 1;
    const auto data = pattern_bytes(step.size, ++seed);
    ChunkUpdate update{id, version, 1, step.offset, data, step.full_replacement};
    auto preview = engine_->preview_pending(update);
    ASSERT_TRUE(preview.is_ok()) << preview.status() << " at offset " << step.offset;
    ASSERT_TRUE(engine_->put_pending(update).is_ok());
    const ChunkMeta stored = stat_or_zero(id);
    EXPECT_EQ(preview->pending_version, stored.pending_version) << "offset " << step.offset;
    EXPECT_EQ(preview->pending_length, stored.pending_length) << "offset " << step.offset;
    EXPECT_EQ(preview->pending_crc32c, stored.pending_crc32c) << "offset " << step.offset;
    ASSERT_TRUE(engine_->commit(id, version).is_ok());
    ASSERT_TRUE(engine_->sync().is_ok());  // apply a patch now, so the next preview can read the block
  }
  // A hole after the committed length, and a wrong version: not previewed.
  const auto data = pattern_bytes(10, 1);
  const uint32_t next = stat_or_zero(id).committed_version + 1;
  EXPECT_EQ(engine_->preview_pending(ChunkUpdate{id, next, 1, 60000, data, false}).status().code(),
            StatusCode::kUnimplemented);
  const Status wrong = engine_->preview_pending(ChunkUpdate{id, next + 1, 1, 0, data, false}).status();
  EXPECT_EQ(wrong.message().rfind("[version_mismatch]", 0), 0u) << wrong;
}

TEST_P(ChunkEngineTest, RemoveRangeAndList) {
  for (uint64_t inode = 10; inode < 13; ++inode) {
    for (uint64_t index = 0; index < 5; ++index)
      write_commit(ChunkId{inode, index}, 0, pattern_bytes(100, inode * 10 + index));
  }
  const auto pending_only_data = pattern_bytes(10, 1);  // the update's span must outlive it
  ChunkUpdate pending_only{ChunkId{11, 9}, 1, 1, 0, pending_only_data, false};
  ASSERT_TRUE(engine_->put_pending(pending_only).is_ok());
  auto listed = engine_->list(ChunkId{11, 0}, ChunkId{12, 0}, 100);
  ASSERT_TRUE(listed.is_ok());
  ASSERT_EQ(listed->size(), 6u);
  for (size_t i = 0; i + 1 < listed->size(); ++i) EXPECT_LT((*listed)[i].id, (*listed)[i + 1].id);
  EXPECT_EQ(listed->back().pending_version, 1u);
  auto limited = engine_->list(ChunkId{0, 0}, ChunkId{UINT64_MAX, UINT64_MAX}, 4);
  ASSERT_TRUE(limited.is_ok());
  EXPECT_EQ(limited->size(), 4u);
  auto removed = engine_->remove_range(ChunkId{11, 2}, ChunkId{12, 1});
  ASSERT_TRUE(removed.is_ok());
  EXPECT_EQ(*removed, 5u);  // 11:2, 11:3, 11:4, 11:9, 12:0
  EXPECT_EQ(engine_->stat(ChunkId{11, 1}).status().code(), StatusCode::kOk);
  EXPECT_EQ(engine_->stat(ChunkId{11, 9}).status().code(), StatusCode::kNotFound);
  EXPECT_EQ(engine_->stat(ChunkId{12, 0}).status().code(), StatusCode::kNotFound);
  EXPECT_EQ(engine_->stat(ChunkId{12, 1}).status().code(), StatusCode::kOk);
  EXPECT_EQ(used_blocks(), 11u);  // 15 committed chunks - 4 removed
  EXPECT_EQ(*engine_->remove_range(ChunkId{12, 0}, ChunkId{11, 0}), 0u);
  expect_allocator_ok();
}

// The scrub's saved place: none at first, the last one saved after a reopen, and never a chunk in a listing.
TEST_P(ChunkEngineTest, TheScrubCursorIsKeptAcrossAReopenAndIsNoChunk) {
  auto none = engine_->load_scrub_cursor();
  ASSERT_TRUE(none.is_ok()) << none.status();
  EXPECT_FALSE(none->has_value());
  write_commit(ChunkId{3, 1}, 0, pattern_bytes(100, 1));
  ASSERT_TRUE(engine_->save_scrub_cursor({.pass = 4, .next = ChunkId{3, 1}}).is_ok());
  const ChunkStore::ScrubCursor last{.pass = 5, .next = ChunkId{UINT64_MAX - 1, 7}};
  ASSERT_TRUE(engine_->save_scrub_cursor(last).is_ok());
  ASSERT_TRUE(engine_->sync().is_ok());
  open_engine();
  auto loaded = engine_->load_scrub_cursor();
  ASSERT_TRUE(loaded.is_ok()) << loaded.status();
  ASSERT_TRUE(loaded->has_value());
  EXPECT_EQ(**loaded, last);
  auto listed = engine_->list(ChunkId{0, 0}, ChunkId{UINT64_MAX, UINT64_MAX}, UINT64_MAX);
  ASSERT_TRUE(listed.is_ok()) << listed.status();
  ASSERT_EQ(listed->size(), 1u);
  EXPECT_EQ(listed->front().id, (ChunkId{3, 1}));
  expect_allocator_ok();
}

TEST_P(ChunkEngineTest, ReopenKeepsEverythingAndTheAllocator) {
  std::vector<std::vector<std::byte>> contents;
  for (uint64_t index = 0; index < 40; ++index) {  // more than the 16 preallocated 64 KiB blocks: files grow
    contents.push_back(pattern_bytes(1000 + index * 1500, index));
    write_commit(ChunkId{20, index}, 0, contents.back());
  }
  const auto pending_data = pattern_bytes(777, 77);  // the update's span must outlive it
  ChunkUpdate pending{ChunkId{20, 0}, 2, 3, 0, pending_data, false};
  ASSERT_TRUE(engine_->put_pending(pending).is_ok());
  ASSERT_TRUE(engine_->sync().is_ok());
  const ChunkEngineStats before = engine_->stats();
  open_engine();
  const ChunkEngineStats after = engine_->stats();
  ASSERT_EQ(before.classes.size(), after.classes.size());
  for (size_t i = 0; i < before.classes.size(); ++i) {
    EXPECT_EQ(before.classes[i].total_blocks, after.classes[i].total_blocks) << "class " << i;
    EXPECT_EQ(before.classes[i].free_blocks, after.classes[i].free_blocks) << "class " << i;
  }
  for (uint64_t index = 0; index < 40; ++index) EXPECT_EQ(read_all(ChunkId{20, index}), contents[index]) << index;
  EXPECT_EQ(engine_->stat(ChunkId{20, 0})->pending_version, 2u);
  ASSERT_TRUE(engine_->commit(ChunkId{20, 0}, 2).is_ok());
  std::vector<std::byte> expected = contents[0];
  std::memcpy(expected.data(), pending_data.data(), pending_data.size());
  EXPECT_EQ(read_all(ChunkId{20, 0}), expected);
  expect_allocator_ok();
  // Options that disagree with the stored format are refused.
  engine_.reset();
  ChunkEngineOptions different = options();
  different.max_block_bytes = 8u << 20;
  EXPECT_EQ(ChunkEngine::open(different).status().code(), StatusCode::kInvalidArgument);
}

TEST_P(ChunkEngineTest, CorruptionIsDetectedAndRepaired) {
  const ChunkId id{30, 4};
  const auto data = pattern_bytes(200000, 30);  // 256 KiB class, block 0 of a fresh engine
  write_commit(id, 0, data);
  // Flip bytes in the middle of the data file, behind the engine's back.
  const std::string file = dir_->path() + "/blocks.262144";
  const int fd = ::open(file.c_str(), O_RDWR);
  ASSERT_GE(fd, 0);
  char byte = 0;
  ASSERT_EQ(::pread(fd, &byte, 1, 150000), 1);
  byte = static_cast<char>(byte ^ 0x5A);
  ASSERT_EQ(::pwrite(fd, &byte, 1, 150000), 1);
  ASSERT_EQ(::fsync(fd), 0);
  ::close(fd);
  open_engine();  // drop any page cache the buffered modes kept in the engine's view (same file, same cache)
  auto read = engine_->read(id, 0, UINT64_MAX, ReadMode::kStrict);
  ASSERT_EQ(read.status().code(), StatusCode::kDataLoss);
  EXPECT_EQ(read.status().message().rfind("[checksum_mismatch]", 0), 0u) << read.status();
  EXPECT_NE(read.status().message().find(id.to_string()), std::string::npos) << read.status();
  EXPECT_NE(read.status().message().find(dir_->path()), std::string::npos) << read.status();
  EXPECT_NE(read.status().message().find("[147456, 151552)"), std::string::npos) << read.status();
  EXPECT_EQ(engine_->stats().corruptions, 1u);
  // A read of other segments is still served (each read verifies the segments it touches).
  auto head = engine_->read(id, 0, 4096, ReadMode::kStrict);
  ASSERT_TRUE(head.is_ok()) << head.status();
  // An update that needs the corrupt bytes fails too, instead of spreading them (a small one is a patch
  // that reads the old bytes of the segments it only partly covers: here the corrupt one).
  const auto update_data = pattern_bytes(10, 1);  // the update's span must outlive it
  ChunkUpdate update{id, 2, 1, 149000, update_data, false};
  EXPECT_EQ(engine_->put_pending(update).code(), StatusCode::kDataLoss);
  // So does a copy-on-write update (more than half the chunk) that copies the corrupt segment.
  const auto big_data = pattern_bytes(120000, 2);
  ChunkUpdate big_update{id, 2, 1, 0, big_data, false};
  EXPECT_EQ(engine_->put_pending(big_update).code(), StatusCode::kDataLoss);
  // Repair from a replica: a full replacement.
  ASSERT_TRUE(engine_->put_full_replacement(id, 1, 1, data).is_ok());
  EXPECT_EQ(read_all(id), data);
  EXPECT_EQ(engine_->stats().corruptions, 3u);
  expect_allocator_ok();
}

TEST_P(ChunkEngineTest, ZeroCopyReadDetectsCorruptionInALaterPiece) {
  const ChunkId id{31, 0};
  const auto data = pattern_bytes(4u << 20, 31);  // 4 MiB class, block 0: read as 4 pieces of 1 MiB
  write_commit(id, 0, data);
  const std::string file = dir_->path() + "/blocks.4194304";
  const int fd = ::open(file.c_str(), O_RDWR);
  ASSERT_GE(fd, 0);
  char byte = 0;
  const off_t where = (3u << 20) + 5000;
  ASSERT_EQ(::pread(fd, &byte, 1, where), 1);
  byte = static_cast<char>(byte ^ 0x01);
  ASSERT_EQ(::pwrite(fd, &byte, 1, where), 1);
  ::close(fd);
  open_engine();
  void* memory = nullptr;
  ASSERT_EQ(posix_memalign(&memory, 4096, data.size()), 0);
  std::span<std::byte> out(static_cast<std::byte*>(memory), data.size());
  auto read = engine_->read_into(id, 0, out, ReadMode::kStrict);
  EXPECT_EQ(read.status().code(), StatusCode::kDataLoss);
  EXPECT_NE(read.status().message().find("[3149824, 3153920)"), std::string::npos) << read.status();
  // The first 3 MiB are intact and still served.
  auto head = engine_->read_into(id, 0, out.first(3u << 20), ReadMode::kStrict);
  ASSERT_TRUE(head.is_ok()) << head.status();
  EXPECT_EQ(std::memcmp(out.data(), data.data(), 3u << 20), 0);
  std::free(memory);
}

TEST_P(ChunkEngineTest, InjectedFaultsLeaveTheOldVersion) {
  engine_.reset();
  ChunkEngineOptions faulty = options();
  std::atomic<int> fail_at{-1};
  faulty.fault_hook = [&](ChunkFaultPoint point, const ChunkId&) -> Status {
    if (static_cast<int>(point) == fail_at.load()) return io_error("injected at {}", chunk_fault_point_name(point));
    return Status::ok();
  };
  auto opened = ChunkEngine::open(faulty);
  ASSERT_TRUE(opened.is_ok());
  engine_ = std::move(*opened);
  const ChunkId id{40, 0};
  const auto v1 = pattern_bytes(70000, 1);
  write_commit(id, 0, v1);
  fail_at = static_cast<int>(ChunkFaultPoint::kAfterDataWrite);
  const auto update_data = pattern_bytes(100, 2);  // the update's span must outlive it
  ChunkUpdate update{id, 2, 1, 10, update_data, false};
  EXPECT_EQ(engine_->put_pending(update).code(), StatusCode::kIoError);
  EXPECT_EQ(engine_->stat(id)->pending_version, 0u);
  EXPECT_EQ(used_blocks(), 1u);
  EXPECT_EQ(engine_->put_full_replacement(id, 2, 1, pattern_bytes(5, 5)).code(), StatusCode::kIoError);
  fail_at = static_cast<int>(ChunkFaultPoint::kBeforeDataRead);
  EXPECT_EQ(engine_->read(id, 0, 10, ReadMode::kStrict).status().code(), StatusCode::kIoError);
  fail_at = -1;
  EXPECT_EQ(read_all(id), v1);
  expect_allocator_ok();
}

TEST_P(ChunkEngineTest, ConcurrentWritersOnDifferentChunks) {
  constexpr int kThreads = 8;
  constexpr int kChunksPerThread = 6;
  constexpr int kRounds = 4;
  std::atomic<int> failures{0};
  std::vector<std::thread> threads;
  for (int thread = 0; thread < kThreads; ++thread) {
    threads.emplace_back([&, thread] {
      for (int round = 1; round <= kRounds; ++round) {
        for (int chunk = 0; chunk < kChunksPerThread; ++chunk) {
          const ChunkId id{100 + static_cast<uint64_t>(thread), static_cast<uint64_t>(chunk)};
          const uint64_t seed = static_cast<uint64_t>(thread * 1000 + chunk * 10 + round);
          const auto data =
              pattern_bytes(1000 + static_cast<uint64_t>(chunk) * 40000 + static_cast<uint64_t>(round) * 3000, seed);
          const uint32_t version = static_cast<uint32_t>(round);
          ChunkUpdate update{id, version, 1, 0, data, true};
          if (!engine_->put_pending(update).is_ok() || !engine_->commit(id, version).is_ok()) {
            ++failures;
            continue;
          }
          auto read = engine_->read(id, 0, UINT64_MAX, ReadMode::kStrict);
          if (!read.is_ok() || read->data != data) ++failures;
        }
      }
    });
  }
  for (auto& thread : threads) thread.join();
  EXPECT_EQ(failures.load(), 0);
  EXPECT_EQ(used_blocks(), static_cast<uint64_t>(kThreads * kChunksPerThread));
  expect_allocator_ok();
}

TEST_P(ChunkEngineTest, ReadersNeverSeeAReleasedBlock) {
  // One writer keeps replacing a chunk while readers read it: every read returns one whole version.
  const ChunkId id{50, 0};
  std::vector<std::vector<std::byte>> versions;
  for (int v = 0; v < 20; ++v) versions.push_back(pattern_bytes(100000, static_cast<uint64_t>(v)));
  write_commit(id, 0, versions[0]);
  std::atomic<bool> done{false};
  std::atomic<int> bad{0};
  std::vector<std::thread> readers;
  for (int r = 0; r < 3; ++r) {
    readers.emplace_back([&] {
      while (!done.load()) {
        auto read = engine_->read(id, 0, UINT64_MAX, ReadMode::kRelaxed);
        if (!read.is_ok()) {
          ++bad;
          continue;
        }
        bool matches = false;
        for (const auto& version : versions) matches = matches || read->data == version;
        if (!matches) ++bad;
      }
    });
  }
  for (uint32_t v = 2; v <= 20; ++v) {
    ChunkUpdate update{id, v, 1, 0, versions[v - 1], true};
    ASSERT_TRUE(engine_->put_pending(update).is_ok());
    ASSERT_TRUE(engine_->commit(id, v).is_ok());
  }
  done = true;
  for (auto& reader : readers) reader.join();
  EXPECT_EQ(bad.load(), 0);
  EXPECT_EQ(engine_->stats().corruptions, 0u);
}

INSTANTIATE_TEST_SUITE_P(IoModes, ChunkEngineTest,
                         ::testing::Values(IoMode{"direct_uring", true, true, "/tmp"},
                                           IoMode{"buffered_uring", false, true, "/tmp"},
                                           IoMode{"direct_pread", true, false, "/tmp"},
                                           IoMode{"tmpfs", true, true, "/dev/shm"},
                                           IoMode{"direct_uring_group_sync", true, true, "/tmp", 60'000}),
                         [](const ::testing::TestParamInfo<IoMode>& info) { return std::string(info.param.name); });

// Group sync (ChunkEngineOptions::group_sync_ms): no sync on a write's path; the engine's thread makes everything
// durable every interval and only then frees the blocks that writes stopped referencing.
TEST(GroupSyncTest, WritesSyncNothingAndTheThreadMakesThemDurable) {
  TempDir dir;
  ChunkEngineOptions options = small_options(dir.path());
  options.group_sync_ms = 20;
  auto opened = ChunkEngine::open(options);
  ASSERT_TRUE(opened.is_ok()) << opened.status();
  ChunkEngine& engine = **opened;
  std::vector<std::vector<std::byte>> contents;
  for (uint64_t i = 0; i < 4; ++i) {
    contents.push_back(pattern_bytes(200000 + i, i));
    ASSERT_TRUE(engine.put_pending(ChunkUpdate{ChunkId{40, i}, 1, 1, 0, contents.back(), false}).is_ok());
    ASSERT_TRUE(engine.commit(ChunkId{40, i}, 1).is_ok());
  }
  // A copy-on-write overwrite: its old block is freed by the thread's next sync.
  const auto overwrite = pattern_bytes(150000, 9);
  ASSERT_TRUE(engine.put_pending(ChunkUpdate{ChunkId{40, 0}, 2, 1, 0, overwrite, false}).is_ok());
  ASSERT_TRUE(engine.commit(ChunkId{40, 0}, 2).is_ok());
  std::memcpy(contents[0].data(), overwrite.data(), overwrite.size());
  const ChunkEngineStats written = engine.stats();
  EXPECT_EQ(written.synced_batches, 0u);
  EXPECT_EQ(written.dsync_data_writes, 0u);
  EXPECT_GE(written.unsynced_batches, 10u);
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(10);
  while (testing::total_used_blocks(engine.stats()) != 4 && std::chrono::steady_clock::now() < deadline) {
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
  }
  const ChunkEngineStats synced = engine.stats();
  EXPECT_EQ(testing::total_used_blocks(synced), 4u) << "the thread did not free the overwritten block within 10 s";
  EXPECT_GE(synced.wal_syncs, 1u);
  EXPECT_GE(synced.data_fdatasyncs, 1u);
  EXPECT_EQ(synced.synced_batches, 0u);
  for (uint64_t i = 0; i < 4; ++i) {
    auto read = engine.read(ChunkId{40, i}, 0, UINT64_MAX, ReadMode::kStrict);
    ASSERT_TRUE(read.is_ok()) << read.status();
    EXPECT_EQ(read->data, contents[i]) << "chunk " << i;
  }
  EXPECT_TRUE(engine.check_allocator().is_ok());
}

TEST(GroupSyncTest, ABlockIsReusedOnlyAfterTheSyncThatCoversItsRelease) {
  TempDir dir;
  ChunkEngineOptions options = small_options(dir.path());
  options.group_sync_ms = 60'000;  // only sync() syncs within the test
  auto opened = ChunkEngine::open(options);
  ASSERT_TRUE(opened.is_ok()) << opened.status();
  ChunkEngine& engine = **opened;
  auto block_offset = [&](const ChunkId& id) -> uint64_t {
    auto located = engine.locate(id, 0, 4096, ReadMode::kStrict);
    EXPECT_TRUE(located.is_ok() && located->extent.has_value()) << located.status();
    return located.is_ok() && located->extent ? located->extent->file_offset : UINT64_MAX;
  };
  const ChunkId a{41, 0};
  ASSERT_TRUE(engine.put_full_replacement(a, 1, 1, pattern_bytes(300000, 1)).is_ok());
  const uint64_t first_block = block_offset(a);
  ASSERT_TRUE(engine.put_full_replacement(a, 2, 1, pattern_bytes(300000, 2)).is_ok());
  EXPECT_NE(block_offset(a), first_block);
  // Version 1's block is unreferenced, but the batch that says so may not be durable: a crash could bring
  // version 1 back, so a new chunk must not get its block yet.
  const ChunkId b{41, 1};
  ASSERT_TRUE(engine.put_full_replacement(b, 1, 1, pattern_bytes(300000, 3)).is_ok());
  EXPECT_NE(block_offset(b), first_block);
  EXPECT_EQ(testing::total_used_blocks(engine.stats()), 3u);
  ASSERT_TRUE(engine.sync().is_ok());
  EXPECT_EQ(testing::total_used_blocks(engine.stats()), 2u);
  // Free now: the lowest free block is handed out first, which is version 1's.
  const ChunkId c{41, 2};
  ASSERT_TRUE(engine.put_full_replacement(c, 1, 1, pattern_bytes(300000, 4)).is_ok());
  EXPECT_EQ(block_offset(c), first_block);
  EXPECT_EQ(engine.read(a, 0, UINT64_MAX, ReadMode::kStrict)->data, pattern_bytes(300000, 2));
  EXPECT_EQ(engine.read(b, 0, UINT64_MAX, ReadMode::kStrict)->data, pattern_bytes(300000, 3));
  EXPECT_EQ(engine.read(c, 0, UINT64_MAX, ReadMode::kStrict)->data, pattern_bytes(300000, 4));
  EXPECT_TRUE(engine.check_allocator().is_ok());
}

// A group sync that fails (here the fault hook at before_group_sync; on a machine, fdatasync or the WAL sync) means
// the changes acknowledged since the last good sync may not be durable: the target then refuses every change,
// naming the failure, and keeps serving reads; opened again, it takes changes.
TEST(GroupSyncTest, AFailedSyncStopsChangesUntilReopened) {
  TempDir dir;
  ChunkEngineOptions options = small_options(dir.path());
  options.group_sync_ms = 60'000;
  std::atomic<bool> fail{false};
  options.fault_hook = [&](ChunkFaultPoint point, const ChunkId&) -> Status {
    if (point == ChunkFaultPoint::kBeforeGroupSync && fail.load()) return io_error("injected: device flush failed");
    return Status::ok();
  };
  const ChunkId id{42, 0};
  const auto v1 = pattern_bytes(100000, 1);
  {
    auto opened = ChunkEngine::open(options);
    ASSERT_TRUE(opened.is_ok()) << opened.status();
    ChunkEngine& engine = **opened;
    ASSERT_TRUE(engine.put_full_replacement(id, 1, 1, v1).is_ok());
    fail = true;
    const Status sync = engine.sync();
    EXPECT_EQ(sync.code(), StatusCode::kIoError) << sync;
    const Status refused = engine.put_pending(ChunkUpdate{id, 2, 1, 0, pattern_bytes(5000, 2), false});
    EXPECT_EQ(refused.code(), StatusCode::kIoError) << refused;
    EXPECT_NE(refused.message().find("a group sync failed"), std::string::npos) << refused;
    EXPECT_NE(refused.message().find("injected: device flush failed"), std::string::npos) << refused;
    EXPECT_EQ(engine.commit(id, 1).code(), StatusCode::kIoError);
    EXPECT_EQ(engine.put_full_replacement(id, 2, 1, v1).code(), StatusCode::kIoError);
    EXPECT_EQ(engine.remove_range(ChunkId{42, 0}, ChunkId{43, 0}).status().code(), StatusCode::kIoError);
    auto read = engine.read(id, 0, UINT64_MAX, ReadMode::kStrict);
    ASSERT_TRUE(read.is_ok()) << read.status();
    EXPECT_EQ(read->data, v1);
    fail = false;
  }
  auto reopened = ChunkEngine::open(options);
  ASSERT_TRUE(reopened.is_ok()) << reopened.status();
  EXPECT_EQ((*reopened)->read(id, 0, UINT64_MAX, ReadMode::kStrict)->data, v1);
  ASSERT_TRUE((*reopened)->put_full_replacement(id, 2, 1, pattern_bytes(3000, 3)).is_ok());
  EXPECT_TRUE((*reopened)->check_allocator().is_ok());
}

TEST(ChunkEngineOptions, BadOptionsAreRefused) {
  TempDir dir;
  ChunkEngineOptions options = testing::small_options(dir.path());
  options.min_block_bytes = 1000;
  EXPECT_EQ(ChunkEngine::open(options).status().code(), StatusCode::kInvalidArgument);
  options = testing::small_options(dir.path());
  options.crc_segment_bytes = 3 * 4096;
  EXPECT_EQ(ChunkEngine::open(options).status().code(), StatusCode::kInvalidArgument);
  options = testing::small_options(dir.path());
  options.merge_patch_bytes = 5000;
  EXPECT_EQ(ChunkEngine::open(options).status().code(), StatusCode::kInvalidArgument);
  options = testing::small_options(dir.path());
  options.io_contexts = 0;
  EXPECT_EQ(ChunkEngine::open(options).status().code(), StatusCode::kInvalidArgument);
  options = testing::small_options(dir.path());
  options.group_sync_ms = 60'001;
  const Status group = ChunkEngine::open(options).status();
  EXPECT_EQ(group.code(), StatusCode::kInvalidArgument);
  EXPECT_NE(group.message().find("group_sync_ms=60001"), std::string::npos) << group;
  options = testing::small_options("");
  EXPECT_EQ(ChunkEngine::open(options).status().code(), StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace ff::fs
