// The fs metadata service logic (the library under ff-meta): inodes and directory entries stored in a
// transactional KV store (kv.h), every operation one transaction retried on conflict. Stateless: any
// number of MetaService objects, in any number of processes, may share one store (etcd), because
// everything they know lives in it, except the inode-id batch each instance reserved.
//
// Callers: the RPC server of ff-meta (later), the native client library and ff-fuse (through the
// RPC), tests and tools (directly). Operations take inode ids, not paths, like the FUSE low-level API;
// resolve() walks a path for tools and tests.
//
// Errors are Status values tagged with an errno: "[ENOENT] lookup 'x' in directory 1: no such entry";
// errno_of() recovers the number (the FUSE daemon replies with it). Transient store errors after the
// retry budget come back untagged (errno_of gives EIO, or EAGAIN for conflicts).
//
// Thread-safety: every MetaService method may be called from any number of threads at once. The
// engine, the FileStorage and the Clock must outlive the service.
#pragma once

#include <cstdint>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "ff/common/clock.h"
#include "ff/common/result.h"
#include "ff/fs/kv.h"
#include "ff/fs/types.h"

namespace ff::fs::meta {

using InodeId = uint64_t;
inline constexpr InodeId kRootInode = 1;
inline constexpr size_t kMaxNameBytes = 255;
inline constexpr int kMaxSymlinkFollows = 40;  // Linux's MAXSYMLINKS
// Extended attributes, Linux's limits: XATTR_NAME_MAX, XATTR_SIZE_MAX, XATTR_LIST_MAX.
inline constexpr size_t kMaxXattrNameBytes = 255;
inline constexpr size_t kMaxXattrValueBytes = 64 * 1024;
inline constexpr size_t kMaxXattrListBytes = 64 * 1024;
inline constexpr size_t kMaxCloseBatch = 1024;  // closes in one close_batch call
inline constexpr size_t kMaxCallBatch = 64;     // requests in one Meta.CallBatch (RemoteMeta's batching)
// setxattr flags, with the values of <sys/xattr.h>'s XATTR_CREATE / XATTR_REPLACE.
enum XattrFlags : uint32_t {
  kXattrCreate = 1,   // fail with EEXIST when the attribute exists
  kXattrReplace = 2,  // fail with ENODATA when it does not
};

enum class FileType : uint8_t {
  kRegular = 1,
  kDirectory = 2,
  kSymlink = 3,
  kFifo = 4,
  kCharDevice = 5,
  kBlockDevice = 6,
  kSocket = 7,
};
std::string_view file_type_name(FileType type);
// The S_IF* bits of a type (for struct stat's st_mode).
uint32_t file_type_mode_bits(FileType type);

// Where a file's chunks live: chunk i of the file is chunk (inode, i) on chain chains[i % chains.size()].
// Chosen at create: `stripe` chains of the chain table starting at a round-robin position, then
// shuffled with `seed`, so consecutive files start on different chains and one file's chunks spread.
struct Layout {
  ChainTableId chain_table = 0;
  uint32_t chunk_size = 0;
  uint64_t seed = 0;
  std::vector<ChainId> chains;  // stripe = chains.size()
  ChainId chain_of(uint64_t chunk_index) const { return chains[chunk_index % chains.size()]; }
  friend bool operator==(const Layout&, const Layout&) = default;
};

struct Inode {
  InodeId id = 0;
  FileType type = FileType::kRegular;
  uint32_t mode = 0;  // permission bits and S_ISUID/S_ISGID/S_ISVTX (07777), without the type
  uint32_t uid = 0;
  uint32_t gid = 0;
  uint32_t nlink = 0;   // files: directory entries naming it; directories: 2 + subdirectories
  uint64_t length = 0;  // files: bytes (exact after close/fsync); symlinks: target length
  int64_t atime_ns = 0;
  int64_t mtime_ns = 0;
  int64_t ctime_ns = 0;
  uint32_t rdev = 0;           // device files
  InodeId parent = 0;          // directories: the containing directory (root: itself)
  std::string symlink_target;  // symlinks
  Layout layout;               // regular files
  friend bool operator==(const Inode&, const Inode&) = default;
};

struct DirEntry {
  std::string name;
  InodeId inode = 0;
  FileType type = FileType::kRegular;
  friend bool operator==(const DirEntry&, const DirEntry&) = default;
};

// Who asks: POSIX permission checks use these. uid 0 is the superuser.
struct Caller {
  uint32_t uid = 0;
  uint32_t gid = 0;
  std::vector<uint32_t> groups;  // supplementary groups
  bool in_group(uint32_t group) const;
};

// Storage-side operations the metadata service needs; implemented over the storage layer's StorageClient (its
// query_last_chunk / remove_range) by the client library, and by fakes in tests. Calls happen outside
// KV transactions and may block on I/O.
class FileStorage {
 public:
  virtual ~FileStorage() = default;
  // The file's length as storage holds it: the highest-index chunk over the layout's chains
  // (index * chunk_size + its length), 0 when no chunk exists.
  virtual Result<uint64_t> file_length(const Inode& inode) = 0;
  // Cuts the file's data to `length` bytes (removes chunks past it, shortens the last one).
  virtual Status truncate(const Inode& inode, uint64_t length) = 0;
  // Removes every chunk of a deleted file.
  virtual Status remove_file(const Inode& inode) = 0;
};

struct MetaConfig {
  // The chain table new files are striped over, and its chains (from mgmtd's routing information).
  ChainTableId chain_table = 1;
  std::vector<ChainId> chains = {1};
  uint32_t stripe = 1;                   // chains per file (<= chains.size())
  uint32_t chunk_size = 1u << 20;        // bytes per chunk (power of two, 4 KiB .. 64 MiB; docs/decisions.md)
  uint32_t inode_batch = 256;            // inode ids reserved per allocator transaction
  int64_t client_lease_ms = 60'000;      // a client silent this long loses its sessions
  uint64_t capacity_bytes = 1ull << 40;  // reported by statfs when no storage capacity is known
  kv::RetryOptions retry;                // for every operation's transaction
};

struct SetAttr {
  std::optional<uint32_t> mode;  // permission bits (07777)
  std::optional<uint32_t> uid;
  std::optional<uint32_t> gid;
  std::optional<uint64_t> length;  // truncate (regular files)
  std::optional<int64_t> atime_ns;
  std::optional<int64_t> mtime_ns;
  bool atime_now = false;  // utimensat's UTIME_NOW: needs ownership or write permission only
  bool mtime_now = false;
};

// open() flags: the O_ACCMODE part and O_TRUNC of open(2), as plain bits.
enum OpenFlags : uint32_t {
  kOpenRead = 1,
  kOpenWrite = 2,
  kOpenTruncate = 4,
};

struct OpenFile {
  Inode inode;
  uint64_t session = 0;  // pass to close(); identifies this open
  // create_open: the parent directory as the create left it (times updated), so that a client need not ask
  // for it again; empty from open() and where the service does not say.
  std::optional<Inode> parent;
};

// One close of a batch (MetaApi::close_batch): the arguments of close().
struct CloseRequest {
  InodeId inode = 0;
  uint64_t session = 0;
  uint64_t length_hint = 0;
};

struct ReadDirPage {
  std::vector<DirEntry> entries;  // ascending by name (byte order); no "." or ".."
  bool more = false;              // more entries follow the last one
};

struct StatFs {
  uint64_t block_size = 0;  // the chunk size
  uint64_t total_bytes = 0;
  uint64_t free_bytes = 0;
  uint64_t inodes_allocated = 0;  // ids handed out so far (an upper bound on live inodes)
  uint32_t max_name_bytes = kMaxNameBytes;
};

// Builds an errno-tagged Status: "[ENOENT] <message>" with the errno's natural StatusCode.
Status meta_error(int errno_value, std::string message);
// The errno a Status carries: its tag, else one derived from its code (EIO for unknown failures,
// EAGAIN for conflicts/aborts, ETIMEDOUT for deadlines); 0 for OK.
int errno_of(const Status& status);
std::string_view errno_name(int errno_value);  // "ENOENT"; "E?" for numbers it does not know

// The metadata operations as an interface, so that the file client, ff-fuse and tools run the same
// over an in-process MetaService (tests, single-process tools) and over RPC to ff-meta instances
// (meta_rpc.h). Semantics, errors and thread-safety: as documented on MetaService below.
class MetaApi {
 public:
  virtual ~MetaApi() = default;

  // ---- names and attributes
  virtual Result<Inode> lookup(const Caller& caller, InodeId parent, std::string_view name) = 0;
  virtual Result<Inode> getattr(InodeId inode) = 0;
  virtual Result<Inode> setattr(const Caller& caller, InodeId inode, const SetAttr& attr) = 0;
  // Walks an absolute path from the root ("/a/b"), following symlinks in the middle (and at the end
  // when follow_last), with search permission checks: ENOENT, ENOTDIR, ELOOP, EACCES.
  virtual Result<Inode> resolve(const Caller& caller, std::string_view path, bool follow_last = true) = 0;

  // ---- creating: each returns the new inode; EEXIST when the name exists.
  virtual Result<Inode> create(const Caller& caller, InodeId parent, std::string_view name, uint32_t mode) = 0;
  virtual Result<Inode> mknod(const Caller& caller, InodeId parent, std::string_view name, FileType type, uint32_t mode,
                              uint32_t rdev) = 0;
  virtual Result<Inode> mkdir(const Caller& caller, InodeId parent, std::string_view name, uint32_t mode) = 0;
  virtual Result<Inode> symlink(const Caller& caller, InodeId parent, std::string_view name,
                                std::string_view target) = 0;
  // A new name for an existing non-directory (EPERM for directories).
  virtual Result<Inode> link(const Caller& caller, InodeId inode, InodeId new_parent, std::string_view new_name) = 0;
  virtual Result<std::string> readlink(InodeId inode) = 0;

  // ---- removing and renaming
  // parent_after (optional) receives the directory as the unlink left it (times updated) where the service
  // says, else is reset: a client need not ask for it again.
  virtual Status unlink(const Caller& caller, InodeId parent, std::string_view name,
                        std::optional<Inode>* parent_after = nullptr) = 0;
  virtual Status rmdir(const Caller& caller, InodeId parent, std::string_view name) = 0;
  // Atomic. Replaces an existing destination per POSIX (a file by a file, an empty directory by a
  // directory) unless no_replace (then EEXIST); EINVAL when a directory would move into its own
  // subtree; renaming onto another name of the same inode does nothing.
  virtual Status rename(const Caller& caller, InodeId parent, std::string_view name, InodeId new_parent,
                        std::string_view new_name, bool no_replace = false) = 0;

  // RENAME_EXCHANGE: atomically swaps the inodes two existing names refer to (files, directories, one
  // of each, in one or two directories). ENOENT when either is missing; EINVAL when a directory would
  // land inside its own subtree; permissions as rename (write+search on both directories, their
  // sticky bits, write permission on a directory that changes parent). Two names of one inode, or one
  // name twice: nothing happens.
  virtual Status exchange(const Caller& caller, InodeId parent, std::string_view name, InodeId new_parent,
                          std::string_view new_name) = 0;

  // ---- extended attributes, one KV key each under the inode (they follow renames and links, and go
  // with the inode). Names "namespace.rest" (1..255 bytes: ERANGE otherwise); user.* on regular files
  // and directories with the file's read (get, list) / write (set, remove) permission (EPERM on other
  // types and for non-owners of a sticky directory); trusted.* and security.* are written only by uid 0
  // (EPERM), trusted.* read and listed only by uid 0 (others get ENODATA, as on Linux); system.* and
  // unknown namespaces: EOPNOTSUPP. Values up to 64 KiB (E2BIG). Set and remove update the ctime.
  // flags: XattrFlags (kXattrCreate: EEXIST if present; kXattrReplace: ENODATA if absent).
  virtual Status setxattr(const Caller& caller, InodeId inode, std::string_view name, std::string_view value,
                          uint32_t flags) = 0;
  // The value; ENODATA when the attribute is absent.
  virtual Result<std::string> getxattr(const Caller& caller, InodeId inode, std::string_view name) = 0;
  // The names the caller may see, ascending (E2BIG when they need more than 64 KiB with their NULs).
  virtual Result<std::vector<std::string>> listxattr(const Caller& caller, InodeId inode) = 0;
  // ENODATA when the attribute is absent.
  virtual Status removexattr(const Caller& caller, InodeId inode, std::string_view name) = 0;

  // ---- listing: up to `limit` entries (1..4096) with names > `after` ("" from the start). The name of
  // the last entry is the cursor of the next page (stable under concurrent changes, unlike an index).
  virtual Result<ReadDirPage> readdir(const Caller& caller, InodeId dir, std::string_view after, size_t limit) = 0;
  virtual Result<StatFs> statfs() = 0;

  // ---- open files. Every open is a session recorded in the store under the client's id: an unlinked
  // file stays readable (its inode and chunks are kept) until its last session closes. Write sessions
  // make the length exact on close (FileStorage::file_length, else the client's report).
  virtual Result<OpenFile> open(const Caller& caller, InodeId inode, uint32_t flags, uint64_t client) = 0;
  // create + open in one transaction: the new regular file (as create), opened with `flags` (kOpenRead /
  // kOpenWrite; kOpenTruncate first clears storage under the new id, as create + open(O_TRUNC) did) for
  // `client`. The creating open is not checked against the new
  // file's mode (POSIX: open(O_CREAT) of a 0444 file for writing succeeds for its creator).
  // Default: create, then open (two transactions, and open checks the mode).
  virtual Result<OpenFile> create_open(const Caller& caller, InodeId parent, std::string_view name, uint32_t mode,
                                       uint32_t flags, uint64_t client);
  // length_hint: the end of the client's writes; 0 when it did not write (then the length is left as it is,
  // without asking storage).
  virtual Status close(InodeId inode, uint64_t session, uint64_t length_hint) = 0;
  // Many closes at once, one status per request in order (a close that fails does not fail the others). For
  // clients that close sessions in the background (FileClientConfig::async_closes): one round trip and, in
  // MetaService, one transaction for all closes without a length hint. Default: close() for each.
  virtual std::vector<Status> close_batch(std::span<const CloseRequest> closes);
  // fsync: makes the inode's length exact now; returns the updated inode.
  virtual Result<Inode> sync(InodeId inode, uint64_t length_hint) = 0;
  // A client's report that it wrote up to `length` (lengths only grow through reports).
  virtual Status report_length(InodeId inode, uint64_t length) = 0;
  // Keeps a client's sessions alive for config.client_lease_ms more.
  virtual Status renew_client(uint64_t client) = 0;
};

class MetaService final : public MetaApi {
 public:
  // Opens the service over `engine`, creating the root directory (uid 0, mode 0755) when the store is
  // empty. `storage` may be null (tests, tools): lengths then come from clients' reports only, and
  // truncate/remove touch metadata only. `clock` times client leases; it must be shared by every
  // instance on one store (nullptr: the wall clock, which is).
  static Result<std::unique_ptr<MetaService>> open(kv::KvEngine& engine, MetaConfig config,
                                                   FileStorage* storage = nullptr, Clock* clock = nullptr);
  ~MetaService() override;
  MetaService(const MetaService&) = delete;
  MetaService& operator=(const MetaService&) = delete;

  // ---- the MetaApi operations (documented there)
  Result<Inode> lookup(const Caller& caller, InodeId parent, std::string_view name) override;
  Result<Inode> getattr(InodeId inode) override;
  Result<Inode> setattr(const Caller& caller, InodeId inode, const SetAttr& attr) override;
  Result<Inode> resolve(const Caller& caller, std::string_view path, bool follow_last = true) override;

  Result<Inode> create(const Caller& caller, InodeId parent, std::string_view name, uint32_t mode) override;
  Result<Inode> mknod(const Caller& caller, InodeId parent, std::string_view name, FileType type, uint32_t mode,
                      uint32_t rdev) override;
  Result<Inode> mkdir(const Caller& caller, InodeId parent, std::string_view name, uint32_t mode) override;
  Result<Inode> symlink(const Caller& caller, InodeId parent, std::string_view name, std::string_view target) override;
  Result<Inode> link(const Caller& caller, InodeId inode, InodeId new_parent, std::string_view new_name) override;
  Result<std::string> readlink(InodeId inode) override;

  Status unlink(const Caller& caller, InodeId parent, std::string_view name,
                std::optional<Inode>* parent_after = nullptr) override;
  Status rmdir(const Caller& caller, InodeId parent, std::string_view name) override;
  Status rename(const Caller& caller, InodeId parent, std::string_view name, InodeId new_parent,
                std::string_view new_name, bool no_replace = false) override;

  Status exchange(const Caller& caller, InodeId parent, std::string_view name, InodeId new_parent,
                  std::string_view new_name) override;
  Status setxattr(const Caller& caller, InodeId inode, std::string_view name, std::string_view value,
                  uint32_t flags) override;
  Result<std::string> getxattr(const Caller& caller, InodeId inode, std::string_view name) override;
  Result<std::vector<std::string>> listxattr(const Caller& caller, InodeId inode) override;
  Status removexattr(const Caller& caller, InodeId inode, std::string_view name) override;

  Result<ReadDirPage> readdir(const Caller& caller, InodeId dir, std::string_view after, size_t limit) override;
  Result<StatFs> statfs() override;

  Result<OpenFile> open(const Caller& caller, InodeId inode, uint32_t flags, uint64_t client) override;
  Result<OpenFile> create_open(const Caller& caller, InodeId parent, std::string_view name, uint32_t mode,
                               uint32_t flags, uint64_t client) override;
  Status close(InodeId inode, uint64_t session, uint64_t length_hint) override;
  // The closes without a length hint in one transaction (at most kMaxCloseBatch per call; more is EINVAL), the
  // others (which may ask storage for the length) one by one as close().
  std::vector<Status> close_batch(std::span<const CloseRequest> closes) override;
  Result<Inode> sync(InodeId inode, uint64_t length_hint) override;
  Status report_length(InodeId inode, uint64_t length) override;
  Status renew_client(uint64_t client) override;

  // The storage space statfs reports (bytes usable at the chain table's replication; ff-meta sets it
  // from mgmtd's view of the targets, chain_table_space in client.h). Until set, statfs reports
  // MetaConfig::capacity_bytes as both total and free.
  void set_storage_space(uint64_t capacity_bytes, uint64_t free_bytes);

  // Removes the sessions of clients whose lease ran out (and deletes inodes only they kept alive);
  // returns how many sessions were reclaimed. Run periodically by ff-meta.
  Result<size_t> reclaim_expired_sessions();
  // Deletes the chunks of removed files (FileStorage::remove_file) and their records; returns how many
  // files were collected. Without storage it just drops the records.
  Result<size_t> collect_garbage(size_t limit = 1024);

  // Checks the whole namespace in one read-only transaction (tests, tools; reads every key): every entry
  // names a live inode of its type, no inode is unreachable (except unlinked ones still open), link
  // counts match the entries (directories: 2 + subdirectories), every directory has one name and its
  // parent field matches it, and parent chains reach the root (no cycles).
  struct FsckReport {
    size_t inodes = 0;
    size_t entries = 0;
    std::vector<std::string> problems;  // empty when consistent
  };
  Result<FsckReport> fsck();

  // Live sessions of an inode (tests, tools).
  Result<size_t> session_count(InodeId inode);

  const MetaConfig& config() const { return config_; }

 private:
  struct Impl;
  MetaService(MetaConfig config, std::unique_ptr<Impl> impl);
  // An inode not yet in the store: a fresh id, type, mode (07777 bits), link count, times now.
  Result<Inode> new_node(FileType type, uint32_t mode, uint32_t nlink);
  // A regular file's inode with its layout, not yet in the store.
  Result<Inode> new_file_node(uint32_t mode);
  static Status check_open_flags(uint32_t flags, uint64_t client);
  uint64_t new_session_id();
  void record_session(kv::Transaction& txn, InodeId id, uint64_t session, uint64_t client, bool write);
  MetaConfig config_;
  std::unique_ptr<Impl> impl_;
};

}  // namespace ff::fs::meta
