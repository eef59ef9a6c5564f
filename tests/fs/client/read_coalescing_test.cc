// Read coalescing (ClientConfig::read_rpcs_per_node): small reads beyond the RPCs in flight to a node wait and go
// out as one BatchReadReq; and the storage service's fast lane for batches (StorageService::try_handle_read) and for
// single small reads on the TCP server's receiving thread. Over an in-process cluster on real gRPC or TCP
// (tests/fs/testing/storage_cluster.h).
#include <fcntl.h>
#include <gtest/gtest.h>
#include <unistd.h>

#include <chrono>
#include <cstring>
#include <functional>
#include <future>
#include <mutex>

#include "../chunk/test_util.h"
#include "fs/testing/cluster_fixture.h"

namespace ff::fs {
namespace {

using testing::scribble;
using testing::TempDir;

constexpr uint64_t kInode = 31;

// The outcome of a set of reads issued together in one turn of the client's executor.
struct ReadOutcomes {
  std::vector<Result<std::vector<std::byte>>> results;
};

class ReadCoalescingTest : public ::testing::Test {
 protected:
  void start(std::string engine_root = "", std::string transport = "") {
    auto cluster = testing::StorageCluster::start({.nodes = 3,
                                                   .targets_per_node = 1,
                                                   .replication = 3,
                                                   .max_chunk_bytes = 64 << 10,
                                                   .engine_root = engine_root,
                                                   .transport = transport});
    ASSERT_TRUE(cluster.is_ok()) << cluster.status();
    cluster_ = std::move(*cluster);
  }
  void TearDown() override {
    clients_.clear();
    cluster_.reset();
  }
  // A client whose routing has every replica serving (the chain can still move right after start() on a loaded
  // machine).
  StorageClient& client(uint32_t read_rpcs_per_node) {
    EXPECT_TRUE(cluster_->wait_serving(30'000).is_ok());
    clients_.push_back(std::make_unique<StorageClient>(ClientConfig{.client_id = 40 + clients_.size(),
                                                                    .mgmtd_address = cluster_->mgmtd_address(),
                                                                    .op_timeout_ns = 20'000'000'000,
                                                                    .read_rpcs_per_node = read_rpcs_per_node},
                                                       cluster_->client_executor(), cluster_->client_rpc()));
    StorageClient& made = *clients_.back();
    auto routed = run<RoutingVersion>([&](auto done) { made.refresh_routing(done); });
    EXPECT_TRUE(routed.is_ok()) << routed.status();
    return made;
  }
  template <typename T>
  Result<T> run(std::function<void(std::function<void(Result<T>)>)> fn) {
    return cluster_->on_client<T>(std::move(fn));
  }
  static std::vector<std::byte> contents(uint64_t index) {
    return testing::pattern_bytes(4096 + 512 * (index % 5), index);
  }
  void write_chunks(uint64_t count) {
    StorageClient& writer = cluster_->storage_client();
    for (uint64_t i = 0; i < count; ++i) {
      auto written = run<WriteRsp>([&](auto done) {
        writer.write(cluster_->chains().front(), ChunkId{kInode, i}, 0, contents(i), done);
      });
      ASSERT_TRUE(written.is_ok()) << "chunk " << i << ": " << written.status();
    }
  }
  // Waits until every replica of `chain` committed version 1 of chunks 0..count-1 (a strict read of a chunk pending
  // there would be [chunk_dirty]).
  void wait_committed(const ChainInfo& chain, uint64_t count) {
    for (const auto& member : chain.targets) {
      auto replica = cluster_->chunk_store(member.target);
      ASSERT_NE(replica, nullptr);
      const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(10);
      for (uint64_t i = 0; i < count; ++i) {
        for (;;) {
          auto meta = replica->stat(ChunkId{kInode, i});
          if (meta.is_ok() && meta->pending_version == 0 && meta->committed_version == 1) break;
          ASSERT_LT(std::chrono::steady_clock::now(), deadline) << "target " << member.target << " did not commit";
          std::this_thread::sleep_for(std::chrono::milliseconds(5));
        }
      }
    }
  }
  // Issues a read of the whole of each chunk in `indexes` in one executor turn (so that all but the first per node
  // find that node's RPC slot taken) and waits for all of them.
  ReadOutcomes read_together(StorageClient& reader, const std::vector<uint64_t>& indexes) {
    auto outcomes = std::make_shared<ReadOutcomes>();
    outcomes->results.assign(indexes.size(), Result<std::vector<std::byte>>(internal_error("not read")));
    auto left = std::make_shared<size_t>(indexes.size());
    auto all_done = std::make_shared<std::promise<void>>();
    auto future = all_done->get_future();
    const ChainId chain = cluster_->chains().front();
    cluster_->client_executor().post([&reader, indexes, outcomes, left, all_done, chain] {
      for (size_t i = 0; i < indexes.size(); ++i) {
        reader.read(chain, ChunkId{kInode, indexes[i]}, 0, 64 << 10, ReadMode::kStrict,
                    [outcomes, left, all_done, i](Result<ReadRsp> rsp) {
                      if (rsp.is_ok()) {
                        outcomes->results[i] = std::vector<std::byte>(rsp->payload().begin(), rsp->payload().end());
                      } else {
                        outcomes->results[i] = rsp.status();
                      }
                      if (--*left == 0) all_done->set_value();
                    });
      }
    });
    EXPECT_EQ(future.wait_for(std::chrono::seconds(60)), std::future_status::ready) << "reads did not finish";
    return *outcomes;
  }

  // Read i of `outcomes` (of chunks 0, 1, ...) returned chunk i's contents.
  static void expect_contents(const ReadOutcomes& outcomes) {
    for (uint64_t i = 0; i < outcomes.results.size(); ++i) {
      ASSERT_TRUE(outcomes.results[i].is_ok()) << "chunk " << i << ": " << outcomes.results[i].status();
      EXPECT_EQ(*outcomes.results[i], contents(i)) << "chunk " << i;
    }
  }
  // Chunks 0 .. count - 1.
  static std::vector<uint64_t> first_chunks(uint64_t count) {
    std::vector<uint64_t> indexes(count);
    for (uint64_t i = 0; i < count; ++i) indexes[i] = i;
    return indexes;
  }

  std::unique_ptr<testing::StorageCluster> cluster_;
  std::vector<std::unique_ptr<StorageClient>> clients_;
};

TEST_F(ReadCoalescingTest, ReadsIssuedTogetherShareRpcsAndEachGetsItsOwnBytes) {
  start();
  constexpr uint64_t kChunks = 48;
  write_chunks(kChunks);
  const std::vector<uint64_t> all = first_chunks(kChunks);

  StorageClient& coalescing = client(1);
  ReadOutcomes outcomes = read_together(coalescing, all);
  expect_contents(outcomes);
  // On each node the reads went to (3 when the client's routing has every replica serving, fewer while one still
  // syncs), one read went alone (its slot was free) and the others waited and went in one batch.
  const StorageClient::CoalescedReadCounts counts = coalescing.coalesced_read_counts();
  const uint64_t nodes = counts.rpcs / 2;
  EXPECT_EQ(counts.rpcs % 2, 0u) << counts.rpcs;
  EXPECT_GE(nodes, 1u);
  EXPECT_LE(nodes, 3u);
  EXPECT_EQ(counts.batched_reads, kChunks - nodes);

  // Off: one RPC per read (none counted), the same bytes.
  StorageClient& plain = client(0);
  outcomes = read_together(plain, all);
  expect_contents(outcomes);
  EXPECT_EQ(plain.coalesced_read_counts().rpcs, 0u);
  EXPECT_EQ(plain.coalesced_read_counts().batched_reads, 0u);
}

TEST_F(ReadCoalescingTest, AFailedReadInABatchFailsAloneAndBatchesAreBounded) {
  start();
  write_chunks(12);
  // Chunks 100.. were never written: [chunk_not_found], not retried; the others in their batches read.
  std::vector<uint64_t> indexes;
  for (uint64_t i = 0; i < 12; ++i) {
    indexes.push_back(i);
    if (i % 3 == 1) indexes.push_back(100 + i);
  }
  ASSERT_TRUE(cluster_->wait_serving(30'000).is_ok());
  clients_.push_back(std::make_unique<StorageClient>(ClientConfig{.client_id = 60,
                                                                  .mgmtd_address = cluster_->mgmtd_address(),
                                                                  .op_timeout_ns = 20'000'000'000,
                                                                  .read_rpcs_per_node = 1,
                                                                  .max_reads_per_batch = 2},
                                                     cluster_->client_executor(), cluster_->client_rpc()));
  StorageClient& reader = *clients_.back();
  ASSERT_TRUE(run<RoutingVersion>([&](auto done) { reader.refresh_routing(done); }).is_ok());
  ReadOutcomes outcomes = read_together(reader, indexes);
  for (size_t i = 0; i < indexes.size(); ++i) {
    if (indexes[i] >= 100) {
      ASSERT_FALSE(outcomes.results[i].is_ok()) << "chunk " << indexes[i] << " was never written";
      EXPECT_EQ(fs_error_of(outcomes.results[i].status()), FsError::kChunkNotFound) << outcomes.results[i].status();
    } else {
      ASSERT_TRUE(outcomes.results[i].is_ok()) << "chunk " << indexes[i] << ": " << outcomes.results[i].status();
      EXPECT_EQ(*outcomes.results[i], contents(indexes[i]));
    }
  }
  // 16 reads, at least the first one per node alone, the rest alone or in batches of exactly 2 (the bound): every
  // read not in a batch went alone, so the RPCs beyond those are the batches, and none may hold more than 2. (A
  // read resent after a chain change is one more read sent alone, which only loosens the bound.)
  const StorageClient::CoalescedReadCounts counts = reader.coalesced_read_counts();
  const uint64_t reads = indexes.size();
  ASSERT_LE(counts.batched_reads, reads);
  const uint64_t alone = reads - counts.batched_reads;
  ASSERT_GE(counts.rpcs, alone);
  const uint64_t batches = counts.rpcs - alone;
  EXPECT_GE(counts.batched_reads, 2u);
  EXPECT_LE(counts.batched_reads, 2 * batches) << counts.rpcs << " RPCs, " << counts.batched_reads << " batched";
  EXPECT_GE(counts.rpcs, 10u);
}

TEST_F(ReadCoalescingTest, ReadsOfABatchToADeadNodeAreRetriedElsewhere) {
  start();
  constexpr uint64_t kChunks = 30;
  write_chunks(kChunks);
  const std::vector<uint64_t> all = first_chunks(kChunks);
  StorageClient& reader = client(1);
  // Node 2 dies; mgmtd still routes reads to it until its lease lapses (10 s), so every read sent there fails
  // (its batch with it) and is retried, spread over the targets, until one that serves answers.
  ASSERT_TRUE(cluster_->crash_storage(2).is_ok());
  ReadOutcomes outcomes = read_together(reader, all);
  expect_contents(outcomes);
  EXPECT_GT(reader.stats().retries, 0u);
  EXPECT_GT(reader.coalesced_read_counts().batched_reads, 0u);
  ASSERT_TRUE(cluster_->start_storage(2).is_ok());
  EXPECT_TRUE(cluster_->wait_serving(30'000).is_ok());
}

// The service's side: a BatchReadReq sent straight to one node, in its fast lane (every read checks out) with a
// corrupted chunk among them (repaired from a replica and read again), and one with a stale chain version (the whole
// batch through the executor, that read refused alone).
TEST_F(ReadCoalescingTest, TheServiceAnswersEachReadOfABatchRepairingCorruptChunks) {
  TempDir dir;
  start(dir.path());
  write_chunks(6);
  auto routing = cluster_->routing();
  ASSERT_TRUE(routing.is_ok()) << routing.status();
  const ChainInfo* chain = routing->chain(cluster_->chains().front());
  ASSERT_NE(chain, nullptr);
  ASSERT_NO_FATAL_FAILURE(wait_committed(*chain, 6));
  const TargetId victim = chain->targets.front().target;
  auto store = cluster_->chunk_store(victim);
  auto located = store->locate(ChunkId{kInode, 3}, 0, UINT64_MAX, ReadMode::kStrict);
  ASSERT_TRUE(located.is_ok() && located->extent) << located.status();
  scribble(located->extent->path, located->extent->file_offset + 100, 64);
  const std::string address = *routing->address_of(victim);
  const ChainId chain_id = chain->id;
  // Sends the batch `make` builds for the chain's current version (routing fetched anew), again while a read meant to
  // be current comes back [stale_chain_version] (the chain may still move after start() under load).
  auto send = [&](const std::function<BatchReadReq(ChainVersion)>& make) -> Result<BatchReadRsp> {
    Result<BatchReadRsp> answer = internal_error("not sent");
    for (int attempt = 0; attempt < 20; ++attempt) {
      auto now_routing = cluster_->routing();
      if (!now_routing.is_ok()) return now_routing.status();
      const ChainVersion version = now_routing->chain(chain_id)->version;
      BatchReadReq batch = make(version);
      answer = response_as<BatchReadRsp>(
          rpc::call_blocking(cluster_->client_rpc(), address, Request{batch}, 20'000'000'000));
      if (!answer.is_ok()) return answer;
      bool moved = false;
      for (size_t i = 0; i < batch.reads.size(); ++i) {
        moved |= batch.reads[i].chain_version == version &&
                 fs_error_of(answer->results[i].status) == FsError::kStaleChainVersion;
      }
      if (!moved) return answer;
      std::this_thread::sleep_for(std::chrono::milliseconds(100));
    }
    return answer;
  };
  auto read_req = [&](uint64_t index, ChainVersion version) {
    return ReadReq{.chain = chain_id,
                   .chain_version = version,
                   .target = victim,
                   .chunk = ChunkId{kInode, index},
                   .offset = 0,
                   .length = 64 << 10};
  };

  const NodeId node = static_cast<NodeId>(victim / kTargetsPerNodeLimit);
  auto fast_reads = [&] { return cluster_->service(node)->stats().fast_reads; };
  const uint64_t fast_before = fast_reads();
  auto answer = send([&](ChainVersion version) {
    BatchReadReq batch;
    for (uint64_t i = 0; i < 6; ++i) batch.reads.push_back(read_req(i, version));
    return batch;
  });
  ASSERT_TRUE(answer.is_ok()) << answer.status();
  ASSERT_EQ(answer->results.size(), 6u);
  for (uint64_t i = 0; i < 6; ++i) {
    ASSERT_TRUE(answer->results[i].status.is_ok()) << "chunk " << i << ": " << answer->results[i].status;
    const auto bytes = answer->results[i].rsp.payload();
    EXPECT_EQ(std::vector<std::byte>(bytes.begin(), bytes.end()), contents(i)) << "chunk " << i;
  }
  // (A batch refused for a moved chain went through handle(): only the last one counts here.)
  EXPECT_EQ(fast_reads(), fast_before + 6) << "the batch was not served in the fast lane";
  auto repaired = store->read(ChunkId{kInode, 3}, 0, UINT64_MAX, ReadMode::kStrict);
  ASSERT_TRUE(repaired.is_ok()) << repaired.status();
  EXPECT_EQ(repaired->data, contents(3));

  answer = send([&](ChainVersion version) {
    BatchReadReq stale;
    stale.reads = {read_req(0, version), read_req(1, version + 7), read_req(2, version)};
    return stale;
  });
  ASSERT_TRUE(answer.is_ok()) << answer.status();
  ASSERT_EQ(answer->results.size(), 3u);
  EXPECT_TRUE(answer->results[0].status.is_ok()) << answer->results[0].status;
  EXPECT_EQ(fs_error_of(answer->results[1].status), FsError::kStaleChainVersion) << answer->results[1].status;
  EXPECT_TRUE(answer->results[2].status.is_ok()) << answer->results[2].status;
  EXPECT_EQ(fast_reads(), fast_before + 6) << "a batch with a stale read went through the fast lane";
}

// Over TCP, a plain read of at most 64 KiB (or a batch of reads of at most 64 KiB together) that arrives while
// nothing else waits on its connection runs on the connection's receiving thread (ServerContext::receiver_idle)
// instead of an offload worker; it answers the same bytes and errors, and a corrupted chunk read there is still
// repaired from a replica by the executor's path. Larger ones go to a worker.
TEST_F(ReadCoalescingTest, SmallReadsOverTcpRunOnTheReceivingThreadAndStillRepair) {
  TempDir dir;
  start(dir.path(), "tcp");
  ASSERT_TRUE(cluster_->wait_serving(30'000).is_ok());
  write_chunks(4);
  auto routing = cluster_->routing();
  ASSERT_TRUE(routing.is_ok()) << routing.status();
  const ChainInfo* chain = routing->chain(cluster_->chains().front());
  ASSERT_NE(chain, nullptr);
  ASSERT_NO_FATAL_FAILURE(wait_committed(*chain, 4));
  const TargetId victim = chain->targets.back().target;
  const std::string address = *routing->address_of(victim);
  const ChainId chain_id = chain->id;
  StorageService* service = cluster_->service(static_cast<NodeId>(victim / kTargetsPerNodeLimit));
  ASSERT_NE(service, nullptr);
  // One read at the chain's current version (again while the chain still moves after start()).
  auto read = [&](uint64_t index, uint64_t length) -> Result<ReadRsp> {
    Result<ReadRsp> answer = internal_error("not sent");
    for (int attempt = 0; attempt < 20; ++attempt) {
      auto now_routing = cluster_->routing();
      if (!now_routing.is_ok()) return now_routing.status();
      ReadReq req{.chain = chain_id,
                  .chain_version = now_routing->chain(chain_id)->version,
                  .target = victim,
                  .chunk = ChunkId{kInode, index},
                  .offset = 0,
                  .length = length};
      answer = response_as<ReadRsp>(rpc::call_blocking(cluster_->client_rpc(), address, Request{req}, 20'000'000'000));
      if (fs_error_of(answer.status()) != FsError::kStaleChainVersion) return answer;
      std::this_thread::sleep_for(std::chrono::milliseconds(100));
    }
    return answer;
  };
  auto bytes_of = [](const ReadRsp& rsp) {
    const auto payload = rsp.payload();
    return std::vector<std::byte>(payload.begin(), payload.end());
  };

  const StorageService::Stats before = service->stats();
  auto first = read(0, 4096);
  ASSERT_TRUE(first.is_ok()) << first.status();
  const std::vector<std::byte> expected = contents(0);
  EXPECT_EQ(bytes_of(*first), std::vector<std::byte>(expected.begin(), expected.begin() + 4096));
  EXPECT_EQ(service->stats().inline_reads, before.inline_reads + 1) << "a lone 4 KiB read did not run inline";
  EXPECT_EQ(service->stats().fast_reads, before.fast_reads + 1);

  // A chunk corrupted on the victim's disk: the inline read finds the CRC mismatch, hands the read to the executor,
  // which repairs the chunk from a replica and answers the right bytes.
  auto store = cluster_->chunk_store(victim);
  auto located = store->locate(ChunkId{kInode, 2}, 0, UINT64_MAX, ReadMode::kStrict);
  ASSERT_TRUE(located.is_ok() && located->extent) << located.status();
  scribble(located->extent->path, located->extent->file_offset + 100, 64);
  const uint64_t inline_before = service->stats().inline_reads;
  auto repaired = read(2, 64 << 10);
  ASSERT_TRUE(repaired.is_ok()) << repaired.status();
  EXPECT_EQ(bytes_of(*repaired), contents(2));
  EXPECT_EQ(service->stats().inline_reads, inline_before + 1);
  EXPECT_GT(service->stats().repairs, before.repairs) << "the corrupt chunk was not repaired";
  auto on_disk = store->read(ChunkId{kInode, 2}, 0, UINT64_MAX, ReadMode::kStrict);
  ASSERT_TRUE(on_disk.is_ok()) << on_disk.status();
  EXPECT_EQ(on_disk->data, contents(2));

  // Past 64 KiB: an offload worker reads it (the fast lane still serves it).
  const StorageService::Stats large_before = service->stats();
  auto large = read(1, (64 << 10) + 4096);
  ASSERT_TRUE(large.is_ok()) << large.status();
  EXPECT_EQ(bytes_of(*large), contents(1));
  EXPECT_EQ(service->stats().inline_reads, large_before.inline_reads);
  EXPECT_EQ(service->stats().fast_reads, large_before.fast_reads + 1);

  // Errors answer as before: a chunk that does not exist.
  auto missing = read(99, 4096);
  EXPECT_EQ(fs_error_of(missing.status()), FsError::kChunkNotFound) << missing.status();

  // A batch of reads of at most 64 KiB together runs there too, a corrupted chunk among them repaired as above; a
  // larger batch goes to a worker.
  located = store->locate(ChunkId{kInode, 3}, 0, UINT64_MAX, ReadMode::kStrict);
  ASSERT_TRUE(located.is_ok() && located->extent) << located.status();
  scribble(located->extent->path, located->extent->file_offset + 100, 64);
  auto batch = [&](uint64_t length) -> Result<BatchReadRsp> {
    Result<BatchReadRsp> answer = internal_error("not sent");
    for (int attempt = 0; attempt < 20; ++attempt) {
      auto now_routing = cluster_->routing();
      if (!now_routing.is_ok()) return now_routing.status();
      BatchReadReq req;
      for (uint64_t i = 0; i < 4; ++i) {
        req.reads.push_back(ReadReq{.chain = chain_id,
                                    .chain_version = now_routing->chain(chain_id)->version,
                                    .target = victim,
                                    .chunk = ChunkId{kInode, i},
                                    .offset = 0,
                                    .length = length});
      }
      answer =
          response_as<BatchReadRsp>(rpc::call_blocking(cluster_->client_rpc(), address, Request{req}, 20'000'000'000));
      if (!answer.is_ok() || answer->results.empty() ||
          fs_error_of(answer->results[0].status) != FsError::kStaleChainVersion) {
        return answer;
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(100));
    }
    return answer;
  };
  const StorageService::Stats batch_before = service->stats();
  auto small_batch = batch(16 << 10);
  ASSERT_TRUE(small_batch.is_ok()) << small_batch.status();
  ASSERT_EQ(small_batch->results.size(), 4u);
  for (uint64_t i = 0; i < 4; ++i) {
    ASSERT_TRUE(small_batch->results[i].status.is_ok()) << "chunk " << i << ": " << small_batch->results[i].status;
    EXPECT_EQ(bytes_of(small_batch->results[i].rsp), contents(i)) << "chunk " << i;
  }
  EXPECT_EQ(service->stats().inline_reads, batch_before.inline_reads + 4) << "a small batch did not run inline";
  EXPECT_GT(service->stats().repairs, batch_before.repairs) << "the corrupt chunk in the batch was not repaired";
  const uint64_t inline_before_large = service->stats().inline_reads;
  auto large_batch = batch(32 << 10);
  ASSERT_TRUE(large_batch.is_ok()) << large_batch.status();
  ASSERT_EQ(large_batch->results.size(), 4u);
  for (uint64_t i = 0; i < 4; ++i) EXPECT_EQ(bytes_of(large_batch->results[i].rsp), contents(i)) << "chunk " << i;
  EXPECT_EQ(service->stats().inline_reads, inline_before_large) << "a batch of 128 KiB ran inline";
}

}  // namespace
}  // namespace ff::fs
