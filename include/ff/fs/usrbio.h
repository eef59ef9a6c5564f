// USRBIO-style batched zero-copy I/O (issue #6 item 3, second half; anchor: 3FS's USRBIO).
//
// An application process and a server (in the same process, or the ff-fuse daemon for other processes)
// share two memory objects under /dev/shm:
//   - an Iov: a data buffer (/dev/shm/ff-iov-<name>), created once, any size; reads land in it and
//     writes are taken from it, with no copy on our side (FileClient reads straight into it);
//   - an Ior: a ring pair (/dev/shm/ff-ior-<name>): submission entries {op, file, offset, length, iov
//     offset, user data} and completion entries {result bytes or -errno, user data}, fixed capacity,
//     single-producer/single-consumer indices with acquire/release atomics.
// The application prepares many entries (prep_io), publishes them and rings the doorbell once (submit),
// then reaps completions (wait_for_ios). The server's thread takes ALL pending entries per wake-up and
// runs them as one read_batch and one write_batch.
//
//   FF_ASSIGN_OR_RETURN(auto iov, usrbio::Iov::create("train0", 1ull << 30));
//   FF_ASSIGN_OR_RETURN(auto ior, usrbio::Ior::create("train0", iov, {.entries = 1024}));
//   FF_RETURN_IF_ERROR(ior.register_with_mount("/mnt/ff"));   // other process: ff-fuse serves it
//   int fd = ::open("/mnt/ff/data.bin", O_RDONLY);
//   FF_ASSIGN_OR_RETURN(usrbio::FileId file, usrbio::register_fd(fd));
//   for (int i = 0; i < 64; ++i) FF_RETURN_IF_ERROR(ior.prep_read(file, i << 20, 1 << 20, i << 20, i).status());
//   FF_RETURN_IF_ERROR(ior.submit().status());
//   std::vector<usrbio::Completion> done(64);
//   FF_ASSIGN_OR_RETURN(size_t n, ior.wait_for_ios(done, 64, /*timeout_ms=*/10'000));
//
// Doorbell: a futex on a 32-bit word in the ring's shared memory (no file descriptor to pass, works
// across processes, survives a server restart); the server and a waiting client set a "waiting" flag,
// so a submit or a completion makes a futex_wake system call only when the other side sleeps.
// Files: entries name files by inode id (FileId). In-process users take it from meta; other processes
// open the file through the FUSE mount and call register_fd(), which returns the fd's st_ino (ff-fuse
// reports our inode id as st_ino). The server opens each file once per ring, lazily, with the
// credentials of the ring's owner (meta checks permissions), and keeps the handle until a kClose
// entry or the ring's end.
// Registration with ff-fuse: register_with_mount() creates the symlink
// <mount>/.ff/usrbio/<name> -> /dev/shm/ff-ior-<name>; ff-fuse passes it to UsrbioRegistry, which
// starts a RingServer for it with the creator's uid/gid; unlinking the symlink (or the creator's death)
// ends it. See docs/fs-usrbio.md.
//
// Thread-safety and limits (the contract of every class below):
//   - one Ior has ONE producer thread (prep_io/submit) and ONE consumer thread (wait_for_ios); they may
//     differ. Several producer threads on one Ior are not supported (use one Ior per thread);
//   - at most capacity() I/Os are in flight (prepared, submitted or completed but not reaped); prep_io
//     refuses more (resource_exhausted), so the completion ring can never overflow;
//   - entries of one submit run concurrently: no order between them (wait before dependent I/O);
//   - one RingServer serves one Ior with one thread, one batch at a time.
#pragma once

#include <sys/types.h>

#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "ff/common/result.h"
#include "ff/fs/file_client.h"
#include "ff/fs/meta.h"

namespace ff::fs::usrbio {

// The shared-memory names: /dev/shm/<prefix><name>. A name is 1..100 of [A-Za-z0-9._-], not "." or "..".
inline constexpr std::string_view kIovPrefix = "ff-iov-";
inline constexpr std::string_view kIorPrefix = "ff-ior-";
inline constexpr std::string_view kShmDir = "/dev/shm/";
// The virtual directory of a FUSE mount where rings are registered (symlinks), relative to the mount.
inline constexpr std::string_view kVirtualDir = ".ff/usrbio";
inline constexpr uint32_t kMaxEntries = 1u << 16;

// Checks a ring/iov name; the error names the name and what is allowed.
Status validate_name(std::string_view name);

using FileId = uint64_t;  // an inode id (meta::InodeId); 0 is never a file

enum class Op : uint8_t {
  kRead = 1,   // file [offset, offset+length) -> iov [iov_offset, iov_offset+length); result: bytes read
  kWrite = 2,  // iov -> file; result: bytes written
  kClose = 3,  // the server closes its handles of `file` (offset/length ignored); result 0 or -errno
};

// One submission entry as it lies in shared memory (plain data; the server copies it out first).
struct SubmitEntry {
  FileId file = 0;
  uint64_t offset = 0;
  uint64_t length = 0;
  uint64_t iov_offset = 0;
  uint64_t user_data = 0;
  uint8_t op = 0;  // Op
  uint8_t reserved[7] = {};
};
static_assert(sizeof(SubmitEntry) == 48);

// One completion: result >= 0 is the number of bytes transferred (reads are short at the end of the
// file), result < 0 is -errno: -EINVAL (bad op, iov range outside the Iov, length over 4 GiB),
// -EBADF (file 0 or an inode that does not exist), -EACCES (owner may not open it), -EIO (storage).
struct Completion {
  int64_t result = 0;
  uint64_t user_data = 0;
};
static_assert(sizeof(Completion) == 16);

// ---------------------------------------------------------------------------------------------------
// Iov: a named shared-memory data buffer. Move-only; the creator unlinks the name on destruction (the
// memory stays valid in processes that still map it).
class Iov {
 public:
  // Creates /dev/shm/ff-iov-<name> with `size` bytes (sparse: pages are allocated when touched; 1 byte
  // .. 1 TiB) and maps it. already_exists when the name is taken (remove_stale() clears a dead one).
  static Result<Iov> create(std::string_view name, uint64_t size);
  // Maps an existing Iov (a server, or another process of the application).
  static Result<Iov> open(std::string_view name);
  // Unlinks /dev/shm/ff-iov-<name> and /dev/shm/ff-ior-<name> left by a crashed process (ENOENT ok).
  static Status remove_stale(std::string_view name);

  Iov() = default;
  ~Iov();
  Iov(Iov&& other) noexcept;
  Iov& operator=(Iov&& other) noexcept;
  Iov(const Iov&) = delete;
  Iov& operator=(const Iov&) = delete;

  std::byte* data() const { return data_; }
  uint64_t size() const { return size_; }
  const std::string& name() const { return name_; }
  std::string path() const;  // /dev/shm/ff-iov-<name>
  // [offset, offset+length) as a span, or invalid_argument naming the range and the Iov's size.
  Result<std::span<std::byte>> range(uint64_t offset, uint64_t length) const;

 private:
  void reset();
  std::string name_;
  std::byte* data_ = nullptr;
  uint64_t size_ = 0;
  bool owner_ = false;
};

// ---------------------------------------------------------------------------------------------------
struct IorOptions {
  uint32_t entries = 1024;  // ring capacity: a power of two, 2 .. kMaxEntries
  // How the server groups submitted entries into batches (3FS's io_depth of hf3fs_iorcreate4):
  //   0: everything submitted so far, as soon as it sees it;
  //   n > 0: exactly n entries per batch (e.g. one training sample batch): it waits until n are
  //          submitted, or, with io_timeout_ms > 0, until the first waiting entry is that old, then takes
  //          what is there;
  //   n < 0: as soon as it sees them, at most -n per batch.
  // |io_depth| <= entries. The server's own RingServerOptions::max_batch caps batches as well.
  int32_t io_depth = 0;
  int32_t io_timeout_ms = 0;  // with io_depth > 0: the longest an entry waits for its batch to fill (0: no limit)
  // The first ring index (free-running 32-bit indices). Tests start near 2^32 to cross the wrap-around.
  uint32_t start_index = 0;
};

// What the client sees of its server (published in the ring by the server).
struct ServerStatus {
  enum class State : uint32_t { kNone = 0, kAttached = 1, kDetached = 2, kBroken = 3 };
  State state = State::kNone;
  int64_t heartbeat_age_ms = -1;  // since the server last beat (-1: never); it beats every ~100 ms
  uint32_t server_pid = 0;        // in the server's pid namespace
};
std::string_view server_state_name(ServerStatus::State state);

// Ior: the client side of a submission/completion ring pair bound to one Iov. Move-only (do not move
// it while another thread uses it). Destruction unregisters it from a mount and unlinks the shm name.
class Ior {
 public:
  // Creates /dev/shm/ff-ior-<name> for `iov` (the ring records the Iov's name and size; the server maps
  // the Iov by that name). The Iov must outlive the Ior's use.
  static Result<Ior> create(std::string_view name, const Iov& iov, IorOptions options = {});

  Ior();
  ~Ior();
  Ior(Ior&& other) noexcept;
  Ior& operator=(Ior&& other) noexcept;
  Ior(const Ior&) = delete;
  Ior& operator=(const Ior&) = delete;

  // Producer thread. Prepares one entry (not visible to the server until submit()); returns its ring
  // index. invalid_argument: bad op, length 0 or > 4 GiB, iov range outside the Iov, file 0;
  // resource_exhausted: capacity() I/Os already in flight (reap some first).
  Result<uint32_t> prep_io(Op op, FileId file, uint64_t offset, uint64_t length, uint64_t iov_offset,
                           uint64_t user_data);
  Result<uint32_t> prep_read(FileId file, uint64_t offset, uint64_t length, uint64_t iov_offset, uint64_t user_data) {
    return prep_io(Op::kRead, file, offset, length, iov_offset, user_data);
  }
  Result<uint32_t> prep_write(FileId file, uint64_t offset, uint64_t length, uint64_t iov_offset, uint64_t user_data) {
    return prep_io(Op::kWrite, file, offset, length, iov_offset, user_data);
  }
  // Asks the server to close its handles of `file` (after every earlier entry of it completed).
  Result<uint32_t> prep_close(FileId file, uint64_t user_data) { return prep_io(Op::kClose, file, 0, 0, 0, user_data); }
  // Producer thread. Publishes every prepared entry and rings the doorbell once; returns how many were
  // published (0 is fine). unavailable when the server detached or found the ring broken.
  Result<uint32_t> submit();

  // Consumer thread. Waits until at least min_results completions are ready (0: do not wait), then
  // reaps up to out.size() of them into `out` and returns how many. At the timeout it reaps nothing and
  // returns deadline_exceeded naming what it waited for and the server's state and heartbeat age (a
  // dead server shows as an old heartbeat, forgotten submits as "prepared but not submitted").
  // invalid_argument when min_results > out.size() or > capacity(); unavailable when the server
  // detached or broke before enough completions came.
  Result<size_t> wait_for_ios(std::span<Completion> out, size_t min_results, int64_t timeout_ms);

  // Registers the ring with the ff-fuse daemon serving `mount_path` (symlink in its kVirtualDir); the
  // daemon's server is attached when this returns. The destructor unregisters.
  Status register_with_mount(std::string_view mount_path);
  Status unregister_from_mount();

  uint32_t capacity() const;
  uint32_t in_flight() const;  // prepared + submitted + completed-not-reaped
  uint32_t prepared() const;   // prepared, not yet submitted
  const std::string& name() const;
  std::string path() const;  // /dev/shm/ff-ior-<name>
  ServerStatus server_status() const;

 private:
  struct State;
  std::unique_ptr<State> state_;
};

// The file id of an fd opened through an ff-fuse mount: its st_ino (our inode id). invalid_argument
// when the fd is not a regular file, or, with mount_path, not on that mount (st_dev differs).
Result<FileId> register_fd(int fd, std::string_view mount_path = {});

// ---------------------------------------------------------------------------------------------------
// Server side.

// The I/O operations a RingServer needs: FileClient's open/close/read_batch/write_batch, behind an
// interface so the server is testable with a fake and FileClient is adapted in one place.
// Thread-safety: implementations are called from many RingServer threads at once.
class BatchIo {
 public:
  using ReadOp = FileClient::ReadOp;
  using WriteOp = FileClient::WriteOp;
  virtual ~BatchIo() = default;
  // Errors are meta-style (errno-tagged) Status values; the server completes entries with -errno_of().
  virtual Result<FileHandle> open(const meta::Caller& caller, meta::InodeId inode, uint32_t flags) = 0;
  virtual Status close(FileHandle handle) = 0;
  virtual std::vector<Result<size_t>> read_batch(std::span<const ReadOp> ops) = 0;
  virtual std::vector<Result<size_t>> write_batch(std::span<const WriteOp> ops) = 0;
};

// BatchIo over a FileClient (which must outlive it). Defined in ff::fs_usrbio when ff::fs_client is
// built (src/fs/usrbio/file_client_batch_io.cc).
class FileClientBatchIo final : public BatchIo {
 public:
  explicit FileClientBatchIo(FileClient& client) : client_(client) {}
  Result<FileHandle> open(const meta::Caller& caller, meta::InodeId inode, uint32_t flags) override;
  Status close(FileHandle handle) override;
  std::vector<Result<size_t>> read_batch(std::span<const ReadOp> ops) override;
  std::vector<Result<size_t>> write_batch(std::span<const WriteOp> ops) override;

 private:
  FileClient& client_;
};

struct RingServerOptions {
  meta::Caller caller;                  // files are opened as this user (the ring's owner)
  int64_t heartbeat_interval_ms = 100;  // also the longest the thread sleeps between checks
  uint32_t max_batch = 0;               // entries per batch (0: all pending)
  // Batches whose I/O may run at once (3FS also runs several batches of one ring in parallel): the ring
  // thread takes and validates the next batch while earlier ones run on this many pool threads. 1: one
  // batch at a time on the ring thread. Entries of different batches complete in any order (overlapping
  // writes of two batches race, as two concurrent pwrite(2)s would); a batch with a close waits for every
  // earlier batch, so the close follows their I/O.
  uint32_t max_batches_in_flight = 4;
  uint32_t max_open_files = 4096;       // per ring; more distinct files complete with -EMFILE
  // Process that owns the ring (0: none). When it is gone (or its start time changed: pid reuse) the
  // server stops by itself (UsrbioRegistry reaps it).
  pid_t owner_pid = 0;
  // Maps an entry's file id to an inode (ff-fuse: st_ino -> inode; default: identity).
  std::function<Result<meta::InodeId>(FileId)> map_file;
  // Called after each write entry that wrote bytes (inode, offset, bytes written), on the thread that ran
  // its batch: ff-fuse drops the kernel's cached pages of that range, so readers of the mount see it.
  std::function<void(meta::InodeId, uint64_t, uint64_t)> on_written;
};

// Serves one Ior: a thread waits on its doorbell, takes the pending entries as a batch (as the ring's
// io_depth asks), validates them, opens files as needed, and runs the batch's reads as ONE
// BatchIo::read_batch straight into the Iov and its writes as ONE write_batch from it, on one of
// max_batches_in_flight pool threads while it takes the next batch; each batch's completions are
// published when it is done. A bad entry completes with -errno and affects no
// other entry. A ring whose indices are corrupt (more published entries than its capacity) is marked
// broken and no longer served.
class RingServer {
 public:
  // Attaches to /dev/shm/ff-ior-<ior_name> and its Iov, checks their layout (and, unless the caller is
  // uid 0, that the caller owns both files), and starts the thread. `io` must outlive
  // the server.
  static Result<std::unique_ptr<RingServer>> start(std::string_view ior_name, BatchIo& io,
                                                   RingServerOptions options = {});
  // Stops the thread (it finishes its current batch), closes its file handles and marks the ring
  // detached, so the client's waits fail fast instead of timing out.
  ~RingServer();
  RingServer(const RingServer&) = delete;
  RingServer& operator=(const RingServer&) = delete;

  void stop();
  // False once stopped, broken, or the owner process is gone.
  bool running() const;
  // True once the server stopped because its owner process is gone.
  bool owner_gone() const;
  const std::string& name() const;
  const std::string& iov_path() const;  // /dev/shm/ff-iov-<name> of the ring's Iov
  // After the owner is gone (else nothing): unlinks the ring's shm file and, with iov_too, its Iov's,
  // each only if the path still names the file mapped at start (a new one of that name is left alone).
  // Returns how many files it removed.
  int remove_files(bool iov_too);

  struct Stats {
    uint64_t wakeups = 0;  // doorbells and heartbeats that found work
    uint64_t batches = 0;  // BatchIo calls (read_batch + write_batch)
    uint64_t entries = 0;  // entries completed
    uint64_t errors = 0;   // entries completed with -errno
    uint64_t bytes_read = 0;
    uint64_t bytes_written = 0;
    uint64_t max_batch_entries = 0;  // largest number of entries taken at one wake-up
  };
  Stats stats() const;

 private:
  struct Impl;
  explicit RingServer(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

// ---------------------------------------------------------------------------------------------------
// The rings an ff-fuse daemon serves, driven by its virtual directory <mount>/.ff/usrbio/:
//   symlink(<dir>, name, target)  -> register_ring(name, target, caller, pid)
//   unlink(<dir>, name)           -> unregister_ring(name)
//   readdir / readlink / lookup   -> names() / target_of(name)
// Errors are meta-style (errno-tagged) so the daemon replies with meta::errno_of(status): EINVAL for a
// bad name or a target that is not /dev/shm/ff-ior-<name>, EEXIST, ENOENT, EACCES (the caller does not
// own the shm files); a ring whose layout is wrong is EINVAL with the reason in the message.
// Thread-safety: every method may be called from any thread.
struct RegistryOptions {
  int64_t reap_interval_ms = 1000;  // how often rings of dead owners are dropped (0: only by reap())
  // A reaped ring whose owner died leaves its shm files in /dev/shm (the client never unlinks them):
  // remove them (the ring's file, and its Iov's unless another registered ring uses that Iov).
  bool remove_files_of_dead_owners = true;
  uint32_t max_rings = 1024;
  RingServerOptions server;  // template for every ring (caller and owner_pid are set per ring)
};

class UsrbioRegistry {
 public:
  // `io` must outlive the registry.
  explicit UsrbioRegistry(BatchIo& io, RegistryOptions options = {});
  ~UsrbioRegistry();  // stops every ring
  UsrbioRegistry(const UsrbioRegistry&) = delete;
  UsrbioRegistry& operator=(const UsrbioRegistry&) = delete;

  // link_name: the symlink's name; it must equal the ring name in the target. target:
  // "/dev/shm/ff-ior-<name>" (or "ff-ior-<name>"). pid: the creating process (0: not watched).
  Status register_ring(std::string_view link_name, std::string_view target, const meta::Caller& caller, pid_t pid = 0);
  Status unregister_ring(std::string_view link_name);
  Result<std::string> target_of(std::string_view link_name) const;
  std::vector<std::string> names() const;  // sorted
  // Drops rings whose server stopped (owner died, ring broken); returns how many.
  size_t reap();

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace ff::fs::usrbio
