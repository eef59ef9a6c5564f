// Tests of the usrbio rings (include/ff/fs/usrbio.h): names and Iovs, ring semantics (capacity,
// wrap-around, timeouts), an in-process RingServer over a fake BatchIo (many I/Os per doorbell, bad
// entries), a server in another process (fork) that is killed, owner death, and the registry.
#include <gtest/gtest.h>
#include <signal.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstring>
#include <thread>

#include "fake_batch_io.h"
#include "ff/fs/usrbio.h"
#include "src/fs/usrbio/ring_layout.h"

namespace ff::fs::usrbio {
namespace {

using testing::FakeBatchIo;
using testing::pattern;

// Unique per process and test, so parallel ctest runs never collide in /dev/shm.
std::string unique_name(std::string_view what) {
  static std::atomic<int> counter{0};
  return fmt::format("t{}-{}-{}", ::getpid(), what, counter.fetch_add(1));
}

bool same_bytes(const std::byte* a, const std::byte* b, size_t size) { return std::memcmp(a, b, size) == 0; }

TEST(UsrbioNames, RejectsBadNames) {
  EXPECT_TRUE(validate_name("ok-name_1.2").is_ok());
  for (std::string_view bad : {"", ".", "..", "a/b", "a b", "x\n"}) {
    Status status = validate_name(bad);
    EXPECT_EQ(status.code(), StatusCode::kInvalidArgument) << bad;
  }
  EXPECT_FALSE(validate_name(std::string(101, 'a')).is_ok());
  auto iov = Iov::create("bad/name", 4096);
  ASSERT_FALSE(iov.is_ok());
  EXPECT_NE(iov.status().message().find("bad/name"), std::string::npos) << iov.status().to_string();
}

TEST(UsrbioIov, CreateOpenShareAndUnlink) {
  const std::string name = unique_name("iov");
  auto created = Iov::create(name, 1 << 20);
  ASSERT_TRUE(created.is_ok()) << created.status().to_string();
  EXPECT_EQ(created->path(), "/dev/shm/ff-iov-" + name);
  auto again = Iov::create(name, 4096);
  ASSERT_FALSE(again.is_ok());
  EXPECT_EQ(again.status().code(), StatusCode::kAlreadyExists) << again.status().to_string();
  {
    auto opened = Iov::open(name);
    ASSERT_TRUE(opened.is_ok()) << opened.status().to_string();
    EXPECT_EQ(opened->size(), 1u << 20);
    std::memcpy(opened->data() + 100, "hello", 5);  // a second mapping of the same memory
  }
  EXPECT_TRUE(same_bytes(created->data() + 100, reinterpret_cast<const std::byte*>("hello"), 5));
  EXPECT_FALSE(created->range(1 << 20, 1).is_ok());
  EXPECT_TRUE(created->range((1 << 20) - 1, 1).is_ok());
  const std::string path = created->path();
  *created = Iov();  // the creator unlinks its name
  EXPECT_NE(::access(path.c_str(), F_OK), 0);
  EXPECT_EQ(Iov::open(name).status().code(), StatusCode::kNotFound);
}

TEST(UsrbioIov, HugeIovIsSparse) {
  const std::string name = unique_name("huge");
  auto iov = Iov::create(name, 64ull << 30);  // 64 GiB: only touched pages cost memory
  ASSERT_TRUE(iov.is_ok()) << iov.status().to_string();
  iov->data()[(64ull << 30) - 1] = std::byte{7};
  EXPECT_EQ(iov->data()[(64ull << 30) - 1], std::byte{7});
  EXPECT_FALSE(Iov::create(unique_name("toobig"), (1ull << 40) + 1).is_ok());
}

struct Ring {
  Iov iov;
  Ior ior;
};

Ring make_ring(uint64_t iov_bytes, IorOptions options = {}) {
  const std::string name = unique_name("ring");
  auto iov = Iov::create(name, iov_bytes);
  FF_ASSERT(iov.is_ok(), "{}", iov.status().to_string());
  auto ior = Ior::create(name, *iov, options);
  FF_ASSERT(ior.is_ok(), "{}", ior.status().to_string());
  return Ring{std::move(*iov), std::move(*ior)};
}

TEST(UsrbioRing, ClientSideChecksWithoutServer) {
  Ring ring = make_ring(1 << 16, {.entries = 4});
  Ior& ior = ring.ior;
  EXPECT_EQ(Ior::create("x", ring.iov, {.entries = 3}).status().code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(ior.prep_read(0, 0, 10, 0, 0).status().code(), StatusCode::kInvalidArgument);              // file 0
  EXPECT_EQ(ior.prep_read(5, 0, 0, 0, 0).status().code(), StatusCode::kInvalidArgument);               // length 0
  EXPECT_EQ(ior.prep_read(5, 0, 16, (1 << 16) - 8, 0).status().code(), StatusCode::kInvalidArgument);  // iov range
  for (int i = 0; i < 4; ++i) ASSERT_TRUE(ior.prep_read(5, 0, 16, 0, i).is_ok());
  auto full = ior.prep_read(5, 0, 16, 0, 9);
  EXPECT_EQ(full.status().code(), StatusCode::kResourceExhausted) << full.status().to_string();
  EXPECT_EQ(ior.in_flight(), 4u);
  EXPECT_EQ(ior.prepared(), 4u);
  std::vector<Completion> out(8);
  // More than the ring can ever hold is refused at once; a wait for unsubmitted entries says so.
  auto refused = ior.wait_for_ios(out, 5, 10);
  EXPECT_EQ(refused.status().code(), StatusCode::kInvalidArgument) << refused.status().to_string();
  auto forgot = ior.wait_for_ios(out, 1, 10);
  ASSERT_EQ(forgot.status().code(), StatusCode::kDeadlineExceeded);
  EXPECT_NE(forgot.status().message().find("4 prepared but not submitted"), std::string::npos)
      << forgot.status().to_string();
  ASSERT_EQ(*ior.submit(), 4u);
  EXPECT_EQ(*ior.submit(), 0u);
  auto start = std::chrono::steady_clock::now();
  auto timed_out = ior.wait_for_ios(out, 1, 200);
  const auto waited = std::chrono::steady_clock::now() - start;
  ASSERT_EQ(timed_out.status().code(), StatusCode::kDeadlineExceeded);
  EXPECT_GE(waited, std::chrono::milliseconds(190));
  EXPECT_LT(waited, std::chrono::seconds(5));
  EXPECT_NE(timed_out.status().message().find("never beat"), std::string::npos) << timed_out.status().to_string();
  auto polled = ior.wait_for_ios(out, 0, 0);  // min 0: a poll
  ASSERT_TRUE(polled.is_ok()) << polled.status().to_string();
  EXPECT_EQ(*polled, 0u);
}

class UsrbioServedRing : public ::testing::Test {
 protected:
  void start(uint64_t iov_bytes, IorOptions options = {}, RingServerOptions server_options = {}) {
    ring_ = make_ring(iov_bytes, options);
    if (::getuid() == 0 && server_options.caller.uid != 0) {
      // The server requires a non-root caller to own the ring's files, as a real client would.
      ASSERT_EQ(::chown(ring_.ior.path().c_str(), server_options.caller.uid, server_options.caller.gid), 0);
      ASSERT_EQ(::chown(ring_.iov.path().c_str(), server_options.caller.uid, server_options.caller.gid), 0);
    }
    auto server = RingServer::start(ring_.ior.name(), io_, std::move(server_options));
    ASSERT_TRUE(server.is_ok()) << server.status().to_string();
    server_ = std::move(*server);
  }
  // Waits for exactly `count` completions (bounded), in any order.
  std::vector<Completion> reap(size_t count, int64_t timeout_ms = 10'000) {
    std::vector<Completion> all;
    std::vector<Completion> out(count);
    while (all.size() < count) {
      auto got = ring_.ior.wait_for_ios(std::span(out).first(count - all.size()), 1, timeout_ms);
      FF_ASSERT(got.is_ok(), "{}", got.status().to_string());
      all.insert(all.end(), out.begin(), out.begin() + static_cast<ptrdiff_t>(*got));
    }
    return all;
  }
  FakeBatchIo io_;
  Ring ring_;
  std::unique_ptr<RingServer> server_;
};

TEST_F(UsrbioServedRing, ManyReadsPerDoorbellLandInTheIov) {
  constexpr size_t kBlock = 4096;
  constexpr size_t kCount = 64;
  const auto data = pattern(kBlock * kCount + 100, 1);
  io_.add_file(42, data);
  start(kBlock * kCount, {.entries = 128});
  // Reads in reverse order: entry i reads file block i into iov block (kCount - 1 - i).
  for (size_t i = 0; i < kCount; ++i) {
    ASSERT_TRUE(ring_.ior.prep_read(42, i * kBlock, kBlock, (kCount - 1 - i) * kBlock, 1000 + i).is_ok());
  }
  ASSERT_EQ(*ring_.ior.submit(), kCount);
  auto done = reap(kCount);
  std::vector<bool> seen(kCount, false);
  for (const Completion& c : done) {
    ASSERT_GE(c.user_data, 1000u);
    const size_t i = c.user_data - 1000;
    ASSERT_LT(i, kCount);
    EXPECT_FALSE(seen[i]);
    seen[i] = true;
    EXPECT_EQ(c.result, static_cast<int64_t>(kBlock));
    EXPECT_TRUE(same_bytes(ring_.iov.data() + (kCount - 1 - i) * kBlock, data.data() + i * kBlock, kBlock)) << i;
  }
  // One doorbell, one wake-up, one read_batch with all 64 reads.
  EXPECT_EQ(io_.batch_sizes(), std::vector<size_t>{kCount});
  EXPECT_EQ(server_->stats().max_batch_entries, kCount);
  EXPECT_EQ(server_->stats().bytes_read, kBlock * kCount);
  EXPECT_EQ(io_.opens(), 1u);  // the file is opened once per ring
  EXPECT_EQ(ring_.ior.in_flight(), 0u);
}

TEST_F(UsrbioServedRing, ShortReadAtEndOfFileAndWritesReadBack) {
  io_.add_file(7, pattern(1000, 2));
  io_.add_file(8, {});
  start(1 << 16, {.entries = 8});
  ASSERT_TRUE(ring_.ior.prep_read(7, 900, 4096, 0, 1).is_ok());  // 100 bytes left in the file
  const auto payload = pattern(5000, 3);
  std::memcpy(ring_.iov.data() + 8192, payload.data(), payload.size());
  ASSERT_TRUE(ring_.ior.prep_write(8, 10, payload.size(), 8192, 2).is_ok());
  ASSERT_TRUE(ring_.ior.submit().is_ok());
  for (const Completion& c : reap(2)) {
    if (c.user_data == 1) {
      EXPECT_EQ(c.result, 100);
    } else {
      EXPECT_EQ(c.result, 5000);
    }
  }
  const auto file = io_.file(8);
  ASSERT_EQ(file.size(), 5010u);
  EXPECT_TRUE(same_bytes(file.data() + 10, payload.data(), payload.size()));
  // Close: the server drops its handles of the file; a read after it opens the file again.
  ASSERT_TRUE(ring_.ior.prep_close(8, 3).is_ok());
  ASSERT_TRUE(ring_.ior.submit().is_ok());
  auto closed = reap(1);
  EXPECT_EQ(closed[0].result, 0);
  EXPECT_EQ(io_.open_handles(), 1u);  // file 7's read handle stays open
  ASSERT_TRUE(ring_.ior.prep_close(8, 4).is_ok());
  ASSERT_TRUE(ring_.ior.submit().is_ok());
  EXPECT_EQ(reap(1)[0].result, -EBADF);  // nothing open for it any more
  server_.reset();
  EXPECT_EQ(io_.open_handles(), 0u);  // a stopped server closes what it opened
}

TEST_F(UsrbioServedRing, WrapAroundOfIndicesAndSlots) {
  constexpr size_t kBlock = 512;
  const auto data = pattern(kBlock * 64, 4);
  io_.add_file(3, data);
  // Indices start 5 below 2^32: the ring crosses the uint32 wrap and every slot many times.
  start(kBlock * 8, {.entries = 8, .start_index = UINT32_MAX - 5});
  uint64_t next = 0;
  for (int round = 0; round < 60; ++round) {
    const size_t count = 1 + static_cast<size_t>(round % 8);
    for (size_t k = 0; k < count; ++k, ++next) {
      ASSERT_TRUE(ring_.ior.prep_read(3, (next % 64) * kBlock, kBlock, k * kBlock, next).is_ok());
    }
    ASSERT_TRUE(ring_.ior.submit().is_ok());
    for (const Completion& c : reap(count)) {
      ASSERT_EQ(c.result, static_cast<int64_t>(kBlock));
      const size_t slot = c.user_data - (next - count);
      ASSERT_LT(slot, count);
      ASSERT_TRUE(same_bytes(ring_.iov.data() + slot * kBlock, data.data() + (c.user_data % 64) * kBlock, kBlock))
          << "round " << round << " io " << c.user_data;
    }
  }
  EXPECT_EQ(server_->stats().entries, next);
}

TEST_F(UsrbioServedRing, ReapingFreesCapacityAndPartialWaits) {
  io_.add_file(3, pattern(1 << 16, 5));
  start(1 << 16, {.entries = 4});
  for (int i = 0; i < 4; ++i) ASSERT_TRUE(ring_.ior.prep_read(3, 0, 100, 0, i).is_ok());
  ASSERT_TRUE(ring_.ior.submit().is_ok());
  std::vector<Completion> two(2);
  auto got = ring_.ior.wait_for_ios(two, 2, 10'000);  // reaps at most the output's size
  ASSERT_TRUE(got.is_ok()) << got.status().to_string();
  EXPECT_EQ(*got, 2u);
  EXPECT_EQ(ring_.ior.in_flight(), 2u);
  ASSERT_TRUE(ring_.ior.prep_read(3, 0, 100, 0, 10).is_ok());
  ASSERT_TRUE(ring_.ior.prep_read(3, 0, 100, 0, 11).is_ok());
  EXPECT_EQ(ring_.ior.prep_read(3, 0, 100, 0, 12).status().code(), StatusCode::kResourceExhausted);
  ASSERT_TRUE(ring_.ior.submit().is_ok());
  EXPECT_EQ(reap(4).size(), 4u);
}

// io_depth > 0 (3FS's batching): the server serves exactly io_depth entries per batch and holds a partial batch
// back; the client's timeout names that.
TEST_F(UsrbioServedRing, IoDepthServesFullBatchesOnly) {
  io_.add_file(3, pattern(1 << 16, 6));
  start(1 << 16, {.entries = 16, .io_depth = 4});
  for (int i = 0; i < 3; ++i) ASSERT_TRUE(ring_.ior.prep_read(3, i * 100, 100, i * 100, i).is_ok());
  ASSERT_EQ(*ring_.ior.submit(), 3u);
  std::vector<Completion> out(16);
  auto held = ring_.ior.wait_for_ios(out, 1, 300);
  ASSERT_EQ(held.status().code(), StatusCode::kDeadlineExceeded) << held.status().to_string();
  EXPECT_NE(held.status().message().find("io_depth is 4: 3 submitted entries wait for a full batch"),
            std::string::npos)
      << held.status().to_string();
  EXPECT_TRUE(io_.batch_sizes().empty());
  // The fourth entry fills the batch; then 9 more make two full batches and one held entry.
  ASSERT_TRUE(ring_.ior.prep_read(3, 300, 100, 300, 3).is_ok());
  ASSERT_EQ(*ring_.ior.submit(), 1u);
  EXPECT_EQ(reap(4).size(), 4u);
  for (int i = 0; i < 9; ++i) ASSERT_TRUE(ring_.ior.prep_read(3, 0, 100, 0, 10 + i).is_ok());
  ASSERT_EQ(*ring_.ior.submit(), 9u);
  EXPECT_EQ(reap(8).size(), 8u);
  EXPECT_EQ(ring_.ior.wait_for_ios(out, 1, 200).status().code(), StatusCode::kDeadlineExceeded);
  EXPECT_EQ(io_.batch_sizes(), (std::vector<size_t>{4, 4, 4}));
  EXPECT_EQ(server_->stats().max_batch_entries, 4u);
}

// io_depth > 0 with io_timeout_ms: a partial batch goes once its first entry waited that long.
TEST_F(UsrbioServedRing, IoDepthTimeoutReleasesAPartialBatch) {
  io_.add_file(3, pattern(1 << 16, 7));
  start(1 << 16, {.entries = 16, .io_depth = 8, .io_timeout_ms = 150});
  const auto begin = std::chrono::steady_clock::now();
  for (int i = 0; i < 3; ++i) ASSERT_TRUE(ring_.ior.prep_read(3, 0, 100, 0, i).is_ok());
  ASSERT_EQ(*ring_.ior.submit(), 3u);
  const std::vector<Completion> done = reap(3);
  const auto waited = std::chrono::steady_clock::now() - begin;
  EXPECT_EQ(done.size(), 3u);
  EXPECT_GE(waited, std::chrono::milliseconds(140));
  EXPECT_LT(waited, std::chrono::seconds(5));
  EXPECT_EQ(io_.batch_sizes(), std::vector<size_t>{3});
}

// io_depth < 0: whatever is submitted, at most -io_depth per batch.
TEST_F(UsrbioServedRing, NegativeIoDepthCapsBatches) {
  io_.add_file(3, pattern(1 << 16, 8));
  start(1 << 16, {.entries = 16, .io_depth = -2});
  for (int i = 0; i < 5; ++i) ASSERT_TRUE(ring_.ior.prep_read(3, 0, 100, 0, i).is_ok());
  ASSERT_EQ(*ring_.ior.submit(), 5u);
  EXPECT_EQ(reap(5).size(), 5u);
  std::vector<size_t> sizes = io_.batch_sizes();  // the batches may run at once: any order
  std::sort(sizes.begin(), sizes.end());
  EXPECT_EQ(sizes, (std::vector<size_t>{1, 2, 2}));
  EXPECT_EQ(server_->stats().max_batch_entries, 2u);
}

// Counts the BatchIo calls running at once (in FakeBatchIo's before-I/O hook, which holds each call until
// `wanted` calls have entered in all, or `hold` passed).
struct Overlap {
  std::atomic<int> active{0}, most{0}, entered{0};
  void enter(int wanted, std::chrono::milliseconds hold) {
    const int now = ++active;
    ++entered;
    for (int seen = most.load(); now > seen && !most.compare_exchange_weak(seen, now);) {
    }
    const auto until = std::chrono::steady_clock::now() + hold;
    while (entered.load() < wanted && std::chrono::steady_clock::now() < until) {
      std::this_thread::sleep_for(std::chrono::milliseconds(1));
    }
    --active;
  }
};

// Several batches of one ring run at once (io_depth 1 makes each entry a batch of its own).
TEST_F(UsrbioServedRing, BatchesRunInParallelUpToTheLimit) {
  io_.add_file(3, pattern(1 << 16, 9));
  Overlap overlap;
  std::atomic<int> calls{0};
  // The first four calls wait (up to 5 s) until four have entered, so four run together if the server
  // lets them; the last two run when slots free up.
  io_.set_before_io([&] { overlap.enter(calls++ < 4 ? 4 : 0, std::chrono::seconds(5)); });
  start(1 << 16, {.entries = 16, .io_depth = 1}, {.max_batches_in_flight = 4});
  for (int i = 0; i < 6; ++i) ASSERT_TRUE(ring_.ior.prep_read(3, i * 100, 100, i * 100, i).is_ok());
  ASSERT_EQ(*ring_.ior.submit(), 6u);
  const std::vector<Completion> done = reap(6, 20'000);
  EXPECT_EQ(done.size(), 6u);
  for (const Completion& c : done) EXPECT_EQ(c.result, 100);
  EXPECT_EQ(overlap.most.load(), 4);  // never more than the limit
  EXPECT_EQ(io_.batch_sizes(), std::vector<size_t>(6, 1));
}

TEST_F(UsrbioServedRing, OneBatchAtATimeWhenTheLimitIsOne) {
  io_.add_file(3, pattern(1 << 16, 10));
  Overlap overlap;
  io_.set_before_io([&] { overlap.enter(2, std::chrono::milliseconds(30)); });
  start(1 << 16, {.entries = 16, .io_depth = 1}, {.max_batches_in_flight = 1});
  for (int i = 0; i < 4; ++i) ASSERT_TRUE(ring_.ior.prep_read(3, 0, 100, 0, i).is_ok());
  ASSERT_EQ(*ring_.ior.submit(), 4u);
  EXPECT_EQ(reap(4).size(), 4u);
  EXPECT_EQ(overlap.most.load(), 1);
}

// A close waits for the batches before it, so it completes after their I/O of its file.
TEST_F(UsrbioServedRing, CloseFollowsEarlierBatchesOfItsFile) {
  io_.add_file(3, pattern(1 << 16, 11));
  io_.set_batch_delay_ms(100);
  start(1 << 16, {.entries = 16, .io_depth = 1}, {.max_batches_in_flight = 4});
  ASSERT_TRUE(ring_.ior.prep_read(3, 0, 100, 0, 1).is_ok());
  ASSERT_TRUE(ring_.ior.prep_read(3, 100, 100, 100, 2).is_ok());
  ASSERT_TRUE(ring_.ior.prep_close(3, 3).is_ok());
  ASSERT_EQ(*ring_.ior.submit(), 3u);
  const std::vector<Completion> done = reap(3);
  ASSERT_EQ(done.size(), 3u);
  EXPECT_EQ(done[2].user_data, 3u);  // the close last
  EXPECT_EQ(done[2].result, 0);
  EXPECT_EQ(done[0].result, 100);
  EXPECT_EQ(done[1].result, 100);
  EXPECT_EQ(io_.open_handles(), 0u);
}

TEST(UsrbioRing, IoDepthOutsideTheRingIsRejected) {
  Ring ring = make_ring(1 << 16, {.entries = 4});
  const std::string name = unique_name("deep");
  auto too_deep = Ior::create(name, ring.iov, {.entries = 4, .io_depth = 5});
  ASSERT_EQ(too_deep.status().code(), StatusCode::kInvalidArgument);
  EXPECT_NE(too_deep.status().message().find("io_depth=5"), std::string::npos) << too_deep.status().to_string();
  EXPECT_EQ(Ior::create(name, ring.iov, {.entries = 4, .io_depth = -5}).status().code(),
            StatusCode::kInvalidArgument);
  auto negative_timeout = Ior::create(name, ring.iov, {.entries = 4, .io_depth = 2, .io_timeout_ms = -1});
  ASSERT_EQ(negative_timeout.status().code(), StatusCode::kInvalidArgument);
  EXPECT_NE(negative_timeout.status().message().find("io_timeout_ms=-1"), std::string::npos);
  EXPECT_TRUE(Ior::create(name, ring.iov, {.entries = 4, .io_depth = -4}).is_ok());
}

// Overwrites the submission slot `index` in shared memory, the way a buggy client could.
void scribble(const Ior& ior, uint32_t index, const SubmitEntry& entry) {
  struct stat info {};
  auto mapping = internal::Mapping::open(ior.path(), &info);
  FF_ASSERT(mapping.is_ok());
  auto* slots = reinterpret_cast<SubmitEntry*>(mapping->data() + internal::sq_offset());
  slots[index & (ior.capacity() - 1)] = entry;
}

TEST_F(UsrbioServedRing, BadEntriesFailAloneWithErrno) {
  const auto data = pattern(8192, 6);
  io_.add_file(5, data);
  io_.add_file(6, pattern(100, 7), /*owner_uid=*/1234, /*mode=*/0600);
  const uint32_t uid = ::getuid() == 0 ? 1000 : ::getuid();
  ASSERT_NE(uid, 1234u);
  start(8192, {.entries = 16}, {.caller = meta::Caller{.uid = uid, .gid = uid}});
  ASSERT_TRUE(ring_.ior.prep_read(5, 0, 4096, 0, 1).is_ok());        // good
  ASSERT_TRUE(ring_.ior.prep_read(999, 0, 100, 0, 2).is_ok());       // unknown inode -> EBADF
  ASSERT_TRUE(ring_.ior.prep_read(6, 0, 100, 0, 3).is_ok());         // not ours, mode 0600 -> EACCES
  auto bad_range = ring_.ior.prep_read(5, 0, 100, 0, 4);             // made out of range below
  auto bad_op = ring_.ior.prep_read(5, 0, 100, 0, 5);                // op 77 below
  auto zero_file = ring_.ior.prep_read(5, 0, 100, 0, 6);             // file 0 below
  ASSERT_TRUE(ring_.ior.prep_read(5, 4096, 4096, 4096, 7).is_ok());  // good
  ASSERT_TRUE(bad_range.is_ok() && bad_op.is_ok() && zero_file.is_ok());
  scribble(ring_.ior, *bad_range,
           {.file = 5, .offset = 0, .length = 4096, .iov_offset = 8000, .user_data = 4, .op = 1});
  scribble(ring_.ior, *bad_op, {.file = 5, .offset = 0, .length = 1, .iov_offset = 0, .user_data = 5, .op = 77});
  scribble(ring_.ior, *zero_file, {.file = 0, .offset = 0, .length = 1, .iov_offset = 0, .user_data = 6, .op = 1});
  ASSERT_TRUE(ring_.ior.submit().is_ok());
  std::map<uint64_t, int64_t> results;
  for (const Completion& c : reap(7)) results[c.user_data] = c.result;
  EXPECT_EQ(results[1], 4096);
  EXPECT_EQ(results[2], -EBADF);
  EXPECT_EQ(results[3], -EACCES);
  EXPECT_EQ(results[4], -EINVAL);
  EXPECT_EQ(results[5], -EINVAL);
  EXPECT_EQ(results[6], -EBADF);
  EXPECT_EQ(results[7], 4096);
  EXPECT_TRUE(same_bytes(ring_.iov.data(), data.data(), 8192));
  EXPECT_EQ(server_->stats().errors, 5u);
  EXPECT_TRUE(server_->running());
  // The ring keeps working after bad entries.
  ASSERT_TRUE(ring_.ior.prep_read(5, 0, 10, 0, 8).is_ok());
  ASSERT_TRUE(ring_.ior.submit().is_ok());
  EXPECT_EQ(reap(1)[0].result, 10);
}

TEST_F(UsrbioServedRing, ShrunkIovFailsEntriesInsteadOfFaulting) {
  io_.add_file(5, pattern(8192, 13));
  start(8192, {.entries = 4});
  // The client shrinks its Iov under the server: touching the lost pages would be SIGBUS in the server.
  ASSERT_EQ(::truncate(ring_.iov.path().c_str(), 4096), 0);
  ASSERT_TRUE(ring_.ior.prep_read(5, 0, 100, 0, 1).is_ok());
  ASSERT_TRUE(ring_.ior.submit().is_ok());
  EXPECT_EQ(reap(1)[0].result, -EFAULT);
  ASSERT_EQ(::truncate(ring_.iov.path().c_str(), 8192), 0);
  ASSERT_TRUE(ring_.ior.prep_read(5, 0, 100, 0, 2).is_ok());
  ASSERT_TRUE(ring_.ior.submit().is_ok());
  EXPECT_EQ(reap(1)[0].result, 100);
}

TEST_F(UsrbioServedRing, CorruptIndicesMarkTheRingBroken) {
  io_.add_file(5, pattern(100, 8));
  start(4096, {.entries = 4});
  {
    struct stat info {};
    auto mapping = internal::Mapping::open(ring_.ior.path(), &info);
    ASSERT_TRUE(mapping.is_ok());
    auto* header = reinterpret_cast<internal::RingHeader*>(mapping->data());
    header->sq_tail.store(header->sq_tail.load() + 1000);  // 1000 entries in a ring of 4
    header->sq_doorbell.fetch_add(1);
    internal::futex_wake(header->sq_doorbell, 1);
  }
  for (int i = 0; i < 200 && server_->running(); ++i) std::this_thread::sleep_for(std::chrono::milliseconds(10));
  EXPECT_FALSE(server_->running());
  EXPECT_EQ(ring_.ior.server_status().state, ServerStatus::State::kBroken);
  ASSERT_TRUE(ring_.ior.prep_read(5, 0, 10, 0, 1).is_ok());
  EXPECT_EQ(ring_.ior.submit().status().code(), StatusCode::kUnavailable);
}

TEST_F(UsrbioServedRing, StoppedServerFailsWaitsFast) {
  io_.add_file(5, pattern(100, 9));
  io_.set_batch_delay_ms(300);
  start(4096, {.entries = 4});
  ASSERT_TRUE(ring_.ior.prep_read(5, 0, 10, 0, 1).is_ok());
  ASSERT_TRUE(ring_.ior.submit().is_ok());
  std::this_thread::sleep_for(std::chrono::milliseconds(50));  // the server is inside the batch
  server_->stop();                                             // finishes the batch, then detaches
  EXPECT_EQ(reap(1)[0].result, 10);
  ASSERT_TRUE(ring_.ior.prep_read(5, 0, 10, 0, 2).is_ok());
  auto refused = ring_.ior.submit();
  ASSERT_EQ(refused.status().code(), StatusCode::kUnavailable);
  EXPECT_NE(refused.status().message().find("detached"), std::string::npos) << refused.status().to_string();
}

TEST_F(UsrbioServedRing, ConsumerOnAnotherThread) {
  constexpr int kTotal = 2000;
  io_.add_file(9, pattern(1 << 16, 10));
  start(1 << 16, {.entries = 64});
  std::atomic<int> reaped{0};
  std::atomic<bool> failed{false};
  std::thread consumer([&] {
    std::vector<Completion> out(64);
    int64_t expected_sum = 0, sum = 0;
    for (int i = 0; i < kTotal; ++i) expected_sum += i;
    while (reaped.load() < kTotal && !failed.load()) {
      auto got = ring_.ior.wait_for_ios(out, 1, 10'000);
      if (!got.is_ok()) {
        failed = true;
        ADD_FAILURE() << got.status().to_string();
        return;
      }
      for (size_t k = 0; k < *got; ++k) {
        if (out[k].result != 64) failed = true;
        sum += static_cast<int64_t>(out[k].user_data);
      }
      reaped += static_cast<int>(*got);
    }
    EXPECT_EQ(sum, expected_sum);
  });
  int submitted = 0;
  auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(30);
  while (submitted < kTotal && !failed.load() && std::chrono::steady_clock::now() < deadline) {
    auto prepared = ring_.ior.prep_read(9, (submitted % 1000) * 64, 64, (submitted % 64) * 64, submitted);
    // No ASSERT here: returning early would leave the consumer thread unjoined.
    if (prepared.is_ok()) {
      ++submitted;
      if (submitted % 7 == 0 || submitted == kTotal) {
        if (!ring_.ior.submit().is_ok()) failed = true;
      }
    } else {
      if (prepared.status().code() != StatusCode::kResourceExhausted) failed = true;
      if (!ring_.ior.submit().is_ok()) failed = true;
      std::this_thread::yield();
    }
  }
  consumer.join();
  EXPECT_FALSE(failed.load());
  EXPECT_EQ(reaped.load(), kTotal);
  // Fewer wake-ups than entries: the server takes what accumulated while it worked.
  EXPECT_LT(server_->stats().wakeups, static_cast<uint64_t>(kTotal));
}

// A server in another process: data crosses processes through the shared memory; then the server is
// SIGKILLed and the client's wait times out with a message that names the dead server.
TEST(UsrbioProcess, ServerInAnotherProcessThenKilled) {
  constexpr size_t kBlock = 1 << 16;
  constexpr size_t kCount = 32;
  Ring ring = make_ring(kBlock * kCount, {.entries = 64});
  const std::string name = ring.ior.name();
  const auto data = pattern(kBlock * kCount, 11);
  const pid_t child = ::fork();
  ASSERT_GE(child, 0);
  if (child == 0) {
    // The server process: its own BatchIo with the same file content; serves until killed.
    FakeBatchIo io;
    io.add_file(77, data);
    auto server = RingServer::start(name, io, {.heartbeat_interval_ms = 20});
    if (!server.is_ok()) ::_exit(3);
    for (int i = 0; i < 600; ++i) ::usleep(100'000);  // at most 60 s, then exit (never a stray process)
    ::_exit(0);
  }
  auto kill_child = [&] {
    ::kill(child, SIGKILL);
    int status = 0;
    ::waitpid(child, &status, 0);
  };
  // Wait for the other process to attach (bounded).
  for (int i = 0; i < 500 && ring.ior.server_status().state != ServerStatus::State::kAttached; ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  ASSERT_EQ(ring.ior.server_status().state, ServerStatus::State::kAttached) << "server process did not attach";
  EXPECT_EQ(ring.ior.server_status().server_pid, static_cast<uint32_t>(child));
  for (size_t i = 0; i < kCount; ++i) ASSERT_TRUE(ring.ior.prep_read(77, i * kBlock, kBlock, i * kBlock, i).is_ok());
  ASSERT_TRUE(ring.ior.submit().is_ok());
  std::vector<Completion> out(kCount);
  size_t total = 0;
  while (total < kCount) {
    auto got = ring.ior.wait_for_ios(std::span(out).first(kCount - total), 1, 10'000);
    if (!got.is_ok()) kill_child();
    ASSERT_TRUE(got.is_ok()) << got.status().to_string();
    for (size_t k = 0; k < *got; ++k) {
      EXPECT_EQ(out[k].result, static_cast<int64_t>(kBlock));
    }
    total += *got;
  }
  EXPECT_TRUE(same_bytes(ring.iov.data(), data.data(), data.size()));

  kill_child();
  ASSERT_TRUE(ring.ior.prep_read(77, 0, kBlock, 0, 99).is_ok());
  ASSERT_TRUE(ring.ior.submit().is_ok());  // a killed server cannot say it left: the ring still says attached
  std::this_thread::sleep_for(std::chrono::milliseconds(200));
  auto timed_out = ring.ior.wait_for_ios(out, 1, 300);
  ASSERT_EQ(timed_out.status().code(), StatusCode::kDeadlineExceeded);
  const std::string& message = timed_out.status().message();
  EXPECT_NE(message.find(fmt::format("pid {}", child)), std::string::npos) << message;
  EXPECT_NE(message.find("last beat"), std::string::npos) << message;
  EXPECT_GE(ring.ior.server_status().heartbeat_age_ms, 400);

  // A new server (here in this process) takes over the ring from the shared indices and serves the entry
  // the dead one never took; a live server would have been refused (EEXIST), a silent one is not.
  // A server counts as live while its heartbeat is younger than 5 intervals (500 ms here).
  for (int i = 0; i < 100 && ring.ior.server_status().heartbeat_age_ms <= 600; ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
  FakeBatchIo io;
  io.add_file(77, data);
  auto replacement = RingServer::start(name, io, {});
  ASSERT_TRUE(replacement.is_ok()) << replacement.status().to_string();
  auto recovered = ring.ior.wait_for_ios(out, 1, 10'000);
  ASSERT_TRUE(recovered.is_ok()) << recovered.status().to_string();
  EXPECT_EQ(out[0].user_data, 99u);
  EXPECT_EQ(out[0].result, static_cast<int64_t>(kBlock));
}

// A child process that creates the Iov and Ior `name` and then sleeps (up to 60 s) until killed; its
// pid once both exist, or -1.
pid_t spawn_ring_owner(const std::string& name) {
  int ready[2];
  if (::pipe(ready) != 0) return -1;
  const pid_t child = ::fork();
  if (child == 0) {
    auto iov = Iov::create(name, 4096);
    auto ior = iov.is_ok() ? Ior::create(name, *iov, {.entries = 4}) : Result<Ior>(iov.status());
    const char byte = ior.is_ok() ? 'y' : 'n';
    (void)!::write(ready[1], &byte, 1);
    for (int i = 0; i < 600; ++i) ::usleep(100'000);
    ::_exit(0);
  }
  char byte = 0;
  const bool created = child > 0 && ::read(ready[0], &byte, 1) == 1 && byte == 'y';
  ::close(ready[0]);
  ::close(ready[1]);
  if (child > 0 && !created) {
    ::kill(child, SIGKILL);
    ::waitpid(child, nullptr, 0);
  }
  return created ? child : -1;
}

// The ring's owner dies: the server notices (pid gone) and stops; the registry reaps it.
TEST(UsrbioRegistryTest, OwnerDeathAndRegistryErrors) {
  FakeBatchIo io;
  UsrbioRegistry registry(io, {.reap_interval_ms = 100});
  const std::string name = unique_name("owned");
  const pid_t child = spawn_ring_owner(name);
  ASSERT_GT(child, 0);
  const meta::Caller caller{.uid = ::getuid(), .gid = ::getgid()};
  const std::string target = "/dev/shm/ff-ior-" + name;
  // Bad registrations, with the errno ff-fuse replies with.
  EXPECT_EQ(meta::errno_of(registry.register_ring("a/b", target, caller, child)), EINVAL);
  EXPECT_EQ(meta::errno_of(registry.register_ring(name, "/tmp/evil", caller, child)), EINVAL);
  EXPECT_EQ(meta::errno_of(registry.register_ring(name, "/dev/shm/ff-ior-other", caller, child)), EINVAL);
  EXPECT_EQ(meta::errno_of(registry.register_ring("nosuch", "ff-ior-nosuch", caller, child)), ENOENT);
  EXPECT_EQ(meta::errno_of(registry.unregister_ring("nosuch")), ENOENT);
  if (::getuid() == 0) {
    // Another user may not register a root-owned ring.
    EXPECT_EQ(meta::errno_of(registry.register_ring(name, target, meta::Caller{.uid = 4321, .gid = 4321}, child)),
              EACCES);
  }
  ASSERT_TRUE(registry.register_ring(name, target, caller, child).is_ok());
  EXPECT_EQ(meta::errno_of(registry.register_ring(name, target, caller, child)), EEXIST);
  EXPECT_EQ(registry.names(), std::vector<std::string>{name});
  EXPECT_EQ(*registry.target_of(name), target);

  ::kill(child, SIGKILL);
  int status = 0;
  ::waitpid(child, &status, 0);
  // The server checks its owner once a second; the registry reaps every 100 ms.
  for (int i = 0; i < 500 && !registry.names().empty(); ++i) std::this_thread::sleep_for(std::chrono::milliseconds(10));
  EXPECT_TRUE(registry.names().empty());
  // The registry removed the killed owner's shm files (ring and Iov).
  struct stat info {};
  EXPECT_NE(::stat(("/dev/shm/ff-ior-" + name).c_str(), &info), 0);
  EXPECT_NE(::stat(("/dev/shm/ff-iov-" + name).c_str(), &info), 0);
  EXPECT_TRUE(Iov::remove_stale(name).is_ok());
}

// A dead owner's ring whose Iov another registered ring still maps: the ring's file goes, the Iov's
// stays; a registry with remove_files_of_dead_owners off leaves both.
TEST(UsrbioRegistryTest, DeadOwnerFilesRemovedUnlessShared) {
  FakeBatchIo io;
  const meta::Caller caller{.uid = ::getuid(), .gid = ::getgid()};
  for (const bool remove : {true, false}) {
    SCOPED_TRACE(remove);
    UsrbioRegistry registry(io, {.reap_interval_ms = 100, .remove_files_of_dead_owners = remove});
    const std::string name = unique_name("shared");
    const pid_t child = spawn_ring_owner(name);
    ASSERT_GT(child, 0);
    // This process maps the child's Iov and serves a second ring on it.
    auto iov = Iov::open(name);
    ASSERT_TRUE(iov.is_ok()) << iov.status().to_string();
    const std::string second = name + "b";
    auto ior = Ior::create(second, *iov, {.entries = 4});
    ASSERT_TRUE(ior.is_ok()) << ior.status().to_string();
    ASSERT_TRUE(registry.register_ring(name, "ff-ior-" + name, caller, child).is_ok());
    ASSERT_TRUE(registry.register_ring(second, "ff-ior-" + second, caller, ::getpid()).is_ok());
    ::kill(child, SIGKILL);
    int status = 0;
    ::waitpid(child, &status, 0);
    for (int i = 0; i < 500 && registry.names().size() > 1; ++i) {
      std::this_thread::sleep_for(std::chrono::milliseconds(10));
    }
    EXPECT_EQ(registry.names(), std::vector<std::string>{second});
    struct stat info {};
    EXPECT_EQ(::stat(("/dev/shm/ff-ior-" + name).c_str(), &info) == 0, !remove);
    EXPECT_EQ(::stat(("/dev/shm/ff-iov-" + name).c_str(), &info), 0);  // the live ring maps it
    ASSERT_TRUE(registry.unregister_ring(second).is_ok());
    EXPECT_TRUE(Iov::remove_stale(name).is_ok());
  }
}

TEST(UsrbioRegistryTest, RegisterServeUnregister) {
  FakeBatchIo io;
  io.add_file(12, pattern(4096, 12));
  UsrbioRegistry registry(io);
  Ring ring = make_ring(4096, {.entries = 4});
  const std::string name = ring.ior.name();
  ASSERT_TRUE(registry.register_ring(name, "ff-ior-" + name, meta::Caller{}, ::getpid()).is_ok());
  ASSERT_TRUE(ring.ior.prep_read(12, 0, 4096, 0, 1).is_ok());
  ASSERT_TRUE(ring.ior.submit().is_ok());
  std::vector<Completion> out(1);
  auto got = ring.ior.wait_for_ios(out, 1, 10'000);
  ASSERT_TRUE(got.is_ok()) << got.status().to_string();
  EXPECT_EQ(out[0].result, 4096);
  // A second server on the same live ring is refused.
  auto second = RingServer::start(name, io);
  EXPECT_EQ(meta::errno_of(second.status()), EEXIST) << second.status().to_string();
  ASSERT_TRUE(registry.unregister_ring(name).is_ok());
  EXPECT_EQ(ring.ior.server_status().state, ServerStatus::State::kDetached);
  EXPECT_TRUE(registry.names().empty());
  // Re-registering attaches a new server that continues where the last one stopped.
  ASSERT_TRUE(registry.register_ring(name, "ff-ior-" + name, meta::Caller{}, ::getpid()).is_ok());
  ASSERT_TRUE(ring.ior.prep_read(12, 100, 10, 0, 2).is_ok());
  ASSERT_TRUE(ring.ior.submit().is_ok());
  got = ring.ior.wait_for_ios(out, 1, 10'000);
  ASSERT_TRUE(got.is_ok()) << got.status().to_string();
  EXPECT_EQ(out[0].user_data, 2u);
  EXPECT_EQ(out[0].result, 10);
}

}  // namespace
}  // namespace ff::fs::usrbio

namespace ff::fs::usrbio {
namespace {

// Several rings of one registry at once, each driven by its own client thread: every ring's data is
// its own (the servers share only the BatchIo).
TEST(UsrbioRegistryTest, ManyRingsServeConcurrently) {
  constexpr int kRings = 4;
  constexpr int kRounds = 150;
  constexpr size_t kBlock = 1024;
  FakeBatchIo io;
  for (int r = 0; r < kRings; ++r) io.add_file(100 + r, pattern(64 * kBlock, 30 + r));
  UsrbioRegistry registry(io);
  std::vector<Ring> rings;
  for (int r = 0; r < kRings; ++r) {
    rings.push_back(make_ring(8 * kBlock, {.entries = 8}));
    const std::string name = rings.back().ior.name();
    ASSERT_TRUE(registry.register_ring(name, "ff-ior-" + name, meta::Caller{}, ::getpid()).is_ok());
  }
  EXPECT_EQ(registry.names().size(), static_cast<size_t>(kRings));
  std::atomic<int> bad{0};
  std::vector<std::thread> clients;
  for (int r = 0; r < kRings; ++r) {
    clients.emplace_back([&, r] {
      Ior& ior = rings[r].ior;
      const auto expected = pattern(64 * kBlock, 30 + r);
      std::vector<Completion> out(8);
      for (int round = 0; round < kRounds && bad.load() == 0; ++round) {
        for (size_t k = 0; k < 8; ++k) {
          if (!ior.prep_read(100 + r, ((round + k) % 64) * kBlock, kBlock, k * kBlock, k).is_ok()) ++bad;
        }
        if (!ior.submit().is_ok()) ++bad;
        size_t reaped = 0;
        while (reaped < 8 && bad.load() == 0) {
          auto got = ior.wait_for_ios(std::span(out).first(8 - reaped), 1, 10'000);
          if (!got.is_ok()) {
            ++bad;
            break;
          }
          for (size_t k = 0; k < *got; ++k) {
            const uint64_t slot = out[k].user_data;
            if (out[k].result != static_cast<int64_t>(kBlock) ||
                !same_bytes(rings[r].iov.data() + slot * kBlock, expected.data() + ((round + slot) % 64) * kBlock,
                            kBlock)) {
              ++bad;
            }
          }
          reaped += *got;
        }
      }
    });
  }
  for (auto& thread : clients) thread.join();
  EXPECT_EQ(bad.load(), 0);
  for (const Ring& ring : rings) EXPECT_TRUE(registry.unregister_ring(ring.ior.name()).is_ok());
}

}  // namespace
}  // namespace ff::fs::usrbio

namespace ff::fs::usrbio {
namespace {

using testing::FakeBatchIo;
using testing::pattern;

// The SIGBUS guard: an access to a guarded mapping of a file that shrank under it reads zeros and is
// counted; the same access to an unguarded mapping kills the process.
TEST(UsrbioFaultGuard, ShrunkGuardedMappingIsCountedNotFatal) {
  const std::string name = unique_name("guard");
  auto iov = Iov::create(name, 1 << 16);
  ASSERT_TRUE(iov.is_ok()) << iov.status().to_string();
  std::memset(iov->data(), 0x5a, iov->size());
  struct stat info {};
  auto server_view = internal::Mapping::open(iov->path(), &info);
  ASSERT_TRUE(server_view.is_ok()) << server_view.status().to_string();
  EXPECT_EQ(static_cast<uint8_t>(server_view->data()[100]), 0x5a);
  const int slot = internal::fault_guard_add(server_view->data(), server_view->bytes());
  ASSERT_GE(slot, 0);
  ASSERT_EQ(::truncate(iov->path().c_str(), 0), 0);
  // The shrunk pages are gone from both mappings; only the guarded one survives touching them.
  EXPECT_DEATH({ [[maybe_unused]] volatile uint8_t byte = static_cast<uint8_t>(iov->data()[8192]); }, "");
  volatile uint8_t* guarded = reinterpret_cast<volatile uint8_t*>(server_view->data());
  EXPECT_EQ(guarded[8192], 0);
  guarded[8193] = 7;  // writes land on the anonymous page
  EXPECT_EQ(guarded[8193], 7);
  EXPECT_EQ(internal::fault_guard_faults(slot), 1u);  // one page replaced
  EXPECT_EQ(guarded[40000], 0);
  EXPECT_EQ(internal::fault_guard_faults(slot), 2u);
  internal::fault_guard_remove(slot);
  EXPECT_EQ(internal::fault_guard_faults(slot), 0u);
}

// A client that shrinks its Iov in the window between the server's size check and the copy (here:
// inside the BatchIo, where FileClient's threads copy): the batch's entries fail with -EFAULT, the
// ring is marked broken, and the serving process lives on.
TEST(RingServerTest, IovShrunkDuringBatchFailsItAndBreaksTheRing) {
  Ring ring = make_ring(1 << 16, {.entries = 4});
  FakeBatchIo io;
  io.add_file(12, pattern(1 << 15, 12));
  const std::string iov_path = ring.iov.path();
  io.set_before_io([&] { ASSERT_EQ(::truncate(iov_path.c_str(), 0), 0); });
  auto server = RingServer::start(ring.ior.name(), io, {});
  ASSERT_TRUE(server.is_ok()) << server.status().to_string();
  ASSERT_TRUE(ring.ior.prep_read(12, 0, 1 << 15, 0, 5).is_ok());
  ASSERT_TRUE(ring.ior.submit().is_ok());
  std::vector<Completion> out(1);
  auto got = ring.ior.wait_for_ios(out, 1, 10'000);
  if (got.is_ok()) {
    EXPECT_EQ(out[0].user_data, 5u);
    EXPECT_EQ(out[0].result, -EFAULT);
  } else {  // the client looked at the state between the completion's publication and its wait
    EXPECT_EQ(got.status().code(), StatusCode::kUnavailable) << got.status().to_string();
    EXPECT_NE(got.status().message().find("broken"), std::string::npos) << got.status().to_string();
  }
  for (int i = 0; i < 500 && (*server)->running(); ++i) std::this_thread::sleep_for(std::chrono::milliseconds(10));
  EXPECT_FALSE((*server)->running());
  EXPECT_EQ(ring.ior.server_status().state, ServerStatus::State::kBroken);
}

}  // namespace
}  // namespace ff::fs::usrbio
