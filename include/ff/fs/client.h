// StorageClient: the storage layer's client. Keeps routing information from mgmtd, sends writes to a
// chain's head and reads to any serving target (spread by a per-client counter), and retries on
// [chunk_dirty], stale chain versions, [not_serving], timeouts and unreachable nodes, refreshing
// routing between attempts; every operation is bounded by max_attempts and op_timeout_ns.
// A strict read that keeps finding the chunk dirty falls back to the chain's tail (always clean in
// CRAQ) before giving up.
//
// Threading: asynchronous; every method is called on, and every callback runs on, the executor given
// to the constructor. A blocking wrapper (for tools) waits on a future with a timeout from another
// thread.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <vector>

#include "ff/common/result.h"
#include "ff/fs/local_read.h"
#include "ff/fs/messages.h"
#include "ff/fs/transport.h"
#include "ff/fs/types.h"

namespace ff::fs {

struct ClientConfig {
  uint64_t client_id = 1;      // unique per client instance (write dedupe key)
  std::string mgmtd_address;
  int64_t rpc_timeout_ns = 2'000'000'000;
  int64_t op_timeout_ns = 30'000'000'000;   // whole operation, retries included
  int64_t retry_backoff_ns = 50'000'000;    // grows x2 per attempt up to 1 s
  uint32_t max_attempts = 32;
  uint32_t dirty_retries_before_tail = 3;
  // Local reads (local_read.h): reads that accept pieces ask targets on this host where the committed
  // bytes lie and read them from the target's file on the executor's offload threads, checked against
  // the segment CRCs; a mismatch reads over RPC. Off by default (the sim, tools); FileClient turns it on.
  bool local_reads = false;
  // Reads shorter than this go over RPC even with local_reads: for 4 KiB reads the RPC is the whole
  // cost and a local read only adds a hop to an offload thread (measured level or slower, docs/fs.md).
  uint64_t local_read_min_bytes = 32 << 10;
  // A local read longer than this goes to the disk in pieces of this length, each checked as it lands
  // (local_read.h, kLocalReadPieceBytes); 0: one read.
  uint64_t local_read_piece_bytes = kLocalReadPieceBytes;
  // A local read of a range read before starts reading where the last answer said the bytes lie while
  // the read's request is on its way (the RPC and the disk read overlap); the bytes are kept only if
  // the answer names the same place and every segment's CRC matches (local_read.h, LocalBytes).
  bool read_before_answer = true;
  // Cached local reads (with local_reads): a read of a chunk whose target on this host told this client where the
  // chunk's whole committed version lies reads the bytes from the target's file again without asking the target, as
  // long as the target's read stamps (read_stamps.h) show that no change of the chunk or of the target began since
  // it answered, and its lease holds; the stamps are checked again after the bytes are read, and every segment's
  // CRC. A read shorter than local_read_min_bytes that finds nothing cached asks for the whole version
  // (ReadReq::whole_chunk) and keeps the answer. At most `cached_local_read_chunks` chunks are kept (cleared when
  // full); 0 turns it off (docs/fs.md, "Cached local reads").
  uint32_t cached_local_read_chunks = 4096;
  // Coalescing of small reads sent over RPC (not local ones): while `read_rpcs_per_node` read RPCs to one
  // storage node are in flight, further reads of at most `coalesce_read_max_bytes` for that node wait, and go
  // out together as one BatchReadReq when one of those RPCs completes (each read keeps its own result, retries
  // and deadline). 0 turns it off. One RPC per read costs more CPU than the read itself at 4 KiB (docs/fs.md,
  // "Read coalescing").
  uint32_t read_rpcs_per_node = 1;
  uint64_t coalesce_read_max_bytes = 64 << 10;
  uint32_t max_reads_per_batch = 64;
  // Write coalescing: writes and truncates of one chunk by this client go to the head one at a time, in the order
  // they were made (so a retried write can never land after a later one of the same chunk), and while one is on its
  // way the next ones wait; when it completes, waiting writes of at most `coalesce_write_max_bytes` whose ranges
  // touch or overlap go out together as one write of their union (later bytes over earlier ones), up to
  // `max_coalesced_write_bytes`. Each gets that write's answer (its version, CRC and the chunk's length then); one
  // that a coalesced write's bad-input error ([oversize], [misaligned], [malformed]) reached is sent again on its
  // own. The head serializes a chunk's writes anyway (its chunk lock is held through the chain's round trip), so
  // sequential small writes at depth > 1 otherwise pay one whole chain round trip each (docs/fs.md, "Write
  // coalescing"). 0 turns it off: every write is sent at once.
  uint64_t coalesce_write_max_bytes = 64 << 10;
  uint64_t max_coalesced_write_bytes = 1 << 20;
};

class StorageClient {
 public:
  template <typename T>
  using Callback = std::function<void(Result<T>)>;

  // executor and rpc must outlive the client.
  StorageClient(ClientConfig config, Executor& executor, RpcClient& rpc);
  ~StorageClient();
  StorageClient(const StorageClient&) = delete;
  StorageClient& operator=(const StorageClient&) = delete;

  // Fetches routing now (also done lazily by every operation).
  void refresh_routing(Callback<RoutingVersion> done);
  const RoutingInfo& routing() const;
  // The targets' space as of the last refresh_routing (on the executor's thread, as routing()).
  const std::vector<TargetSpace>& space() const;

  // Writes data at offset of chunk in chain; done gets the committed version. `channel` selects the
  // write stream (request ids are (client_id, channel, seq)).
  void write(ChainId chain, const ChunkId& chunk, uint64_t offset, Bytes data, Callback<WriteRsp> done,
             uint32_t channel = 0);
  // The same with a shared payload (sent without copying it; the caller may keep using the bytes) and
  // the file's chunk size (WriteReq::chunk_size; 0: unknown), so the first write of a chunk reserves its
  // final block class.
  void write(ChainId chain, const ChunkId& chunk, uint64_t offset, SharedBytes data, Callback<WriteRsp> done,
             uint32_t channel, uint64_t chunk_size);
  // Makes the chunk exactly `length` bytes long (WriteReq::truncate): committed bytes past `length` go, a shorter chunk
  // (or none) is extended with zeros. One replicated version like a write, so there is never a moment without the
  // chunk's kept bytes; done gets the version (the current one when the chunk already had that length).
  void truncate(ChainId chain, const ChunkId& chunk, uint64_t length, Callback<WriteRsp> done, uint32_t channel = 0);
  // Reads committed data. kRelaxed returns committed bytes even while a write is pending.
  // accept_pieces: the answer's bytes may come in ReadRsp::pieces (left where the transport received
  // them) instead of `data`; the caller reads whichever is set. Then `done` of a successful read may
  // also run on the transport's thread instead of the executor (it must be thread-safe); failures
  // and retries stay on the executor. With ClientConfig::local_reads, such a read may be served from
  // the target's file on this host (its completion then runs on an offload thread).
  void read(ChainId chain, const ChunkId& chunk, uint64_t offset, uint64_t length, ReadMode mode,
            Callback<ReadRsp> done, bool accept_pieces = false);
  // A local read run by the caller's own thread for a read it is about to post (read_before_answer without the
  // hand-offs to the executor and an offload thread): claim_local_read (any thread) names the target whose
  // last answer for [offset, offset + length) of chunk said where the bytes lie on this host (null when no
  // answer did, or local reads are off); the caller passes it to read(), then calls run_local_read (which reads
  // the bytes in its thread, into `into` where they fit exactly: local_read.h, reads_into) and waits for the
  // read's `done`. The read keeps those bytes only as read_before_answer does, and the caller must keep `into`
  // alive and untouched until run_local_read returned and `done` ran (the answer may point into it).
  struct CallerLocalRead;
  std::shared_ptr<CallerLocalRead> claim_local_read(const ChunkId& chunk, uint64_t offset, uint64_t length,
                                                    std::span<std::byte> into);
  void read(ChainId chain, const ChunkId& chunk, uint64_t offset, uint64_t length, ReadMode mode,
            Callback<ReadRsp> done, bool accept_pieces, std::shared_ptr<CallerLocalRead> caller_read);
  static void run_local_read(const std::shared_ptr<CallerLocalRead>& caller_read);
  // A read served at once on the calling thread (any thread) where a kept answer of cached local reads says the
  // bytes lie (ClientConfig::cached_local_read_chunks): the bytes of [offset, offset + length) read from the target's
  // file, every crc segment checked, then the target's read stamps (nothing of the chunk or the target changed
  // meanwhile). The answer's bytes come in ReadRsp::pieces (empty past the end). nullopt when no kept answer may serve
  // it (none, the routing changed since, the chunk changed, the bytes did not check out): then read() as usual. Lets
  // a synchronous caller read a kept chunk without any hand-off to the executor or an offload thread.
  std::optional<Result<ReadRsp>> read_cached_now(ChainId chain, const ChunkId& chunk, uint64_t offset, uint64_t length);
  // Cached local reads kept in flight together (a batch of small reads, a reader keeping a queue depth): a read that
  // read_cached_now could serve goes to the disk through one io_uring for the whole queue (LocalReadQueue: one system
  // call per round for all the reads in flight) and is checked as read_cached_now checks it (the stamps before and
  // after, every segment's CRC). One thread uses a queue at a time (reads it left in flight fail if another takes it
  // over: LocalReadQueue); queues of one client may run on many threads. A
  // read the queue does not take, or hands back without an answer (the chunk changed while it was read), is the
  // caller's to read with read().
  class CachedReadQueue {
   public:
    explicit CachedReadQueue(StorageClient& client, uint32_t depth = 32);
    ~CachedReadQueue();  // waits for the reads still in flight
    CachedReadQueue(const CachedReadQueue&) = delete;
    CachedReadQueue& operator=(const CachedReadQueue&) = delete;

    // True: the read is under way, its answer comes back from reap() with `tag`. False: no kept answer serves it now,
    // or depth() reads are in flight.
    bool submit(ChainId chain, const ChunkId& chunk, uint64_t offset, uint64_t length, uint64_t tag);
    struct Done {
      uint64_t tag = 0;
      // As read_cached_now's (the bytes in ReadRsp::pieces, none past the end); nullopt: the kept answer no longer
      // held when the bytes were in (read() it).
      std::optional<ReadRsp> rsp;
    };
    // Waits until at least min(min, in_flight(), max) reads are done; appends the reads done by then to `out`, at most
    // `max` (LocalReadQueue::reap: handing back one at a time and submitting the next in between keeps the disk busy
    // while the queue checks the bytes).
    void reap(size_t min, std::vector<Done>& out, size_t max = SIZE_MAX);
    size_t in_flight() const;
    uint32_t depth() const;

   private:
    struct Impl;
    std::unique_ptr<Impl> impl_;
  };
  // Read-ahead for a read of [offset, offset + length) of chunk expected soon (a sequential reader's next
  // range): reads the bytes from a target's file on this host, where a serving target's last answer for that range said
  // they lie, or else where a target of this host (one that answered a local read before; otherwise
  // nothing is done) answers that they lie now. The read of that range then sends its own
  // request as always and keeps these bytes only if the answer names the same place and every segment's
  // CRC matches (as read_before_answer), so it returns what is committed when it is answered. At most
  // kMaxReadAheads ranges are held (the oldest is dropped first); fire and forget; local reads with
  // read_before_answer only.
  void read_ahead(ChainId chain, const ChunkId& chunk, uint64_t offset, uint64_t length);
  static constexpr size_t kMaxReadAheads = 64;
  // read_ahead's first half, from any thread and at once: reads the range ahead where the last answer for it
  // named its place (the read of the range asks that target, while it still serves). False when no answer did
  // (read_ahead, on the executor, may then ask a target) or local reads are off; true also when the range is
  // read ahead already.
  bool read_ahead_known(const ChunkId& chunk, uint64_t offset, uint64_t length);
  // Batches: each item is retried independently; results in request order. The reads of a batch go out as
  // one BatchReadReq per node where coalescing is on (ClientConfig::read_rpcs_per_node), the writes one by one.
  void batch_write(std::vector<WriteReq> writes, Callback<std::vector<WriteResult>> done);
  void batch_read(std::vector<ReadReq> reads, Callback<std::vector<ReadResult>> done);
  void query_last_chunk(ChainId chain, uint64_t inode, uint64_t begin_index, uint64_t end_index,
                        Callback<QueryLastChunkRsp> done);
  void remove_range(ChainId chain, const ChunkId& begin, const ChunkId& end, Callback<RemoveChunksRsp> done);

  struct Stats {
    uint64_t attempts = 0, retries = 0, dirty = 0, tail_fallbacks = 0, routing_refreshes = 0;
    // Write coalescing: writes sent as one (requests of two or more writes), and the writes they carried.
    uint64_t coalesced_write_requests = 0, coalesced_writes = 0;
  };
  Stats stats() const;
  // Local reads (ClientConfig::local_reads) so far; any thread.
  struct LocalReadCounts {
    uint64_t served = 0;     // reads served from a target's file on this host
    uint64_t fallbacks = 0;  // local answers read over RPC after all (a CRC differed, the file was unusable)
    uint64_t read_before_answer = 0;  // of `served`, read before the answer came (read_before_answer)
    uint64_t read_ahead = 0;          // of `read_before_answer`, read by read_ahead() before the read was asked for
    uint64_t read_aheads_started = 0;  // ranges read ahead (each one local read)
    uint64_t read_aheads_dropped = 0;  // of those, dropped unread (the oldest when kMaxReadAheads were held)
    uint64_t cached = 0;         // of `served`, read where a kept answer said, without asking (cached local reads)
    uint64_t cache_misses = 0;   // reads that found no usable kept answer and asked for the whole version
    uint64_t cache_changed = 0;  // of the cached ones tried, refused after the read (a change began meanwhile)
    uint64_t queued = 0;         // of `cached`, read from the disk through a CachedReadQueue
  };
  LocalReadCounts local_read_counts() const;
  // Read coalescing (ClientConfig::read_rpcs_per_node) so far; any thread.
  struct CoalescedReadCounts {
    uint64_t rpcs = 0;           // RPCs sent for reads that may coalesce (a ReadReq or a BatchReadReq each)
    uint64_t batched_reads = 0;  // of those reads, the ones sent in a BatchReadReq of two or more
  };
  CoalescedReadCounts coalesced_read_counts() const;

 private:
  // write() and truncate(): one WriteReq per attempt, retried as any write; through the chunk's write lane when
  // coalescing is on.
  void send_write(ChainId chain, const ChunkId& chunk, uint64_t offset, SharedBytes data, Callback<WriteRsp> done,
                  uint32_t channel, uint64_t chunk_size, bool truncate);
  struct State;
  std::shared_ptr<State> state_;
};

// The space a chain table's files can use: the capacity and free bytes of the distinct file systems
// (host, filesystem) holding its targets, summed, divided by the table's replication. nullopt when the
// table is unknown or none of its targets reported space.
struct ChainTableSpace {
  uint64_t capacity_bytes = 0;
  uint64_t free_bytes = 0;
  size_t filesystems = 0;  // distinct (host, filesystem) pairs counted
};
std::optional<ChainTableSpace> chain_table_space(const RoutingInfo& routing, const std::vector<TargetSpace>& space,
                                                 ChainTableId table);

}  // namespace ff::fs
