// ff::fs_fuse: the FUSE low-level file system under ff-fuse (issue #6 item 4). Names and attributes go
// to the metadata service through meta::MetaApi (an in-process MetaService or the RPC client of
// ff-meta); file data goes through a FileData (the native FileClient, or memory for tests and
// single-process use). Inode numbers are meta's inode ids (the root is 1 in both).
//
//   auto data = fuse::file_client_data(*client);            // or fuse::open_memory_data(meta)
//   FF_ASSIGN_OR_RETURN(auto fs, fuse::FuseFs::mount({.mountpoint = "/mnt/ff"}, meta, *data));
//   FF_RETURN_IF_ERROR(fs->run());  // until unmounted, SIGTERM/SIGINT/SIGHUP, or exit()
//
// What the kernel sees: every MetaApi operation (lookup, getattr, setattr incl. truncate and times,
// mknod, mkdir, unlink, rmdir, symlink, readlink, rename incl. RENAME_NOREPLACE and RENAME_EXCHANGE, link,
// open, create, read, write, flush, release, fsync, fallocate (mode 0 and KEEP_SIZE), opendir,
// readdir/readdirplus, statfs, access, set/get/list/removexattr); errors as the
// errno meta::errno_of gives; 1 MiB reads and writes; entry and attribute timeouts; a multithreaded
// session loop. Directory offsets: meta's readdir cursor is a name, so each open directory keeps a
// table offset -> name of the entries it returned (offsets 1 and 2 are "." and "..").
//
// Thread-safety: FuseFs serves requests from many libfuse threads at once; the MetaApi and FileData
// must be thread-safe and outlive the FuseFs. mount()/run()/exit() may be called from any thread,
// run() by one thread at a time.
#pragma once

#include <atomic>
#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "ff/common/result.h"
#include "ff/fs/chunk_store.h"
#include "ff/fs/meta.h"

namespace ff::fs {
class FileClient;
}

namespace ff::fs::fuse {

// The data side of the file system: opened files. Handles are opaque to FuseFs; each holds a meta
// session (an unlinked file stays readable until its handle closes). Errors: meta-style errno-tagged
// Status values (meta::errno_of).
class FileData {
 public:
  virtual ~FileData() = default;
  // flags: meta::OpenFlags.
  virtual Result<uint64_t> open(const meta::Caller& caller, meta::InodeId inode, uint32_t flags) = 0;
  // Creates the file (EEXIST when the name exists) and opens it. parent_after (optional) receives the parent
  // directory as the create left it, when known (else reset).
  virtual Result<uint64_t> create(const meta::Caller& caller, meta::InodeId parent, std::string_view name,
                                  uint32_t mode, uint32_t flags,
                                  std::optional<meta::Inode>* parent_after = nullptr) = 0;
  // Bytes read (short at the end of the file; holes read as zeros).
  virtual Result<size_t> read(uint64_t handle, uint64_t offset, std::span<std::byte> out) = 0;
  // The same read as pieces in file order that stay valid while the returned values live (no copy
  // into a buffer: FuseFs replies with them as an iovec list). False when this FileData cannot (the
  // default): FuseFs then calls read().
  virtual bool has_read_pieces() const { return false; }
  virtual Result<std::vector<SharedBytes>> read_pieces(uint64_t /*handle*/, uint64_t /*offset*/, size_t /*length*/) {
    return unimplemented("read_pieces is not supported by this FileData");
  }
  virtual Result<size_t> write(uint64_t handle, uint64_t offset, std::span<const std::byte> data) = 0;
  // Makes the length exact in meta; returns the inode as meta now holds it.
  virtual Result<meta::Inode> fsync(uint64_t handle) = 0;
  virtual Status close(uint64_t handle) = 0;
  // The inode as the handle knows it (length includes this handle's writes).
  virtual Result<meta::Inode> stat(uint64_t handle) = 0;
  // meta's setattr, through the data path so that a truncate is seen at once by open handles.
  virtual Result<meta::Inode> setattr(const meta::Caller& caller, meta::InodeId inode, const meta::SetAttr& attr) = 0;
};

// File data in this process's memory, for tests and single-process use without storage servers. It
// is also the meta::FileStorage of the MetaService it is used with (exact lengths, truncate, removal):
// pass storage() to MetaService::open, then bind(meta). Nothing survives the process.
class MemoryData final : public FileData, public meta::FileStorage {
 public:
  MemoryData();
  ~MemoryData() override;
  // The metadata service whose sessions handles open; must be called once before use.
  void bind(meta::MetaApi& meta);

  Result<uint64_t> open(const meta::Caller& caller, meta::InodeId inode, uint32_t flags) override;
  Result<uint64_t> create(const meta::Caller& caller, meta::InodeId parent, std::string_view name, uint32_t mode,
                          uint32_t flags, std::optional<meta::Inode>* parent_after = nullptr) override;
  Result<size_t> read(uint64_t handle, uint64_t offset, std::span<std::byte> out) override;
  Result<size_t> write(uint64_t handle, uint64_t offset, std::span<const std::byte> data) override;
  Result<meta::Inode> fsync(uint64_t handle) override;
  Status close(uint64_t handle) override;
  Result<meta::Inode> stat(uint64_t handle) override;
  Result<meta::Inode> setattr(const meta::Caller& caller, meta::InodeId inode, const meta::SetAttr& attr) override;

  Result<uint64_t> file_length(const meta::Inode& inode) override;
  Status truncate(const meta::Inode& inode, uint64_t length) override;
  Status remove_file(const meta::Inode& inode) override;

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

// FileData over the native client (file_client.h). Defined only when ff::fs_client is built (then
// ff::fs_fuse has the compile definition FF_FUSE_HAVE_FILE_CLIENT). `client` must outlive the result.
std::unique_ptr<FileData> file_client_data(FileClient& client);

// The registry behind the virtual directory <mount>/.ff/usrbio/ (USRBIO rings, docs/fs-usrbio.md):
// symlink(2) there registers a ring, unlink(2) unregisters it, readdir/readlink list them. ff-fuse
// adapts usrbio::UsrbioRegistry to it. Errors are errno-tagged. Thread-safe.
class RingRegistry {
 public:
  virtual ~RingRegistry() = default;
  // pid: the registering process (the ring stops when it exits).
  virtual Status register_ring(std::string_view name, std::string_view target, const meta::Caller& caller,
                               int32_t pid) = 0;
  virtual Status unregister_ring(std::string_view name) = 0;
  virtual Result<std::string> target_of(std::string_view name) const = 0;
  virtual std::vector<std::string> names() const = 0;
  // FuseFs passes the function that drops the kernel's cached pages of a range (inode, offset, bytes) when
  // it mounts, and an empty one before it unmounts; rings call it after their writes, so files open
  // through the mount see what a ring wrote. Thread-safe in implementations.
  virtual void set_invalidate_data(std::function<void(meta::InodeId, uint64_t, uint64_t)> invalidate) {
    (void)invalidate;
  }
};

// Inode numbers of the virtual directory (far above any id meta hands out).
inline constexpr meta::InodeId kVirtualInodeBase = meta::InodeId{1} << 62;
inline constexpr meta::InodeId kVirtualFfDir = kVirtualInodeBase + 1;     // <mount>/.ff
inline constexpr meta::InodeId kVirtualRingsDir = kVirtualInodeBase + 2;  // <mount>/.ff/usrbio

struct FuseOptions {
  std::string mountpoint;
  double entry_timeout_s = 1.0;      // how long the kernel may cache a name -> inode
  double attr_timeout_s = 1.0;       // how long the kernel may cache attributes
  double negative_timeout_s = 0.0;   // how long the kernel may cache "no such name"
  uint32_t max_io_bytes = 1u << 20;  // max_read / max_write (1 MiB: the kernel's 256-page limit)
  uint32_t max_threads = 16;         // libfuse worker threads
  // Kernel readahead of the mount (its bdi's read_ahead_kb, set after mounting when we may: root). The
  // kernel's default, 128 KiB, splits sequential buffered reads into 128 KiB requests; 0 leaves it.
  uint32_t read_ahead_bytes = 1u << 20;
  // The kernel checks permissions against cached attributes (default_permissions); meta checks
  // again with the caller's ids. Off: meta alone decides, and access() asks meta's attributes.
  bool kernel_permissions = true;
  bool allow_other = true;  // users other than the mounter may use the mount (needs root or user_allow_other)
  bool direct_io = false;   // bypass the page cache (every read and write reaches ff-fuse at the caller's size)
  // readdirplus: listings carry each entry's attributes, one meta getattr per entry. Off by default:
  // meta has no batched attribute read, so a plain listing would cost one call per entry, while
  // `ls -l` without it costs the same calls as lookups.
  bool readdirplus = false;
  bool debug = false;  // libfuse's request trace on stderr
};

struct FuseStats {
  uint64_t requests = 0;
  uint64_t errors = 0;
  uint64_t read_bytes = 0;
  uint64_t reads = 0;                 // READ requests (read_bytes / reads: the kernel's request size)
  uint64_t most_concurrent_reads = 0;  // the most READ requests served at once (worker threads busy reading)
  uint64_t write_bytes = 0;
  uint64_t invalidations = 0;
  uint64_t fresh_dir_hits = 0;  // GETATTRs of a directory answered from this mount's own create (no meta call)
};

class FuseFs {
 public:
  // Creates the session and mounts it (the mountpoint must exist). The file system serves once run()
  // is called. `rings` (optional, must outlive the FuseFs): serve the virtual directory .ff/usrbio/.
  static Result<std::unique_ptr<FuseFs>> mount(FuseOptions options, meta::MetaApi& meta, FileData& data,
                                               RingRegistry* rings = nullptr);
  // Unmounts (if still mounted) and destroys the session.
  ~FuseFs();
  FuseFs(const FuseFs&) = delete;
  FuseFs& operator=(const FuseFs&) = delete;

  // Serves requests with a multithreaded loop until the file system is unmounted (fusermount3 -u),
  // SIGINT/SIGTERM/SIGHUP arrive (handlers installed for the duration of run), or exit() is called;
  // then unmounts. OK for a clean end.
  Status run();
  // Asks run() to return (async-signal-safe is NOT guaranteed; use from normal threads).
  void exit();
  FuseStats stats() const;

  struct Impl;

 private:
  explicit FuseFs(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

}  // namespace ff::fs::fuse
