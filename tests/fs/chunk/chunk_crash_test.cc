// Crash safety with real processes: a child process opens the engine, starts an update and SIGKILLs
// itself at an injection point (after the data write before the metadata; after the pending batch;
// before and after the commit batch). The parent then reopens the target: the old version (or, once the
// commit batch is durable, the new one) reads back intact, the allocator agrees with the metadata (no
// leaked block, no block used twice), and the chunk accepts new updates.
#include <gtest/gtest.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstring>
#include <thread>
#include <tuple>

#include "ff/fs/chunk_engine.h"
#include "test_util.h"

namespace ff::fs {
namespace {

using testing::pattern_bytes;
using testing::TempDir;

// kPatch: a small overwrite inside the chunk, stored as a patch of the touched crc segments, inline in
// the metadata record; kPatchBlock: the same in a patch block (inline patches disabled).
enum class Update { kOverwrite, kAppend, kFullReplacement, kPatch, kPatchBlock };

struct CrashCase {
  const char* name;
  ChunkFaultPoint point;
  Update update;
  bool commit;         // the child commits after put_pending
  bool new_committed;  // after the crash, the new version is the committed one
};

// Waits up to 60 s for the child; kills it if it is still running (a hang is a failure, never a stuck test).
int wait_child(pid_t pid) {
  int status = 0;
  for (int i = 0; i < 6000; ++i) {
    const pid_t done = ::waitpid(pid, &status, WNOHANG);
    if (done == pid) return status;
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  ::kill(pid, SIGKILL);
  ::waitpid(pid, &status, 0);
  ADD_FAILURE() << "child " << pid << " did not finish within 60 s";
  return status;
}

// The second parameter: group sync on (ChunkEngineOptions::group_sync_ms; no sync on a write's path): a process
// crash must lose nothing it would lose without.
class ChunkCrashTest : public ::testing::TestWithParam<std::tuple<CrashCase, bool>> {};

TEST_P(ChunkCrashTest, OldVersionSurvivesKill) {
  const CrashCase& crash = std::get<0>(GetParam());
  TempDir dir;
  ChunkEngineOptions options = testing::small_options(dir.path());
  if (std::get<1>(GetParam())) options.group_sync_ms = 60'000;  // nothing syncs before the kill
  if (crash.update == Update::kPatchBlock) options.inline_patch_bytes = 0;
  const bool patch = crash.update == Update::kPatch || crash.update == Update::kPatchBlock;
  const ChunkId id{0x2a, 17};
  const ChunkId other{0x2a, 18};
  const auto v1 = pattern_bytes(70001, 1);  // 128 KiB class: room for an in-place append
  const auto v2_data = crash.update == Update::kAppend ? pattern_bytes(20000, 2)
                       : patch                         ? pattern_bytes(5000, 2)
                                                       : pattern_bytes(150000, 2);
  const uint64_t v2_offset = crash.update == Update::kAppend ? v1.size() : patch ? 10000 : 1000;
  uint64_t free_before = 0;
  {
    auto engine = ChunkEngine::open(options);
    ASSERT_TRUE(engine.is_ok()) << engine.status();
    ASSERT_TRUE((*engine)->put_full_replacement(id, 1, 1, v1).is_ok());
    ASSERT_TRUE((*engine)->put_full_replacement(other, 1, 1, pattern_bytes(5000, 3)).is_ok());
    free_before = testing::total_free_blocks((*engine)->stats());
  }
  std::fflush(nullptr);
  const pid_t pid = ::fork();
  ASSERT_GE(pid, 0);
  if (pid == 0) {
    // Child: no gtest assertions here; any unexpected path exits with a distinct code.
    ChunkEngineOptions child_options = options;
    child_options.fault_hook = [&](ChunkFaultPoint point, const ChunkId& chunk) -> Status {
      if (point == crash.point && chunk == id) ::raise(SIGKILL);
      return Status::ok();
    };
    auto engine = ChunkEngine::open(child_options);
    if (!engine.is_ok()) ::_exit(10);
    Status status;
    if (crash.update == Update::kFullReplacement) {
      status = (*engine)->put_full_replacement(id, 2, 2, v2_data);
    } else {
      ChunkUpdate update{id, 2, 2, v2_offset, v2_data, false};
      status = (*engine)->put_pending(update);
      if (status.is_ok() && crash.commit) status = (*engine)->commit(id, 2);
      // A committed patch is applied in place by the engine's settler thread, or by the first read
      // that finds it (this one, if the settler has not got there yet): either reaches after_patch_apply.
      if (status.is_ok() && crash.commit) status = (*engine)->read(id, 0, 1, ReadMode::kRelaxed).status();
    }
    ::_exit(status.is_ok() ? 20 : 21);  // reaching here means the injection point was never hit
  }
  const int status = wait_child(pid);
  ASSERT_TRUE(WIFSIGNALED(status) && WTERMSIG(status) == SIGKILL)
      << "child exited instead of being killed at " << chunk_fault_point_name(crash.point) << ", status " << status;

  auto engine = ChunkEngine::open(options);
  ASSERT_TRUE(engine.is_ok()) << engine.status();
  ChunkEngine& reopened = **engine;
  const Status allocator = reopened.check_allocator();
  ASSERT_TRUE(allocator.is_ok()) << allocator;
  auto meta = reopened.stat(id);
  ASSERT_TRUE(meta.is_ok()) << meta.status();
  std::vector<std::byte> v2;
  if (crash.update == Update::kFullReplacement) {
    v2 = v2_data;
  } else {
    v2 = v1;
    if (v2.size() < v2_offset + v2_data.size()) v2.resize(v2_offset + v2_data.size());
    std::memcpy(v2.data() + v2_offset, v2_data.data(), v2_data.size());
  }
  auto read = reopened.read(id, 0, UINT64_MAX, ReadMode::kRelaxed);
  ASSERT_TRUE(read.is_ok()) << read.status();
  if (crash.new_committed) {
    EXPECT_EQ(meta->committed_version, 2u);
    EXPECT_EQ(read->data, v2);
  } else {
    EXPECT_EQ(meta->committed_version, 1u);
    EXPECT_EQ(read->data, v1) << "the old version must survive a crash at " << chunk_fault_point_name(crash.point);
  }
  auto other_read = reopened.read(other, 0, UINT64_MAX, ReadMode::kStrict);
  ASSERT_TRUE(other_read.is_ok());
  EXPECT_EQ(other_read->data, pattern_bytes(5000, 3));
  // No leak: blocks in use are exactly those of the versions that metadata references.
  const uint64_t used_now = testing::total_used_blocks(reopened.stats());
  const bool pending_separate =
      meta->pending_version != 0 && crash.update != Update::kAppend && crash.update != Update::kPatch;
  EXPECT_EQ(used_now, 2u + (pending_separate ? 1u : 0u));
  if (!pending_separate && !crash.new_committed) {
    EXPECT_EQ(testing::total_free_blocks(reopened.stats()), free_before);
  }
  // The chunk moves on: finish or abort the pending version, then write and commit a new one.
  if (meta->pending_version == 2) {
    ASSERT_TRUE(reopened.commit(id, 2).is_ok());
  }
  const uint32_t next = reopened.stat(id)->committed_version + 1;
  const auto v3 = pattern_bytes(90000, 9);
  ChunkUpdate update{id, next, 3, 0, v3, true};
  ASSERT_TRUE(reopened.put_pending(update).is_ok());
  ASSERT_TRUE(reopened.commit(id, next).is_ok());
  EXPECT_EQ(reopened.read(id, 0, UINT64_MAX, ReadMode::kStrict)->data, v3);
  EXPECT_TRUE(reopened.check_allocator().is_ok());
}

// A merged patch (docs/fs-chunk-engine.md, "Merged patches"): version 2, an inline patch, is committed and
// not applied (the child's settler waits); version 3, a small overwrite right after it, is stored as one
// patch of both. Killed at version 3's pending batch or before its commit batch, the target reopens with
// version 2 committed (open() applies its patch) and version 3 pending; killed after the commit batch, with
// version 3 committed. Either way the block was never written for version 3 before its commit.
TEST(ChunkCrashMergedPatchTest, CommittedVersionSurvivesKill) {
  for (ChunkFaultPoint point :
       {ChunkFaultPoint::kAfterPendingBatch, ChunkFaultPoint::kBeforeCommitBatch, ChunkFaultPoint::kAfterCommitBatch}) {
    SCOPED_TRACE(chunk_fault_point_name(point));
    TempDir dir;
    ChunkEngineOptions options = testing::small_options(dir.path());
    options.settle_delay_us = 60'000'000;
    const ChunkId id{0x2b, 3};
    const auto v1 = pattern_bytes(70001, 1);
    const auto v2_data = pattern_bytes(4096, 2);
    const auto v3_data = pattern_bytes(5000, 3);
    {
      auto engine = ChunkEngine::open(options);
      ASSERT_TRUE(engine.is_ok()) << engine.status();
      ASSERT_TRUE((*engine)->put_full_replacement(id, 1, 1, v1).is_ok());
    }
    std::fflush(nullptr);
    const pid_t pid = ::fork();
    ASSERT_GE(pid, 0);
    if (pid == 0) {
      ChunkEngine* child_engine = nullptr;
      bool armed = false;  // version 3 only
      ChunkEngineOptions child_options = options;
      child_options.fault_hook = [&](ChunkFaultPoint at, const ChunkId& chunk) -> Status {
        if (!armed || at != point || chunk != id) return Status::ok();
        // Exit codes instead of assertions in the child: 22 means version 3 was not stored as a merge.
        if (child_engine->stats().merged_patches != 1) ::_exit(22);
        ::raise(SIGKILL);
        return Status::ok();
      };
      auto engine = ChunkEngine::open(child_options);
      if (!engine.is_ok()) ::_exit(10);
      child_engine = engine->get();
      Status status = (*engine)->put_pending(ChunkUpdate{id, 2, 1, 16384, v2_data, false});
      if (status.is_ok()) status = (*engine)->commit(id, 2);
      armed = true;
      if (status.is_ok()) status = (*engine)->put_pending(ChunkUpdate{id, 3, 1, 20480, v3_data, false});
      if (status.is_ok()) status = (*engine)->commit(id, 3);
      ::_exit(status.is_ok() ? 20 : 21);
    }
    const int status = wait_child(pid);
    ASSERT_TRUE(WIFSIGNALED(status) && WTERMSIG(status) == SIGKILL) << "child status " << status;

    std::vector<std::byte> v2 = v1;
    std::memcpy(v2.data() + 16384, v2_data.data(), v2_data.size());
    std::vector<std::byte> v3 = v2;
    std::memcpy(v3.data() + 20480, v3_data.data(), v3_data.size());
    auto engine = ChunkEngine::open(options);
    ASSERT_TRUE(engine.is_ok()) << engine.status();
    ChunkEngine& reopened = **engine;
    ASSERT_TRUE(reopened.check_allocator().is_ok());
    auto meta = reopened.stat(id);
    ASSERT_TRUE(meta.is_ok()) << meta.status();
    const bool committed = point == ChunkFaultPoint::kAfterCommitBatch;
    EXPECT_EQ(meta->committed_version, committed ? 3u : 2u);
    EXPECT_EQ(reopened.read(id, 0, UINT64_MAX, ReadMode::kRelaxed)->data, committed ? v3 : v2);
    if (!committed) {
      // Version 3's merged patch is still pending and commits to the right bytes.
      EXPECT_EQ(meta->pending_version, 3u);
      ASSERT_TRUE(reopened.commit(id, 3).is_ok());
      EXPECT_EQ(reopened.read(id, 0, UINT64_MAX, ReadMode::kStrict)->data, v3);
    }
    EXPECT_EQ(testing::total_used_blocks(reopened.stats()), 1u);
    EXPECT_TRUE(reopened.check_allocator().is_ok());
  }
}

INSTANTIATE_TEST_SUITE_P(
    KillPoints, ChunkCrashTest,
    ::testing::Combine(
        ::testing::Values(
            CrashCase{"overwrite_after_data_write", ChunkFaultPoint::kAfterDataWrite, Update::kOverwrite, false, false},
            CrashCase{"append_after_data_write", ChunkFaultPoint::kAfterDataWrite, Update::kAppend, false, false},
            CrashCase{"overwrite_after_pending_batch", ChunkFaultPoint::kAfterPendingBatch, Update::kOverwrite, false,
                      false},
            CrashCase{"append_after_pending_batch", ChunkFaultPoint::kAfterPendingBatch, Update::kAppend, false, false},
            CrashCase{"overwrite_before_commit_batch", ChunkFaultPoint::kBeforeCommitBatch, Update::kOverwrite, true,
                      false},
            CrashCase{"append_before_commit_batch", ChunkFaultPoint::kBeforeCommitBatch, Update::kAppend, true, false},
            CrashCase{"overwrite_after_commit_batch", ChunkFaultPoint::kAfterCommitBatch, Update::kOverwrite, true,
                      true},
            CrashCase{"append_after_commit_batch", ChunkFaultPoint::kAfterCommitBatch, Update::kAppend, true, true},
            CrashCase{"replacement_after_data_write", ChunkFaultPoint::kAfterDataWrite, Update::kFullReplacement, false,
                      false},
            CrashCase{"replacement_after_commit_batch", ChunkFaultPoint::kAfterCommitBatch, Update::kFullReplacement,
                      false, true},
            CrashCase{"patch_after_data_write", ChunkFaultPoint::kAfterDataWrite, Update::kPatch, false, false},
            CrashCase{"patch_after_pending_batch", ChunkFaultPoint::kAfterPendingBatch, Update::kPatch, false, false},
            CrashCase{"patch_before_commit_batch", ChunkFaultPoint::kBeforeCommitBatch, Update::kPatch, true, false},
            CrashCase{"patch_after_commit_batch", ChunkFaultPoint::kAfterCommitBatch, Update::kPatch, true, true},
            CrashCase{"patch_after_patch_apply", ChunkFaultPoint::kAfterPatchApply, Update::kPatch, true, true},
            CrashCase{"patchblock_after_data_write", ChunkFaultPoint::kAfterDataWrite, Update::kPatchBlock, false,
                      false},
            CrashCase{"patchblock_after_pending_batch", ChunkFaultPoint::kAfterPendingBatch, Update::kPatchBlock, false,
                      false},
            CrashCase{"patchblock_after_commit_batch", ChunkFaultPoint::kAfterCommitBatch, Update::kPatchBlock, true,
                      true},
            CrashCase{"patchblock_after_patch_apply", ChunkFaultPoint::kAfterPatchApply, Update::kPatchBlock, true,
                      true}),
        ::testing::Bool()),
    [](const ::testing::TestParamInfo<std::tuple<CrashCase, bool>>& info) {
      return std::string(std::get<0>(info.param).name) + (std::get<1>(info.param) ? "_group_sync" : "");
    });

}  // namespace
}  // namespace ff::fs
