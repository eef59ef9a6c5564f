// usrbio end to end over the real native client: a RingServer whose BatchIo is FileClientBatchIo over
// an in-process cluster (mgmtd + 3 storage services over gRPC on 127.0.0.1, tests/fs/testing/cluster_fixture.h).
#include <gtest/gtest.h>
#include <unistd.h>

#include <cstring>
#include <map>

#include "fs/testing/cluster_fixture.h"
#include "fake_batch_io.h"
#include "ff/fs/usrbio.h"

namespace ff::fs::usrbio {
namespace {

using ff::fs::testing::InProcessCluster;
using testing::pattern;

constexpr uint32_t kChunk = 64 << 10;
const meta::Caller kRoot{};

std::string unique_name(std::string_view what) {
  static int counter = 0;
  return fmt::format("c{}-{}-{}", ::getpid(), what, counter++);
}

class UsrbioClientTest : public ::testing::Test {
 protected:
  void SetUp() override {
    auto cluster = InProcessCluster::start({.chunk_size = kChunk});
    ASSERT_TRUE(cluster.is_ok()) << cluster.status().to_string();
    cluster_ = std::move(*cluster);
    auto client = cluster_->make_client();
    ASSERT_TRUE(client.is_ok()) << client.status().to_string();
    client_ = std::move(*client);
    io_ = std::make_unique<FileClientBatchIo>(*client_);
  }
  void TearDown() override {
    server_.reset();
    io_.reset();
    client_.reset();
    cluster_.reset();
  }

  // Creates a file with `data` through the FileClient; returns its inode.
  meta::InodeId make_file(const std::string& name, const std::vector<std::byte>& data, uint32_t mode = 0644) {
    auto fh = client_->create(kRoot, meta::kRootInode, name, mode, meta::kOpenRead | meta::kOpenWrite);
    EXPECT_TRUE(fh.is_ok()) << fh.status().to_string();
    if (!fh.is_ok()) return 0;
    if (!data.empty()) {
      auto written = client_->write(*fh, 0, data);
      EXPECT_TRUE(written.is_ok()) << written.status().to_string();
    }
    auto inode = client_->stat(*fh);
    EXPECT_TRUE(client_->close(*fh).is_ok());
    return inode.is_ok() ? inode->id : 0;
  }

  void start_ring(uint64_t iov_bytes, uint32_t entries) {
    const std::string name = unique_name("ring");
    auto iov = Iov::create(name, iov_bytes);
    ASSERT_TRUE(iov.is_ok()) << iov.status().to_string();
    iov_ = std::move(*iov);
    auto ior = Ior::create(name, iov_, {.entries = entries});
    ASSERT_TRUE(ior.is_ok()) << ior.status().to_string();
    ior_ = std::move(*ior);
    auto server = RingServer::start(name, *io_, {});
    ASSERT_TRUE(server.is_ok()) << server.status().to_string();
    server_ = std::move(*server);
  }

  std::map<uint64_t, int64_t> reap(size_t count) {
    std::map<uint64_t, int64_t> results;
    std::vector<Completion> out(count);
    while (results.size() < count) {
      auto got = ior_.wait_for_ios(std::span(out).first(count - results.size()), 1, 30'000);
      EXPECT_TRUE(got.is_ok()) << got.status().to_string();
      if (!got.is_ok()) break;
      for (size_t k = 0; k < *got; ++k) results[out[k].user_data] = out[k].result;
    }
    return results;
  }

  std::unique_ptr<InProcessCluster> cluster_;
  std::unique_ptr<FileClient> client_;
  std::unique_ptr<FileClientBatchIo> io_;
  Iov iov_;
  Ior ior_;
  std::unique_ptr<RingServer> server_;
};

TEST_F(UsrbioClientTest, ReadsAcrossChunksLandInTheIovAndWritesReadBack) {
  const auto data = pattern(10 * kChunk + 777, 21);
  const meta::InodeId inode = make_file("data", data);
  ASSERT_NE(inode, 0u);
  constexpr size_t kReads = 24;
  constexpr size_t kLength = 40'000;  // unaligned, so many reads cross a chunk boundary
  start_ring(kReads * kLength + 4 * kChunk, 64);
  for (size_t i = 0; i < kReads; ++i) {
    ASSERT_TRUE(ior_.prep_read(inode, 1000 + i * 25'000, kLength, i * kLength, i).is_ok());
  }
  // The last one runs past the end of the file: a short read.
  ASSERT_TRUE(ior_.prep_read(inode, data.size() - 100, 4096, kReads * kLength, 100).is_ok());
  ASSERT_EQ(*ior_.submit(), kReads + 1);
  auto results = reap(kReads + 1);
  for (size_t i = 0; i < kReads; ++i) {
    ASSERT_EQ(results[i], static_cast<int64_t>(kLength)) << i;
    EXPECT_EQ(std::memcmp(iov_.data() + i * kLength, data.data() + 1000 + i * 25'000, kLength), 0) << i;
  }
  EXPECT_EQ(results[100], 100);
  EXPECT_EQ(std::memcmp(iov_.data() + kReads * kLength, data.data() + data.size() - 100, 100), 0);
  EXPECT_EQ(server_->stats().max_batch_entries, kReads + 1);
  EXPECT_EQ(server_->stats().batches, 1u);  // one read_batch for the whole doorbell

  // Writes from the Iov into a new file, then read back through the FileClient.
  const meta::InodeId target = make_file("written", {});
  const auto payload = pattern(3 * kChunk + 5, 22);
  std::memcpy(iov_.data(), payload.data(), payload.size());
  ASSERT_TRUE(ior_.prep_write(target, 0, kChunk, 0, 1).is_ok());
  ASSERT_TRUE(ior_.prep_write(target, kChunk, payload.size() - kChunk, kChunk, 2).is_ok());
  ASSERT_TRUE(ior_.submit().is_ok());
  results = reap(2);
  EXPECT_EQ(results[1], static_cast<int64_t>(kChunk));
  EXPECT_EQ(results[2], static_cast<int64_t>(payload.size() - kChunk));
  // Closing the ring's write handle makes the length exact in meta.
  ASSERT_TRUE(ior_.prep_close(target, 3).is_ok());
  ASSERT_TRUE(ior_.submit().is_ok());
  EXPECT_EQ(reap(1)[3], 0);
  auto fh = client_->open(kRoot, target, meta::kOpenRead);
  ASSERT_TRUE(fh.is_ok()) << fh.status().to_string();
  std::vector<std::byte> back(payload.size() + 10);
  auto got = client_->read(*fh, 0, back);
  ASSERT_TRUE(got.is_ok()) << got.status().to_string();
  ASSERT_EQ(*got, payload.size());
  EXPECT_EQ(std::memcmp(back.data(), payload.data(), payload.size()), 0);
  EXPECT_TRUE(client_->close(*fh).is_ok());
}

TEST_F(UsrbioClientTest, BadEntriesGetErrnoOthersSucceed) {
  const auto data = pattern(2 * kChunk, 23);
  const meta::InodeId inode = make_file("ok", data);
  const meta::InodeId dir = [&] {
    auto made = cluster_->meta().mkdir(kRoot, meta::kRootInode, "dir", 0755);
    EXPECT_TRUE(made.is_ok()) << made.status().to_string();
    return made.is_ok() ? made->id : meta::InodeId{0};
  }();
  start_ring(4 * kChunk, 16);
  ASSERT_TRUE(ior_.prep_read(inode, 0, kChunk, 0, 1).is_ok());
  ASSERT_TRUE(ior_.prep_read(987'654'321, 0, 100, 0, 2).is_ok());  // no such inode
  ASSERT_TRUE(ior_.prep_read(dir, 0, 100, 0, 3).is_ok());          // a directory
  ASSERT_TRUE(ior_.prep_read(inode, kChunk, kChunk, kChunk, 4).is_ok());
  ASSERT_TRUE(ior_.submit().is_ok());
  auto results = reap(4);
  EXPECT_EQ(results[1], static_cast<int64_t>(kChunk));
  EXPECT_EQ(results[2], -EBADF);
  EXPECT_LT(results[3], 0);  // meta refuses to open a directory as a file (EISDIR)
  EXPECT_EQ(results[4], static_cast<int64_t>(kChunk));
  EXPECT_EQ(std::memcmp(iov_.data(), data.data(), data.size()), 0);
  // The server closes what it opened when it stops: no handle of the ring stays open in the client.
  server_.reset();
  EXPECT_EQ(client_->open_handles(), 0u);
}

}  // namespace
}  // namespace ff::fs::usrbio
