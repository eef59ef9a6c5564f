// One conformance suite for every KV engine (memory, rocksdb, etcd): point and range reads, read-your-
// writes, snapshots, conflicts on read keys and read ranges (phantoms), blind writes, run_transaction
// under contention (a counter and a bank-transfer invariant), and RocksDB durability across reopen.
// The etcd cases start `etcd` on 127.0.0.1 random ports and skip when it is not installed.
#include <atomic>
#include <filesystem>
#include <functional>
#include <thread>

#include <fmt/format.h>

#include <grpcpp/grpcpp.h>
#include <gtest/gtest.h>

#include "../rpc/test_util.h"
#include "etcd/etcdserverpb/rpc.grpc.pb.h"
#include "ff/fs/kv.h"
#include "ff/fs/kv_engines.h"

namespace ff::fs::kv {
namespace {

using rpc::testing::EtcdServer;
using rpc::testing::TempDir;

class KvConformance : public ::testing::TestWithParam<std::string> {
 protected:
  void SetUp() override {
    const std::string& engine = GetParam();
    if (engine == "memory") {
      engine_ = open_memory_kv();
    } else if (engine == "rocksdb") {
      dir_ = std::make_unique<TempDir>();
      auto opened = open_rocksdb_kv(RocksDbKvOptions{.path = dir_->path() + "/kv"});
      ASSERT_TRUE(opened.is_ok()) << opened.status();
      engine_ = std::move(*opened);
    } else {
      if (!rpc::testing::have_etcd()) GTEST_SKIP() << "etcd is not installed (Debian etcd-server); skipping";
      auto server = EtcdServer::start();
      ASSERT_TRUE(server.is_ok()) << server.status();
      etcd_ = std::move(*server);
      auto opened = open_etcd_kv(EtcdKvOptions{.endpoint = etcd_->endpoint(), .prefix = "/conformance/"});
      ASSERT_TRUE(opened.is_ok()) << opened.status();
      engine_ = std::move(*opened);
    }
  }
  void TearDown() override {
    engine_.reset();
    etcd_.reset();
    dir_.reset();
  }

  std::unique_ptr<Transaction> begin() {
    auto transaction = engine_->begin();
    EXPECT_TRUE(transaction.is_ok()) << transaction.status();
    return std::move(*transaction);
  }
  void put(const std::string& key, const std::string& value) {
    auto transaction = begin();
    transaction->set(key, value);
    ASSERT_TRUE(transaction->commit().is_ok());
  }
  std::optional<std::string> read(const std::string& key) {
    auto transaction = begin();
    auto value = transaction->get(key);
    EXPECT_TRUE(value.is_ok()) << value.status();
    return value.is_ok() ? *value : std::nullopt;
  }
  std::vector<std::string> keys(const std::vector<KeyValue>& rows) {
    std::vector<std::string> out;
    for (const auto& row : rows) out.push_back(row.key);
    return out;
  }

  std::unique_ptr<TempDir> dir_;
  std::unique_ptr<EtcdServer> etcd_;
  std::unique_ptr<KvEngine> engine_;
};

TEST_P(KvConformance, SetGetClear) {
  EXPECT_EQ(read("a"), std::nullopt);
  put("a", "1");
  EXPECT_EQ(read("a"), "1");
  put("a", std::string("bin\0ary\xff", 8));
  EXPECT_EQ(read("a"), std::string("bin\0ary\xff", 8));
  auto transaction = begin();
  transaction->clear("a");
  ASSERT_TRUE(transaction->commit().is_ok());
  EXPECT_EQ(read("a"), std::nullopt);
}

TEST_P(KvConformance, UncommittedWritesAreInvisibleAndDiscarded) {
  {
    auto transaction = begin();
    transaction->set("k", "v");
    EXPECT_EQ(read("k"), std::nullopt);  // another transaction does not see it
  }                                      // destroyed without commit
  EXPECT_EQ(read("k"), std::nullopt);
}

TEST_P(KvConformance, RangeOrderLimitAndBounds) {
  auto transaction = begin();
  for (const char* key : {"r/c", "r/a", "r/e", "r/b", "r/d", "s/x", "q/z"}) transaction->set(key, key);
  ASSERT_TRUE(transaction->commit().is_ok());
  auto scan = begin();
  auto all = scan->range("r/", prefix_end("r/"), 0);
  ASSERT_TRUE(all.is_ok()) << all.status();
  EXPECT_EQ(keys(*all), (std::vector<std::string>{"r/a", "r/b", "r/c", "r/d", "r/e"}));
  EXPECT_EQ((*all)[2].value, "r/c");
  auto limited = scan->range("r/", prefix_end("r/"), 2);
  ASSERT_TRUE(limited.is_ok());
  EXPECT_EQ(keys(*limited), (std::vector<std::string>{"r/a", "r/b"}));
  auto middle = scan->range("r/b", "r/d", 0);  // end is exclusive
  ASSERT_TRUE(middle.is_ok());
  EXPECT_EQ(keys(*middle), (std::vector<std::string>{"r/b", "r/c"}));
  auto to_end = scan->range("r/d", "", 0);  // "" = unbounded
  ASSERT_TRUE(to_end.is_ok());
  EXPECT_EQ(keys(*to_end), (std::vector<std::string>{"r/d", "r/e", "s/x"}));
  auto empty = scan->range("r/x", "r/y", 0);
  ASSERT_TRUE(empty.is_ok());
  EXPECT_TRUE(empty->empty());
}

TEST_P(KvConformance, ReadYourWritesInGetAndRange) {
  put("p/1", "old1");
  put("p/2", "old2");
  put("p/3", "old3");
  auto transaction = begin();
  transaction->set("p/2", "new2");
  transaction->set("p/0", "new0");
  transaction->clear("p/3");
  EXPECT_EQ(*transaction->get("p/2"), "new2");
  EXPECT_EQ(*transaction->get("p/3"), std::nullopt);
  auto rows = transaction->range("p/", prefix_end("p/"), 0);
  ASSERT_TRUE(rows.is_ok());
  ASSERT_EQ(keys(*rows), (std::vector<std::string>{"p/0", "p/1", "p/2"}));
  EXPECT_EQ((*rows)[2].value, "new2");
  auto limited = transaction->range("p/", prefix_end("p/"), 2);
  ASSERT_TRUE(limited.is_ok());
  EXPECT_EQ(keys(*limited), (std::vector<std::string>{"p/0", "p/1"}));
  // A cleared range hides stored keys; a key set after it is visible again.
  transaction->clear_range("p/", prefix_end("p/"));
  transaction->set("p/5", "five");
  rows = transaction->range("p/", prefix_end("p/"), 0);
  ASSERT_TRUE(rows.is_ok());
  EXPECT_EQ(keys(*rows), (std::vector<std::string>{"p/5"}));
  EXPECT_EQ(*transaction->get("p/1"), std::nullopt);
  ASSERT_TRUE(transaction->commit().is_ok());
  auto after = begin()->range("p/", prefix_end("p/"), 0);
  ASSERT_TRUE(after.is_ok());
  EXPECT_EQ(keys(*after), (std::vector<std::string>{"p/5"}));
}

TEST_P(KvConformance, RangeSkipsManyBufferedDeletesUnderLimit) {
  auto fill = begin();
  for (int i = 0; i < 40; ++i) fill->set(fmt::format("m/{:03}", i), "x");
  ASSERT_TRUE(fill->commit().is_ok());
  auto transaction = begin();
  for (int i = 0; i < 30; ++i) transaction->clear(fmt::format("m/{:03}", i));
  auto rows = transaction->range("m/", prefix_end("m/"), 5);
  ASSERT_TRUE(rows.is_ok());
  EXPECT_EQ(keys(*rows), (std::vector<std::string>{"m/030", "m/031", "m/032", "m/033", "m/034"}));
}

TEST_P(KvConformance, SnapshotReadsAreStable) {
  put("s", "1");
  auto reader = begin();
  EXPECT_EQ(*reader->get("s"), "1");
  put("s", "2");
  put("t", "new");
  EXPECT_EQ(*reader->get("s"), "1");
  EXPECT_EQ(*reader->get("t"), std::nullopt);
  EXPECT_TRUE(reader->commit().is_ok());  // read-only: nothing to conflict with
  EXPECT_EQ(read("s"), "2");
}

TEST_P(KvConformance, ConflictOnReadKey) {
  put("x", "0");
  auto first = begin();
  EXPECT_EQ(*first->get("x"), "0");
  put("x", "other");
  first->set("y", "derived from x=0");
  Status status = first->commit();
  EXPECT_TRUE(is_kv_conflict(status)) << status;
  EXPECT_EQ(read("y"), std::nullopt);  // nothing applied
  EXPECT_EQ(read("x"), "other");
}

TEST_P(KvConformance, ConflictOnReadAbsentKeyCreatedLater) {
  auto first = begin();
  EXPECT_EQ(*first->get("lock"), std::nullopt);
  put("lock", "held by second");
  first->set("lock", "held by first");
  EXPECT_TRUE(is_kv_conflict(first->commit()));
  EXPECT_EQ(read("lock"), "held by second");
}

TEST_P(KvConformance, ConflictOnReadKeyDeleted) {
  put("d", "1");
  auto first = begin();
  EXPECT_EQ(*first->get("d"), "1");
  auto second = begin();
  second->clear_range("c", "e");
  ASSERT_TRUE(second->commit().is_ok());
  first->set("z", "1");
  EXPECT_TRUE(is_kv_conflict(first->commit()));
}

TEST_P(KvConformance, PhantomInsertIntoReadRangeConflicts) {
  put("dir/a", "1");
  auto first = begin();
  auto rows = first->range("dir/", prefix_end("dir/"), 0);
  ASSERT_TRUE(rows.is_ok());
  EXPECT_EQ(rows->size(), 1u);
  put("dir/b", "2");  // a phantom
  first->set("summary", "1 entry");
  EXPECT_TRUE(is_kv_conflict(first->commit()));
}

TEST_P(KvConformance, DeletionInsideReadRangeConflicts) {
  put("dir/a", "1");
  put("dir/b", "2");
  auto first = begin();
  ASSERT_EQ(first->range("dir/", prefix_end("dir/"), 0)->size(), 2u);
  auto second = begin();
  second->clear("dir/a");
  ASSERT_TRUE(second->commit().is_ok());
  first->set("summary", "2 entries");
  EXPECT_TRUE(is_kv_conflict(first->commit()));
}

TEST_P(KvConformance, WritesOutsideALimitedRangeDoNotConflict) {
  put("l/a", "1");
  put("l/b", "2");
  auto first = begin();
  auto rows = first->range("l/", prefix_end("l/"), 1);  // covers only up to l/a
  ASSERT_TRUE(rows.is_ok());
  ASSERT_EQ(rows->size(), 1u);
  put("l/c", "3");
  put("unrelated", "x");
  first->set("l/a", "updated");
  EXPECT_TRUE(first->commit().is_ok());
  EXPECT_EQ(read("l/a"), "updated");
}

TEST_P(KvConformance, BlindWritesDoNotConflictLastCommitWins) {
  auto first = begin();
  auto second = begin();
  first->set("w", "first");
  second->set("w", "second");
  ASSERT_TRUE(second->commit().is_ok());
  ASSERT_TRUE(first->commit().is_ok());
  EXPECT_EQ(read("w"), "first");
}

TEST_P(KvConformance, AddReadConflictSerializesWriters) {
  put("guard", "0");
  auto first = begin();
  ASSERT_TRUE(first->add_read_conflict("guard").is_ok());
  put("guard", "1");
  first->set("other", "x");
  EXPECT_TRUE(is_kv_conflict(first->commit()));
}

TEST_P(KvConformance, CommitVersionsIncrease) {
  auto first = begin();
  first->set("v", "1");
  ASSERT_TRUE(first->commit().is_ok());
  auto second = begin();
  second->set("v", "2");
  ASSERT_TRUE(second->commit().is_ok());
  EXPECT_GT(first->committed_version(), 0u);
  EXPECT_GT(second->committed_version(), first->committed_version());
  auto reader = begin();
  ASSERT_TRUE(reader->get("v").is_ok());
  EXPECT_GE(reader->read_version(), second->committed_version());
}

TEST_P(KvConformance, RunTransactionRetriesConflictsCounter) {
  const int threads = GetParam() == "etcd" ? 4 : 8;
  const int increments = GetParam() == "etcd" ? 15 : 100;
  put("counter", "0");
  std::atomic<int> failures{0};
  std::vector<std::thread> workers;
  for (int t = 0; t < threads; ++t) {
    workers.emplace_back([&] {
      for (int i = 0; i < increments; ++i) {
        Status status = run_transaction(
            *engine_,
            [](Transaction& transaction) -> Status {
              FF_ASSIGN_OR_RETURN(auto value, transaction.get("counter"));
              transaction.set("counter", std::to_string(std::stoi(value.value_or("0")) + 1));
              return Status::ok();
            },
            RetryOptions{.max_attempts = 1000});
        if (!status.is_ok()) ++failures;
      }
    });
  }
  for (auto& worker : workers) worker.join();
  EXPECT_EQ(failures.load(), 0);
  EXPECT_EQ(read("counter"), std::to_string(threads * increments));
}

TEST_P(KvConformance, RunTransactionReturnsBodyErrorsWithoutRetry) {
  int calls = 0;
  Status status = run_transaction(*engine_, [&](Transaction& transaction) -> Status {
    ++calls;
    transaction.set("never", "written");
    return not_found("the body's own error");
  });
  EXPECT_EQ(status.code(), StatusCode::kNotFound);
  EXPECT_EQ(calls, 1);
  EXPECT_EQ(read("never"), std::nullopt);
}

TEST_P(KvConformance, RunTransactionGivesUpAfterMaxAttempts) {
  int calls = 0;
  Status status = run_transaction(
      *engine_,
      [&](Transaction&) -> Status {
        ++calls;
        return kv_conflict("always");
      },
      RetryOptions{.max_attempts = 3, .initial_backoff_us = 10});
  EXPECT_EQ(status.code(), StatusCode::kAborted);
  EXPECT_NE(status.message().find("3 attempts"), std::string::npos) << status;
  EXPECT_EQ(calls, 3);
}

// Transfers between accounts from several threads while readers check, in each snapshot, that money
// is neither created nor destroyed: any lost update or inconsistent snapshot breaks the sum.
TEST_P(KvConformance, BankTransfersKeepTheTotal) {
  const int accounts = 6;
  const int per_thread = GetParam() == "etcd" ? 10 : 60;
  {
    auto setup = begin();
    for (int i = 0; i < accounts; ++i) setup->set(fmt::format("bank/{}", i), "100");
    ASSERT_TRUE(setup->commit().is_ok());
  }
  std::atomic<int> failures{0};
  std::atomic<int> bad_sums{0};
  std::atomic<bool> stop{false};
  std::vector<std::thread> workers;
  for (int t = 0; t < 4; ++t) {
    workers.emplace_back([&, t] {
      for (int i = 0; i < per_thread; ++i) {
        int from = (t + i) % accounts;
        int to = (t * 3 + i * 7 + 1) % accounts;
        if (from == to) to = (to + 1) % accounts;
        Status status = run_transaction(
            *engine_,
            [&](Transaction& transaction) -> Status {
              FF_ASSIGN_OR_RETURN(auto a, transaction.get(fmt::format("bank/{}", from)));
              FF_ASSIGN_OR_RETURN(auto b, transaction.get(fmt::format("bank/{}", to)));
              transaction.set(fmt::format("bank/{}", from), std::to_string(std::stoi(*a) - 7));
              transaction.set(fmt::format("bank/{}", to), std::to_string(std::stoi(*b) + 7));
              return Status::ok();
            },
            RetryOptions{.max_attempts = 1000});
        if (!status.is_ok()) ++failures;
      }
    });
  }
  std::thread reader([&] {
    while (!stop.load()) {
      auto transaction = engine_->begin();
      if (!transaction.is_ok()) continue;
      auto rows = (*transaction)->range("bank/", prefix_end("bank/"), 0);
      if (!rows.is_ok()) continue;
      int sum = 0;
      for (const auto& row : *rows) sum += std::stoi(row.value);
      if (sum != accounts * 100 || rows->size() != static_cast<size_t>(accounts)) ++bad_sums;
    }
  });
  for (auto& worker : workers) worker.join();
  stop = true;
  reader.join();
  EXPECT_EQ(failures.load(), 0);
  EXPECT_EQ(bad_sums.load(), 0);
  auto final_rows = begin()->range("bank/", prefix_end("bank/"), 0);
  ASSERT_TRUE(final_rows.is_ok());
  int sum = 0;
  for (const auto& row : *final_rows) sum += std::stoi(row.value);
  EXPECT_EQ(sum, accounts * 100);
}

INSTANTIATE_TEST_SUITE_P(Engines, KvConformance, ::testing::Values("memory", "rocksdb", "etcd"),
                         [](const auto& info) { return info.param; });

// The memory engine drops what no running transaction can read even for keys nobody writes again:
// deleted keys (their markers) and overwritten ones (their older values) while a reader was open are
// gone once it ends, or once a later commit finds it ended; the reader still saw its snapshot.
TEST(MemoryKv, VersionsNoSnapshotCanReadAreDroppedWithoutRewritingTheKey) {
  auto engine = open_memory_kv();
  const auto run = [&](const std::function<void(Transaction&)>& body) {
    auto transaction = engine->begin();
    ASSERT_TRUE(transaction.is_ok());
    body(**transaction);
    ASSERT_TRUE((*transaction)->commit().is_ok());
  };
  run([](Transaction& t) {
    for (int i = 0; i < 100; ++i) t.set(fmt::format("k{:03}", i), "v1");
  });
  EXPECT_EQ(memory_kv_footprint(*engine).versions, 100u);

  // No transaction open: a deletion leaves nothing behind, an overwrite one version.
  run([](Transaction& t) { t.clear("k000"); });
  run([](Transaction& t) { t.set("k001", "v2"); });
  MemoryKvFootprint footprint = memory_kv_footprint(*engine);
  EXPECT_EQ(footprint.keys, 99u);
  EXPECT_EQ(footprint.versions, 99u);
  EXPECT_EQ(footprint.tombstones, 0u);

  // A reader open across deletions and overwrites keeps the old versions alive...
  auto reader = engine->begin();
  ASSERT_TRUE(reader.is_ok());
  run([](Transaction& t) { t.clear_range("k050", "k100"); });
  run([](Transaction& t) {
    for (int i = 10; i < 20; ++i) t.set(fmt::format("k{:03}", i), "v3");
  });
  footprint = memory_kv_footprint(*engine);
  EXPECT_EQ(footprint.tombstones, 50u);
  EXPECT_EQ(footprint.versions, 99u + 50u + 10u);
  EXPECT_EQ(*(*reader)->get("k070"), "v1");
  EXPECT_EQ(*(*reader)->get("k015"), "v1");
  // ...and once it ends they go, though no key is written again.
  reader->reset();
  footprint = memory_kv_footprint(*engine);
  EXPECT_EQ(footprint.keys, 49u);
  EXPECT_EQ(footprint.versions, 49u);
  EXPECT_EQ(footprint.tombstones, 0u);

  // Two readers: the older one holds what only it can read until it ends; commits in between collect
  // nothing it may still need.
  auto older = engine->begin();
  ASSERT_TRUE(older.is_ok());
  run([](Transaction& t) { t.clear("k020"); });
  auto newer = engine->begin();
  ASSERT_TRUE(newer.is_ok());
  run([](Transaction& t) { t.clear("k021"); });
  run([](Transaction& t) { t.set("other", "x"); });
  EXPECT_EQ(memory_kv_footprint(*engine).tombstones, 2u);
  EXPECT_EQ(*(*older)->get("k020"), "v1");
  EXPECT_EQ(*(*newer)->get("k020"), std::nullopt);
  EXPECT_EQ(*(*newer)->get("k021"), "v1");
  older->reset();
  run([](Transaction& t) { t.set("other", "y"); });
  footprint = memory_kv_footprint(*engine);
  EXPECT_EQ(footprint.tombstones, 1u);  // k021's: the newer reader still sees k021
  EXPECT_EQ(*(*newer)->get("k021"), "v1");
  newer->reset();
  footprint = memory_kv_footprint(*engine);
  EXPECT_EQ(footprint.tombstones, 0u);
  EXPECT_EQ(footprint.keys, 48u);  // 47 of the k keys and "other"
  EXPECT_EQ(footprint.versions, 48u);
}

TEST(MemoryKv, FootprintOfAnotherEngineIsRefused) {
  TempDir dir;
  auto engine = open_rocksdb_kv(RocksDbKvOptions{.path = dir.path() + "/kv"});
  ASSERT_TRUE(engine.is_ok());
  EXPECT_DEATH(memory_kv_footprint(**engine), "expected one from open_memory_kv");
}

TEST(RocksDbKv, CommitsSurviveReopenAndVersionsKeepIncreasing) {
  TempDir dir;
  uint64_t version = 0;
  {
    auto engine = open_rocksdb_kv(RocksDbKvOptions{.path = dir.path() + "/kv"});
    ASSERT_TRUE(engine.is_ok()) << engine.status();
    auto transaction = *(*engine)->begin();
    transaction->set("durable", "yes");
    ASSERT_TRUE(transaction->commit().is_ok());
    version = transaction->committed_version();
  }
  auto engine = open_rocksdb_kv(RocksDbKvOptions{.path = dir.path() + "/kv"});
  ASSERT_TRUE(engine.is_ok()) << engine.status();
  auto transaction = *(*engine)->begin();
  EXPECT_EQ(*transaction->get("durable"), "yes");
  transaction->set("durable", "again");
  ASSERT_TRUE(transaction->commit().is_ok());
  EXPECT_GT(transaction->committed_version(), version);
}

TEST(RocksDbKv, SecondOpenOfTheSamePathFails) {
  TempDir dir;
  auto first = open_rocksdb_kv(RocksDbKvOptions{.path = dir.path() + "/kv"});
  ASSERT_TRUE(first.is_ok());
  auto second = open_rocksdb_kv(RocksDbKvOptions{.path = dir.path() + "/kv"});
  EXPECT_FALSE(second.is_ok());
  EXPECT_NE(second.status().message().find(dir.path()), std::string::npos) << second.status();
}

TEST(EtcdKv, RejectsBadOptions) {
  EXPECT_EQ(open_etcd_kv(EtcdKvOptions{.endpoint = "nohost"}).status().code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(open_etcd_kv(EtcdKvOptions{.endpoint = "127.0.0.1:1", .prefix = ""}).status().code(),
            StatusCode::kInvalidArgument);
  EXPECT_EQ(open_etcd_kv(EtcdKvOptions{.endpoint = "127.0.0.1:1", .more_endpoints = {"nohost"}}).status().code(),
            StatusCode::kInvalidArgument);
}

// A dead member among the endpoints: its `unavailable` moves the engine to the next member.
TEST(EtcdKv, DeadMemberFailsOverToTheNextEndpoint) {
  if (!rpc::testing::have_etcd()) GTEST_SKIP() << "etcd is not installed (Debian etcd-server); skipping";
  auto server = EtcdServer::start();
  ASSERT_TRUE(server.is_ok()) << server.status();
  const std::string dead = "127.0.0.1:" + std::to_string(rpc::testing::free_port());
  auto engine = open_etcd_kv(
      EtcdKvOptions{.endpoint = dead, .more_endpoints = {(*server)->endpoint()}, .prefix = "/failover/", .timeout_ms = 2000});
  ASSERT_TRUE(engine.is_ok()) << engine.status();
  auto first = (*engine)->begin();
  ASSERT_TRUE(first.is_ok());
  auto refused = (*first)->get("k");
  ASSERT_FALSE(refused.is_ok());
  EXPECT_EQ(refused.status().code(), StatusCode::kUnavailable) << refused.status();
  EXPECT_NE(refused.status().message().find(dead), std::string::npos) << refused.status();
  auto second = (*engine)->begin();
  ASSERT_TRUE(second.is_ok());
  (*second)->set("k", "v");
  Status committed = (*second)->commit();
  ASSERT_TRUE(committed.is_ok()) << committed;
}

// An etcd KV service that answers nothing until released (a member cut off from the majority: its
// connection is fine, its requests wait).
class SilentKv final : public etcdserverpb::KV::Service {
 public:
  grpc::Status Range(grpc::ServerContext* context, const etcdserverpb::RangeRequest*,
                     etcdserverpb::RangeResponse*) override {
    return wait(context);
  }
  grpc::Status Txn(grpc::ServerContext* context, const etcdserverpb::TxnRequest*,
                   etcdserverpb::TxnResponse*) override {
    return wait(context);
  }
  std::atomic<int> calls{0};
  std::atomic<bool> released{false};

 private:
  grpc::Status wait(grpc::ServerContext* context) {
    ++calls;
    while (!released && !context->IsCancelled()) std::this_thread::sleep_for(std::chrono::milliseconds(5));
    return grpc::Status(grpc::StatusCode::UNAVAILABLE, "released");
  }
};

// A member that hangs: the call ends at its deadline, and the engine moves to the
// next endpoint (before, only `unavailable` moved it, so every later call went to the hung member).
TEST(EtcdKv, HungMemberFailsOverAfterItsDeadline) {
  if (!rpc::testing::have_etcd()) GTEST_SKIP() << "etcd is not installed (Debian etcd-server); skipping";
  auto server = EtcdServer::start();
  ASSERT_TRUE(server.is_ok()) << server.status();
  SilentKv silent;
  int port = 0;
  grpc::ServerBuilder builder;
  builder.AddListeningPort("127.0.0.1:0", grpc::InsecureServerCredentials(), &port);
  builder.RegisterService(&silent);
  std::unique_ptr<grpc::Server> silent_server = builder.BuildAndStart();
  ASSERT_TRUE(silent_server != nullptr && port > 0);
  const std::string hung = "127.0.0.1:" + std::to_string(port);
  auto engine = open_etcd_kv(
      EtcdKvOptions{.endpoint = hung, .more_endpoints = {(*server)->endpoint()}, .prefix = "/hung/", .timeout_ms = 1000});
  ASSERT_TRUE(engine.is_ok()) << engine.status();
  auto first = (*engine)->begin();
  ASSERT_TRUE(first.is_ok());
  auto stuck = (*first)->get("k");
  ASSERT_FALSE(stuck.is_ok());
  EXPECT_EQ(stuck.status().code(), StatusCode::kDeadlineExceeded) << stuck.status();
  EXPECT_EQ(silent.calls.load(), 1);
  // The next transaction runs on the live member. (A loaded machine may make a call there miss its
  // deadline too, which moves the engine back to the silent member and on again: a few attempts.)
  Status committed;
  for (int attempt = 0; attempt < 5; ++attempt) {
    auto second = (*engine)->begin();
    ASSERT_TRUE(second.is_ok());
    (*second)->set("k", "v");
    committed = (*second)->commit();
    if (committed.is_ok()) break;
  }
  EXPECT_TRUE(committed.is_ok()) << committed << " (" << silent.calls.load() << " calls reached the silent member)";
  silent.released = true;
  silent_server->Shutdown(std::chrono::system_clock::now() + std::chrono::seconds(2));
}

}  // namespace
}  // namespace ff::fs::kv
