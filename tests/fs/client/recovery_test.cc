// Recovery of a returning target over an in-process cluster on real gRPC (tests/fs/testing/storage_cluster.h):
// its predecessor lists the target's chunk metadata in pages (SyncDumpMetaReq::from / limit,
// StorageConfig::sync_dump_page) and replaces up to StorageConfig::sync_batch chunks at once.
#include <gtest/gtest.h>

#include <algorithm>
#include <chrono>
#include <functional>
#include <future>
#include <set>
#include <thread>

#include "../chunk/test_util.h"
#include "fs/testing/cluster_fixture.h"

namespace ff::fs {
namespace {

constexpr uint64_t kInode = 41;

class RecoveryTest : public ::testing::Test {
 protected:
  void TearDown() override { cluster_.reset(); }

  template <typename T>
  Result<T> run(std::function<void(std::function<void(Result<T>)>)> fn) {
    return cluster_->on_client<T>(std::move(fn));
  }
  void write(uint64_t index, uint64_t generation) {
    auto written = run<WriteRsp>([&](auto done) {
      cluster_->storage_client().write(chain(), ChunkId{kInode, index}, 0,
                                       testing::pattern_bytes(2048 + 256 * (index % 7), index * 100 + generation),
                                       done);
    });
    ASSERT_TRUE(written.is_ok()) << "chunk " << index << ": " << written.status();
  }
  ChainId chain() const { return cluster_->chains().front(); }
  // Waits until mgmtd's routing has `count` serving targets in the chain.
  void wait_serving_targets(size_t count) {
    const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(30);
    for (;;) {
      auto routing = cluster_->routing();
      if (routing.is_ok() && routing->chain(chain()) != nullptr && routing->chain(chain())->serving().size() == count) {
        return;
      }
      ASSERT_LT(std::chrono::steady_clock::now(), deadline) << "the chain never served on " << count << " targets";
      std::this_thread::sleep_for(std::chrono::milliseconds(20));
    }
  }

  std::unique_ptr<testing::StorageCluster> cluster_;
};

// 30 chunks on all three targets; node 3 goes down; 30 chunks are added, 10 overwritten and 5 removed on the other
// two; node 3 returns. With 3 chunks per metadata page and 4 replacements at once, its sync must list every page
// (a missed page leaves removed chunks behind) and end with every replica the same.
TEST_F(RecoveryTest, ASyncListsEveryPageAndLeavesTheReplicasTheSame) {
  auto started = testing::StorageCluster::start({.nodes = 3,
                                                 .targets_per_node = 1,
                                                 .replication = 3,
                                                 .heartbeat_timeout_ns = 1'500'000'000,
                                                 .sync_batch = 4,
                                                 .sync_dump_page = 3});
  ASSERT_TRUE(started.is_ok()) << started.status();
  cluster_ = std::move(*started);
  ASSERT_TRUE(cluster_->wait_serving(30'000).is_ok());
  for (uint64_t i = 0; i < 30; ++i) ASSERT_NO_FATAL_FAILURE(write(i, 1));

  ASSERT_TRUE(cluster_->crash_storage(3).is_ok());
  ASSERT_NO_FATAL_FAILURE(wait_serving_targets(2));
  for (uint64_t i = 30; i < 60; ++i) ASSERT_NO_FATAL_FAILURE(write(i, 1));
  for (uint64_t i = 0; i < 10; ++i) ASSERT_NO_FATAL_FAILURE(write(i, 2));
  auto removed = run<RemoveChunksRsp>([&](auto done) {
    cluster_->storage_client().remove_range(chain(), ChunkId{kInode, 20}, ChunkId{kInode, 25}, done);
  });
  ASSERT_TRUE(removed.is_ok()) << removed.status();

  ASSERT_TRUE(cluster_->start_storage(3).is_ok());
  ASSERT_TRUE(cluster_->wait_serving(30'000).is_ok());

  // Chunks 0-9 (overwritten), 20-24 (removed) and 30-59 (new) differ on the returning target: 45 replacements at
  // least (more only if a sync attempt was cut short and run again).
  StorageService* returned = cluster_->service(3);
  ASSERT_NE(returned, nullptr);
  EXPECT_GE(returned->stats().chunks_synced, 45u);

  auto routing = cluster_->routing();
  ASSERT_TRUE(routing.is_ok()) << routing.status();
  const ChainInfo* info = routing->chain(chain());
  ASSERT_NE(info, nullptr);
  std::vector<std::shared_ptr<ChunkStore>> replicas;
  for (const auto& member : info->targets) {
    replicas.push_back(cluster_->chunk_store(member.target));
    ASSERT_NE(replicas.back(), nullptr) << "target " << member.target;
  }
  ASSERT_EQ(replicas.size(), 3u);
  for (uint64_t i = 0; i < 60; ++i) {
    const ChunkId id{kInode, i};
    const bool gone = i >= 20 && i < 25;
    std::vector<Result<ChunkMeta>> metas;
    for (auto& replica : replicas) metas.push_back(replica->stat(id));
    for (size_t r = 0; r < replicas.size(); ++r) {
      if (gone) {
        EXPECT_FALSE(metas[r].is_ok()) << "removed chunk " << i << " is back on replica " << r;
        continue;
      }
      ASSERT_TRUE(metas[r].is_ok()) << "chunk " << i << " on replica " << r << ": " << metas[r].status();
      EXPECT_EQ(metas[r]->committed_version, i < 10 ? 2u : 1u) << "chunk " << i << " on replica " << r;
      EXPECT_EQ(metas[r]->committed_crc32c, metas[0]->committed_crc32c) << "chunk " << i << " on replica " << r;
      EXPECT_EQ(metas[r]->committed_length, metas[0]->committed_length) << "chunk " << i << " on replica " << r;
    }
  }
}

// A store that stops taking changes (ChunkStore::health: a ChunkEngine whose group sync failed) is a medium
// failure: its server reports the target offline in its heartbeats, mgmtd takes it out of the chain, and writes go
// on to the other two.
TEST_F(RecoveryTest, ATargetWhoseStoreTakesNoChangesIsReportedOfflineAndTheChainMovesOn) {
  auto started = testing::StorageCluster::start(
      {.nodes = 3, .targets_per_node = 1, .replication = 3, .heartbeat_timeout_ns = 1'500'000'000});
  ASSERT_TRUE(started.is_ok()) << started.status();
  cluster_ = std::move(*started);
  ASSERT_TRUE(cluster_->wait_serving(30'000).is_ok());
  for (uint64_t i = 0; i < 5; ++i) ASSERT_NO_FATAL_FAILURE(write(i, 1));
  auto routing = cluster_->routing();
  ASSERT_TRUE(routing.is_ok()) << routing.status();
  const TargetId failing = routing->chain(chain())->targets.back().target;
  std::shared_ptr<MemChunkStore> store = cluster_->store(failing);
  ASSERT_NE(store, nullptr);
  store->set_health(io_error("injected: a group sync failed"));
  ASSERT_NO_FATAL_FAILURE(wait_serving_targets(2));
  routing = cluster_->routing();
  ASSERT_TRUE(routing.is_ok()) << routing.status();
  for (const auto& member : routing->chain(chain())->targets) {
    if (member.target == failing) {
      EXPECT_EQ(member.state, PublicTargetState::kOffline);
    }
  }
  EXPECT_EQ(routing->targets.at(failing).local_state, LocalTargetState::kOffline);
  for (uint64_t i = 5; i < 10; ++i) ASSERT_NO_FATAL_FAILURE(write(i, 1));
}

// A first version pending at a restarted target with nothing committed below it may be an acknowledged one whose
// lazy commit a crash undid (the simulation's seed 20444): until it is settled, a read there answers [chunk_dirty],
// never [chunk_not_found], and so must the read fast lane (the path of plain reads over gRPC), which leaves such a
// read to the executor's path. The target is its chain's only one and its store refuses to list, so neither the
// start-up listing of the versions it inherited nor the head's orphan scan can settle the version while the test
// reads.
TEST_F(RecoveryTest, TheFastLaneAnswersAnInheritedPendingFirstVersionDirty) {
  auto started = testing::StorageCluster::start({.nodes = 1, .targets_per_node = 1, .replication = 1});
  ASSERT_TRUE(started.is_ok()) << started.status();
  cluster_ = std::move(*started);
  ASSERT_NO_FATAL_FAILURE(write(1, 1));
  auto routing = cluster_->routing();
  ASSERT_TRUE(routing.is_ok()) << routing.status();
  ASSERT_NE(routing->chain(chain()), nullptr);
  const TargetId target = routing->chain(chain())->targets.front().target;
  auto store = cluster_->store(target);
  ASSERT_NE(store, nullptr);

  ASSERT_TRUE(cluster_->crash_storage(1).is_ok());
  const ChunkId id{kInode, 2};
  const std::vector<std::byte> bytes = testing::pattern_bytes(3000, 5);
  ChunkUpdate update{.id = id,
                     .version = 1,
                     .chain_version = routing->chain(chain())->version,
                     .data = bytes,
                     .full_replacement = true};
  ASSERT_TRUE(store->put_pending(update).is_ok());
  store->set_faults(MemChunkStoreFaults{.uniform = [] { return 0.0; }, .list_error_probability = 1.0});
  ASSERT_TRUE(cluster_->start_storage(1).is_ok());
  ASSERT_TRUE(cluster_->wait_serving(30'000).is_ok());
  StorageService* service = cluster_->service(1);
  ASSERT_NE(service, nullptr);
  // A read under the chain's current version (for a moment after mgmtd shows the restarted target serving, its state
  // changes still bump the version and the service may not have heard that it serves: such a read is refused as
  // stale or not serving, as a client's would be, and sent again).
  const auto read = [&](ChunkId chunk, ReadMode mode) -> Result<Response> {
    Result<Response> answer = unavailable("not sent");
    for (int attempt = 0; attempt < 50; ++attempt) {
      auto now = cluster_->routing();
      if (!now.is_ok()) return now.status();
      const ChainInfo* info = now->chain(chain());
      const NodeInfo* node = now->node(1);
      if (info == nullptr || node == nullptr) return not_found("chain or node 1 missing from the routing");
      ReadReq req{.chain = chain(),
                  .chain_version = info->version,
                  .target = target,
                  .chunk = chunk,
                  .length = 4096,
                  .mode = mode};
      answer = rpc::call_blocking(cluster_->client_rpc(), node->address, Request{req}, 10'000'000'000);
      const FsError error = fs_error_of(answer.status());
      if (answer.is_ok() || (error != FsError::kStaleChainVersion && error != FsError::kNotServing)) return answer;
      std::this_thread::sleep_for(std::chrono::milliseconds(50));
    }
    return answer;
  };
  for (ReadMode mode : {ReadMode::kStrict, ReadMode::kRelaxed}) {
    const uint64_t fast_before = service->stats().fast_reads;
    auto answer = read(id, mode);
    ASSERT_FALSE(answer.is_ok()) << "a read of the unsettled first version returned data (mode "
                                 << static_cast<int>(mode) << ")";
    EXPECT_EQ(fs_error_of(answer.status()), FsError::kChunkDirty) << answer.status();
    EXPECT_EQ(service->stats().fast_reads, fast_before + 1) << "the read did not take the fast lane";
  }
  // The chunk written before the crash reads as ever.
  auto answer = read(ChunkId{kInode, 1}, ReadMode::kStrict);
  ASSERT_TRUE(answer.is_ok()) << answer.status();
  ASSERT_NE(std::get_if<ReadRsp>(&*answer), nullptr);
  EXPECT_EQ(std::get<ReadRsp>(*answer).data, testing::pattern_bytes(2048 + 256 * 1, 100 + 1));
}

// The background scrub (StorageConfig::scrub_bytes_per_s): a chunk corrupted on one replica's disk, which no client
// reads, is found by the scrub and repaired from another replica; the scrub keeps passing over the targets.
TEST_F(RecoveryTest, TheScrubRepairsACorruptChunkNobodyReads) {
  testing::TempDir dir;
  auto started = testing::StorageCluster::start({.nodes = 3,
                                                 .targets_per_node = 1,
                                                 .replication = 3,
                                                 .engine_root = dir.path(),
                                                 .scrub_bytes_per_s = 64 << 20,
                                                 .scrub_pass_pause_ns = 50'000'000});
  ASSERT_TRUE(started.is_ok()) << started.status();
  cluster_ = std::move(*started);
  ASSERT_TRUE(cluster_->wait_serving(30'000).is_ok());
  for (uint64_t i = 0; i < 8; ++i) ASSERT_NO_FATAL_FAILURE(write(i, 1));

  // Corrupt chunk 5 on node 2's target, where its committed bytes lie (every replica committed first).
  auto routing = cluster_->routing();
  ASSERT_TRUE(routing.is_ok()) << routing.status();
  const ChainInfo* info = routing->chain(chain());
  ASSERT_NE(info, nullptr);
  TargetId victim = 0;
  for (const auto& member : info->targets) {
    if (member.target / kTargetsPerNodeLimit == 2) victim = member.target;
  }
  ASSERT_NE(victim, 0u);
  auto store = cluster_->chunk_store(victim);
  ASSERT_NE(store, nullptr);
  const ChunkId id{kInode, 5};
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(10);
  for (;;) {
    auto meta = store->stat(id);
    if (meta.is_ok() && meta->pending_version == 0 && meta->committed_version == 1) break;
    ASSERT_LT(std::chrono::steady_clock::now(), deadline) << "the victim did not commit chunk 5";
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
  }
  auto located = store->locate(id, 0, UINT64_MAX, ReadMode::kStrict);
  ASSERT_TRUE(located.is_ok() && located->extent) << located.status();
  StorageService* service = cluster_->service(2);
  ASSERT_NE(service, nullptr);
  // Counted before the scribble: the scrub runs all along and may find (and repair) it before the next line.
  const uint64_t found_before = service->stats().scrub_corruptions;
  testing::scribble(located->extent->path, located->extent->file_offset + 100, 64);

  // No client reads: the scrub finds it and the replica reads clean again.
  const auto repaired_by = std::chrono::steady_clock::now() + std::chrono::seconds(30);
  for (;;) {
    auto read = store->read(id, 0, UINT64_MAX, ReadMode::kStrict);
    if (read.is_ok()) break;
    ASSERT_LT(std::chrono::steady_clock::now(), repaired_by) << "chunk 5 is still corrupt: " << read.status();
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  EXPECT_GT(service->stats().scrub_corruptions, found_before);
  // The scrub goes on: passes end and the next ones start (pauses of 50 ms here).
  const auto passes_by = std::chrono::steady_clock::now() + std::chrono::seconds(30);
  while (service->stats().scrub_passes < 2 || service->stats().chunks_scrubbed <= 8) {
    ASSERT_LT(std::chrono::steady_clock::now(), passes_by)
        << service->stats().scrub_passes << " passes, " << service->stats().chunks_scrubbed << " chunks scrubbed";
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
}

// The scrub's place survives a restart. Node 2 has two targets with 20 chunks each. After its first pass both saved
// "pass 1 from the first chunk"; node 2 is crashed in the (long) pause, and its targets' places are set to what a crash
// in the middle of pass 1 leaves: the first target done with it (pass 2), the second at chunk 12. The restarted
// service must finish pass 1 from there: the 8 chunks from 12 on, not 40, saving its place as it goes, then pause,
// having read each target's saved place once.
TEST_F(RecoveryTest, ARestartedScrubGoesOnWhereItWas) {
  testing::TempDir dir;
  auto started = testing::StorageCluster::start({.nodes = 3,
                                                 .targets_per_node = 2,
                                                 .replication = 3,
                                                 .engine_root = dir.path(),
                                                 .scrub_bytes_per_s = 100'000,  // ~25 ms per chunk of 2-3.6 KB
                                                 .scrub_pass_pause_ns = 600'000'000'000,
                                                 .scrub_save_interval_ns = 0});
  ASSERT_TRUE(started.is_ok()) << started.status();
  cluster_ = std::move(*started);
  ASSERT_TRUE(cluster_->wait_serving(30'000).is_ok());
  ASSERT_EQ(cluster_->chains().size(), 2u);
  constexpr uint64_t kChunks = 20;
  for (ChainId chain : cluster_->chains()) {
    for (uint64_t i = 0; i < kChunks; ++i) {
      auto written = run<WriteRsp>([&](auto done) {
        cluster_->storage_client().write(chain, ChunkId{kInode, i}, 0, testing::pattern_bytes(2048 + 256 * (i % 7), i),
                                         done);
      });
      ASSERT_TRUE(written.is_ok()) << "chain " << chain << " chunk " << i << ": " << written.status();
    }
  }
  const auto wait_for_pass = [](StorageService* service) {
    const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(60);
    while (service->stats().scrub_passes < 1) {
      ASSERT_LT(std::chrono::steady_clock::now(), deadline) << service->stats().chunks_scrubbed << " chunks scrubbed";
      std::this_thread::sleep_for(std::chrono::milliseconds(2));
    }
  };
  ASSERT_NE(cluster_->service(2), nullptr);
  ASSERT_NO_FATAL_FAILURE(wait_for_pass(cluster_->service(2)));
  ASSERT_TRUE(cluster_->crash_storage(2).is_ok());

  const TargetId first = 2 * kTargetsPerNodeLimit + 1, second = first + 1;
  auto first_store = cluster_->chunk_store(first), second_store = cluster_->chunk_store(second);
  ASSERT_NE(first_store, nullptr);
  ASSERT_NE(second_store, nullptr);
  for (auto* store : {first_store.get(), second_store.get()}) {
    auto saved = store->load_scrub_cursor();
    ASSERT_TRUE(saved.is_ok() && saved->has_value()) << saved.status();
    EXPECT_EQ(**saved, (ChunkStore::ScrubCursor{1, ChunkId{}}));
    auto listed = store->list(ChunkId{0, 0}, ChunkId{UINT64_MAX, UINT64_MAX}, UINT64_MAX);
    ASSERT_TRUE(listed.is_ok() && listed->size() == kChunks) << listed.status();
  }
  ASSERT_TRUE(first_store->save_scrub_cursor({.pass = 2, .next = ChunkId{}}).is_ok());
  ASSERT_TRUE(second_store->save_scrub_cursor({.pass = 1, .next = ChunkId{kInode, 12}}).is_ok());

  ASSERT_TRUE(cluster_->start_storage(2).is_ok());
  StorageService* restarted = cluster_->service(2);
  ASSERT_NE(restarted, nullptr);
  // Its place is saved after every chunk here: some saved place lies strictly between chunk 12 and the end.
  std::set<uint64_t> seen;
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(60);
  while (restarted->stats().scrub_passes < 1) {
    ASSERT_LT(std::chrono::steady_clock::now(), deadline) << restarted->stats().chunks_scrubbed << " chunks scrubbed";
    auto saved = second_store->load_scrub_cursor();
    if (saved.is_ok() && saved->has_value() && (*saved)->pass == 1) seen.insert((*saved)->next.index);
    std::this_thread::sleep_for(std::chrono::milliseconds(2));
  }
  EXPECT_EQ(restarted->stats().chunks_scrubbed, kChunks - 12);
  // Each target's saved place was read once: by the search for the pass, kept for the target's turn.
  EXPECT_EQ(restarted->stats().scrub_places_read, 2u);
  EXPECT_TRUE(std::any_of(seen.begin(), seen.end(), [](uint64_t index) { return index > 12 && index < kChunks; }))
      << "no place saved inside the second target";
  for (auto* store : {first_store.get(), second_store.get()}) {
    auto saved = store->load_scrub_cursor();
    ASSERT_TRUE(saved.is_ok() && saved->has_value()) << saved.status();
    EXPECT_EQ(**saved, (ChunkStore::ScrubCursor{2, ChunkId{}}));
  }
}

}  // namespace
}  // namespace ff::fs
