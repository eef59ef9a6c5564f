// Write coalescing (ClientConfig::coalesce_write_max_bytes): a client's writes of one chunk go to the head one at a
// time, in the order they were made; writes that wait while one is on its way and whose ranges touch go out as one
// write of their union. Over an in-process cluster (tests/fs/testing/storage_cluster.h); each case makes its writes
// in one turn of the client's executor, so the first is sent and the others wait for it.
#include <gtest/gtest.h>

#include <algorithm>
#include <chrono>
#include <cstring>
#include <future>
#include <memory>

#include "../chunk/test_util.h"
#include "fs/testing/cluster_fixture.h"

namespace ff::fs {
namespace {

constexpr uint64_t kInode = 47;
constexpr uint64_t kChunkBytes = 64 << 10;  // the cluster's max_chunk_bytes

// One write (or, with truncate, a truncate to `offset`) of a chunk.
struct Op {
  uint64_t offset = 0;
  std::vector<std::byte> data;
  bool truncate = false;
};

Op write_op(uint64_t offset, uint64_t length, uint64_t seed) {
  return Op{offset, testing::pattern_bytes(length, seed), false};
}

// What the chunk holds after `ops`, applied one after the other.
std::vector<std::byte> apply(const std::vector<Op>& ops) {
  std::vector<std::byte> chunk;
  for (const Op& op : ops) {
    if (op.truncate) {
      chunk.resize(op.offset, std::byte{0});
      continue;
    }
    if (chunk.size() < op.offset + op.data.size()) chunk.resize(op.offset + op.data.size(), std::byte{0});
    std::copy(op.data.begin(), op.data.end(), chunk.begin() + static_cast<ptrdiff_t>(op.offset));
  }
  return chunk;
}

// `count` writes of `block` bytes, each right after the last, from offset 0.
std::vector<Op> sequential(uint64_t count, uint64_t block, uint64_t seed) {
  std::vector<Op> ops;
  for (uint64_t i = 0; i < count; ++i) ops.push_back(write_op(i * block, block, seed + i));
  return ops;
}

void expect_all_ok(const std::vector<Result<WriteRsp>>& results) {
  for (size_t i = 0; i < results.size(); ++i)
    ASSERT_TRUE(results[i].is_ok()) << "op " << i << ": " << results[i].status();
}

class WriteCoalescingTest : public ::testing::Test {
 protected:
  void SetUp() override {
    auto cluster = testing::StorageCluster::start(
        {.nodes = 3, .targets_per_node = 1, .replication = 3, .max_chunk_bytes = kChunkBytes});
    ASSERT_TRUE(cluster.is_ok()) << cluster.status();
    cluster_ = std::move(*cluster);
  }
  void TearDown() override {
    clients_.clear();
    cluster_.reset();
  }
  StorageClient& client(uint64_t coalesce_write_max_bytes, uint64_t max_coalesced_write_bytes = 1 << 20) {
    EXPECT_TRUE(cluster_->wait_serving(30'000).is_ok());
    clients_.push_back(
        std::make_unique<StorageClient>(ClientConfig{.client_id = 70 + clients_.size(),
                                                     .mgmtd_address = cluster_->mgmtd_address(),
                                                     .op_timeout_ns = 20'000'000'000,
                                                     .coalesce_write_max_bytes = coalesce_write_max_bytes,
                                                     .max_coalesced_write_bytes = max_coalesced_write_bytes},
                                        cluster_->client_executor(), cluster_->client_rpc()));
    StorageClient& made = *clients_.back();
    auto routed = cluster_->on_client<RoutingVersion>([&](auto done) { made.refresh_routing(done); });
    EXPECT_TRUE(routed.is_ok()) << routed.status();
    return made;
  }
  // Makes every op on `chunk` in one executor turn; their answers, in op order.
  std::vector<Result<WriteRsp>> together(StorageClient& writer, uint64_t chunk, const std::vector<Op>& ops) {
    auto results =
        std::make_shared<std::vector<Result<WriteRsp>>>(ops.size(), Result<WriteRsp>(internal_error("no answer")));
    auto left = std::make_shared<size_t>(ops.size());
    auto all_done = std::make_shared<std::promise<void>>();
    auto future = all_done->get_future();
    const ChainId chain = cluster_->chains().front();
    cluster_->client_executor().post([&writer, ops, results, left, all_done, chain, chunk] {
      for (size_t i = 0; i < ops.size(); ++i) {
        auto done = [results, left, all_done, i](Result<WriteRsp> rsp) {
          (*results)[i] = std::move(rsp);
          if (--*left == 0) all_done->set_value();
        };
        if (ops[i].truncate) {
          writer.truncate(chain, ChunkId{kInode, chunk}, ops[i].offset, done);
        } else {
          writer.write(chain, ChunkId{kInode, chunk}, ops[i].offset, ops[i].data, done);
        }
      }
    });
    EXPECT_EQ(future.wait_for(std::chrono::seconds(60)), std::future_status::ready) << "writes did not finish";
    return *results;
  }
  // The chunk as every replica holds it committed (each read strictly from that replica's store).
  void expect_chunk(uint64_t chunk, const std::vector<std::byte>& expected) {
    // The chain as the last client made sees it (read on the client's executor, which owns it).
    StorageClient& last = *clients_.back();
    const ChainId chain_id = cluster_->chains().front();
    auto chain = cluster_->on_client<ChainInfo>([&](auto done) {
      const ChainInfo* info = last.routing().chain(chain_id);
      if (info == nullptr) return done(internal_error("chain {} unknown", chain_id));
      done(*info);
    });
    ASSERT_TRUE(chain.is_ok()) << chain.status();
    for (const auto& member : chain->targets) {
      auto replica = cluster_->chunk_store(member.target);
      ASSERT_NE(replica, nullptr);
      const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(10);
      for (;;) {
        auto read = replica->read(ChunkId{kInode, chunk}, 0, UINT64_MAX, ReadMode::kStrict);
        if (read.is_ok() && !read->dirty) {  // a replica may still be committing the last version
          EXPECT_EQ(read->data, expected) << "target " << member.target << ", chunk " << chunk;
          break;
        }
        ASSERT_LT(std::chrono::steady_clock::now(), deadline)
            << "target " << member.target << ": " << (read.is_ok() ? "still dirty" : read.status().to_string());
        std::this_thread::sleep_for(std::chrono::milliseconds(5));
      }
    }
  }

  // together(), then: every op succeeded, the writer joined `requests` requests of `joined` writes in all so far, and
  // every replica holds what the ops make in order.
  std::vector<Result<WriteRsp>> made_together(StorageClient& writer, uint64_t chunk, const std::vector<Op>& ops,
                                              uint64_t requests, uint64_t joined) {
    auto results = together(writer, chunk, ops);
    expect_all_ok(results);
    if (HasFatalFailure()) return results;
    EXPECT_EQ(writer.stats().coalesced_write_requests, requests);
    EXPECT_EQ(writer.stats().coalesced_writes, joined);
    expect_chunk(chunk, apply(ops));
    return results;
  }

  std::unique_ptr<testing::StorageCluster> cluster_;
  std::vector<std::unique_ptr<StorageClient>> clients_;
};

TEST_F(WriteCoalescingTest, SequentialSmallWritesMadeTogetherGoAsOneAndEachIsAcknowledged) {
  StorageClient& writer = client(64 << 10);
  std::vector<Op> ops = sequential(9, 4096, 100);
  auto results = together(writer, 0, ops);
  for (size_t i = 0; i < results.size(); ++i) {
    ASSERT_TRUE(results[i].is_ok()) << "write " << i << ": " << results[i].status();
    EXPECT_GE(results[i]->length, ops[i].offset + ops[i].data.size()) << "write " << i;
  }
  // The first went alone; the eight that waited for it went as one write (one version, one answer for all).
  EXPECT_EQ(writer.stats().coalesced_write_requests, 1u);
  EXPECT_EQ(writer.stats().coalesced_writes, 8u);
  EXPECT_LT(results[0]->version, results[1]->version);
  for (size_t i = 2; i < results.size(); ++i) {
    EXPECT_EQ(results[i]->version, results[1]->version);
    EXPECT_EQ(results[i]->crc32c, results[1]->crc32c);
  }
  EXPECT_EQ(results[8]->length, 9u * 4096);
  expect_chunk(0, apply(ops));
}

TEST_F(WriteCoalescingTest, OverlappingWritesKeepTheLaterBytesAndAGapOrATruncateKeepsTheOrder) {
  StorageClient& writer = client(64 << 10);
  const std::vector<Op> ops = {
      write_op(0, 4096, 1),                   // sent at once
      write_op(4096, 8192, 2),                // [4K, 12K)
      write_op(8192, 8192, 3),                // [8K, 16K): overlaps, its bytes win
      write_op(6000, 100, 4),                 // inside: wins over both
      write_op(40960, 4096, 5),               // a gap: goes next, alone
      write_op(0, 2048, 6),                   // touches nothing of the last request: after it, in order
      write_op(2048, 2048, 7),                //   and joins the one before (adjacent)
      Op{.offset = 30000, .truncate = true},  // a truncate goes alone, in order: cuts the write at 40K
      write_op(29000, 2000, 8),               // after the truncate
  };
  auto results = together(writer, 1, ops);
  ASSERT_NO_FATAL_FAILURE(expect_all_ok(results));
  EXPECT_EQ(writer.stats().coalesced_write_requests, 2u);  // ops 1-3, ops 5-6
  EXPECT_EQ(writer.stats().coalesced_writes, 5u);
  // Requests in order: 0 | 1,2,3 | 4 | 5,6 | 7 | 8.
  EXPECT_LT(results[0]->version, results[1]->version);
  EXPECT_LT(results[3]->version, results[4]->version);
  EXPECT_LT(results[4]->version, results[5]->version);
  EXPECT_LT(results[6]->version, results[7]->version);
  EXPECT_LT(results[7]->version, results[8]->version);
  EXPECT_EQ(results[7]->length, 30000u);
  expect_chunk(1, apply(ops));
}

TEST_F(WriteCoalescingTest, LargeWritesAndAnyWriteWithCoalescingOffGoOnTheirOwn) {
  // Writes over coalesce_write_max_bytes (4 KiB here) never join; nor do any with coalescing off.
  auto results = made_together(client(4096), 2, sequential(6, 8192, 200), 0, 0);
  ASSERT_FALSE(HasFatalFailure());
  for (size_t i = 1; i < results.size(); ++i) EXPECT_LT(results[i - 1]->version, results[i]->version) << "in order";
  // The union is bounded by max_coalesced_write_bytes (12 KiB): 4 KiB writes join three at a time.
  made_together(client(64 << 10, 12 << 10), 3, sequential(7, 4096, 300), 2, 6);
  made_together(client(0), 4, sequential(6, 4096, 400), 0, 0);
}

TEST_F(WriteCoalescingTest, BadInputInACoalescedWriteFailsOnlyTheWriteThatHasIt) {
  StorageClient& writer = client(64 << 10);
  // The third write ends past the chunk size (64 KiB): the union of the last two is [oversize] as a whole, so each
  // is sent again on its own: the valid one lands, the bad one fails with its own error.
  const std::vector<Op> ops = {write_op(0, 4096, 11), write_op(4096, 4096, 12), write_op(8192, kChunkBytes - 4096, 13)};
  auto results = together(writer, 5, ops);
  ASSERT_TRUE(results[0].is_ok()) << results[0].status();
  ASSERT_TRUE(results[1].is_ok()) << results[1].status();
  ASSERT_FALSE(results[2].is_ok());
  EXPECT_EQ(fs_error_of(results[2].status()), FsError::kOversize) << results[2].status();
  EXPECT_EQ(writer.stats().coalesced_write_requests, 1u);
  expect_chunk(5, apply({ops[0], ops[1]}));
}

TEST_F(WriteCoalescingTest, WritesOfDifferentChunksAreNeverJoined) {
  StorageClient& writer = client(64 << 10);
  // One write to each of 8 chunks, then a second to each: each chunk has its own lane, so nothing joins.
  auto results = std::make_shared<std::vector<Result<WriteRsp>>>(16, Result<WriteRsp>(internal_error("no answer")));
  auto left = std::make_shared<size_t>(16);
  auto all_done = std::make_shared<std::promise<void>>();
  auto future = all_done->get_future();
  const ChainId chain = cluster_->chains().front();
  cluster_->client_executor().post([&writer, results, left, all_done, chain] {
    for (size_t i = 0; i < 16; ++i) {
      writer.write(chain, ChunkId{kInode, 10 + i % 8}, (i / 8) * 4096, testing::pattern_bytes(4096, 500 + i),
                   [results, left, all_done, i](Result<WriteRsp> rsp) {
                     (*results)[i] = std::move(rsp);
                     if (--*left == 0) all_done->set_value();
                   });
    }
  });
  ASSERT_EQ(future.wait_for(std::chrono::seconds(60)), std::future_status::ready);
  for (size_t i = 0; i < 16; ++i) ASSERT_TRUE((*results)[i].is_ok()) << "write " << i << ": " << (*results)[i].status();
  EXPECT_EQ(writer.stats().coalesced_write_requests, 0u);  // one waiting write per chunk: nothing to join
  for (uint64_t c = 0; c < 8; ++c) {
    expect_chunk(10 + c, apply({write_op(0, 4096, 500 + c), write_op(4096, 4096, 508 + c)}));
  }
}

}  // namespace
}  // namespace ff::fs
