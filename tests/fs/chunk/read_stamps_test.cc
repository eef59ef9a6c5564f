// Read stamps (include/ff/fs/read_stamps.h): the counters a target shares with local readers, what a reader's view
// makes of them (quiet, changed, the lease), a run killed in the middle of a change, and the chunk engine counting
// every change of a chunk in its slot.
#include "ff/fs/read_stamps.h"

#include <gtest/gtest.h>

#include <fstream>

#include "ff/fs/chunk_engine.h"
#include "test_util.h"

namespace ff::fs {
namespace {

using testing::TempDir;

constexpr int64_t kSecond = 1'000'000'000;

// Two chunks in different slots of a file of kReadStampSlots slots.
std::pair<ChunkId, ChunkId> chunks_in_two_slots() {
  const ChunkId first{7, 0};
  for (uint64_t index = 1;; ++index) {
    const ChunkId other{7, index};
    if (read_stamp_slot(other, kReadStampSlots) != read_stamp_slot(first, kReadStampSlots)) return {first, other};
  }
}

TEST(ReadStampsTest, AReaderSeesEveryChangeOfItsSlotAndOfTheTarget) {
  TempDir dir;
  const std::string path = dir.path() + "/read_stamps";
  auto stamps = ReadStamps::open(path);
  ASSERT_TRUE(stamps.is_ok()) << stamps.status();
  auto view = ReadStampsView::map(path);
  ASSERT_TRUE(view.is_ok()) << view.status();
  const auto [chunk, other] = chunks_in_two_slots();
  const uint32_t slot = read_stamp_slot(chunk, kReadStampSlots);
  const int64_t now = monotonic_now_ns();

  // Opening is a change of the whole target in progress, and there is no lease yet.
  (*stamps)->set_lease(now + 10 * kSecond);
  EXPECT_FALSE((*view)->stamp(chunk, now).has_value());
  (*stamps)->end_all();
  (*stamps)->set_lease(0);
  EXPECT_FALSE((*view)->stamp(chunk, now).has_value()) << "no lease";
  (*stamps)->set_lease(now + 10 * kSecond);
  auto first = (*view)->stamp(chunk, now);
  ASSERT_TRUE(first.has_value());
  EXPECT_TRUE((*view)->unchanged(chunk, *first, now));
  EXPECT_FALSE((*view)->stamp(chunk, now + 10 * kSecond).has_value()) << "the lease ran out";
  EXPECT_FALSE((*view)->unchanged(chunk, *first, now + 10 * kSecond));

  // A change of the slot in progress: no stamp; once it ended, another stamp; the old one no longer holds.
  (*stamps)->begin(slot);
  EXPECT_FALSE((*view)->stamp(chunk, now).has_value());
  EXPECT_FALSE((*view)->unchanged(chunk, *first, now));
  auto other_during = (*view)->stamp(other, now);
  EXPECT_TRUE(other_during.has_value()) << "another slot is not affected";
  (*stamps)->end(slot);
  auto second = (*view)->stamp(chunk, now);
  ASSERT_TRUE(second.has_value());
  EXPECT_NE(*second, *first);
  EXPECT_FALSE((*view)->unchanged(chunk, *first, now));
  EXPECT_TRUE((*view)->unchanged(other, *other_during, now));

  // A change of the whole target reaches every slot.
  (*stamps)->bump_all();
  EXPECT_FALSE((*view)->unchanged(chunk, *second, now));
  EXPECT_FALSE((*view)->unchanged(other, *other_during, now));
  EXPECT_TRUE((*view)->stamp(other, now).has_value());
}

TEST(ReadStampsTest, ARunKilledInTheMiddleOfAChangeLeavesNothingStuckAndOldReadersSeeTheReopening) {
  TempDir dir;
  const std::string path = dir.path() + "/read_stamps";
  const ChunkId chunk{9, 3};
  const int64_t now = monotonic_now_ns();
  std::optional<ReadStampsView::Stamp> before;
  auto view = ReadStampsView::map(path);
  EXPECT_EQ(view.status().code(), StatusCode::kUnavailable) << view.status();
  {
    auto stamps = ReadStamps::open(path);
    ASSERT_TRUE(stamps.is_ok()) << stamps.status();
    (*stamps)->end_all();
    (*stamps)->set_lease(now + 10 * kSecond);
    view = ReadStampsView::map(path);
    ASSERT_TRUE(view.is_ok()) << view.status();
    before = (*view)->stamp(chunk, now);
    ASSERT_TRUE(before.has_value());
    // Killed here: a change begun and never ended (the destructor only withdraws the lease).
    (*stamps)->begin(read_stamp_slot(chunk, kReadStampSlots));
  }
  EXPECT_FALSE((*view)->stamp(chunk, now).has_value());
  auto reopened = ReadStamps::open(path);
  ASSERT_TRUE(reopened.is_ok()) << reopened.status();
  (*reopened)->set_lease(now + 10 * kSecond);
  EXPECT_FALSE((*view)->stamp(chunk, now).has_value()) << "the reopening is in progress";
  (*reopened)->end_all();
  auto after = (*view)->stamp(chunk, now);
  ASSERT_TRUE(after.has_value()) << "the killed run's change must not stay in progress";
  EXPECT_NE(*after, *before);
  EXPECT_FALSE((*view)->unchanged(chunk, *before, now));
}

TEST(ReadStampsTest, AFileThatIsNotAStampsFileIsRefused) {
  TempDir dir;
  const std::string path = dir.path() + "/not_stamps";
  std::ofstream(path) << std::string(8192, 'x');
  auto view = ReadStampsView::map(path);
  EXPECT_EQ(view.status().code(), StatusCode::kInvalidArgument) << view.status();
  EXPECT_NE(view.status().message().find(path), std::string::npos) << view.status();
  EXPECT_EQ(ReadStamps::open(dir.path() + "/read_stamps", 0).status().code(), StatusCode::kInvalidArgument);
}

class EngineStampsTest : public ::testing::Test {
 protected:
  // Patches settled at commit, not by the settler thread: its changes would land at any moment.
  ChunkEngineOptions options() const {
    ChunkEngineOptions options = testing::small_options(dir_.path());
    options.settle_patches_in_background = false;
    return options;
  }
  void SetUp() override {
    auto engine = ChunkEngine::open(options());
    ASSERT_TRUE(engine.is_ok()) << engine.status();
    engine_ = std::move(*engine);
    engine_->set_local_read_lease(monotonic_now_ns() + 600 * kSecond);
  }
  void write_commit(const ChunkId& id, uint32_t version, uint64_t offset, std::span<const std::byte> data) {
    ASSERT_TRUE(engine_->put_pending(ChunkUpdate{id, version, 1, offset, data, false}).is_ok());
    ASSERT_TRUE(engine_->commit(id, version).is_ok());
  }
  std::shared_ptr<ReadStampsView> view_of(const ChunkId& id) {
    auto located = engine_->locate(id, 0, UINT64_MAX, ReadMode::kStrict);
    EXPECT_TRUE(located.is_ok() && located->extent) << located.status();
    if (!located.is_ok() || !located->extent) return nullptr;
    EXPECT_EQ(located->extent->stamps, dir_.path() + "/read_stamps");
    auto view = ReadStampsView::map(located->extent->stamps);
    EXPECT_TRUE(view.is_ok()) << view.status();
    return view.is_ok() ? *view : nullptr;
  }
  ReadStampsView::Stamp stamp(const ReadStampsView& view, const ChunkId& id) {
    auto now = view.stamp(id, monotonic_now_ns());
    EXPECT_TRUE(now.has_value()) << "a change of chunk " << id.to_string() << " is still in progress";
    return now.value_or(ReadStampsView::Stamp{});
  }

  TempDir dir_;
  std::unique_ptr<ChunkEngine> engine_;
};

TEST_F(EngineStampsTest, EveryChangeOfAChunkIsCountedInItsSlotAndOnlyThere) {
  const auto [id, other] = chunks_in_two_slots();
  write_commit(id, 1, 0, testing::pattern_bytes(64 << 10, 1));
  write_commit(other, 1, 0, testing::pattern_bytes(8 << 10, 2));
  auto view = view_of(id);
  ASSERT_NE(view, nullptr);
  const ReadStampsView::Stamp of_other = stamp(*view, other);

  // Each kind of change: the stamp taken before no longer holds after it.
  auto expect_counted = [&](const char* what, const std::function<Status()>& change) {
    SCOPED_TRACE(what);
    const ReadStampsView::Stamp before = stamp(*view, id);
    ASSERT_TRUE(change().is_ok());
    EXPECT_FALSE(view->unchanged(id, before, monotonic_now_ns()));
    stamp(*view, id);  // and nothing is left in progress
  };
  const auto v2 = testing::pattern_bytes(100, 3);
  expect_counted("pending", [&] { return engine_->put_pending(ChunkUpdate{id, 2, 1, 10'000, v2, false}); });
  expect_counted("commit", [&] { return engine_->commit(id, 2); });
  const auto v3 = testing::pattern_bytes(64 << 10, 4);
  expect_counted("pending to abort", [&] { return engine_->put_pending(ChunkUpdate{id, 3, 1, 0, v3, false}); });
  expect_counted("abort", [&] { return engine_->abort_pending(id, 3); });
  expect_counted("lazy commit", [&] {
    FF_RETURN_IF_ERROR(engine_->put_pending(ChunkUpdate{id, 3, 1, 0, v3, false}));
    return engine_->commit_lazily(id, 3);
  });
  expect_counted("full replacement", [&] { return engine_->put_full_replacement(id, 4, 1, v3); });
  expect_counted("removal", [&] { return engine_->remove_range(id, ChunkId{id.inode, id.index + 1}).status(); });
  EXPECT_TRUE(view->unchanged(other, of_other, monotonic_now_ns())) << "a chunk of another slot";

  // A chain change of the target reaches every chunk; no lease, no stamp.
  engine_->local_reads_changed();
  EXPECT_FALSE(view->unchanged(other, of_other, monotonic_now_ns()));
  engine_->set_local_read_lease(0);
  EXPECT_FALSE(view->stamp(other, monotonic_now_ns()).has_value());
}

TEST_F(EngineStampsTest, ReopeningTheTargetIsAChangeOfEveryChunk) {
  const ChunkId id{12, 0};
  write_commit(id, 1, 0, testing::pattern_bytes(16 << 10, 5));
  auto view = view_of(id);
  ASSERT_NE(view, nullptr);
  const ReadStampsView::Stamp before = stamp(*view, id);
  engine_.reset();
  EXPECT_FALSE(view->stamp(id, monotonic_now_ns()).has_value()) << "a closed target holds no lease";
  auto engine = ChunkEngine::open(options());
  ASSERT_TRUE(engine.is_ok()) << engine.status();
  engine_ = std::move(*engine);
  engine_->set_local_read_lease(monotonic_now_ns() + 600 * kSecond);
  EXPECT_FALSE(view->unchanged(id, before, monotonic_now_ns()));
  EXPECT_NE(stamp(*view, id), before);
}

}  // namespace
}  // namespace ff::fs
