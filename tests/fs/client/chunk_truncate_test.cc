// StorageClient::truncate (WriteReq::truncate): a chunk cut or zero-extended to an exact length as one replicated
// version, over an in-process cluster on real gRPC (tests/fs/testing/storage_cluster.h), with memory stores and with
// ChunkEngine targets.
#include <gtest/gtest.h>

#include "../chunk/test_util.h"
#include "fs/testing/cluster_fixture.h"

namespace ff::fs {
namespace {

using testing::TempDir;

constexpr uint64_t kInode = 51;

class ChunkTruncateTest : public ::testing::TestWithParam<bool> {
 protected:
  void SetUp() override {
    auto started = testing::StorageCluster::start({.nodes = 3,
                                                   .targets_per_node = 1,
                                                   .replication = 3,
                                                   .max_chunk_bytes = 64 << 10,
                                                   .engine_root = GetParam() ? dir_.path() : ""});
    ASSERT_TRUE(started.is_ok()) << started.status();
    cluster_ = std::move(*started);
    ASSERT_TRUE(cluster_->wait_serving(30'000).is_ok());
  }
  void TearDown() override { cluster_.reset(); }

  ChainId chain() const { return cluster_->chains().front(); }
  Result<WriteRsp> write(uint64_t index, uint64_t offset, std::vector<std::byte> data) {
    return cluster_->on_client<WriteRsp>([&](auto done) {
      cluster_->storage_client().write(chain(), ChunkId{kInode, index}, offset, std::move(data), done);
    });
  }
  Result<WriteRsp> truncate(uint64_t index, uint64_t length) {
    return cluster_->on_client<WriteRsp>([&](auto done) {
      cluster_->storage_client().truncate(chain(), ChunkId{kInode, index}, length, done);
    });
  }
  Result<std::vector<std::byte>> read(uint64_t index) {
    auto rsp = cluster_->on_client<ReadRsp>([&](auto done) {
      cluster_->storage_client().read(chain(), ChunkId{kInode, index}, 0, 64 << 10, ReadMode::kStrict, done);
    });
    if (!rsp.is_ok()) return rsp.status();
    return std::vector<std::byte>(rsp->data.begin(), rsp->data.end());
  }
  // Every replica holds `version` committed, nothing pending, with the same CRC and length `length`.
  void expect_replicas(uint64_t index, uint32_t version, uint64_t length) {
    auto routing = cluster_->routing();
    ASSERT_TRUE(routing.is_ok()) << routing.status();
    const ChainInfo* info = routing->chain(chain());
    ASSERT_NE(info, nullptr);
    std::optional<uint32_t> crc;
    for (const auto& member : info->targets) {
      auto store = cluster_->chunk_store(member.target);
      ASSERT_NE(store, nullptr);
      // The head and middle commit after the tail acknowledged: wait for them.
      Result<ChunkMeta> meta = store->stat(ChunkId{kInode, index});
      for (int i = 0; i < 400 && meta.is_ok() && meta->committed_version != version; ++i) {
        std::this_thread::sleep_for(std::chrono::milliseconds(5));
        meta = store->stat(ChunkId{kInode, index});
      }
      ASSERT_TRUE(meta.is_ok()) << "target " << member.target << ": " << meta.status();
      EXPECT_EQ(meta->committed_version, version) << "target " << member.target;
      EXPECT_EQ(meta->pending_version, 0u) << "target " << member.target;
      EXPECT_EQ(meta->committed_length, length) << "target " << member.target;
      if (!crc) crc = meta->committed_crc32c;
      EXPECT_EQ(meta->committed_crc32c, *crc) << "target " << member.target;
    }
  }

  TempDir dir_;
  std::unique_ptr<testing::StorageCluster> cluster_;
};

TEST_P(ChunkTruncateTest, CutsExtendsAndLeavesAChunkOfTheRightLengthAlone) {
  const std::vector<std::byte> original = testing::pattern_bytes(20'000, 7);
  ASSERT_TRUE(write(0, 0, original).is_ok());

  // Cut: the first 5,000 bytes stay, on every replica, as version 2.
  auto cut = truncate(0, 5'000);
  ASSERT_TRUE(cut.is_ok()) << cut.status();
  EXPECT_EQ(cut->version, 2u);
  EXPECT_EQ(cut->length, 5'000u);
  auto bytes = read(0);
  ASSERT_TRUE(bytes.is_ok()) << bytes.status();
  EXPECT_EQ(*bytes, std::vector<std::byte>(original.begin(), original.begin() + 5'000));
  ASSERT_NO_FATAL_FAILURE(expect_replicas(0, 2, 5'000));

  // Extend: zeros after the kept bytes (the old bytes past 5,000 do not come back).
  auto grown = truncate(0, 12'000);
  ASSERT_TRUE(grown.is_ok()) << grown.status();
  EXPECT_EQ(grown->version, 3u);
  bytes = read(0);
  ASSERT_TRUE(bytes.is_ok()) << bytes.status();
  std::vector<std::byte> expected(original.begin(), original.begin() + 5'000);
  expected.resize(12'000, std::byte{0});
  EXPECT_EQ(*bytes, expected);
  ASSERT_NO_FATAL_FAILURE(expect_replicas(0, 3, 12'000));

  // Already that long: no new version, the current one answered.
  auto same = truncate(0, 12'000);
  ASSERT_TRUE(same.is_ok()) << same.status();
  EXPECT_EQ(same->version, 3u);
  EXPECT_EQ(same->crc32c, grown->crc32c);
  EXPECT_EQ(same->length, 12'000u);

  // A later write builds on the truncated version.
  ASSERT_TRUE(write(0, 11'000, testing::pattern_bytes(2'000, 9)).is_ok());
  bytes = read(0);
  ASSERT_TRUE(bytes.is_ok()) << bytes.status();
  EXPECT_EQ(bytes->size(), 13'000u);
  EXPECT_EQ(std::vector<std::byte>(bytes->begin(), bytes->begin() + 5'000),
            std::vector<std::byte>(original.begin(), original.begin() + 5'000));
  ASSERT_NO_FATAL_FAILURE(expect_replicas(0, 4, 13'000));

  // A chunk that does not exist becomes that many zeros; to 0 bytes an existing one becomes empty.
  auto hole = truncate(1, 3'000);
  ASSERT_TRUE(hole.is_ok()) << hole.status();
  bytes = read(1);
  ASSERT_TRUE(bytes.is_ok()) << bytes.status();
  EXPECT_EQ(*bytes, std::vector<std::byte>(3'000, std::byte{0}));
  auto emptied = truncate(0, 0);
  ASSERT_TRUE(emptied.is_ok()) << emptied.status();
  ASSERT_NO_FATAL_FAILURE(expect_replicas(0, 5, 0));
}

TEST_P(ChunkTruncateTest, BadTruncatesAreRefusedWithTheValueNamed) {
  // Past the chunk size limit (64 KiB here): [oversize].
  auto too_long = truncate(0, (64 << 10) + 1);
  ASSERT_FALSE(too_long.is_ok());
  EXPECT_EQ(fs_error_of(too_long.status()), FsError::kOversize) << too_long.status();
  // A truncate carrying data (sent as a raw request): [malformed], naming the byte count.
  auto routing = cluster_->routing();
  ASSERT_TRUE(routing.is_ok()) << routing.status();
  const ChainInfo* info = routing->chain(chain());
  ASSERT_NE(info, nullptr);
  WriteReq req{.request_id = {99, 0, 1},
               .chain = chain(),
               .chain_version = info->version,
               .chunk = ChunkId{kInode, 0},
               .offset = 10,
               .data = testing::pattern_bytes(5, 1),
               .truncate = true};
  auto answer = response_as<WriteRsp>(rpc::call_blocking(cluster_->client_rpc(),
                                                         routing->address_of(info->write_chain().front()).value(),
                                                         Request{std::move(req)}, 5'000'000'000));
  ASSERT_FALSE(answer.is_ok());
  EXPECT_EQ(fs_error_of(answer.status()), FsError::kMalformed) << answer.status();
  EXPECT_NE(answer.status().message().find("carries 5 bytes"), std::string::npos) << answer.status();
}

INSTANTIATE_TEST_SUITE_P(Stores, ChunkTruncateTest, ::testing::Values(false, true),
                         [](const auto& info) { return info.param ? "ChunkEngine" : "Memory"; });

}  // namespace
}  // namespace ff::fs
