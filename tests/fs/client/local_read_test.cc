// Local reads (include/ff/fs/local_read.h): ChunkEngine::locate and read_local_extent on one engine;
// a StorageClient and a FileClient over ChunkEngine targets on this host (served from the files,
// bytes equal to what was written, a corrupted replica read over RPC and repaired).
#include <fcntl.h>
#include <gtest/gtest.h>
#include <sys/stat.h>
#include <unistd.h>

#include <array>
#include <atomic>
#include <chrono>
#include <cstring>
#include <future>
#include <random>
#include <thread>

#include "../chunk/test_util.h"
#include "ff/fs/local_read.h"
#include "ff/fs/read_stamps.h"
#include "fs/testing/cluster_fixture.h"

namespace ff::fs {
namespace {

using testing::scribble;
using testing::TempDir;

std::vector<std::byte> to_vector(const SharedBytes& bytes) { return bytes.to_vector(); }

class LocateTest : public ::testing::Test {
 protected:
  void SetUp() override {
    auto engine = ChunkEngine::open(testing::small_options(dir_.path()));
    ASSERT_TRUE(engine.is_ok()) << engine.status();
    engine_ = std::move(*engine);
  }
  void write_commit(const ChunkId& id, uint32_t version, uint64_t offset, std::span<const std::byte> data) {
    ChunkUpdate update{id, version, 1, offset, data, false};
    ASSERT_TRUE(engine_->put_pending(update).is_ok());
    ASSERT_TRUE(engine_->commit(id, version).is_ok());
  }
  // What the engine reads for the range and what a local read of its location gives.
  void expect_local_matches(const ChunkId& id, uint64_t offset, uint64_t length) {
    SCOPED_TRACE(fmt::format("[{}, +{})", offset, length));
    auto read = engine_->read(id, offset, length, ReadMode::kStrict);
    ASSERT_TRUE(read.is_ok()) << read.status();
    auto located = engine_->locate(id, offset, length, ReadMode::kStrict);
    ASSERT_TRUE(located.is_ok()) << located.status();
    EXPECT_EQ(located->meta.committed_version, read->meta.committed_version);
    EXPECT_FALSE(located->dirty);
    if (read->data.empty()) {
      EXPECT_FALSE(located->extent.has_value());
      return;
    }
    ASSERT_TRUE(located->extent.has_value());
    EXPECT_EQ(located->extent->count, read->data.size());
    auto local = read_local_extent(*located->extent);
    ASSERT_TRUE(local.is_ok()) << local.status();
    EXPECT_EQ(to_vector(*local), read->data);
  }

  // AQueueOfLocalReadsGivesWhatSingleReadsGive's body, with the queue's ring or with pread.
  void expect_queue_reads(bool ring);

  TempDir dir_;
  std::unique_ptr<ChunkEngine> engine_;
};

TEST_F(LocateTest, LocalReadsOfAnyRangeMatchTheEngine) {
  const ChunkId id{3, 0};
  const auto data = testing::pattern_bytes(200'000, 1);  // not a multiple of the 4 KiB crc segment
  write_commit(id, 1, 0, data);
  expect_local_matches(id, 0, UINT64_MAX);
  expect_local_matches(id, 0, 4096);
  expect_local_matches(id, 5000, 70'000);
  expect_local_matches(id, 196'608 + 100, 10'000);  // clipped at the chunk's end, inside its last segment
  expect_local_matches(id, 199'999, 1);
  expect_local_matches(id, 200'000, 10);  // at the end: nothing to read
  EXPECT_EQ(engine_->stats().locates, 6u);
  auto extent = engine_->locate(id, 5000, 70'000, ReadMode::kStrict)->extent;
  ASSERT_TRUE(extent.has_value());
  EXPECT_EQ(extent->position, 4096u);
  EXPECT_EQ(extent->skip, 5000u - 4096u);
  EXPECT_EQ(extent->segment_crcs.size(), extent->verify_bytes / 4096 + (extent->verify_bytes % 4096 != 0));
  EXPECT_TRUE(std::filesystem::path(extent->path).is_absolute()) << extent->path;
}

TEST_F(LocateTest, DirtyAndMissingChunksAnswerAsReadsDo) {
  const ChunkId id{4, 1};
  EXPECT_EQ(fs_error_of(engine_->locate(id, 0, 10, ReadMode::kStrict).status()), FsError::kChunkNotFound);
  const auto v1 = testing::pattern_bytes(64 << 10, 2);
  write_commit(id, 1, 0, v1);
  const auto v2 = testing::pattern_bytes(64 << 10, 3);
  ASSERT_TRUE(engine_->put_pending(ChunkUpdate{id, 2, 1, 0, v2, false}).is_ok());
  auto strict = engine_->locate(id, 0, UINT64_MAX, ReadMode::kStrict);
  ASSERT_TRUE(strict.is_ok()) << strict.status();
  EXPECT_TRUE(strict->dirty);
  EXPECT_FALSE(strict->extent.has_value());
  // Relaxed: the committed version's bytes, while v2 is pending.
  auto relaxed = engine_->locate(id, 0, UINT64_MAX, ReadMode::kRelaxed);
  ASSERT_TRUE(relaxed.is_ok() && relaxed->extent) << relaxed.status();
  EXPECT_TRUE(relaxed->dirty);
  auto local = read_local_extent(*relaxed->extent);
  ASSERT_TRUE(local.is_ok()) << local.status();
  EXPECT_EQ(to_vector(*local), v1);
}

TEST_F(LocateTest, ChangedBytesUnderAnExtentAreRefused) {
  const ChunkId id{5, 0};
  const auto v1 = testing::pattern_bytes(128 << 10, 4);
  write_commit(id, 1, 0, v1);
  auto old_extent = engine_->locate(id, 0, UINT64_MAX, ReadMode::kStrict)->extent;
  ASSERT_TRUE(old_extent.has_value());
  ASSERT_TRUE(read_local_extent(*old_extent).is_ok());

  // A small overwrite is applied to the same block in place once committed (a read settles it): the
  // old extent now covers bytes of another version, which its CRCs refuse.
  const auto patch = testing::pattern_bytes(100, 5);
  write_commit(id, 2, 10'000, patch);
  auto v2 = engine_->read(id, 0, UINT64_MAX, ReadMode::kStrict);
  ASSERT_TRUE(v2.is_ok()) << v2.status();
  auto stale = read_local_extent(*old_extent);
  EXPECT_EQ(stale.status().code(), StatusCode::kDataLoss) << stale.status();
  auto fresh = engine_->locate(id, 0, UINT64_MAX, ReadMode::kStrict)->extent;
  ASSERT_TRUE(fresh.has_value());
  auto local = read_local_extent(*fresh);
  ASSERT_TRUE(local.is_ok()) << local.status();
  EXPECT_EQ(to_vector(*local), v2->data);

  // Corruption on disk: refused by the segment it hits, named in the error.
  scribble(fresh->path, fresh->file_offset + 70'000, 16);
  auto corrupt = read_local_extent(*fresh);
  EXPECT_EQ(corrupt.status().code(), StatusCode::kDataLoss);
  EXPECT_NE(corrupt.status().message().find("[69632, 73728)"), std::string::npos) << corrupt.status();
  // A read of other segments only does not see it.
  auto head = engine_->locate(id, 0, 8192, ReadMode::kStrict)->extent;
  ASSERT_TRUE(head.has_value());
  EXPECT_TRUE(read_local_extent(*head).is_ok());
}

TEST_F(LocateTest, LargeLocalReadsAreCheckedInEverySegment) {
  const ChunkId id{7, 0};
  const auto data = testing::pattern_bytes((3u << 20) / 2 + 1000, 7);  // 1.5 MiB and a ragged end
  write_commit(id, 1, 0, data);
  expect_local_matches(id, 0, UINT64_MAX);
  expect_local_matches(id, 0, 1 << 20);
  expect_local_matches(id, 300'000, 700'000);            // starts inside a segment
  expect_local_matches(id, (1u << 20) - 4096, 600'000);  // to the chunk's end
  // Straight into an aligned buffer.
  const LocalExtent whole = *engine_->locate(id, 0, UINT64_MAX, ReadMode::kStrict)->extent;
  std::vector<std::byte> storage(whole.verify_bytes + 2 * 4096);
  std::span<std::byte> into(storage.data() + (4096 - reinterpret_cast<uintptr_t>(storage.data()) % 4096) % 4096,
                            storage.size() - 4096);
  ASSERT_TRUE(reads_into(whole, into));
  auto bytes = read_local_bytes(whole, into);
  ASSERT_TRUE(bytes.is_ok()) << bytes.status();
  auto answer = bytes->answer(whole);
  ASSERT_TRUE(answer.is_ok()) << answer.status();
  EXPECT_EQ(answer->bytes.data(), into.data());
  EXPECT_EQ(to_vector(*answer), data);
  // A bad byte in the middle is refused by its segment; one in the last, short, segment too.
  for (uint64_t at : {uint64_t{800'000}, uint64_t{data.size() - 10}}) {
    SCOPED_TRACE(fmt::format("corrupt byte at {}", at));
    scribble(whole.path, whole.file_offset + at, 1);
    auto corrupt = read_local_extent(whole);
    EXPECT_EQ(corrupt.status().code(), StatusCode::kDataLoss) << corrupt.status();
    // The same when the bytes go to the caller's buffer (read on huge pages and copied there where offered).
    auto into_read = read_local_bytes(whole, into);
    ASSERT_TRUE(into_read.is_ok()) << into_read.status();
    EXPECT_EQ(into_read->answer(whole).status().code(), StatusCode::kDataLoss);
    const uint64_t segment_start = at / 4096 * 4096;
    EXPECT_NE(corrupt.status().message().find(fmt::format("[{}, ", segment_start)), std::string::npos)
        << corrupt.status();
    // Put the byte back: the next case sees only its own corruption.
    const int fd = ::open(whole.path.c_str(), O_WRONLY);
    ASSERT_GE(fd, 0);
    ASSERT_EQ(::pwrite(fd, &data[at], 1, static_cast<off_t>(whole.file_offset + at)), 1);
    ::close(fd);
    ASSERT_TRUE(read_local_extent(whole).is_ok());
  }
}

TEST_F(LocateTest, LocalReadsInPiecesGiveTheBytesAndCrcsOfOneRead) {
  const ChunkId id{8, 0};
  const auto data = testing::pattern_bytes((3u << 20) / 2 + 1000, 8);  // 1.5 MiB and a ragged end
  write_commit(id, 1, 0, data);
  const LocalExtent whole = *engine_->locate(id, 0, UINT64_MAX, ReadMode::kStrict)->extent;
  const LocalExtent inner = *engine_->locate(id, 300'000, 700'000, ReadMode::kStrict)->extent;
  std::vector<std::byte> storage(whole.verify_bytes + 2 * 4096);
  std::span<std::byte> into(storage.data() + (4096 - reinterpret_cast<uintptr_t>(storage.data()) % 4096) % 4096,
                            storage.size() - 4096);
  auto one_read = read_local_bytes(whole, /*piece_bytes=*/0);
  ASSERT_TRUE(one_read.is_ok()) << one_read.status();
  const std::vector<std::byte> inner_data(data.begin() + 300'000, data.begin() + 1'000'000);
  // No pieces, one segment, 64 KiB, a length rounded up to whole segments, the default, and longer than the read.
  for (uint64_t piece :
       {uint64_t{0}, uint64_t{4096}, uint64_t{64 << 10}, uint64_t{100'000}, kLocalReadPieceBytes, uint64_t{4 << 20}}) {
    SCOPED_TRACE(fmt::format("pieces of {} bytes", piece));
    auto bytes = read_local_bytes(whole, piece);
    ASSERT_TRUE(bytes.is_ok()) << bytes.status();
    EXPECT_EQ(bytes->crcs, one_read->crcs);
    auto answer = bytes->answer(whole);
    ASSERT_TRUE(answer.is_ok()) << answer.status();
    EXPECT_EQ(to_vector(*answer), data);
    auto part = read_local_extent(inner, piece);
    ASSERT_TRUE(part.is_ok()) << part.status();
    EXPECT_EQ(to_vector(*part), inner_data);
    // Into the caller's buffer (staged on huge pages and copied there piece by piece where the kernel offers them).
    std::fill(into.begin(), into.end(), std::byte{0});
    auto into_read = read_local_bytes(whole, into, piece);
    ASSERT_TRUE(into_read.is_ok()) << into_read.status();
    auto into_answer = into_read->answer(whole);
    ASSERT_TRUE(into_answer.is_ok()) << into_answer.status();
    EXPECT_EQ(into_answer->bytes.data(), into.data());
    EXPECT_EQ(to_vector(*into_answer), data);
    // A bad byte in the last piece is refused by its segment.
    const uint64_t at = data.size() - 5000;
    scribble(whole.path, whole.file_offset + at, 1);
    auto corrupt = read_local_extent(whole, piece);
    EXPECT_EQ(corrupt.status().code(), StatusCode::kDataLoss) << corrupt.status();
    EXPECT_NE(corrupt.status().message().find(fmt::format("[{}, ", at / 4096 * 4096)), std::string::npos)
        << corrupt.status();
    const int fd = ::open(whole.path.c_str(), O_WRONLY);
    ASSERT_GE(fd, 0);
    ASSERT_EQ(::pwrite(fd, &data[at], 1, static_cast<off_t>(whole.file_offset + at)), 1);
    ::close(fd);
  }
}

// A queue of local reads (LocalReadQueue): many extents in flight at once, each handed back with its tag and the same
// bytes and CRCs a single read gives, a full queue refusing more, bad extents refused at submission, a bad byte
// found by the answer's check; the same through pread where the ring is not used.
TEST_F(LocateTest, AQueueOfLocalReadsGivesWhatSingleReadsGive) {
  for (bool ring : {true, false}) {
    SCOPED_TRACE(ring ? "io_uring" : "pread");
    ASSERT_NO_FATAL_FAILURE(expect_queue_reads(ring));
  }
}

void LocateTest::expect_queue_reads(bool ring) {
  const uint64_t inode = ring ? 9 : 10;
  constexpr int kChunks = 6;
  std::vector<std::vector<std::byte>> data;
  std::vector<LocalExtent> extents;
  for (int i = 0; i < kChunks; ++i) {
    const ChunkId id{inode, static_cast<uint64_t>(i)};
    data.push_back(testing::pattern_bytes(100'000 + 5000 * i, 90 + i));
    write_commit(id, 1, 0, data.back());
    // Whole versions, and a ragged range inside each.
    extents.push_back(*engine_->locate(id, 0, UINT64_MAX, ReadMode::kStrict)->extent);
    extents.push_back(*engine_->locate(id, 7000 + i, 20'000, ReadMode::kStrict)->extent);
  }
  const auto expected = [&](size_t e) {
    const std::vector<std::byte>& bytes = data[e / 2];
    return e % 2 == 0 ? bytes
                      : std::vector<std::byte>(bytes.begin() + 7000 + static_cast<ptrdiff_t>(e / 2),
                                               bytes.begin() + 27'000 + static_cast<ptrdiff_t>(e / 2));
  };
  LocalReadQueue queue(4, 30000, ring);
  ASSERT_EQ(queue.depth(), 4u);
  EXPECT_EQ(queue.uses_io_uring(), ring);
  std::vector<LocalReadQueue::Done> done;
  std::vector<bool> seen(extents.size());
  const auto check = [&] {
    for (LocalReadQueue::Done& read : done) {
      ASSERT_LT(read.tag, extents.size());
      ASSERT_FALSE(seen[read.tag]) << "extent " << read.tag << " handed back twice";
      seen[read.tag] = true;
      ASSERT_TRUE(read.bytes.is_ok()) << read.bytes.status();
      auto single = read_local_bytes(extents[read.tag], /*piece_bytes=*/0);
      ASSERT_TRUE(single.is_ok()) << single.status();
      EXPECT_EQ(read.bytes->crcs, single->crcs) << "extent " << read.tag;
      auto answer = read.bytes->answer(extents[read.tag]);
      ASSERT_TRUE(answer.is_ok()) << answer.status();
      EXPECT_EQ(to_vector(*answer), expected(read.tag)) << "extent " << read.tag;
    }
    done.clear();
  };
  size_t next = 0;
  for (; next < 4; ++next) ASSERT_TRUE(queue.submit(extents[next], next).is_ok());
  EXPECT_EQ(queue.in_flight(), 4u);
  EXPECT_EQ(queue.submit(extents[next], next).code(), StatusCode::kResourceExhausted) << "a full queue took more";
  // One at a time: one read handed back per call, the rest stay for the next.
  queue.reap(1, done, 1);
  ASSERT_EQ(done.size(), 1u);
  EXPECT_EQ(queue.in_flight(), 3u);
  ASSERT_NO_FATAL_FAILURE(check());
  // Keep the queue full to the last extent, then take everything.
  while (next < extents.size()) {
    ASSERT_TRUE(queue.submit(extents[next], next).is_ok());
    ++next;
    if (queue.in_flight() == queue.depth()) queue.reap(1, done);
    ASSERT_NO_FATAL_FAILURE(check());
  }
  queue.reap(queue.in_flight(), done);
  ASSERT_NO_FATAL_FAILURE(check());
  EXPECT_EQ(queue.in_flight(), 0u);
  EXPECT_EQ(std::count(seen.begin(), seen.end(), true), static_cast<ptrdiff_t>(extents.size()));
  queue.reap(5, done);
  EXPECT_TRUE(done.empty()) << "an empty queue handed something back";

  // Refused at submission, nothing in flight after.
  LocalExtent few_crcs = extents[0];
  few_crcs.segment_crcs.pop_back();
  EXPECT_EQ(queue.submit(few_crcs, 0).code(), StatusCode::kInvalidArgument);
  LocalExtent missing = extents[0];
  missing.path = dir_.path() + "/no-such-file";
  EXPECT_EQ(queue.submit(missing, 0).code(), StatusCode::kUnavailable);
  EXPECT_EQ(queue.in_flight(), 0u);
  // A bad byte on disk: read, and refused by the answer's check of its segment.
  scribble(extents[2].path, extents[2].file_offset + 50'000, 1);
  ASSERT_TRUE(queue.submit(extents[2], 2).is_ok());
  queue.reap(1, done);
  ASSERT_EQ(done.size(), 1u);
  ASSERT_TRUE(done[0].bytes.is_ok()) << done[0].bytes.status();
  EXPECT_EQ(done[0].bytes->answer(extents[2]).status().code(), StatusCode::kDataLoss);
}

// A read that never completes (from a FIFO nobody writes to): the queue gives it up after its timeout with
// deadline_exceeded instead of waiting forever, and reads with pread from then on.
// A FIFO with a writer that never writes (and lets a reader open it at once): a local read of it never completes.
struct NeverReadyFile {
  TempDir dir;
  int writer = -1;
  LocalExtent extent;

  NeverReadyFile() {
    const std::string path = dir.path() + "/fifo";
    EXPECT_EQ(::mkfifo(path.c_str(), 0600), 0) << std::strerror(errno);
    writer = ::open(path.c_str(), O_RDWR);
    EXPECT_GE(writer, 0) << std::strerror(errno);
    struct stat info {};
    EXPECT_EQ(::stat(path.c_str(), &info), 0);
    extent = LocalExtent{.path = path,
                         .device = static_cast<uint64_t>(info.st_dev),
                         .inode = static_cast<uint64_t>(info.st_ino),
                         .file_offset = 0,
                         .position = 0,
                         .verify_bytes = 4096,
                         .skip = 0,
                         .count = 4096,
                         .segment_bytes = 4096,
                         .segment_crcs = {0}};
  }
  ~NeverReadyFile() { ::close(writer); }
};

TEST(LocalReadQueueTest, AReadThatNeverCompletesIsGivenUpAfterTheTimeout) {
  NeverReadyFile fifo;
  const LocalExtent& extent = fifo.extent;
  {
    LocalReadQueue queue(2, /*timeout_ms=*/300);
    if (!queue.uses_io_uring()) GTEST_SKIP() << "io_uring is refused here";
    ASSERT_TRUE(queue.submit(extent, 7).is_ok());
    std::vector<LocalReadQueue::Done> done;
    const auto start = std::chrono::steady_clock::now();
    queue.reap(1, done);
    const auto waited = std::chrono::steady_clock::now() - start;
    ASSERT_EQ(done.size(), 1u);
    EXPECT_EQ(done[0].tag, 7u);
    EXPECT_EQ(done[0].bytes.status().code(), StatusCode::kDeadlineExceeded) << done[0].bytes.status();
    EXPECT_GE(waited, std::chrono::milliseconds(250));
    EXPECT_LT(waited, std::chrono::seconds(10));
    EXPECT_EQ(queue.in_flight(), 0u);
    EXPECT_FALSE(queue.uses_io_uring()) << "the ring that timed out is still used";
  }
}

// A queue's ring belongs to the thread using it: reads another thread left in flight fail at once (not after the
// timeout, not hanging), and the queue goes on with pread.
TEST(LocalReadQueueTest, ReadsLeftInFlightByAnotherThreadFailAtOnce) {
  NeverReadyFile fifo;
  LocalReadQueue queue(2, /*timeout_ms=*/30000);
  if (!queue.uses_io_uring()) GTEST_SKIP() << "io_uring is refused here";
  std::vector<LocalReadQueue::Done> done;
  ASSERT_TRUE(queue.submit(fifo.extent, 3).is_ok());
  queue.reap(0, done);  // in the ring now
  EXPECT_TRUE(done.empty());
  ASSERT_EQ(queue.in_flight(), 1u);
  const auto start = std::chrono::steady_clock::now();
  std::thread([&] { queue.reap(1, done); }).join();
  EXPECT_LT(std::chrono::steady_clock::now() - start, std::chrono::seconds(5)) << "waited for a read it cannot reap";
  ASSERT_EQ(done.size(), 1u);
  EXPECT_EQ(done[0].tag, 3u);
  EXPECT_EQ(done[0].bytes.status().code(), StatusCode::kFailedPrecondition) << done[0].bytes.status();
  EXPECT_EQ(queue.in_flight(), 0u);
  EXPECT_FALSE(queue.uses_io_uring());
}

TEST_F(LocateTest, AQueueTakenOverByAnotherThreadWithNothingInFlightKeepsItsRing) {
  const ChunkId id{12, 0};
  const std::vector<std::byte> data = testing::pattern_bytes(40'000, 12);
  write_commit(id, 1, 0, data);
  const LocalExtent extent = *engine_->locate(id, 0, UINT64_MAX, ReadMode::kStrict)->extent;
  LocalReadQueue queue(4);
  if (!queue.uses_io_uring()) GTEST_SKIP() << "io_uring is refused here";
  const auto read_twice = [&] {
    std::vector<LocalReadQueue::Done> done;
    for (uint64_t tag : {1, 2}) ASSERT_TRUE(queue.submit(extent, tag).is_ok());
    queue.reap(2, done);
    ASSERT_EQ(done.size(), 2u);
    for (LocalReadQueue::Done& read : done) {
      ASSERT_TRUE(read.bytes.is_ok()) << read.bytes.status();
      auto answer = read.bytes->answer(extent);
      ASSERT_TRUE(answer.is_ok()) << answer.status();
      EXPECT_EQ(to_vector(*answer), data);
    }
  };
  ASSERT_NO_FATAL_FAILURE(read_twice());
  std::thread([&] { ASSERT_NO_FATAL_FAILURE(read_twice()); }).join();
  ASSERT_NO_FATAL_FAILURE(read_twice());
  EXPECT_TRUE(queue.uses_io_uring()) << "a queue handed over with nothing in flight lost its ring";
}

TEST_F(LocateTest, ExtentsThatDoNotAddUpOrNameAnotherFileAreRefused) {
  const ChunkId id{6, 0};
  write_commit(id, 1, 0, testing::pattern_bytes(64 << 10, 6));
  const LocalExtent good = *engine_->locate(id, 0, UINT64_MAX, ReadMode::kStrict)->extent;
  LocalExtent other_file = good;
  other_file.inode += 1;
  EXPECT_EQ(read_local_extent(other_file).status().code(), StatusCode::kUnavailable);
  LocalExtent missing = good;
  missing.path = dir_.path() + "/no-such-file";
  EXPECT_EQ(read_local_extent(missing).status().code(), StatusCode::kUnavailable);
  LocalExtent too_long = good;
  too_long.count = good.verify_bytes + 1;
  EXPECT_EQ(read_local_extent(too_long).status().code(), StatusCode::kInvalidArgument);
  LocalExtent few_crcs = good;
  few_crcs.segment_crcs.pop_back();
  EXPECT_EQ(read_local_extent(few_crcs).status().code(), StatusCode::kInvalidArgument);
  EXPECT_FALSE(this_host_id().empty());
}

// ---------------------------------------------------------------- over the cluster

// Runs fn(done) on the executor and waits (bounded) for done's result.
template <typename T>
Result<T> on_executor(Executor& executor, std::function<void(std::function<void(Result<T>)>)> fn) {
  auto promise = std::make_shared<std::promise<Result<T>>>();
  auto future = promise->get_future();
  executor.post([fn, promise] { fn([promise](Result<T> result) { promise->set_value(std::move(result)); }); });
  if (future.wait_for(std::chrono::seconds(30)) != std::future_status::ready)
    return deadline_exceeded("no answer in 30 s");
  return future.get();
}

// A read answer's bytes, whether they came in pieces or as a payload.
std::vector<std::byte> bytes_of(const ReadRsp& rsp) {
  if (!rsp.pieces.is_set()) return std::vector<std::byte>(rsp.payload().begin(), rsp.payload().end());
  std::vector<std::byte> out(rsp.pieces.size);
  if (!out.empty()) rsp.pieces.copy_to(0, out);
  return out;
}

// A strict read through `client` on `executor`: its bytes.
Result<std::vector<std::byte>> read_bytes(Executor& executor, StorageClient& client, ChainId chain,
                                          const ChunkId& chunk, uint64_t offset, uint64_t length,
                                          bool accept_pieces = true) {
  auto rsp = on_executor<ReadRsp>(
      executor, [&](auto done) { client.read(chain, chunk, offset, length, ReadMode::kStrict, done, accept_pieces); });
  if (!rsp.is_ok()) return rsp.status();
  return bytes_of(*rsp);
}

class LocalReadClusterTest : public ::testing::Test {
 protected:
  void SetUp() override {
    auto cluster = testing::StorageCluster::start({.nodes = 3,
                                                   .targets_per_node = 1,
                                                   .replication = 3,
                                                   .max_chunk_bytes = 256 << 10,
                                                   .engine_root = dir_.path()});
    ASSERT_TRUE(cluster.is_ok()) << cluster.status();
    cluster_ = std::move(*cluster);
    client_ = std::make_unique<StorageClient>(
        ClientConfig{.client_id = 11, .mgmtd_address = cluster_->mgmtd_address(), .local_reads = true},
        cluster_->client_executor(), cluster_->client_rpc());
  }
  void TearDown() override {
    client_.reset();
    cluster_.reset();
  }
  void write(const ChunkId& chunk, const std::vector<std::byte>& data) {
    ChainId chain = cluster_->chains().front();
    auto written = on_executor<WriteRsp>(cluster_->client_executor(),
                                         [&, chain](auto done) { client_->write(chain, chunk, 0, data, done); });
    ASSERT_TRUE(written.is_ok()) << written.status();
  }
  Result<std::vector<std::byte>> read(const ChunkId& chunk, uint64_t offset, uint64_t length, bool accept_pieces) {
    return read_bytes(cluster_->client_executor(), *client_, cluster_->chains().front(), chunk, offset, length,
                      accept_pieces);
  }
  // `times` reads of the whole chunk (accepting pieces, so local where they can be) each give `data`.
  void expect_whole_chunk_reads(const ChunkId& chunk, const std::vector<std::byte>& data, int times) {
    for (int i = 0; i < times; ++i) {
      auto got = read(chunk, 0, UINT64_MAX, /*accept_pieces=*/true);
      ASSERT_TRUE(got.is_ok()) << "read " << i << ": " << got.status();
      EXPECT_EQ(*got, data) << "read " << i;
    }
  }
  uint64_t served_by_targets() {
    uint64_t sum = 0;
    for (NodeId node = 1; node <= 3; ++node) sum += cluster_->service(node)->stats().local_reads;
    return sum;
  }
  // Local answers per node (node n serves target n * 1000 + 1).
  std::array<uint64_t, 3> local_answers() {
    std::array<uint64_t, 3> out{};
    for (NodeId node = 1; node <= 3; ++node) out[node - 1] = cluster_->service(node)->stats().local_reads;
    return out;
  }

  TempDir dir_;
  std::unique_ptr<testing::StorageCluster> cluster_;
  std::unique_ptr<StorageClient> client_;
};

TEST_F(LocalReadClusterTest, ReadsOnThisHostAreServedFromTheTargetsFiles) {
  const ChunkId chunk{21, 0};
  const auto data = testing::pattern_bytes(200'000, 7);
  write(chunk, data);
  // Reads spread over the three replicas; each is served from a file.
  for (int i = 0; i < 6; ++i) {
    auto got = read(chunk, 1000 * i, 150'000, /*accept_pieces=*/true);
    ASSERT_TRUE(got.is_ok()) << got.status();
    EXPECT_EQ(*got, std::vector<std::byte>(data.begin() + 1000 * i, data.begin() + 1000 * i + 150'000));
  }
  EXPECT_EQ(client_->local_read_counts().served, 6u);
  EXPECT_EQ(client_->local_read_counts().fallbacks, 0u);
  EXPECT_EQ(served_by_targets(), 6u);
  // A caller that takes no pieces gets the bytes over RPC.
  auto plain = read(chunk, 0, UINT64_MAX, /*accept_pieces=*/false);
  ASSERT_TRUE(plain.is_ok()) << plain.status();
  EXPECT_EQ(*plain, data);
  EXPECT_EQ(client_->local_read_counts().served, 6u);
  // Past the end: empty, as over RPC.
  auto past = read(chunk, 300'000, 64 << 10, true);
  ASSERT_TRUE(past.is_ok()) << past.status();
  EXPECT_TRUE(past->empty());
}

TEST_F(LocalReadClusterTest, ReadsOfAKnownRangeAskTheTargetThatNamedIt) {
  const ChunkId chunk{26, 0};
  const auto data = testing::pattern_bytes(131'072, 12);
  write(chunk, data);
  // The first read learns where a replica holds the range; every later read of the range asks that replica
  // and reads its file while the answer is on its way.
  const auto before = local_answers();
  expect_whole_chunk_reads(chunk, data, 1);
  const auto first = local_answers();
  expect_whole_chunk_reads(chunk, data, 6);
  const auto after = local_answers();
  int answering = 0;
  for (size_t node = 0; node < 3; ++node) {
    if (first[node] != before[node]) {
      ++answering;
      EXPECT_EQ(after[node] - first[node], 6u) << "node " << node + 1;
    } else {
      EXPECT_EQ(after[node], first[node]) << "node " << node + 1 << " answered a read of a known range";
    }
  }
  EXPECT_EQ(answering, 1);
  EXPECT_EQ(client_->local_read_counts().read_before_answer, 6u);
  EXPECT_EQ(client_->local_read_counts().served, 7u);
  // Another range is not known yet: its first read goes where reads are spread, then stays there as well.
  auto other = read(chunk, 65'536, 65'536, /*accept_pieces=*/true);
  ASSERT_TRUE(other.is_ok()) << other.status();
  EXPECT_EQ(*other, std::vector<std::byte>(data.begin() + 65'536, data.end()));
  EXPECT_EQ(client_->local_read_counts().read_before_answer, 6u);
}

TEST_F(LocalReadClusterTest, ACallersOwnLocalReadIsCheckedAndReadsStraightIntoItsBuffer) {
  const ChunkId chunk{27, 0};
  auto data = testing::pattern_bytes(131'072, 15);
  write(chunk, data);
  const ChainId chain = cluster_->chains().front();
  // Nothing answered for the range yet: no place to claim.
  EXPECT_EQ(client_->claim_local_read(chunk, 0, data.size(), {}), nullptr);
  auto learnt = read(chunk, 0, data.size(), /*accept_pieces=*/true);  // an answer names the place of [0, 128 KiB)
  ASSERT_TRUE(learnt.is_ok()) << learnt.status();
  EXPECT_EQ(*learnt, data);
  EXPECT_EQ(client_->claim_local_read(chunk, 0, 4096, {}), nullptr) << "another range";
  // A read posted with the claim, its bytes read by this thread. `into` is 4 KiB-aligned (or not); the answer's
  // bytes come back as one piece, which lies in `into` exactly when the read went there.
  const auto caller_read = [&](std::span<std::byte> into) -> Result<ReadRsp> {
    auto claimed = client_->claim_local_read(chunk, 0, data.size(), into);
    if (claimed == nullptr) return not_found("nothing to claim");
    auto promise = std::make_shared<std::promise<Result<ReadRsp>>>();
    auto future = promise->get_future();
    cluster_->client_executor().post([&, claimed, promise] {
      client_->read(
          chain, chunk, 0, data.size(), ReadMode::kStrict,
          [promise](Result<ReadRsp> rsp) { promise->set_value(std::move(rsp)); },
          /*accept_pieces=*/true, claimed);
    });
    StorageClient::run_local_read(claimed);
    if (future.wait_for(std::chrono::seconds(30)) != std::future_status::ready) return deadline_exceeded("no answer");
    return future.get();
  };
  std::vector<std::byte> storage(data.size() + 8192);
  std::byte* aligned = storage.data() + (4096 - reinterpret_cast<uintptr_t>(storage.data()) % 4096) % 4096;
  const auto pieces_of = [](const ReadRsp& rsp) {
    std::vector<std::byte> out(rsp.pieces.size);
    rsp.pieces.copy_to(0, out);
    return out;
  };
  for (bool aligned_into : {true, false}) {
    SCOPED_TRACE(aligned_into ? "aligned buffer" : "misaligned buffer");
    std::span<std::byte> into(aligned + (aligned_into ? 0 : 512), data.size());
    std::fill(into.begin(), into.end(), std::byte{0});
    const uint64_t early_before = client_->local_read_counts().read_before_answer;
    auto rsp = caller_read(into);
    ASSERT_TRUE(rsp.is_ok()) << rsp.status();
    ASSERT_TRUE(rsp->pieces.is_set());
    ASSERT_EQ(rsp->pieces.pieces.size(), 1u);
    EXPECT_EQ(rsp->pieces.pieces[0].data() == into.data(), aligned_into);
    EXPECT_EQ(pieces_of(*rsp), data);
    if (aligned_into) {
      EXPECT_TRUE(std::equal(into.begin(), into.end(), data.begin()));
    }
    EXPECT_EQ(client_->local_read_counts().read_before_answer, early_before + 1);
  }
  // The claim names the place of the last answer; a full write in between moves the chunk, and the read returns the
  // new bytes all the same (the caller's bytes do not check out; the answer's place is read instead).
  auto claimed_before_write = client_->claim_local_read(chunk, 0, data.size(), {});
  ASSERT_NE(claimed_before_write, nullptr);
  data = testing::pattern_bytes(131'072, 16);
  write(chunk, data);
  auto promise = std::make_shared<std::promise<Result<ReadRsp>>>();
  auto future = promise->get_future();
  cluster_->client_executor().post([&, promise] {
    client_->read(
        chain, chunk, 0, data.size(), ReadMode::kStrict,
        [promise](Result<ReadRsp> rsp) { promise->set_value(std::move(rsp)); }, /*accept_pieces=*/true,
        claimed_before_write);
  });
  StorageClient::run_local_read(claimed_before_write);
  ASSERT_EQ(future.wait_for(std::chrono::seconds(30)), std::future_status::ready);
  auto rewritten = future.get();
  ASSERT_TRUE(rewritten.is_ok()) << rewritten.status();
  EXPECT_EQ(pieces_of(*rewritten), data);
  EXPECT_EQ(client_->local_read_counts().fallbacks, 0u);
}

TEST_F(LocalReadClusterTest, ReadsBeforeTheAnswerKeepOnlyBytesOfTheCommittedVersion) {
  const ChunkId chunk{23, 0};
  auto data = testing::pattern_bytes(131'072, 11);
  write(chunk, data);
  // The first read of a range on each replica learns where it lies; later ones read there while asking.
  expect_whole_chunk_reads(chunk, data, 9);
  EXPECT_EQ(client_->local_read_counts().served, 9u);
  EXPECT_GE(client_->local_read_counts().read_before_answer, 1u);
  // Overwrites change the bytes under the remembered places (a small patch lands in place, a full write
  // moves the chunk): every read still returns the latest committed bytes.
  for (int round = 0; round < 6; ++round) {
    if (round % 2 == 0) {
      const auto patch = testing::pattern_bytes(100, 20 + round);
      std::copy(patch.begin(), patch.end(), data.begin() + 5000 * (round + 1));
      ChainId chain = cluster_->chains().front();
      auto written = on_executor<WriteRsp>(cluster_->client_executor(), [&, chain](auto done) {
        client_->write(chain, chunk, 5000 * (round + 1), patch, done);
      });
      ASSERT_TRUE(written.is_ok()) << written.status();
    } else {
      data = testing::pattern_bytes(131'072, 30 + round);
      write(chunk, data);
    }
    SCOPED_TRACE(fmt::format("round {}", round));
    expect_whole_chunk_reads(chunk, data, 3);
  }
}

TEST_F(LocalReadClusterTest, BytesReadAheadServeTheNextReadOnlyWhileTheyAreCommitted) {
  const ChunkId chunk{24, 0};
  auto data = testing::pattern_bytes(131'072, 12);
  write(chunk, data);
  const ChainId chain = cluster_->chains().front();
  const auto read_ahead = [&] {
    auto posted = on_executor<int>(cluster_->client_executor(), [&](auto done) {
      client_->read_ahead(chain, chunk, 0, UINT64_MAX);
      done(0);
    });
    ASSERT_TRUE(posted.is_ok()) << posted.status();
  };
  // Nothing is known yet (no target answered locally): nothing is read ahead.
  read_ahead();
  expect_whole_chunk_reads(chunk, data, 1);
  EXPECT_EQ(client_->local_read_counts().read_ahead, 0u);
  // Now the range's place is known: its bytes are read ahead, and the next read of it keeps them.
  read_ahead();
  expect_whole_chunk_reads(chunk, data, 1);
  EXPECT_EQ(client_->local_read_counts().read_ahead, 1u);
  // Bytes read ahead before a write are not returned after it: a full write moves the chunk, a small one
  // lands in place (later) or as a patch; either way the read returns the latest committed bytes.
  for (int round = 0; round < 4; ++round) {
    SCOPED_TRACE(fmt::format("round {}", round));
    read_ahead();
    if (round % 2 == 0) {
      data = testing::pattern_bytes(131'072, 40 + round);
      write(chunk, data);
    } else {
      const auto patch = testing::pattern_bytes(100, 50 + round);
      std::copy(patch.begin(), patch.end(), data.begin() + 7000 * round);
      auto written = on_executor<WriteRsp>(cluster_->client_executor(),
                                           [&](auto done) { client_->write(chain, chunk, 7000 * round, patch, done); });
      ASSERT_TRUE(written.is_ok()) << written.status();
    }
    expect_whole_chunk_reads(chunk, data, 1);
  }
  EXPECT_EQ(client_->local_read_counts().fallbacks, 0u);
}

TEST_F(LocalReadClusterTest, ReadAheadHoldsABoundedNumberOfRangesDroppingTheOldest) {
  const ChainId chain = cluster_->chains().front();
  constexpr uint64_t kChunks = StorageClient::kMaxReadAheads + 2;
  std::vector<std::vector<std::byte>> data;
  for (uint64_t i = 0; i < kChunks; ++i) {
    data.push_back(testing::pattern_bytes(64 << 10, 100 + i));
    write(ChunkId{25, i}, data.back());
    expect_whole_chunk_reads(ChunkId{25, i}, data.back(), 1);  // learns where it lies
  }
  auto posted = on_executor<int>(cluster_->client_executor(), [&](auto done) {
    for (uint64_t i = 0; i < kChunks; ++i) client_->read_ahead(chain, ChunkId{25, i}, 0, UINT64_MAX);
    done(0);
  });
  ASSERT_TRUE(posted.is_ok()) << posted.status();
  // The two oldest were dropped to keep kMaxReadAheads; the rest, the oldest of them included, are held.
  const uint64_t before = client_->local_read_counts().read_ahead;
  expect_whole_chunk_reads(ChunkId{25, 0}, data[0], 1);
  expect_whole_chunk_reads(ChunkId{25, 1}, data[1], 1);
  EXPECT_EQ(client_->local_read_counts().read_ahead, before);
  expect_whole_chunk_reads(ChunkId{25, 2}, data[2], 1);
  EXPECT_EQ(client_->local_read_counts().read_ahead, before + 1);
  expect_whole_chunk_reads(ChunkId{25, kChunks - 1}, data.back(), 1);
  EXPECT_EQ(client_->local_read_counts().read_ahead, before + 2);
}

// Cached local reads (ClientConfig::cached_local_read_chunks, include/ff/fs/read_stamps.h).

// Waits until every replica of chunk has committed `version` with nothing pending (the head and the middle commit
// after the tail acknowledged: until then a strict read there is dirty).
void wait_committed(testing::StorageCluster& cluster, const ChunkId& chunk, uint32_t version) {
  auto routing = cluster.routing();
  ASSERT_TRUE(routing.is_ok()) << routing.status();
  const ChainInfo* chain = routing->chain(cluster.chains().front());
  ASSERT_NE(chain, nullptr);
  for (const auto& member : chain->targets) {
    auto replica = cluster.chunk_store(member.target);
    ASSERT_NE(replica, nullptr);
    const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(10);
    for (;;) {
      auto meta = replica->stat(chunk);
      if (meta.is_ok() && meta->pending_version == 0 && meta->committed_version == version) break;
      ASSERT_LT(std::chrono::steady_clock::now(), deadline)
          << "target " << member.target << " did not commit v" << version;
      std::this_thread::sleep_for(std::chrono::milliseconds(5));
    }
  }
}

std::vector<std::byte> slice(const std::vector<std::byte>& data, uint64_t offset, uint64_t length) {
  if (offset >= data.size()) return {};
  const uint64_t end = std::min<uint64_t>(data.size(), offset + length);
  return std::vector<std::byte>(data.begin() + static_cast<ptrdiff_t>(offset),
                                data.begin() + static_cast<ptrdiff_t>(end));
}

TEST_F(LocalReadClusterTest, SmallReadsOfAKnownChunkAreReadAgainWithoutAskingUntilItChanges) {
  const ChunkId chunk{40, 0};
  auto data = testing::pattern_bytes(200'000, 21);
  write(chunk, data);
  ASSERT_NO_FATAL_FAILURE(wait_committed(*cluster_, chunk, 1));
  // Misses ask a target for the whole version; one is kept once the client watches that target's stamps (its
  // first answer tells it where they are; reads are spread over the three replicas).
  int misses = 0;
  while (client_->local_read_counts().cached == 0) {
    ASSERT_LT(misses, 5) << "no answer was kept";
    auto got = read(chunk, 4096 * misses, 4096, /*accept_pieces=*/true);
    ASSERT_TRUE(got.is_ok()) << got.status();
    EXPECT_EQ(*got, slice(data, 4096 * misses, 4096));
    ++misses;
  }
  EXPECT_EQ(client_->local_read_counts().cache_misses, static_cast<uint64_t>(misses - 1));
  EXPECT_EQ(client_->local_read_counts().fallbacks, 0u);

  // Then any range of the chunk is read without asking any target: segment-aligned or not, across segments, at and
  // past the end.
  const auto answers = local_answers();
  const uint64_t cached = client_->local_read_counts().cached;
  const std::vector<std::pair<uint64_t, uint64_t>> ranges = {{0, 4096},        {100, 10},       {4000, 200},
                                                             {65'536, 16'384}, {196'000, 8192}, {199'999, 1},
                                                             {200'000, 4096},  {0, 32 << 10}};
  for (const auto& [offset, length] : ranges) {
    auto got = read(chunk, offset, length, /*accept_pieces=*/true);
    ASSERT_TRUE(got.is_ok()) << offset << "+" << length << ": " << got.status();
    EXPECT_EQ(*got, slice(data, offset, length)) << offset << "+" << length;
  }
  EXPECT_EQ(client_->local_read_counts().cached, cached + ranges.size());
  EXPECT_EQ(local_answers(), answers) << "a target was asked";
  // The same on the caller's own thread (read_cached_now), without the executor.
  ChainId chain = cluster_->chains().front();
  for (uint64_t offset : {0ull, 8192ull + 7, 199'000ull, 250'000ull}) {
    std::optional<Result<ReadRsp>> now = client_->read_cached_now(chain, chunk, offset, 4096);
    ASSERT_TRUE(now.has_value()) << "no kept answer served the read at " << offset;
    ASSERT_TRUE(now->is_ok()) << now->status();
    EXPECT_EQ(bytes_of(**now), slice(data, offset, 4096)) << offset;
  }
  EXPECT_EQ(client_->local_read_counts().cached, cached + ranges.size() + 4);
  EXPECT_FALSE(client_->read_cached_now(chain, ChunkId{40, 1}, 0, 4096).has_value()) << "a chunk never read";

  // A write of the chunk: the kept answer no longer holds, and the next read gets the new bytes.
  const auto patch = testing::pattern_bytes(100, 22);
  auto written = on_executor<WriteRsp>(cluster_->client_executor(),
                                       [&, chain](auto done) { client_->write(chain, chunk, 5000, patch, done); });
  ASSERT_TRUE(written.is_ok()) << written.status();
  std::copy(patch.begin(), patch.end(), data.begin() + 5000);
  EXPECT_FALSE(client_->read_cached_now(chain, chunk, 4096, 4096).has_value())
      << "a kept answer served a changed chunk";
  ASSERT_NO_FATAL_FAILURE(wait_committed(*cluster_, chunk, 2));
  for (int i = 0; i < 8; ++i) {
    auto got = read(chunk, 4096, 4096, /*accept_pieces=*/true);
    ASSERT_TRUE(got.is_ok()) << got.status();
    EXPECT_EQ(*got, slice(data, 4096, 4096)) << "read " << i << " after the write";
  }
  EXPECT_GT(client_->local_read_counts().cached, cached + ranges.size()) << "kept again once it was asked again";
  EXPECT_EQ(client_->local_read_counts().fallbacks, 0u);
}

// A queue of cached reads (StorageClient::CachedReadQueue): ranges of kept chunks read together, each answer the bytes
// written, without asking any target; a chunk never read refused at submission; a write between a read's submission
// and its reap hands the read back without an answer, and the next submission is refused.
TEST_F(LocalReadClusterTest, AQueueOfCachedReadsServesKeptChunksUntilTheyChange) {
  const ChainId chain = cluster_->chains().front();
  std::vector<std::vector<std::byte>> data;
  for (uint64_t i = 0; i < 3; ++i) {
    const ChunkId chunk{44, i};
    data.push_back(testing::pattern_bytes(150'000, 44 + i));
    write(chunk, data.back());
    ASSERT_NO_FATAL_FAILURE(wait_committed(*cluster_, chunk, 1));
    for (int n = 0; !client_->read_cached_now(chain, chunk, 0, 4096).has_value(); ++n) {
      ASSERT_LT(n, 10) << "no answer of chunk " << i << " was kept";
      auto got = read(chunk, 4096 * n, 4096, /*accept_pieces=*/true);
      ASSERT_TRUE(got.is_ok()) << got.status();
    }
  }
  const auto answers = local_answers();
  const auto before = client_->local_read_counts();
  struct Range {
    uint64_t chunk, offset, length;
  };
  // Aligned and not, across segments, one byte, and past the end (answered empty, without a disk read).
  const std::vector<Range> ranges = {{0, 0, 4096},       {1, 100, 5000},  {2, 149'000, 4096}, {0, 65'536, 16'384},
                                     {1, 150'000, 4096}, {2, 4096, 4096}, {0, 12'345, 1},     {1, 40'000, 64 << 10}};
  StorageClient::CachedReadQueue queue(*client_, 4);
  std::vector<StorageClient::CachedReadQueue::Done> done;
  size_t answered = 0;
  const auto check = [&] {
    for (StorageClient::CachedReadQueue::Done& read : done) {
      ASSERT_LT(read.tag, ranges.size());
      const Range& range = ranges[read.tag];
      ASSERT_TRUE(read.rsp.has_value()) << "range " << read.tag << " handed back without an answer";
      EXPECT_EQ(bytes_of(*read.rsp), slice(data[range.chunk], range.offset, range.length)) << "range " << read.tag;
      ++answered;
    }
    done.clear();
  };
  for (size_t i = 0; i < ranges.size(); ++i) {
    if (queue.in_flight() == queue.depth()) {
      queue.reap(1, done);
      ASSERT_NO_FATAL_FAILURE(check());
    }
    ASSERT_TRUE(queue.submit(chain, ChunkId{44, ranges[i].chunk}, ranges[i].offset, ranges[i].length, i))
        << "range " << i << " was not taken";
  }
  queue.reap(queue.in_flight(), done);
  ASSERT_NO_FATAL_FAILURE(check());
  EXPECT_EQ(answered, ranges.size());
  EXPECT_EQ(local_answers(), answers) << "a target was asked";
  EXPECT_EQ(client_->local_read_counts().queued, before.queued + ranges.size() - 1) << "all but the one past the end";
  EXPECT_FALSE(queue.submit(chain, ChunkId{44, 9}, 0, 4096, 99)) << "a chunk never read";

  // A write acknowledged while a read of the chunk is in the queue: the read comes back without an answer.
  ASSERT_TRUE(queue.submit(chain, ChunkId{44, 0}, 0, 4096, 100));
  const auto patch = testing::pattern_bytes(4096, 49);
  auto written = on_executor<WriteRsp>(cluster_->client_executor(), [&](auto done) {
    client_->write(chain, ChunkId{44, 0}, 0, patch, done);
  });
  ASSERT_TRUE(written.is_ok()) << written.status();
  queue.reap(1, done);
  ASSERT_EQ(done.size(), 1u);
  EXPECT_EQ(done[0].tag, 100u);
  EXPECT_FALSE(done[0].rsp.has_value()) << "an answer read before the write was handed back after it";
  EXPECT_FALSE(queue.submit(chain, ChunkId{44, 0}, 0, 4096, 101)) << "the changed chunk's kept answer was used";
  EXPECT_GT(client_->local_read_counts().cache_changed, before.cache_changed);
  EXPECT_EQ(client_->local_read_counts().fallbacks, 0u);
}

TEST_F(LocalReadClusterTest, WithoutCachedLocalReadsEverySmallReadAsks) {
  const ChunkId chunk{41, 0};
  const auto data = testing::pattern_bytes(70'000, 23);
  write(chunk, data);
  ASSERT_NO_FATAL_FAILURE(wait_committed(*cluster_, chunk, 1));
  StorageClient uncached(ClientConfig{.client_id = 12,
                                      .mgmtd_address = cluster_->mgmtd_address(),
                                      .local_reads = true,
                                      .cached_local_read_chunks = 0},
                         cluster_->client_executor(), cluster_->client_rpc());
  ChainId chain = cluster_->chains().front();
  for (int i = 0; i < 6; ++i) {
    auto got = read_bytes(cluster_->client_executor(), uncached, chain, chunk, 4096 * i, 4096);
    ASSERT_TRUE(got.is_ok()) << got.status();
    EXPECT_EQ(*got, slice(data, 4096 * i, 4096));
  }
  EXPECT_EQ(uncached.local_read_counts().cached, 0u);
  EXPECT_EQ(uncached.local_read_counts().cache_misses, 0u);
  EXPECT_EQ(uncached.local_read_counts().served, 0u) << "4 KiB reads go over RPC without caching";
}

// Three nodes of one ChunkEngine target each (target n * 1000 + 1 on node n), whose failures mgmtd notices after 2 s.
Result<std::unique_ptr<testing::StorageCluster>> start_cluster_failing_fast(const std::string& root) {
  return testing::StorageCluster::start({.nodes = 3,
                                         .targets_per_node = 1,
                                         .replication = 3,
                                         .max_chunk_bytes = 256 << 10,
                                         .heartbeat_timeout_ns = 2'000'000'000,
                                         .engine_root = root});
}

// Kills node `node`: in process, the crash stops the service, which withdraws its lease, while a killed process
// leaves its last one behind, at most half the heartbeat timeout from its last heartbeat (the worst case, one just
// before the kill, is set here).
void kill_storage(testing::StorageCluster& cluster, NodeId node) {
  ASSERT_TRUE(cluster.crash_storage(node).is_ok()) << "node " << node;
  auto store = cluster.chunk_store(static_cast<TargetId>(node) * 1000 + 1);
  ASSERT_NE(store, nullptr);
  store->set_local_read_lease(monotonic_now_ns() + 1'000'000'000);
}

// A chain change (a node fails): every target that learns it counts a change of every chunk, so the kept answers
// are asked again and the reads still return the committed bytes.
TEST(CachedLocalReadTest, AChainChangeEndsKeptAnswers) {
  TempDir dir;
  auto cluster = start_cluster_failing_fast(dir.path());
  ASSERT_TRUE(cluster.is_ok()) << cluster.status();
  StorageClient client(ClientConfig{.client_id = 13, .mgmtd_address = (*cluster)->mgmtd_address(), .local_reads = true},
                       (*cluster)->client_executor(), (*cluster)->client_rpc());
  const ChainId chain = (*cluster)->chains().front();
  const ChunkId chunk{42, 0};
  const auto data = testing::pattern_bytes(100'000, 24);
  auto written = on_executor<WriteRsp>((*cluster)->client_executor(),
                                       [&](auto done) { client.write(chain, chunk, 0, data, done); });
  ASSERT_TRUE(written.is_ok()) << written.status();
  ASSERT_NO_FATAL_FAILURE(wait_committed(**cluster, chunk, 1));
  auto read_4k = [&](uint64_t offset) {
    return read_bytes((*cluster)->client_executor(), client, chain, chunk, offset, 4096);
  };
  for (int i = 0; i < 8 && client.local_read_counts().cached == 0; ++i) {
    auto got = read_4k(8192);
    ASSERT_TRUE(got.is_ok()) << got.status();
  }
  ASSERT_GT(client.local_read_counts().cached, 0u);
  // Which target the kept answer names is not known here: fail a node, and whichever it was, every target that stays
  // learns the chain change (or is the failed one, holding no lease once mgmtd's timeout passed its own).
  auto before = (*cluster)->routing();
  ASSERT_TRUE(before.is_ok()) << before.status();
  ASSERT_TRUE((*cluster)->crash_storage(3).is_ok());
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(20);
  for (;;) {
    auto now = (*cluster)->routing();
    ASSERT_TRUE(now.is_ok()) << now.status();
    if (now->chain(chain)->version != before->chain(chain)->version) break;
    ASSERT_LT(std::chrono::steady_clock::now(), deadline) << "mgmtd did not notice the failed node";
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
  std::this_thread::sleep_for(std::chrono::milliseconds(1500));  // the other nodes' heartbeats bring the change
  const uint64_t misses = client.local_read_counts().cache_misses;
  auto got = read_4k(8192);
  ASSERT_TRUE(got.is_ok()) << got.status();
  EXPECT_EQ(*got, slice(data, 8192, 4096));
  EXPECT_GT(client.local_read_counts().cache_misses, misses) << "the kept answer was used after the chain changed";
  ASSERT_TRUE((*cluster)->start_storage(3).is_ok());
}

// Reads racing writes of the same chunk: a writer thread replaces the whole chunk (64 KiB, version v's bytes) every
// 15 ms up to version `last`, running during(v) after each acknowledgement, while this thread reads 4 KiB ranges
// (three in four on this thread where a kept answer allows, read_cached_now, else through the executor). Every read
// must return one version whole, never one older than the last write acknowledged before the read began, never one
// not yet written. `writer` writes (null: `client`, which reads).
struct RaceCounts {
  uint64_t reads = 0, caller_reads = 0, queued_reads = 0;
};
RaceCounts race_reads_with_writes(testing::StorageCluster& cluster, StorageClient& client, const ChunkId& chunk,
                                  uint32_t last, const std::function<void(uint32_t)>& during = {},
                                  StorageClient* writer = nullptr) {
  if (writer == nullptr) writer = &client;
  constexpr uint64_t kBytes = 64 << 10;
  auto version_bytes = [](uint32_t version) { return testing::pattern_bytes(kBytes, 1000 + version); };
  const ChainId chain = cluster.chains().front();
  RaceCounts counts;
  auto write_version = [&](uint32_t version) -> Status {
    const auto data = version_bytes(version);
    auto written = on_executor<WriteRsp>(cluster.client_executor(),
                                         [&](auto done) { writer->write(chain, chunk, 0, data, done); });
    if (!written.is_ok()) return written.status();
    if (written->version != version) return internal_error("write of v{} got v{}", version, written->version);
    return Status::ok();
  };
  const Status first = write_version(1);
  EXPECT_TRUE(first.is_ok()) << first;
  if (!first.is_ok()) return counts;
  std::atomic<uint32_t> acknowledged{1};
  std::atomic<bool> stop{false};
  std::thread writing([&] {
    for (uint32_t version = 2; version <= last && !stop.load(); ++version) {
      const Status status = write_version(version);
      if (!status.is_ok()) {
        ADD_FAILURE() << "write of v" << version << ": " << status;
        break;
      }
      acknowledged.store(version);
      if (during) during(version);
      std::this_thread::sleep_for(std::chrono::milliseconds(15));
    }
    stop.store(true);
  });
  std::mt19937_64 random(chunk.inode);
  while (!stop.load()) {
    const uint64_t offset = random() % (kBytes / 4096) * 4096 + random() % 2 * 100;
    const uint32_t lowest = acknowledged.load();
    Result<std::vector<std::byte>> got = std::vector<std::byte>{};
    std::optional<Result<ReadRsp>> now;
    if (counts.reads % 4 == 1) {  // through a queue of cached reads
      StorageClient::CachedReadQueue queue(client, 2);
      std::vector<StorageClient::CachedReadQueue::Done> done;
      if (queue.submit(chain, chunk, offset, 4096, 0)) queue.reap(1, done);
      if (!done.empty() && done[0].rsp) {
        now = Result<ReadRsp>(std::move(*done[0].rsp));
        ++counts.queued_reads;
      }
    } else if (counts.reads % 4 != 0) {
      now = client.read_cached_now(chain, chunk, offset, 4096);
    }
    if (now && now->is_ok()) {
      got = bytes_of(**now);
      ++counts.caller_reads;
    } else if (now) {
      got = now->status();
    } else {
      got = read_bytes(cluster.client_executor(), client, chain, chunk, offset, 4096);
    }
    const uint32_t highest = acknowledged.load() + 1;  // the write in flight may have committed
    if (!got.is_ok()) {
      ADD_FAILURE() << "read " << counts.reads << ": " << got.status();
      stop.store(true);
      break;
    }
    bool matched = false;
    for (uint32_t version = lowest; version <= highest && !matched; ++version) {
      matched = *got == slice(version_bytes(version), offset, 4096);
    }
    if (!matched) {
      ADD_FAILURE() << "read " << counts.reads << " at " << offset << " matches no version in [v" << lowest << ", v"
                    << highest << "]";
      stop.store(true);
      break;
    }
    ++counts.reads;
  }
  writing.join();
  return counts;
}

TEST_F(LocalReadClusterTest, CachedReadsDuringWritesNeverReturnAnOlderVersionThanAcknowledged) {
  const RaceCounts counts = race_reads_with_writes(*cluster_, *client_, ChunkId{43, 0}, 60);
  ASSERT_FALSE(HasFailure());
  EXPECT_GT(counts.reads, 50u);
  EXPECT_GT(client_->local_read_counts().cached, counts.caller_reads) << "no read through the executor used a kept answer";
  EXPECT_GT(counts.caller_reads, 0u) << "no read on this thread used a kept answer";
  EXPECT_GT(counts.queued_reads, 0u) << "no read through a queue used a kept answer";
  EXPECT_GT(client_->local_read_counts().cache_misses, 0u);
}

// The same while a storage node crashes, leaving its files and its last lease behind (as after SIGKILL), and comes
// back: the writes (from another client) stall until mgmtd takes the node out of the chain, then go on without it;
// the reader learns of the chain change only from its own reads, so while it reads a kept answer of the crashed
// node's target, only that target's lease stops it. No read returns a version older than acknowledged.
TEST(CachedLocalReadTest, ReadsStayFreshWhileANodeCrashesAndReturns) {
  TempDir dir;
  auto cluster = start_cluster_failing_fast(dir.path());
  ASSERT_TRUE(cluster.is_ok()) << cluster.status();
  StorageClient client(ClientConfig{.client_id = 14, .mgmtd_address = (*cluster)->mgmtd_address(), .local_reads = true},
                       (*cluster)->client_executor(), (*cluster)->client_rpc());
  StorageClient writer(ClientConfig{.client_id = 15, .mgmtd_address = (*cluster)->mgmtd_address()},
                       (*cluster)->client_executor(), (*cluster)->client_rpc());
  // Each node's target may be the one a kept answer names: crash each in turn, one at a time.
  const RaceCounts counts = race_reads_with_writes(
      **cluster, client, ChunkId{44, 0}, 150,
      [&](uint32_t version) {
        const NodeId node = static_cast<NodeId>(version / 50 + 1);
        if (version % 50 == 10) kill_storage(**cluster, node);
        if (version % 50 == 30) {
          EXPECT_TRUE((*cluster)->start_storage(node).is_ok()) << "node " << node;
        }
      },
      &writer);
  ASSERT_FALSE(HasFailure());
  EXPECT_GT(counts.reads, 100u);
  EXPECT_GT(client.local_read_counts().cached, 0u);
}

// A killed node leaves its target's files and its last lease behind. A client that kept that target's answer for a
// chunk and hears nothing else (another client writes) must not read the kept version once the chain moved on
// without the node: the lease (half the heartbeat timeout from the node's last heartbeat) runs out before mgmtd
// (after the whole timeout) changes the chain and a write can commit without it.
TEST(CachedLocalReadTest, AKilledTargetsKeptAnswerIsNotReadAfterTheChainMovedOn) {
  TempDir dir;
  auto cluster = start_cluster_failing_fast(dir.path());
  ASSERT_TRUE(cluster.is_ok()) << cluster.status();
  StorageClient reader(ClientConfig{.client_id = 16, .mgmtd_address = (*cluster)->mgmtd_address(), .local_reads = true},
                       (*cluster)->client_executor(), (*cluster)->client_rpc());
  StorageClient writer(ClientConfig{.client_id = 17, .mgmtd_address = (*cluster)->mgmtd_address()},
                       (*cluster)->client_executor(), (*cluster)->client_rpc());
  const ChainId chain = (*cluster)->chains().front();
  const ChunkId chunk{45, 0};
  auto write = [&](uint64_t seed) {
    const auto data = testing::pattern_bytes(64 << 10, seed);
    auto written = on_executor<WriteRsp>((*cluster)->client_executor(),
                                         [&](auto done) { writer.write(chain, chunk, 0, data, done); });
    EXPECT_TRUE(written.is_ok()) << written.status();
    return data;
  };
  auto read = [&]() -> std::vector<std::byte> {
    auto got = read_bytes((*cluster)->client_executor(), reader, chain, chunk, 0, 4096);
    EXPECT_TRUE(got.is_ok()) << got.status();
    return got.is_ok() ? *got : std::vector<std::byte>{};
  };
  const auto v1 = write(51);
  ASSERT_NO_FATAL_FAILURE(wait_committed(**cluster, chunk, 1));
  // Read until an answer is kept, noting which node answered the miss that kept it.
  auto answers = [&] {
    std::array<uint64_t, 3> out{};
    for (NodeId node = 1; node <= 3; ++node) out[node - 1] = (*cluster)->service(node)->stats().local_reads;
    return out;
  };
  NodeId named = 0;
  for (int i = 0; i < 8 && reader.local_read_counts().cached == 0; ++i) {
    const auto before = answers();
    EXPECT_EQ(read(), slice(v1, 0, 4096));
    const auto after = answers();
    if (reader.local_read_counts().cached != 0) break;
    for (NodeId node = 1; node <= 3; ++node) {
      if (after[node - 1] != before[node - 1]) named = node;
    }
  }
  ASSERT_NE(named, 0u) << "no answer was kept";
  EXPECT_EQ(read(), slice(v1, 0, 4096));
  const uint64_t cached = reader.local_read_counts().cached;
  ASSERT_GE(cached, 2u);

  // Node `named` is killed: its process is gone, its files and a lease of half the heartbeat timeout stay.
  ASSERT_NO_FATAL_FAILURE(kill_storage(**cluster, named));
  EXPECT_EQ(read(), slice(v1, 0, 4096)) << "v1 is still the committed version";
  // The writer's next version commits once mgmtd has taken the node out of the chain (after 2 s).
  const auto v2 = write(52);
  EXPECT_EQ(read(), slice(v2, 0, 4096)) << "the killed target's kept answer was read after the chain moved on";
  ASSERT_TRUE((*cluster)->start_storage(named).is_ok());
}

TEST_F(LocalReadClusterTest, ACorruptReplicaIsReadOverRpcAndRepaired) {
  const ChunkId chunk{22, 0};
  const auto data = testing::pattern_bytes(131'072, 8);
  write(chunk, data);
  // Corrupt the chunk on one replica's disk.
  const ChainInfo* chain = nullptr;
  auto routing = cluster_->routing();
  ASSERT_TRUE(routing.is_ok()) << routing.status();
  chain = routing->chain(cluster_->chains().front());
  ASSERT_NE(chain, nullptr);
  // The head and the middle commit after the tail acknowledged; until then a strict read there is "dirty" and
  // goes to another replica, so the reads below might never reach the victim. Wait for every commit.
  for (const auto& member : chain->targets) {
    auto replica = cluster_->chunk_store(member.target);
    ASSERT_NE(replica, nullptr);
    const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(10);
    for (;;) {
      auto meta = replica->stat(chunk);  // [chunk_not_found] while only a pending version is there
      ASSERT_TRUE(meta.is_ok() || fs_error_of(meta.status()) == FsError::kChunkNotFound) << meta.status();
      if (meta.is_ok() && meta->pending_version == 0 && meta->committed_version == 1) break;
      ASSERT_LT(std::chrono::steady_clock::now(), deadline) << "target " << member.target << " did not commit";
      std::this_thread::sleep_for(std::chrono::milliseconds(5));
    }
  }
  // The client reads a range from the target that first named its place (ReadsOfAKnownRangeAskTheTargetThatNamedIt):
  // corrupt that one.
  const auto before = local_answers();
  expect_whole_chunk_reads(chunk, data, 1);
  const auto after = local_answers();
  TargetId victim = 0;
  for (NodeId node = 1; node <= 3; ++node) {
    if (after[node - 1] != before[node - 1]) victim = node * 1000 + 1;
  }
  ASSERT_NE(victim, 0u) << "no target answered the first read locally";
  auto store = cluster_->chunk_store(victim);
  ASSERT_NE(store, nullptr);
  auto located = store->locate(chunk, 0, UINT64_MAX, ReadMode::kStrict);
  ASSERT_TRUE(located.is_ok() && located->extent) << located.status();
  scribble(located->extent->path, located->extent->file_offset + 50'000, 64);
  // Every read returns the written bytes: reads of the corrupt replica fall back to RPC, whose read
  // finds the corruption and repairs the chunk from a good replica.
  expect_whole_chunk_reads(chunk, data, 6);
  EXPECT_GE(client_->local_read_counts().fallbacks, 1u);
  EXPECT_GE(client_->local_read_counts().served, 4u);
  auto repaired = store->read(chunk, 0, UINT64_MAX, ReadMode::kStrict);
  ASSERT_TRUE(repaired.is_ok()) << repaired.status();
  EXPECT_EQ(repaired->data, data);
}

// An in-process cluster in 64 KiB chunks and a FileClient on it (client_config) with the file "f" open to read
// and write.
struct OneFileCluster {
  std::unique_ptr<testing::InProcessCluster> cluster;
  std::unique_ptr<FileClient> client;
  FileHandle fh = 0;
};
void start_one_file_cluster(const std::string& root, const FileClientConfig& client_config, OneFileCluster* out) {
  testing::InProcessClusterOptions options;
  options.chunk_size = 64 << 10;
  options.engine_root = root;
  options.client = client_config;
  auto cluster = testing::InProcessCluster::start(options);
  ASSERT_TRUE(cluster.is_ok()) << cluster.status();
  out->cluster = std::move(*cluster);
  auto client = out->cluster->make_client();
  ASSERT_TRUE(client.is_ok()) << client.status();
  out->client = std::move(*client);
  auto fh = out->client->create(meta::Caller{}, meta::kRootInode, "f", 0644, meta::kOpenRead | meta::kOpenWrite);
  ASSERT_TRUE(fh.is_ok()) << fh.status();
  out->fh = *fh;
}

// Reads chunk i (64 KiB) of the file through handle and checks it against data.
void expect_chunk(FileClient& client, FileHandle handle, const std::vector<std::byte>& data, size_t i) {
  constexpr size_t kChunkBytes = 64 << 10;
  std::vector<std::byte> out(kChunkBytes);
  auto n = client.read(handle, i * kChunkBytes, out);
  ASSERT_TRUE(n.is_ok()) << n.status();
  ASSERT_EQ(*n, out.size());
  ASSERT_TRUE(std::equal(out.begin(), out.end(), data.begin() + i * kChunkBytes)) << "chunk " << i;
}

// Writes `chunks` 64 KiB chunks of pattern bytes (`seed`) into the file, then reads every chunk back to front
// through another handle, so the client knows every chunk's place (no read there continues another, and the handle
// `one.fh` has read nothing: its streams start clean).
void write_and_learn_places(OneFileCluster& one, size_t chunks, uint64_t seed, std::vector<std::byte>* data) {
  FileClient& client = *one.client;
  const FileHandle fh = one.fh;
  *data = testing::pattern_bytes(chunks * (64 << 10), seed);
  ASSERT_TRUE(client.write(fh, 0, *data).is_ok());
  auto inode = client.stat(fh);
  ASSERT_TRUE(inode.is_ok()) << inode.status();
  auto learner = client.open(meta::Caller{}, inode->id, meta::kOpenRead);
  ASSERT_TRUE(learner.is_ok()) << learner.status();
  for (size_t i = 0; i < chunks; ++i) ASSERT_NO_FATAL_FAILURE(expect_chunk(client, *learner, *data, chunks - 1 - i));
  ASSERT_TRUE(client.close(*learner).is_ok());
}

TEST(LocalReadFileClientTest, FileReadsComeFromTheFilesAndMatch) {
  TempDir dir;
  for (bool local : {true, false}) {
    SCOPED_TRACE(local ? "local reads" : "over RPC");
    FileClientConfig config;
    config.local_reads = local;
    OneFileCluster one;
    ASSERT_NO_FATAL_FAILURE(start_one_file_cluster(dir.path() + (local ? "/local" : "/rpc"), config, &one));
    FileClient& client = *one.client;
    const FileHandle fh = one.fh;
    const auto data = testing::pattern_bytes(300'000, 9);  // five chunks, the last short
    auto written = client.write(fh, 0, data);
    ASSERT_TRUE(written.is_ok()) << written.status();
    std::vector<std::byte> out(data.size() + 100);
    auto n = client.read(fh, 0, out);
    ASSERT_TRUE(n.is_ok()) << n.status();
    ASSERT_EQ(*n, data.size());
    out.resize(*n);
    EXPECT_EQ(out, data);
    auto pieces = client.read_pieces(fh, 70'000, 100'000);
    ASSERT_TRUE(pieces.is_ok()) << pieces.status();
    std::vector<std::byte> joined;
    for (const SharedBytes& piece : *pieces) joined.insert(joined.end(), piece.bytes.begin(), piece.bytes.end());
    EXPECT_EQ(joined, std::vector<std::byte>(data.begin() + 70'000, data.begin() + 170'000));
    // Every chunk read above is at least ClientConfig::local_read_min_bytes (32 KiB) long.
    const auto counts = client.local_read_counts();
    if (local) {
      EXPECT_GE(counts.served, 5u + 2u);
    } else {
      EXPECT_EQ(counts.served, 0u);
    }
    EXPECT_EQ(counts.fallbacks, 0u);
    ASSERT_TRUE(client.close(fh).is_ok());
  }
}

// Small reads through FileClient: once a target on this host named a chunk's whole version, reads of it are served
// from a kept answer on the caller's thread (StorageClient::read_cached_now), and a write of the file is seen.
TEST(LocalReadFileClientTest, SmallReadsOfAKeptChunkAreServedOnTheCallersThreadAndSeeWrites) {
  TempDir dir;
  OneFileCluster one;
  ASSERT_NO_FATAL_FAILURE(start_one_file_cluster(dir.path(), FileClientConfig{}, &one));
  FileClient& client = *one.client;
  const FileHandle fh = one.fh;
  auto data = testing::pattern_bytes(200'000, 31);
  ASSERT_TRUE(client.write(fh, 0, data).is_ok());
  ASSERT_TRUE(client.fsync(fh).is_ok());
  auto read_at = [&](uint64_t offset, size_t length) {
    std::vector<std::byte> out(length);
    auto n = client.read(fh, offset, out);
    EXPECT_TRUE(n.is_ok()) << n.status();
    out.resize(n.is_ok() ? *n : 0);
    return out;
  };
  // Until an answer is kept (the replicas commit after the tail acknowledged, and reads spread over them).
  for (int i = 0; i < 40 && client.local_read_counts().cached == 0; ++i) {
    EXPECT_EQ(read_at(4096, 4096), slice(data, 4096, 4096));
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
  }
  const uint64_t cached = client.local_read_counts().cached;
  ASSERT_GT(cached, 0u) << "no small read was served from a kept answer";
  for (uint64_t offset : {4096ull, 4100ull, 60'000ull, 65'530ull}) {
    EXPECT_EQ(read_at(offset, 4096), slice(data, offset, 4096)) << offset;
  }
  EXPECT_GT(client.local_read_counts().cached, cached);
  const auto patch = testing::pattern_bytes(3000, 32);
  ASSERT_TRUE(client.write(fh, 5000, patch).is_ok());
  std::copy(patch.begin(), patch.end(), data.begin() + 5000);
  EXPECT_EQ(read_at(4096, 8192), slice(data, 4096, 8192)) << "a read after the write returned older bytes";
  EXPECT_EQ(client.local_read_counts().fallbacks, 0u);
  ASSERT_TRUE(client.close(fh).is_ok());
}

// Batch reads through FileClient (read_batch, as the USRBIO ring server's): the small reads of kept chunks are read
// together through one queue on the caller's thread, and a write is seen by the next batch.
TEST(LocalReadFileClientTest, BatchReadsOfKeptChunksAreReadTogetherAndSeeWrites) {
  TempDir dir;
  OneFileCluster one;
  ASSERT_NO_FATAL_FAILURE(start_one_file_cluster(dir.path(), FileClientConfig{}, &one));
  FileClient& client = *one.client;
  const FileHandle fh = one.fh;
  constexpr uint64_t kChunk = 64 << 10;
  auto data = testing::pattern_bytes(4 * kChunk, 33);
  ASSERT_TRUE(client.write(fh, 0, data).is_ok());
  ASSERT_TRUE(client.fsync(fh).is_ok());
  // Two 4 KiB reads (one of them unaligned) in each of the four chunks, one batch.
  const auto read_batch = [&] {
    std::vector<std::vector<std::byte>> outs(8, std::vector<std::byte>(4096));
    std::vector<FileClient::ReadOp> ops;
    for (size_t i = 0; i < outs.size(); ++i) ops.push_back({fh, (i / 2) * kChunk + (i % 2) * 10'007, outs[i]});
    std::vector<Result<size_t>> results = client.read_batch(ops);
    for (size_t i = 0; i < ops.size(); ++i) {
      EXPECT_TRUE(results[i].is_ok()) << results[i].status();
      EXPECT_EQ(outs[i], slice(data, ops[i].offset, 4096)) << "read " << i << " at " << ops[i].offset;
    }
  };
  // Until every chunk's answer is kept (the replicas commit after the tail acknowledged, and reads spread over them).
  uint64_t queued = 0;
  for (int i = 0; i < 60; ++i) {
    queued = client.local_read_counts().queued;
    ASSERT_NO_FATAL_FAILURE(read_batch());
    if (client.local_read_counts().queued == queued + 8) break;
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
  }
  ASSERT_EQ(client.local_read_counts().queued, queued + 8) << "a batch of kept chunks' reads was not read together";
  const auto patch = testing::pattern_bytes(3000, 34);
  ASSERT_TRUE(client.write(fh, 2 * kChunk + 9000, patch).is_ok());
  std::copy(patch.begin(), patch.end(), data.begin() + 2 * kChunk + 9000);
  ASSERT_NO_FATAL_FAILURE(read_batch());  // a batch after the write: the new bytes
  EXPECT_EQ(client.local_read_counts().fallbacks, 0u);
  ASSERT_TRUE(client.close(fh).is_ok());
}

TEST(LocalReadFileClientTest, SequentialReadsReadAhead) {
  TempDir dir;
  for (bool read_ahead : {true, false}) {
    SCOPED_TRACE(read_ahead ? "read-ahead" : "no read-ahead");
    FileClientConfig config;
    config.local_reads = true;
    config.read_ahead = read_ahead;
    OneFileCluster one;
    ASSERT_NO_FATAL_FAILURE(start_one_file_cluster(dir.path() + (read_ahead ? "/on" : "/off"), config, &one));
    FileClient& client = *one.client;
    const FileHandle fh = one.fh;
    constexpr size_t kChunks = 12;
    const auto data = testing::pattern_bytes(kChunks * (64 << 10), 13);
    ASSERT_TRUE(client.write(fh, 0, data).is_ok());
    // Two passes of chunk-sized reads front to back: the first learns where each chunk lies (read-ahead asks
    // targets as it goes), the second reads each next chunk ahead from the place it learnt.
    for (int pass = 0; pass < 2; ++pass) {
      SCOPED_TRACE(fmt::format("pass {}", pass));
      for (size_t i = 0; i < kChunks; ++i) ASSERT_NO_FATAL_FAILURE(expect_chunk(client, fh, data, i));
    }
    const auto counts = client.local_read_counts();
    EXPECT_EQ(counts.served, 2 * kChunks);
    if (read_ahead) {
      // Every read of the second pass but its first (which does not continue the last read) was read ahead.
      EXPECT_GE(counts.read_ahead, kChunks - 1);
    } else {
      EXPECT_EQ(counts.read_ahead, 0u);
    }
    EXPECT_EQ(counts.fallbacks, 0u);
    ASSERT_TRUE(client.close(fh).is_ok());
  }
}

TEST(LocalReadFileClientTest, ASequentialReaderIsReadAheadAWindowOfRanges) {
  TempDir dir;
  for (uint64_t window_chunks : {1, 3}) {
    SCOPED_TRACE(fmt::format("window of {} ranges", window_chunks));
    FileClientConfig config;
    config.local_reads = true;
    config.read_ahead_window_bytes = window_chunks * (64 << 10);
    OneFileCluster one;
    ASSERT_NO_FATAL_FAILURE(start_one_file_cluster(dir.path() + fmt::format("/w{}", window_chunks), config, &one));
    FileClient& client = *one.client;
    const FileHandle fh = one.fh;
    std::vector<std::byte> data;
    ASSERT_NO_FATAL_FAILURE(write_and_learn_places(one, 8, 14, &data));
    const auto read_chunk = [&](size_t i) { expect_chunk(client, fh, data, i); };
    const uint64_t learnt = client.local_read_counts().read_ahead;
    const uint64_t started_before = client.local_read_counts().read_aheads_started;
    const auto read_ahead = [&] { return client.local_read_counts().read_ahead - learnt; };
    // Chunks 0 and 1 in order: the read of 1 continues 0, the stream's first continuation, so one range is read
    // ahead (chunk 2) whatever the window: a random reader continues a stream that often by chance.
    ASSERT_NO_FATAL_FAILURE(read_chunk(0));
    ASSERT_NO_FATAL_FAILURE(read_chunk(1));
    EXPECT_EQ(client.local_read_counts().read_aheads_started - started_before, 1u);
    // A jump to chunk 4 finds nothing read ahead there.
    ASSERT_NO_FATAL_FAILURE(read_chunk(4));
    EXPECT_EQ(read_ahead(), 0u);
    // Chunk 2 was read ahead; its read continues the stream a second time: two ranges (3 and 4) within a window of
    // three, one (3) within a window of one.
    ASSERT_NO_FATAL_FAILURE(read_chunk(2));
    EXPECT_EQ(read_ahead(), 1u);
    // Chunk 3 was read ahead either way; the third continuation opens the whole window (4 to 6, or 4).
    ASSERT_NO_FATAL_FAILURE(read_chunk(3));
    EXPECT_EQ(read_ahead(), 2u);
    // A jump to chunk 5 finds it read ahead only within the window of three.
    ASSERT_NO_FATAL_FAILURE(read_chunk(5));
    EXPECT_EQ(read_ahead(), window_chunks == 3 ? 3u : 2u);
    EXPECT_EQ(client.local_read_counts().fallbacks, 0u);
    ASSERT_TRUE(client.close(fh).is_ok());
  }
}

TEST(LocalReadFileClientTest, InterleavedStreamsOnOneHandleAreEachReadAhead) {
  TempDir dir;
  FileClientConfig config;
  config.local_reads = true;
  config.read_ahead_window_bytes = 64 << 10;  // one range of the reads below
  OneFileCluster one;
  ASSERT_NO_FATAL_FAILURE(start_one_file_cluster(dir.path(), config, &one));
  FileClient& client = *one.client;
  const FileHandle fh = one.fh;
  std::vector<std::byte> data;
  ASSERT_NO_FATAL_FAILURE(write_and_learn_places(one, 8, 17, &data));
  const auto read_chunk = [&](size_t i) { expect_chunk(client, fh, data, i); };
  const uint64_t learnt = client.local_read_counts().read_ahead;
  // Two readers on the one handle, one from chunk 0 and one from chunk 4, taking turns: each continues its own
  // stream, so each one's next chunk is read ahead (a handle that remembered only its last read would see no
  // read continue another).
  for (size_t step = 0; step < 3; ++step) {
    ASSERT_NO_FATAL_FAILURE(read_chunk(step));
    ASSERT_NO_FATAL_FAILURE(read_chunk(4 + step));
  }
  EXPECT_EQ(client.local_read_counts().read_ahead - learnt, 2u);  // chunks 2 and 6
  EXPECT_EQ(client.local_read_counts().fallbacks, 0u);
  ASSERT_TRUE(client.close(fh).is_ok());
}

}  // namespace
}  // namespace ff::fs
