// StorageService: one storage server's CRAQ logic over its targets (one ChunkStore each).
//
// Write path (CRAQ): a client's WriteReq enters at the chain head. Each target of the write chain
// checks the chain version, takes the chunk's lock (FIFO, bounded), stores the update as pending
// (ChunkStore::put_pending), forwards it to its successor and waits for the acknowledgement; the tail
// stores and commits, then acknowledges; each predecessor commits on the acknowledgement and passes it
// back; the head answers the client. A retried write (same ClientRequestId) is answered from a bounded
// dedupe table, or joins the attempt in flight. A forward that fails (timeout, stale routing) is retried
// with the latest routing until the request's deadline, as in 3FS.
// Reads: any serving target; strict reads of a chunk with a pending version answer [chunk_dirty].
// A read that finds corruption (data_loss) repairs the chunk from another serving replica and retries.
// Recovery: the last serving target before a syncing successor dumps the successor's chunk metadata,
// sends full-chunk replacements for what differs (under the chunk lock), removes what it lacks, then
// sends SyncDone; writes forwarded to a syncing target are full-chunk replacements.
// Leases: heartbeats every heartbeat_interval_ns; with no successful heartbeat for T/2 the service stops
// serving (answers [not_serving]) until mgmtd answers again. A (re)started service heartbeats only once
// mgmtd shows all its targets offline/lastsrv, so every restarted target goes through recovery.
//
// Threading: everything runs on the executor given to the constructor; ChunkStore calls go through
// Executor::offload.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <string>

#include "ff/common/result.h"
#include "ff/fs/chunk_store.h"
#include "ff/fs/messages.h"
#include "ff/fs/transport.h"
#include "ff/fs/types.h"

namespace ff::fs {

struct StorageConfig {
  NodeId node = 0;
  std::string address;        // this server's RPC address, as registered with mgmtd
  std::string mgmtd_address;
  int64_t heartbeat_interval_ns = 1'000'000'000;
  int64_t heartbeat_timeout_ns = 10'000'000'000;  // T (as mgmtd's); serving stops after T/2 without mgmtd
  int64_t rpc_timeout_ns = 2'000'000'000;         // one forward / sync call
  int64_t retry_backoff_ns = 50'000'000;          // between forward retries
  uint32_t max_lock_waiters = 64;                 // per chunk; more answer [busy]
  uint32_t max_inflight_requests = 4096;          // per service; more answer [busy]
  uint32_t dedupe_entries = 65536;                // completed write ids remembered
  uint32_t sync_batch = 16;                       // chunks replaced concurrently during recovery (at least 1)
  uint32_t sync_dump_page = 65536;                // chunk metadata per SyncDumpMeta answer (~3 MB; at least 1)
  // Background scrub (0: off): this node's targets' committed chunks are read back one at a time, each checked
  // against its CRC32C as any read is, at most scrub_bytes_per_s; a corrupt one is repaired from a replica under its
  // chunk lock, as a read would. After a whole pass over every target, a pause of scrub_pass_pause_ns. Each target's
  // place in the pass is saved in its store (ChunkStore::save_scrub_cursor) at most every scrub_save_interval_ns and
  // when the target is done, and a restarted service goes on from there.
  uint64_t scrub_bytes_per_s = 0;
  int64_t scrub_pass_pause_ns = 86'400'000'000'000;  // a day
  int64_t scrub_save_interval_ns = 1'000'000'000;
};

// Protocol bugs a test may switch on to prove the simulation's checkers catch them.
struct StorageBugs {
  bool tail_acks_without_storing = false;  // the tail acknowledges a write it did not store
  bool skip_sync = false;                  // recovery sends SyncDone without transferring chunks
  bool ignore_chain_version = false;       // accept requests with any chain version
  bool commit_before_ack = false;          // not a bug: the protocol before ack_then_commit (for A/B runs)
  bool sequential_forward = false;         // not a bug: middle targets store before they forward (for A/B runs)
  bool synced_commit_after_ack = false;    // not a bug: commits after the acknowledgement are synced (for A/B runs)
  bool sequential_head = false;            // not a bug: the head stores before it forwards (for A/B runs)
  bool unordered_removal = false;          // a removal by range ignores the writes in flight in its range
};

// Observer of committed versions, for the simulation's checkers. Called on the executor.
using CommitObserver = std::function<void(TargetId, const ChunkId&, uint32_t version, uint32_t crc32c)>;

// Opens (or creates) the ChunkStore of one target of this node. Called on the executor, once per
// target when routing first lists it.
using ChunkStoreFactory = std::function<Result<std::shared_ptr<ChunkStore>>(TargetId)>;

class StorageService {
 public:
  // executor and rpc must outlive the service. rpc's completions run on executor.
  StorageService(StorageConfig config, Executor& executor, RpcClient& rpc, ChunkStoreFactory stores);
  ~StorageService();
  StorageService(const StorageService&) = delete;
  StorageService& operator=(const StorageService&) = delete;

  // Registers with mgmtd and starts the heartbeat loop. Executor thread.
  Status start();
  // Stops timers and answers every later request [not_serving]; in-flight requests are dropped.
  void stop();

  // The RPC entry point for every storage request. Executor thread.
  void handle(const ServerContext& context, Request request, Reply reply);

  // Any thread (a transport's receiving thread, before it posts to the executor): serves a plain
  // strict/relaxed ReadReq, or a BatchReadReq of such reads, without the executor when the transport's Reply
  // works from any thread: the checks of handle() (serving, lease, chain version, target serving) against a
  // snapshot the executor publishes (for a batch: every read's), the read(s) on an offload worker, the reply
  // from there. Returns false, leaving request and
  // reply untouched, when the request must go through handle() (any other request, a failed check,
  // which handle() then answers with its error).
  bool try_handle_read(const ServerContext& context, Request& request, Reply& reply);

  // State for tests and the stats line. Executor thread.
  bool serving() const;
  RoutingVersion routing_version() const;
  LocalTargetState local_state(TargetId target) const;
  std::shared_ptr<ChunkStore> store(TargetId target) const;

  void set_bugs(const StorageBugs& bugs);
  void set_commit_observer(CommitObserver observer);

  struct Stats {
    uint64_t writes = 0, forwards = 0, reads = 0, dirty_reads = 0, repairs = 0, syncs_done = 0,
             chunks_synced = 0, busy = 0, stale_chain = 0, dedupe_hits = 0;
    uint64_t parallel_forwards = 0;  // forwards a head or middle target sent while storing the update itself
    uint64_t tail_commits_in_worker = 0;         // tail commits done in the worker call that stored the version
    uint64_t tail_commits_left_to_executor = 0;  // ... that the routing published meanwhile left to the executor
    uint64_t local_reads = 0;        // reads answered with where the bytes lie (ReadReq::local_host), of `reads`
    uint64_t fast_reads = 0;         // reads served in the fast lane (try_handle_read), of `reads`
    uint64_t inline_reads = 0;       // ... on the transport's receiving thread (ServerContext::receiver_idle)
    uint64_t chunks_scrubbed = 0, scrub_corruptions = 0, scrub_passes = 0;  // background scrub (scrub_bytes_per_s)
    uint64_t scrub_places_read = 0;  // saved scrub places read from the targets' stores (once per target per pass)
  };
  Stats stats() const;

 private:
  struct State;
  std::unique_ptr<State> state_;
};

}  // namespace ff::fs
