// Many threads creating, linking, renaming and removing in a small shared tree, on the in-memory and
// RocksDB engines; afterwards fsck must find no orphan inode, no cycle, right link counts and every
// entry naming a live inode of its type. Plus targeted races: one winner per name, crossing directory
// renames that would close a cycle. Like meta_test.cc, run in-process by fs_meta_test and through
// gRPC (a MetaRpcServer + RemoteMeta in front of each service instance) by fs_meta_rpc_test
// (meta_test.h, concurrency_suite()).
#include <atomic>
#include <mutex>
#include <random>
#include <thread>

#include "../rpc/test_util.h"
#include "ff/fs/kv_engines.h"
#include "meta_test.h"

namespace ff::fs::meta {
namespace {

const Caller kRoot{0, 0, {}};

class MetaConcurrency : public ::testing::TestWithParam<std::string> {
 protected:
  // The engine of the parameter ("rocksdb_grpc" -> "rocksdb").
  std::string engine() const { return GetParam().substr(0, GetParam().find('_')); }
  void SetUp() override {
    if (engine() == "memory") {
      engine_ = kv::open_memory_kv();
    } else if (engine() == "etcd") {
      if (!rpc::testing::have_etcd()) GTEST_SKIP() << "etcd is not installed (Debian etcd-server); skipping";
      auto server = rpc::testing::EtcdServer::start();
      ASSERT_TRUE(server.is_ok()) << server.status().to_string();
      etcd_ = std::move(*server);
      auto engine = kv::open_etcd_kv(kv::EtcdKvOptions{.endpoint = etcd_->endpoint(), .prefix = "/meta/"});
      ASSERT_TRUE(engine.is_ok()) << engine.status().to_string();
      engine_ = std::move(*engine);
    } else {
      dir_ = std::make_unique<rpc::testing::TempDir>();
      auto engine = kv::open_rocksdb_kv(kv::RocksDbKvOptions{.path = dir_->path() + "/meta"});
      ASSERT_TRUE(engine.is_ok()) << engine.status().to_string();
      engine_ = std::move(*engine);
    }
    MetaConfig config;
    config.inode_batch = 16;  // allocator transactions race too
    config.retry.max_attempts = 200;
    auto service = MetaService::open(*engine_, config);
    ASSERT_TRUE(service.is_ok()) << service.status().to_string();
    meta_ = std::move(*service);
    // A second, independent instance on the same store: the service is stateless, so instances may
    // race each other like threads of one.
    auto second = MetaService::open(*engine_, config);
    ASSERT_TRUE(second.is_ok()) << second.status().to_string();
    second_ = std::move(*second);
    api_ = meta_.get();
    second_api_ = second_.get();
    if (auto frontend = testing::concurrency_suite().frontend) {
      front_ = frontend(*meta_);
      second_front_ = frontend(*second_);
      api_ = &front_->api();
      second_api_ = &second_front_->api();
    }
  }
  void TearDown() override {
    front_.reset();
    second_front_.reset();
    meta_.reset();
    second_.reset();
    engine_.reset();
    etcd_.reset();
    dir_.reset();
  }
  void expect_consistent(size_t* inodes = nullptr) {
    auto report = meta_->fsck();
    ASSERT_TRUE(report.is_ok()) << report.status().to_string();
    for (const auto& problem : report->problems) ADD_FAILURE() << problem;
    if (inodes != nullptr) *inodes = report->inodes;
  }

  std::unique_ptr<rpc::testing::TempDir> dir_;
  std::unique_ptr<rpc::testing::EtcdServer> etcd_;
  std::unique_ptr<kv::KvEngine> engine_;
  std::unique_ptr<MetaService> meta_;
  std::unique_ptr<MetaService> second_;
  std::unique_ptr<testing::MetaFrontend> front_, second_front_;
  MetaApi* api_ = nullptr;         // the operations go through these (a service or its frontend);
  MetaApi* second_api_ = nullptr;  // fsck always asks meta_ itself
};

// Errnos a racing namespace operation may legitimately get; anything else (EIO, EAGAIN after the retry
// budget, data_loss) is a failure.
bool expected_race_errno(int value) {
  return value == ENOENT || value == EEXIST || value == ENOTEMPTY || value == EINVAL || value == ENOTDIR ||
         value == EISDIR || value == EPERM;
}

TEST_P(MetaConcurrency, RandomNamespaceOperationsKeepInvariants) {
  const int threads = 6;
  // etcd: 100, not fewer. With 60 operations per thread the rename floor below (then a fixed 20) sat
  // inside the spread of successful renames on etcd (19..33 in 18 loaded runs), so the test failed now
  // and then though the service was right: the test's fault, not a retry budget or compaction issue
  // (no unexpected errno in any failed run).
  const int ops_per_thread = engine() == "memory" ? 3000 : engine() == "rocksdb" ? 300 : 100;
  std::mutex dirs_mutex;
  std::vector<InodeId> dirs = {kRootInode};
  for (int i = 0; i < 3; ++i) {
    auto dir = api_->mkdir(kRoot, kRootInode, fmt::format("top{}", i), 0755);
    ASSERT_TRUE(dir.is_ok());
    dirs.push_back(dir->id);
  }
  std::atomic<int> unexpected{0}, succeeded{0}, renamed{0}, dir_renames{0}, exchanged{0};
  std::vector<std::thread> workers;
  for (int t = 0; t < threads; ++t) {
    workers.emplace_back([&, t] {
      MetaApi* meta = t % 2 == 0 ? api_ : second_api_;  // half the threads use instance 2
      std::mt19937 random(1234 + t);
      auto pick_dir = [&] {
        std::lock_guard lock(dirs_mutex);
        return dirs[random() % dirs.size()];
      };
      auto name = [&] { return fmt::format("n{}", random() % 6); };
      for (int i = 0; i < ops_per_thread; ++i) {
        Status status;
        int op = static_cast<int>(random() % 100);
        if (op < 25) {
          status = meta->create(kRoot, pick_dir(), name(), 0644).status();
        } else if (op < 37) {
          auto dir = meta->mkdir(kRoot, pick_dir(), name(), 0755);
          status = dir.status();
          if (dir.is_ok()) {
            std::lock_guard lock(dirs_mutex);
            dirs.push_back(dir->id);
          }
        } else if (op < 52) {
          status = meta->unlink(kRoot, pick_dir(), name());
        } else if (op < 60) {
          status = meta->rmdir(kRoot, pick_dir(), name());
        } else if (op < 90) {
          InodeId from = pick_dir();
          std::string from_name = name();
          auto what = meta->lookup(kRoot, from, from_name);
          status = meta->rename(kRoot, from, from_name, pick_dir(), name());
          if (status.is_ok()) {
            ++renamed;
            if (what.is_ok() && what->type == FileType::kDirectory) ++dir_renames;
          }
        } else if (op < 95) {
          auto target = meta->lookup(kRoot, pick_dir(), name());
          status = target.is_ok() ? meta->link(kRoot, target->id, pick_dir(), name()).status() : target.status();
        } else if (op < 98) {
          // Swaps of files and directories across the tree: cycles and link counts are fsck's to check.
          // Both names are taken from listings (random names would rarely both exist).
          InodeId from = pick_dir(), to = pick_dir();
          auto from_page = meta->readdir(kRoot, from, "", 8);
          auto to_page = meta->readdir(kRoot, to, "", 8);
          if (from_page.is_ok() && to_page.is_ok() && !from_page->entries.empty() && !to_page->entries.empty()) {
            const std::string& from_name = from_page->entries[random() % from_page->entries.size()].name;
            const std::string& to_name = to_page->entries[random() % to_page->entries.size()].name;
            status = meta->exchange(kRoot, from, from_name, to, to_name);
            if (status.is_ok()) ++exchanged;
          } else {
            status = !from_page.is_ok() ? from_page.status() : to_page.status();
          }
        } else {
          // Attributes on inodes that others remove meanwhile: fsck finds any left behind.
          auto target = meta->lookup(kRoot, pick_dir(), name());
          status = target.is_ok() ? meta->setxattr(kRoot, target->id, "user.k", "v", 0) : target.status();
        }
        if (status.is_ok()) {
          ++succeeded;
        } else if (!expected_race_errno(errno_of(status))) {
          ++unexpected;
          ADD_FAILURE() << "thread " << t << " op " << i << ": " << status.to_string();
        }
      }
    });
  }
  for (auto& worker : workers) worker.join();
  EXPECT_EQ(unexpected.load(), 0);
  // The workload must actually have exercised the races it claims to. Floors scale with the workload:
  // about 7% of operations are successful renames (memory 7.5%, RocksDB 7%, etcd 6%), so 1 in 30 is
  // far below every observed run and still proves renames raced.
  EXPECT_GT(succeeded.load(), threads * ops_per_thread / 5);
  EXPECT_GT(renamed.load(), threads * ops_per_thread / 30);
  EXPECT_GT(dir_renames.load(), 0);
  EXPECT_GT(exchanged.load(), 0);
  size_t inodes = 0;
  expect_consistent(&inodes);
  EXPECT_GT(inodes, 4u);
}

TEST_P(MetaConcurrency, OneWinnerPerName) {
  const int threads = 8;
  for (int round = 0; round < 5; ++round) {
    std::atomic<int> created{0}, exists{0};
    std::vector<std::thread> workers;
    std::string name = fmt::format("contended{}", round);
    for (int t = 0; t < threads; ++t) {
      workers.emplace_back([&, t] {
        auto result =
            (t % 2 == 0) ? api_->create(kRoot, kRootInode, name, 0644) : api_->mkdir(kRoot, kRootInode, name, 0755);
        if (result.is_ok()) {
          ++created;
        } else if (errno_of(result.status()) == EEXIST) {
          ++exists;
        } else {
          ADD_FAILURE() << result.status().to_string();
        }
      });
    }
    for (auto& worker : workers) worker.join();
    EXPECT_EQ(created.load(), 1);
    EXPECT_EQ(exists.load(), threads - 1);
  }
  expect_consistent();
}

TEST_P(MetaConcurrency, CrossingDirectoryRenamesNeverMakeACycle) {
  for (int round = 0; round < 15; ++round) {
    auto a = api_->mkdir(kRoot, kRootInode, "a", 0755);
    auto b = api_->mkdir(kRoot, kRootInode, "b", 0755);
    ASSERT_TRUE(a.is_ok() && b.is_ok());
    Status a_into_b, b_into_a;
    std::thread first([&] { a_into_b = api_->rename(kRoot, kRootInode, "a", b->id, "a"); });
    std::thread second([&] { b_into_a = api_->rename(kRoot, kRootInode, "b", a->id, "b"); });
    first.join();
    second.join();
    // Both may fail (each sees the other already moved: ENOENT), never both succeed.
    EXPECT_FALSE(a_into_b.is_ok() && b_into_a.is_ok()) << "round " << round;
    for (const Status* status : {&a_into_b, &b_into_a}) {
      if (!status->is_ok()) {
        EXPECT_TRUE(expected_race_errno(errno_of(*status))) << status->to_string();
      }
    }
    expect_consistent();
    // Clean up whichever shape resulted.
    if (a_into_b.is_ok()) {
      ASSERT_TRUE(api_->rmdir(kRoot, b->id, "a").is_ok());
      ASSERT_TRUE(api_->rmdir(kRoot, kRootInode, "b").is_ok());
    } else if (b_into_a.is_ok()) {
      ASSERT_TRUE(api_->rmdir(kRoot, a->id, "b").is_ok());
      ASSERT_TRUE(api_->rmdir(kRoot, kRootInode, "a").is_ok());
    } else {
      ASSERT_TRUE(api_->rmdir(kRoot, kRootInode, "a").is_ok());
      ASSERT_TRUE(api_->rmdir(kRoot, kRootInode, "b").is_ok());
    }
  }
}

TEST_P(MetaConcurrency, CreatesRacingRmdirLeaveNoOrphans) {
  for (int round = 0; round < 10; ++round) {
    auto dir = api_->mkdir(kRoot, kRootInode, "victim", 0755);
    ASSERT_TRUE(dir.is_ok());
    std::atomic<int> created{0};
    std::vector<std::thread> workers;
    for (int t = 0; t < 4; ++t) {
      workers.emplace_back([&, t] {
        if (api_->create(kRoot, dir->id, fmt::format("f{}", t), 0644).is_ok()) ++created;
      });
    }
    Status removed;
    workers.emplace_back([&] { removed = api_->rmdir(kRoot, kRootInode, "victim"); });
    for (auto& worker : workers) worker.join();
    if (removed.is_ok()) {
      // rmdir won: every create that succeeded must have come before it... which would make rmdir fail.
      EXPECT_EQ(created.load(), 0) << "round " << round;
    } else {
      EXPECT_EQ(errno_of(removed), ENOTEMPTY) << removed.to_string();
      for (int t = 0; t < 4; ++t) (void)api_->unlink(kRoot, dir->id, fmt::format("f{}", t));
      ASSERT_TRUE(api_->rmdir(kRoot, kRootInode, "victim").is_ok());
    }
    expect_consistent();
  }
}

INSTANTIATE_TEST_SUITE_P(Engines, MetaConcurrency, ::testing::ValuesIn(testing::concurrency_suite().engines),
                         [](const auto& info) { return info.param; });

}  // namespace
}  // namespace ff::fs::meta
