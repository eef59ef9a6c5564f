// FuseFs in this process: a MetaService on the memory KV with MemoryData, mounted in a temporary
// directory and used through ordinary system calls. Skipped when /dev/fuse cannot be opened.
#include <dirent.h>
#include <fcntl.h>
#include <gtest/gtest.h>
#include <stdio.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <sys/xattr.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <set>
#include <thread>

#include "ff/fs/fuse.h"
#include "ff/fs/kv_engines.h"

namespace ff::fs::fuse {
namespace {

std::string read_file(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(in), {});
}

void write_file(const std::string& path, const std::string& bytes) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out << bytes;
}

class FuseTest : public ::testing::Test {
 protected:
  void SetUp() override {
    int fd = ::open("/dev/fuse", O_RDWR);
    if (fd < 0) GTEST_SKIP() << "/dev/fuse cannot be opened: " << std::strerror(errno);
    ::close(fd);
    char pattern[] = "/tmp/ff_fuse_test_XXXXXX";
    ASSERT_NE(::mkdtemp(pattern), nullptr);
    dir_ = pattern;
    ::chmod(dir_.c_str(), 0755);
    mount_ = dir_ + "/mnt";
    ASSERT_EQ(::mkdir(mount_.c_str(), 0755), 0);
    engine_ = kv::open_memory_kv();
    auto service = meta::MetaService::open(*engine_, meta::MetaConfig{}, &data_);
    ASSERT_TRUE(service.is_ok()) << service.status().to_string();
    meta_ = std::move(*service);
    data_.bind(*meta_);
  }

  // data: the FileData FuseFs uses (default: data_, which is also meta's FileStorage).
  void Mount(FuseOptions options, FileData* data = nullptr) {
    options.mountpoint = mount_;
    auto fs = FuseFs::mount(options, *meta_, data != nullptr ? *data : data_);
    ASSERT_TRUE(fs.is_ok()) << fs.status().to_string();
    fs_ = std::move(*fs);
    loop_ = std::thread([this] { run_status_ = fs_->run(); });
  }

  void TearDown() override {
    if (fs_) {
      fs_->exit();
      loop_.join();
      fs_.reset();
    }
    if (!dir_.empty()) std::filesystem::remove_all(dir_);
  }

  // Mounts with kernel entry and attribute caches of a minute: what the kernel answers itself stays cached.
  void MountWithLongCaches() {
    FuseOptions options;
    options.attr_timeout_s = 60;
    options.entry_timeout_s = 60;
    Mount(options);
  }

  bool Mounted() {
    struct stat mount_stat, parent_stat;
    return ::stat(mount_.c_str(), &mount_stat) == 0 && ::stat(dir_.c_str(), &parent_stat) == 0 &&
           mount_stat.st_dev != parent_stat.st_dev;
  }

  // Waits until the daemon has sent `count` kernel invalidations (they are queued, sent by a thread).
  void WaitInvalidations(uint64_t count) {
    auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(10);
    while (fs_->stats().invalidations < count) {
      ASSERT_LT(std::chrono::steady_clock::now(), deadline) << "invalidations sent: " << fs_->stats().invalidations;
      std::this_thread::sleep_for(std::chrono::milliseconds(5));
    }
  }

  std::string dir_, mount_;
  std::unique_ptr<kv::KvEngine> engine_;
  MemoryData data_;
  std::unique_ptr<meta::MetaService> meta_;
  std::unique_ptr<FuseFs> fs_;
  std::thread loop_;
  Status run_status_;
};

TEST_F(FuseTest, FilesDirectoriesAndErrnos) {
  Mount({});
  ASSERT_TRUE(Mounted());
  std::string a = mount_ + "/a";
  write_file(a, "hello");
  EXPECT_EQ(read_file(a), "hello");
  ASSERT_EQ(::mkdir((mount_ + "/d").c_str(), 0750), 0);
  ASSERT_EQ(::rename(a.c_str(), (mount_ + "/d/b").c_str()), 0);
  struct stat st;
  EXPECT_EQ(::stat(a.c_str(), &st), -1);
  EXPECT_EQ(errno, ENOENT);
  ASSERT_EQ(::stat((mount_ + "/d/b").c_str(), &st), 0);
  EXPECT_EQ(st.st_size, 5);
  ASSERT_EQ(::stat((mount_ + "/d").c_str(), &st), 0);
  EXPECT_TRUE(S_ISDIR(st.st_mode));
  EXPECT_EQ(st.st_mode & 07777, 0750u);
  EXPECT_EQ(::rmdir((mount_ + "/d").c_str()), -1);
  EXPECT_EQ(errno, ENOTEMPTY);
  // RENAME_NOREPLACE reaches meta's no_replace.
  write_file(mount_ + "/c", "c");
  EXPECT_EQ(::renameat2(AT_FDCWD, (mount_ + "/c").c_str(), AT_FDCWD, (mount_ + "/d/b").c_str(), RENAME_NOREPLACE), -1);
  EXPECT_EQ(errno, EEXIST);
  EXPECT_EQ(::symlink("d/b", (mount_ + "/s").c_str()), 0);
  EXPECT_EQ(read_file(mount_ + "/s"), "hello");
  EXPECT_EQ(::truncate((mount_ + "/d/b").c_str(), 2), 0);
  EXPECT_EQ(read_file(mount_ + "/d/b"), "he");
  std::string long_name(256, 'n');
  EXPECT_EQ(::mknod((mount_ + "/" + long_name).c_str(), S_IFREG | 0644, 0), -1);
  EXPECT_EQ(errno, ENAMETOOLONG);
  EXPECT_GT(fs_->stats().requests, 10u);
}

TEST_F(FuseTest, RenameExchangeSwapsNamesAndWhiteoutIsRefused) {
  Mount({});
  ASSERT_EQ(::mkdir((mount_ + "/d").c_str(), 0755), 0);
  ASSERT_EQ(::mkdir((mount_ + "/d/sub").c_str(), 0755), 0);
  write_file(mount_ + "/f", "file");
  struct stat before_d, before_root, st;
  ASSERT_EQ(::stat((mount_ + "/d").c_str(), &before_d), 0);
  ASSERT_EQ(::stat(mount_.c_str(), &before_root), 0);
  // A file and a directory across directories.
  ASSERT_EQ(::renameat2(AT_FDCWD, (mount_ + "/f").c_str(), AT_FDCWD, (mount_ + "/d/sub").c_str(), RENAME_EXCHANGE), 0)
      << std::strerror(errno);
  EXPECT_EQ(read_file(mount_ + "/d/sub"), "file");
  ASSERT_EQ(::stat((mount_ + "/f").c_str(), &st), 0);
  EXPECT_TRUE(S_ISDIR(st.st_mode));
  ASSERT_EQ(::stat((mount_ + "/d").c_str(), &st), 0);
  EXPECT_EQ(st.st_nlink, before_d.st_nlink - 1);
  ASSERT_EQ(::stat(mount_.c_str(), &st), 0);
  EXPECT_EQ(st.st_nlink, before_root.st_nlink + 1);
  // Into its own subtree: EINVAL; a missing name: ENOENT; RENAME_WHITEOUT: EINVAL.
  write_file(mount_ + "/d/inner", "x");
  EXPECT_EQ(::renameat2(AT_FDCWD, (mount_ + "/d").c_str(), AT_FDCWD, (mount_ + "/d/inner").c_str(), RENAME_EXCHANGE),
            -1);
  EXPECT_EQ(errno, EINVAL);
  EXPECT_EQ(::renameat2(AT_FDCWD, (mount_ + "/none").c_str(), AT_FDCWD, (mount_ + "/f").c_str(), RENAME_EXCHANGE), -1);
  EXPECT_EQ(errno, ENOENT);
  EXPECT_EQ(::renameat2(AT_FDCWD, (mount_ + "/d/inner").c_str(), AT_FDCWD, (mount_ + "/w").c_str(), RENAME_WHITEOUT),
            -1);
  EXPECT_TRUE(errno == EINVAL || errno == EPERM) << std::strerror(errno);  // the kernel may refuse first (EPERM)
  auto report = meta_->fsck();
  ASSERT_TRUE(report.is_ok());
  EXPECT_TRUE(report->problems.empty()) << report->problems.front();
}

TEST_F(FuseTest, ExtendedAttributesWithTheSizeRules) {
  Mount({});
  std::string path = mount_ + "/x";
  write_file(path, "x");
  ASSERT_EQ(::setxattr(path.c_str(), "user.color", "blue", 4, XATTR_CREATE), 0) << std::strerror(errno);
  EXPECT_EQ(::setxattr(path.c_str(), "user.color", "red", 3, XATTR_CREATE), -1);
  EXPECT_EQ(errno, EEXIST);
  EXPECT_EQ(::setxattr(path.c_str(), "user.size", "1", 1, XATTR_REPLACE), -1);
  EXPECT_EQ(errno, ENODATA);
  // getxattr: size 0 asks for the size, a short buffer is ERANGE, an absent name ENODATA.
  EXPECT_EQ(::getxattr(path.c_str(), "user.color", nullptr, 0), 4);
  char small[2];
  EXPECT_EQ(::getxattr(path.c_str(), "user.color", small, sizeof(small)), -1);
  EXPECT_EQ(errno, ERANGE);
  char value[16] = {};
  EXPECT_EQ(::getxattr(path.c_str(), "user.color", value, sizeof(value)), 4);
  EXPECT_STREQ(value, "blue");
  EXPECT_EQ(::getxattr(path.c_str(), "user.none", value, sizeof(value)), -1);
  EXPECT_EQ(errno, ENODATA);
  // listxattr: the same rules over "name\0name\0".
  ASSERT_EQ(::setxattr(path.c_str(), "user.b", "", 0, 0), 0);
  EXPECT_EQ(::listxattr(path.c_str(), nullptr, 0), static_cast<ssize_t>(sizeof("user.b") + sizeof("user.color")));
  EXPECT_EQ(::listxattr(path.c_str(), small, sizeof(small)), -1);
  EXPECT_EQ(errno, ERANGE);
  char list[64] = {};
  ASSERT_EQ(::listxattr(path.c_str(), list, sizeof(list)), 18);
  EXPECT_EQ(std::string(list, 18), std::string("user.b\0user.color\0", 18));
  ASSERT_EQ(::removexattr(path.c_str(), "user.b"), 0);
  EXPECT_EQ(::removexattr(path.c_str(), "user.b"), -1);
  EXPECT_EQ(errno, ENODATA);
  // Namespaces and limits.
  EXPECT_EQ(::setxattr(path.c_str(), "system.posix_acl_access", "", 0, 0), -1);
  EXPECT_EQ(errno, EOPNOTSUPP);
  std::string big(64 * 1024, 'v');
  EXPECT_EQ(::setxattr(path.c_str(), "user.big", big.data(), big.size(), 0), 0) << std::strerror(errno);
  EXPECT_EQ(::getxattr(path.c_str(), "user.big", nullptr, 0), static_cast<ssize_t>(big.size()));
  // The attribute stays with the file through a rename.
  ASSERT_EQ(::rename(path.c_str(), (mount_ + "/y").c_str()), 0);
  EXPECT_EQ(::getxattr((mount_ + "/y").c_str(), "user.color", value, sizeof(value)), 4);
}

TEST_F(FuseTest, FallocateExtendsOrKeepsTheSize) {
  Mount({});
  std::string path = mount_ + "/big";
  int fd = ::open(path.c_str(), O_CREAT | O_RDWR, 0644);
  ASSERT_GE(fd, 0);
  ASSERT_EQ(::write(fd, "abc", 3), 3);
  ASSERT_EQ(::fallocate(fd, 0, 0, 10000), 0) << std::strerror(errno);
  struct stat st;
  ASSERT_EQ(::fstat(fd, &st), 0);
  EXPECT_EQ(st.st_size, 10000);
  ASSERT_EQ(::fallocate(fd, FALLOC_FL_KEEP_SIZE, 0, 50000), 0);
  ASSERT_EQ(::fallocate(fd, 0, 100, 200), 0);  // inside the file: nothing
  ASSERT_EQ(::fstat(fd, &st), 0);
  EXPECT_EQ(st.st_size, 10000);
  EXPECT_EQ(::fallocate(fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, 0, 10), -1);
  EXPECT_EQ(errno, EOPNOTSUPP);
  EXPECT_EQ(::fallocate(fd, FALLOC_FL_ZERO_RANGE, 0, 10), -1);
  EXPECT_EQ(errno, EOPNOTSUPP);
  ::close(fd);
  std::string bytes = read_file(path);
  ASSERT_EQ(bytes.size(), 10000u);
  EXPECT_EQ(bytes.substr(0, 3), "abc");
  EXPECT_EQ(bytes.find_first_not_of('\0', 3), std::string::npos);
  EXPECT_EQ(meta_->getattr(meta_->lookup(meta::Caller{}, meta::kRootInode, "big")->id)->length, 10000u);
}

TEST_F(FuseTest, DirectoryTimesMoveWithEntryChangesDespiteTheAttributeCache) {
  MountWithLongCaches();
  std::string dir = mount_ + "/d";
  ASSERT_EQ(::mkdir(dir.c_str(), 0755), 0);
  struct stat st;
  ASSERT_EQ(::stat(dir.c_str(), &st), 0);
  int64_t last = int64_t{st.st_mtim.tv_sec} * 1'000'000'000 + st.st_mtim.tv_nsec;
  auto expect_newer = [&](const char* what) {
    struct stat now;
    ASSERT_EQ(::stat(dir.c_str(), &now), 0);
    int64_t mtime = int64_t{now.st_mtim.tv_sec} * 1'000'000'000 + now.st_mtim.tv_nsec;
    EXPECT_GT(mtime, last) << what;
    last = mtime;
    std::this_thread::sleep_for(std::chrono::milliseconds(2));
  };
  std::this_thread::sleep_for(std::chrono::milliseconds(2));
  write_file(dir + "/f", "x");
  expect_newer("create");
  ASSERT_EQ(::rename((dir + "/f").c_str(), (dir + "/g").c_str()), 0);
  expect_newer("rename");
  ASSERT_EQ(::link((dir + "/g").c_str(), (dir + "/h").c_str()), 0);
  expect_newer("link");
  ASSERT_EQ(::unlink((dir + "/g").c_str()), 0);
  expect_newer("unlink");
  ASSERT_EQ(::mkdir((dir + "/s").c_str(), 0755), 0);
  expect_newer("mkdir");
  ASSERT_EQ(::rmdir((dir + "/s").c_str()), 0);
  expect_newer("rmdir");
}

class FuseListingTest : public FuseTest, public ::testing::WithParamInterface<bool> {};

TEST_P(FuseListingTest, DirectoryOffsetsMapToNames) {
  FuseOptions options;
  options.readdirplus = GetParam();
  Mount(options);
  for (int i = 0; i < 300; ++i) {
    std::string path = fmt::format("{}/file-{:04d}-{}", mount_, i, std::string(i % 50, 'x'));
    ASSERT_EQ(::mknod(path.c_str(), S_IFREG | 0644, 0), 0) << path;
  }
  DIR* dir = ::opendir(mount_.c_str());
  ASSERT_NE(dir, nullptr);
  std::vector<std::string> first, rest, again;
  auto next = [&]() -> std::optional<std::string> {
    while (dirent* entry = ::readdir(dir)) {
      std::string name = entry->d_name;
      if (name != "." && name != "..") return name;
    }
    return std::nullopt;
  };
  for (int i = 0; i < 120; ++i) first.push_back(*next());
  long position = ::telldir(dir);
  while (auto name = next()) rest.push_back(*name);
  ::seekdir(dir, position);
  while (auto name = next()) again.push_back(*name);
  ::closedir(dir);
  EXPECT_EQ(again, rest);
  std::set<std::string> all(first.begin(), first.end());
  all.insert(rest.begin(), rest.end());
  EXPECT_EQ(all.size(), 300u);
  EXPECT_EQ(first.size() + rest.size(), 300u) << "an entry was listed twice";
}

INSTANTIATE_TEST_SUITE_P(PlainAndPlus, FuseListingTest, ::testing::Bool(),
                         [](const auto& info) { return info.param ? std::string("Plus") : std::string("Plain"); });

// A create answers the kernel's next GETATTR of its directory from meta's reply (no meta call): the directory's
// times are the create's, and every other change through the mount (chmod, mkdir, unlink) is seen at once even
// with a long attribute timeout.
TEST_F(FuseTest, DirectoryAttributesAfterACreateComeFromItsReply) {
  MountWithLongCaches();
  std::string dir = mount_ + "/d";
  ASSERT_EQ(::mkdir(dir.c_str(), 0755), 0);
  auto nanos = [](const struct timespec& t) { return int64_t{t.tv_sec} * 1'000'000'000 + t.tv_nsec; };
  struct stat st, file;
  for (int i = 0; i < 3; ++i) {
    std::string path = dir + "/f" + std::to_string(i);
    int fd = ::open(path.c_str(), O_CREAT | O_WRONLY, 0644);
    ASSERT_GE(fd, 0) << std::strerror(errno);
    ::close(fd);
    ASSERT_EQ(::stat(path.c_str(), &file), 0);
    ASSERT_EQ(::stat(dir.c_str(), &st), 0);
    EXPECT_EQ(nanos(st.st_mtim), nanos(file.st_ctim)) << "the directory's mtime is its newest create's";
    EXPECT_EQ(nanos(st.st_ctim), nanos(file.st_ctim));
    EXPECT_EQ(st.st_mode & 07777, 0755u);
  }
  EXPECT_GE(fs_->stats().fresh_dir_hits, 1u) << "no GETATTR of the directory was answered from a create";
  EXPECT_EQ(fs_->stats().invalidations, 0u) << "closing a created file that was not written invalidated its attributes";
  auto meta_view = meta_->getattr(st.st_ino);
  ASSERT_TRUE(meta_view.is_ok()) << meta_view.status().to_string();
  EXPECT_EQ(meta_view->mtime_ns, nanos(st.st_mtim)) << "meta and the mount agree on the directory's mtime";

  ASSERT_EQ(::chmod(dir.c_str(), 0700), 0);
  ASSERT_EQ(::stat(dir.c_str(), &st), 0);
  EXPECT_EQ(st.st_mode & 07777, 0700u);
  int fd = ::open((dir + "/g").c_str(), O_CREAT | O_WRONLY, 0644);
  ASSERT_GE(fd, 0);
  ::close(fd);
  ASSERT_EQ(::stat(dir.c_str(), &st), 0);
  EXPECT_EQ(st.st_mode & 07777, 0700u) << "a create's copy of the directory carries the chmod before it";
  ASSERT_EQ(::mkdir((dir + "/s").c_str(), 0755), 0);
  ASSERT_EQ(::stat(dir.c_str(), &st), 0);
  EXPECT_EQ(st.st_nlink, 3u) << "mkdir after a create: the directory's link count is meta's, not the create's copy";
  const int64_t before_unlink = nanos(st.st_mtim);
  std::this_thread::sleep_for(std::chrono::milliseconds(2));
  const uint64_t hits_before_unlink = fs_->stats().fresh_dir_hits;
  ASSERT_EQ(::unlink((dir + "/g").c_str()), 0);
  ASSERT_EQ(::stat(dir.c_str(), &st), 0);
  EXPECT_GT(nanos(st.st_mtim), before_unlink) << "unlink after a create moved the directory's mtime";
  EXPECT_GT(fs_->stats().fresh_dir_hits, hits_before_unlink) << "the GETATTR after the unlink went to meta";
  meta_view = meta_->getattr(st.st_ino);
  ASSERT_TRUE(meta_view.is_ok());
  EXPECT_EQ(meta_view->mtime_ns, nanos(st.st_mtim));
  EXPECT_EQ(st.st_nlink, 3u);

  // An unlink in another directory leaves this directory's copy (it changes no other directory), and the copy is
  // still meta's view of it.
  std::string other = mount_ + "/o";
  ASSERT_EQ(::mkdir(other.c_str(), 0755), 0);
  fd = ::open((other + "/x").c_str(), O_CREAT | O_WRONLY, 0644);
  ASSERT_GE(fd, 0);
  ::close(fd);
  fd = ::open((dir + "/h").c_str(), O_CREAT | O_WRONLY, 0644);
  ASSERT_GE(fd, 0);
  ::close(fd);
  ASSERT_EQ(::unlink((dir + "/h").c_str()), 0);  // this directory's copy: after this unlink
  ASSERT_EQ(::unlink((other + "/x").c_str()), 0);
  const uint64_t hits_before_stat = fs_->stats().fresh_dir_hits;
  ASSERT_EQ(::stat(dir.c_str(), &st), 0);
  EXPECT_GT(fs_->stats().fresh_dir_hits, hits_before_stat) << "an unlink in another directory dropped this one's copy";
  meta_view = meta_->getattr(st.st_ino);
  ASSERT_TRUE(meta_view.is_ok());
  EXPECT_EQ(meta_view->mtime_ns, nanos(st.st_mtim));
  EXPECT_EQ(meta_view->ctime_ns, nanos(st.st_ctim));
}

TEST_F(FuseTest, AttributeCacheInvalidatedByFsyncAndRelease) {
  FuseOptions options;
  options.attr_timeout_s = 60;  // without invalidation the kernel would trust cached sizes for a minute
  options.entry_timeout_s = 60;
  Mount(options);
  std::string path = mount_ + "/f";
  write_file(path, "0123456789");
  WaitInvalidations(1);  // the release of the writing handle
  struct stat st;
  ASSERT_EQ(::stat(path.c_str(), &st), 0);
  ASSERT_EQ(st.st_size, 10);
  // Another client (not through this mount) makes the file 100 bytes long.
  auto inode = meta_->resolve(meta::Caller{}, "/f");
  ASSERT_TRUE(inode.is_ok()) << inode.status().to_string();
  auto handle = data_.open(meta::Caller{}, inode->id, meta::kOpenWrite);
  ASSERT_TRUE(handle.is_ok()) << handle.status().to_string();
  std::string bytes(100, 'z');
  ASSERT_TRUE(data_.write(*handle, 0, std::as_bytes(std::span(bytes))).is_ok());
  ASSERT_TRUE(data_.close(*handle).is_ok());
  ASSERT_EQ(::stat(path.c_str(), &st), 0);
  EXPECT_EQ(st.st_size, 10) << "the kernel should still answer from its attribute cache";
  // fsync through the mount makes the length exact and drops the cached attributes.
  int fd = ::open(path.c_str(), O_RDONLY);
  ASSERT_GE(fd, 0);
  ASSERT_EQ(::fsync(fd), 0);
  WaitInvalidations(2);
  ASSERT_EQ(::stat(path.c_str(), &st), 0);
  EXPECT_EQ(st.st_size, 100);
  ::close(fd);
}

TEST_F(FuseTest, StaleEntryDroppedWhenMetaSaysTheNameIsGone) {
  FuseOptions options;
  options.attr_timeout_s = 60;
  options.entry_timeout_s = 60;
  Mount(options);
  std::string path = mount_ + "/f";
  write_file(path, "x");
  WaitInvalidations(1);  // the release of the writing handle
  struct stat st;
  ASSERT_EQ(::stat(path.c_str(), &st), 0);
  // Another client removes the name; the kernel still believes in it for a minute.
  ASSERT_TRUE(meta_->unlink(meta::Caller{}, meta::kRootInode, "f").is_ok());
  EXPECT_EQ(::stat(path.c_str(), &st), 0) << "the kernel should still answer from its entry cache";
  // An operation on the name learns from meta that it is gone, and the kernel's entry is dropped.
  EXPECT_EQ(::unlink(path.c_str()), -1);
  EXPECT_EQ(errno, ENOENT);
  WaitInvalidations(2);
  EXPECT_EQ(::stat(path.c_str(), &st), -1);
  EXPECT_EQ(errno, ENOENT);
}

TEST_F(FuseTest, FstatOfAnOpenFileSeesLaterChanges) {
  Mount({});
  std::string path = mount_ + "/f";
  int fd = ::open(path.c_str(), O_CREAT | O_RDWR, 0644);
  ASSERT_GE(fd, 0);
  ASSERT_EQ(::write(fd, "abc", 3), 3);
  ASSERT_EQ(::chmod(path.c_str(), 0600), 0);
  struct stat st;
  ASSERT_EQ(::fstat(fd, &st), 0);
  EXPECT_EQ(st.st_mode & 07777, 0600u);
  EXPECT_EQ(st.st_size, 3) << "this mount's writes count before meta hears of them";
  ::close(fd);
}

TEST_F(FuseTest, UnlinkedOpenFileStaysReadable) {
  Mount({});
  std::string path = mount_ + "/ghost";
  write_file(path, "still here");
  int fd = ::open(path.c_str(), O_RDONLY);
  ASSERT_GE(fd, 0);
  ASSERT_EQ(::unlink(path.c_str()), 0);
  char buffer[32] = {};
  EXPECT_EQ(::pread(fd, buffer, sizeof(buffer), 0), 10);
  EXPECT_STREQ(buffer, "still here");
  ::close(fd);
}

// A FileData over MemoryData whose reads come as pieces of `piece` bytes (FileClient's come as gRPC's
// slices): FuseFs replies with them as an iovec list, or gathers them when there are too many.
class PiecesData final : public FileData {
 public:
  PiecesData(MemoryData& data, size_t piece) : data_(data), piece_(piece) {}
  Result<uint64_t> open(const meta::Caller& c, meta::InodeId inode, uint32_t flags) override {
    return data_.open(c, inode, flags);
  }
  Result<uint64_t> create(const meta::Caller& c, meta::InodeId parent, std::string_view name, uint32_t mode,
                          uint32_t flags, std::optional<meta::Inode>* parent_after = nullptr) override {
    return data_.create(c, parent, name, mode, flags, parent_after);
  }
  Result<size_t> read(uint64_t, uint64_t, std::span<std::byte>) override {
    ADD_FAILURE() << "read() called although read_pieces() is offered";
    return unimplemented("read");
  }
  bool has_read_pieces() const override { return true; }
  Result<std::vector<SharedBytes>> read_pieces(uint64_t handle, uint64_t offset, size_t length) override {
    std::vector<std::byte> bytes(length);
    FF_ASSIGN_OR_RETURN(size_t n, data_.read(handle, offset, bytes));
    bytes.resize(n);
    SharedBytes all = SharedBytes::adopt(std::move(bytes));
    std::vector<SharedBytes> pieces;
    for (size_t at = 0; at < all.size(); at += piece_) {
      pieces.push_back(SharedBytes{all.owner, all.bytes.subspan(at, std::min(piece_, all.size() - at))});
    }
    calls_.fetch_add(1);
    most_pieces_ = std::max<size_t>(most_pieces_.load(), pieces.size());
    return pieces;
  }
  Result<size_t> write(uint64_t handle, uint64_t offset, std::span<const std::byte> data) override {
    return data_.write(handle, offset, data);
  }
  Result<meta::Inode> fsync(uint64_t handle) override { return data_.fsync(handle); }
  Status close(uint64_t handle) override { return data_.close(handle); }
  Result<meta::Inode> stat(uint64_t handle) override { return data_.stat(handle); }
  Result<meta::Inode> setattr(const meta::Caller& c, meta::InodeId inode, const meta::SetAttr& attr) override {
    return data_.setattr(c, inode, attr);
  }
  std::atomic<uint64_t> calls_{0};
  std::atomic<size_t> most_pieces_{0};

 private:
  MemoryData& data_;
  size_t piece_;
};

class FusePiecesTest : public FuseTest, public ::testing::WithParamInterface<size_t> {};

TEST_P(FusePiecesTest, ReadsRepliedFromPieces) {
  PiecesData pieces(data_, GetParam());
  Mount({}, &pieces);
  std::string content(3 * (1 << 20) + 12345, '\0');
  for (size_t i = 0; i < content.size(); ++i) content[i] = static_cast<char>((i * 131 + i / 4096) & 0xff);
  write_file(mount_ + "/big", content);
  EXPECT_EQ(read_file(mount_ + "/big"), content);
  // Positional reads at odd places, and past the end.
  int fd = ::open((mount_ + "/big").c_str(), O_RDONLY);
  ASSERT_GE(fd, 0);
  std::string buffer(1 << 20, 'x');
  for (off_t offset : {off_t{0}, off_t{4095}, off_t{(1 << 20) + 7}, static_cast<off_t>(content.size()) - 100}) {
    ssize_t n = ::pread(fd, buffer.data(), buffer.size(), offset);
    ASSERT_EQ(n, std::min<ssize_t>(buffer.size(), static_cast<ssize_t>(content.size()) - offset));
    EXPECT_EQ(buffer.substr(0, static_cast<size_t>(n)),
              content.substr(static_cast<size_t>(offset), static_cast<size_t>(n)));
  }
  EXPECT_EQ(::pread(fd, buffer.data(), 10, static_cast<off_t>(content.size())), 0);
  ::close(fd);
  EXPECT_GT(pieces.calls_.load(), 0u);
  FuseStats stats = fs_->stats();
  EXPECT_EQ(stats.reads, pieces.calls_.load());
  EXPECT_GE(stats.most_concurrent_reads, 1u);
  EXPECT_GE(stats.read_bytes, content.size());
  if (GetParam() < 1024) {
    EXPECT_GT(pieces.most_pieces_.load(), 1000u) << "the gathering path was not exercised";
  }
}

// 16 KiB pieces (gRPC's frame size), and 100-byte ones (more than one writev takes: gathered).
INSTANTIATE_TEST_SUITE_P(PieceSizes, FusePiecesTest, ::testing::Values(size_t{16384}, size_t{100}));

TEST_F(FuseTest, ExitUnmounts) {
  Mount({});
  ASSERT_TRUE(Mounted());
  fs_->exit();
  loop_.join();
  EXPECT_TRUE(run_status_.is_ok()) << run_status_.to_string();
  EXPECT_FALSE(Mounted());
  fs_.reset();
}

TEST(FuseMountTest, RejectsBadOptions) {
  auto engine = kv::open_memory_kv();
  MemoryData data;
  auto service = meta::MetaService::open(*engine, meta::MetaConfig{}, &data);
  ASSERT_TRUE(service.is_ok());
  data.bind(**service);
  EXPECT_FALSE(FuseFs::mount({.mountpoint = "/nonexistent/ff"}, **service, data).is_ok());
  FuseOptions options;
  options.mountpoint = "/tmp";
  options.max_io_bytes = 2u << 20;
  auto fs = FuseFs::mount(options, **service, data);
  ASSERT_FALSE(fs.is_ok());
  EXPECT_NE(fs.status().message().find("1048576"), std::string::npos) << fs.status().to_string();
}

}  // namespace
}  // namespace ff::fs::fuse
