// The metadata service: each public operation is one KV transaction (run_transaction retries it on
// conflict), built from the helpers below. Storage I/O (exact lengths, truncation, chunk removal)
// happens outside transactions. See docs/fs-meta.md for every operation's reads and writes.
#include "ff/fs/meta.h"

#include <sys/stat.h>

#include <atomic>
#include <cerrno>
#include <chrono>
#include <deque>
#include <functional>
#include <map>
#include <mutex>
#include <random>

#include "codec.h"
#include "ff/common/assert.h"

namespace ff::fs::meta {
namespace {

using kv::Transaction;

constexpr uint32_t kRead = 4, kWrite = 2, kExec = 1;
constexpr size_t kMaxReadDirLimit = 4096;
constexpr int kMaxDepth = 4096;  // bound of the ancestor walk of rename's cycle check

// Wall-clock milliseconds, the default lease clock: leases are compared across processes and hosts.
class WallClock final : public Clock {
 public:
  int64_t now_ns() const override {
    return std::chrono::duration_cast<std::chrono::nanoseconds>(std::chrono::system_clock::now().time_since_epoch())
        .count();
  }
  void sleep_for_ns(int64_t duration_ns) override { system_clock().sleep_for_ns(duration_ns); }
};

int64_t wall_now_ns() {
  return std::chrono::duration_cast<std::chrono::nanoseconds>(std::chrono::system_clock::now().time_since_epoch())
      .count();
}

struct ErrnoInfo {
  int value;
  const char* name;
  StatusCode code;
};
constexpr ErrnoInfo kErrnos[] = {
    {EPERM, "EPERM", StatusCode::kPermissionDenied},
    {ENOENT, "ENOENT", StatusCode::kNotFound},
    {EIO, "EIO", StatusCode::kIoError},
    {EBADF, "EBADF", StatusCode::kInvalidArgument},
    {EAGAIN, "EAGAIN", StatusCode::kAborted},
    {EACCES, "EACCES", StatusCode::kPermissionDenied},
    {EEXIST, "EEXIST", StatusCode::kAlreadyExists},
    {EXDEV, "EXDEV", StatusCode::kFailedPrecondition},
    {ENOTDIR, "ENOTDIR", StatusCode::kFailedPrecondition},
    {EISDIR, "EISDIR", StatusCode::kFailedPrecondition},
    {EINVAL, "EINVAL", StatusCode::kInvalidArgument},
    {ENOSPC, "ENOSPC", StatusCode::kResourceExhausted},
    {EMLINK, "EMLINK", StatusCode::kResourceExhausted},
    {ENAMETOOLONG, "ENAMETOOLONG", StatusCode::kInvalidArgument},
    {ENOTEMPTY, "ENOTEMPTY", StatusCode::kFailedPrecondition},
    {ELOOP, "ELOOP", StatusCode::kInvalidArgument},
    {ETIMEDOUT, "ETIMEDOUT", StatusCode::kDeadlineExceeded},
    {ENODATA, "ENODATA", StatusCode::kNotFound},
    {ERANGE, "ERANGE", StatusCode::kOutOfRange},
    {E2BIG, "E2BIG", StatusCode::kInvalidArgument},
    {EOPNOTSUPP, "EOPNOTSUPP", StatusCode::kUnimplemented},
};

Status error(int errno_value, std::string message) { return meta_error(errno_value, std::move(message)); }

Status validate_name(std::string_view name, bool allow_dots = false) {
  if (name.empty()) return error(EINVAL, "empty file name");
  if (name.size() > kMaxNameBytes) {
    return error(ENAMETOOLONG, fmt::format("file name of {} bytes is longer than {}", name.size(), kMaxNameBytes));
  }
  if (name.find('/') != std::string_view::npos) {
    return error(EINVAL, fmt::format("file name '{}' contains '/'", name));
  }
  if (name.find('\0') != std::string_view::npos) return error(EINVAL, "file name contains a NUL byte");
  if (!allow_dots && (name == "." || name == "..")) {
    return error(EINVAL, fmt::format("'{}' cannot be created, removed or renamed", name));
  }
  return Status::ok();
}

std::string mask_name(uint32_t mask) {
  std::string out;
  if (mask & kRead) out += "read";
  if (mask & kWrite) out += out.empty() ? "write" : "+write";
  if (mask & kExec) out += out.empty() ? "search" : "+search";
  return out;
}

// POSIX permission bits: owner class, else group class (primary or supplementary), else others. The
// superuser passes read/write always, and execute when anyone may execute (or for directories).
Status check_access(const Caller& caller, const Inode& inode, uint32_t mask) {
  if (caller.uid == 0) {
    if ((mask & kExec) && inode.type != FileType::kDirectory && (inode.mode & 0111) == 0) {
      return error(EACCES, fmt::format("inode {} has no execute bit for anyone", inode.id));
    }
    return Status::ok();
  }
  uint32_t bits;
  if (caller.uid == inode.uid) {
    bits = (inode.mode >> 6) & 7;
  } else if (caller.in_group(inode.gid)) {
    bits = (inode.mode >> 3) & 7;
  } else {
    bits = inode.mode & 7;
  }
  if ((bits & mask) != mask) {
    return error(
        EACCES, fmt::format("uid {} (gid {}) lacks {} permission on inode {} (mode {:04o}, uid {}, gid {})", caller.uid,
                            caller.gid, mask_name(mask), inode.id, inode.mode, inode.uid, inode.gid));
  }
  return Status::ok();
}

// The sticky bit of a directory: only the owner of the entry or of the directory (or root) may remove
// or rename entries in it.
Status check_sticky(const Caller& caller, const Inode& dir, const Inode& victim) {
  if ((dir.mode & S_ISVTX) == 0 || caller.uid == 0 || caller.uid == dir.uid || caller.uid == victim.uid) {
    return Status::ok();
  }
  return error(
      EPERM, fmt::format("directory {} is sticky: uid {} owns neither it nor inode {}", dir.id, caller.uid, victim.id));
}

Result<Inode> load_inode(Transaction& txn, InodeId id) {
  FF_ASSIGN_OR_RETURN(auto bytes, txn.get(codec::inode_key(id)));
  if (!bytes) return error(ENOENT, fmt::format("inode {} does not exist (deleted or never created)", id));
  FF_ASSIGN_OR_RETURN(Inode inode, codec::decode_inode(*bytes));
  if (inode.id != id) return data_loss("inode record under key {} names inode {}", id, inode.id);
  return inode;
}

Result<Inode> load_dir(Transaction& txn, InodeId id) {
  FF_ASSIGN_OR_RETURN(Inode dir, load_inode(txn, id));
  if (dir.type != FileType::kDirectory) {
    return error(ENOTDIR, fmt::format("inode {} is a {}, not a directory", id, file_type_name(dir.type)));
  }
  return dir;
}

Result<std::optional<codec::Dentry>> find_entry(Transaction& txn, InodeId parent, std::string_view name) {
  FF_ASSIGN_OR_RETURN(auto bytes, txn.get(codec::dentry_key(parent, name)));
  if (!bytes) return std::optional<codec::Dentry>();
  FF_ASSIGN_OR_RETURN(codec::Dentry dentry, codec::decode_dentry(*bytes));
  return std::optional<codec::Dentry>(dentry);
}

void store_inode(Transaction& txn, const Inode& inode) {
  txn.set(codec::inode_key(inode.id), codec::encode_inode(inode));
}

// A directory's entries changed (a non-directory created, linked or removed in it): its mtime and ctime
// become `now`. NOTE: written blindly into the directory's own "T" key instead of its inode, so that
// concurrent creates in one directory do not all conflict on (and serialize behind) the directory's
// inode; replies fold it in (fold_dir_change). mkdir, rmdir, rename and exchange write the directory's
// inode anyway and set its times there.
void fold_change_time(Inode& dir, int64_t changed) {
  dir.mtime_ns = std::max(dir.mtime_ns, changed);
  dir.ctime_ns = std::max(dir.ctime_ns, changed);
}

// Writes the "T" record and folds `now` into `dir` (the caller's copy, not stored): the directory as a reply of
// this transaction shows it, without reading the record back.
void note_dir_change(Transaction& txn, Inode& dir, int64_t now) {
  txn.set(codec::dir_change_key(dir.id), codec::encode_u64(static_cast<uint64_t>(now)));
  fold_change_time(dir, now);
}

// The times of a directory as replies show them: the later of its inode's and its "T" record's.
Status fold_dir_change(Transaction& txn, Inode& inode) {
  if (inode.type != FileType::kDirectory) return Status::ok();
  FF_ASSIGN_OR_RETURN(auto bytes, txn.get(codec::dir_change_key(inode.id)));
  if (!bytes) return Status::ok();
  FF_ASSIGN_OR_RETURN(uint64_t changed, codec::decode_u64(*bytes, "directory change time"));
  fold_change_time(inode, static_cast<int64_t>(changed));
  return Status::ok();
}

// A deleted inode's extended attributes and directory change record go with it. NOTE: the attributes
// are read and cleared one by one, not with one clear_range: on RocksDB every clear_range is a range
// tombstone, and one per deleted file would slow every later read until compaction; most files have no
// attribute, so this is one empty range read. Many attributes (more than fit an etcd transaction's
// operation budget one by one) are cleared with a range.
Status clear_inode_extras(Transaction& txn, const Inode& inode) {
  constexpr size_t kMaxSingleClears = 16;
  std::string prefix = codec::xattr_prefix(inode.id);
  FF_ASSIGN_OR_RETURN(auto rows, txn.range(prefix, kv::prefix_end(prefix), kMaxSingleClears + 1));
  if (rows.size() > kMaxSingleClears) {
    txn.clear_range(prefix, kv::prefix_end(prefix));
  } else {
    for (const auto& row : rows) txn.clear(row.key);
  }
  if (inode.type == FileType::kDirectory) txn.clear(codec::dir_change_key(inode.id));
  return Status::ok();
}

Result<bool> has_sessions(Transaction& txn, InodeId id) {
  std::string prefix = codec::session_prefix(id);
  FF_ASSIGN_OR_RETURN(auto rows, txn.range(prefix, kv::prefix_end(prefix), 1));
  return !rows.empty();
}

// After a link count or session change: an inode with no name and no open session is deleted; a
// regular file's record moves to the garbage list so its chunks get removed.
Status finalize_inode(Transaction& txn, Inode& inode) {
  if (inode.nlink > 0) {
    store_inode(txn, inode);
    return Status::ok();
  }
  FF_ASSIGN_OR_RETURN(bool open, has_sessions(txn, inode.id));
  if (open) {
    store_inode(txn, inode);  // unlinked but open: readable until the last close
    return Status::ok();
  }
  txn.clear(codec::inode_key(inode.id));
  FF_RETURN_IF_ERROR(clear_inode_extras(txn, inode));
  if (inode.type == FileType::kRegular) txn.set(codec::garbage_key(inode.id), codec::encode_inode(inode));
  return Status::ok();
}

}  // namespace

// ---------------------------------------------------------------------------------------------- misc

std::string_view file_type_name(FileType type) {
  switch (type) {
    case FileType::kRegular: return "regular file";
    case FileType::kDirectory: return "directory";
    case FileType::kSymlink: return "symlink";
    case FileType::kFifo: return "fifo";
    case FileType::kCharDevice: return "character device";
    case FileType::kBlockDevice: return "block device";
    case FileType::kSocket: return "socket";
  }
  return "unknown";
}

uint32_t file_type_mode_bits(FileType type) {
  switch (type) {
    case FileType::kRegular: return S_IFREG;
    case FileType::kDirectory: return S_IFDIR;
    case FileType::kSymlink: return S_IFLNK;
    case FileType::kFifo: return S_IFIFO;
    case FileType::kCharDevice: return S_IFCHR;
    case FileType::kBlockDevice: return S_IFBLK;
    case FileType::kSocket: return S_IFSOCK;
  }
  return 0;
}

bool Caller::in_group(uint32_t group) const {
  if (group == gid) return true;
  for (uint32_t g : groups) {
    if (g == group) return true;
  }
  return false;
}

Status meta_error(int errno_value, std::string message) {
  StatusCode code = StatusCode::kInternal;
  for (const auto& info : kErrnos) {
    if (info.value == errno_value) code = info.code;
  }
  return Status(code, fmt::format("[{}] {}", errno_name(errno_value), message));
}

std::string_view errno_name(int errno_value) {
  for (const auto& info : kErrnos) {
    if (info.value == errno_value) return info.name;
  }
  return "E?";
}

int errno_of(const Status& status) {
  if (status.is_ok()) return 0;
  const std::string& message = status.message();
  if (message.starts_with("[E")) {
    size_t close = message.find(']');
    std::string_view tag = std::string_view(message).substr(1, close == std::string::npos ? 0 : close - 1);
    for (const auto& info : kErrnos) {
      if (tag == info.name) return info.value;
    }
  }
  switch (status.code()) {
    case StatusCode::kAborted: return EAGAIN;
    case StatusCode::kDeadlineExceeded: return ETIMEDOUT;
    case StatusCode::kNotFound: return ENOENT;
    case StatusCode::kPermissionDenied: return EACCES;
    case StatusCode::kInvalidArgument: return EINVAL;
    case StatusCode::kResourceExhausted: return ENOSPC;
    default: return EIO;
  }
}

// ------------------------------------------------------------------------------------------- service

struct MetaService::Impl {
  Impl(kv::KvEngine& engine_in, FileStorage* storage_in, Clock* clock_in)
      : engine(engine_in), storage(storage_in), clock(clock_in != nullptr ? clock_in : &wall) {}

  kv::KvEngine& engine;
  FileStorage* storage;
  WallClock wall;
  Clock* clock;
  std::mutex id_mutex;  // guards next_id/end_id (held across the allocator transaction)
  uint64_t next_id = 0;
  uint64_t end_id = 0;
  std::atomic<uint64_t> round_robin{0};
  std::atomic<uint64_t> session_counter{0};
  std::mutex space_mutex;                     // guards the two below
  uint64_t space_capacity = 0, space_free = 0;  // set_storage_space; 0: not known
  uint64_t session_base = 0;  // random per instance, so instances sharing a store never collide
  std::mutex seed_mutex;
  std::mt19937_64 seeds;
};

MetaService::MetaService(MetaConfig config, std::unique_ptr<Impl> impl)
    : config_(std::move(config)), impl_(std::move(impl)) {}
MetaService::~MetaService() = default;

Result<std::unique_ptr<MetaService>> MetaService::open(kv::KvEngine& engine, MetaConfig config, FileStorage* storage,
                                                       Clock* clock) {
  if (config.chains.empty()) return invalid_argument("meta config has no chains to stripe files over");
  if (config.stripe == 0 || config.stripe > config.chains.size()) {
    return invalid_argument("meta config stripe={} must be in 1..{} (the number of chains)", config.stripe,
                            config.chains.size());
  }
  if (config.chunk_size < 4096 || config.chunk_size > (64u << 20) || (config.chunk_size & (config.chunk_size - 1))) {
    return invalid_argument("meta config chunk_size={} must be a power of two in 4 KiB..64 MiB", config.chunk_size);
  }
  if (config.inode_batch == 0) return invalid_argument("meta config inode_batch must be positive");
  if (config.client_lease_ms <= 0)
    return invalid_argument("meta config client_lease_ms={} must be positive", config.client_lease_ms);
  auto impl = std::make_unique<Impl>(engine, storage, clock);
  std::random_device random;
  impl->session_base = (static_cast<uint64_t>(random()) << 32 | random()) & ~0xffffffffull;
  impl->seeds.seed(static_cast<uint64_t>(random()) << 32 | random());
  std::unique_ptr<MetaService> service(new MetaService(std::move(config), std::move(impl)));
  // Format: the root directory, once per store.
  int64_t now = wall_now_ns();
  FF_RETURN_IF_ERROR(kv::run_transaction(
      engine,
      [&](Transaction& txn) -> Status {
        FF_ASSIGN_OR_RETURN(auto root, txn.get(codec::inode_key(kRootInode)));
        if (root) return Status::ok();
        Inode inode;
        inode.id = kRootInode;
        inode.type = FileType::kDirectory;
        inode.mode = 0755;
        inode.nlink = 2;
        inode.parent = kRootInode;
        inode.atime_ns = inode.mtime_ns = inode.ctime_ns = now;
        store_inode(txn, inode);
        return Status::ok();
      },
      service->config_.retry));
  return service;
}

namespace {
// Runs one operation's transaction with the service's retry options.
template <typename Body>
Status run(kv::KvEngine& engine, const kv::RetryOptions& retry, Body&& body) {
  return kv::run_transaction(engine, std::function<Status(Transaction&)>(std::forward<Body>(body)), retry);
}
}  // namespace

Result<Inode> MetaService::lookup(const Caller& caller, InodeId parent, std::string_view name) {
  FF_RETURN_IF_ERROR(validate_name(name, /*allow_dots=*/true));
  Inode found;
  FF_RETURN_IF_ERROR(run(impl_->engine, config_.retry, [&](Transaction& txn) -> Status {
    FF_ASSIGN_OR_RETURN(Inode dir, load_dir(txn, parent));
    FF_RETURN_IF_ERROR(check_access(caller, dir, kExec));
    if (name == ".") {
      found = dir;
      return fold_dir_change(txn, found);
    }
    if (name == "..") {
      FF_ASSIGN_OR_RETURN(found, load_inode(txn, dir.parent));
      return fold_dir_change(txn, found);
    }
    FF_ASSIGN_OR_RETURN(auto entry, find_entry(txn, parent, name));
    if (!entry) return error(ENOENT, fmt::format("no entry '{}' in directory {}", name, parent));
    FF_ASSIGN_OR_RETURN(found, load_inode(txn, entry->inode));
    return fold_dir_change(txn, found);
  }));
  return found;
}

Result<Inode> MetaService::getattr(InodeId id) {
  Inode found;
  FF_RETURN_IF_ERROR(run(impl_->engine, config_.retry, [&](Transaction& txn) -> Status {
    FF_ASSIGN_OR_RETURN(found, load_inode(txn, id));
    return fold_dir_change(txn, found);
  }));
  return found;
}

Result<Inode> MetaService::resolve(const Caller& caller, std::string_view path, bool follow_last) {
  if (path.empty() || path.front() != '/') {
    return error(EINVAL, fmt::format("path '{}' is not absolute", path));
  }
  Inode found;
  FF_RETURN_IF_ERROR(run(impl_->engine, config_.retry, [&](Transaction& txn) -> Status {
    std::deque<std::string> components;
    auto push_path = [&](std::string_view text, bool front) {
      std::vector<std::string> parts;
      size_t start = 0;
      while (start <= text.size()) {
        size_t slash = text.find('/', start);
        if (slash == std::string_view::npos) slash = text.size();
        if (slash > start) parts.emplace_back(text.substr(start, slash - start));
        start = slash + 1;
      }
      if (front) {
        components.insert(components.begin(), parts.begin(), parts.end());
      } else {
        components.insert(components.end(), parts.begin(), parts.end());
      }
    };
    push_path(path, false);
    FF_ASSIGN_OR_RETURN(Inode current, load_inode(txn, kRootInode));
    int follows = 0;
    while (!components.empty()) {
      std::string name = std::move(components.front());
      components.pop_front();
      if (current.type != FileType::kDirectory) {
        return error(ENOTDIR, fmt::format("path '{}': inode {} before '{}' is a {}, not a directory", path, current.id,
                                          name, file_type_name(current.type)));
      }
      FF_RETURN_IF_ERROR(check_access(caller, current, kExec));
      FF_RETURN_IF_ERROR(validate_name(name, true));
      if (name == ".") continue;
      if (name == "..") {
        FF_ASSIGN_OR_RETURN(current, load_inode(txn, current.parent));
        continue;
      }
      FF_ASSIGN_OR_RETURN(auto entry, find_entry(txn, current.id, name));
      if (!entry) return error(ENOENT, fmt::format("path '{}': no entry '{}' in directory {}", path, name, current.id));
      FF_ASSIGN_OR_RETURN(Inode next, load_inode(txn, entry->inode));
      if (next.type == FileType::kSymlink && (!components.empty() || follow_last)) {
        if (++follows > kMaxSymlinkFollows) {
          return error(ELOOP, fmt::format("path '{}': more than {} symlinks", path, kMaxSymlinkFollows));
        }
        push_path(next.symlink_target, true);
        if (!next.symlink_target.empty() && next.symlink_target.front() == '/') {
          FF_ASSIGN_OR_RETURN(current, load_inode(txn, kRootInode));
        }
        continue;  // a relative target resolves in `current`, the symlink's directory
      }
      current = std::move(next);
    }
    if (path.size() > 1 && path.back() == '/' && current.type != FileType::kDirectory) {
      return error(ENOTDIR, fmt::format("path '{}' ends with '/' but names a {}", path, file_type_name(current.type)));
    }
    found = std::move(current);
    return fold_dir_change(txn, found);
  }));
  return found;
}

namespace {
// in_txn (optional) adds its writes to the same transaction (create_open's session); parent_after (optional)
// receives the directory as the transaction leaves it, with the times replies show (note_dir_change).
Status make_node(kv::KvEngine& engine, const kv::RetryOptions& retry, const Caller& caller, InodeId parent,
                 std::string_view name, Inode& node, const std::function<void(Transaction&)>& in_txn = {},
                 Inode* parent_after = nullptr) {
  return run(engine, retry, [&](Transaction& txn) -> Status {
    FF_ASSIGN_OR_RETURN(Inode dir, load_dir(txn, parent));
    FF_RETURN_IF_ERROR(check_access(caller, dir, kWrite | kExec));
    FF_ASSIGN_OR_RETURN(auto existing, find_entry(txn, parent, name));
    if (existing) return error(EEXIST, fmt::format("'{}' already exists in directory {}", name, parent));
    node.uid = caller.uid;
    node.gid = caller.gid;
    if (dir.mode & S_ISGID) {
      // BSD group semantics under a setgid directory; subdirectories inherit the bit.
      node.gid = dir.gid;
      if (node.type == FileType::kDirectory) node.mode |= S_ISGID;
    }
    if (node.type == FileType::kDirectory) {
      node.parent = parent;
      dir.nlink += 1;
      dir.mtime_ns = dir.ctime_ns = node.ctime_ns;
      store_inode(txn, dir);
    } else {
      note_dir_change(txn, dir, node.ctime_ns);
    }
    store_inode(txn, node);
    txn.set(codec::dentry_key(parent, name), codec::encode_dentry({node.id, node.type}));
    if (in_txn) in_txn(txn);
    if (parent_after != nullptr) *parent_after = dir;
    return Status::ok();
  });
}
}  // namespace

// Reserves inode ids in batches so that concurrent creates do not all write one counter key.
static Result<InodeId> allocate_inode_id(kv::KvEngine& engine, const MetaConfig& config, std::mutex& mutex,
                                         uint64_t& next_id, uint64_t& end_id) {
  std::lock_guard lock(mutex);
  if (next_id == end_id) {
    uint64_t first = 0;
    FF_RETURN_IF_ERROR(run(engine, config.retry, [&](Transaction& txn) -> Status {
      FF_ASSIGN_OR_RETURN(auto bytes, txn.get(codec::kAllocatorKey));
      first = kRootInode + 1;
      if (bytes) {
        FF_ASSIGN_OR_RETURN(first, codec::decode_u64(*bytes, "inode allocator"));
      }
      txn.set(codec::kAllocatorKey, codec::encode_u64(first + config.inode_batch));
      return Status::ok();
    }));
    next_id = first;
    end_id = first + config.inode_batch;
  }
  return next_id++;
}

Result<Inode> MetaService::create(const Caller& caller, InodeId parent, std::string_view name, uint32_t mode) {
  FF_RETURN_IF_ERROR(validate_name(name));
  FF_ASSIGN_OR_RETURN(Inode node, new_file_node(mode));
  FF_RETURN_IF_ERROR(make_node(impl_->engine, config_.retry, caller, parent, name, node));
  return node;
}

Result<OpenFile> MetaService::create_open(const Caller& caller, InodeId parent, std::string_view name, uint32_t mode,
                                          uint32_t flags, uint64_t client) {
  FF_RETURN_IF_ERROR(validate_name(name));
  FF_RETURN_IF_ERROR(check_open_flags(flags, client));
  FF_ASSIGN_OR_RETURN(Inode node, new_file_node(mode));
  if ((flags & kOpenTruncate) && impl_->storage != nullptr) {
    // Within one namespace a new inode id has no data; O_TRUNC still clears whatever storage holds
    // under it (another namespace on the same storage cluster), as create + open(O_TRUNC) did.
    FF_RETURN_IF_ERROR(impl_->storage->truncate(node, 0));
  }
  const bool write = (flags & kOpenWrite) != 0;
  const uint64_t session = new_session_id();
  Inode dir;
  FF_RETURN_IF_ERROR(make_node(
      impl_->engine, config_.retry, caller, parent, name, node,
      [&](Transaction& txn) { record_session(txn, node.id, session, client, write); }, &dir));
  return OpenFile{node, session, dir};
}

Result<Inode> MetaService::new_node(FileType type, uint32_t mode, uint32_t nlink) {
  FF_ASSIGN_OR_RETURN(InodeId id,
                      allocate_inode_id(impl_->engine, config_, impl_->id_mutex, impl_->next_id, impl_->end_id));
  Inode node;
  node.id = id;
  node.type = type;
  node.mode = mode & 07777;
  node.nlink = nlink;
  node.atime_ns = node.mtime_ns = node.ctime_ns = wall_now_ns();
  return node;
}

Result<Inode> MetaService::new_file_node(uint32_t mode) {
  FF_ASSIGN_OR_RETURN(Inode node, new_node(FileType::kRegular, mode, 1));
  // Layout: `stripe` chains from a round-robin start, shuffled by the file's own seed.
  node.layout.chain_table = config_.chain_table;
  node.layout.chunk_size = config_.chunk_size;
  {
    std::lock_guard lock(impl_->seed_mutex);
    node.layout.seed = impl_->seeds();
  }
  uint64_t start = impl_->round_robin.fetch_add(1);
  for (uint32_t i = 0; i < config_.stripe; ++i) {
    node.layout.chains.push_back(config_.chains[(start + i) % config_.chains.size()]);
  }
  // Fisher-Yates with our own generator: std::shuffle's algorithm differs between standard libraries.
  std::mt19937_64 shuffle(node.layout.seed);
  for (size_t i = node.layout.chains.size(); i > 1; --i) {
    std::swap(node.layout.chains[i - 1], node.layout.chains[shuffle() % i]);
  }
  return node;
}

Result<Inode> MetaService::mknod(const Caller& caller, InodeId parent, std::string_view name, FileType type,
                                 uint32_t mode, uint32_t rdev) {
  FF_RETURN_IF_ERROR(validate_name(name));
  if (type == FileType::kRegular) return create(caller, parent, name, mode);
  if (type == FileType::kDirectory || type == FileType::kSymlink) {
    return error(EINVAL, fmt::format("mknod cannot make a {}; use mkdir/symlink", file_type_name(type)));
  }
  if ((type == FileType::kCharDevice || type == FileType::kBlockDevice) && caller.uid != 0) {
    return error(EPERM, fmt::format("uid {} may not create device files", caller.uid));
  }
  FF_ASSIGN_OR_RETURN(Inode node, new_node(type, mode, 1));
  node.rdev = rdev;
  FF_RETURN_IF_ERROR(make_node(impl_->engine, config_.retry, caller, parent, name, node));
  return node;
}

Result<Inode> MetaService::mkdir(const Caller& caller, InodeId parent, std::string_view name, uint32_t mode) {
  FF_RETURN_IF_ERROR(validate_name(name));
  FF_ASSIGN_OR_RETURN(Inode node, new_node(FileType::kDirectory, mode, 2));
  FF_RETURN_IF_ERROR(make_node(impl_->engine, config_.retry, caller, parent, name, node));
  return node;
}

Result<Inode> MetaService::symlink(const Caller& caller, InodeId parent, std::string_view name,
                                   std::string_view target) {
  FF_RETURN_IF_ERROR(validate_name(name));
  if (target.empty()) return error(ENOENT, "symlink target is empty");
  if (target.size() > 4095) return error(ENAMETOOLONG, fmt::format("symlink target of {} bytes > 4095", target.size()));
  if (target.find('\0') != std::string_view::npos) return error(EINVAL, "symlink target contains a NUL byte");
  FF_ASSIGN_OR_RETURN(Inode node, new_node(FileType::kSymlink, 0777, 1));
  node.symlink_target = std::string(target);
  node.length = target.size();
  FF_RETURN_IF_ERROR(make_node(impl_->engine, config_.retry, caller, parent, name, node));
  return node;
}

Result<Inode> MetaService::link(const Caller& caller, InodeId id, InodeId new_parent, std::string_view new_name) {
  FF_RETURN_IF_ERROR(validate_name(new_name));
  Inode linked;
  FF_RETURN_IF_ERROR(run(impl_->engine, config_.retry, [&](Transaction& txn) -> Status {
    FF_ASSIGN_OR_RETURN(Inode inode, load_inode(txn, id));
    if (inode.type == FileType::kDirectory)
      return error(EPERM, fmt::format("inode {} is a directory: no hard links", id));
    if (inode.nlink == 0) return error(ENOENT, fmt::format("inode {} was unlinked; it cannot get a new name", id));
    FF_ASSIGN_OR_RETURN(Inode dir, load_dir(txn, new_parent));
    FF_RETURN_IF_ERROR(check_access(caller, dir, kWrite | kExec));
    FF_ASSIGN_OR_RETURN(auto existing, find_entry(txn, new_parent, new_name));
    if (existing) return error(EEXIST, fmt::format("'{}' already exists in directory {}", new_name, new_parent));
    inode.nlink += 1;
    inode.ctime_ns = wall_now_ns();
    store_inode(txn, inode);
    txn.set(codec::dentry_key(new_parent, new_name), codec::encode_dentry({inode.id, inode.type}));
    note_dir_change(txn, dir, inode.ctime_ns);
    linked = inode;
    return Status::ok();
  }));
  return linked;
}

Result<std::string> MetaService::readlink(InodeId id) {
  FF_ASSIGN_OR_RETURN(Inode inode, getattr(id));
  if (inode.type != FileType::kSymlink) {
    return error(EINVAL, fmt::format("inode {} is a {}, not a symlink", id, file_type_name(inode.type)));
  }
  return inode.symlink_target;
}

Status MetaService::unlink(const Caller& caller, InodeId parent, std::string_view name,
                           std::optional<Inode>* parent_after) {
  if (parent_after != nullptr) parent_after->reset();
  FF_RETURN_IF_ERROR(validate_name(name));
  return run(impl_->engine, config_.retry, [&](Transaction& txn) -> Status {
    FF_ASSIGN_OR_RETURN(Inode dir, load_dir(txn, parent));
    FF_RETURN_IF_ERROR(check_access(caller, dir, kWrite | kExec));
    FF_ASSIGN_OR_RETURN(auto entry, find_entry(txn, parent, name));
    if (!entry) return error(ENOENT, fmt::format("no entry '{}' in directory {}", name, parent));
    if (entry->type == FileType::kDirectory) {
      return error(EISDIR, fmt::format("'{}' in directory {} is a directory; use rmdir", name, parent));
    }
    FF_ASSIGN_OR_RETURN(Inode inode, load_inode(txn, entry->inode));
    FF_RETURN_IF_ERROR(check_sticky(caller, dir, inode));
    txn.clear(codec::dentry_key(parent, name));
    FF_ASSERT(inode.nlink > 0, "inode {} named by '{}' has link count 0", inode.id, name);
    inode.nlink -= 1;
    inode.ctime_ns = wall_now_ns();
    note_dir_change(txn, dir, inode.ctime_ns);
    if (parent_after != nullptr) *parent_after = dir;
    return finalize_inode(txn, inode);
  });
}

Status MetaService::rmdir(const Caller& caller, InodeId parent, std::string_view name) {
  if (name == "..") return error(ENOTEMPTY, "rmdir of '..'");
  FF_RETURN_IF_ERROR(validate_name(name));
  return run(impl_->engine, config_.retry, [&](Transaction& txn) -> Status {
    FF_ASSIGN_OR_RETURN(Inode dir, load_dir(txn, parent));
    FF_RETURN_IF_ERROR(check_access(caller, dir, kWrite | kExec));
    FF_ASSIGN_OR_RETURN(auto entry, find_entry(txn, parent, name));
    if (!entry) return error(ENOENT, fmt::format("no entry '{}' in directory {}", name, parent));
    if (entry->type != FileType::kDirectory) {
      return error(ENOTDIR, fmt::format("'{}' in directory {} is not a directory", name, parent));
    }
    FF_ASSIGN_OR_RETURN(Inode child, load_inode(txn, entry->inode));
    FF_RETURN_IF_ERROR(check_sticky(caller, dir, child));
    std::string prefix = codec::dentry_prefix(child.id);
    FF_ASSIGN_OR_RETURN(auto children, txn.range(prefix, kv::prefix_end(prefix), 1));
    if (!children.empty()) return error(ENOTEMPTY, fmt::format("directory '{}' ({}) is not empty", name, child.id));
    txn.clear(codec::dentry_key(parent, name));
    txn.clear(codec::inode_key(child.id));
    FF_RETURN_IF_ERROR(clear_inode_extras(txn, child));
    dir.nlink -= 1;
    dir.mtime_ns = dir.ctime_ns = wall_now_ns();
    store_inode(txn, dir);
    return Status::ok();
  });
}

namespace {
// Whether directory `dir` is `top` or lies below it: walks dir's ancestors through their parent
// fields, all of which go into the read set (so a concurrent move that would make a cycle conflicts).
Result<bool> inside_subtree(Transaction& txn, InodeId dir, InodeId top) {
  InodeId ancestor = dir;
  for (int depth = 0;; ++depth) {
    if (ancestor == top) return true;
    if (ancestor == kRootInode) return false;
    if (depth >= kMaxDepth) return error(ELOOP, fmt::format("directory {} is nested deeper than {}", dir, kMaxDepth));
    FF_ASSIGN_OR_RETURN(Inode up, load_inode(txn, ancestor));
    ancestor = up.parent;
  }
}
}  // namespace

Status MetaService::rename(const Caller& caller, InodeId parent, std::string_view name, InodeId new_parent,
                           std::string_view new_name, bool no_replace) {
  FF_RETURN_IF_ERROR(validate_name(name));
  FF_RETURN_IF_ERROR(validate_name(new_name));
  return run(impl_->engine, config_.retry, [&](Transaction& txn) -> Status {
    int64_t now = wall_now_ns();
    FF_ASSIGN_OR_RETURN(Inode source_dir, load_dir(txn, parent));
    FF_RETURN_IF_ERROR(check_access(caller, source_dir, kWrite | kExec));
    Inode target_dir = source_dir;
    bool same_dir = parent == new_parent;
    if (!same_dir) {
      FF_ASSIGN_OR_RETURN(target_dir, load_dir(txn, new_parent));
      FF_RETURN_IF_ERROR(check_access(caller, target_dir, kWrite | kExec));
    }
    FF_ASSIGN_OR_RETURN(auto entry, find_entry(txn, parent, name));
    if (!entry) return error(ENOENT, fmt::format("no entry '{}' in directory {}", name, parent));
    FF_ASSIGN_OR_RETURN(Inode moved, load_inode(txn, entry->inode));
    FF_RETURN_IF_ERROR(check_sticky(caller, source_dir, moved));
    bool moved_is_dir = moved.type == FileType::kDirectory;
    if (same_dir && name == new_name) return Status::ok();
    if (moved_is_dir && !same_dir) {
      // Moving a directory changes its "..": write permission on it, and no move into its own subtree.
      FF_RETURN_IF_ERROR(check_access(caller, moved, kWrite));
      FF_ASSIGN_OR_RETURN(bool inside, inside_subtree(txn, new_parent, moved.id));
      if (inside) {
        return error(EINVAL, fmt::format("cannot move directory '{}' ({}) into its own subtree (directory {})", name,
                                         moved.id, new_parent));
      }
    }
    FF_ASSIGN_OR_RETURN(auto replaced_entry, find_entry(txn, new_parent, new_name));
    std::optional<Inode> replaced;
    if (replaced_entry) {
      if (no_replace) return error(EEXIST, fmt::format("'{}' exists in directory {}", new_name, new_parent));
      if (replaced_entry->inode == moved.id) return Status::ok();  // two names of one inode: POSIX no-op
      FF_ASSIGN_OR_RETURN(Inode victim, load_inode(txn, replaced_entry->inode));
      FF_RETURN_IF_ERROR(check_sticky(caller, target_dir, victim));
      bool victim_is_dir = victim.type == FileType::kDirectory;
      if (moved_is_dir && !victim_is_dir) {
        return error(ENOTDIR, fmt::format("cannot replace non-directory '{}' with directory '{}'", new_name, name));
      }
      if (!moved_is_dir && victim_is_dir) {
        return error(EISDIR, fmt::format("cannot replace directory '{}' with non-directory '{}'", new_name, name));
      }
      if (victim_is_dir) {
        std::string prefix = codec::dentry_prefix(victim.id);
        FF_ASSIGN_OR_RETURN(auto children, txn.range(prefix, kv::prefix_end(prefix), 1));
        if (!children.empty()) {
          return error(ENOTEMPTY, fmt::format("directory '{}' ({}) is not empty", new_name, victim.id));
        }
      }
      replaced = std::move(victim);
    }
    txn.clear(codec::dentry_key(parent, name));
    txn.set(codec::dentry_key(new_parent, new_name), codec::encode_dentry({moved.id, moved.type}));
    moved.ctime_ns = now;
    if (moved_is_dir && !same_dir) moved.parent = new_parent;
    // Link counts of the directories: the moved directory leaves `parent` for `new_parent`, and a
    // replaced directory leaves `new_parent`.
    int64_t source_delta = 0, target_delta = 0;
    if (moved_is_dir && !same_dir) {
      source_delta -= 1;
      target_delta += 1;
    }
    if (replaced) {
      if (replaced->type == FileType::kDirectory) {
        target_delta -= 1;
        txn.clear(codec::inode_key(replaced->id));
        FF_RETURN_IF_ERROR(clear_inode_extras(txn, *replaced));
      } else {
        replaced->nlink -= 1;
        replaced->ctime_ns = now;
        if (replaced->id != moved.id) FF_RETURN_IF_ERROR(finalize_inode(txn, *replaced));
      }
    }
    source_dir.mtime_ns = source_dir.ctime_ns = now;
    if (same_dir) {
      source_dir.nlink = static_cast<uint32_t>(static_cast<int64_t>(source_dir.nlink) + target_delta);
      store_inode(txn, source_dir);
    } else {
      source_dir.nlink = static_cast<uint32_t>(static_cast<int64_t>(source_dir.nlink) + source_delta);
      target_dir.nlink = static_cast<uint32_t>(static_cast<int64_t>(target_dir.nlink) + target_delta);
      target_dir.mtime_ns = target_dir.ctime_ns = now;
      store_inode(txn, source_dir);
      store_inode(txn, target_dir);
    }
    store_inode(txn, moved);
    return Status::ok();
  });
}

Status MetaService::exchange(const Caller& caller, InodeId parent, std::string_view name, InodeId new_parent,
                             std::string_view new_name) {
  FF_RETURN_IF_ERROR(validate_name(name));
  FF_RETURN_IF_ERROR(validate_name(new_name));
  return run(impl_->engine, config_.retry, [&](Transaction& txn) -> Status {
    const int64_t now = wall_now_ns();
    FF_ASSIGN_OR_RETURN(Inode source_dir, load_dir(txn, parent));
    FF_RETURN_IF_ERROR(check_access(caller, source_dir, kWrite | kExec));
    const bool same_dir = parent == new_parent;
    Inode target_dir = source_dir;
    if (!same_dir) {
      FF_ASSIGN_OR_RETURN(target_dir, load_dir(txn, new_parent));
      FF_RETURN_IF_ERROR(check_access(caller, target_dir, kWrite | kExec));
    }
    FF_ASSIGN_OR_RETURN(auto first_entry, find_entry(txn, parent, name));
    if (!first_entry) return error(ENOENT, fmt::format("exchange: no entry '{}' in directory {}", name, parent));
    FF_ASSIGN_OR_RETURN(auto second_entry, find_entry(txn, new_parent, new_name));
    if (!second_entry) {
      return error(ENOENT, fmt::format("exchange: no entry '{}' in directory {}", new_name, new_parent));
    }
    if (first_entry->inode == second_entry->inode) return Status::ok();  // one name twice, or two of one inode
    FF_ASSIGN_OR_RETURN(Inode first, load_inode(txn, first_entry->inode));
    FF_ASSIGN_OR_RETURN(Inode second, load_inode(txn, second_entry->inode));
    FF_RETURN_IF_ERROR(check_sticky(caller, source_dir, first));
    FF_RETURN_IF_ERROR(check_sticky(caller, target_dir, second));
    const bool first_is_dir = first.type == FileType::kDirectory;
    const bool second_is_dir = second.type == FileType::kDirectory;
    if (!same_dir) {
      // A directory that changes parent changes its "..": write permission on it, and it must not land
      // inside its own subtree (each one moves into the other's old directory).
      if (first_is_dir) {
        FF_RETURN_IF_ERROR(check_access(caller, first, kWrite));
        FF_ASSIGN_OR_RETURN(bool inside, inside_subtree(txn, new_parent, first.id));
        if (inside) {
          return error(EINVAL,
                       fmt::format("exchange would move directory '{}' ({}) into its own subtree (directory {})", name,
                                   first.id, new_parent));
        }
      }
      if (second_is_dir) {
        FF_RETURN_IF_ERROR(check_access(caller, second, kWrite));
        FF_ASSIGN_OR_RETURN(bool inside, inside_subtree(txn, parent, second.id));
        if (inside) {
          return error(EINVAL,
                       fmt::format("exchange would move directory '{}' ({}) into its own subtree (directory {})",
                                   new_name, second.id, parent));
        }
      }
    }
    txn.set(codec::dentry_key(parent, name), codec::encode_dentry({second.id, second.type}));
    txn.set(codec::dentry_key(new_parent, new_name), codec::encode_dentry({first.id, first.type}));
    first.ctime_ns = second.ctime_ns = now;
    source_dir.mtime_ns = source_dir.ctime_ns = now;
    if (!same_dir) {
      if (first_is_dir) first.parent = new_parent;
      if (second_is_dir) second.parent = parent;
      // Link counts: each directory gains the subdirectory it receives and loses the one it gives.
      const int64_t delta = static_cast<int64_t>(second_is_dir) - static_cast<int64_t>(first_is_dir);
      source_dir.nlink = static_cast<uint32_t>(static_cast<int64_t>(source_dir.nlink) + delta);
      target_dir.nlink = static_cast<uint32_t>(static_cast<int64_t>(target_dir.nlink) - delta);
      target_dir.mtime_ns = target_dir.ctime_ns = now;
      store_inode(txn, target_dir);
    }
    store_inode(txn, source_dir);
    store_inode(txn, first);
    store_inode(txn, second);
    return Status::ok();
  });
}

// ---------------------------------------------------------------------------------- extended attributes

namespace {

enum class XattrSpace { kUser, kTrusted, kSecurity };

// The namespace of an attribute name, after Linux's checks of the name (fs/xattr.c).
Result<XattrSpace> xattr_space(std::string_view name) {
  if (name.empty() || name.size() > kMaxXattrNameBytes) {
    return error(ERANGE, fmt::format("extended attribute name of {} bytes is not within 1..{}", name.size(),
                                     kMaxXattrNameBytes));
  }
  if (name.find('\0') != std::string_view::npos) return error(EINVAL, "extended attribute name contains a NUL byte");
  struct Prefix {
    std::string_view prefix;
    std::optional<XattrSpace> space;  // nullopt: not supported
  };
  static constexpr Prefix kPrefixes[] = {{"user.", XattrSpace::kUser},
                                         {"trusted.", XattrSpace::kTrusted},
                                         {"security.", XattrSpace::kSecurity},
                                         {"system.", std::nullopt}};
  for (const Prefix& known : kPrefixes) {
    if (!name.starts_with(known.prefix)) continue;
    if (!known.space) {
      return error(EOPNOTSUPP, fmt::format("extended attribute '{}': system.* attributes (POSIX ACLs) are not "
                                           "supported",
                                           name));
    }
    if (name.size() == known.prefix.size()) {
      return error(EINVAL, fmt::format("extended attribute name '{}' has nothing after its namespace", name));
    }
    return *known.space;
  }
  return error(EOPNOTSUPP, fmt::format("extended attribute '{}' is in no known namespace (user., trusted., "
                                       "security.)",
                                       name));
}

// Linux's xattr_permission: trusted.* for the superuser only (others: EPERM to write, ENODATA to read,
// as if absent); security.* written by the superuser only here (no security module decides), read by
// anyone; user.* only on regular files and directories, not by non-owners on sticky directories, and
// with the file's read or write permission.
Status check_xattr_access(const Caller& caller, const Inode& inode, XattrSpace space, bool write,
                          std::string_view name) {
  switch (space) {
    case XattrSpace::kTrusted:
    case XattrSpace::kSecurity:
      if (caller.uid == 0) return Status::ok();
      if (write) {
        return error(EPERM,
                     fmt::format("uid {} may not change extended attribute '{}' (uid 0 only)", caller.uid, name));
      }
      if (space == XattrSpace::kTrusted) {
        return error(ENODATA, fmt::format("no extended attribute '{}' on inode {} visible to uid {}", name, inode.id,
                                          caller.uid));
      }
      return Status::ok();
    case XattrSpace::kUser:
      if (inode.type != FileType::kRegular && inode.type != FileType::kDirectory) {
        if (!write)
          return error(ENODATA,
                       fmt::format("no extended attribute '{}' on {} {}", name, file_type_name(inode.type), inode.id));
        return error(EPERM, fmt::format("user.* extended attributes are for regular files and directories, inode {} "
                                        "is a {}",
                                        inode.id, file_type_name(inode.type)));
      }
      if (write && inode.type == FileType::kDirectory && (inode.mode & S_ISVTX) && caller.uid != 0 &&
          caller.uid != inode.uid) {
        return error(EPERM, fmt::format("directory {} is sticky: uid {} does not own it", inode.id, caller.uid));
      }
      return check_access(caller, inode, write ? kWrite : kRead);
  }
  return Status::ok();
}

}  // namespace

Status MetaService::setxattr(const Caller& caller, InodeId id, std::string_view name, std::string_view value,
                             uint32_t flags) {
  FF_ASSIGN_OR_RETURN(XattrSpace space, xattr_space(name));
  if (flags & ~static_cast<uint32_t>(kXattrCreate | kXattrReplace)) {
    return error(EINVAL, fmt::format("setxattr flags {:#x} have bits beyond XATTR_CREATE|XATTR_REPLACE", flags));
  }
  if (value.size() > kMaxXattrValueBytes) {
    return error(E2BIG, fmt::format("extended attribute value of {} bytes is larger than {}", value.size(),
                                    kMaxXattrValueBytes));
  }
  return run(impl_->engine, config_.retry, [&](Transaction& txn) -> Status {
    FF_ASSIGN_OR_RETURN(Inode inode, load_inode(txn, id));
    FF_RETURN_IF_ERROR(check_xattr_access(caller, inode, space, /*write=*/true, name));
    const std::string key = codec::xattr_key(id, name);
    FF_ASSIGN_OR_RETURN(auto existing, txn.get(key));
    if (existing && (flags & kXattrCreate)) {
      return error(EEXIST, fmt::format("extended attribute '{}' exists on inode {} (XATTR_CREATE)", name, id));
    }
    if (!existing && (flags & kXattrReplace)) {
      return error(ENODATA, fmt::format("no extended attribute '{}' on inode {} to replace (XATTR_REPLACE)", name, id));
    }
    if (!existing) {
      // Bound the names of one inode so that a listing always fits listxattr's 64 KiB.
      std::string prefix = codec::xattr_prefix(id);
      FF_ASSIGN_OR_RETURN(auto rows, txn.range(prefix, kv::prefix_end(prefix), 0));
      size_t list_bytes = name.size() + 1;
      for (const auto& row : rows) list_bytes += row.key.size() - prefix.size() + 1;
      if (list_bytes > kMaxXattrListBytes) {
        return error(ENOSPC, fmt::format("inode {} has {} extended attributes; their names would need {} bytes "
                                         "(more than {})",
                                         id, rows.size(), list_bytes, kMaxXattrListBytes));
      }
    }
    txn.set(key, value);
    inode.ctime_ns = wall_now_ns();
    store_inode(txn, inode);
    return Status::ok();
  });
}

Result<std::string> MetaService::getxattr(const Caller& caller, InodeId id, std::string_view name) {
  FF_ASSIGN_OR_RETURN(XattrSpace space, xattr_space(name));
  std::string value;
  FF_RETURN_IF_ERROR(run(impl_->engine, config_.retry, [&](Transaction& txn) -> Status {
    FF_ASSIGN_OR_RETURN(Inode inode, load_inode(txn, id));
    FF_RETURN_IF_ERROR(check_xattr_access(caller, inode, space, /*write=*/false, name));
    FF_ASSIGN_OR_RETURN(auto bytes, txn.get(codec::xattr_key(id, name)));
    if (!bytes) return error(ENODATA, fmt::format("no extended attribute '{}' on inode {}", name, id));
    value = std::move(*bytes);
    return Status::ok();
  }));
  return value;
}

Result<std::vector<std::string>> MetaService::listxattr(const Caller& caller, InodeId id) {
  std::vector<std::string> names;
  FF_RETURN_IF_ERROR(run(impl_->engine, config_.retry, [&](Transaction& txn) -> Status {
    names.clear();
    FF_ASSIGN_OR_RETURN(Inode inode, load_inode(txn, id));
    (void)inode;
    std::string prefix = codec::xattr_prefix(id);
    FF_ASSIGN_OR_RETURN(auto rows, txn.range(prefix, kv::prefix_end(prefix), 0));
    size_t list_bytes = 0;
    for (const auto& row : rows) {
      std::string name = row.key.substr(prefix.size());
      if (caller.uid != 0 && name.starts_with("trusted.")) continue;  // hidden, as on Linux
      list_bytes += name.size() + 1;
      names.push_back(std::move(name));
    }
    if (list_bytes > kMaxXattrListBytes) {
      return error(E2BIG, fmt::format("the extended attribute names of inode {} need {} bytes, more than {}", id,
                                      list_bytes, kMaxXattrListBytes));
    }
    return Status::ok();
  }));
  return names;
}

Status MetaService::removexattr(const Caller& caller, InodeId id, std::string_view name) {
  FF_ASSIGN_OR_RETURN(XattrSpace space, xattr_space(name));
  return run(impl_->engine, config_.retry, [&](Transaction& txn) -> Status {
    FF_ASSIGN_OR_RETURN(Inode inode, load_inode(txn, id));
    FF_RETURN_IF_ERROR(check_xattr_access(caller, inode, space, /*write=*/true, name));
    const std::string key = codec::xattr_key(id, name);
    FF_ASSIGN_OR_RETURN(auto existing, txn.get(key));
    if (!existing) return error(ENODATA, fmt::format("no extended attribute '{}' on inode {} to remove", name, id));
    txn.clear(key);
    inode.ctime_ns = wall_now_ns();
    store_inode(txn, inode);
    return Status::ok();
  });
}

Result<ReadDirPage> MetaService::readdir(const Caller& caller, InodeId dir_id, std::string_view after, size_t limit) {
  if (limit == 0 || limit > kMaxReadDirLimit) {
    return error(EINVAL, fmt::format("readdir limit {} is not in 1..{}", limit, kMaxReadDirLimit));
  }
  ReadDirPage page;
  FF_RETURN_IF_ERROR(run(impl_->engine, config_.retry, [&](Transaction& txn) -> Status {
    page = ReadDirPage();
    FF_ASSIGN_OR_RETURN(Inode dir, load_dir(txn, dir_id));
    FF_RETURN_IF_ERROR(check_access(caller, dir, kRead));
    std::string prefix = codec::dentry_prefix(dir_id);
    std::string begin = after.empty() ? prefix : codec::dentry_key(dir_id, after) + std::string(1, '\0');
    FF_ASSIGN_OR_RETURN(auto rows, txn.range(begin, kv::prefix_end(prefix), limit + 1));
    page.more = rows.size() > limit;
    if (page.more) rows.pop_back();
    for (const auto& row : rows) {
      FF_ASSIGN_OR_RETURN(codec::Dentry dentry, codec::decode_dentry(row.value));
      page.entries.push_back(DirEntry{row.key.substr(prefix.size()), dentry.inode, dentry.type});
    }
    return Status::ok();
  }));
  return page;
}

void MetaService::set_storage_space(uint64_t capacity_bytes, uint64_t free_bytes) {
  std::lock_guard lock(impl_->space_mutex);
  impl_->space_capacity = capacity_bytes;
  impl_->space_free = std::min(free_bytes, capacity_bytes);
}

Result<StatFs> MetaService::statfs() {
  StatFs stat;
  stat.block_size = config_.chunk_size;
  stat.total_bytes = config_.capacity_bytes;
  stat.free_bytes = config_.capacity_bytes;
  {
    std::lock_guard lock(impl_->space_mutex);
    if (impl_->space_capacity > 0) {
      stat.total_bytes = impl_->space_capacity;
      stat.free_bytes = impl_->space_free;
    }
  }
  FF_RETURN_IF_ERROR(run(impl_->engine, config_.retry, [&](Transaction& txn) -> Status {
    FF_ASSIGN_OR_RETURN(auto bytes, txn.get(codec::kAllocatorKey));
    stat.inodes_allocated = 1;
    if (bytes) {
      FF_ASSIGN_OR_RETURN(uint64_t next, codec::decode_u64(*bytes, "inode allocator"));
      stat.inodes_allocated = next - 1;
    }
    return Status::ok();
  }));
  return stat;
}

// ---------------------------------------------------------------------------------------- attributes

Result<Inode> MetaService::setattr(const Caller& caller, InodeId id, const SetAttr& attr) {
  if (attr.mode && (*attr.mode & ~07777u) != 0) {
    return error(EINVAL, fmt::format("mode {:o} has bits beyond 07777", *attr.mode));
  }
  auto check = [&](const Inode& inode) -> Status {
    bool owner = caller.uid == 0 || caller.uid == inode.uid;
    if (attr.mode && !owner) {
      return error(EPERM, fmt::format("uid {} may not chmod inode {} owned by uid {}", caller.uid, id, inode.uid));
    }
    if (attr.uid && *attr.uid != inode.uid && caller.uid != 0) {
      return error(EPERM, fmt::format("uid {} may not give inode {} to uid {}", caller.uid, id, *attr.uid));
    }
    if (attr.gid && *attr.gid != inode.gid && caller.uid != 0 && !(owner && caller.in_group(*attr.gid))) {
      return error(EPERM, fmt::format("uid {} may not change inode {}'s group to {}", caller.uid, id, *attr.gid));
    }
    if (attr.length) {
      if (inode.type == FileType::kDirectory) return error(EISDIR, fmt::format("cannot truncate directory {}", id));
      if (inode.type != FileType::kRegular) {
        return error(EINVAL, fmt::format("cannot truncate {} {}", file_type_name(inode.type), id));
      }
      FF_RETURN_IF_ERROR(check_access(caller, inode, kWrite));
    }
    if ((attr.atime_ns || attr.mtime_ns) && !owner) {
      return error(EPERM, fmt::format("uid {} may not set explicit times of inode {} owned by uid {}", caller.uid, id,
                                      inode.uid));
    }
    if ((attr.atime_now || attr.mtime_now) && !owner) FF_RETURN_IF_ERROR(check_access(caller, inode, kWrite));
    return Status::ok();
  };
  if (attr.length && impl_->storage != nullptr) {
    // Data first: cutting chunks after the metadata would let a later extension expose stale bytes.
    FF_ASSIGN_OR_RETURN(Inode inode, getattr(id));
    FF_RETURN_IF_ERROR(check(inode));
    FF_RETURN_IF_ERROR(impl_->storage->truncate(inode, *attr.length));
  }
  Inode updated;
  FF_RETURN_IF_ERROR(run(impl_->engine, config_.retry, [&](Transaction& txn) -> Status {
    FF_ASSIGN_OR_RETURN(Inode inode, load_inode(txn, id));
    FF_RETURN_IF_ERROR(check(inode));
    if (inode.type == FileType::kDirectory) {
      // The inode takes over the directory's change record, so explicit times below replace it.
      FF_RETURN_IF_ERROR(fold_dir_change(txn, inode));
      txn.clear(codec::dir_change_key(id));
    }
    int64_t now = wall_now_ns();
    if (attr.mode) {
      inode.mode = *attr.mode;
      if (caller.uid != 0 && !caller.in_group(inode.gid)) inode.mode &= ~static_cast<uint32_t>(S_ISGID);
    }
    if ((attr.uid && *attr.uid != inode.uid) || (attr.gid && *attr.gid != inode.gid)) {
      if (inode.type == FileType::kRegular) inode.mode &= ~static_cast<uint32_t>(S_ISUID | S_ISGID);
    }
    if (attr.uid) inode.uid = *attr.uid;
    if (attr.gid) inode.gid = *attr.gid;
    if (attr.length) {
      inode.length = *attr.length;
      inode.mtime_ns = now;
    }
    if (attr.atime_ns) inode.atime_ns = *attr.atime_ns;
    if (attr.mtime_ns) inode.mtime_ns = *attr.mtime_ns;
    if (attr.atime_now) inode.atime_ns = now;
    if (attr.mtime_now) inode.mtime_ns = now;
    inode.ctime_ns = now;
    store_inode(txn, inode);
    updated = inode;
    return Status::ok();
  }));
  return updated;
}

// ---------------------------------------------------------------------------------------- open files

Result<OpenFile> MetaApi::create_open(const Caller& caller, InodeId parent, std::string_view name, uint32_t mode,
                                      uint32_t flags, uint64_t client) {
  FF_ASSIGN_OR_RETURN(Inode created, create(caller, parent, name, mode));
  return open(caller, created.id, flags, client);
}

Status MetaService::check_open_flags(uint32_t flags, uint64_t client) {
  if ((flags & (kOpenRead | kOpenWrite)) == 0) return error(EINVAL, "open flags name neither read nor write");
  if ((flags & kOpenTruncate) && !(flags & kOpenWrite)) return error(EINVAL, "O_TRUNC needs write access");
  if (client == 0) return error(EINVAL, "client id 0 is reserved");
  return Status::ok();
}

uint64_t MetaService::new_session_id() {
  return impl_->session_base | (impl_->session_counter.fetch_add(1) & 0xffffffffull);
}

void MetaService::record_session(Transaction& txn, InodeId id, uint64_t session, uint64_t client, bool write) {
  const int64_t lease_until = impl_->clock->now_ms() + config_.client_lease_ms;
  codec::Session record{client, write, impl_->clock->now_ms()};
  txn.set(codec::session_key(id, session), codec::encode_session(record));
  txn.set(codec::client_session_key(client, id, session), "");
  txn.set(codec::lease_key(client), codec::encode_u64(static_cast<uint64_t>(lease_until)));
}

Result<OpenFile> MetaService::open(const Caller& caller, InodeId id, uint32_t flags, uint64_t client) {
  FF_RETURN_IF_ERROR(check_open_flags(flags, client));
  bool write = (flags & kOpenWrite) != 0;
  if (flags & kOpenTruncate) {
    SetAttr truncate;
    truncate.length = 0;
    FF_ASSIGN_OR_RETURN(Inode ignored, setattr(caller, id, truncate));
    (void)ignored;
  }
  const uint64_t session = new_session_id();
  OpenFile opened;
  FF_RETURN_IF_ERROR(run(impl_->engine, config_.retry, [&](Transaction& txn) -> Status {
    FF_ASSIGN_OR_RETURN(Inode inode, load_inode(txn, id));
    if (inode.type == FileType::kDirectory && write) return error(EISDIR, fmt::format("inode {} is a directory", id));
    if (inode.type == FileType::kSymlink) return error(ELOOP, fmt::format("inode {} is a symlink", id));
    if (inode.nlink == 0) return error(ENOENT, fmt::format("inode {} was unlinked", id));
    uint32_t mask = ((flags & kOpenRead) ? kRead : 0) | (write ? kWrite : 0);
    FF_RETURN_IF_ERROR(check_access(caller, inode, mask));
    record_session(txn, id, session, client, write);
    opened = OpenFile{inode, session};
    return Status::ok();
  }));
  return opened;
}

namespace {
// The exact length of a file written by a session: storage's answer, else the larger of the recorded
// length and the client's report.
Result<uint64_t> exact_length(FileStorage* storage, const Inode& inode, uint64_t length_hint) {
  if (storage != nullptr && inode.type == FileType::kRegular) return storage->file_length(inode);
  return std::max(inode.length, length_hint);
}
}  // namespace

namespace {
// Ends an open session in txn (both of its records); EBADF when it is gone already.
Status end_session(Transaction& txn, InodeId id, uint64_t session) {
  FF_ASSIGN_OR_RETURN(auto bytes, txn.get(codec::session_key(id, session)));
  if (!bytes) return error(EBADF, fmt::format("inode {} has no open session {:#x} (closed or reclaimed)", id, session));
  FF_ASSIGN_OR_RETURN(codec::Session record, codec::decode_session(*bytes));
  txn.clear(codec::session_key(id, session));
  txn.clear(codec::client_session_key(record.client, id, session));
  return Status::ok();
}
}  // namespace

Status MetaService::close(InodeId id, uint64_t session, uint64_t length_hint) {
  // Read the session and inode first: the storage query happens outside the transaction.
  std::optional<codec::Session> record;
  Inode before;
  FF_RETURN_IF_ERROR(run(impl_->engine, config_.retry, [&](Transaction& txn) -> Status {
    FF_ASSIGN_OR_RETURN(auto bytes, txn.get(codec::session_key(id, session)));
    if (!bytes) return error(EBADF, fmt::format("inode {} has no open session {:#x}", id, session));
    FF_ASSIGN_OR_RETURN(record, codec::decode_session(*bytes));
    FF_ASSIGN_OR_RETURN(before, load_inode(txn, id));
    return Status::ok();
  }));
  // A write session whose client wrote nothing (length_hint 0) cannot have changed the length: no
  // storage query (it made every create through ff-fuse pay one), no length or mtime update.
  const bool wrote = record->write && length_hint > 0;
  uint64_t length = before.length;
  if (wrote) {
    FF_ASSIGN_OR_RETURN(length, exact_length(impl_->storage, before, length_hint));
  }
  return run(impl_->engine, config_.retry, [&](Transaction& txn) -> Status {
    FF_RETURN_IF_ERROR(end_session(txn, id, session));
    FF_ASSIGN_OR_RETURN(Inode inode, load_inode(txn, id));
    if (wrote && inode.type == FileType::kRegular) {
      if (inode.length != length) inode.mtime_ns = wall_now_ns();
      inode.length = impl_->storage != nullptr ? length : std::max(inode.length, length);
    }
    return finalize_inode(txn, inode);
  });
}

std::vector<Status> MetaApi::close_batch(std::span<const CloseRequest> closes) {
  std::vector<Status> results;
  results.reserve(closes.size());
  for (const CloseRequest& request : closes)
    results.push_back(close(request.inode, request.session, request.length_hint));
  return results;
}

std::vector<Status> MetaService::close_batch(std::span<const CloseRequest> closes) {
  if (closes.size() > kMaxCloseBatch) {
    return std::vector<Status>(closes.size(), error(EINVAL, fmt::format("close_batch of {} closes; at most {}",
                                                                        closes.size(), kMaxCloseBatch)));
  }
  std::vector<Status> results(closes.size());
  std::vector<size_t> batched;  // no length hint: nothing to ask storage, all in one transaction
  for (size_t i = 0; i < closes.size(); ++i) {
    if (closes[i].length_hint > 0) {
      results[i] = close(closes[i].inode, closes[i].session, closes[i].length_hint);
    } else {
      batched.push_back(i);
    }
  }
  if (batched.empty()) return results;
  // As close() without a hint: the session goes, the length stays; the last close of an unlinked inode deletes it
  // (finalize_inode sees the sessions this transaction already cleared). A missing session is that close's EBADF
  // only.
  Status committed = run(impl_->engine, config_.retry, [&](Transaction& txn) -> Status {
    for (size_t i : batched) {
      const CloseRequest& request = closes[i];
      results[i] = end_session(txn, request.inode, request.session);
      if (errno_of(results[i]) == EBADF) continue;  // that close only
      FF_RETURN_IF_ERROR(results[i]);
      FF_ASSIGN_OR_RETURN(Inode inode, load_inode(txn, request.inode));
      // A linked inode is left as it is (no length, no time changes); an unlinked one goes with its last session.
      if (inode.nlink == 0) FF_RETURN_IF_ERROR(finalize_inode(txn, inode));
    }
    return Status::ok();
  });
  if (!committed.is_ok()) {
    for (size_t i : batched) results[i] = committed;
  }
  return results;
}

Result<Inode> MetaService::sync(InodeId id, uint64_t length_hint) {
  FF_ASSIGN_OR_RETURN(Inode before, getattr(id));
  FF_ASSIGN_OR_RETURN(uint64_t length, exact_length(impl_->storage, before, length_hint));
  Inode updated;
  FF_RETURN_IF_ERROR(run(impl_->engine, config_.retry, [&](Transaction& txn) -> Status {
    FF_ASSIGN_OR_RETURN(updated, load_inode(txn, id));
    if (updated.type != FileType::kRegular) return Status::ok();
    uint64_t next = impl_->storage != nullptr ? length : std::max(updated.length, length);
    if (next != updated.length) {
      updated.length = next;
      updated.mtime_ns = wall_now_ns();
      store_inode(txn, updated);
    }
    return Status::ok();
  }));
  return updated;
}

Status MetaService::report_length(InodeId id, uint64_t length) {
  return run(impl_->engine, config_.retry, [&](Transaction& txn) -> Status {
    FF_ASSIGN_OR_RETURN(Inode inode, load_inode(txn, id));
    if (inode.type != FileType::kRegular) return error(EINVAL, fmt::format("inode {} is not a regular file", id));
    if (length > inode.length) {
      inode.length = length;
      inode.mtime_ns = wall_now_ns();
      store_inode(txn, inode);
    }
    return Status::ok();
  });
}

Status MetaService::renew_client(uint64_t client) {
  int64_t lease_until = impl_->clock->now_ms() + config_.client_lease_ms;
  return run(impl_->engine, config_.retry, [&](Transaction& txn) -> Status {
    txn.set(codec::lease_key(client), codec::encode_u64(static_cast<uint64_t>(lease_until)));
    return Status::ok();
  });
}

Result<size_t> MetaService::reclaim_expired_sessions() {
  int64_t now = impl_->clock->now_ms();
  std::vector<uint64_t> expired;
  FF_RETURN_IF_ERROR(run(impl_->engine, config_.retry, [&](Transaction& txn) -> Status {
    expired.clear();
    std::string prefix = codec::lease_prefix();
    FF_ASSIGN_OR_RETURN(auto rows, txn.range(prefix, kv::prefix_end(prefix), 0));
    for (const auto& row : rows) {
      FF_ASSIGN_OR_RETURN(uint64_t until, codec::decode_u64(row.value, "client lease"));
      if (static_cast<int64_t>(until) < now) expired.push_back(codec::get_u64_be(std::string_view(row.key).substr(1)));
    }
    return Status::ok();
  }));
  size_t reclaimed = 0;
  for (uint64_t client : expired) {
    // Exact lengths of the files the client was writing, from storage, before the transaction.
    std::map<InodeId, uint64_t> lengths;
    FF_RETURN_IF_ERROR(run(impl_->engine, config_.retry, [&](Transaction& txn) -> Status {
      lengths.clear();
      std::string prefix = codec::client_session_prefix(client);
      FF_ASSIGN_OR_RETURN(auto rows, txn.range(prefix, kv::prefix_end(prefix), 0));
      for (const auto& row : rows) {
        InodeId inode_id = codec::get_u64_be(std::string_view(row.key).substr(9, 8));
        lengths.emplace(inode_id, 0);
      }
      return Status::ok();
    }));
    if (impl_->storage != nullptr) {
      for (auto& [inode_id, length] : lengths) {
        auto inode = getattr(inode_id);
        if (!inode.is_ok()) continue;  // already gone
        FF_ASSIGN_OR_RETURN(length, impl_->storage->file_length(*inode));
      }
    }
    size_t count = 0;
    FF_RETURN_IF_ERROR(run(impl_->engine, config_.retry, [&](Transaction& txn) -> Status {
      count = 0;
      FF_ASSIGN_OR_RETURN(auto lease, txn.get(codec::lease_key(client)));
      if (!lease) return Status::ok();
      FF_ASSIGN_OR_RETURN(uint64_t until, codec::decode_u64(*lease, "client lease"));
      if (static_cast<int64_t>(until) >= now) return Status::ok();  // renewed meanwhile
      std::string prefix = codec::client_session_prefix(client);
      FF_ASSIGN_OR_RETURN(auto rows, txn.range(prefix, kv::prefix_end(prefix), 0));
      std::map<InodeId, bool> touched;  // inode -> had a write session
      for (const auto& row : rows) {
        std::string_view key(row.key);
        InodeId inode_id = codec::get_u64_be(key.substr(9, 8));
        uint64_t session = codec::get_u64_be(key.substr(17, 8));
        FF_ASSIGN_OR_RETURN(auto bytes, txn.get(codec::session_key(inode_id, session)));
        bool write = false;
        if (bytes) {
          FF_ASSIGN_OR_RETURN(codec::Session record, codec::decode_session(*bytes));
          write = record.write;
        }
        txn.clear(codec::session_key(inode_id, session));
        txn.clear(row.key);
        touched[inode_id] = touched[inode_id] || write;
        ++count;
      }
      for (const auto& [inode_id, write] : touched) {
        auto inode = load_inode(txn, inode_id);
        if (!inode.is_ok()) {
          if (errno_of(inode.status()) == ENOENT) continue;
          return inode.status();
        }
        if (write && impl_->storage != nullptr && lengths.contains(inode_id)) inode->length = lengths[inode_id];
        FF_RETURN_IF_ERROR(finalize_inode(txn, *inode));
      }
      txn.clear(codec::lease_key(client));
      return Status::ok();
    }));
    reclaimed += count;
  }
  return reclaimed;
}

Result<size_t> MetaService::collect_garbage(size_t limit) {
  std::vector<Inode> garbage;
  FF_RETURN_IF_ERROR(run(impl_->engine, config_.retry, [&](Transaction& txn) -> Status {
    garbage.clear();
    std::string prefix = codec::garbage_prefix();
    FF_ASSIGN_OR_RETURN(auto rows, txn.range(prefix, kv::prefix_end(prefix), limit));
    for (const auto& row : rows) {
      FF_ASSIGN_OR_RETURN(Inode inode, codec::decode_inode(row.value));
      garbage.push_back(std::move(inode));
    }
    return Status::ok();
  }));
  for (const auto& inode : garbage) {
    if (impl_->storage != nullptr) FF_RETURN_IF_ERROR(impl_->storage->remove_file(inode));
    FF_RETURN_IF_ERROR(run(impl_->engine, config_.retry, [&](Transaction& txn) -> Status {
      txn.clear(codec::garbage_key(inode.id));
      return Status::ok();
    }));
  }
  return garbage.size();
}

Result<size_t> MetaService::session_count(InodeId id) {
  size_t count = 0;
  FF_RETURN_IF_ERROR(run(impl_->engine, config_.retry, [&](Transaction& txn) -> Status {
    std::string prefix = codec::session_prefix(id);
    FF_ASSIGN_OR_RETURN(auto rows, txn.range(prefix, kv::prefix_end(prefix), 0));
    count = rows.size();
    return Status::ok();
  }));
  return count;
}

}  // namespace ff::fs::meta

namespace ff::fs::meta {

Result<MetaService::FsckReport> MetaService::fsck() {
  FsckReport report;
  FF_RETURN_IF_ERROR(run(impl_->engine, config_.retry, [&](Transaction& txn) -> Status {
    report = FsckReport();
    std::map<InodeId, Inode> inodes;
    FF_ASSIGN_OR_RETURN(auto inode_rows, txn.range("I", kv::prefix_end("I"), 0));
    for (const auto& row : inode_rows) {
      FF_ASSIGN_OR_RETURN(Inode inode, codec::decode_inode(row.value));
      inodes.emplace(inode.id, std::move(inode));
    }
    std::map<InodeId, uint32_t> names;      // inode -> entries naming it
    std::map<InodeId, uint32_t> subdirs;    // directory -> subdirectories
    std::map<InodeId, InodeId> named_from;  // directory -> the directory whose entry names it
    FF_ASSIGN_OR_RETURN(auto entry_rows, txn.range("D", kv::prefix_end("D"), 0));
    for (const auto& row : entry_rows) {
      InodeId parent = codec::get_u64_be(std::string_view(row.key).substr(1, 8));
      std::string name = row.key.substr(9);
      FF_ASSIGN_OR_RETURN(codec::Dentry dentry, codec::decode_dentry(row.value));
      auto parent_it = inodes.find(parent);
      if (parent_it == inodes.end() || parent_it->second.type != FileType::kDirectory) {
        report.problems.push_back(fmt::format("entry '{}' is in {} which is not a live directory", name, parent));
      }
      auto it = inodes.find(dentry.inode);
      if (it == inodes.end()) {
        report.problems.push_back(fmt::format("entry '{}' in {} names missing inode {}", name, parent, dentry.inode));
        continue;
      }
      if (it->second.type != dentry.type) {
        report.problems.push_back(fmt::format("entry '{}' in {} says {} but inode {} is a {}", name, parent,
                                              file_type_name(dentry.type), dentry.inode,
                                              file_type_name(it->second.type)));
      }
      names[dentry.inode] += 1;
      if (dentry.type == FileType::kDirectory) {
        subdirs[parent] += 1;
        named_from[dentry.inode] = parent;
      }
    }
    report.inodes = inodes.size();
    report.entries = entry_rows.size();
    for (const auto& [id, inode] : inodes) {
      uint32_t count = names.contains(id) ? names[id] : 0;
      if (inode.type == FileType::kDirectory) {
        if (id == kRootInode) {
          if (count != 0) report.problems.push_back("the root directory has a name");
        } else if (count != 1) {
          report.problems.push_back(fmt::format("directory {} has {} names, expected 1", id, count));
        } else if (named_from[id] != inode.parent) {
          report.problems.push_back(fmt::format("directory {} is named in {} but its parent field says {}", id,
                                                named_from[id], inode.parent));
        }
        uint32_t expected = 2 + (subdirs.contains(id) ? subdirs[id] : 0);
        if (inode.nlink != expected) {
          report.problems.push_back(fmt::format("directory {} has nlink {}, expected {}", id, inode.nlink, expected));
        }
        // Parent chains reach the root within the number of directories (no cycle).
        InodeId at = id;
        size_t steps = 0;
        while (at != kRootInode && steps <= inodes.size()) {
          auto up = inodes.find(at);
          if (up == inodes.end()) break;
          at = up->second.parent;
          ++steps;
        }
        if (at != kRootInode) report.problems.push_back(fmt::format("directory {} does not reach the root", id));
      } else {
        if (inode.nlink != count) {
          report.problems.push_back(fmt::format("inode {} has nlink {} but {} entries", id, inode.nlink, count));
        }
        if (count == 0) {
          FF_ASSIGN_OR_RETURN(bool open, has_sessions(txn, id));
          if (!open) report.problems.push_back(fmt::format("inode {} is an orphan (no name, no open session)", id));
        }
      }
    }
    // Extended attributes and directory change records belong to live inodes (removed with them).
    FF_ASSIGN_OR_RETURN(auto xattr_rows, txn.range("X", kv::prefix_end("X"), 0));
    for (const auto& row : xattr_rows) {
      InodeId owner = codec::get_u64_be(std::string_view(row.key).substr(1, 8));
      if (!inodes.contains(owner)) {
        report.problems.push_back(fmt::format("extended attribute '{}' of missing inode {}", row.key.substr(9), owner));
      }
    }
    FF_ASSIGN_OR_RETURN(auto change_rows, txn.range("T", kv::prefix_end("T"), 0));
    for (const auto& row : change_rows) {
      InodeId owner = codec::get_u64_be(std::string_view(row.key).substr(1, 8));
      auto it = inodes.find(owner);
      if (it == inodes.end() || it->second.type != FileType::kDirectory) {
        report.problems.push_back(fmt::format("directory change record of {}, which is not a live directory", owner));
      }
    }
    return Status::ok();
  }));
  return report;
}

}  // namespace ff::fs::meta
