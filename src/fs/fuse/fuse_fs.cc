// FuseFs: the FUSE low-level operations over MetaApi + FileData (include/ff/fs/fuse.h).
//
// Shape (after libfuse's passthrough_hp.cc): each operation is a small function that does its work and
// replies once; errors reply with meta::errno_of(status). libfuse calls the operations from up to
// options.max_threads threads at once.
//
// State kept here (everything else lives in meta):
//   - OpenHandle (fi->fh of files): the FileData handle and whether it wrote since the last flush;
//   - DirHandle (fi->fh of directories): offset -> name table, because meta's readdir cursor is a name;
//   - open_inodes: per inode with open handles, the end of this mount's writes, so getattr does not
//     report a length that meta has not heard of yet (the kernel would shrink its cached size);
//   - groups: the caller's supplementary groups by pid, for 1 s (reading them costs a /proc read);
//   - an invalidation thread: kernel notifications must not be sent from inside a related request
//     (libfuse documents the deadlock), so they are queued (bounded) and sent from there: inode
//     attributes after fsync and after a writing handle's release (meta's length is exact then), and
//     dentries when meta answers ENOENT/EEXIST for a name the kernel believed in. The same thread sets
//     the mount's readahead once INIT is answered;
//   - the virtual directory .ff/usrbio/ (RingRegistry): inode numbers from kVirtualInodeBase up.
// Lookup counts are not tracked: inodes live in meta, nothing per inode is held here, so forget only
// acknowledges. Replies go out after every lock is released: once the kernel has a reply, the caller
// may close the file or directory, and release/releasedir (another thread) frees its handle.
// Lock order: DirHandle::mutex -> open_mutex; groups_mutex, virtual_mutex and invalidation_mutex are
// leaves.
#define FUSE_USE_VERSION 312
#include <fcntl.h>
#include <fuse_lowlevel.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <sys/uio.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstring>
#include <deque>
#include <fstream>
#include <mutex>
#include <optional>
#include <random>
#include <sstream>
#include <thread>
#include <unordered_map>
#include <vector>

#include "ff/common/log.h"
#include "ff/fs/fuse.h"

namespace ff::fs::fuse {

namespace {

using meta::Inode;
using meta::InodeId;

struct OpenHandle {
  uint64_t data_handle = 0;
  InodeId inode = 0;
  std::atomic<bool> wrote_since_flush{false};
  std::atomic<bool> wrote{false};  // written or truncated through this handle (its close may change the length)
};

struct DirHandle {
  std::mutex mutex;
  InodeId parent = meta::kRootInode;  // for ".."
  // names[i] is the entry returned at offset i + 3 (1 and 2 are "." and ".."), so the kernel's offset
  // of the last entry it consumed maps back to meta's name cursor.
  std::vector<std::string> names;
};

struct OpenInode {
  uint32_t handles = 0;
  uint64_t written_end = 0;
};

struct CachedGroups {
  uint32_t uid = 0;
  uint32_t gid = 0;
  int64_t expires_ms = 0;
  std::vector<uint32_t> groups;
};

struct Invalidation {
  InodeId inode = 0;
  InodeId parent = 0;  // nonzero: an entry invalidation of (parent, name)
  std::string name;
  int64_t offset = -1;  // >= 0: also the cached pages of [offset, offset + length) (length 0: to the end)
  int64_t length = 0;
};

// The most pieces one read reply passes to writev (below the kernel's UIO_MAXIOV of 1024, leaving
// room for libfuse's header).
constexpr size_t kMaxReplyPieces = 1000;

int64_t now_ms() {
  return std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::steady_clock::now().time_since_epoch())
      .count();
}

int64_t to_ns(const timespec& t) { return int64_t{t.tv_sec} * 1'000'000'000 + t.tv_nsec; }

timespec to_timespec(int64_t ns) {
  timespec t{};
  t.tv_sec = ns / 1'000'000'000;
  t.tv_nsec = ns % 1'000'000'000;
  if (t.tv_nsec < 0) {
    t.tv_nsec += 1'000'000'000;
    t.tv_sec -= 1;
  }
  return t;
}

std::optional<meta::FileType> file_type_of_mode(mode_t mode) {
  switch (mode & S_IFMT) {
    case S_IFREG:
    case 0: return meta::FileType::kRegular;
    case S_IFDIR: return meta::FileType::kDirectory;
    case S_IFLNK: return meta::FileType::kSymlink;
    case S_IFIFO: return meta::FileType::kFifo;
    case S_IFCHR: return meta::FileType::kCharDevice;
    case S_IFBLK: return meta::FileType::kBlockDevice;
    case S_IFSOCK: return meta::FileType::kSocket;
    default: return std::nullopt;
  }
}

uint32_t open_flags_of(int flags) {
  uint32_t out = 0;
  switch (flags & O_ACCMODE) {
    case O_RDONLY: out = meta::kOpenRead; break;
    case O_WRONLY: out = meta::kOpenWrite; break;
    default: out = meta::kOpenRead | meta::kOpenWrite; break;
  }
  if (flags & O_TRUNC) out |= meta::kOpenTruncate;
  return out;
}

// Sets the read_ahead_kb of the file system mounted at `mountpoint` (its bdi is named by the device
// number, found in /proc/self/mountinfo: a stat of the mount would wait for the not yet running loop).
Status set_read_ahead(const std::string& mountpoint, uint32_t bytes) {
  std::ifstream mountinfo("/proc/self/mountinfo");
  std::string line, device;
  while (std::getline(mountinfo, line)) {
    // "36 35 0:40 / /mnt/ff rw,... - fuse.ff ff rw,...": field 3 is major:minor, field 5 the mountpoint.
    std::istringstream fields(line);
    std::string id, parent, dev, root, point;
    fields >> id >> parent >> dev >> root >> point;
    if (point == mountpoint) device = dev;  // the last match is the newest mount
  }
  if (device.empty()) return not_found("fuse: {} is not in /proc/self/mountinfo", mountpoint);
  std::string path = "/sys/class/bdi/" + device + "/read_ahead_kb";
  std::ofstream out(path);
  out << bytes / 1024 << "\n";
  out.flush();
  if (!out) return errno_error(errno, "write " + path);
  return Status::ok();
}

}  // namespace

struct FuseFs::Impl {
  Impl(FuseOptions options_in, meta::MetaApi& meta_in, FileData& data_in, RingRegistry* rings_in)
      : options(std::move(options_in)), meta(meta_in), data(data_in), rings(rings_in) {}

  FuseOptions options;
  meta::MetaApi& meta;
  FileData& data;
  RingRegistry* rings;  // null: no virtual directory
  fuse_session* session = nullptr;
  bool mounted = false;
  std::mutex run_mutex;  // one run() at a time

  std::atomic<uint64_t> requests{0}, errors{0}, read_bytes{0}, write_bytes{0}, invalidations{0};
  std::atomic<uint64_t> reads{0}, reads_in_flight{0}, most_concurrent_reads{0};

  std::mutex open_mutex;  // guards open_inodes
  std::unordered_map<InodeId, OpenInode> open_inodes;

  std::mutex groups_mutex;  // guards groups
  std::unordered_map<pid_t, CachedGroups> groups;

  // The virtual directory's symlinks: inode numbers handed out per ring name (kept for the mount's
  // life, so a name keeps its number) and the registrant's ids (the sticky directory lets only them
  // unlink it).
  struct VirtualLink {
    InodeId inode = 0;
    uint32_t uid = 0;
    uint32_t gid = 0;
  };
  std::mutex virtual_mutex;  // guards links, link_names, next_link (a leaf)
  std::unordered_map<std::string, VirtualLink> links;
  std::unordered_map<InodeId, std::string> link_names;
  InodeId next_link = kVirtualInodeBase + 16;

  std::mutex invalidation_mutex;  // guards invalidation_queue, invalidation_stop
  std::condition_variable invalidation_wake;
  std::deque<Invalidation> invalidation_queue;
  bool invalidation_stop = false;
  bool read_ahead_done = false;            // read_ahead_kb set (or not wanted)
  std::atomic<int64_t> initialized_ms{0};  // when INIT was answered (0: not yet)
  std::thread invalidation_thread;
  static constexpr size_t kMaxQueuedInvalidations = 4096;

  // Directories' attributes from this mount's own creates. The kernel drops a directory's cached attributes
  // after every create in it and, with default_permissions, asks for them again (GETATTR) before the next
  // lookup there: one meta RPC per create. meta's create_open returns the directory as the create left it
  // (meta::OpenFile::parent); getattr answers with that copy for what is left of attr_timeout_s since meta sent
  // it, the staleness the kernel's attribute cache allows anyway for other clients' changes; an unlink's reply carries
  // the directory too. Every other change this mount makes (DirChange: setattr, mknod, mkdir, rmdir, symlink, link,
  // rename, xattrs) empties the map and bumps the generation; a create or unlink stores its copy only if no such change
  // ran meanwhile, and only over an older ctime (an unlink first drops its directory's copy, and only that one).
  struct FreshDir {
    Inode attrs;
    int64_t until_ms = 0;
  };
  std::mutex fresh_mutex;  // guards fresh_dirs, fresh_generation (a leaf)
  std::unordered_map<InodeId, FreshDir> fresh_dirs;
  uint64_t fresh_generation = 0;
  std::atomic<uint64_t> fresh_hits{0};
  static constexpr size_t kMaxFreshDirs = 4096;

  // ---------------------------------------------------------------- helpers
  uint64_t fresh_begin() {
    std::lock_guard lock(fresh_mutex);
    return fresh_generation;
  }
  void fresh_store(uint64_t generation, const Inode& dir) {
    if (options.attr_timeout_s <= 0) return;
    const int64_t until = now_ms() + static_cast<int64_t>(options.attr_timeout_s * 1000);
    std::lock_guard lock(fresh_mutex);
    if (generation != fresh_generation) return;
    if (fresh_dirs.size() >= kMaxFreshDirs) fresh_dirs.clear();
    FreshDir& slot = fresh_dirs[dir.id];
    if (slot.until_ms != 0 && slot.attrs.ctime_ns > dir.ctime_ns) return;  // a later create's copy is there
    slot = FreshDir{dir, until};
  }
  // The copy of a directory's attributes and how long the kernel may still cache it: the rest of the copy's own
  // attr_timeout_s, so that it is never older than a meta answer the kernel cached itself could be.
  struct FreshAttrs {
    Inode attrs;
    double timeout_s = 0;
  };
  std::optional<FreshAttrs> fresh_get(InodeId id) {
    const int64_t now = now_ms();
    std::lock_guard lock(fresh_mutex);
    auto it = fresh_dirs.find(id);
    if (it == fresh_dirs.end()) return std::nullopt;
    if (it->second.until_ms <= now) {
      fresh_dirs.erase(it);
      return std::nullopt;
    }
    fresh_hits.fetch_add(1, std::memory_order_relaxed);
    return FreshAttrs{it->second.attrs, static_cast<double>(it->second.until_ms - now) / 1000.0};
  }
  // An unlink in `dir` begins: drops dir's copy only (an unlink changes no other directory); returns the
  // generation its copy after the unlink is stored under.
  uint64_t fresh_begin_unlink(InodeId dir) {
    std::lock_guard lock(fresh_mutex);
    fresh_dirs.erase(dir);
    return fresh_generation;
  }
  // Forgets every copy; returns the new generation.
  uint64_t fresh_forget() {
    std::lock_guard lock(fresh_mutex);
    fresh_dirs.clear();
    return ++fresh_generation;
  }
  // A change this mount makes to metadata other than a create: forgets the fresh copies before and after.
  struct DirChange {
    Impl& fs;
    explicit DirChange(Impl& f) : fs(f) { fs.fresh_forget(); }
    ~DirChange() { fs.fresh_forget(); }
    DirChange(const DirChange&) = delete;
    DirChange& operator=(const DirChange&) = delete;
  };

  meta::Caller caller_of(fuse_req_t req) {
    const fuse_ctx* ctx = fuse_req_ctx(req);
    meta::Caller caller{ctx->uid, ctx->gid, {}};
    // The superuser passes every check; skip the /proc read.
    if (ctx->uid == 0) return caller;
    int64_t now = now_ms();
    {
      std::lock_guard lock(groups_mutex);
      auto it = groups.find(ctx->pid);
      if (it != groups.end() && it->second.uid == ctx->uid && it->second.gid == ctx->gid &&
          it->second.expires_ms > now) {
        caller.groups = it->second.groups;
        return caller;
      }
    }
    std::vector<gid_t> list(64);
    int n = fuse_req_getgroups(req, static_cast<int>(list.size()), list.data());
    if (n > static_cast<int>(list.size())) {
      list.resize(static_cast<size_t>(n));
      n = fuse_req_getgroups(req, static_cast<int>(list.size()), list.data());
    }
    if (n > 0) caller.groups.assign(list.begin(), list.begin() + std::min<int>(n, static_cast<int>(list.size())));
    std::lock_guard lock(groups_mutex);
    // Bounded: a cache of short-lived entries, dropped whole when it grows past its bound.
    if (groups.size() >= 4096) groups.clear();
    groups[ctx->pid] = CachedGroups{ctx->uid, ctx->gid, now + 1000, caller.groups};
    return caller;
  }

  void reply_error(fuse_req_t req, const Status& status) {
    int errno_value = meta::errno_of(status);
    if (errno_value == 0) errno_value = EIO;
    errors.fetch_add(1, std::memory_order_relaxed);
    if (errno_value == EIO) FF_LOG_WARN("ff-fuse: {}", status);
    fuse_reply_err(req, errno_value);
  }

  uint64_t visible_length(const Inode& inode) {
    if (inode.type != meta::FileType::kRegular) return inode.length;
    std::lock_guard lock(open_mutex);
    auto it = open_inodes.find(inode.id);
    return it == open_inodes.end() ? inode.length : std::max(inode.length, it->second.written_end);
  }

  void fill_stat(const Inode& inode, struct stat* st) {
    std::memset(st, 0, sizeof(*st));
    st->st_ino = inode.id;
    st->st_mode = meta::file_type_mode_bits(inode.type) | (inode.mode & 07777);
    st->st_nlink = inode.nlink;
    st->st_uid = inode.uid;
    st->st_gid = inode.gid;
    st->st_size = static_cast<off_t>(visible_length(inode));
    st->st_blksize = static_cast<blksize_t>(options.max_io_bytes);
    st->st_blocks = static_cast<blkcnt_t>((st->st_size + 511) / 512);
    st->st_atim = to_timespec(inode.atime_ns);
    st->st_mtim = to_timespec(inode.mtime_ns);
    st->st_ctim = to_timespec(inode.ctime_ns);
    st->st_rdev = inode.rdev;
  }

  fuse_entry_param entry_of(const Inode& inode) {
    fuse_entry_param entry{};
    entry.ino = inode.id;
    entry.generation = 1;
    fill_stat(inode, &entry.attr);
    // The virtual directory's rings come and go (a dead owner's ring is reaped) without a request the
    // kernel would see: its entries are never cached.
    bool cache = inode.id < kVirtualInodeBase;
    entry.attr_timeout = cache ? options.attr_timeout_s : 0;
    entry.entry_timeout = cache ? options.entry_timeout_s : 0;
    return entry;
  }

  void reply_entry(fuse_req_t req, const Result<Inode>& inode) {
    if (!inode.is_ok()) {
      if (meta::errno_of(inode.status()) == ENOENT && options.negative_timeout_s > 0) {
        // A negative entry: the kernel caches "no such name" for negative_timeout_s.
        fuse_entry_param entry{};
        entry.entry_timeout = options.negative_timeout_s;
        fuse_reply_entry(req, &entry);
        return;
      }
      reply_error(req, inode.status());
      return;
    }
    fuse_entry_param entry = entry_of(*inode);
    fuse_reply_entry(req, &entry);
  }

  // timeout_s: how long the kernel may cache the attributes (default: attr_timeout_s).
  void reply_attr(fuse_req_t req, const Result<Inode>& inode, std::optional<double> timeout_s = std::nullopt) {
    if (!inode.is_ok()) {
      reply_error(req, inode.status());
      return;
    }
    struct stat st;
    fill_stat(*inode, &st);
    fuse_reply_attr(req, &st, timeout_s.value_or(options.attr_timeout_s));
  }

  void reply_status(fuse_req_t req, const Status& status) {
    if (!status.is_ok()) {
      reply_error(req, status);
      return;
    }
    fuse_reply_err(req, 0);
  }

  static OpenHandle* file_handle(fuse_file_info* fi) { return reinterpret_cast<OpenHandle*>(fi->fh); }
  static DirHandle* dir_handle(fuse_file_info* fi) { return reinterpret_cast<DirHandle*>(fi->fh); }

  void track_open(InodeId inode) {
    std::lock_guard lock(open_mutex);
    open_inodes[inode].handles += 1;
  }

  void track_close(InodeId inode) {
    std::lock_guard lock(open_mutex);
    auto it = open_inodes.find(inode);
    FF_ASSERT(it != open_inodes.end() && it->second.handles > 0, "inode {} closed more often than opened", inode);
    if (--it->second.handles == 0) open_inodes.erase(it);
  }

  void track_write(InodeId inode, uint64_t end) {
    std::lock_guard lock(open_mutex);
    auto it = open_inodes.find(inode);
    if (it != open_inodes.end()) it->second.written_end = std::max(it->second.written_end, end);
  }

  void track_truncate(InodeId inode, uint64_t length) {
    std::lock_guard lock(open_mutex);
    auto it = open_inodes.find(inode);
    if (it != open_inodes.end()) it->second.written_end = length;
  }

  // Queues a kernel notification: drop the inode's cached attributes (and its page cache when
  // `data`), or the dentry (parent, name).
  void invalidate_inode(InodeId inode) { queue_invalidation(Invalidation{inode, 0, {}}); }
  // The inode's attributes and its cached pages of the range (written by a usrbio ring, not through the
  // kernel).
  void invalidate_data(InodeId inode, uint64_t offset, uint64_t length) {
    queue_invalidation(Invalidation{inode, 0, {}, static_cast<int64_t>(offset), static_cast<int64_t>(length)});
  }
  void invalidate_entry(InodeId parent, std::string name) {
    queue_invalidation(Invalidation{0, parent, std::move(name)});
  }
  void queue_invalidation(Invalidation invalidation) {
    std::lock_guard lock(invalidation_mutex);
    // Dropping one only lets the kernel keep a stale cache entry until its timeout runs out.
    if (invalidation_queue.size() >= kMaxQueuedInvalidations) return;
    invalidation_queue.push_back(std::move(invalidation));
    invalidation_wake.notify_one();
  }
  void invalidation_loop() {
    std::unique_lock lock(invalidation_mutex);
    while (true) {
      invalidation_wake.wait_for(lock,
                                 std::chrono::milliseconds(initialized_ms.load() != 0 && !read_ahead_done ? 20 : 200),
                                 [&] { return invalidation_stop || !invalidation_queue.empty(); });
      if (invalidation_stop) return;
      if (!read_ahead_done && initialized_ms.load() != 0 && now_ms() - initialized_ms.load() >= 50) {
        // After the INIT reply (the kernel lowers read_ahead_kb to the reply's max_readahead then);
        // needs root. Without it sequential buffered reads arrive as 128 KiB requests.
        read_ahead_done = true;
        Status set = set_read_ahead(options.mountpoint, options.read_ahead_bytes);
        if (!set.is_ok()) FF_LOG_INFO("ff-fuse: kernel readahead left at its default: {}", set);
      }
      while (!invalidation_queue.empty()) {
        Invalidation item = std::move(invalidation_queue.front());
        invalidation_queue.pop_front();
        lock.unlock();
        int rc = item.parent != 0
                     ? fuse_lowlevel_notify_inval_entry(session, item.parent, item.name.data(), item.name.size())
                     : fuse_lowlevel_notify_inval_inode(session, item.inode, item.offset, item.length);
        // -ENOENT: the kernel no longer knows the inode or name, which is what we wanted.
        if (rc != 0 && rc != -ENOENT) FF_LOG_DEBUG("ff-fuse: invalidation of inode {} failed: {}", item.inode, -rc);
        invalidations.fetch_add(1, std::memory_order_relaxed);
        lock.lock();
      }
    }
  }

  // ---------------------------------------------------------------- the virtual directory .ff/usrbio
  static bool is_virtual(InodeId inode) { return inode >= kVirtualInodeBase; }

  Inode virtual_dir(InodeId id) {
    Inode inode;
    inode.id = id;
    inode.type = meta::FileType::kDirectory;
    // .ff/usrbio is world-writable and sticky like /tmp: anyone registers a ring, only its owner removes it.
    inode.mode = id == kVirtualRingsDir ? 01777 : 0755;
    inode.nlink = id == kVirtualFfDir ? 3 : 2;
    inode.parent = id == kVirtualFfDir ? meta::kRootInode : kVirtualFfDir;
    return inode;
  }

  VirtualLink link_of(const std::string& name, const meta::Caller* creator) {
    std::lock_guard lock(virtual_mutex);
    auto [it, added] = links.try_emplace(name);
    if (added) {
      it->second.inode = next_link++;
      link_names[it->second.inode] = name;
    }
    if (creator != nullptr) {
      it->second.uid = creator->uid;
      it->second.gid = creator->gid;
    }
    return it->second;
  }

  Result<Inode> virtual_link(const std::string& name) {
    FF_ASSIGN_OR_RETURN(std::string target, rings->target_of(name));
    VirtualLink link = link_of(name, nullptr);
    Inode inode;
    inode.id = link.inode;
    inode.type = meta::FileType::kSymlink;
    inode.mode = 0777;
    inode.uid = link.uid;
    inode.gid = link.gid;
    inode.nlink = 1;
    inode.length = target.size();
    inode.symlink_target = std::move(target);
    return inode;
  }

  Result<std::string> virtual_link_name(InodeId inode) {
    std::lock_guard lock(virtual_mutex);
    auto it = link_names.find(inode);
    if (it == link_names.end()) return meta::meta_error(ENOENT, fmt::format("no virtual inode {}", inode));
    return it->second;
  }

  Result<Inode> virtual_getattr(InodeId inode) {
    if (inode == kVirtualFfDir || inode == kVirtualRingsDir) return virtual_dir(inode);
    FF_ASSIGN_OR_RETURN(std::string name, virtual_link_name(inode));
    return virtual_link(name);
  }

  Result<std::string> virtual_readlink(InodeId inode) {
    FF_ASSIGN_OR_RETURN(Inode link, virtual_getattr(inode));
    if (link.type != meta::FileType::kSymlink) return meta::meta_error(EINVAL, "not a symlink");
    return link.symlink_target;
  }

  // lookup of ".ff" in the root and of names below it; nullopt when not virtual.
  std::optional<Result<Inode>> virtual_lookup(InodeId parent, const char* name) {
    if (rings == nullptr) return std::nullopt;
    if (parent == meta::kRootInode && std::strcmp(name, ".ff") == 0) return Result<Inode>(virtual_dir(kVirtualFfDir));
    if (parent == kVirtualFfDir) {
      if (std::strcmp(name, "usrbio") == 0) return Result<Inode>(virtual_dir(kVirtualRingsDir));
      return Result<Inode>(meta::meta_error(ENOENT, fmt::format("no '{}' in .ff", name)));
    }
    if (parent == kVirtualRingsDir) return virtual_link(name);
    return std::nullopt;
  }

  // The names listed in a virtual directory, in order.
  std::vector<std::pair<std::string, Inode>> virtual_entries(InodeId dir) {
    std::vector<std::pair<std::string, Inode>> out;
    if (dir == kVirtualFfDir) {
      out.emplace_back("usrbio", virtual_dir(kVirtualRingsDir));
    } else {
      for (const std::string& name : rings->names()) {
        Result<Inode> link = virtual_link(name);
        if (link.is_ok()) out.emplace_back(name, std::move(*link));
      }
    }
    return out;
  }

  // A name operation failed because the name is not what the kernel believed (ENOENT: another client
  // removed it; EEXIST: another client created it while the kernel cached "no such name"): drop the
  // kernel's stale dentry so the next access looks it up again.
  template <typename R>
  const R& check_entry(const R& result, InodeId parent, const char* name) {
    if (!result.is_ok()) {
      int errno_value = meta::errno_of(internal::status_of(result));
      if (errno_value == ENOENT || errno_value == EEXIST) invalidate_entry(parent, name);
    }
    return result;
  }

  // ---------------------------------------------------------------- operations
  void lookup(fuse_req_t req, fuse_ino_t parent, const char* name) {
    if (auto virtual_entry = virtual_lookup(parent, name)) return reply_entry(req, *virtual_entry);
    reply_entry(req, meta.lookup(caller_of(req), parent, name));
  }

  // fstat passes the open file (fi) too; meta's attributes are used all the same (the handle's copy is
  // from open time: a chmod since would come back stale), with the length raised to this mount's
  // writes (visible_length).
  void getattr(fuse_req_t req, fuse_ino_t ino, fuse_file_info* /*fi*/) {
    if (is_virtual(ino)) return reply_attr(req, virtual_getattr(ino));
    if (std::optional<FreshAttrs> fresh = fresh_get(ino)) return reply_attr(req, fresh->attrs, fresh->timeout_s);
    reply_attr(req, meta.getattr(ino));
  }

  void setattr(fuse_req_t req, fuse_ino_t ino, struct stat* attr, int to_set, fuse_file_info* /*fi*/) {
    DirChange dir_change(*this);
    if (is_virtual(ino)) return (void)fuse_reply_err(req, EPERM);
    meta::SetAttr change;
    if (to_set & FUSE_SET_ATTR_MODE) change.mode = attr->st_mode & 07777;
    if (to_set & FUSE_SET_ATTR_UID) change.uid = attr->st_uid;
    if (to_set & FUSE_SET_ATTR_GID) change.gid = attr->st_gid;
    if (to_set & FUSE_SET_ATTR_SIZE) change.length = static_cast<uint64_t>(attr->st_size);
    if (to_set & FUSE_SET_ATTR_ATIME_NOW) {
      change.atime_now = true;
    } else if (to_set & FUSE_SET_ATTR_ATIME) {
      change.atime_ns = to_ns(attr->st_atim);
    }
    if (to_set & FUSE_SET_ATTR_MTIME_NOW) {
      change.mtime_now = true;
    } else if (to_set & FUSE_SET_ATTR_MTIME) {
      change.mtime_ns = to_ns(attr->st_mtim);
    }
    Result<Inode> result = data.setattr(caller_of(req), ino, change);
    if (result.is_ok() && change.length) track_truncate(ino, *change.length);
    reply_attr(req, result);
  }

  void readlink(fuse_req_t req, fuse_ino_t ino) {
    Result<std::string> target = is_virtual(ino) ? virtual_readlink(ino) : meta.readlink(ino);
    if (!target.is_ok()) {
      reply_error(req, target.status());
      return;
    }
    fuse_reply_readlink(req, target->c_str());
  }

  void mknod(fuse_req_t req, fuse_ino_t parent, const char* name, mode_t mode, dev_t rdev) {
    DirChange dir_change(*this);
    if (is_virtual(parent) || virtual_lookup(parent, name)) return (void)fuse_reply_err(req, EPERM);
    std::optional<meta::FileType> type = file_type_of_mode(mode);
    if (!type) {
      fuse_reply_err(req, EINVAL);
      return;
    }
    meta::Caller caller = caller_of(req);
    if (*type == meta::FileType::kRegular) {
      reply_entry(req, check_entry(meta.create(caller, parent, name, mode & 07777), parent, name));
    } else if (*type == meta::FileType::kDirectory) {
      reply_entry(req, check_entry(meta.mkdir(caller, parent, name, mode & 07777), parent, name));
    } else {
      reply_entry(req, meta.mknod(caller, parent, name, *type, mode & 07777, static_cast<uint32_t>(rdev)));
    }
  }

  void mkdir(fuse_req_t req, fuse_ino_t parent, const char* name, mode_t mode) {
    DirChange dir_change(*this);
    if (is_virtual(parent) || virtual_lookup(parent, name)) return (void)fuse_reply_err(req, EPERM);
    reply_entry(req, check_entry(meta.mkdir(caller_of(req), parent, name, mode & 07777), parent, name));
  }

  // Like a create, an unlink keeps meta's copy of the directory after it for the kernel's next GETATTR.
  void unlink(fuse_req_t req, fuse_ino_t parent, const char* name) {
    if (parent == kVirtualRingsDir && rings != nullptr) {
      DirChange dir_change(*this);
      return reply_status(req, rings->unregister_ring(name));
    }
    if (is_virtual(parent) || virtual_lookup(parent, name)) return (void)fuse_reply_err(req, EPERM);
    // Only the parent's copy goes: a forget of every copy here made each concurrent unlink in another directory
    // drop this one's copy too, and the kernel's next GETATTR of a directory went to meta (0.92 per unlink with 8
    // threads unlinking in 8 directories).
    const uint64_t generation = fresh_begin_unlink(parent);
    std::optional<Inode> dir_after;
    Status removed = check_entry(meta.unlink(caller_of(req), parent, name, &dir_after), parent, name);
    if (removed.is_ok() && dir_after) fresh_store(generation, *dir_after);
    reply_status(req, removed);
  }

  void rmdir(fuse_req_t req, fuse_ino_t parent, const char* name) {
    DirChange dir_change(*this);
    if (is_virtual(parent) || virtual_lookup(parent, name)) return (void)fuse_reply_err(req, EPERM);
    reply_status(req, check_entry(meta.rmdir(caller_of(req), parent, name), parent, name));
  }

  void symlink(fuse_req_t req, const char* link, fuse_ino_t parent, const char* name) {
    DirChange dir_change(*this);
    if (parent == kVirtualRingsDir && rings != nullptr) {
      // Registers a USRBIO ring: the server runs before the reply, so the client may submit at once.
      meta::Caller caller = caller_of(req);
      Status registered = rings->register_ring(name, link, caller, fuse_req_ctx(req)->pid);
      if (!registered.is_ok()) return reply_error(req, registered);
      link_of(name, &caller);
      return reply_entry(req, virtual_link(name));
    }
    if (is_virtual(parent) || virtual_lookup(parent, name)) return (void)fuse_reply_err(req, EPERM);
    reply_entry(req, check_entry(meta.symlink(caller_of(req), parent, name, link), parent, name));
  }

  void rename(fuse_req_t req, fuse_ino_t parent, const char* name, fuse_ino_t new_parent, const char* new_name,
              unsigned int flags) {
    DirChange dir_change(*this);
    if (is_virtual(parent) || is_virtual(new_parent) || virtual_lookup(parent, name) ||
        virtual_lookup(new_parent, new_name)) {
      fuse_reply_err(req, EPERM);
      return;
    }
    if (flags == RENAME_EXCHANGE) {
      Status exchanged = meta.exchange(caller_of(req), parent, name, new_parent, new_name);
      if (meta::errno_of(exchanged) == ENOENT) {
        invalidate_entry(parent, name);
        invalidate_entry(new_parent, new_name);
      }
      return reply_status(req, exchanged);
    }
    if (flags & ~static_cast<unsigned int>(RENAME_NOREPLACE)) {
      // RENAME_WHITEOUT (leave a whiteout device where the source was) exists for overlayfs's upper
      // layer; this file system is never one (no whiteouts to interpret), so it is EINVAL, as are
      // combinations (RENAME_EXCHANGE with RENAME_NOREPLACE, which the kernel rejects first anyway).
      fuse_reply_err(req, EINVAL);
      return;
    }
    Status renamed = meta.rename(caller_of(req), parent, name, new_parent, new_name, (flags & RENAME_NOREPLACE) != 0);
    if (meta::errno_of(renamed) == ENOENT) invalidate_entry(parent, name);
    if (meta::errno_of(renamed) == EEXIST) invalidate_entry(new_parent, new_name);
    reply_status(req, renamed);
  }

  void link(fuse_req_t req, fuse_ino_t ino, fuse_ino_t new_parent, const char* new_name) {
    DirChange dir_change(*this);
    if (is_virtual(ino) || is_virtual(new_parent) || virtual_lookup(new_parent, new_name)) {
      return (void)fuse_reply_err(req, EPERM);
    }
    reply_entry(req, check_entry(meta.link(caller_of(req), ino, new_parent, new_name), new_parent, new_name));
  }

  void finish_open(fuse_req_t req, InodeId inode, uint64_t data_handle, uint32_t flags, fuse_file_info* fi,
                   const Inode* created) {
    auto handle = std::make_unique<OpenHandle>();
    handle->data_handle = data_handle;
    handle->inode = inode;
    // A truncating open changed the length already: its close invalidates like a write's.
    handle->wrote.store((flags & meta::kOpenTruncate) != 0, std::memory_order_relaxed);
    track_open(inode);
    fi->fh = reinterpret_cast<uint64_t>(handle.get());
    fi->direct_io = options.direct_io ? 1 : 0;
    // The page cache is dropped at every open (close-to-open consistency across clients).
    fi->keep_cache = 0;
    // A handle that cannot write has nothing to report at close(2): no FLUSH round trip for it (the kernel
    // releases POSIX locks itself).
    fi->noflush = (flags & meta::kOpenWrite) == 0 ? 1 : 0;
    if (created != nullptr) {
      fuse_entry_param entry = entry_of(*created);
      if (fuse_reply_create(req, &entry, fi) != 0) abandon_open(handle.release());
    } else {
      if (fuse_reply_open(req, fi) != 0) abandon_open(handle.release());
    }
    (void)handle.release();
  }

  // The kernel did not take the handle (the request was interrupted): no release will come.
  void abandon_open(OpenHandle* handle) {
    if (handle == nullptr) return;
    Status closed = data.close(handle->data_handle);
    if (!closed.is_ok()) FF_LOG_WARN("ff-fuse: closing an abandoned open of inode {}: {}", handle->inode, closed);
    track_close(handle->inode);
    delete handle;
  }

  void open(fuse_req_t req, fuse_ino_t ino, fuse_file_info* fi) {
    if (is_virtual(ino)) return (void)fuse_reply_err(req, EPERM);
    uint32_t flags = open_flags_of(fi->flags);
    Result<uint64_t> handle = data.open(caller_of(req), ino, flags);
    if (!handle.is_ok()) {
      reply_error(req, handle.status());
      return;
    }
    if (flags & meta::kOpenTruncate) track_truncate(ino, 0);
    finish_open(req, ino, *handle, flags, fi, nullptr);
  }

  void create(fuse_req_t req, fuse_ino_t parent, const char* name, mode_t mode, fuse_file_info* fi) {
    if (is_virtual(parent) || virtual_lookup(parent, name)) return (void)fuse_reply_err(req, EPERM);
    uint32_t flags = open_flags_of(fi->flags);
    const uint64_t generation = fresh_begin();
    std::optional<Inode> dir_after;
    Result<uint64_t> handle =
        check_entry(data.create(caller_of(req), parent, name, mode & 07777, flags, &dir_after), parent, name);
    if (!handle.is_ok()) {
      reply_error(req, handle.status());
      return;
    }
    if (dir_after) fresh_store(generation, *dir_after);
    Result<Inode> inode = data.stat(*handle);
    if (!inode.is_ok()) {
      Status closed = data.close(*handle);
      if (!closed.is_ok())
        FF_LOG_WARN("ff-fuse: create '{}' in {}: close after a failed stat: {}", name, parent, closed);
      reply_error(req, inode.status());
      return;
    }
    finish_open(req, inode->id, *handle, flags, fi, &*inode);
  }

  // Counts a READ while it is served (FuseStats::reads, most_concurrent_reads).
  struct ReadInFlight {
    Impl& fs;
    explicit ReadInFlight(Impl& f) : fs(f) {
      fs.reads.fetch_add(1, std::memory_order_relaxed);
      uint64_t now = fs.reads_in_flight.fetch_add(1, std::memory_order_relaxed) + 1;
      uint64_t most = fs.most_concurrent_reads.load(std::memory_order_relaxed);
      while (now > most && !fs.most_concurrent_reads.compare_exchange_weak(most, now, std::memory_order_relaxed)) {
      }
    }
    ~ReadInFlight() { fs.reads_in_flight.fetch_sub(1, std::memory_order_relaxed); }
  };

  void read(fuse_req_t req, fuse_ino_t /*ino*/, size_t size, off_t offset, fuse_file_info* fi) {
    ReadInFlight counted(*this);
    OpenHandle* handle = file_handle(fi);
    if (data.has_read_pieces()) {
      // The bytes stay where the client received them (gRPC's slices): the kernel copies them
      // straight from there into the reader's pages (one writev of the pieces).
      Result<std::vector<SharedBytes>> pieces =
          data.read_pieces(handle->data_handle, static_cast<uint64_t>(offset), size);
      if (!pieces.is_ok()) {
        reply_error(req, pieces.status());
        return;
      }
      if (pieces->size() <= kMaxReplyPieces) {
        thread_local std::vector<iovec> iov;
        iov.clear();
        size_t n = 0;
        for (const SharedBytes& piece : *pieces) {
          iov.push_back(iovec{const_cast<std::byte*>(piece.bytes.data()), piece.bytes.size()});
          n += piece.bytes.size();
        }
        read_bytes.fetch_add(n, std::memory_order_relaxed);
        fuse_reply_iov(req, iov.data(), static_cast<int>(iov.size()));
        return;
      }
      // NOTE: more pieces than one writev takes (UIO_MAXIOV): gather them (not expected for 1 MiB).
      thread_local std::vector<std::byte> gathered;
      gathered.clear();
      for (const SharedBytes& piece : *pieces) gathered.insert(gathered.end(), piece.bytes.begin(), piece.bytes.end());
      read_bytes.fetch_add(gathered.size(), std::memory_order_relaxed);
      fuse_reply_buf(req, reinterpret_cast<const char*>(gathered.data()), gathered.size());
      return;
    }
    // NOTE: one buffer per libfuse thread, grown to the largest request once: no allocation per read.
    thread_local std::vector<std::byte> buffer;
    if (buffer.size() < size) buffer.resize(std::max<size_t>(size, options.max_io_bytes));
    Result<size_t> n = data.read(handle->data_handle, static_cast<uint64_t>(offset), std::span(buffer.data(), size));
    if (!n.is_ok()) {
      reply_error(req, n.status());
      return;
    }
    read_bytes.fetch_add(*n, std::memory_order_relaxed);
    fuse_reply_buf(req, reinterpret_cast<const char*>(buffer.data()), *n);
  }

  void write(fuse_req_t req, fuse_ino_t ino, const char* buf, size_t size, off_t offset, fuse_file_info* fi) {
    OpenHandle* handle = file_handle(fi);
    Result<size_t> n = data.write(handle->data_handle, static_cast<uint64_t>(offset),
                                  std::span(reinterpret_cast<const std::byte*>(buf), size));
    if (!n.is_ok()) {
      reply_error(req, n.status());
      return;
    }
    track_write(ino, static_cast<uint64_t>(offset) + *n);
    handle->wrote_since_flush.store(true, std::memory_order_relaxed);
    handle->wrote.store(true, std::memory_order_relaxed);
    write_bytes.fetch_add(*n, std::memory_order_relaxed);
    fuse_reply_write(req, *n);
  }

  // close(2) of a descriptor: tell meta how far this handle wrote, so other clients see the length at
  // once (release, which makes it exact, arrives asynchronously after close returns).
  void flush(fuse_req_t req, fuse_ino_t ino, fuse_file_info* fi) {
    OpenHandle* handle = file_handle(fi);
    if (!handle->wrote_since_flush.exchange(false)) {
      fuse_reply_err(req, 0);
      return;
    }
    Result<Inode> inode = data.stat(handle->data_handle);
    if (!inode.is_ok()) {
      reply_error(req, inode.status());
      return;
    }
    reply_status(req, meta.report_length(ino, inode->length));
  }

  void release(fuse_req_t req, fuse_ino_t ino, fuse_file_info* fi) {
    OpenHandle* handle = file_handle(fi);
    Status closed = data.close(handle->data_handle);
    const bool wrote = handle->wrote.load(std::memory_order_relaxed);
    track_close(handle->inode);
    delete handle;
    // The length is exact in meta now; a cached size from before (another client's view) is stale. A handle that
    // wrote nothing cannot have changed it (meta's close leaves the length of such a session alone), so the kernel's
    // attributes stay valid: no invalidation, and no GETATTR after a create+close (measured: one meta RPC per
    // file less in a create-then-stat workload).
    if (wrote) invalidate_inode(ino);
    if (!closed.is_ok()) FF_LOG_WARN("ff-fuse: release of inode {}: {}", ino, closed);
    reply_status(req, closed);
  }

  // fallocate: mode 0 extends the file to offset + length (a truncate up through the data path, so
  // open handles see it); FALLOC_FL_KEEP_SIZE has nothing to do: storage allocates chunks on write and
  // reserves nothing ahead. Punching holes, zeroing, collapsing and inserting ranges: EOPNOTSUPP.
  void fallocate(fuse_req_t req, fuse_ino_t ino, int mode, off_t offset, off_t length, fuse_file_info* fi) {
    if (mode & ~FALLOC_FL_KEEP_SIZE) return (void)fuse_reply_err(req, EOPNOTSUPP);
    if (offset < 0 || length <= 0) return (void)fuse_reply_err(req, EINVAL);
    if (mode & FALLOC_FL_KEEP_SIZE) return (void)fuse_reply_err(req, 0);
    OpenHandle* handle = file_handle(fi);
    Result<Inode> current = data.stat(handle->data_handle);
    if (!current.is_ok()) return reply_error(req, current.status());
    const uint64_t end = static_cast<uint64_t>(offset) + static_cast<uint64_t>(length);
    if (end <= visible_length(*current)) return (void)fuse_reply_err(req, 0);
    meta::SetAttr grow;
    grow.length = end;
    Result<Inode> grown = data.setattr(caller_of(req), ino, grow);
    if (grown.is_ok()) track_truncate(ino, end);
    reply_status(req, grown.status());
  }

  // ---------------------------------------------------------------- extended attributes
  // The size rules of getxattr(2)/listxattr(2): size 0 asks for the size; a smaller buffer is ERANGE.
  void reply_xattr_bytes(fuse_req_t req, const std::string& bytes, size_t size) {
    if (size == 0) return (void)fuse_reply_xattr(req, bytes.size());
    if (bytes.size() > size) return (void)fuse_reply_err(req, ERANGE);
    fuse_reply_buf(req, bytes.data(), bytes.size());
  }

  void setxattr(fuse_req_t req, fuse_ino_t ino, const char* name, const char* value, size_t size, int flags) {
    DirChange dir_change(*this);
    if (is_virtual(ino)) return (void)fuse_reply_err(req, EPERM);
    // The kernel drops its cached attributes itself after a set or remove (the ctime changed).
    reply_status(req,
                 meta.setxattr(caller_of(req), ino, name, std::string_view(value, size), static_cast<uint32_t>(flags)));
  }

  void getxattr(fuse_req_t req, fuse_ino_t ino, const char* name, size_t size) {
    if (is_virtual(ino)) return (void)fuse_reply_err(req, ENODATA);
    Result<std::string> value = meta.getxattr(caller_of(req), ino, name);
    if (!value.is_ok()) return reply_error(req, value.status());
    reply_xattr_bytes(req, *value, size);
  }

  void listxattr(fuse_req_t req, fuse_ino_t ino, size_t size) {
    std::string list;  // names, each followed by a NUL
    if (!is_virtual(ino)) {
      Result<std::vector<std::string>> names = meta.listxattr(caller_of(req), ino);
      if (!names.is_ok()) return reply_error(req, names.status());
      for (const std::string& name : *names) {
        list += name;
        list.push_back('\0');
      }
    }
    reply_xattr_bytes(req, list, size);
  }

  void removexattr(fuse_req_t req, fuse_ino_t ino, const char* name) {
    DirChange dir_change(*this);
    if (is_virtual(ino)) return (void)fuse_reply_err(req, EPERM);
    reply_status(req, meta.removexattr(caller_of(req), ino, name));
  }

  void fsync(fuse_req_t req, fuse_ino_t ino, int /*datasync*/, fuse_file_info* fi) {
    OpenHandle* handle = file_handle(fi);
    Result<Inode> inode = data.fsync(handle->data_handle);
    if (inode.is_ok()) invalidate_inode(ino);
    reply_status(req, inode.status());
  }

  void opendir(fuse_req_t req, fuse_ino_t ino, fuse_file_info* fi) {
    Result<Inode> dir = is_virtual(ino) ? virtual_getattr(ino) : meta.getattr(ino);
    if (!dir.is_ok()) {
      reply_error(req, dir.status());
      return;
    }
    if (dir->type != meta::FileType::kDirectory) {
      fuse_reply_err(req, ENOTDIR);
      return;
    }
    auto handle = std::make_unique<DirHandle>();
    handle->parent = dir->parent == 0 ? ino : dir->parent;
    fi->fh = reinterpret_cast<uint64_t>(handle.get());
    // Listings change under other clients; do not let the kernel cache them.
    fi->cache_readdir = 0;
    if (fuse_reply_open(req, fi) == 0) (void)handle.release();
  }

  // A page of about as many entries as fit (a short name costs about 32 bytes, 150 with attributes).
  static size_t limit_for(size_t size, bool plus) { return std::clamp<size_t>(size / (plus ? 150 : 32), 16, 4096); }

  // Adds the entries from `offset` on through `add` (false once the reply buffer is full), recording
  // offset -> name in `dir`.
  template <typename Add>
  Status fill_directory(fuse_ino_t ino, DirHandle* dir, off_t offset, bool plus, size_t limit, Add& add,
                        const meta::Caller& caller) {
    if (is_virtual(ino)) {
      // A few names, listed whole each time: an offset is an index (3 = the first name).
      if (offset < 1 && !add(".", ino, S_IFDIR, nullptr, 1)) return Status::ok();
      if (offset < 2 && !add("..", dir->parent, S_IFDIR, nullptr, 2)) return Status::ok();
      auto entries = virtual_entries(ino);
      for (size_t i = offset <= 2 ? 0 : static_cast<size_t>(offset) - 2; i < entries.size(); ++i) {
        const auto& [name, inode] = entries[i];
        if (!add(name.c_str(), inode.id, meta::file_type_mode_bits(inode.type), plus ? &inode : nullptr,
                 static_cast<off_t>(i + 3))) {
          break;
        }
      }
      return Status::ok();
    }
    std::lock_guard lock(dir->mutex);
    if (offset < 0 || static_cast<size_t>(offset) > dir->names.size() + 2) {
      return meta::meta_error(
          EINVAL, fmt::format("readdir offset {} of a listing with {} entries so far", offset, dir->names.size()));
    }
    if (offset < 1 && !add(".", ino, S_IFDIR, nullptr, 1)) return Status::ok();
    if (offset < 2 && !add("..", dir->parent, S_IFDIR, nullptr, 2)) return Status::ok();
    size_t position = offset <= 2 ? 0 : static_cast<size_t>(offset) - 2;  // index in names of the next entry
    FF_ASSERT_LE(position, dir->names.size());
    std::string after = position == 0 ? std::string() : dir->names[position - 1];
    bool full = false;
    while (!full) {
      Result<meta::ReadDirPage> page = meta.readdir(caller, ino, after, limit);
      // With entries already in the buffer they go out; the error comes back at the next call.
      if (!page.is_ok()) return page.status();
      for (const meta::DirEntry& entry : page->entries) {
        std::optional<Inode> attributes;
        if (plus) {
          Result<Inode> inode = meta.getattr(entry.inode);
          if (!inode.is_ok()) {
            // Removed since the listing was read: leave it out.
            after = entry.name;
            continue;
          }
          attributes = std::move(*inode);
        }
        off_t next = static_cast<off_t>(position + 3);
        if (!add(entry.name.c_str(), entry.inode, meta::file_type_mode_bits(entry.type),
                 attributes ? &*attributes : nullptr, next)) {
          full = true;
          break;
        }
        // Record offset -> name; reuse the table when the kernel re-reads a range it read before.
        if (position < dir->names.size()) {
          if (dir->names[position] != entry.name) {
            dir->names.resize(position);
            dir->names.push_back(entry.name);
          }
        } else {
          dir->names.push_back(entry.name);
        }
        ++position;
        after = entry.name;
      }
      if (!page->more) break;
    }
    return Status::ok();
  }

  void readdir(fuse_req_t req, fuse_ino_t ino, size_t size, off_t offset, fuse_file_info* fi, bool plus) {
    DirHandle* dir = dir_handle(fi);
    meta::Caller caller = caller_of(req);
    thread_local std::vector<char> buffer;
    if (buffer.size() < size) buffer.resize(size);
    size_t used = 0;
    // Adds one entry if it fits; false when the buffer is full.
    auto add = [&](const char* name, InodeId inode, uint32_t type_bits, const Inode* attributes, off_t next) -> bool {
      size_t need;
      if (plus) {
        fuse_entry_param entry{};
        if (attributes != nullptr) {
          entry = entry_of(*attributes);
        } else {
          // "." and "..": no attributes, no lookup count (an ino of 0 tells the kernel so).
          entry.attr.st_ino = inode;
          entry.attr.st_mode = type_bits;
        }
        need = fuse_add_direntry_plus(req, buffer.data() + used, size - used, name, &entry, next);
      } else {
        struct stat st {};
        st.st_ino = inode;
        st.st_mode = type_bits;
        need = fuse_add_direntry(req, buffer.data() + used, size - used, name, &st, next);
      }
      if (need > size - used) return false;
      used += need;
      return true;
    };

    // NOTE: the reply goes out after the lock is released: once the kernel has the reply, the caller
    // may close the directory, and releasedir (another thread) frees `dir` with its mutex.
    Status filled = fill_directory(ino, dir, offset, plus, limit_for(size, plus), add, caller);
    if (!filled.is_ok() && used == 0) {
      reply_error(req, filled);
      return;
    }
    fuse_reply_buf(req, buffer.data(), used);
  }

  void releasedir(fuse_req_t req, fuse_file_info* fi) {
    delete dir_handle(fi);
    fuse_reply_err(req, 0);
  }

  void statfs(fuse_req_t req) {
    Result<meta::StatFs> stats = meta.statfs();
    if (!stats.is_ok()) {
      reply_error(req, stats.status());
      return;
    }
    struct statvfs st {};
    uint64_t block = std::max<uint64_t>(stats->block_size, 4096);
    st.f_bsize = block;
    st.f_frsize = block;
    st.f_blocks = stats->total_bytes / block;
    st.f_bfree = stats->free_bytes / block;
    st.f_bavail = st.f_bfree;
    // Inodes are 64-bit ids handed out without a limit: report plenty free.
    st.f_files = stats->inodes_allocated + (uint64_t{1} << 32);
    st.f_ffree = uint64_t{1} << 32;
    st.f_favail = st.f_ffree;
    st.f_namemax = stats->max_name_bytes;
    fuse_reply_statfs(req, &st);
  }

  // access(2): POSIX permission bits against the caller's ids (meta has no access operation; the
  // operations themselves check again).
  void access(fuse_req_t req, fuse_ino_t ino, int mask) {
    Result<Inode> inode = is_virtual(ino) ? virtual_getattr(ino) : meta.getattr(ino);
    if (!inode.is_ok()) {
      reply_error(req, inode.status());
      return;
    }
    if (mask == F_OK) {
      fuse_reply_err(req, 0);
      return;
    }
    meta::Caller caller = caller_of(req);
    uint32_t mode = inode->mode;
    if (caller.uid == 0) {
      // root may read and write anything; execute needs some x bit (or a directory).
      bool exec_ok = !(mask & X_OK) || inode->type == meta::FileType::kDirectory || (mode & 0111) != 0;
      fuse_reply_err(req, exec_ok ? 0 : EACCES);
      return;
    }
    uint32_t bits = caller.uid == inode->uid      ? (mode >> 6) & 7
                    : caller.in_group(inode->gid) ? (mode >> 3) & 7
                                                  : mode & 7;
    uint32_t want = ((mask & R_OK) ? 4u : 0u) | ((mask & W_OK) ? 2u : 0u) | ((mask & X_OK) ? 1u : 0u);
    fuse_reply_err(req, (bits & want) == want ? 0 : EACCES);
  }

  void init(fuse_conn_info* conn) {
    conn->max_write = options.max_io_bytes;
    conn->max_read = options.max_io_bytes;
    conn->max_readahead = std::min<unsigned>(conn->max_readahead, options.max_io_bytes);
    // O_TRUNC reaches open() (one meta transaction instead of setattr + open).
    if (conn->capable & FUSE_CAP_ATOMIC_O_TRUNC) conn->want |= FUSE_CAP_ATOMIC_O_TRUNC;
    // Page-cache contents are dropped when another client changed the file's size or mtime.
    if (conn->capable & FUSE_CAP_AUTO_INVAL_DATA) conn->want |= FUSE_CAP_AUTO_INVAL_DATA;
    if (conn->capable & FUSE_CAP_PARALLEL_DIROPS) conn->want |= FUSE_CAP_PARALLEL_DIROPS;
    if (!options.readdirplus) {
      conn->want &= ~static_cast<unsigned>(FUSE_CAP_READDIRPLUS | FUSE_CAP_READDIRPLUS_AUTO);
    } else if (conn->capable & FUSE_CAP_READDIRPLUS) {
      conn->want |= FUSE_CAP_READDIRPLUS | (conn->capable & FUSE_CAP_READDIRPLUS_AUTO);
    }
    // Writes must reach storage before write(2) returns: no write-back caching in the kernel.
    conn->want &= ~static_cast<unsigned>(FUSE_CAP_WRITEBACK_CACHE);
    // POSIX and flock locks stay local to this kernel (no cluster-wide locks).
    conn->want &= ~static_cast<unsigned>(FUSE_CAP_POSIX_LOCKS | FUSE_CAP_FLOCK_LOCKS);
    FF_LOG_INFO("ff-fuse: kernel protocol {}.{}, max_write {}, max_readahead {}", conn->proto_major, conn->proto_minor,
                conn->max_write, conn->max_readahead);
    {
      std::lock_guard lock(invalidation_mutex);
      read_ahead_done = options.read_ahead_bytes == 0;
    }
    initialized_ms.store(now_ms());
    invalidation_wake.notify_all();
  }
};

namespace {

FuseFs::Impl* impl_of(fuse_req_t req) { return static_cast<FuseFs::Impl*>(fuse_req_userdata(req)); }

// The C callbacks: count, then forward to Impl.
template <typename F>
void serve(fuse_req_t req, F&& body) {
  FuseFs::Impl* impl = impl_of(req);
  impl->requests.fetch_add(1, std::memory_order_relaxed);
  body(*impl);
}

fuse_lowlevel_ops make_operations() {
  fuse_lowlevel_ops ops{};
  ops.init = [](void* userdata, fuse_conn_info* conn) { static_cast<FuseFs::Impl*>(userdata)->init(conn); };
  ops.lookup = [](fuse_req_t req, fuse_ino_t parent, const char* name) {
    serve(req, [&](FuseFs::Impl& fs) { fs.lookup(req, parent, name); });
  };
  ops.forget = [](fuse_req_t req, fuse_ino_t, uint64_t) { fuse_reply_none(req); };
  ops.forget_multi = [](fuse_req_t req, size_t, fuse_forget_data*) { fuse_reply_none(req); };
  ops.getattr = [](fuse_req_t req, fuse_ino_t ino, fuse_file_info* fi) {
    serve(req, [&](FuseFs::Impl& fs) { fs.getattr(req, ino, fi); });
  };
  ops.setattr = [](fuse_req_t req, fuse_ino_t ino, struct stat* attr, int to_set, fuse_file_info* fi) {
    serve(req, [&](FuseFs::Impl& fs) { fs.setattr(req, ino, attr, to_set, fi); });
  };
  ops.readlink = [](fuse_req_t req, fuse_ino_t ino) { serve(req, [&](FuseFs::Impl& fs) { fs.readlink(req, ino); }); };
  ops.mknod = [](fuse_req_t req, fuse_ino_t parent, const char* name, mode_t mode, dev_t rdev) {
    serve(req, [&](FuseFs::Impl& fs) { fs.mknod(req, parent, name, mode, rdev); });
  };
  ops.mkdir = [](fuse_req_t req, fuse_ino_t parent, const char* name, mode_t mode) {
    serve(req, [&](FuseFs::Impl& fs) { fs.mkdir(req, parent, name, mode); });
  };
  ops.unlink = [](fuse_req_t req, fuse_ino_t parent, const char* name) {
    serve(req, [&](FuseFs::Impl& fs) { fs.unlink(req, parent, name); });
  };
  ops.rmdir = [](fuse_req_t req, fuse_ino_t parent, const char* name) {
    serve(req, [&](FuseFs::Impl& fs) { fs.rmdir(req, parent, name); });
  };
  ops.symlink = [](fuse_req_t req, const char* link, fuse_ino_t parent, const char* name) {
    serve(req, [&](FuseFs::Impl& fs) { fs.symlink(req, link, parent, name); });
  };
  ops.rename = [](fuse_req_t req, fuse_ino_t parent, const char* name, fuse_ino_t new_parent, const char* new_name,
                  unsigned int flags) {
    serve(req, [&](FuseFs::Impl& fs) { fs.rename(req, parent, name, new_parent, new_name, flags); });
  };
  ops.link = [](fuse_req_t req, fuse_ino_t ino, fuse_ino_t new_parent, const char* new_name) {
    serve(req, [&](FuseFs::Impl& fs) { fs.link(req, ino, new_parent, new_name); });
  };
  ops.open = [](fuse_req_t req, fuse_ino_t ino, fuse_file_info* fi) {
    serve(req, [&](FuseFs::Impl& fs) { fs.open(req, ino, fi); });
  };
  ops.create = [](fuse_req_t req, fuse_ino_t parent, const char* name, mode_t mode, fuse_file_info* fi) {
    serve(req, [&](FuseFs::Impl& fs) { fs.create(req, parent, name, mode, fi); });
  };
  ops.read = [](fuse_req_t req, fuse_ino_t ino, size_t size, off_t offset, fuse_file_info* fi) {
    serve(req, [&](FuseFs::Impl& fs) { fs.read(req, ino, size, offset, fi); });
  };
  ops.write = [](fuse_req_t req, fuse_ino_t ino, const char* buf, size_t size, off_t offset, fuse_file_info* fi) {
    serve(req, [&](FuseFs::Impl& fs) { fs.write(req, ino, buf, size, offset, fi); });
  };
  ops.flush = [](fuse_req_t req, fuse_ino_t ino, fuse_file_info* fi) {
    serve(req, [&](FuseFs::Impl& fs) { fs.flush(req, ino, fi); });
  };
  ops.release = [](fuse_req_t req, fuse_ino_t ino, fuse_file_info* fi) {
    serve(req, [&](FuseFs::Impl& fs) { fs.release(req, ino, fi); });
  };
  ops.fsync = [](fuse_req_t req, fuse_ino_t ino, int datasync, fuse_file_info* fi) {
    serve(req, [&](FuseFs::Impl& fs) { fs.fsync(req, ino, datasync, fi); });
  };
  ops.opendir = [](fuse_req_t req, fuse_ino_t ino, fuse_file_info* fi) {
    serve(req, [&](FuseFs::Impl& fs) { fs.opendir(req, ino, fi); });
  };
  ops.readdir = [](fuse_req_t req, fuse_ino_t ino, size_t size, off_t offset, fuse_file_info* fi) {
    serve(req, [&](FuseFs::Impl& fs) { fs.readdir(req, ino, size, offset, fi, false); });
  };
  ops.readdirplus = [](fuse_req_t req, fuse_ino_t ino, size_t size, off_t offset, fuse_file_info* fi) {
    serve(req, [&](FuseFs::Impl& fs) { fs.readdir(req, ino, size, offset, fi, true); });
  };
  ops.releasedir = [](fuse_req_t req, fuse_ino_t, fuse_file_info* fi) {
    serve(req, [&](FuseFs::Impl& fs) { fs.releasedir(req, fi); });
  };
  // Directories hold no data of their own; meta's transactions are durable when they return.
  ops.fsyncdir = [](fuse_req_t req, fuse_ino_t, int, fuse_file_info*) { fuse_reply_err(req, 0); };
  ops.statfs = [](fuse_req_t req, fuse_ino_t) { serve(req, [&](FuseFs::Impl& fs) { fs.statfs(req); }); };
  ops.access = [](fuse_req_t req, fuse_ino_t ino, int mask) {
    serve(req, [&](FuseFs::Impl& fs) { fs.access(req, ino, mask); });
  };
  ops.fallocate = [](fuse_req_t req, fuse_ino_t ino, int mode, off_t offset, off_t length, fuse_file_info* fi) {
    serve(req, [&](FuseFs::Impl& fs) { fs.fallocate(req, ino, mode, offset, length, fi); });
  };
  ops.setxattr = [](fuse_req_t req, fuse_ino_t ino, const char* name, const char* value, size_t size, int flags) {
    serve(req, [&](FuseFs::Impl& fs) { fs.setxattr(req, ino, name, value, size, flags); });
  };
  ops.getxattr = [](fuse_req_t req, fuse_ino_t ino, const char* name, size_t size) {
    serve(req, [&](FuseFs::Impl& fs) { fs.getxattr(req, ino, name, size); });
  };
  ops.listxattr = [](fuse_req_t req, fuse_ino_t ino, size_t size) {
    serve(req, [&](FuseFs::Impl& fs) { fs.listxattr(req, ino, size); });
  };
  ops.removexattr = [](fuse_req_t req, fuse_ino_t ino, const char* name) {
    serve(req, [&](FuseFs::Impl& fs) { fs.removexattr(req, ino, name); });
  };
  return ops;
}

}  // namespace

FuseFs::FuseFs(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}

Result<std::unique_ptr<FuseFs>> FuseFs::mount(FuseOptions options, meta::MetaApi& meta, FileData& data,
                                              RingRegistry* rings) {
  if (options.mountpoint.empty()) return invalid_argument("fuse: no mountpoint given");
  // Opening the directory reaches a FUSE daemon if one is mounted there (a stat may be answered from
  // the kernel's attribute cache): a dead one answers ENOTCONN.
  int probe = ::open(options.mountpoint.c_str(), O_RDONLY | O_DIRECTORY);
  if (probe < 0 && errno == ENOTCONN) {
    return failed_precondition("fuse: a FUSE mount whose daemon is gone is still at '{}': fusermount3 -u -z {}",
                               options.mountpoint, options.mountpoint);
  }
  if (probe >= 0) ::close(probe);
  struct stat st;
  if (::stat(options.mountpoint.c_str(), &st) != 0 || !S_ISDIR(st.st_mode)) {
    return invalid_argument("fuse: mountpoint '{}' is not an existing directory", options.mountpoint);
  }
  if (options.max_io_bytes < 4096 || options.max_io_bytes > (1u << 20)) {
    return invalid_argument("fuse: max_io_bytes = {} is outside 4096 .. 1048576 (the kernel's 256-page limit)",
                            options.max_io_bytes);
  }
  if (options.max_threads == 0) return invalid_argument("fuse: max_threads must be >= 1");
  auto impl = std::make_unique<Impl>(std::move(options), meta, data, rings);
  const FuseOptions& o = impl->options;

  std::string mount_options = fmt::format("fsname=ff,subtype=ff,max_read={}", o.max_io_bytes);
  if (o.kernel_permissions) mount_options += ",default_permissions";
  if (o.allow_other) mount_options += ",allow_other";
  std::vector<std::string> argv_strings = {"ff-fuse", "-o", mount_options};
  if (o.debug) argv_strings.push_back("-d");
  std::vector<char*> argv;
  for (std::string& s : argv_strings) argv.push_back(s.data());
  fuse_args args = FUSE_ARGS_INIT(static_cast<int>(argv.size()), argv.data());

  static const fuse_lowlevel_ops operations = make_operations();
  impl->session = fuse_session_new(&args, &operations, sizeof(operations), impl.get());
  fuse_opt_free_args(&args);
  if (impl->session == nullptr) return internal_error("fuse: fuse_session_new failed (options '{}')", mount_options);
  if (fuse_session_mount(impl->session, impl->options.mountpoint.c_str()) != 0) {
    fuse_session_destroy(impl->session);
    impl->session = nullptr;
    return unavailable("fuse: mounting at '{}' failed (is /dev/fuse usable, the directory empty and not mounted?)",
                       impl->options.mountpoint);
  }
  impl->mounted = true;
  Impl* raw = impl.get();
  impl->invalidation_thread = std::thread([raw] { raw->invalidation_loop(); });
  if (raw->rings != nullptr) {
    raw->rings->set_invalidate_data(
        [raw](InodeId inode, uint64_t offset, uint64_t length) { raw->invalidate_data(inode, offset, length); });
  }
  FF_LOG_INFO("ff-fuse: mounted at {} ({})", impl->options.mountpoint, mount_options);
  return std::unique_ptr<FuseFs>(new FuseFs(std::move(impl)));
}

FuseFs::~FuseFs() {
  if (impl_->rings != nullptr) impl_->rings->set_invalidate_data({});
  {
    std::lock_guard lock(impl_->invalidation_mutex);
    impl_->invalidation_stop = true;
    impl_->invalidation_wake.notify_all();
  }
  if (impl_->invalidation_thread.joinable()) impl_->invalidation_thread.join();
  if (impl_->session != nullptr) {
    if (impl_->mounted) fuse_session_unmount(impl_->session);
    fuse_session_destroy(impl_->session);
  }
}

Status FuseFs::run() {
  std::lock_guard run_lock(impl_->run_mutex);
  if (!impl_->mounted) return failed_precondition("fuse: run() after the file system was unmounted");
  fuse_session* session = impl_->session;
  // For library users that leave these signals unblocked: a signal ends the loop (ff-fuse blocks
  // them and calls exit() from its signal thread instead).
  bool handlers = fuse_set_signal_handlers(session) == 0;
  fuse_loop_config* config = fuse_loop_cfg_create();
  fuse_loop_cfg_set_max_threads(config, impl_->options.max_threads);
  fuse_loop_cfg_set_idle_threads(config, std::max<unsigned>(1, impl_->options.max_threads / 2));
  int rc = fuse_session_loop_mt(session, config);
  fuse_loop_cfg_destroy(config);
  if (handlers) fuse_remove_signal_handlers(session);
  fuse_session_unmount(session);
  impl_->mounted = false;
  uint64_t reads = impl_->reads.load();
  FF_LOG_INFO("ff-fuse: unmounted {} after {} requests ({} reads of {:.0f} KiB on average, at most {} at once)",
              impl_->options.mountpoint, impl_->requests.load(), reads,
              reads ? impl_->read_bytes.load() / 1024.0 / reads : 0.0, impl_->most_concurrent_reads.load());
  // rc: 0 when unmounted or exited normally; a signal number or -errno otherwise.
  if (rc < 0) return io_error("fuse: session loop at '{}' failed: {}", impl_->options.mountpoint, std::strerror(-rc));
  return Status::ok();
}

void FuseFs::exit() {
  if (impl_->session == nullptr) return;
  fuse_session_exit(impl_->session);
  // The loop threads sleep in read(/dev/fuse) and look at the exit flag only after a request: send one
  // the kernel cannot answer from its caches (a lookup of a fresh name), from a thread of its own so a
  // hung mount cannot block the caller.
  std::string probe = fmt::format("{}/.ff-fuse-exit-{}", impl_->options.mountpoint, std::random_device{}());
  std::thread([probe] {
    struct stat st;
    (void)::stat(probe.c_str(), &st);
  }).detach();
}

FuseStats FuseFs::stats() const {
  FuseStats stats;
  stats.requests = impl_->requests.load();
  stats.errors = impl_->errors.load();
  stats.read_bytes = impl_->read_bytes.load();
  stats.reads = impl_->reads.load();
  stats.most_concurrent_reads = impl_->most_concurrent_reads.load();
  stats.write_bytes = impl_->write_bytes.load();
  stats.invalidations = impl_->invalidations.load();
  stats.fresh_dir_hits = impl_->fresh_hits.load();
  return stats;
}

}  // namespace ff::fs::fuse
