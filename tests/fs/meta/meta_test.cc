// The metadata service on the in-memory KV: every operation, its errno cases (bad names, paths
// through non-directories, rename loops, deleted inodes, permissions), open/close sessions with an
// unlinked open file, exact lengths through a fake storage, and crashed clients' sessions reclaimed.
// Parametrised by how the operations reach the service (meta_test.h, MetaSuiteParam): fs_meta_test
// calls it in-process, fs_meta_rpc_test through RemoteMeta and a gRPC server.
#include <sys/stat.h>

#include <algorithm>
#include <chrono>
#include <set>
#include <thread>

#include "../rpc/test_util.h"
#include "ff/fs/kv_engines.h"
#include "meta_test.h"

namespace ff::fs::meta {
namespace {

// Records what the service asked of storage; answers file_length with a preset value.
class FakeStorage final : public FileStorage {
 public:
  Result<uint64_t> file_length(const Inode& inode) override {
    ++length_queries;
    return lengths.contains(inode.id) ? lengths[inode.id] : 0;
  }
  Status truncate(const Inode& inode, uint64_t length) override {
    truncated.emplace_back(inode.id, length);
    return Status::ok();
  }
  Status remove_file(const Inode& inode) override {
    removed.push_back(inode.id);
    return Status::ok();
  }
  std::map<InodeId, uint64_t> lengths;
  int length_queries = 0;
  std::vector<std::pair<InodeId, uint64_t>> truncated;
  std::vector<InodeId> removed;
};

const Caller kRoot{0, 0, {}};
const Caller kAlice{1000, 1000, {}};
const Caller kBob{1001, 1001, {}};

using testing::MetaFrontend;
using testing::MetaSuiteParam;

class MetaTest : public ::testing::TestWithParam<MetaSuiteParam> {
 protected:
  void SetUp() override { open_service(nullptr); }
  void TearDown() override {
    frontend_.reset();
    service_.reset();
  }
  void open_service(FileStorage* storage) {
    frontend_.reset();
    service_.reset();
    engine_ = kv::open_memory_kv();
    MetaConfig config;
    config.chains = {11, 12, 13, 14, 15, 16, 17, 18};
    config.stripe = 3;
    config.chunk_size = 1 << 20;
    config.client_lease_ms = 1000;
    auto service = MetaService::open(*engine_, config, storage, &clock_);
    ASSERT_TRUE(service.is_ok()) << service.status().to_string();
    service_ = std::move(*service);
    if (GetParam().frontend) {
      frontend_ = GetParam().frontend(*service_);
      ASSERT_NE(frontend_, nullptr);
    }
  }
  // The operations under test (in-process or through the frontend); service() for what only the
  // service itself offers (fsck, garbage collection, lease reclaim, session counts).
  MetaApi& meta() { return frontend_ ? frontend_->api() : static_cast<MetaApi&>(*service_); }
  MetaService& service() { return *service_; }
  Inode must(Result<Inode> result) {
    EXPECT_TRUE(result.is_ok()) << result.status().to_string();
    return result.is_ok() ? *result : Inode{};
  }
  void expect_consistent() {
    auto report = service().fsck();
    ASSERT_TRUE(report.is_ok()) << report.status().to_string();
    for (const auto& problem : report->problems) ADD_FAILURE() << problem;
  }

  ManualClock clock_{1'000'000'000, true};
  std::unique_ptr<kv::KvEngine> engine_;
  std::unique_ptr<MetaService> service_;
  std::unique_ptr<MetaFrontend> frontend_;
};

TEST_P(MetaTest, CreateLookupGetattrAndLayout) {
  ASSERT_TRUE(meta().setattr(kRoot, kRootInode, SetAttr{.mode = 0777}).is_ok());
  Inode root = must(meta().getattr(kRootInode));
  EXPECT_EQ(root.type, FileType::kDirectory);
  EXPECT_EQ(root.nlink, 2u);
  Inode file = must(meta().create(kAlice, kRootInode, "a.txt", 0644));
  EXPECT_EQ(file.type, FileType::kRegular);
  EXPECT_EQ(file.mode, 0644u);
  EXPECT_EQ(file.uid, 1000u);
  EXPECT_EQ(file.nlink, 1u);
  EXPECT_EQ(file.layout.chunk_size, 1u << 20);
  ASSERT_EQ(file.layout.chains.size(), 3u);
  std::set<ChainId> distinct(file.layout.chains.begin(), file.layout.chains.end());
  EXPECT_EQ(distinct.size(), 3u);
  EXPECT_EQ(file.layout.chain_of(0), file.layout.chains[0]);
  EXPECT_EQ(file.layout.chain_of(4), file.layout.chains[1]);
  Inode found = must(meta().lookup(kAlice, kRootInode, "a.txt"));
  EXPECT_EQ(found, file);
  EXPECT_EQ(must(meta().getattr(file.id)), file);
  EXPECT_EQ(must(meta().lookup(kAlice, kRootInode, ".")).id, kRootInode);
  EXPECT_EQ(must(meta().lookup(kAlice, kRootInode, "..")).id, kRootInode);
  // Round-robin starts: 8 files over 8 chains start on every chain (the set of chains of file i is
  // {i, i+1, i+2} mod 8, shuffled).
  std::set<std::set<ChainId>> chain_sets;
  for (int i = 0; i < 8; ++i) {
    Inode next = must(meta().create(kAlice, kRootInode, fmt::format("f{}", i), 0644));
    chain_sets.insert(std::set<ChainId>(next.layout.chains.begin(), next.layout.chains.end()));
  }
  EXPECT_EQ(chain_sets.size(), 8u);
  expect_consistent();
}

TEST_P(MetaTest, ExistingNamesAndMissingNames) {
  must(meta().create(kRoot, kRootInode, "x", 0644));
  EXPECT_ERRNO(meta().create(kRoot, kRootInode, "x", 0644), EEXIST);
  EXPECT_ERRNO(meta().mkdir(kRoot, kRootInode, "x", 0755), EEXIST);
  EXPECT_ERRNO(meta().symlink(kRoot, kRootInode, "x", "/y"), EEXIST);
  EXPECT_ERRNO(meta().lookup(kRoot, kRootInode, "missing"), ENOENT);
  EXPECT_ERRNO(meta().unlink(kRoot, kRootInode, "missing"), ENOENT);
  EXPECT_ERRNO(meta().rmdir(kRoot, kRootInode, "missing"), ENOENT);
  EXPECT_ERRNO(meta().rename(kRoot, kRootInode, "missing", kRootInode, "y"), ENOENT);
  EXPECT_ERRNO(meta().getattr(987654), ENOENT);
  EXPECT_ERRNO(meta().create(kRoot, 987654, "x", 0644), ENOENT);
}

TEST_P(MetaTest, BadNames) {
  EXPECT_ERRNO(meta().create(kRoot, kRootInode, "a/b", 0644), EINVAL);
  EXPECT_ERRNO(meta().create(kRoot, kRootInode, std::string("a\0b", 3), 0644), EINVAL);
  EXPECT_ERRNO(meta().create(kRoot, kRootInode, "", 0644), EINVAL);
  EXPECT_ERRNO(meta().mkdir(kRoot, kRootInode, ".", 0755), EINVAL);
  EXPECT_ERRNO(meta().mkdir(kRoot, kRootInode, "..", 0755), EINVAL);
  EXPECT_ERRNO(meta().create(kRoot, kRootInode, std::string(256, 'n'), 0644), ENAMETOOLONG);
  EXPECT_ERRNO(meta().lookup(kRoot, kRootInode, std::string(256, 'n')), ENAMETOOLONG);
  EXPECT_ERRNO(meta().rename(kRoot, kRootInode, "x", kRootInode, "a/b"), EINVAL);
  EXPECT_TRUE(meta().create(kRoot, kRootInode, std::string(255, 'n'), 0644).is_ok());
  EXPECT_TRUE(meta().create(kRoot, kRootInode, "\xff\x01 spaces and UTF-8 \xc3\xa9", 0644).is_ok());
  EXPECT_ERRNO(meta().resolve(kRoot, "relative/path"), EINVAL);
  expect_consistent();
}

TEST_P(MetaTest, PathsThroughNonDirectories) {
  Inode file = must(meta().create(kRoot, kRootInode, "f", 0644));
  EXPECT_ERRNO(meta().lookup(kRoot, file.id, "x"), ENOTDIR);
  EXPECT_ERRNO(meta().create(kRoot, file.id, "x", 0644), ENOTDIR);
  EXPECT_ERRNO(meta().mkdir(kRoot, file.id, "x", 0755), ENOTDIR);
  EXPECT_ERRNO(meta().readdir(kRoot, file.id, "", 10), ENOTDIR);
  EXPECT_ERRNO(meta().rename(kRoot, kRootInode, "f", file.id, "x"), ENOTDIR);
  EXPECT_ERRNO(meta().resolve(kRoot, "/f/x"), ENOTDIR);
  EXPECT_ERRNO(meta().resolve(kRoot, "/f/"), ENOTDIR);
  EXPECT_EQ(must(meta().resolve(kRoot, "/f")).id, file.id);
}

TEST_P(MetaTest, SymlinksResolveAndLoopsAreCaught) {
  Inode dir = must(meta().mkdir(kRoot, kRootInode, "d", 0755));
  Inode target = must(meta().create(kRoot, dir.id, "target", 0644));
  Inode absolute = must(meta().symlink(kRoot, kRootInode, "abs", "/d/target"));
  must(meta().symlink(kRoot, dir.id, "rel", "target"));
  must(meta().symlink(kRoot, kRootInode, "to_dir", "d"));
  EXPECT_EQ(absolute.length, 9u);
  EXPECT_EQ(*meta().readlink(absolute.id), "/d/target");
  EXPECT_EQ(must(meta().resolve(kRoot, "/abs")).id, target.id);
  EXPECT_EQ(must(meta().resolve(kRoot, "/abs", /*follow_last=*/false)).id, absolute.id);
  EXPECT_EQ(must(meta().resolve(kRoot, "/d/rel")).id, target.id);
  EXPECT_EQ(must(meta().resolve(kRoot, "/to_dir/rel")).id, target.id);
  EXPECT_EQ(must(meta().resolve(kRoot, "/d/../d/./target")).id, target.id);
  must(meta().symlink(kRoot, kRootInode, "loop1", "/loop2"));
  must(meta().symlink(kRoot, kRootInode, "loop2", "loop1"));
  EXPECT_ERRNO(meta().resolve(kRoot, "/loop1"), ELOOP);
  EXPECT_ERRNO(meta().resolve(kRoot, "/loop1/x"), ELOOP);
  EXPECT_ERRNO(meta().readlink(target.id), EINVAL);
  EXPECT_ERRNO(meta().symlink(kRoot, kRootInode, "empty", ""), ENOENT);
  EXPECT_ERRNO(meta().open(kRoot, absolute.id, kOpenRead, 1), ELOOP);
}

TEST_P(MetaTest, UnlinkAndRmdirErrors) {
  Inode dir = must(meta().mkdir(kRoot, kRootInode, "d", 0755));
  Inode file = must(meta().create(kRoot, dir.id, "f", 0644));
  EXPECT_ERRNO(meta().unlink(kRoot, kRootInode, "d"), EISDIR);
  EXPECT_ERRNO(meta().rmdir(kRoot, dir.id, "f"), ENOTDIR);
  EXPECT_ERRNO(meta().rmdir(kRoot, kRootInode, "d"), ENOTEMPTY);
  EXPECT_ERRNO(meta().rmdir(kRoot, kRootInode, ".."), ENOTEMPTY);
  EXPECT_EQ(must(meta().getattr(kRootInode)).nlink, 3u);
  ASSERT_TRUE(meta().unlink(kRoot, dir.id, "f").is_ok());
  EXPECT_ERRNO(meta().getattr(file.id), ENOENT);
  ASSERT_TRUE(meta().rmdir(kRoot, kRootInode, "d").is_ok());
  EXPECT_EQ(must(meta().getattr(kRootInode)).nlink, 2u);
  // Operations on the deleted directory.
  EXPECT_ERRNO(meta().create(kRoot, dir.id, "x", 0644), ENOENT);
  EXPECT_ERRNO(meta().readdir(kRoot, dir.id, "", 10), ENOENT);
  EXPECT_ERRNO(meta().setattr(kRoot, dir.id, SetAttr{.mode = 0700}), ENOENT);
  EXPECT_ERRNO(meta().link(kRoot, file.id, kRootInode, "again"), ENOENT);
  EXPECT_ERRNO(meta().open(kRoot, file.id, kOpenRead, 1), ENOENT);
  expect_consistent();
}

TEST_P(MetaTest, RenameFilesAndReplace) {
  Inode a = must(meta().mkdir(kRoot, kRootInode, "a", 0755));
  Inode b = must(meta().mkdir(kRoot, kRootInode, "b", 0755));
  Inode file = must(meta().create(kRoot, a.id, "f", 0644));
  ASSERT_TRUE(meta().rename(kRoot, a.id, "f", a.id, "g").is_ok());
  EXPECT_ERRNO(meta().lookup(kRoot, a.id, "f"), ENOENT);
  EXPECT_EQ(must(meta().lookup(kRoot, a.id, "g")).id, file.id);
  ASSERT_TRUE(meta().rename(kRoot, a.id, "g", b.id, "h").is_ok());
  EXPECT_EQ(must(meta().lookup(kRoot, b.id, "h")).id, file.id);
  // Replacing a file: the old one loses its name and, with no session, its inode.
  Inode victim = must(meta().create(kRoot, b.id, "victim", 0644));
  ASSERT_TRUE(meta().rename(kRoot, b.id, "h", b.id, "victim").is_ok());
  EXPECT_EQ(must(meta().lookup(kRoot, b.id, "victim")).id, file.id);
  EXPECT_ERRNO(meta().getattr(victim.id), ENOENT);
  // no_replace.
  must(meta().create(kRoot, b.id, "other", 0644));
  EXPECT_ERRNO(meta().rename(kRoot, b.id, "other", b.id, "victim", /*no_replace=*/true), EEXIST);
  // Renaming onto another name of the same inode does nothing.
  must(meta().link(kRoot, file.id, b.id, "hard"));
  ASSERT_TRUE(meta().rename(kRoot, b.id, "hard", b.id, "victim").is_ok());
  EXPECT_EQ(must(meta().lookup(kRoot, b.id, "hard")).id, file.id);
  EXPECT_EQ(must(meta().getattr(file.id)).nlink, 2u);
  // Same name: nothing.
  ASSERT_TRUE(meta().rename(kRoot, b.id, "hard", b.id, "hard").is_ok());
  expect_consistent();
}

TEST_P(MetaTest, RenameDirectories) {
  Inode a = must(meta().mkdir(kRoot, kRootInode, "a", 0755));
  Inode sub = must(meta().mkdir(kRoot, a.id, "sub", 0755));
  Inode deep = must(meta().mkdir(kRoot, sub.id, "deep", 0755));
  Inode b = must(meta().mkdir(kRoot, kRootInode, "b", 0755));
  must(meta().create(kRoot, kRootInode, "file", 0644));
  // Into its own subtree: EINVAL, at any depth, and onto itself.
  EXPECT_ERRNO(meta().rename(kRoot, kRootInode, "a", sub.id, "x"), EINVAL);
  EXPECT_ERRNO(meta().rename(kRoot, kRootInode, "a", deep.id, "x"), EINVAL);
  EXPECT_ERRNO(meta().rename(kRoot, kRootInode, "a", a.id, "x"), EINVAL);
  // Type mismatches and non-empty targets.
  EXPECT_ERRNO(meta().rename(kRoot, kRootInode, "a", kRootInode, "file"), ENOTDIR);
  EXPECT_ERRNO(meta().rename(kRoot, kRootInode, "file", kRootInode, "a"), EISDIR);
  EXPECT_ERRNO(meta().rename(kRoot, kRootInode, "b", a.id, "sub"), ENOTEMPTY);
  // Move sub from a to b: link counts follow.
  ASSERT_TRUE(meta().rename(kRoot, a.id, "sub", b.id, "moved").is_ok());
  EXPECT_EQ(must(meta().getattr(a.id)).nlink, 2u);
  EXPECT_EQ(must(meta().getattr(b.id)).nlink, 3u);
  EXPECT_EQ(must(meta().getattr(sub.id)).parent, b.id);
  EXPECT_EQ(must(meta().lookup(kRoot, sub.id, "..")).id, b.id);
  EXPECT_EQ(must(meta().resolve(kRoot, "/b/moved/deep")).id, deep.id);
  // Replace an empty directory by a directory.
  Inode empty = must(meta().mkdir(kRoot, kRootInode, "empty", 0755));
  ASSERT_TRUE(meta().rename(kRoot, b.id, "moved", kRootInode, "empty").is_ok());
  EXPECT_ERRNO(meta().getattr(empty.id), ENOENT);
  EXPECT_EQ(must(meta().getattr(b.id)).nlink, 2u);
  EXPECT_EQ(must(meta().resolve(kRoot, "/empty/deep")).id, deep.id);
  expect_consistent();
}

TEST_P(MetaTest, ExchangeSwapsFilesAndDirectories) {
  Inode a = must(meta().mkdir(kRoot, kRootInode, "a", 0755));
  Inode b = must(meta().mkdir(kRoot, kRootInode, "b", 0755));
  Inode sub = must(meta().mkdir(kRoot, a.id, "sub", 0755));
  Inode deep = must(meta().mkdir(kRoot, sub.id, "deep", 0755));
  Inode f = must(meta().create(kRoot, b.id, "f", 0644));
  Inode g = must(meta().create(kRoot, b.id, "g", 0600));
  // Two files in one directory.
  ASSERT_TRUE(meta().exchange(kRoot, b.id, "f", b.id, "g").is_ok());
  EXPECT_EQ(must(meta().lookup(kRoot, b.id, "f")).id, g.id);
  EXPECT_EQ(must(meta().lookup(kRoot, b.id, "g")).id, f.id);
  EXPECT_EQ(must(meta().getattr(f.id)).nlink, 1u);
  EXPECT_GT(must(meta().getattr(f.id)).ctime_ns, f.ctime_ns);
  // A directory and a file across directories: a loses its subdirectory, b gains it; sub's ".." is b.
  int64_t before_ns = must(meta().getattr(a.id)).mtime_ns;
  ASSERT_TRUE(meta().exchange(kRoot, a.id, "sub", b.id, "f").is_ok());
  EXPECT_EQ(must(meta().lookup(kRoot, a.id, "sub")).id, g.id);
  EXPECT_EQ(must(meta().lookup(kRoot, b.id, "f")).id, sub.id);
  EXPECT_EQ(must(meta().getattr(a.id)).nlink, 2u);
  EXPECT_EQ(must(meta().getattr(b.id)).nlink, 3u);
  EXPECT_EQ(must(meta().getattr(sub.id)).parent, b.id);
  EXPECT_EQ(must(meta().lookup(kRoot, sub.id, "..")).id, b.id);
  EXPECT_EQ(must(meta().resolve(kRoot, "/b/f/deep")).id, deep.id);
  EXPECT_GT(must(meta().getattr(a.id)).mtime_ns, before_ns);
  expect_consistent();
  // Two directories across directories: link counts stay, parents swap.
  Inode c = must(meta().mkdir(kRoot, a.id, "c", 0755));
  ASSERT_TRUE(meta().exchange(kRoot, a.id, "c", b.id, "f").is_ok());
  EXPECT_EQ(must(meta().getattr(c.id)).parent, b.id);
  EXPECT_EQ(must(meta().getattr(sub.id)).parent, a.id);
  EXPECT_EQ(must(meta().getattr(a.id)).nlink, 3u);
  EXPECT_EQ(must(meta().getattr(b.id)).nlink, 3u);
  EXPECT_EQ(must(meta().resolve(kRoot, "/a/c/deep")).id, deep.id);
  expect_consistent();
  // Into its own subtree, in either orientation and at any depth: EINVAL. (/a/c is sub, /a/c/deep.)
  must(meta().create(kRoot, deep.id, "x", 0644));
  EXPECT_ERRNO(meta().exchange(kRoot, kRootInode, "a", deep.id, "x"), EINVAL);
  EXPECT_ERRNO(meta().exchange(kRoot, deep.id, "x", kRootInode, "a"), EINVAL);
  EXPECT_ERRNO(meta().exchange(kRoot, kRootInode, "a", a.id, "c"), EINVAL);
  EXPECT_ERRNO(meta().exchange(kRoot, a.id, "c", kRootInode, "a"), EINVAL);
  // Missing names, bad names; one inode under two names or one name twice: nothing happens.
  EXPECT_ERRNO(meta().exchange(kRoot, a.id, "nope", b.id, "g"), ENOENT);
  EXPECT_ERRNO(meta().exchange(kRoot, b.id, "g", a.id, "nope"), ENOENT);
  EXPECT_ERRNO(meta().exchange(kRoot, a.id, "..", b.id, "g"), EINVAL);
  must(meta().link(kRoot, f.id, a.id, "f2"));
  ASSERT_TRUE(meta().exchange(kRoot, b.id, "g", a.id, "f2").is_ok());
  ASSERT_TRUE(meta().exchange(kRoot, b.id, "g", b.id, "g").is_ok());
  EXPECT_EQ(must(meta().lookup(kRoot, b.id, "g")).id, f.id);
  EXPECT_EQ(must(meta().lookup(kRoot, a.id, "f2")).id, f.id);
  expect_consistent();
}

TEST_P(MetaTest, ExchangePermissions) {
  Inode open_dir = must(meta().mkdir(kRoot, kRootInode, "open", 0777));
  Inode other_open = must(meta().mkdir(kRoot, kRootInode, "open2", 0777));
  Inode closed = must(meta().mkdir(kRoot, kRootInode, "closed", 0755));
  must(meta().create(kAlice, open_dir.id, "mine", 0644));
  must(meta().create(kRoot, closed.id, "roots", 0644));
  must(meta().create(kAlice, other_open.id, "mine2", 0644));
  // Write permission on both directories.
  EXPECT_ERRNO(meta().exchange(kAlice, open_dir.id, "mine", closed.id, "roots"), EACCES);
  EXPECT_ERRNO(meta().exchange(kAlice, closed.id, "roots", open_dir.id, "mine"), EACCES);
  // A directory that changes parent needs write permission on itself (its ".." changes).
  must(meta().mkdir(kRoot, open_dir.id, "rootdir", 0755));
  EXPECT_ERRNO(meta().exchange(kAlice, open_dir.id, "rootdir", other_open.id, "mine2"), EACCES);
  // ... but not when it stays in its directory.
  ASSERT_TRUE(meta().exchange(kAlice, open_dir.id, "rootdir", open_dir.id, "mine").is_ok());
  // Sticky directory: Bob may not swap Alice's entry.
  Inode sticky = must(meta().mkdir(kRoot, kRootInode, "sticky", 01777));
  must(meta().create(kAlice, sticky.id, "alices", 0644));
  must(meta().create(kBob, sticky.id, "bobs", 0644));
  EXPECT_ERRNO(meta().exchange(kBob, sticky.id, "bobs", sticky.id, "alices"), EPERM);
  ASSERT_TRUE(meta().exchange(kRoot, sticky.id, "bobs", sticky.id, "alices").is_ok());
  expect_consistent();
}

TEST_P(MetaTest, ExtendedAttributes) {
  ASSERT_TRUE(meta().setattr(kRoot, kRootInode, SetAttr{.mode = 0777}).is_ok());
  Inode file = must(meta().create(kAlice, kRootInode, "f", 0644));
  // Set, get, list, replace, remove; values are bytes (NULs included).
  const std::string binary("a\0b\xff", 4);
  ASSERT_TRUE(meta().setxattr(kAlice, file.id, "user.one", binary, 0).is_ok());
  ASSERT_TRUE(meta().setxattr(kAlice, file.id, "user.two", "", 0).is_ok());
  EXPECT_EQ(*meta().getxattr(kAlice, file.id, "user.one"), binary);
  EXPECT_EQ(*meta().getxattr(kAlice, file.id, "user.two"), "");
  EXPECT_EQ(*meta().listxattr(kAlice, file.id), (std::vector<std::string>{"user.one", "user.two"}));
  EXPECT_GT(must(meta().getattr(file.id)).ctime_ns, file.ctime_ns);
  EXPECT_ERRNO(meta().setxattr(kAlice, file.id, "user.one", "x", kXattrCreate), EEXIST);
  EXPECT_ERRNO(meta().setxattr(kAlice, file.id, "user.three", "x", kXattrReplace), ENODATA);
  ASSERT_TRUE(meta().setxattr(kAlice, file.id, "user.one", "new", kXattrReplace).is_ok());
  ASSERT_TRUE(meta().setxattr(kAlice, file.id, "user.three", "3", kXattrCreate).is_ok());
  EXPECT_EQ(*meta().getxattr(kAlice, file.id, "user.one"), "new");
  EXPECT_ERRNO(meta().setxattr(kAlice, file.id, "user.one", "x", 4), EINVAL);
  ASSERT_TRUE(meta().removexattr(kAlice, file.id, "user.three").is_ok());
  EXPECT_ERRNO(meta().removexattr(kAlice, file.id, "user.three"), ENODATA);
  EXPECT_ERRNO(meta().getxattr(kAlice, file.id, "user.three"), ENODATA);
  // Names and values: 1..255 bytes (ERANGE), values up to 64 KiB (E2BIG); known namespaces only.
  EXPECT_TRUE(meta().setxattr(kAlice, file.id, "user." + std::string(250, 'n'), "v", 0).is_ok());
  EXPECT_ERRNO(meta().setxattr(kAlice, file.id, "user." + std::string(251, 'n'), "v", 0), ERANGE);
  EXPECT_ERRNO(meta().getxattr(kAlice, file.id, "user." + std::string(251, 'n')), ERANGE);
  EXPECT_ERRNO(meta().getxattr(kAlice, file.id, ""), ERANGE);
  EXPECT_TRUE(meta().setxattr(kAlice, file.id, "user.big", std::string(kMaxXattrValueBytes, 'v'), 0).is_ok());
  EXPECT_EQ(meta().getxattr(kAlice, file.id, "user.big")->size(), kMaxXattrValueBytes);
  EXPECT_ERRNO(meta().setxattr(kAlice, file.id, "user.big", std::string(kMaxXattrValueBytes + 1, 'v'), 0), E2BIG);
  EXPECT_ERRNO(meta().setxattr(kAlice, file.id, "user.", "v", 0), EINVAL);
  EXPECT_ERRNO(meta().setxattr(kRoot, file.id, "system.posix_acl_access", "v", 0), EOPNOTSUPP);
  EXPECT_ERRNO(meta().getxattr(kRoot, file.id, "system.posix_acl_access"), EOPNOTSUPP);
  EXPECT_ERRNO(meta().setxattr(kRoot, file.id, "other.x", "v", 0), EOPNOTSUPP);
  // trusted.* and security.*: written by root only; trusted.* hidden from others, security.* readable.
  EXPECT_ERRNO(meta().setxattr(kAlice, file.id, "trusted.t", "v", 0), EPERM);
  EXPECT_ERRNO(meta().setxattr(kAlice, file.id, "security.s", "v", 0), EPERM);
  ASSERT_TRUE(meta().setxattr(kRoot, file.id, "trusted.t", "tv", 0).is_ok());
  ASSERT_TRUE(meta().setxattr(kRoot, file.id, "security.s", "sv", 0).is_ok());
  EXPECT_ERRNO(meta().getxattr(kAlice, file.id, "trusted.t"), ENODATA);
  EXPECT_ERRNO(meta().removexattr(kAlice, file.id, "trusted.t"), EPERM);
  EXPECT_EQ(*meta().getxattr(kRoot, file.id, "trusted.t"), "tv");
  EXPECT_EQ(*meta().getxattr(kAlice, file.id, "security.s"), "sv");
  auto as_alice = *meta().listxattr(kAlice, file.id);
  auto as_root = *meta().listxattr(kRoot, file.id);
  EXPECT_EQ(std::count(as_alice.begin(), as_alice.end(), "trusted.t"), 0);
  EXPECT_EQ(std::count(as_root.begin(), as_root.end(), "trusted.t"), 1);
  EXPECT_EQ(std::count(as_alice.begin(), as_alice.end(), "security.s"), 1);
  EXPECT_EQ(as_root.size(), as_alice.size() + 1);
  // user.*: the file's permission bits; only regular files and directories; sticky directories.
  EXPECT_EQ(*meta().getxattr(kBob, file.id, "user.one"), "new");
  EXPECT_ERRNO(meta().setxattr(kBob, file.id, "user.bob", "v", 0), EACCES);
  EXPECT_ERRNO(meta().removexattr(kBob, file.id, "user.one"), EACCES);
  ASSERT_TRUE(meta().setattr(kAlice, file.id, SetAttr{.mode = 0600}).is_ok());
  EXPECT_ERRNO(meta().getxattr(kBob, file.id, "user.one"), EACCES);
  Inode link = must(meta().symlink(kAlice, kRootInode, "s", "f"));
  EXPECT_ERRNO(meta().setxattr(kAlice, link.id, "user.x", "v", 0), EPERM);
  EXPECT_ERRNO(meta().getxattr(kAlice, link.id, "user.x"), ENODATA);
  Inode sticky = must(meta().mkdir(kRoot, kRootInode, "sticky", 01777));
  EXPECT_ERRNO(meta().setxattr(kAlice, sticky.id, "user.x", "v", 0), EPERM);
  ASSERT_TRUE(meta().setxattr(kRoot, sticky.id, "user.x", "v", 0).is_ok());
  EXPECT_EQ(*meta().getxattr(kAlice, sticky.id, "user.x"), "v");
  EXPECT_ERRNO(meta().getxattr(kAlice, 999999, "user.x"), ENOENT);
  // Attributes belong to the inode: they follow renames and hard links.
  ASSERT_TRUE(meta().rename(kAlice, kRootInode, "f", kRootInode, "renamed").is_ok());
  must(meta().link(kAlice, file.id, kRootInode, "hard"));
  EXPECT_EQ(*meta().getxattr(kAlice, must(meta().lookup(kAlice, kRootInode, "hard")).id, "user.one"), "new");
  expect_consistent();
  // ... and go with it (fsck reports attributes of missing inodes): the last unlink, an rmdir, a
  // directory replaced by rename, an unlinked file's last close.
  ASSERT_TRUE(meta().unlink(kAlice, kRootInode, "renamed").is_ok());
  ASSERT_TRUE(meta().unlink(kAlice, kRootInode, "hard").is_ok());
  ASSERT_TRUE(meta().rmdir(kRoot, kRootInode, "sticky").is_ok());
  Inode victim = must(meta().mkdir(kRoot, kRootInode, "victim", 0755));
  must(meta().mkdir(kRoot, kRootInode, "mover", 0755));
  ASSERT_TRUE(meta().setxattr(kRoot, victim.id, "user.x", "v", 0).is_ok());
  ASSERT_TRUE(meta().rename(kRoot, kRootInode, "mover", kRootInode, "victim").is_ok());
  Inode ghost = must(meta().create(kAlice, kRootInode, "ghost", 0644));
  auto opened = meta().open(kAlice, ghost.id, kOpenRead, 7);
  ASSERT_TRUE(opened.is_ok());
  ASSERT_TRUE(meta().setxattr(kAlice, ghost.id, "user.x", "v", 0).is_ok());
  ASSERT_TRUE(meta().unlink(kAlice, kRootInode, "ghost").is_ok());
  EXPECT_EQ(*meta().getxattr(kAlice, ghost.id, "user.x"), "v") << "an unlinked open file keeps its attributes";
  ASSERT_TRUE(meta().close(ghost.id, opened->session, 0).is_ok());
  expect_consistent();
}

TEST_P(MetaTest, ExtendedAttributeNamesOfOneInodeFitOneListing) {
  Inode file = must(meta().create(kRoot, kRootInode, "f", 0644));
  // 256 names of 255 bytes fill listxattr's 64 KiB exactly (each with its NUL); one more does not fit.
  for (int i = 0; i < 256; ++i) {
    ASSERT_TRUE(meta().setxattr(kRoot, file.id, fmt::format("user.{:03}{}", i, std::string(247, 'x')), "", 0).is_ok());
  }
  EXPECT_ERRNO(meta().setxattr(kRoot, file.id, "user.more", "", 0), ENOSPC);
  EXPECT_EQ(meta().listxattr(kRoot, file.id)->size(), 256u);
  // Replacing an existing one still works.
  EXPECT_TRUE(meta().setxattr(kRoot, file.id, fmt::format("user.000{}", std::string(247, 'x')), "v", 0).is_ok());
  // Many attributes go with the inode too (cleared as a range, not one by one).
  ASSERT_TRUE(meta().unlink(kRoot, kRootInode, "f").is_ok());
  expect_consistent();
}

TEST_P(MetaTest, DirectoryTimesFollowEntryChanges) {
  Inode dir = must(meta().mkdir(kRoot, kRootInode, "d", 0755));
  Inode other = must(meta().mkdir(kRoot, kRootInode, "e", 0755));
  int64_t last = dir.mtime_ns;
  // Each change of d's entries moves its mtime and ctime forward, seen by getattr, lookup and resolve.
  auto expect_changed = [&](const char* what) {
    Inode by_getattr = must(meta().getattr(dir.id));
    EXPECT_GT(by_getattr.mtime_ns, last) << what;
    EXPECT_EQ(by_getattr.ctime_ns, by_getattr.mtime_ns) << what;
    EXPECT_EQ(must(meta().lookup(kRoot, kRootInode, "d")).mtime_ns, by_getattr.mtime_ns) << what;
    EXPECT_EQ(must(meta().resolve(kRoot, "/d")).mtime_ns, by_getattr.mtime_ns) << what;
    EXPECT_EQ(must(meta().lookup(kRoot, dir.id, ".")).mtime_ns, by_getattr.mtime_ns) << what;
    last = by_getattr.mtime_ns;
    std::this_thread::sleep_for(std::chrono::milliseconds(2));
  };
  std::this_thread::sleep_for(std::chrono::milliseconds(2));
  Inode file = must(meta().create(kRoot, dir.id, "f", 0644));
  expect_changed("create");
  must(meta().symlink(kRoot, dir.id, "s", "f"));
  expect_changed("symlink");
  must(meta().mknod(kRoot, dir.id, "p", FileType::kFifo, 0644, 0));
  expect_changed("mknod");
  must(meta().link(kRoot, file.id, dir.id, "g"));
  expect_changed("link");
  ASSERT_TRUE(meta().unlink(kRoot, dir.id, "g").is_ok());
  expect_changed("unlink");
  must(meta().mkdir(kRoot, dir.id, "sub", 0755));
  expect_changed("mkdir");
  ASSERT_TRUE(meta().rmdir(kRoot, dir.id, "sub").is_ok());
  expect_changed("rmdir");
  ASSERT_TRUE(meta().rename(kRoot, dir.id, "f", dir.id, "f2").is_ok());
  expect_changed("rename");
  ASSERT_TRUE(meta().rename(kRoot, dir.id, "f2", other.id, "f").is_ok());
  expect_changed("rename out");
  must(meta().create(kRoot, dir.id, "f", 0644));
  expect_changed("create");
  ASSERT_TRUE(meta().exchange(kRoot, dir.id, "f", other.id, "f").is_ok());
  expect_changed("exchange");
  // Reads do not move it.
  ASSERT_TRUE(meta().readdir(kRoot, dir.id, "", 10).is_ok());
  must(meta().lookup(kRoot, dir.id, "f"));
  EXPECT_EQ(must(meta().getattr(dir.id)).mtime_ns, last);
  // Explicit times replace them (touch -d), and later changes move them again.
  ASSERT_TRUE(meta().setattr(kRoot, dir.id, SetAttr{.mtime_ns = 1'000'000'000}).is_ok());
  EXPECT_EQ(must(meta().getattr(dir.id)).mtime_ns, 1'000'000'000);
  last = 1'000'000'000;
  must(meta().create(kRoot, dir.id, "later", 0644));
  expect_changed("create after setattr");
  expect_consistent();
  // The record goes with the directory.
  ASSERT_TRUE(meta().unlink(kRoot, other.id, "f").is_ok());
  ASSERT_TRUE(meta().rmdir(kRoot, kRootInode, "e").is_ok());
  expect_consistent();
}

TEST_P(MetaTest, HardLinks) {
  Inode file = must(meta().create(kRoot, kRootInode, "f", 0644));
  Inode dir = must(meta().mkdir(kRoot, kRootInode, "d", 0755));
  EXPECT_EQ(must(meta().link(kRoot, file.id, dir.id, "g")).nlink, 2u);
  EXPECT_ERRNO(meta().link(kRoot, dir.id, kRootInode, "dirlink"), EPERM);
  EXPECT_ERRNO(meta().link(kRoot, file.id, dir.id, "g"), EEXIST);
  ASSERT_TRUE(meta().unlink(kRoot, kRootInode, "f").is_ok());
  EXPECT_EQ(must(meta().getattr(file.id)).nlink, 1u);
  EXPECT_EQ(must(meta().resolve(kRoot, "/d/g")).id, file.id);
  expect_consistent();
}

TEST_P(MetaTest, ReaddirPagesWithCursor) {
  Inode dir = must(meta().mkdir(kRoot, kRootInode, "d", 0755));
  std::vector<std::string> names;
  for (int i = 0; i < 25; ++i) {
    names.push_back(fmt::format("entry-{:02}", i));
    must(i % 5 == 0 ? meta().mkdir(kRoot, dir.id, names.back(), 0755)
                    : meta().create(kRoot, dir.id, names.back(), 0644));
  }
  std::vector<std::string> seen;
  std::string cursor;
  int pages = 0;
  while (true) {
    auto page = meta().readdir(kRoot, dir.id, cursor, 10);
    ASSERT_TRUE(page.is_ok()) << page.status().to_string();
    ++pages;
    for (const auto& entry : page->entries) {
      seen.push_back(entry.name);
      EXPECT_EQ(entry.type,
                entry.name.ends_with("0") || entry.name.ends_with("5") ? FileType::kDirectory : FileType::kRegular);
    }
    if (!page->more) break;
    cursor = page->entries.back().name;
  }
  EXPECT_EQ(pages, 3);
  EXPECT_EQ(seen, names);
  EXPECT_ERRNO(meta().readdir(kRoot, dir.id, "", 0), EINVAL);
  EXPECT_TRUE(meta().readdir(kRoot, dir.id, "zzz", 10)->entries.empty());
}

TEST_P(MetaTest, PermissionChecks) {
  Inode home = must(meta().mkdir(kRoot, kRootInode, "home", 0755));
  ASSERT_TRUE(meta().setattr(kRoot, home.id, SetAttr{.uid = 1000, .gid = 1000}).is_ok());
  Inode file = must(meta().create(kAlice, home.id, "secret", 0600));
  EXPECT_ERRNO(meta().create(kBob, home.id, "intruder", 0644), EACCES);
  EXPECT_ERRNO(meta().mkdir(kBob, home.id, "intruder", 0755), EACCES);
  EXPECT_ERRNO(meta().unlink(kBob, home.id, "secret"), EACCES);
  EXPECT_ERRNO(meta().rename(kBob, home.id, "secret", kRootInode, "stolen"), EACCES);
  EXPECT_ERRNO(meta().open(kBob, file.id, kOpenRead, 5), EACCES);
  EXPECT_ERRNO(meta().open(kBob, file.id, kOpenWrite, 5), EACCES);
  EXPECT_TRUE(meta().open(kAlice, file.id, kOpenRead | kOpenWrite, 5).is_ok());
  EXPECT_ERRNO(meta().setattr(kBob, file.id, SetAttr{.mode = 0777}), EPERM);
  EXPECT_ERRNO(meta().setattr(kAlice, file.id, SetAttr{.uid = 1001}), EPERM);
  EXPECT_ERRNO(meta().setattr(kAlice, file.id, SetAttr{.gid = 1001}), EPERM);
  EXPECT_ERRNO(meta().setattr(kBob, file.id, SetAttr{.length = 0}), EACCES);
  EXPECT_ERRNO(meta().setattr(kBob, file.id, SetAttr{.mtime_ns = 5}), EPERM);
  EXPECT_ERRNO(meta().setattr(kBob, file.id, SetAttr{.mtime_now = true}), EACCES);
  EXPECT_ERRNO(meta().link(kBob, file.id, kRootInode, "l"), EACCES);  // root dir is 0755 root-owned
  // A private directory: no search for others.
  ASSERT_TRUE(meta().setattr(kAlice, home.id, SetAttr{.mode = 0700}).is_ok());
  EXPECT_ERRNO(meta().lookup(kBob, home.id, "secret"), EACCES);
  EXPECT_ERRNO(meta().readdir(kBob, home.id, "", 10), EACCES);
  EXPECT_ERRNO(meta().resolve(kBob, "/home/secret"), EACCES);
  EXPECT_TRUE(meta().lookup(kRoot, home.id, "secret").is_ok());
  // Group class through a supplementary group.
  Inode shared = must(meta().mkdir(kRoot, kRootInode, "shared", 0770));
  ASSERT_TRUE(meta().setattr(kRoot, shared.id, SetAttr{.gid = 2000}).is_ok());
  EXPECT_ERRNO(meta().create(kBob, shared.id, "x", 0644), EACCES);
  Caller bob_in_group{1001, 1001, {2000}};
  EXPECT_TRUE(meta().create(bob_in_group, shared.id, "x", 0644).is_ok());
  // Sticky directory: bob may create but not remove alice's files.
  Inode tmp = must(meta().mkdir(kRoot, kRootInode, "tmp", 01777));
  must(meta().create(kAlice, tmp.id, "alices", 0644));
  must(meta().create(kBob, tmp.id, "bobs", 0644));
  EXPECT_ERRNO(meta().unlink(kBob, tmp.id, "alices"), EPERM);
  EXPECT_ERRNO(meta().rename(kBob, tmp.id, "alices", tmp.id, "mine"), EPERM);
  EXPECT_ERRNO(meta().rename(kBob, tmp.id, "bobs", tmp.id, "alices"), EPERM);  // would replace alice's
  EXPECT_TRUE(meta().unlink(kBob, tmp.id, "bobs").is_ok());
  // Device files need root.
  EXPECT_ERRNO(meta().mknod(kAlice, tmp.id, "dev", FileType::kCharDevice, 0600, 0x0101), EPERM);
  EXPECT_TRUE(meta().mknod(kRoot, tmp.id, "dev", FileType::kCharDevice, 0600, 0x0101).is_ok());
  EXPECT_TRUE(meta().mknod(kAlice, tmp.id, "fifo", FileType::kFifo, 0600, 0).is_ok());
  EXPECT_ERRNO(meta().mknod(kRoot, tmp.id, "dir", FileType::kDirectory, 0755, 0), EINVAL);
  expect_consistent();
}

TEST_P(MetaTest, SetattrModeOwnerTimesTruncate) {
  ASSERT_TRUE(meta().setattr(kRoot, kRootInode, SetAttr{.mode = 0777}).is_ok());
  Inode file = must(meta().create(kAlice, kRootInode, "f", 0644));
  Inode changed = must(meta().setattr(kAlice, file.id, SetAttr{.mode = 02755}));
  EXPECT_EQ(changed.mode, 02755u);  // alice is in her own group: setgid kept
  changed = must(meta().setattr(kRoot, file.id, SetAttr{.uid = 1001, .gid = 1001}));
  EXPECT_EQ(changed.uid, 1001u);
  EXPECT_EQ(changed.mode, 0755u);  // chown clears setuid/setgid
  changed = must(meta().setattr(kRoot, file.id, SetAttr{.atime_ns = 111, .mtime_ns = 222}));
  EXPECT_EQ(changed.atime_ns, 111);
  EXPECT_EQ(changed.mtime_ns, 222);
  EXPECT_GT(changed.ctime_ns, 222);
  ASSERT_TRUE(meta().report_length(file.id, 5000).is_ok());
  EXPECT_EQ(must(meta().getattr(file.id)).length, 5000u);
  changed = must(meta().setattr(kRoot, file.id, SetAttr{.length = 100}));
  EXPECT_EQ(changed.length, 100u);
  Inode dir = must(meta().mkdir(kRoot, kRootInode, "d", 0755));
  EXPECT_ERRNO(meta().setattr(kRoot, dir.id, SetAttr{.length = 0}), EISDIR);
  EXPECT_ERRNO(meta().setattr(kRoot, file.id, SetAttr{.mode = 010000}), EINVAL);
}

TEST_P(MetaTest, UnlinkedOpenFileStaysUntilClosed) {
  FakeStorage storage;
  open_service(&storage);
  Inode file = must(meta().create(kRoot, kRootInode, "f", 0644));
  auto reader = meta().open(kRoot, file.id, kOpenRead, 1);
  auto writer = meta().open(kRoot, file.id, kOpenWrite, 2);
  ASSERT_TRUE(reader.is_ok() && writer.is_ok());
  EXPECT_EQ(*service().session_count(file.id), 2u);
  ASSERT_TRUE(meta().unlink(kRoot, kRootInode, "f").is_ok());
  EXPECT_ERRNO(meta().lookup(kRoot, kRootInode, "f"), ENOENT);
  Inode still = must(meta().getattr(file.id));  // readable through its open sessions
  EXPECT_EQ(still.nlink, 0u);
  EXPECT_EQ(still.layout, file.layout);
  expect_consistent();  // unlinked but open is not an orphan
  storage.lengths[file.id] = 777;
  ASSERT_TRUE(meta().close(file.id, writer->session, 10).is_ok());
  EXPECT_EQ(must(meta().getattr(file.id)).length, 777u);
  EXPECT_ERRNO(meta().close(file.id, writer->session, 0), EBADF);
  ASSERT_TRUE(meta().close(file.id, reader->session, 0).is_ok());
  EXPECT_ERRNO(meta().getattr(file.id), ENOENT);
  EXPECT_EQ(*service().collect_garbage(), 1u);
  EXPECT_EQ(storage.removed, std::vector<InodeId>{file.id});
  EXPECT_EQ(*service().collect_garbage(), 0u);
  expect_consistent();
}

TEST_P(MetaTest, CloseBatchClosesEachSessionAndReportsEachOutcome) {
  FakeStorage storage;
  open_service(&storage);
  Inode kept = must(meta().create(kRoot, kRootInode, "kept", 0644));
  Inode doomed = must(meta().create(kRoot, kRootInode, "doomed", 0644));
  Inode written = must(meta().create(kRoot, kRootInode, "written", 0644));
  auto read_kept = meta().open(kRoot, kept.id, kOpenRead, 1);
  auto write_kept = meta().open(kRoot, kept.id, kOpenWrite, 2);
  auto read_doomed = meta().open(kRoot, doomed.id, kOpenRead, 1);
  auto write_doomed = meta().open(kRoot, doomed.id, kOpenWrite, 1);
  auto write_written = meta().open(kRoot, written.id, kOpenWrite, 1);
  ASSERT_TRUE(read_kept.is_ok() && write_kept.is_ok() && read_doomed.is_ok() && write_doomed.is_ok() &&
              write_written.is_ok());
  ASSERT_TRUE(meta().report_length(kept.id, 500).is_ok());
  ASSERT_TRUE(meta().unlink(kRoot, kRootInode, "doomed").is_ok());
  storage.lengths[kept.id] = 9;        // would be taken if storage were asked
  storage.lengths[written.id] = 4096;  // the close with a hint asks storage
  const int queries = storage.length_queries;
  std::vector<CloseRequest> closes = {
      {kept.id, read_kept->session, 0},      {kept.id, write_kept->session, 0},
      {doomed.id, read_doomed->session, 0},  {kept.id, 0xdead, 0},  // no such session
      {doomed.id, write_doomed->session, 0}, {written.id, write_written->session, 100},
  };
  std::vector<Status> results = meta().close_batch(closes);
  ASSERT_EQ(results.size(), closes.size());
  for (size_t i : {0, 1, 2, 4, 5}) EXPECT_TRUE(results[i].is_ok()) << i << ": " << results[i].to_string();
  EXPECT_ERRNO(results[3], EBADF);
  EXPECT_EQ(*service().session_count(kept.id), 0u);
  EXPECT_EQ(must(meta().getattr(kept.id)).length, 500u) << "closes without a hint leave the length alone";
  EXPECT_EQ(storage.length_queries, queries + 1) << "only the close with a hint asks storage";
  EXPECT_EQ(must(meta().getattr(written.id)).length, 4096u);
  // The unlinked file's two sessions closed in one batch: the second finds no session left and deletes it.
  EXPECT_ERRNO(meta().getattr(doomed.id), ENOENT);
  EXPECT_EQ(*service().collect_garbage(), 1u);
  // Closed once: closing again is EBADF for each; an empty batch is nothing.
  results = meta().close_batch(std::span<const CloseRequest>(closes).first(2));
  ASSERT_EQ(results.size(), 2u);
  EXPECT_ERRNO(results[0], EBADF);
  EXPECT_ERRNO(results[1], EBADF);
  EXPECT_TRUE(meta().close_batch({}).empty());
  // Too many at once: EINVAL for each, nothing closed.
  auto open_again = meta().open(kRoot, kept.id, kOpenRead, 1);
  ASSERT_TRUE(open_again.is_ok());
  std::vector<CloseRequest> too_many(kMaxCloseBatch + 1, CloseRequest{kept.id, open_again->session, 0});
  results = meta().close_batch(too_many);
  ASSERT_EQ(results.size(), too_many.size());
  EXPECT_ERRNO(results.front(), EINVAL);
  EXPECT_ERRNO(results.back(), EINVAL);
  EXPECT_EQ(*service().session_count(kept.id), 1u);
  expect_consistent();
}

TEST_P(MetaTest, LengthsFromReportsAndExactOnCloseAndSync) {
  Inode file = must(meta().create(kRoot, kRootInode, "f", 0644));
  auto writer = meta().open(kRoot, file.id, kOpenWrite, 3);
  ASSERT_TRUE(writer.is_ok());
  ASSERT_TRUE(meta().report_length(file.id, 4096).is_ok());
  ASSERT_TRUE(meta().report_length(file.id, 100).is_ok());  // reports only grow the length
  EXPECT_EQ(must(meta().getattr(file.id)).length, 4096u);
  EXPECT_EQ(must(meta().sync(file.id, 8192)).length, 8192u);
  ASSERT_TRUE(meta().close(file.id, writer->session, 10000).is_ok());
  EXPECT_EQ(must(meta().getattr(file.id)).length, 10000u);

  FakeStorage storage;
  open_service(&storage);
  Inode exact = must(meta().create(kRoot, kRootInode, "g", 0644));
  auto session = meta().open(kRoot, exact.id, kOpenWrite, 3);
  ASSERT_TRUE(session.is_ok());
  storage.lengths[exact.id] = 3 * (1 << 20) + 5;
  EXPECT_EQ(must(meta().sync(exact.id, 1)).length, 3u * (1 << 20) + 5);  // storage wins over the hint
  storage.lengths[exact.id] = 42;                                        // e.g. after a truncate by another client
  ASSERT_TRUE(meta().close(exact.id, session->session, 9999).is_ok());
  EXPECT_EQ(must(meta().getattr(exact.id)).length, 42u);
  // Truncate cuts storage first, then the metadata; O_TRUNC too.
  ASSERT_TRUE(meta().setattr(kRoot, exact.id, SetAttr{.length = 7}).is_ok());
  auto truncating = meta().open(kRoot, exact.id, kOpenWrite | kOpenTruncate, 3);
  ASSERT_TRUE(truncating.is_ok());
  EXPECT_EQ(truncating->inode.length, 0u);
  ASSERT_EQ(storage.truncated.size(), 2u);
  EXPECT_EQ(storage.truncated[0], std::make_pair(exact.id, uint64_t{7}));
  EXPECT_EQ(storage.truncated[1], std::make_pair(exact.id, uint64_t{0}));
  // A write session that wrote nothing (hint 0) leaves the length alone without asking storage.
  ASSERT_TRUE(meta().close(exact.id, truncating->session, 0).is_ok());
  auto idle = meta().open(kRoot, exact.id, kOpenWrite, 3);
  ASSERT_TRUE(idle.is_ok());
  storage.lengths[exact.id] = 77;  // would be taken if storage were asked
  const int queries = storage.length_queries;
  ASSERT_TRUE(meta().close(exact.id, idle->session, 0).is_ok());
  EXPECT_EQ(storage.length_queries, queries);
  EXPECT_EQ(must(meta().getattr(exact.id)).length, 0u);
}

TEST_P(MetaTest, CrashedClientsSessionsAreReclaimedAfterTheLease) {
  FakeStorage storage;
  open_service(&storage);
  Inode kept = must(meta().create(kRoot, kRootInode, "kept", 0644));
  Inode doomed = must(meta().create(kRoot, kRootInode, "doomed", 0644));
  ASSERT_TRUE(meta().open(kRoot, kept.id, kOpenWrite, 100).is_ok());  // client 100 crashes
  ASSERT_TRUE(meta().open(kRoot, doomed.id, kOpenRead, 100).is_ok());
  auto live = meta().open(kRoot, kept.id, kOpenRead, 200);  // client 200 keeps renewing
  ASSERT_TRUE(live.is_ok());
  ASSERT_TRUE(meta().unlink(kRoot, kRootInode, "doomed").is_ok());
  storage.lengths[kept.id] = 4321;
  EXPECT_EQ(*service().reclaim_expired_sessions(), 0u);  // nobody expired yet
  clock_.advance_ns(600'000'000);
  ASSERT_TRUE(meta().renew_client(200).is_ok());
  clock_.advance_ns(600'000'000);  // 1.2 s: client 100's 1 s lease ran out, 200's did not
  EXPECT_EQ(*service().reclaim_expired_sessions(), 2u);
  EXPECT_EQ(*service().session_count(kept.id), 1u);
  EXPECT_EQ(must(meta().getattr(kept.id)).length, 4321u);  // the crashed writer's length made exact
  EXPECT_ERRNO(meta().getattr(doomed.id), ENOENT);         // only the crashed client kept it alive
  EXPECT_EQ(*service().collect_garbage(), 1u);
  EXPECT_TRUE(meta().close(kept.id, live->session, 0).is_ok());
  EXPECT_EQ(*service().reclaim_expired_sessions(), 0u);
  expect_consistent();
}

TEST_P(MetaTest, OpenChecks) {
  Inode dir = must(meta().mkdir(kRoot, kRootInode, "d", 0755));
  EXPECT_ERRNO(meta().open(kRoot, dir.id, kOpenWrite, 1), EISDIR);
  EXPECT_TRUE(meta().open(kRoot, dir.id, kOpenRead, 1).is_ok());
  Inode file = must(meta().create(kRoot, kRootInode, "f", 0444));
  EXPECT_ERRNO(meta().open(kRoot, file.id, 0, 1), EINVAL);
  EXPECT_ERRNO(meta().open(kRoot, file.id, kOpenRead | kOpenTruncate, 1), EINVAL);
  EXPECT_ERRNO(meta().open(kAlice, file.id, kOpenWrite, 1), EACCES);
  EXPECT_TRUE(meta().open(kRoot, file.id, kOpenWrite, 1).is_ok());  // root ignores write bits
}

// create_open: the file and its session in one step; the creating open ignores the new file's mode.
TEST_P(MetaTest, CreateOpenMakesTheFileAndItsSession) {
  Inode dir = must(meta().mkdir(kRoot, kRootInode, "shared", 0777));
  auto opened = meta().create_open(kAlice, dir.id, "ro", 0444, kOpenWrite, 7);
  ASSERT_TRUE(opened.is_ok()) << opened.status();
  EXPECT_EQ(opened->inode.type, FileType::kRegular);
  EXPECT_EQ(opened->inode.mode, 0444u);
  EXPECT_EQ(opened->inode.uid, kAlice.uid);
  EXPECT_FALSE(opened->inode.layout.chains.empty());
  EXPECT_EQ(must(meta().lookup(kAlice, dir.id, "ro")).id, opened->inode.id);
  EXPECT_EQ(*service().session_count(opened->inode.id), 1u);
  EXPECT_ERRNO(meta().open(kAlice, opened->inode.id, kOpenWrite, 7), EACCES);  // a later open is checked
  ASSERT_TRUE(meta().close(opened->inode.id, opened->session, 0).is_ok());
  EXPECT_EQ(*service().session_count(opened->inode.id), 0u);
  EXPECT_ERRNO(meta().create_open(kAlice, dir.id, "ro", 0644, kOpenWrite, 7), EEXIST);
  EXPECT_ERRNO(meta().create_open(kAlice, dir.id, "x", 0644, 0, 7), EINVAL);
  EXPECT_ERRNO(meta().create_open(kAlice, dir.id, "x", 0644, kOpenWrite, 0), EINVAL);
  EXPECT_ERRNO(meta().create_open(kAlice, dir.id, "a/b", 0644, kOpenWrite, 7), EINVAL);
  Inode closed = must(meta().mkdir(kRoot, kRootInode, "closed", 0755));
  EXPECT_ERRNO(meta().create_open(kAlice, closed.id, "x", 0644, kOpenWrite, 7), EACCES);
  EXPECT_ERRNO(meta().lookup(kRoot, closed.id, "x"), ENOENT);  // nothing left behind
  expect_consistent();
}

TEST_P(MetaTest, StatfsAndErrnoHelpers) {
  auto stat = meta().statfs();
  ASSERT_TRUE(stat.is_ok());
  EXPECT_EQ(stat->block_size, 1u << 20);
  EXPECT_EQ(stat->max_name_bytes, 255u);
  must(meta().create(kRoot, kRootInode, "f", 0644));
  EXPECT_GE(meta().statfs()->inodes_allocated, 2u);
  EXPECT_EQ(errno_of(meta_error(ENOTEMPTY, "x")), ENOTEMPTY);
  EXPECT_EQ(meta_error(ENOENT, "x").code(), StatusCode::kNotFound);
  EXPECT_EQ(errno_of(Status::ok()), 0);
  EXPECT_EQ(errno_of(aborted("gave up")), EAGAIN);
  EXPECT_EQ(errno_of(io_error("disk")), EIO);
  EXPECT_EQ(errno_name(EXDEV), "EXDEV");
}

TEST_P(MetaTest, ServiceStateSurvivesReopenOnRocksDb) {
  rpc::testing::TempDir dir;
  InodeId file_id = 0;
  {
    auto engine = kv::open_rocksdb_kv(kv::RocksDbKvOptions{.path = dir.path() + "/meta"});
    ASSERT_TRUE(engine.is_ok());
    auto service = MetaService::open(**engine, MetaConfig{});
    ASSERT_TRUE(service.is_ok());
    Inode d = must((*service)->mkdir(kRoot, kRootInode, "d", 0755));
    file_id = must((*service)->create(kRoot, d.id, "f", 0644)).id;
  }
  auto engine = kv::open_rocksdb_kv(kv::RocksDbKvOptions{.path = dir.path() + "/meta"});
  ASSERT_TRUE(engine.is_ok());
  auto service = MetaService::open(**engine, MetaConfig{});
  ASSERT_TRUE(service.is_ok());
  EXPECT_EQ(must((*service)->resolve(kRoot, "/d/f")).id, file_id);
  // A fresh instance allocates beyond the ids the first one reserved.
  EXPECT_GT(must((*service)->create(kRoot, kRootInode, "g", 0644)).id, file_id);
}

TEST_P(MetaTest, RejectsBadConfig) {
  auto engine = kv::open_memory_kv();
  EXPECT_FALSE(MetaService::open(*engine, MetaConfig{.chains = {}}).is_ok());
  EXPECT_FALSE(MetaService::open(*engine, MetaConfig{.chains = {1}, .stripe = 2}).is_ok());
  EXPECT_FALSE(MetaService::open(*engine, MetaConfig{.chunk_size = 3000}).is_ok());
}

INSTANTIATE_TEST_SUITE_P(Via, MetaTest, ::testing::ValuesIn(testing::meta_suite_params()),
                         [](const auto& info) { return info.param.name; });

}  // namespace
}  // namespace ff::fs::meta
