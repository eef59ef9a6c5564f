// The metadata service over the network (ff-meta, issue #6 item 2): the server (gRPC, or our TCP transport) that
// exposes a meta::MetaApi (a MetaService in ff-meta), RemoteMeta, the MetaApi client over one or more ff-meta
// addresses, and StorageFiles, the meta::FileStorage over the storage layer's StorageClient that makes file
// lengths exact and removes chunks.
//
//   auto meta = RemoteMeta::connect({.addresses = {"tcp://10.0.0.1:9300", "tcp://10.0.0.2:9300"}});
//   FF_ASSIGN_OR_RETURN(Inode file, (*meta)->create(caller, kRootInode, "a", 0644));
//
// Wire: one gRPC method Meta.Call (src/fs/meta_rpc/proto/ff/fs/meta.proto), and CallBatch; each request carries the
// caller (uid, gid, groups) and one operation; the operation's Status travels in the response with its
// code and message, so meta::errno_of() gives the same errno as in-process. For a tcp:// address the same messages,
// serialized, travel in MetaCallReq / MetaCallRsp frames of our TCP transport (ff/fs/rpc/tcp_transport.h), with the
// same deadlines, busy answers, request ids and failover.
//
// Failover and retries (RemoteMeta): ff-meta servers are stateless, so any of them serves any call. A
// call that ends unavailable or past its per-attempt deadline is sent again to the next address, with a
// growing pause once every address failed, until op_timeout_ms or max_attempts. Non-idempotent calls
// carry a request id; a server that saw it answers with the first outcome (MetaServerOptions::
// dedupe_requests). A retry that reaches another server (or a restarted one) may still find the
// operation executed (the reply was lost), so a repeated call of such an operation is interpreted
// (docs/fs-meta.md, "RemoteMeta"):
//   - create / mknod / mkdir / symlink answered EEXIST: the name is looked up; when it holds an inode
//     of the asked type, owned by the caller, with the asked mode (symlinks: target), created since the
//     first attempt began (ctime, minus recovery_clock_skew_ms), it is returned as created;
//   - link answered EEXIST: success when the new name holds the linked inode;
//   - unlink / rmdir answered ENOENT: success (the name is gone either way);
//   - rename answered ENOENT: success when the source name is gone and the destination name exists;
//   - close answered EBADF, removexattr answered ENODATA: success (the session / attribute is gone);
//   - setxattr with kXattrCreate answered EEXIST: success when the attribute holds the value sent;
//   - exchange (its own inverse, so never resent blindly): the names' inodes are looked up before,
//     each send is one attempt, and after a transport failure swapped names mean success, unchanged
//     names a resend, anything else the transport error;
//   - open: may leave a second session of this client on the inode (released when the client's
//     lease runs out); everything else is idempotent and simply sent again.
//
// Thread-safety: every method of RemoteMeta and StorageFiles may be called from any number of threads;
// MetaRpcServer's methods from any thread.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "ff/common/result.h"
#include "ff/fs/client.h"
#include "ff/fs/meta.h"
#include "ff/fs/rpc/metrics.h"
#include "ff/fs/storage_files.h"
#include "ff/fs/transport.h"

namespace ff::fs::meta {

// ---------------------------------------------------------------- server
struct MetaServerOptions {
  // host:port (gRPC; port 0: the OS picks one, see address()), tcp://host:port (our TCP transport), or unix:/path
  // (gRPC for clients on this host).
  std::string listen = "127.0.0.1:0";
  int max_threads = 256;  // worker threads, each running one blocking MetaApi call at a time
  // Requests waiting for a worker; one that finds the queue full is answered busy (RESOURCE_EXHAUSTED, or
  // in a batch a response tagged wire::kBusyTag), and RemoteMeta sends it again.
  size_t max_queued = 65'536;
  // Run reads (lookup, getattr, resolve, readlink, readdir, statfs) on the gRPC thread that received
  // them instead of a worker: right for stores whose reads do not wait on the network (RocksDB, memory),
  // wrong for etcd (a read there blocks a gRPC polling thread for an etcd round trip).
  bool inline_reads = false;
  rpc::MetricsRegistry* metrics = nullptr;  // optional: ff_meta_requests_total, latencies, errors
  // Remember the outcome of non-idempotent requests by their request id (RemoteMeta sends one), so a
  // retry after a lost reply that reaches this server again gets the first outcome (or waits for the
  // first attempt still running) instead of running twice. In memory: retries that fail over to
  // another server, or reach this one after a restart, fall back to RemoteMeta's interpretation.
  bool dedupe_requests = true;
  int64_t dedupe_ttl_ms = 120'000;     // how long an outcome is kept (well past RemoteMeta's op_timeout_ms)
  size_t dedupe_max_entries = 65'536;  // bound of the table; the oldest finished entries go first
};

class MetaRpcServer {
 public:
  // Serves `api` (shared: replace_api() may swap it while serving).
  static Result<std::unique_ptr<MetaRpcServer>> start(std::shared_ptr<MetaApi> api, MetaServerOptions options);
  ~MetaRpcServer();
  MetaRpcServer(const MetaRpcServer&) = delete;
  MetaRpcServer& operator=(const MetaRpcServer&) = delete;

  // [tcp://]host:port with the bound port (or the unix: address).
  const std::string& address() const;
  uint16_t port() const;
  // Requests that arrive later use `api`; running ones finish on the old one.
  void replace_api(std::shared_ptr<MetaApi> api);
  // Stops accepting calls; running calls get until timeout_ms, then are cancelled. Idempotent.
  void shutdown(int64_t timeout_ms);

  struct Stats {
    uint64_t requests = 0;      // operations received (each read of a batch counts)
    uint64_t errors = 0;        // operations that returned an error Status (ENOENT, EEXIST, ... included)
    uint64_t expired = 0;       // calls whose deadline had passed before they ran (not executed)
    uint64_t deduplicated = 0;  // retries answered with the outcome of their first attempt
    uint64_t batches = 0;       // CallBatch calls (several operations each)
  };
  Stats stats() const;

 private:
  struct Impl;
  explicit MetaRpcServer(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

// ---------------------------------------------------------------- client
struct RemoteMetaOptions {
  std::vector<std::string>
      addresses;  // ff-meta servers ("tcp://host:port", "host:port", "unix:/path"), from a random one on
  int64_t rpc_timeout_ms = 5'000;          // one attempt
  int64_t op_timeout_ms = 30'000;          // one operation, failover and retries included
  uint32_t max_attempts = 32;              // attempts per operation
  int64_t retry_backoff_ms = 20;           // pause after every address failed once; doubles up to 1 s
  int64_t recovery_clock_skew_ms = 5'000;  // tolerated clock difference client/servers (create recovery)
  int max_message_bytes = 64 << 20;
  // Batching: while this many batches are in flight, the calls of other threads wait and then go to the
  // server together, one Meta.CallBatch (at most kMaxCallBatch calls); a call that finds fewer in flight
  // goes at once. Reads and changes batch apart (each kind has this many in flight). 0: every call its
  // own RPC. A failed batch's calls are sent again one by one, as single calls (failover, request ids).
  int batches_in_flight = 2;
};

class RemoteMeta final : public MetaApi {
 public:
  // Creates the channels (nothing is sent yet). Fails on an empty or malformed address list.
  static Result<std::unique_ptr<RemoteMeta>> connect(RemoteMetaOptions options);
  ~RemoteMeta() override;
  RemoteMeta(const RemoteMeta&) = delete;
  RemoteMeta& operator=(const RemoteMeta&) = delete;

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
  // One request for all (MetaRequest.close_batch, deduplicated as close); after an ambiguous attempt an entry's
  // EBADF is success, as for close.
  std::vector<Status> close_batch(std::span<const CloseRequest> closes) override;
  Result<Inode> sync(InodeId inode, uint64_t length_hint) override;
  Status report_length(InodeId inode, uint64_t length) override;
  Status renew_client(uint64_t client) override;

  struct Stats {
    uint64_t calls = 0;
    uint64_t attempts = 0;
    uint64_t failovers = 0;  // attempts sent again (to the next address) after unavailable/deadline
    uint64_t recovered = 0;  // ambiguous outcomes interpreted as success (see the header comment)
    uint64_t batches = 0;    // Meta.CallBatch attempts (batching)
    uint64_t batched_calls = 0;  // calls sent in them
  };
  Stats stats() const;

  struct Impl;

 private:
  explicit RemoteMeta(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

// StorageFiles (meta::FileStorage over StorageClient) is declared in ff/fs/storage_files.h.

}  // namespace ff::fs::meta
