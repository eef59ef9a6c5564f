// RemoteMeta beyond the behaviour suite: errors identical to in-process ones, failover between two
// servers on one store, bounded waits on unreachable and hung servers, the interpretation of a
// repeated create / mkdir / link / rename / unlink / close whose first reply was lost, and batching
// (concurrent calls sharing Meta.CallBatch, failed batches sent again call by call, the fallback to single
// calls against a server without it). With FF_TEST_META_TRANSPORT=tcp (ctest fs_meta_rpc_test_over_tcp) the servers
// serve our TCP transport (tcp:// addresses) instead of gRPC; the tests that talk gRPC themselves are skipped there.
#include <algorithm>
#include <atomic>
#include <chrono>
#include <future>
#include <thread>

#include <grpcpp/grpcpp.h>

#include "../meta/meta_test.h"
#include "../rpc/test_util.h"
#include "ff/fs/kv_engines.h"
#include "ff/fs/meta.grpc.pb.h"
#include "ff/fs/meta_rpc.h"
#include "ff/fs/rpc/tcp_transport.h"

namespace ff::fs::meta {
namespace {

const Caller kRoot{0, 0, {}};
const Caller kAlice{1000, 1000, {}};
const Caller kBob{1001, 1001, {}};

bool over_tcp() {
  const char* transport = std::getenv("FF_TEST_META_TRANSPORT");
  return transport != nullptr && std::string_view(transport) == "tcp";
}
// A listen address with a port the OS picks, on this run's transport.
std::string any_port() { return over_tcp() ? "tcp://127.0.0.1:0" : "127.0.0.1:0"; }
// 127.0.0.1:port on this run's transport.
std::string local_address(uint16_t port) {
  return (over_tcp() ? "tcp://127.0.0.1:" : "127.0.0.1:") + std::to_string(port);
}
#define SKIP_OVER_TCP()                                                             \
  do {                                                                              \
    if (over_tcp()) GTEST_SKIP() << "talks gRPC itself (stubs or a proxy service)"; \
  } while (false)

int64_t now_ms() {
  return std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::steady_clock::now().time_since_epoch())
      .count();
}

// Forwards to a MetaApi; can stall before executing (a hung server) or after executing (a reply that
// arrives after the client's deadline: the operation happened, the caller does not learn it).
class StallingApi final : public MetaApi {
 public:
  explicit StallingApi(MetaApi& inner) : inner_(inner) {}
  std::atomic<int> stall_before_ms{0};
  std::atomic<int> stalls_before_left{-1};  // how many calls stall before executing (-1: every call)
  std::atomic<int> stall_after_ms{0};
  std::atomic<int> stalls_after_left{0};  // how many calls stall after executing
  std::atomic<int> calls{0};

  std::atomic<bool> stall_reads{true};  // false: lookup and getxattr never stall after executing

  bool take_stall_before() {
    int left = stalls_before_left.load();
    while (left > 0) {
      if (stalls_before_left.compare_exchange_weak(left, left - 1)) return true;
    }
    return left < 0;
  }

  template <typename F>
  auto wrap(F&& body, bool read = false) {
    ++calls;
    if (int ms = stall_before_ms.load(); ms > 0 && take_stall_before()) {
      std::this_thread::sleep_for(std::chrono::milliseconds(ms));
    }
    auto result = body();
    if ((!read || stall_reads.load()) && stalls_after_left.fetch_sub(1) > 0) {
      std::this_thread::sleep_for(std::chrono::milliseconds(stall_after_ms.load()));
    }
    return result;
  }

  Result<Inode> lookup(const Caller& c, InodeId p, std::string_view n) override {
    return wrap([&] { return inner_.lookup(c, p, n); }, /*read=*/true);
  }
  Result<Inode> getattr(InodeId i) override {
    return wrap([&] { return inner_.getattr(i); });
  }
  Result<Inode> setattr(const Caller& c, InodeId i, const SetAttr& a) override {
    return wrap([&] { return inner_.setattr(c, i, a); });
  }
  Result<Inode> resolve(const Caller& c, std::string_view p, bool f) override {
    return wrap([&] { return inner_.resolve(c, p, f); });
  }
  Result<Inode> create(const Caller& c, InodeId p, std::string_view n, uint32_t m) override {
    return wrap([&] { return inner_.create(c, p, n, m); });
  }
  Result<OpenFile> create_open(const Caller& c, InodeId p, std::string_view n, uint32_t m, uint32_t f,
                               uint64_t client) override {
    return wrap([&] { return inner_.create_open(c, p, n, m, f, client); });
  }
  Result<Inode> mknod(const Caller& c, InodeId p, std::string_view n, FileType t, uint32_t m, uint32_t r) override {
    return wrap([&] { return inner_.mknod(c, p, n, t, m, r); });
  }
  Result<Inode> mkdir(const Caller& c, InodeId p, std::string_view n, uint32_t m) override {
    return wrap([&] { return inner_.mkdir(c, p, n, m); });
  }
  Result<Inode> symlink(const Caller& c, InodeId p, std::string_view n, std::string_view t) override {
    return wrap([&] { return inner_.symlink(c, p, n, t); });
  }
  Result<Inode> link(const Caller& c, InodeId i, InodeId p, std::string_view n) override {
    return wrap([&] { return inner_.link(c, i, p, n); });
  }
  Result<std::string> readlink(InodeId i) override {
    return wrap([&] { return inner_.readlink(i); });
  }
  Status unlink(const Caller& c, InodeId p, std::string_view n, std::optional<Inode>* after = nullptr) override {
    return wrap([&] { return inner_.unlink(c, p, n, after); });
  }
  Status rmdir(const Caller& c, InodeId p, std::string_view n) override {
    return wrap([&] { return inner_.rmdir(c, p, n); });
  }
  Status rename(const Caller& c, InodeId p, std::string_view n, InodeId np, std::string_view nn, bool nr) override {
    return wrap([&] { return inner_.rename(c, p, n, np, nn, nr); });
  }
  Status exchange(const Caller& c, InodeId p, std::string_view n, InodeId np, std::string_view nn) override {
    return wrap([&] { return inner_.exchange(c, p, n, np, nn); });
  }
  Status setxattr(const Caller& c, InodeId i, std::string_view n, std::string_view v, uint32_t f) override {
    return wrap([&] { return inner_.setxattr(c, i, n, v, f); });
  }
  Result<std::string> getxattr(const Caller& c, InodeId i, std::string_view n) override {
    return wrap([&] { return inner_.getxattr(c, i, n); }, /*read=*/true);
  }
  Result<std::vector<std::string>> listxattr(const Caller& c, InodeId i) override {
    return wrap([&] { return inner_.listxattr(c, i); });
  }
  Status removexattr(const Caller& c, InodeId i, std::string_view n) override {
    return wrap([&] { return inner_.removexattr(c, i, n); });
  }
  Result<ReadDirPage> readdir(const Caller& c, InodeId d, std::string_view a, size_t l) override {
    return wrap([&] { return inner_.readdir(c, d, a, l); });
  }
  Result<StatFs> statfs() override {
    return wrap([&] { return inner_.statfs(); });
  }
  Result<OpenFile> open(const Caller& c, InodeId i, uint32_t f, uint64_t cl) override {
    return wrap([&] { return inner_.open(c, i, f, cl); });
  }
  Status close(InodeId i, uint64_t s, uint64_t l) override {
    return wrap([&] { return inner_.close(i, s, l); });
  }
  Result<Inode> sync(InodeId i, uint64_t l) override {
    return wrap([&] { return inner_.sync(i, l); });
  }
  Status report_length(InodeId i, uint64_t l) override {
    return wrap([&] { return inner_.report_length(i, l); });
  }
  Status renew_client(uint64_t c) override {
    return wrap([&] { return inner_.renew_client(c); });
  }

 private:
  MetaApi& inner_;
};

std::shared_ptr<MetaApi> unowned(MetaApi& api) {
  return std::shared_ptr<MetaApi>(&api, [](MetaApi*) {});
}

// The inode count of a namespace fsck finds consistent (a failure is reported; 0 when fsck itself failed).
size_t consistent_inodes(MetaService& service) {
  auto report = service.fsck();
  EXPECT_TRUE(report.is_ok()) << report.status().to_string();
  if (!report.is_ok()) return 0;
  EXPECT_TRUE(report->problems.empty()) << report->problems.front();
  return report->inodes;
}

class RemoteMetaTest : public ::testing::Test {
 protected:
  void SetUp() override {
    engine_ = kv::open_memory_kv();
    MetaConfig config;
    config.chains = {1, 2, 3};
    auto service = MetaService::open(*engine_, config);
    ASSERT_TRUE(service.is_ok()) << service.status().to_string();
    service_ = std::move(*service);
    stalling_ = std::make_unique<StallingApi>(*service_);
    auto server = MetaRpcServer::start(unowned(*stalling_), MetaServerOptions{.listen = any_port()});
    ASSERT_TRUE(server.is_ok()) << server.status().to_string();
    server_ = std::move(*server);
  }
  void TearDown() override {
    if (server_) server_->shutdown(2000);
  }
  std::unique_ptr<RemoteMeta> connect(std::vector<std::string> addresses, int64_t rpc_timeout_ms = 5000,
                                      int64_t op_timeout_ms = 20000) {
    auto client = RemoteMeta::connect(RemoteMetaOptions{
        .addresses = std::move(addresses), .rpc_timeout_ms = rpc_timeout_ms, .op_timeout_ms = op_timeout_ms});
    EXPECT_TRUE(client.is_ok()) << client.status().to_string();
    return client.is_ok() ? std::move(*client) : nullptr;
  }

  std::unique_ptr<kv::KvEngine> engine_;
  std::unique_ptr<MetaService> service_;
  std::unique_ptr<StallingApi> stalling_;
  std::unique_ptr<MetaRpcServer> server_;
};

TEST_F(RemoteMetaTest, ErrorsAreTheSameAsInProcess) {
  auto remote = connect({server_->address()});
  ASSERT_TRUE(service_->mkdir(kRoot, kRootInode, "d", 0700).is_ok());
  ASSERT_TRUE(service_->create(kRoot, kRootInode, "f", 0644).is_ok());
  auto d = service_->lookup(kRoot, kRootInode, "d");
  ASSERT_TRUE(d.is_ok());
  ASSERT_TRUE(service_->create(kRoot, d->id, "inside", 0644).is_ok());
  // Each pair: the in-process outcome and the remote one must carry the same code, errno and message.
  auto same = [](const Status& local, const Status& remote) {
    EXPECT_FALSE(local.is_ok());
    EXPECT_EQ(local.code(), remote.code()) << local.to_string() << " vs " << remote.to_string();
    EXPECT_EQ(errno_of(local), errno_of(remote)) << remote.to_string();
    EXPECT_EQ(local.message(), remote.message());
  };
  same(service_->lookup(kRoot, kRootInode, "missing").status(), remote->lookup(kRoot, kRootInode, "missing").status());
  same(service_->create(kRoot, kRootInode, "f", 0644).status(), remote->create(kRoot, kRootInode, "f", 0644).status());
  same(service_->rmdir(kRoot, kRootInode, "d"), remote->rmdir(kRoot, kRootInode, "d"));
  same(service_->lookup(kAlice, d->id, "inside").status(), remote->lookup(kAlice, d->id, "inside").status());
  same(service_->create(kRoot, kRootInode, std::string(300, 'x'), 0644).status(),
       remote->create(kRoot, kRootInode, std::string(300, 'x'), 0644).status());
  same(service_->rename(kRoot, kRootInode, "d", d->id, "x"), remote->rename(kRoot, kRootInode, "d", d->id, "x"));
  same(service_->readlink(d->id).status(), remote->readlink(d->id).status());
  EXPECT_ERRNO(remote->lookup(kRoot, kRootInode, "missing"), ENOENT);
  EXPECT_ERRNO(remote->rmdir(kRoot, kRootInode, "d"), ENOTEMPTY);
  EXPECT_ERRNO(remote->lookup(kBob, d->id, "inside"), EACCES);
  EXPECT_ERRNO(remote->close(d->id, 12345, 0), EBADF);
  // Names are bytes, not UTF-8.
  std::string odd = "\xff\xfe odd \x01";
  auto made = remote->create(kRoot, kRootInode, odd, 0600);
  ASSERT_TRUE(made.is_ok()) << made.status().to_string();
  EXPECT_EQ(remote->lookup(kRoot, kRootInode, odd)->id, made->id);
  EXPECT_EQ(remote->stats().failovers, 0u);
}

// create_open and unlink carry the directory as they left it over RPC: what a getattr right after returns.
TEST_F(RemoteMetaTest, CreateOpenAndUnlinkReturnTheDirectoryAfterThem) {
  auto remote = connect({server_->address()});
  auto d = service_->mkdir(kRoot, kRootInode, "d", 0750);
  ASSERT_TRUE(d.is_ok()) << d.status().to_string();
  auto opened = remote->create_open(kRoot, d->id, "f", 0644, kOpenWrite, 7);
  ASSERT_TRUE(opened.is_ok()) << opened.status().to_string();
  ASSERT_TRUE(opened->parent.has_value());
  auto now = service_->getattr(d->id);
  ASSERT_TRUE(now.is_ok());
  EXPECT_EQ(opened->parent->id, d->id);
  EXPECT_EQ(opened->parent->mode, now->mode);
  EXPECT_EQ(opened->parent->mtime_ns, now->mtime_ns);
  EXPECT_EQ(opened->parent->ctime_ns, now->ctime_ns);
  EXPECT_EQ(opened->parent->mtime_ns, opened->inode.ctime_ns) << "the directory's mtime is the create's";
  ASSERT_TRUE(remote->close(opened->inode.id, opened->session, 0).is_ok());

  std::optional<Inode> after;
  ASSERT_TRUE(remote->unlink(kRoot, d->id, "f", &after).is_ok());
  ASSERT_TRUE(after.has_value());
  now = service_->getattr(d->id);
  ASSERT_TRUE(now.is_ok());
  EXPECT_EQ(after->mtime_ns, now->mtime_ns);
  EXPECT_EQ(after->ctime_ns, now->ctime_ns);
  EXPECT_GE(after->mtime_ns, opened->parent->mtime_ns);
  // A failed unlink says nothing about the directory.
  after = *now;
  EXPECT_ERRNO(remote->unlink(kRoot, d->id, "f", &after), ENOENT);
  EXPECT_FALSE(after.has_value());
}

TEST_F(RemoteMetaTest, FailsOverBetweenTwoServersOnOneStore) {
  // A second stateless instance on the same store behind its own server.
  auto second = MetaService::open(*engine_, MetaConfig{.chains = {1, 2, 3}});
  ASSERT_TRUE(second.is_ok());
  auto server_b = MetaRpcServer::start(unowned(**second), MetaServerOptions{.listen = any_port()});
  ASSERT_TRUE(server_b.is_ok());
  const std::string address_a = server_->address();
  auto remote = connect({address_a, (*server_b)->address()}, 2000, 20000);
  auto create_batch = [&](int first, int count) {
    for (int i = first; i < first + count; ++i) {
      auto made = remote->create(kRoot, kRootInode, fmt::format("f{}", i), 0644);
      ASSERT_TRUE(made.is_ok()) << "file " << i << ": " << made.status().to_string();
    }
  };
  create_batch(0, 10);
  server_->shutdown(1000);  // A goes away
  create_batch(10, 10);
  // A comes back on its port, then B goes away: the client must find A again.
  auto restarted = MetaRpcServer::start(unowned(*stalling_), MetaServerOptions{.listen = address_a});
  ASSERT_TRUE(restarted.is_ok()) << restarted.status().to_string();
  server_ = std::move(*restarted);
  (*server_b)->shutdown(1000);
  create_batch(20, 10);
  // Whichever server the client started on, one of the two shutdowns hit it.
  EXPECT_GE(remote->stats().failovers, 1u);
  auto page = service_->readdir(kRoot, kRootInode, "", 100);
  ASSERT_TRUE(page.is_ok());
  EXPECT_EQ(page->entries.size(), 30u);
  EXPECT_GT(consistent_inodes(*service_), 0u);
}

// ff-meta swaps its service for one on the new chain list when mgmtd's chain table changes
// (MetaRpcServer::replace_api, tools/fs/ff-meta). Creates running on 4 client threads across the swap
// all succeed; each file is striped over the old chains or over the new ones, never a mix; files made
// after the swap use the new ones; files made before keep their layout; fsck finds nothing.
TEST_F(RemoteMetaTest, ReplacingTheApiWhileServingSwitchesNewFilesToTheNewChains) {
  auto remote = connect({server_->address()});
  auto before = remote->create(kRoot, kRootInode, "before", 0644);
  ASSERT_TRUE(before.is_ok()) << before.status().to_string();
  auto swapped = MetaService::open(*engine_, MetaConfig{.chains = {7, 8}});
  ASSERT_TRUE(swapped.is_ok()) << swapped.status().to_string();
  std::shared_ptr<MetaService> next = std::move(*swapped);
  constexpr int kThreads = 4, kFilesPerThread = 60;
  std::atomic<int> started{0};
  std::vector<std::vector<Inode>> made(kThreads);
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&, t] {
      for (int i = 0; i < kFilesPerThread; ++i) {
        auto file = remote->create(kRoot, kRootInode, fmt::format("t{}-{}", t, i), 0644);
        ASSERT_TRUE(file.is_ok()) << file.status().to_string();
        made[t].push_back(*file);
        if (i == 5) ++started;
      }
    });
  }
  while (started.load() < kThreads) std::this_thread::sleep_for(std::chrono::milliseconds(1));
  server_->replace_api(next);
  for (auto& thread : threads) thread.join();
  const std::vector<ChainId> old_chains = {1, 2, 3}, new_chains = {7, 8};
  auto within = [](const Layout& layout, const std::vector<ChainId>& chains) {
    for (ChainId chain : layout.chains) {
      if (std::find(chains.begin(), chains.end(), chain) == chains.end()) return false;
    }
    return !layout.chains.empty();
  };
  int on_new = 0;
  for (const auto& files : made) {
    ASSERT_EQ(files.size(), static_cast<size_t>(kFilesPerThread));
    bool switched = false;
    for (const Inode& file : files) {
      const bool is_new = within(file.layout, new_chains);
      EXPECT_TRUE(is_new || within(file.layout, old_chains)) << "file " << file.id << " mixes chain lists";
      EXPECT_FALSE(switched && !is_new) << "a file after the swap used the old chains";  // per thread, in order
      switched = switched || is_new;
      on_new += is_new ? 1 : 0;
    }
  }
  EXPECT_GT(on_new, 0);
  auto after = remote->create(kRoot, kRootInode, "after", 0644);
  ASSERT_TRUE(after.is_ok()) << after.status().to_string();
  EXPECT_TRUE(within(after->layout, new_chains));
  auto again = remote->getattr(before->id);
  ASSERT_TRUE(again.is_ok()) << again.status().to_string();
  EXPECT_EQ(again->layout, before->layout);
  EXPECT_TRUE(within(again->layout, old_chains));
  EXPECT_GT(consistent_inodes(*next), 0u);
}

TEST_F(RemoteMetaTest, UnreachableServersFailWithinTheOperationTimeout) {
  auto remote =
      connect({local_address(rpc::testing::free_port()), local_address(rpc::testing::free_port())}, 300, 1500);
  int64_t start = now_ms();
  auto result = remote->getattr(kRootInode);
  int64_t took = now_ms() - start;
  ASSERT_FALSE(result.is_ok());
  EXPECT_TRUE(result.status().code() == StatusCode::kUnavailable ||
              result.status().code() == StatusCode::kDeadlineExceeded)
      << result.status().to_string();
  EXPECT_LT(took, 5000) << "an operation must end near its op_timeout_ms";
  EXPECT_NE(result.status().message().find("no ff-meta server answered"), std::string::npos);
  EXPECT_FALSE(RemoteMeta::connect(RemoteMetaOptions{}).is_ok());
  EXPECT_FALSE(RemoteMeta::connect(RemoteMetaOptions{.addresses = {"no-port"}}).is_ok());
  auto bad_batches = RemoteMeta::connect(RemoteMetaOptions{.addresses = {"127.0.0.1:1"}, .batches_in_flight = -1});
  ASSERT_FALSE(bad_batches.is_ok());
  EXPECT_NE(bad_batches.status().message().find("batches_in_flight = -1"), std::string::npos)
      << bad_batches.status().to_string();
}

TEST_F(RemoteMetaTest, HungServerHitsTheDeadline) {
  auto remote = connect({server_->address()}, 300, 1200);
  stalling_->stall_before_ms = 4000;
  int64_t start = now_ms();
  auto result = remote->getattr(kRootInode);
  int64_t took = now_ms() - start;
  stalling_->stall_before_ms = 0;
  ASSERT_FALSE(result.is_ok());
  EXPECT_EQ(result.status().code(), StatusCode::kDeadlineExceeded) << result.status().to_string();
  EXPECT_EQ(errno_of(result.status()), ETIMEDOUT);
  EXPECT_LT(took, 3500) << "the call must end at its op timeout (1.2 s), not when the server answers (4 s)";
  EXPECT_GE(took, 1000);
}

TEST_F(RemoteMetaTest, RepeatedCallsAfterALostReplyAreInterpreted) {
  // A server without the table of recent request ids: the repeat runs again, as it does on another
  // server after a failover or on a restarted one, and the client interprets its answer.
  auto plain =
      MetaRpcServer::start(unowned(*stalling_), MetaServerOptions{.listen = any_port(), .dedupe_requests = false});
  ASSERT_TRUE(plain.is_ok()) << plain.status().to_string();
  // rpc timeout 700 ms: far above a normal call even on a loaded CI machine, far below the stall.
  auto remote = connect({(*plain)->address()}, 700, 20000);
  ASSERT_TRUE(service_->setattr(kRoot, kRootInode, SetAttr{.mode = 0777}).is_ok());
  // Each operation below runs on the server, whose reply then comes after the client's deadline; the
  // client sends it again and gets EEXIST / ENOENT / EBADF, which it must recognise as its own doing.
  auto lose_next_reply = [&] {
    stalling_->stall_after_ms = 1500;
    stalling_->stalls_after_left = 1;
  };
  uint64_t recovered = 0;
  lose_next_reply();
  auto file = remote->create(kAlice, kRootInode, "file", 0640);
  ASSERT_TRUE(file.is_ok()) << file.status().to_string();
  EXPECT_EQ(file->id, service_->lookup(kRoot, kRootInode, "file")->id);
  EXPECT_EQ(remote->stats().recovered, ++recovered);

  lose_next_reply();
  auto dir = remote->mkdir(kAlice, kRootInode, "dir", 0750);
  ASSERT_TRUE(dir.is_ok()) << dir.status().to_string();
  EXPECT_EQ(dir->id, service_->lookup(kRoot, kRootInode, "dir")->id);
  EXPECT_EQ(remote->stats().recovered, ++recovered);

  lose_next_reply();
  auto linked = remote->link(kAlice, file->id, dir->id, "hard");
  ASSERT_TRUE(linked.is_ok()) << linked.status().to_string();
  EXPECT_EQ(linked->id, file->id);
  EXPECT_EQ(remote->stats().recovered, ++recovered);

  lose_next_reply();
  ASSERT_TRUE(remote->rename(kAlice, kRootInode, "file", dir->id, "moved").is_ok());
  EXPECT_EQ(service_->lookup(kRoot, dir->id, "moved")->id, file->id);
  EXPECT_EQ(remote->stats().recovered, ++recovered);

  lose_next_reply();
  ASSERT_TRUE(remote->unlink(kAlice, dir->id, "hard").is_ok());
  EXPECT_EQ(remote->stats().recovered, ++recovered);

  auto opened = remote->open(kAlice, file->id, kOpenWrite, 77);
  ASSERT_TRUE(opened.is_ok());
  lose_next_reply();
  ASSERT_TRUE(remote->close(file->id, opened->session, 0).is_ok());
  EXPECT_EQ(remote->stats().recovered, ++recovered);
  EXPECT_EQ(*service_->session_count(file->id), 0u);

  // create_open: the first attempt made the file and a session; the repeat's EEXIST is taken as ours
  // and the file opened again (the first session stays until the client's lease ends).
  lose_next_reply();
  auto made = remote->create_open(kAlice, kRootInode, "made-open", 0600, kOpenWrite, 77);
  ASSERT_TRUE(made.is_ok()) << made.status().to_string();
  EXPECT_EQ(made->inode.id, service_->lookup(kRoot, kRootInode, "made-open")->id);
  EXPECT_EQ(remote->stats().recovered, ++recovered);
  EXPECT_EQ(*service_->session_count(made->inode.id), 2u);
  ASSERT_TRUE(remote->close(made->inode.id, made->session, 0).is_ok());

  // exchange is its own inverse: a blind resend would swap back. After the lost reply the names are
  // found swapped, which is success, and they stay swapped. (Lookups are not stalled from here on: the
  // client looks the names up before it sends.)
  stalling_->stall_reads = false;
  auto left = remote->create(kAlice, dir->id, "left", 0644);
  auto right = remote->mkdir(kAlice, kRootInode, "right", 0755);
  ASSERT_TRUE(left.is_ok() && right.is_ok());
  lose_next_reply();
  ASSERT_TRUE(remote->exchange(kAlice, dir->id, "left", kRootInode, "right").is_ok());
  EXPECT_EQ(remote->stats().recovered, ++recovered);
  EXPECT_EQ(service_->lookup(kRoot, dir->id, "left")->id, right->id);
  EXPECT_EQ(service_->lookup(kRoot, kRootInode, "right")->id, left->id);
  EXPECT_EQ(service_->getattr(right->id)->parent, dir->id);

  // setxattr with XATTR_CREATE: the repeat's EEXIST is ours when the value is ours; removexattr's
  // ENODATA after a lost reply is success.
  lose_next_reply();
  ASSERT_TRUE(remote->setxattr(kAlice, file->id, "user.k", "v1", kXattrCreate).is_ok());
  EXPECT_EQ(remote->stats().recovered, ++recovered);
  EXPECT_EQ(*service_->getxattr(kAlice, file->id, "user.k"), "v1");
  EXPECT_ERRNO(remote->setxattr(kAlice, file->id, "user.k", "v2", kXattrCreate), EEXIST);
  lose_next_reply();
  ASSERT_TRUE(remote->removexattr(kAlice, file->id, "user.k").is_ok());
  EXPECT_EQ(remote->stats().recovered, ++recovered);
  EXPECT_ERRNO(service_->getxattr(kAlice, file->id, "user.k"), ENODATA);

  // Not ours: a name someone else made earlier stays EEXIST even after a lost reply.
  ASSERT_TRUE(service_->create(kBob, kRootInode, "bobs", 0644).is_ok());
  lose_next_reply();
  EXPECT_ERRNO(remote->create(kAlice, kRootInode, "bobs", 0644), EEXIST);
  // Nor is a name that existed before the call, even with our owner and mode.
  ASSERT_TRUE(service_->create(kAlice, kRootInode, "old", 0640).is_ok());
  std::this_thread::sleep_for(std::chrono::milliseconds(50));
  auto strict = RemoteMeta::connect(
      RemoteMetaOptions{.addresses = {(*plain)->address()}, .rpc_timeout_ms = 700, .recovery_clock_skew_ms = 0});
  ASSERT_TRUE(strict.is_ok());
  lose_next_reply();
  EXPECT_ERRNO((*strict)->create(kAlice, kRootInode, "old", 0640), EEXIST);
  // Without a lost reply, EEXIST is EEXIST.
  EXPECT_ERRNO(remote->create(kAlice, kRootInode, "old", 0640), EEXIST);
  EXPECT_EQ(remote->stats().recovered, recovered);
  EXPECT_GT(remote->stats().failovers, 0u);
  EXPECT_GT(consistent_inodes(*service_), 0u);
}

TEST_F(RemoteMetaTest, ServerAnswersARetryWithTheFirstOutcome) {
  // The fixture's server keeps recent request ids (the default). A reply lost after the operation ran:
  // the retry reaches the same server, waits for the first attempt and gets its outcome, so nothing
  // needs interpreting and nothing runs twice.
  auto remote = connect({server_->address()}, 700, 20000);
  ASSERT_TRUE(service_->setattr(kRoot, kRootInode, SetAttr{.mode = 0777}).is_ok());
  auto lose_next_reply = [&] {
    stalling_->stall_after_ms = 1500;
    stalling_->stalls_after_left = 1;
  };
  lose_next_reply();
  auto file = remote->create(kAlice, kRootInode, "file", 0640);
  ASSERT_TRUE(file.is_ok()) << file.status().to_string();
  EXPECT_EQ(file->id, service_->lookup(kRoot, kRootInode, "file")->id);
  // create_open and open: one session each (a second execution would have opened a second).
  lose_next_reply();
  auto made = remote->create_open(kAlice, kRootInode, "made", 0600, kOpenWrite, 77);
  ASSERT_TRUE(made.is_ok()) << made.status().to_string();
  EXPECT_EQ(*service_->session_count(made->inode.id), 1u);
  lose_next_reply();
  auto opened = remote->open(kAlice, file->id, kOpenRead, 77);
  ASSERT_TRUE(opened.is_ok()) << opened.status().to_string();
  EXPECT_EQ(*service_->session_count(file->id), 1u);
  lose_next_reply();
  ASSERT_TRUE(remote->rename(kAlice, kRootInode, "file", kRootInode, "moved").is_ok());
  lose_next_reply();
  ASSERT_TRUE(remote->close(file->id, opened->session, 0).is_ok());
  EXPECT_EQ(remote->stats().recovered, 0u) << "every retry should have been answered by the server";
  EXPECT_GE(server_->stats().deduplicated, 5u);
  EXPECT_GT(remote->stats().failovers, 0u);
  // A new call with the same content is a new request: it runs (and fails) as usual.
  EXPECT_ERRNO(remote->create(kAlice, kRootInode, "moved", 0640), EEXIST);
  ASSERT_TRUE(remote->close(made->inode.id, made->session, 0).is_ok());
  EXPECT_GT(consistent_inodes(*service_), 0u);
}

TEST_F(RemoteMetaTest, RecentRequestTableIsBoundedAndExpires) {
  SKIP_OVER_TCP();
  // Raw requests with chosen ids against a server whose table holds 2 entries for 300 ms.
  auto small = MetaRpcServer::start(
      unowned(*service_), MetaServerOptions{.listen = any_port(), .dedupe_ttl_ms = 300, .dedupe_max_entries = 2});
  ASSERT_TRUE(small.is_ok()) << small.status().to_string();
  auto channel = grpc::CreateChannel((*small)->address(), grpc::InsecureChannelCredentials());
  auto stub = pb::Meta::NewStub(channel);
  auto create = [&](uint64_t id, const std::string& name) -> pb::MetaResponse {
    pb::MetaRequest request;
    request.set_request_id(id);
    request.mutable_create()->set_parent(kRootInode);
    request.mutable_create()->set_name(name);
    request.mutable_create()->set_mode(0644);
    grpc::ClientContext context;
    context.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(10));
    pb::MetaResponse response;
    grpc::Status status = stub->Call(&context, request, &response);
    EXPECT_TRUE(status.ok()) << status.error_message();
    return response;
  };
  pb::MetaResponse first = create(41, "a");
  ASSERT_EQ(first.code(), 0) << first.message();
  // The same id again: the first outcome, although the name exists now.
  pb::MetaResponse again = create(41, "a");
  EXPECT_EQ(again.code(), 0) << again.message();
  EXPECT_EQ(again.inode().id(), first.inode().id());
  // Another id with the same content runs: EEXIST.
  EXPECT_EQ(create(42, "a").code(), static_cast<int>(StatusCode::kAlreadyExists));
  // Two more ids push 41 out of the 2-entry table: then it runs again (EEXIST).
  create(43, "b");
  EXPECT_EQ(create(41, "a").code(), static_cast<int>(StatusCode::kAlreadyExists));
  // Expiry: 43 is answered from the table now, and runs again once 300 ms passed.
  EXPECT_EQ(create(43, "b").code(), 0);
  std::this_thread::sleep_for(std::chrono::milliseconds(400));
  EXPECT_EQ(create(43, "b").code(), static_cast<int>(StatusCode::kAlreadyExists));
  EXPECT_EQ((*small)->stats().deduplicated, 2u);
  (*small)->shutdown(1000);
}

// Lookups of 12 threads while every read takes 30 ms on the server: the reads that arrive while the
// client's 2 batches are in flight go together in the next Meta.CallBatch, and each caller gets its own
// answer (existing names their inode, missing names ENOENT).
TEST_F(RemoteMetaTest, ConcurrentReadsShareBatches) {
  auto remote = connect({server_->address()});
  std::vector<InodeId> ids;
  for (int i = 0; i < 12; ++i) {
    auto made = service_->create(kRoot, kRootInode, fmt::format("f{}", i), 0644);
    ASSERT_TRUE(made.is_ok()) << made.status().to_string();
    ids.push_back(made->id);
  }
  stalling_->stall_before_ms = 30;
  std::atomic<int> wrong{0};
  std::vector<std::thread> threads;
  for (int t = 0; t < 12; ++t) {
    threads.emplace_back([&, t] {
      for (int i = 0; i < 6; ++i) {
        auto found = remote->lookup(kRoot, kRootInode, fmt::format("f{}", (t + i) % 12));
        if (!found.is_ok() || found->id != ids[static_cast<size_t>((t + i) % 12)]) ++wrong;
        auto missing = remote->lookup(kRoot, kRootInode, fmt::format("none{}", t));
        if (missing.is_ok() || errno_of(missing.status()) != ENOENT) ++wrong;
        auto attrs = remote->getattr(ids[static_cast<size_t>(t)]);
        if (!attrs.is_ok() || attrs->id != ids[static_cast<size_t>(t)]) ++wrong;
      }
    });
  }
  for (auto& thread : threads) thread.join();
  stalling_->stall_before_ms = 0;
  EXPECT_EQ(wrong.load(), 0);
  RemoteMeta::Stats stats = remote->stats();
  EXPECT_GT(stats.batches, 0u);
  EXPECT_GE(stats.batched_calls, 2 * stats.batches);
  EXPECT_EQ(server_->stats().batches, stats.batches);
  EXPECT_EQ(stats.calls, 12u * 6 * 3);
  EXPECT_EQ(server_->stats().requests, stats.attempts);
  EXPECT_EQ(stats.failovers, 0u);
}

// Meta.CallBatch runs each request as Call would: its own outcome, request ids deduplicated; more than
// kMaxCallBatch is refused whole.
TEST_F(RemoteMetaTest, ABatchRunsEachRequestAsCallWould) {
  SKIP_OVER_TCP();
  auto channel = grpc::CreateChannel(server_->address(), grpc::InsecureChannelCredentials());
  auto stub = pb::Meta::NewStub(channel);
  pb::MetaBatchRequest request;
  pb::MetaRequest* lookup = request.add_requests();
  lookup->mutable_lookup()->set_parent(kRootInode);
  lookup->mutable_lookup()->set_name("nothing here");
  pb::MetaRequest* create = request.add_requests();
  create->set_request_id(77);
  create->mutable_create()->set_parent(kRootInode);
  create->mutable_create()->set_name("made");
  create->mutable_create()->set_mode(0644);
  request.add_requests()->mutable_getattr()->set_inode(kRootInode);
  auto send = [&](const pb::MetaBatchRequest& batch, pb::MetaBatchResponse* response) {
    grpc::ClientContext context;
    context.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(10));
    return stub->CallBatch(&context, batch, response);
  };
  pb::MetaBatchResponse response;
  grpc::Status status = send(request, &response);
  ASSERT_TRUE(status.ok()) << status.error_message();
  ASSERT_EQ(response.responses_size(), 3);
  EXPECT_EQ(response.responses(0).code(), static_cast<int>(StatusCode::kNotFound)) << response.responses(0).message();
  EXPECT_EQ(response.responses(1).code(), 0) << response.responses(1).message();
  const uint64_t made = response.responses(1).inode().id();
  EXPECT_EQ(service_->lookup(kRoot, kRootInode, "made")->id, made);
  EXPECT_EQ(response.responses(2).code(), 0) << response.responses(2).message();
  EXPECT_EQ(response.responses(2).inode().id(), kRootInode);
  // The same batch again: the create's request id gets the first outcome (not EEXIST).
  pb::MetaBatchResponse again;
  ASSERT_TRUE(send(request, &again).ok());
  ASSERT_EQ(again.responses_size(), 3);
  EXPECT_EQ(again.responses(1).code(), 0) << again.responses(1).message();
  EXPECT_EQ(again.responses(1).inode().id(), made);
  EXPECT_EQ(server_->stats().deduplicated, 1u);
  EXPECT_EQ(server_->stats().batches, 2u);

  pb::MetaBatchRequest too_many;
  for (size_t i = 0; i <= kMaxCallBatch; ++i) too_many.add_requests()->mutable_getattr()->set_inode(kRootInode);
  status = send(too_many, &response);
  EXPECT_EQ(status.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_NE(status.error_message().find(fmt::format("{} requests, at most {}", kMaxCallBatch + 1, kMaxCallBatch)),
            std::string::npos)
      << status.error_message();
}

// Creates of 12 threads while every change takes 20 ms on the server: they go in batches, each file is
// made once, and the namespace stays consistent.
TEST_F(RemoteMetaTest, ConcurrentChangesShareBatches) {
  auto remote = connect({server_->address()});
  stalling_->stall_before_ms = 20;
  std::atomic<int> wrong{0};
  std::vector<std::thread> threads;
  for (int t = 0; t < 12; ++t) {
    threads.emplace_back([&, t] {
      for (int i = 0; i < 5; ++i) {
        auto made = remote->create(kRoot, kRootInode, fmt::format("t{}-{}", t, i), 0644);
        if (!made.is_ok()) ++wrong;
      }
      if (!remote->unlink(kRoot, kRootInode, fmt::format("t{}-0", t)).is_ok()) ++wrong;
    });
  }
  for (auto& thread : threads) thread.join();
  stalling_->stall_before_ms = 0;
  EXPECT_EQ(wrong.load(), 0);
  RemoteMeta::Stats stats = remote->stats();
  EXPECT_GT(stats.batches, 0u);
  EXPECT_GE(stats.batched_calls, 2 * stats.batches);
  EXPECT_EQ(server_->stats().requests, stats.attempts);
  EXPECT_EQ(consistent_inodes(*service_), 1u + 12 * 4);
}

// A batch of creates that ran but whose reply came after the deadline: each create is sent again alone
// with its request id and gets the first outcome, so every file is made exactly once.
TEST_F(RemoteMetaTest, AFailedBatchOfCreatesRunsEachOnce) {
  auto client = RemoteMeta::connect(RemoteMetaOptions{
      .addresses = {server_->address()}, .rpc_timeout_ms = 600, .op_timeout_ms = 20000, .batches_in_flight = 1});
  ASSERT_TRUE(client.is_ok()) << client.status().to_string();
  RemoteMeta& remote = **client;
  // The first 8 creates the server runs answer 1.5 s late: the first one alone, the other 7 in a batch
  // behind it (one batch in flight).
  stalling_->stall_after_ms = 1500;
  stalling_->stalls_after_left = 8;
  std::atomic<int> wrong{0};
  std::vector<std::thread> threads;
  for (int t = 0; t < 8; ++t) {
    threads.emplace_back([&, t] {
      auto made = remote.create(kRoot, kRootInode, fmt::format("f{}", t), 0644);
      if (!made.is_ok()) {
        ++wrong;
        ADD_FAILURE() << made.status().to_string();
      }
    });
    if (t == 0) std::this_thread::sleep_for(std::chrono::milliseconds(100));
  }
  for (auto& thread : threads) thread.join();
  EXPECT_EQ(wrong.load(), 0);
  RemoteMeta::Stats stats = remote.stats();
  EXPECT_GE(stats.batches, 1u);
  EXPECT_GT(stats.failovers, stats.batched_calls);
  EXPECT_GE(server_->stats().deduplicated, stats.batched_calls) << "each batched create's retry got its first outcome";
  EXPECT_EQ(consistent_inodes(*service_), 1u + 8);
}

// A batch that times out as a whole: its reads are sent again one by one (failover, retries) and every
// caller still gets its answer. One batch in flight: a first read holds it (200 ms on the server) while 7
// more queue; they go as one batch, whose reads then take 3 s each, past its 1 s deadline.
TEST_F(RemoteMetaTest, AFailedBatchIsRetriedReadByRead) {
  auto client = RemoteMeta::connect(RemoteMetaOptions{
      .addresses = {server_->address()}, .rpc_timeout_ms = 1000, .op_timeout_ms = 20000, .batches_in_flight = 1});
  ASSERT_TRUE(client.is_ok()) << client.status().to_string();
  RemoteMeta& remote = **client;
  auto made = service_->create(kRoot, kRootInode, "there", 0644);
  ASSERT_TRUE(made.is_ok()) << made.status().to_string();
  std::atomic<int> wrong{0};
  auto read = [&] {
    auto found = remote.lookup(kRoot, kRootInode, "there");
    if (!found.is_ok() || found->id != made->id) {
      ++wrong;
      ADD_FAILURE() << (found.is_ok() ? "another inode" : found.status().to_string());
    }
  };
  stalling_->stall_before_ms = 200;
  std::vector<std::thread> threads;
  threads.emplace_back(read);
  std::this_thread::sleep_for(std::chrono::milliseconds(100));
  stalling_->stall_before_ms = 3000;
  for (int t = 0; t < 7; ++t) threads.emplace_back(read);
  std::this_thread::sleep_for(std::chrono::milliseconds(1500));
  stalling_->stall_before_ms = 0;
  for (auto& thread : threads) thread.join();
  EXPECT_EQ(wrong.load(), 0);
  RemoteMeta::Stats stats = remote.stats();
  EXPECT_GE(stats.batches, 1u);
  EXPECT_GE(stats.failovers, stats.batched_calls) << "every read of the failed batch is sent again";
  EXPECT_GT(stats.attempts, stats.calls);
}

// A batch whose changes the server's worker queue cannot take is answered request by request with the
// busy tag, nothing of it run; the same batch runs whole once the queue has room. Two workers and three
// queue slots, all five held by creates that take 2 s (margin for a loaded machine).
TEST_F(RemoteMetaTest, ABatchThePoolCannotQueueIsAnsweredBusyRequestByRequest) {
  SKIP_OVER_TCP();
  auto small = MetaRpcServer::start(unowned(*stalling_),
                                    MetaServerOptions{.listen = any_port(), .max_threads = 2, .max_queued = 3});
  ASSERT_TRUE(small.is_ok()) << small.status().to_string();
  MetaRpcServer& server = **small;
  auto stub = pb::Meta::NewStub(grpc::CreateChannel(server.address(), grpc::InsecureChannelCredentials()));
  auto create_request = [](const std::string& name, uint64_t request_id) {
    pb::MetaRequest request;
    request.set_request_id(request_id);
    request.mutable_create()->set_parent(kRootInode);
    request.mutable_create()->set_name(name);
    request.mutable_create()->set_mode(0644);
    return request;
  };
  auto deadline = [] { return std::chrono::system_clock::now() + std::chrono::seconds(10); };
  stalling_->stall_before_ms = 2000;
  std::vector<std::thread> holders;
  struct JoinAll {
    std::vector<std::thread>& threads;
    ~JoinAll() {
      for (auto& thread : threads) thread.join();
    }
  } join_holders{holders};
  std::atomic<int> held_ok{0};
  auto wait_for = [](auto done) {
    const int64_t until = now_ms() + 5000;
    while (!done() && now_ms() < until) std::this_thread::sleep_for(std::chrono::milliseconds(2));
    return done();
  };
  // One create at a time: two running on the workers, then three in the queue.
  for (int i = 0; i < 5; ++i) {
    holders.emplace_back([&, i] {
      grpc::ClientContext context;
      context.set_deadline(deadline());
      pb::MetaResponse response;
      if (stub->Call(&context, create_request(fmt::format("held{}", i), 100 + i), &response).ok() &&
          response.code() == 0) {
        ++held_ok;
      }
    });
    ASSERT_TRUE(wait_for([&] {
      return i < 2 ? stalling_->calls.load() == i + 1 : server.stats().requests == static_cast<uint64_t>(i + 1);
    })) << "create "
        << i << " did not reach the server";
  }
  ASSERT_EQ(stalling_->calls.load(), 2);

  pb::MetaBatchRequest batch;
  *batch.add_requests() = create_request("batched0", 200);
  *batch.add_requests() = create_request("batched1", 201);
  batch.add_requests()->mutable_getattr()->set_inode(kRootInode);
  pb::MetaBatchResponse busy;
  {
    grpc::ClientContext context;
    context.set_deadline(deadline());
    grpc::Status status = stub->CallBatch(&context, batch, &busy);
    ASSERT_TRUE(status.ok()) << status.error_message();
  }
  ASSERT_EQ(busy.responses_size(), 3);
  for (const pb::MetaResponse& response : busy.responses()) {
    EXPECT_EQ(response.code(), static_cast<int>(StatusCode::kUnavailable)) << response.message();
    EXPECT_TRUE(response.message().starts_with("[busy]")) << response.message();
  }
  for (auto& holder : holders) holder.join();
  holders.clear();
  stalling_->stall_before_ms = 0;
  EXPECT_EQ(held_ok.load(), 5);
  EXPECT_EQ(stalling_->calls.load(), 5) << "nothing of the refused batch ran";
  EXPECT_EQ(service_->lookup(kRoot, kRootInode, "batched0").status().code(), StatusCode::kNotFound);

  // With room, the same batch (the same request ids: the refusal was not remembered as their outcome) runs.
  pb::MetaBatchResponse ran;
  {
    grpc::ClientContext context;
    context.set_deadline(deadline());
    ASSERT_TRUE(stub->CallBatch(&context, batch, &ran).ok());
  }
  ASSERT_EQ(ran.responses_size(), 3);
  for (const pb::MetaResponse& response : ran.responses()) EXPECT_EQ(response.code(), 0) << response.message();
  auto batched = service_->lookup(kRoot, kRootInode, "batched1");
  ASSERT_TRUE(batched.is_ok()) << batched.status().to_string();
  EXPECT_EQ(batched->id, ran.responses(1).inode().id());
  EXPECT_EQ(server.stats().deduplicated, 0u);
  server.shutdown(2000);
}

// RemoteMeta against a server with two workers and one queue slot, creates taking 50 ms: the batches it
// cannot queue come back busy, and each of their calls is sent again alone (and again while the server
// answers RESOURCE_EXHAUSTED) until it runs; every file is made exactly once.
TEST_F(RemoteMetaTest, BusyBatchesAreSentAgainCallByCall) {
  auto small = MetaRpcServer::start(unowned(*stalling_),
                                    MetaServerOptions{.listen = any_port(), .max_threads = 2, .max_queued = 1});
  ASSERT_TRUE(small.is_ok()) << small.status().to_string();
  auto remote = connect({(*small)->address()});
  stalling_->stall_before_ms = 50;
  std::atomic<int> wrong{0};
  std::vector<std::thread> threads;
  for (int t = 0; t < 8; ++t) {
    threads.emplace_back([&, t] {
      for (int i = 0; i < 3; ++i) {
        auto made = remote->create(kRoot, kRootInode, fmt::format("b{}-{}", t, i), 0644);
        if (!made.is_ok()) {
          ++wrong;
          ADD_FAILURE() << made.status().to_string();
        }
      }
    });
  }
  for (auto& thread : threads) thread.join();
  stalling_->stall_before_ms = 0;
  EXPECT_EQ(wrong.load(), 0);
  RemoteMeta::Stats stats = remote->stats();
  EXPECT_GT(stats.batches, 0u);
  EXPECT_GT(stats.attempts, stats.calls) << "busy calls were sent again";
  EXPECT_EQ(stalling_->calls.load(), 24) << "each create ran once";
  EXPECT_EQ(consistent_inodes(*service_), 1u + 24);
  (*small)->shutdown(2000);
}

// An ff-meta without Meta.CallBatch (an older server; here a proxy that forwards Call only): the first
// batch is answered UNIMPLEMENTED, its reads go one by one, and so does every read after it.
TEST_F(RemoteMetaTest, ReadsGoOneByOneToAServerWithoutBatches) {
  SKIP_OVER_TCP();
  class CallOnly final : public pb::Meta::CallbackService {
   public:
    explicit CallOnly(const std::string& target)
        : stub_(pb::Meta::NewStub(grpc::CreateChannel(target, grpc::InsecureChannelCredentials()))) {}
    grpc::ServerUnaryReactor* Call(grpc::CallbackServerContext* context, const pb::MetaRequest* request,
                                   pb::MetaResponse* response) override {
      // Forwarded without blocking gRPC's callback thread; the client context lives until the answer.
      grpc::ServerUnaryReactor* reactor = context->DefaultReactor();
      auto forward = std::make_shared<grpc::ClientContext>();
      forward->set_deadline(context->deadline());
      stub_->async()->Call(forward.get(), request, response,
                           [reactor, forward](grpc::Status status) { reactor->Finish(status); });
      return reactor;
    }

   private:
    std::unique_ptr<pb::Meta::Stub> stub_;
  };
  CallOnly proxy(server_->address());
  int port = 0;
  grpc::ServerBuilder builder;
  builder.AddListeningPort("127.0.0.1:0", grpc::InsecureServerCredentials(), &port);
  builder.RegisterService(&proxy);
  std::unique_ptr<grpc::Server> old_server = builder.BuildAndStart();
  ASSERT_NE(old_server, nullptr);
  ASSERT_GT(port, 0);
  auto remote = connect({"127.0.0.1:" + std::to_string(port)});
  auto made = service_->create(kRoot, kRootInode, "there", 0644);
  ASSERT_TRUE(made.is_ok()) << made.status().to_string();
  stalling_->stall_before_ms = 30;
  std::atomic<int> wrong{0};
  std::vector<std::thread> threads;
  for (int t = 0; t < 8; ++t) {
    threads.emplace_back([&] {
      for (int i = 0; i < 4; ++i) {
        auto found = remote->lookup(kRoot, kRootInode, "there");
        if (!found.is_ok() || found->id != made->id) ++wrong;
      }
    });
  }
  for (auto& thread : threads) thread.join();
  EXPECT_EQ(wrong.load(), 0);
  // The batches in flight together when the first UNIMPLEMENTED came (at most 2), then none: a second
  // wave of concurrent reads goes one by one.
  const uint64_t tried = remote->stats().batches;
  EXPECT_GE(tried, 1u);
  EXPECT_LE(tried, 2u);
  threads.clear();
  for (int t = 0; t < 8; ++t) {
    threads.emplace_back([&] {
      auto found = remote->lookup(kRoot, kRootInode, "there");
      if (!found.is_ok() || found->id != made->id) ++wrong;
    });
  }
  for (auto& thread : threads) thread.join();
  stalling_->stall_before_ms = 0;
  EXPECT_EQ(wrong.load(), 0);
  EXPECT_EQ(remote->stats().batches, tried) << "after an UNIMPLEMENTED, no batch is tried again";
  EXPECT_EQ(server_->stats().batches, 0u);
  old_server->Shutdown(std::chrono::system_clock::now() + std::chrono::seconds(1));
}

TEST_F(RemoteMetaTest, UnixDomainSocket) {
  SKIP_OVER_TCP();
  rpc::testing::TempDir dir;
  const std::string address = "unix:" + dir.path() + "/meta.sock";
  auto server = MetaRpcServer::start(unowned(*service_), MetaServerOptions{.listen = address, .inline_reads = true});
  ASSERT_TRUE(server.is_ok()) << server.status().to_string();
  EXPECT_EQ((*server)->address(), address);
  auto remote = connect({address});
  auto made = remote->create(kRoot, kRootInode, "over-uds", 0644);
  ASSERT_TRUE(made.is_ok()) << made.status().to_string();
  EXPECT_EQ(remote->lookup(kRoot, kRootInode, "over-uds")->id, made->id);
  (*server)->shutdown(1000);
}

// ff-meta on our TCP transport: a call whose body is no MetaRequest, and a request that is no meta call at all, get
// [malformed] naming what arrived; the server goes on serving on the same connection.
TEST_F(RemoteMetaTest, TcpServerRefusesMalformedCalls) {
  auto server = MetaRpcServer::start(unowned(*service_), MetaServerOptions{.listen = "tcp://127.0.0.1:0"});
  ASSERT_TRUE(server.is_ok()) << server.status().to_string();
  const std::string address = (*server)->address();
  EXPECT_TRUE(address.starts_with("tcp://127.0.0.1:")) << address;
  rpc::ThreadExecutor executor("meta-tcp-test", 1);
  rpc::TcpRpcClient client(executor, rpc::TcpClientOptions{.connections_per_peer = 1});
  auto call = [&](Request request) {
    std::promise<Result<Response>> answer;
    client.call(address, std::move(request), 5'000'000'000,
                [&](Result<Response> result) { answer.set_value(std::move(result)); });
    return answer.get_future().get();
  };
  Result<Response> garbage = call(Request{MetaCallReq{false, std::string("\xff\xff\xff not a message")}});
  ASSERT_FALSE(garbage.is_ok());
  EXPECT_EQ(fs_error_of(garbage.status()), FsError::kMalformed) << garbage.status().to_string();
  EXPECT_NE(garbage.status().message().find("MetaRequest"), std::string::npos) << garbage.status().to_string();
  Result<Response> storage_call = call(Request{ReadReq{}});
  ASSERT_FALSE(storage_call.is_ok());
  EXPECT_EQ(fs_error_of(storage_call.status()), FsError::kMalformed) << storage_call.status().to_string();
  EXPECT_NE(storage_call.status().message().find("ReadReq"), std::string::npos) << storage_call.status().to_string();
  // A well-formed call on the same connection still runs.
  pb::MetaRequest lookup;
  lookup.mutable_lookup()->set_parent(kRootInode);
  lookup.mutable_lookup()->set_name("absent");
  MetaCallReq good{false, lookup.SerializeAsString()};
  Result<Response> answered = call(Request{std::move(good)});
  ASSERT_TRUE(answered.is_ok()) << answered.status().to_string();
  pb::MetaResponse response;
  ASSERT_TRUE(response.ParseFromString(std::get<MetaCallRsp>(*answered).body));
  EXPECT_EQ(response.code(), static_cast<int>(StatusCode::kNotFound)) << response.message();
  (*server)->shutdown(1000);
  executor.stop();
}

TEST_F(RemoteMetaTest, ManyThreadsShareOneClient) {
  auto remote = connect({server_->address()});
  std::vector<std::thread> threads;
  std::atomic<int> failures{0};
  for (int t = 0; t < 8; ++t) {
    threads.emplace_back([&, t] {
      auto dir = remote->mkdir(kRoot, kRootInode, fmt::format("t{}", t), 0755);
      if (!dir.is_ok()) return void(++failures);
      for (int i = 0; i < 50; ++i) {
        auto made = remote->create(kRoot, dir->id, fmt::format("f{}", i), 0644);
        if (!made.is_ok() || !remote->lookup(kRoot, dir->id, fmt::format("f{}", i)).is_ok()) ++failures;
      }
    });
  }
  for (auto& thread : threads) thread.join();
  EXPECT_EQ(failures.load(), 0);
  EXPECT_EQ(server_->stats().requests, remote->stats().attempts);
  EXPECT_EQ(consistent_inodes(*service_), 1u + 8 + 8 * 50);
}

}  // namespace
}  // namespace ff::fs::meta
