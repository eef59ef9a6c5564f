#include "ff/fs/storage_service.h"

#include <algorithm>
#include <atomic>
#include <cstring>
#include <deque>
#include <limits>
#include <list>
#include <mutex>
#include <optional>
#include <set>

#include "ff/common/assert.h"
#include "ff/common/log.h"
#include "ff/fs/crc32c.h"
#include "ff/fs/local_read.h"
#include "ff/fs/mgmtd_addresses.h"
#include "ff/fs/read_stamps.h"

namespace ff::fs {

namespace {

using LockKey = std::pair<TargetId, ChunkId>;

bool retryable(const Status& status) {
  switch (status.code()) {
    case StatusCode::kUnavailable:
    case StatusCode::kDeadlineExceeded:
    case StatusCode::kResourceExhausted:
    case StatusCode::kFailedPrecondition:
    case StatusCode::kIoError:
    case StatusCode::kAborted:
    case StatusCode::kNotFound:
      return true;
    default:
      return false;
  }
}

// The chunk after applying an update to `committed` (holes read as zero).
Bytes apply_update(Bytes committed, uint64_t offset, std::span<const std::byte> data) {
  if (committed.size() < offset + data.size()) committed.resize(offset + data.size());
  if (!data.empty()) std::memcpy(committed.data() + offset, data.data(), data.size());
  return committed;
}

// How a read answers: `shared` keeps the store's buffer (ReadRsp::shared_data, for a transport that
// sends it without copying); `fast`, when set, answers a successful read from the offload worker
// (the transport's Reply is thread-safe), saving the hand-off back to the executor. Errors, dirty
// answers and repairs always go through the executor.
struct ReadAnswer {
  bool shared = false;
  std::function<void(ReadRsp)> fast;
};

// A message's payload as shared bytes: its shared_data when the sender shared a buffer (in-process),
// else its data, adopted without a copy.
template <typename M>
SharedBytes take_payload(M& message) {
  if (message.shared_data.is_set()) return std::move(message.shared_data);
  return SharedBytes::adopt(std::move(message.data));
}

// The smallest chunk id after `id` (ids order by inode, then index); none after the largest.
std::optional<ChunkId> chunk_after(ChunkId id) {
  if (++id.index != 0) return id;
  if (++id.inode != 0) return id;
  return std::nullopt;
}

// After a read found nothing committed (`read_status` chunk_not_found): the chunk's metadata when a pending version is
// there, which may be an acknowledged first version whose lazy commit a crash undid (StorageService's inherited()
// decides; worker thread).
std::optional<ChunkMeta> pending_without_commit(ChunkStore& store, const ChunkId& chunk, const Status& read_status) {
  if (fs_error_of(read_status) != FsError::kChunkNotFound) return std::nullopt;
  Result<ChunkMeta> meta = store.stat(chunk);
  if (!meta.is_ok() || meta->pending_version == 0) return std::nullopt;
  return *meta;
}

// Every chunk's metadata in a store, in id order (worker thread).
Result<std::vector<ChunkMeta>> list_all(ChunkStore& store) {
  return store.list(ChunkId{0, 0}, ChunkId{UINT64_MAX, UINT64_MAX}, UINT64_MAX);
}

}  // namespace

struct StorageService::State {
  StorageConfig config;
  Executor& executor;
  RpcClient& rpc;
  ChunkStoreFactory factory;
  StorageBugs bugs;
  CommitObserver observer;
  Stats stats;

  bool running = false;
  uint64_t generation = 0;
  uint64_t incarnation = 0;
  bool registered = false;
  bool heartbeat_allowed = false;
  bool heartbeat_in_flight = false;
  int64_t last_mgmtd_ok_ns = INT64_MIN / 2;
  RoutingInfo routing;

  struct Target {
    std::shared_ptr<ChunkStore> store;
    bool up_to_date = false;
    // While syncing: the chain version whose sync finished. up_to_date holds only at that version; a
    // syncing target seen at another version needs its predecessor's sync at that version again.
    ChainVersion synced_chain_version = 0;
  };
  std::map<TargetId, Target> targets;

  // What the heartbeat reports: offline once the store no longer takes changes (ChunkStore::health).
  static LocalTargetState local_state_of(const Target& target) {
    if (target.store != nullptr && !target.store->health().is_ok()) return LocalTargetState::kOffline;
    return target.up_to_date ? LocalTargetState::kUpToDate : LocalTargetState::kOnline;
  }

  struct Lock {
    bool held = false;
    std::deque<std::function<void()>> waiters;
  };
  std::map<LockKey, Lock> locks;

  // Removals by range in progress at a head target: new writes of a chunk in the range wait for the
  // removal (they run after it, in order), and the removal waits for the writes already holding a
  // chunk lock in the range. So a removal never runs between a write's store at one replica and its
  // store at the next: every replica sees the two in the same order.
  struct Removal {
    TargetId target = 0;
    ChunkId begin, end;
    std::vector<std::function<void()>> blocked;  // writes that arrived during the removal
  };
  std::list<Removal> removals;
  Removal* removal_covering(TargetId target, const ChunkId& chunk) {
    for (Removal& r : removals) {
      if (r.target == target && !(chunk < r.begin) && chunk < r.end) return &r;
    }
    return nullptr;
  }

  std::map<ClientRequestId, WriteRsp> done_writes;
  std::deque<ClientRequestId> done_order;
  std::map<ClientRequestId, std::vector<Reply>> joining;
  uint32_t inflight = 0;

  std::map<ChainId, ChainVersion> sync_jobs;  // chain -> chain version the running job syncs under
  // Orphaned pending versions: a head scans its target whenever its chain changes (a crashed head or a
  // departed tail leaves them), and retries chunks whose update ended in an error (bounded set).
  std::map<TargetId, ChainVersion> orphan_scans;  // head target -> chain version last scanned under
  std::set<LockKey> suspects;
  // Pending versions each target held when this process opened it, and the targets whose scan for them is still
  // running (inherited()).
  std::map<LockKey, uint32_t> inherited_pending;
  std::set<TargetId> inherited_scans;
  static constexpr size_t kMaxSuspects = 4096;

  MgmtdAddresses mgmtd;  // config.mgmtd_address: a primary and its standbys

  State(StorageConfig c, Executor& e, RpcClient& r, ChunkStoreFactory f)
      : config(std::move(c)),
        executor(e),
        rpc(r),
        factory(std::move(f)),
        mgmtd(MgmtdAddresses::unchecked(config.mgmtd_address)) {}

  // ------------------------------------------------------------------ read fast lane (any thread)
  // What try_handle_read checks, published by the executor after every change of it.
  struct ReadView {
    bool up = false;  // running && registered && heartbeat_allowed (the lease is checked separately)
    RoutingInfo routing;
    std::map<TargetId, std::shared_ptr<ChunkStore>> stores;
  };
  mutable std::mutex view_mutex;
  std::shared_ptr<const ReadView> view = std::make_shared<ReadView>();
  std::atomic<int64_t> view_mgmtd_ok_ns{INT64_MIN / 2};
  std::atomic<uint64_t> fast_reads{0}, fast_dirty_reads{0}, local_reads{0}, inline_reads{0};
  // The largest fast-lane read that may run on the transport's receiving thread (ServerContext::receiver_idle).
  static constexpr uint64_t kInlineReadMaxBytes = 64 << 10;
  // Chunks whose pending version was acknowledged upstream before it was committed here
  // (ack_then_commit): target+chunk -> version. Written on the executor, read by the read fast lane.
  mutable std::mutex marks_mutex;
  std::map<LockKey, uint32_t> acked_pending;

  void publish() {
    auto next = std::make_shared<ReadView>();
    next->up = running && registered && heartbeat_allowed;
    next->routing = routing;
    for (const auto& [id, target] : targets) next->stores[id] = target.store;
    view_mgmtd_ok_ns.store(last_mgmtd_ok_ns);
    {
      std::lock_guard lock(view_mutex);
      view = std::move(next);
    }
    publish_read_leases();
  }

  // Local readers' lease (ChunkStore::set_local_read_lease, read_stamps.h) of each target serving in its chain:
  // until this node would stop serving by its own rule (no mgmtd contact for half the heartbeat timeout), on the
  // host's monotonic clock; 0 for the others and while the node does not serve.
  void publish_read_leases() {
    const int64_t remaining = last_mgmtd_ok_ns + config.heartbeat_timeout_ns / 2 - now();
    const int64_t until = serving() && remaining > 0 ? monotonic_now_ns() + remaining : 0;
    for (auto& [id, target] : targets) {
      if (!target.store) continue;
      const TargetInfo* info = routing.target(id);
      const bool serves = info != nullptr && info->public_state == PublicTargetState::kServing;
      target.store->set_local_read_lease(serves ? until : 0);
    }
  }
  std::shared_ptr<const ReadView> snapshot() const {
    std::lock_guard lock(view_mutex);
    return view;
  }

  int64_t now() const { return executor.clock().now_ns(); }
  bool lease_ok() const { return now() - last_mgmtd_ok_ns < config.heartbeat_timeout_ns / 2; }
  bool serving() const { return running && registered && heartbeat_allowed && lease_ok(); }

  // ------------------------------------------------------------------ chunk locks (FIFO, bounded)
  bool lock(const LockKey& key, std::function<void()> granted) {
    Lock& entry = locks[key];
    if (!entry.held) {
      entry.held = true;
      granted();
      return true;
    }
    if (entry.waiters.size() >= config.max_lock_waiters) return false;
    entry.waiters.push_back(std::move(granted));
    return true;
  }
  void unlock(const LockKey& key) {
    auto it = locks.find(key);
    FF_ASSERT(it != locks.end() && it->second.held, "unlock of chunk {} not locked", key.second.to_string());
    if (it->second.waiters.empty()) {
      locks.erase(it);
      return;
    }
    auto next = std::move(it->second.waiters.front());
    it->second.waiters.pop_front();
    executor.post(std::move(next));  // still held: ownership passes to the waiter
  }

  // ------------------------------------------------------------------ routing checks
  // The chain and my position for a request naming (chain, chain_version, target).
  Result<const ChainInfo*> check_target(ChainId chain_id, ChainVersion version, TargetId target, bool need_serving_node = true) {
    if (need_serving_node && !serving()) {
      return fs_error(FsError::kNotServing, fmt::format("node {} is not serving (lease or start-up)", config.node));
    }
    const ChainInfo* chain = routing.chain(chain_id);
    if (chain == nullptr) return fs_error(FsError::kUnknownChain, fmt::format("chain {} unknown on node {}", chain_id, config.node));
    const TargetInfo* info = routing.target(target);
    if (info == nullptr || info->node != config.node || targets.count(target) == 0) {
      return fs_error(FsError::kUnknownTarget, fmt::format("target {} is not on node {}", target, config.node));
    }
    if (chain->index_of(target) < 0) {
      return fs_error(FsError::kUnknownTarget, fmt::format("target {} is not in chain {}", target, chain_id));
    }
    if (chain->version != version && !bugs.ignore_chain_version) {
      ++stats.stale_chain;
      if (version > chain->version) heartbeat_soon();
      return fs_error(FsError::kStaleChainVersion,
                      fmt::format("chain {}: request has version {}, node {} has {}", chain_id, version, config.node,
                                  chain->version));
    }
    return chain;
  }

  PublicTargetState state_of(const ChainInfo& chain, TargetId target) const {
    return chain.targets[static_cast<size_t>(chain.index_of(target))].state;
  }
  // Whether `target` is in `chain` (null: none) and serving there.
  bool serving_in(const ChainInfo* chain, TargetId target) const {
    return chain != nullptr && chain->index_of(target) >= 0 && state_of(*chain, target) == PublicTargetState::kServing;
  }

  // The target after `target` in the write chain, or 0 when it is the tail.
  static TargetId successor(const ChainInfo& chain, TargetId target) {
    auto write_chain = chain.write_chain();
    auto it = std::find(write_chain.begin(), write_chain.end(), target);
    if (it == write_chain.end() || it + 1 == write_chain.end()) return 0;
    return *(it + 1);
  }

  ChunkStore& store(TargetId target) { return *targets.at(target).store; }

  void observe(TargetId target, const ChunkId& chunk, uint32_t version, uint32_t crc) {
    if (observer) observer(target, chunk, version, crc);
  }

  // ------------------------------------------------------------------ write path
  // One update travelling through this target: a client write at the head or a forward.
  struct Update {
    ClientRequestId request_id;
    ChainId chain = 0;
    TargetId target = 0;  // my target
    ChunkId chunk;
    uint64_t offset = 0;
    SharedBytes data;         // shared by the local store call and the forward (no copy per hop)
    uint64_t chunk_size = 0;  // the file's chunk size when the client gave it (ChunkUpdate::chunk_size)
    bool full_replacement = false;
    // A truncate at the head (WriteReq::truncate): the chunk's new length. Each head_store turns it into a full
    // replacement of the committed bytes cut or zero-extended to it (data, full_replacement), which the chain stores.
    std::optional<uint64_t> truncate_to;
    uint32_t version = 0;  // set at the head; given by the predecessor otherwise
    uint32_t crc = 0;      // expected CRC32C after the update
    uint64_t length = 0;
    int64_t deadline_ns = 0;
    bool head = false;
    bool resolve = false;    // resolves an orphaned pending version (ForwardReq::resolve_pending)
    bool owns_lock = true;   // false for a resolve the head runs while its own write holds the lock
    bool resolve_only = false;  // a head's background resolution of an orphan: no write follows
    int restarts = 0;
    int prepares = 0;        // head_prepare rounds (each resolves one orphaned version or stores)
    std::function<void(Result<ForwardRsp>)> done;  // releases the lock first
  };
  using UpdatePtr = std::shared_ptr<Update>;

  void finish(const UpdatePtr& update, Result<ForwardRsp> result) {
    if (!result.is_ok() && !update->resolve && suspects.size() < kMaxSuspects) suspects.insert({update->target, update->chunk});
    if (!result.is_ok()) {
      FF_LOG_DEBUG("target {}: update of chunk {} v{} (head={}) ends: {}", update->target, update->chunk.to_string(), update->version,
                   update->head, result.status());
    }
    if (update->owns_lock) unlock({update->target, update->chunk});
    auto done = std::move(update->done);
    done(std::move(result));
  }

  // Is `target` the last serving target of its chain (the tail reads go to, the target whose commits
  // define what is committed)?
  bool last_serving(const ChainInfo& chain, TargetId target) const {
    auto serving_targets = chain.serving();
    return !serving_targets.empty() && serving_targets.back() == target;
  }

  // Head: one offload stats the chunk and, when no orphaned pending version is there, picks the
  // version and stores it (or previews it, head_store); an orphaned pending version (the lock is ours,
  // so no write drives it) is resolved first, on the executor, and the write is prepared again. Stat
  // and store share one worker hop (was: stat, back to the executor, then store: two hand-offs more
  // per write on its critical path; docs/fs-operations.md, "Threads a request passes through").
  void head_prepare(UpdatePtr update) {
    if (now() >= update->deadline_ns) return finish(update, deadline_exceeded("write of chunk {} ran past its deadline", update->chunk.to_string()));
    if (++update->prepares > 16) {
      return finish(update, fs_error(FsError::kVersionConflict, fmt::format("chunk {}: write restarted too often", update->chunk.to_string())));
    }
    head_store(update);
  }

  // A pending version nobody drives (its head crashed, or a forward gave up at its deadline) may have
  // been committed by a tail that since left the chain, and maybe read there: it must never be
  // replaced by a different write of the same version. The last serving target commits it (roll
  // forward: the new tail holds every version any earlier tail may have committed); a head with
  // serving successors resolves it down the chain, and drops it only when a successor never stored it
  // (then no target downstream committed it).
  void resolve_orphan(UpdatePtr update, const ChunkMeta& meta) {
    const ChainInfo* chain = routing.chain(update->chain);
    if (chain == nullptr || chain->index_of(update->target) < 0) {
      return finish(update, fs_error(FsError::kUnknownChain, fmt::format("chain {} vanished", update->chain)));
    }
    FF_LOG_DEBUG("target {}: resolves orphaned pending chunk {} v{} CRC {:#x}", update->target, update->chunk.to_string(),
                 meta.pending_version, meta.pending_crc32c);
    auto resolve = std::make_shared<Update>();
    resolve->request_id = update->request_id;
    resolve->chain = update->chain;
    resolve->target = update->target;
    resolve->chunk = update->chunk;
    resolve->version = meta.pending_version;
    resolve->crc = meta.pending_crc32c;
    resolve->length = meta.pending_length;
    resolve->deadline_ns = update->deadline_ns;
    resolve->head = true;
    resolve->resolve = true;
    resolve->owns_lock = false;
    resolve->done = [this, update, version = meta.pending_version](Result<ForwardRsp> result) {
      if (result.is_ok()) return head_prepare(update);
      if (fs_error_of(result.status()) != FsError::kVersionMismatch) return finish(update, result.status());
      // A successor never stored the version: nothing downstream committed it; drop it here.
      auto store_ptr = targets.at(update->target).store;
      auto aborted = std::make_shared<Status>();
      executor.offload([store_ptr, aborted, chunk = update->chunk, version] { *aborted = store_ptr->abort_pending(chunk, version); },
                       [this, update, aborted] {
                         if (!aborted->is_ok()) return finish(update, *aborted);
                         head_prepare(update);
                       });
    };
    forward_or_commit(resolve);
  }

  // The head: with a store that can preview the new version (its number, length and CRC32C, which
  // every forward carries), it forwards while its own pending version is written, as a middle target
  // does (store_and_forward; docs/fs.md, "Forward while storing"); otherwise it stores, then forwards.
  void head_store(UpdatePtr update) {
    auto store_ptr = targets.at(update->target).store;
    auto result = std::make_shared<Status>();
    auto meta = std::make_shared<ChunkMeta>();
    auto previewed = std::make_shared<bool>(false);
    auto chunk_update = std::make_shared<ChunkUpdate>(
        ChunkUpdate{.id = update->chunk, .version = 0, .chain_version = routing.chain(update->chain)->version,
                    .offset = update->offset, .data = update->data.bytes, .full_replacement = false,
                    .chunk_size = update->chunk_size});
    const bool try_preview = !bugs.sequential_head && !bugs.sequential_forward;
    // Set by the worker when the stat alone decides: an orphaned pending version to resolve first
    // (*meta holds the stat), a resolve_only update with nothing pending, or a truncate to the length the chunk
    // has (*meta: its committed version, answered as it is).
    auto stat_only = std::make_shared<bool>(false);
    // A truncate's new contents (the committed bytes cut or zero-extended), which chunk_update->data points into.
    auto truncated = std::make_shared<SharedBytes>();
    executor.offload(
        [store_ptr, result, meta, chunk_update, previewed, try_preview, stat_only, truncated,
         truncate_to = update->truncate_to, resolve_only = update->resolve_only]() {
          Result<ChunkMeta> current = store_ptr->stat(chunk_update->id);
          uint32_t committed = current.is_ok() ? current->committed_version : 0;
          if (!current.is_ok() && fs_error_of(current.status()) != FsError::kChunkNotFound) {
            *result = current.status();
            return;
          }
          if ((current.is_ok() && current->pending_version != 0) || resolve_only) {
            if (current.is_ok()) *meta = *current;
            *stat_only = true;
            return;
          }
          if (truncate_to) {
            // The lock is ours and nothing is pending: the committed version here is the chain's latest.
            const uint64_t length = current.is_ok() ? current->committed_length : 0;
            if (length == *truncate_to) {
              *meta = current.is_ok() ? *current : ChunkMeta{.id = chunk_update->id};
              *stat_only = true;
              return;
            }
            Bytes contents;
            if (committed != 0) {
              Result<ChunkRead> read = store_ptr->read(chunk_update->id, 0, *truncate_to, ReadMode::kRelaxed);
              if (!read.is_ok()) {
                *result = read.status();
                return;
              }
              contents = std::move(read->data);
            }
            contents.resize(*truncate_to);  // cut, or extended with zeros
            *truncated = SharedBytes::adopt(std::move(contents));
            chunk_update->offset = 0;
            chunk_update->data = truncated->bytes;
            chunk_update->full_replacement = true;
          }
          chunk_update->version = committed + 1;
          if (try_preview && (!current.is_ok() || current->pending_version == 0)) {
            Result<ChunkMeta> preview = store_ptr->preview_pending(*chunk_update);
            if (preview.is_ok()) {
              *meta = *preview;
              *previewed = true;
              return;
            }
            // Anything else (unimplemented, a corrupt base, ...): store first, which reports it as before.
          }
          *result = store_ptr->put_pending(*chunk_update);
          if (!result->is_ok()) return;
          Result<ChunkMeta> after = store_ptr->stat(chunk_update->id);
          if (!after.is_ok()) {
            *result = after.status();
            return;
          }
          *meta = *after;
        },
        [this, update, result, meta, chunk_update, previewed, stat_only, truncated] {
          if (!result->is_ok()) return finish(update, result->with_context(fmt::format("target {}", update->target)));
          if (*stat_only) {
            if (meta->pending_version != 0) return resolve_orphan(update, *meta);
            if (update->truncate_to) {  // already that long
              update->version = meta->committed_version;
              update->crc = meta->committed_crc32c;
              update->length = meta->committed_length;
              return finish(update, ForwardRsp{.committed_version = meta->committed_version,
                                               .committed_crc32c = meta->committed_crc32c});
            }
            return finish(update, ForwardRsp{});  // resolve_only, nothing pending
          }
          if (chunk_update->full_replacement) {
            // A truncate goes down the chain as the full replacement it became here.
            update->data = *truncated;
            update->offset = 0;
            update->full_replacement = true;
          }
          update->version = meta->pending_version;
          update->crc = meta->pending_crc32c;
          update->length = meta->pending_length;
          FF_LOG_DEBUG("target {}: head {} chunk {} v{} CRC {:#x}", update->target, *previewed ? "forwards while storing" : "stored",
                       update->chunk.to_string(), update->version, update->crc);
          if (*previewed) return store_and_forward(update, *chunk_update);
          forward_or_commit(update);
        });
  }

  // After the update is pending here: forward to the successor, or commit when this is the tail.
  void forward_or_commit(UpdatePtr update) {
    const ChainInfo* chain = routing.chain(update->chain);
    TargetId next = chain == nullptr ? 0 : successor(*chain, update->target);
    bool in_write_chain = chain != nullptr && chain->index_of(update->target) >= 0 &&
                          receives_writes(state_of(*chain, update->target));
    if (!in_write_chain || !running) {
      return finish(update, fs_error(FsError::kNotServing, fmt::format("target {} left the write chain of {}", update->target, update->chain)));
    }
    if (!serving()) {
      // Lease lost: mgmtd either comes back (and this write continues) or declares this node failed
      // (and routing takes the target out of the write chain). Giving up in between would leave a
      // version the tail may have committed to be overwritten by a different write.
      if (now() + config.retry_backoff_ns >= update->deadline_ns) {
        return finish(update, fs_error(FsError::kNotServing, fmt::format("node {} lost its lease", config.node)));
      }
      executor.post_after(config.retry_backoff_ns, [this, update, gen = generation] {
        if (gen != generation) return;
        forward_or_commit(update);
      });
      return;
    }
    // An update outlives routing changes (it is retried past its deadline): its target's role may have changed since
    // it was stored. A head update whose target is no longer the head stops (the client retries at the new head;
    // driving it on, e.g. pushing this target's committed copy to a mismatching successor, would act on a copy the
    // chain has moved past). A target that is not serving never commits as the tail: a syncing one is the write
    // chain's last target, but its chunks are its predecessor's to decide (the simulation's seed 2991 under unlimited
    // faults: a former head, syncing, committed its own stale v2 and acknowledged a write the chain never had).
    if (update->head && chain->write_chain().front() != update->target) {
      return finish(update, fs_error(FsError::kNotHead, fmt::format("target {} is no longer the head of chain {}",
                                                                    update->target, update->chain)));
    }
    if (next == 0 && state_of(*chain, update->target) != PublicTargetState::kServing) {
      return finish(update,
                    fs_error(FsError::kNotServing, fmt::format("target {} is {}: it does not commit as the tail",
                                                               update->target, state_of(*chain, update->target))));
    }
    if (next == 0) return commit_local(update, false);
    bool full = state_of(*chain, next) == PublicTargetState::kSyncing;
    // A resolve ends at the last serving target, which rolls the version forward; its syncing successor then gets
    // the chunk as a full replacement (its sync may have passed this chunk already).
    if (update->resolve && full) return roll_forward(update, next);
    if (now() >= update->deadline_ns) {
      return finish(update, deadline_exceeded("forward of chunk {} v{} ran past its deadline", update->chunk.to_string(), update->version));
    }
    if (full) {
      // Forwards to a syncing target carry the whole chunk: committed bytes here + this update.
      auto store_ptr = targets.at(update->target).store;
      auto content = std::make_shared<Result<Bytes>>(Bytes{});
      executor.offload(
          [store_ptr, content, chunk = update->chunk, full_replacement = update->full_replacement, offset = update->offset,
           data = update->data]() {
            Result<ChunkRead> read = store_ptr->read(chunk, 0, UINT64_MAX, ReadMode::kRelaxed);
            Bytes base;
            if (read.is_ok()) {
              base = std::move(read->data);
            } else if (fs_error_of(read.status()) != FsError::kChunkNotFound) {
              *content = read.status();
              return;
            }
            *content = full_replacement ? data.to_vector() : apply_update(std::move(base), offset, data.bytes);
          },
          [this, update, content, next, chain_version = chain->version] {
            if (!content->is_ok()) return finish(update, content->status());
            send_forward(update, next, chain_version, true, SharedBytes::adopt(std::move(**content)));
          });
      return;
    }
    send_forward(update, next, chain->version, false, update->data);
  }

  // Sends the update to `next`; its answer goes to on_response, or when none is given to
  // on_forward_response (the update must then be stored here already).
  void send_forward(UpdatePtr update, TargetId next, ChainVersion chain_version, bool full, SharedBytes data,
                    std::function<void(Result<ForwardRsp>)> on_response = {}) {
    auto address = routing.address_of(next);
    ForwardReq req{.request_id = update->request_id,
                   .chain = update->chain,
                   .chain_version = chain_version,
                   .target = next,
                   .chunk = update->chunk,
                   .version = update->version,
                   .offset = full ? 0 : update->offset,
                   .data = {},
                   .full_replacement = full || update->full_replacement,
                   .expected_crc32c = update->crc,
                   .expected_length = update->length,
                   .remove = false,
                   .remove_end = {},
                   .resolve_pending = update->resolve,
                   .shared_data = std::move(data),
                   .chunk_size = update->chunk_size};
    int64_t timeout = std::min(config.rpc_timeout_ns, update->deadline_ns - now());
    ++stats.forwards;
    if (!on_response) {
      on_response = [this, update, next](Result<ForwardRsp> rsp) { on_forward_response(update, next, std::move(rsp)); };
    }
    rpc.call(address.value_or(""), Request{std::move(req)}, timeout,
             [on_response = std::move(on_response)](Result<Response> response) {
               on_response(response_as<ForwardRsp>(std::move(response)));
             });
  }

  // The successor answered a forward of an update that is stored here (pending): commit on its
  // acknowledgement, else resolve a conflict, push our copy to a successor that is behind, or retry.
  void on_forward_response(UpdatePtr update, TargetId next, Result<ForwardRsp> rsp) {
    if (rsp.is_ok()) {
      if (rsp->committed_version != update->version || rsp->committed_crc32c != update->crc) {
        // The successor holds a different committed version: treat as a conflict.
        return resolve_conflict(update, next);
      }
      return commit_local(update, true);
    }
    FsError error = fs_error_of(rsp.status());
    if (error == FsError::kVersionConflict) return resolve_conflict(update, next);
    if (error == FsError::kVersionMismatch) {
      // A resolve reached a target that never stored the version: tell the head.
      if (update->resolve) {
        // Nothing downstream committed the version: drop it here too (the head drops it as well).
        auto store_ptr = targets.at(update->target).store;
        auto status = std::make_shared<Status>(rsp.status());
        executor.offload([store_ptr, chunk = update->chunk, version = update->version] { (void)store_ptr->abort_pending(chunk, version); },
                         [this, update, status] { finish(update, *status); });
        return;
      }
      return push_committed(update, next);
    }
    FF_LOG_DEBUG("target {}: forward of chunk {} v{} to target {} failed: {}", update->target, update->chunk.to_string(),
                 update->version, next, rsp.status());
    if (!retryable(rsp.status()) || now() + config.retry_backoff_ns >= update->deadline_ns) {
      return finish(update, rsp.status().with_context(fmt::format("forward to target {}", next)));
    }
    executor.post_after(config.retry_backoff_ns, [this, update, gen = generation] {
      if (gen != generation) return;
      forward_or_commit(update);
    });
  }

  // The successor committed this version with other contents (or a newer one): adopt its committed
  // copy (downstream commits are the truth in CRAQ) and redo the update on top of it. A syncing
  // successor is behind by definition: push ours instead.
  void resolve_conflict(UpdatePtr update, TargetId next) {
    const ChainInfo* chain = routing.chain(update->chain);
    if (!serving_in(chain, next) || !update->head || ++update->restarts > 3) {
      if (update->head && update->restarts <= 3 && chain != nullptr && chain->index_of(next) >= 0) return push_committed(update, next);
      return finish(update, fs_error(FsError::kVersionConflict,
                                     fmt::format("chunk {} v{} conflicts with target {}", update->chunk.to_string(), update->version, next)));
    }
    ReadReq req{.chain = update->chain, .chain_version = chain->version, .target = next, .chunk = update->chunk,
                .offset = 0, .length = UINT64_MAX, .mode = ReadMode::kRelaxed};
    rpc.call(routing.address_of(next).value_or(""), Request{req}, config.rpc_timeout_ns,
             [this, update, next](Result<Response> response) {
               Result<ReadRsp> rsp = response_as<ReadRsp>(std::move(response));
               if (!rsp.is_ok()) return finish(update, rsp.status().with_context(fmt::format("fetch from target {}", next)));
               auto store_ptr = targets.at(update->target).store;
               auto result = std::make_shared<Status>();
               executor.offload(
                   [store_ptr, result, chunk = update->chunk, rsp = std::move(*rsp)] {
                     *result = store_ptr->put_full_replacement(chunk, rsp.meta.committed_version, rsp.meta.chain_version, rsp.payload());
                   },
                   [this, update, result, next] {
                     if (!result->is_ok()) return finish(update, *result);
                     FF_LOG_DEBUG("target {}: adopted chunk {} from target {}", update->target, update->chunk.to_string(), next);
                     if (update->resolve) return finish(update, ForwardRsp{});
                     head_prepare(update);
                   });
             });
  }

  // The successor's versions do not fit (it is behind): send it our committed copy, then retry.
  void push_committed(UpdatePtr update, TargetId next) {
    if (++update->restarts > 4) {
      return finish(update, fs_error(FsError::kVersionMismatch, fmt::format("chunk {}: successor {} keeps mismatching", update->chunk.to_string(), next)));
    }
    auto store_ptr = targets.at(update->target).store;
    auto read = std::make_shared<Result<ChunkRead>>(Status(StatusCode::kInternal, "unset"));
    executor.offload([store_ptr, read, chunk = update->chunk] { *read = store_ptr->read(chunk, 0, UINT64_MAX, ReadMode::kRelaxed); },
                     [this, update, read, next] {
                       const ChainInfo* chain = routing.chain(update->chain);
                       if (chain == nullptr) return finish(update, fs_error(FsError::kUnknownChain, "chain vanished"));
                       SyncReplaceReq req{.chain = update->chain, .chain_version = chain->version, .target = next, .chunk = update->chunk};
                       if (!as_replacement(*read, req)) return finish(update, read->status());
                       rpc.call(routing.address_of(next).value_or(""), Request{std::move(req)}, config.rpc_timeout_ns,
                                [this, update](Result<Response> response) {
                                  if (!response.is_ok() && !retryable(response.status())) return finish(update, response.status());
                                  forward_or_commit(update);
                                });
                     });
  }

  // A resolve at the last serving target commits the orphaned version here (roll forward: an earlier tail may have
  // committed it) and then hands it to the syncing successor as a full replacement, as a write arriving during the
  // sync would be: the sync may have diffed this chunk (or finished) before the version was committed, and the
  // successor must not start serving without it (the simulation's seed 13788 under unlimited faults: a head rolled
  // v4 forward while its successor, synced already, waited to be promoted; the head then crashed and the promoted
  // successor took a different write as its v4). Until the successor has it, leaves the write chain (it then syncs
  // again when it returns), or the deadline passes (a later write of the chunk pushes it: push_committed).
  void roll_forward(UpdatePtr update, TargetId next) {
    auto store_ptr = targets.at(update->target).store;
    auto result = std::make_shared<Status>();
    executor.offload([store_ptr, result, chunk = update->chunk,
                      version = update->version] { *result = store_ptr->commit(chunk, version); },
                     [this, update, result, next] {
                       if (!result->is_ok())
                         return finish(update,
                                       result->with_context(fmt::format("commit on target {}", update->target)));
                       observe(update->target, update->chunk, update->version, update->crc);
                       push_rolled_forward(update, next);
                     });
  }

  void push_rolled_forward(UpdatePtr update, TargetId next) {
    const ForwardRsp committed{.committed_version = update->version, .committed_crc32c = update->crc, .removed = 0};
    const ChainInfo* chain = routing.chain(update->chain);
    if (chain == nullptr || successor(*chain, update->target) != next) return finish(update, committed);
    auto store_ptr = targets.at(update->target).store;
    auto read = std::make_shared<Result<ChunkRead>>(Status(StatusCode::kInternal, "unset"));
    executor.offload(
        [store_ptr, read, chunk = update->chunk] { *read = store_ptr->read(chunk, 0, UINT64_MAX, ReadMode::kRelaxed); },
        [this, update, read, next, committed] {
          const ChainInfo* chain = routing.chain(update->chain);
          if (chain == nullptr || successor(*chain, update->target) != next) return finish(update, committed);
          if (!read->is_ok()) return finish(update, read->status());
          SyncReplaceReq req{
              .chain = update->chain, .chain_version = chain->version, .target = next, .chunk = update->chunk};
          req.version = (*read)->meta.committed_version;
          req.chunk_chain_version = (*read)->meta.chain_version;
          req.data = std::move((*read)->data);
          int64_t timeout = std::min(config.rpc_timeout_ns, std::max<int64_t>(update->deadline_ns - now(), 1));
          rpc.call(routing.address_of(next).value_or(""), Request{std::move(req)}, timeout,
                   [this, update, next, committed](Result<Response> response) {
                     if (response.is_ok()) return finish(update, committed);
                     FF_LOG_DEBUG("target {}: push of rolled-forward chunk {} v{} to target {} failed: {}",
                                  update->target, update->chunk.to_string(), update->version, next, response.status());
                     if (now() + config.retry_backoff_ns >= update->deadline_ns) {
                       return finish(update, response.status().with_context(fmt::format("push to target {}", next)));
                     }
                     executor.post_after(config.retry_backoff_ns, [this, update, next, gen = generation] {
                       if (gen != generation) return;
                       push_rolled_forward(update, next);
                     });
                   });
        });
  }

  // Commit here (the tail, or on the successor's acknowledgement) and acknowledge.
  void commit_local(UpdatePtr update, bool acknowledged) {
    if (acknowledged && !update->resolve && update->owns_lock && !bugs.commit_before_ack) return ack_then_commit(update);
    auto store_ptr = targets.at(update->target).store;
    auto result = std::make_shared<Status>();
    executor.offload([store_ptr, result, chunk = update->chunk, version = update->version] { *result = store_ptr->commit(chunk, version); },
                     [this, update, result] {
                       if (!result->is_ok()) return finish(update, result->with_context(fmt::format("commit on target {}", update->target)));
                       observe(update->target, update->chunk, update->version, update->crc);
                       finish(update, ForwardRsp{.committed_version = update->version, .committed_crc32c = update->crc, .removed = 0});
                     });
  }

  // The successor acknowledged: the version is committed at the tail, so it is committed in the chain,
  // and it is durable here as pending. Acknowledge upstream at once and commit here off the critical
  // path, keeping the chunk lock until the commit is done (the next update of the chunk, a sync or a
  // repair waits for it). Meanwhile this chunk is marked: reads here answer [chunk_dirty], strict or
  // relaxed, since the committed version here is older than one already acknowledged. A crash before
  // the commit leaves the pending version, which recovery replaces or the orphan resolution rolls
  // forward (docs/fs.md, "Acknowledge, then commit").
  void ack_then_commit(UpdatePtr update) {
    mark_acked(update->target, update->chunk, update->version);
    auto done = std::move(update->done);
    update->done = [](Result<ForwardRsp>) {};
    done(ForwardRsp{.committed_version = update->version, .committed_crc32c = update->crc, .removed = 0});
    commit_after_ack(update, 0);
  }

  // The commit is lazy (ChunkStore::commit_lazily: durable with this target's next synced write): the
  // version is already durable here as pending and committed at the tail, so losing the commit in a
  // crash is the same as crashing before it (docs/fs.md, "Lazy commits").
  void commit_after_ack(UpdatePtr update, int attempt) {
    auto store_ptr = targets.at(update->target).store;
    auto result = std::make_shared<Status>();
    executor.offload([store_ptr, result, chunk = update->chunk, version = update->version, synced = bugs.synced_commit_after_ack] {
                       *result = synced ? store_ptr->commit(chunk, version) : store_ptr->commit_lazily(chunk, version);
                     },
                     [this, update, result, attempt, gen = generation] {
                       if (gen != generation) return;  // stopped: a restarted service recovers the chunk
                       if (result->is_ok()) {
                         observe(update->target, update->chunk, update->version, update->crc);
                         unmark_acked(update->target, update->chunk);
                         unlock({update->target, update->chunk});
                         return;
                       }
                       // The version is committed downstream: retry until the commit lands (a failing
                       // disk keeps the chunk locked and dirty here rather than serving an old version).
                       if (attempt >= 2) {
                         FF_LOG_WARN("target {}: commit of chunk {} v{} after its acknowledgement failed (attempt {}): {}", update->target,
                                     update->chunk.to_string(), update->version, attempt + 1, *result);
                       }
                       int64_t backoff = config.retry_backoff_ns * std::min(1 << std::min(attempt, 5), 20);
                       executor.post_after(backoff, [this, update, attempt, gen] {
                         if (gen != generation) return;
                         commit_after_ack(update, attempt + 1);
                       });
                     });
  }

  void mark_acked(TargetId target, const ChunkId& chunk, uint32_t version) {
    std::lock_guard lock(marks_mutex);
    acked_pending[{target, chunk}] = version;
  }
  void unmark_acked(TargetId target, const ChunkId& chunk) {
    std::lock_guard lock(marks_mutex);
    acked_pending.erase({target, chunk});
  }
  // Any thread.
  std::optional<uint32_t> acked_version(TargetId target, const ChunkId& chunk) const {
    std::lock_guard lock(marks_mutex);
    auto it = acked_pending.find({target, chunk});
    if (it == acked_pending.end()) return std::nullopt;
    return it->second;
  }

  // A forward arrived (lock held): check versions, store, and continue.
  void forward_prepare(UpdatePtr update, bool tail) {
    if (now() >= update->deadline_ns) return finish(update, deadline_exceeded("forward of chunk {} arrived late", update->chunk.to_string()));
    if (tail && bugs.tail_acks_without_storing) {
      return finish(update, ForwardRsp{.committed_version = update->version, .committed_crc32c = update->crc, .removed = 0});
    }
    auto store_ptr = targets.at(update->target).store;
    auto result = std::make_shared<Status>();
    // 0: stored pending, 1: already committed, 2: replaced (syncing tail), 3: to store while forwarding, 4: stored and
    // committed (the tail, commit_in_worker), 5: stored, the commit left to the executor (commit_in_worker said no)
    auto outcome = std::make_shared<int>(0);
    auto commit_status = std::make_shared<Status>();
    // The tail commits right after storing: its pending batch becomes durable with the commit batch
    // (one synced batch instead of two on the critical path).
    ChunkUpdate chunk_update{.id = update->chunk, .version = update->version,
                             .chain_version = routing.chain(update->chain)->version, .offset = update->offset,
                             .data = update->data.bytes, .full_replacement = update->full_replacement,
                             .chunk_size = update->chunk_size,
                             .defer_metadata_sync = tail && !update->resolve && !bugs.commit_before_ack};
    uint32_t expected_crc = update->crc;
    bool resolve = update->resolve;
    // A middle target stores while it forwards (store_and_forward): the worker only checks versions.
    bool parallel = !tail && !resolve && !update->full_replacement && !bugs.sequential_forward;
    // Only a syncing tail takes a full replacement as committed at once, whatever it held; a serving one (a truncate's
    // replacement) checks versions as for any write, so a late retry of an older version cannot undo a newer one.
    const bool syncing_tail =
        tail && state_of(*routing.chain(update->chain), update->target) == PublicTargetState::kSyncing;
    // A serving tail commits in the same worker call as it stores when the published routing still makes it the
    // chain's serving tail after the store (commit_in_worker); else the executor decides, as for any target.
    const bool commit_here = tail && !resolve && !syncing_tail && !update->full_replacement &&
                             !bugs.commit_before_ack && !bugs.sequential_forward;
    executor.offload(
        [this, store_ptr, result, outcome, commit_status, chunk_update, expected_crc, syncing_tail, resolve, parallel,
         commit_here, target = update->target, chain_id = update->chain, deadline_ns = update->deadline_ns]() {
          Result<ChunkMeta> current = store_ptr->stat(chunk_update.id);
          if (!current.is_ok() && fs_error_of(current.status()) != FsError::kChunkNotFound) {
            *result = current.status();
            return;
          }
          ChunkMeta meta = current.is_ok() ? *current : ChunkMeta{};
          if (chunk_update.full_replacement && syncing_tail) {
            // 3FS: a full-chunk replacement at the (syncing) tail updates the committed version at once.
            *outcome = 2;
            *result = store_ptr->put_full_replacement(chunk_update.id, chunk_update.version, chunk_update.chain_version,
                                                      chunk_update.data);
            return;
          }
          if (meta.committed_version == chunk_update.version) {
            *outcome = 1;
            if (meta.committed_crc32c != expected_crc) {
              *result = fs_error(FsError::kVersionConflict,
                                 fmt::format("chunk {} v{} already committed with CRC {:#x}, update has {:#x}",
                                             chunk_update.id.to_string(), chunk_update.version, meta.committed_crc32c, expected_crc));
            }
            return;
          }
          if (meta.committed_version > chunk_update.version) {
            *result = fs_error(FsError::kVersionConflict, fmt::format("chunk {}: committed v{} is ahead of update v{}",
                                                                      chunk_update.id.to_string(), meta.committed_version, chunk_update.version));
            return;
          }
          if (resolve) {
            if (meta.pending_version == chunk_update.version && meta.pending_crc32c == expected_crc)
              return;  // pass it on
            *result = fs_error(FsError::kVersionMismatch,
                               fmt::format("chunk {}: resolve of pending v{} CRC {:#x}, but committed v{}, pending v{} CRC {:#x}",
                                           chunk_update.id.to_string(), chunk_update.version, expected_crc, meta.committed_version,
                                           meta.pending_version, meta.pending_crc32c));
            return;
          }
          if (parallel && meta.committed_version + 1 == chunk_update.version) {
            // Only a store that can succeed is run beside the forward (anything else fails here as before).
            *outcome = 3;
            return;
          }
          *result = store_pending_checked(*store_ptr, chunk_update, expected_crc);
          if (result->is_ok() && commit_here) {
            if (!commit_in_worker(target, chain_id, chunk_update.chain_version, deadline_ns)) {
              *outcome = 5;  // the executor decides (forward_or_commit)
              return;
            }
            *outcome = 4;
            *commit_status = store_ptr->commit(chunk_update.id, chunk_update.version);
          }
        },
        [this, update, result, outcome, commit_status, tail, chunk_update] {
          FF_LOG_DEBUG("target {}: forward of chunk {} v{} CRC {:#x} full={} tail={}: outcome {} {}", update->target, update->chunk.to_string(),
                       update->version, update->crc, update->full_replacement, tail, *outcome, *result);
          if (!result->is_ok()) return finish(update, result->with_context(fmt::format("target {}", update->target)));
          if (*outcome == 1) {
            ++stats.dedupe_hits;
            return finish(update, ForwardRsp{.committed_version = update->version, .committed_crc32c = update->crc, .removed = 0});
          }
          if (*outcome == 2) {
            observe(update->target, update->chunk, update->version, update->crc);
            return finish(update, ForwardRsp{.committed_version = update->version, .committed_crc32c = update->crc, .removed = 0});
          }
          if (*outcome == 3) return store_and_forward(update, chunk_update);
          if (*outcome == 5) ++stats.tail_commits_left_to_executor;
          if (*outcome == 4) {
            ++stats.tail_commits_in_worker;
            if (!commit_status->is_ok()) {
              return finish(update, commit_status->with_context(fmt::format("commit on target {}", update->target)));
            }
            observe(update->target, update->chunk, update->version, update->crc);
            return finish(
                update,
                ForwardRsp{.committed_version = update->version, .committed_crc32c = update->crc, .removed = 0});
          }
          forward_or_commit(update);
        });
  }

  // On the tail's worker, right after its pending version was stored: may it commit there, without the executor's
  // forward_or_commit? Only while the published routing (publish(), which every routing change updates before it
  // starts a sync) still shows the chain at the version the forward was checked against, this target serving as its
  // last one, and the lease held. Why a routing change cannot slip in unseen: one published after this check starts
  // any sync after it, and that sync lists this chunk with the pending version stored before the check, so it waits
  // for this update's chunk lock and copies the committed result (run_sync); one published before is seen here and
  // leaves the decision to the executor, which forwards to a new syncing successor. The executor's own check has the
  // same window between it and its commit offload. Saves the tail a hand-off to the executor and back on every write's
  // critical path (docs/fs.md, "The tail commits where it stores").
  bool commit_in_worker(TargetId target, ChainId chain_id, ChainVersion checked_version, int64_t deadline_ns) const {
    std::shared_ptr<const ReadView> snap = fast_snapshot();
    if (snap == nullptr || now() >= deadline_ns) return false;
    const ChainInfo* chain = snap->routing.chain(chain_id);
    if (chain == nullptr || chain->version != checked_version || chain->index_of(target) < 0) return false;
    return successor(*chain, target) == 0 && state_of(*chain, target) == PublicTargetState::kServing;
  }

  // Stores `update` as pending and checks that the new version has the CRC the head computed (worker
  // thread). A different CRC means this target's base differs from the head's: the version is dropped
  // again and the answer is [version_conflict].
  // already_stored_ok: a pending version with this number and CRC is kept as it is (a retried forward
  // that found it stored; CRCs identify versions throughout the protocol).
  static Status store_pending_checked(ChunkStore& store, const ChunkUpdate& update, uint32_t expected_crc,
                                      bool already_stored_ok = false) {
    if (already_stored_ok) {
      Result<ChunkMeta> before = store.stat(update.id);
      if (before.is_ok() && before->pending_version == update.version && before->pending_crc32c == expected_crc) return Status::ok();
    }
    FF_RETURN_IF_ERROR(store.put_pending(update));
    FF_ASSIGN_OR_RETURN(ChunkMeta after, store.stat(update.id));
    if (after.pending_crc32c != expected_crc) {
      (void)store.abort_pending(update.id, update.version);
      return fs_error(FsError::kVersionConflict, fmt::format("chunk {} v{}: CRC after update {:#x}, expected {:#x}", update.id.to_string(),
                                                             update.version, after.pending_crc32c, expected_crc));
    }
    return Status::ok();
  }

  // A middle target (neither head nor tail) forwards the update downstream while its own pending
  // version is being written, and handles the successor's answer once both are done: at replication 3
  // the middle's synced batch leaves the write's critical path. Its acknowledgement upstream still
  // means "stored here and committed at the tail". Once the forward is sent the version may be
  // committed downstream, so this target must end up holding it (the orphan resolution relies on "a
  // target that never stored a version means nothing downstream committed it"): a failed local store
  // is retried, after repairing a corrupt base, while the chunk stays locked; it is never given up
  // while this service runs (a restarted target is recovered by sync). docs/fs.md, "Forward while
  // storing".
  void store_and_forward(UpdatePtr update, ChunkUpdate chunk_update) {
    const ChainInfo* chain = routing.chain(update->chain);
    TargetId next = chain == nullptr ? 0 : successor(*chain, update->target);
    bool parallel = chain != nullptr && next != 0 && running && serving() && chain->index_of(update->target) >= 0 &&
                    receives_writes(state_of(*chain, update->target)) && state_of(*chain, next) != PublicTargetState::kSyncing &&
                    now() < update->deadline_ns;
    if (!parallel) {
      // Not a plain middle hop any more (routing changed meanwhile): store, then the usual forward_or_commit.
      auto store_ptr = targets.at(update->target).store;
      auto result = std::make_shared<Status>();
      executor.offload([store_ptr, result, chunk_update, crc = update->crc] { *result = store_pending_checked(*store_ptr, chunk_update, crc); },
                       [this, update, result] {
                         if (!result->is_ok()) return finish(update, result->with_context(fmt::format("target {}", update->target)));
                         forward_or_commit(update);
                       });
      return;
    }
    struct Join {
      bool stored = false;
      std::optional<Result<ForwardRsp>> forwarded;
    };
    auto join = std::make_shared<Join>();
    auto both_done = [this, update, join, next] {
      if (!join->stored || !join->forwarded.has_value()) return;
      on_forward_response(update, next, std::move(*join->forwarded));
    };
    ++stats.parallel_forwards;
    send_forward(update, next, chain->version, false, update->data, [join, both_done](Result<ForwardRsp> rsp) {
      join->forwarded = std::move(rsp);
      both_done();
    });
    store_until_stored(update, next, std::move(chunk_update), 0, std::make_shared<std::function<void()>>([join, both_done] {
      join->stored = true;
      both_done();
    }));
  }

  // store_and_forward's local store, retried until it lands (see there).
  void store_until_stored(UpdatePtr update, TargetId next, ChunkUpdate chunk_update, int attempt, std::shared_ptr<std::function<void()>> stored) {
    auto store_ptr = targets.at(update->target).store;
    auto result = std::make_shared<Status>();
    executor.offload(
        [store_ptr, result, chunk_update, crc = update->crc] { *result = store_pending_checked(*store_ptr, chunk_update, crc, true); },
        [this, update, next, result, chunk_update, attempt, stored, gen = generation] {
          if (gen != generation) return;  // stopped: a restarted service recovers the chunk
          if (result->is_ok()) return (*stored)();
          FF_LOG_WARN("target {}: storing chunk {} v{} after forwarding it failed (attempt {}): {}", update->target,
                      update->chunk.to_string(), update->version, attempt + 1, *result);
          // Once this target no longer serves in the chain (offline, waiting, or syncing after a chain change), the
          // version need not land here: the last serving target decides what is committed, and this target syncs
          // from its predecessor before it serves again, which replaces this chunk. Retrying on would keep the
          // chunk's lock that the sync's replacement waits for (the simulation's seed 108970 under unlimited
          // faults: a corrupt base whose version no replica held any more, retried 170 times while the sync stood
          // still and the chain never served again).
          if (!serving_in(routing.chain(update->chain), update->target)) {
            return finish(update, result->with_context(fmt::format("target {} left the chain's serving targets; "
                                                                   "its sync brings the chunk",
                                                                   update->target)));
          }
          int64_t backoff = config.retry_backoff_ns * std::min(1 << std::min(attempt, 5), 20);
          auto retry = [this, update, next, chunk_update, attempt, stored, gen, backoff] {
            if (gen != generation) return;
            executor.post_after(backoff, [this, update, next, chunk_update, attempt, stored, gen] {
              if (gen != generation) return;
              store_until_stored(update, next, chunk_update, attempt + 1, stored);
            });
          };
          if (fs_error_of(*result) == FsError::kChecksumMismatch || result->code() == StatusCode::kDataLoss) {
            // The committed base is corrupt here. The successor may have committed this very version
            // already (and be the only intact copy left of the base's version): adopt its copy;
            // else drop a stale pending version (this update replaces it anyway, and repair refuses a
            // chunk with one), repair the base from a replica (the lock is ours) and retry.
            return adopt_from_successor(update, next, [this, update, stored, retry, gen](Status adopted) {
              if (gen != generation) return;
              if (adopted.is_ok()) return (*stored)();
              auto store_ptr = targets.at(update->target).store;
              executor.offload(
                  [store_ptr, chunk = update->chunk] {
                    Result<ChunkMeta> meta = store_ptr->stat(chunk);
                    if (meta.is_ok() && meta->pending_version != 0) (void)store_ptr->abort_pending(chunk, meta->pending_version);
                  },
                  [this, update, retry, gen] {
                    if (gen != generation) return;
                    repair_locked(update->chain, update->target, update->chunk, [retry](Status) { retry(); });
                  });
            });
          }
          retry();
        });
  }

  // Installs the successor's committed copy of update->version (CRC update->crc) here as committed
  // (a later commit of that version is then a no-op). Fails when the successor has another version.
  void adopt_from_successor(UpdatePtr update, TargetId next, std::function<void(Status)> done) {
    const ChainInfo* chain = routing.chain(update->chain);
    if (chain == nullptr) return done(fs_error(FsError::kUnknownChain, fmt::format("chain {} unknown", update->chain)));
    ReadReq req{.chain = update->chain, .chain_version = chain->version, .target = next, .chunk = update->chunk,
                .offset = 0, .length = UINT64_MAX, .mode = ReadMode::kRelaxed, .any_state = true};
    rpc.call(routing.address_of(next).value_or(""), Request{req}, config.rpc_timeout_ns,
             [this, update, done](Result<Response> response) {
               Result<ReadRsp> rsp = response_as<ReadRsp>(std::move(response));
               if (!rsp.is_ok()) return done(rsp.status());
               if (rsp->meta.committed_version != update->version || rsp->meta.committed_crc32c != update->crc ||
                   crc32c(rsp->payload()) != update->crc) {
                 return done(fs_error(FsError::kVersionMismatch, fmt::format("successor has chunk {} v{}, not v{}", update->chunk.to_string(),
                                                                             rsp->meta.committed_version, update->version)));
               }
               auto store_ptr = targets.at(update->target).store;
               auto result = std::make_shared<Status>();
               executor.offload(
                   [store_ptr, result, chunk = update->chunk, rsp = std::move(*rsp)] {
                     *result = store_ptr->put_full_replacement(chunk, rsp.meta.committed_version, rsp.meta.chain_version, rsp.payload());
                   },
                   [this, update, result, done] {
                     if (result->is_ok()) {
                       FF_LOG_INFO("target {}: adopted chunk {} v{} from its successor (local base corrupt)", update->target,
                                   update->chunk.to_string(), update->version);
                       observe(update->target, update->chunk, update->version, update->crc);
                     }
                     done(*result);
                   });
             });
  }


  void handle_write(const ServerContext& context, WriteReq req, Reply reply) {
    ++stats.writes;
    auto chain_or = check_target(req.chain, req.chain_version, head_target(req.chain));
    if (!chain_or.is_ok()) return reply(chain_or.status());
    const ChainInfo& chain = **chain_or;
    TargetId head = head_target(req.chain);
    auto write_chain = chain.write_chain();
    if (write_chain.empty() || write_chain.front() != head) {
      return reply(fs_error(FsError::kNotHead, fmt::format("node {} is not the head of chain {}", config.node, req.chain)));
    }
    uint64_t max_bytes = store(head).max_chunk_bytes();
    if (req.truncate && !req.payload().empty()) {
      return reply(
          fs_error(FsError::kMalformed, fmt::format("truncate of chunk {} to {} bytes carries {} bytes of data",
                                                    req.chunk.to_string(), req.offset, req.payload().size())));
    }
    if (req.offset > max_bytes || req.payload().size() > max_bytes - req.offset) {
      return reply(fs_error(FsError::kOversize, fmt::format("write of {} bytes at offset {} exceeds chunk size {}", req.payload().size(), req.offset, max_bytes)));
    }
    if (auto done = done_writes.find(req.request_id); done != done_writes.end()) {
      ++stats.dedupe_hits;
      return reply(Response{done->second});
    }
    if (auto join = joining.find(req.request_id); join != joining.end()) {
      join->second.push_back(std::move(reply));
      return;
    }
    if (inflight >= config.max_inflight_requests) {
      ++stats.busy;
      return reply(fs_error(FsError::kBusy, fmt::format("node {} has {} requests in flight", config.node, inflight)));
    }
    auto update = std::make_shared<Update>();
    update->request_id = req.request_id;
    update->chain = req.chain;
    update->target = head;
    update->chunk = req.chunk;
    update->offset = req.offset;
    update->data = take_payload(req);
    update->chunk_size = req.chunk_size;
    if (req.truncate) update->truncate_to = req.offset;
    // As in 3FS, the head keeps driving a write it has started (retrying the forward with the latest
    // routing) until it commits or this target leaves the write chain (chain change, lost lease), not
    // just until the client's deadline: a write abandoned half-way could be committed at the tail and
    // then overwritten by a later write of the same version. A client that timed out and retries with
    // the same request id joins the write in flight.
    (void)context;
    update->deadline_ns = INT64_MAX;
    update->head = true;
    ClientRequestId id = req.request_id;
    joining[id].push_back(std::move(reply));
    ++inflight;
    // The update outlives this call: finish() holds it while it runs done.
    Update* raw = update.get();
    update->done = [this, id, raw](Result<ForwardRsp> result) {
      --inflight;
      std::vector<Reply> replies = std::move(joining[id]);
      joining.erase(id);
      if (result.is_ok()) {
        WriteRsp rsp{.version = result->committed_version, .crc32c = result->committed_crc32c, .length = raw->length};
        remember(id, rsp);
        for (Reply& r : replies) r(Response{rsp});
      } else {
        for (Reply& r : replies) r(result.status());
      }
    };
    head_lock(update, head);
  }

  // A write at the head takes its chunk lock, after any removal in progress over its chunk.
  void head_lock(std::shared_ptr<Update> update, TargetId head) {
    Removal* removal = bugs.unordered_removal ? nullptr : removal_covering(head, update->chunk);
    if (removal != nullptr) {
      removal->blocked.push_back([this, update, head] { head_lock(update, head); });
      return;
    }
    if (!lock({head, update->chunk}, [this, update] { head_prepare(update); })) {
      ++stats.busy;
      auto done = std::move(update->done);
      done(fs_error(FsError::kBusy, fmt::format("chunk {} has too many waiting writes", update->chunk.to_string())));
    }
  }

  void remember(const ClientRequestId& id, const WriteRsp& rsp) {
    if (done_writes.emplace(id, rsp).second) done_order.push_back(id);
    while (done_order.size() > config.dedupe_entries) {
      done_writes.erase(done_order.front());
      done_order.pop_front();
    }
  }

  TargetId head_target(ChainId chain_id) const {
    const ChainInfo* chain = routing.chain(chain_id);
    if (chain == nullptr) return 0;
    for (const ChainTarget& entry : chain->targets) {
      const TargetInfo* info = routing.target(entry.target);
      if (info != nullptr && info->node == config.node) return entry.target;
    }
    return 0;
  }

  void handle_forward(const ServerContext& context, ForwardReq req, Reply reply) {
    auto chain_or = check_target(req.chain, req.chain_version, req.target);
    if (!chain_or.is_ok()) return reply(chain_or.status());
    const ChainInfo& chain = **chain_or;
    if (!receives_writes(state_of(chain, req.target))) {
      return reply(fs_error(FsError::kNotServing, fmt::format("target {} is {}", req.target, state_of(chain, req.target))));
    }
    if (req.remove) return handle_forward_remove(context, std::move(req), std::move(reply));
    bool tail = successor(chain, req.target) == 0;
    auto update = std::make_shared<Update>();
    update->request_id = req.request_id;
    update->chain = req.chain;
    update->target = req.target;
    update->chunk = req.chunk;
    update->offset = req.offset;
    update->data = take_payload(req);
    update->chunk_size = req.chunk_size;
    update->full_replacement = req.full_replacement;
    update->resolve = req.resolve_pending;
    update->version = req.version;
    update->crc = req.expected_crc32c;
    update->length = req.expected_length;
    update->deadline_ns = context.deadline_ns;
    update->done = [reply](Result<ForwardRsp> result) {
      if (result.is_ok()) return reply(Response{*result});
      reply(result.status());
    };
    if (!lock({req.target, req.chunk}, [this, update, tail] { forward_prepare(update, tail); })) {
      ++stats.busy;
      reply(fs_error(FsError::kBusy, fmt::format("chunk {} has too many waiting writes", req.chunk.to_string())));
    }
  }

  // ------------------------------------------------------------------ removal
  void remove_here(ChainId chain_id, TargetId target, ChunkId begin, ChunkId end, ClientRequestId id, int64_t deadline_ns,
                   std::function<void(Result<uint64_t>)> done) {
    auto store_ptr = targets.at(target).store;
    auto removed = std::make_shared<Result<uint64_t>>(uint64_t{0});
    executor.offload([store_ptr, removed, begin, end] { *removed = store_ptr->remove_range(begin, end); },
                     [this, chain_id, target, begin, end, id, deadline_ns, removed, done] {
                       if (!removed->is_ok()) return done(removed->status());
                       forward_remove(chain_id, target, begin, end, id, deadline_ns, **removed, done);
                     });
  }

  void forward_remove(ChainId chain_id, TargetId target, ChunkId begin, ChunkId end, ClientRequestId id, int64_t deadline_ns,
                      uint64_t removed, std::function<void(Result<uint64_t>)> done) {
    const ChainInfo* chain = routing.chain(chain_id);
    if (chain == nullptr || chain->index_of(target) < 0) return done(fs_error(FsError::kUnknownChain, "chain vanished"));
    TargetId next = successor(*chain, target);
    if (next == 0) return done(removed);
    if (now() >= deadline_ns) return done(deadline_exceeded("remove forward past its deadline"));
    ForwardReq req{.request_id = id, .chain = chain_id, .chain_version = chain->version, .target = next, .chunk = begin,
                   .remove = true, .remove_end = end};
    rpc.call(routing.address_of(next).value_or(""), Request{std::move(req)}, std::min(config.rpc_timeout_ns, deadline_ns - now()),
             [this, chain_id, target, begin, end, id, deadline_ns, removed, done](Result<Response> response) {
               if (response.is_ok()) return done(removed);
               FF_LOG_DEBUG("target {}: removal of chunks [{}, {}) forwarded to its successor failed: {}", target,
                            begin.to_string(), end.to_string(), response.status());
               if (!retryable(response.status()) || now() + config.retry_backoff_ns >= deadline_ns) return done(response.status());
               executor.post_after(config.retry_backoff_ns, [=, this, gen = generation] {
                 if (gen != generation) return;
                 forward_remove(chain_id, target, begin, end, id, deadline_ns, removed, done);
               });
             });
  }

  void handle_forward_remove(const ServerContext& context, ForwardReq req, Reply reply) {
    remove_locked(req.chain, req.target, req.chunk, req.remove_end, req.request_id, context.deadline_ns,
                  [reply](Result<uint64_t> removed) {
                    if (!removed.is_ok()) return reply(removed.status());
                    reply(Response{ForwardRsp{.committed_version = 0, .committed_crc32c = 0, .removed = *removed}});
                  });
  }

  // A removal on one target, ordered with the updates of its chunks there: it first takes, in key
  // order, the chunk locks held in its range (an update in flight down the chain, or one acknowledged
  // upstream whose commit here is still running: ack_then_commit keeps the lock until it lands; a
  // removal before that commit would leave it retrying against a removed chunk, holding the lock for
  // good), then removes here and downstream, then releases them.
  void remove_locked(ChainId chain_id, TargetId target, ChunkId begin, ChunkId end, ClientRequestId id, int64_t deadline_ns,
                     std::function<void(Result<uint64_t>)> done) {
    auto keys = held_locks(target, begin, end);
    auto held = std::make_shared<size_t>(0);
    auto release = [this, keys, held, done](Result<uint64_t> removed) {
      for (size_t i = 0; i < *held; ++i) unlock((*keys)[i]);
      done(std::move(removed));
    };
    acquire_in_order(keys, held, [=, this] { remove_here(chain_id, target, begin, end, id, deadline_ns, release); }, release);
  }

  // The chunk locks of `target` held now in [begin, end), in key order (none with the injected
  // unordered_removal bug).
  std::shared_ptr<std::vector<LockKey>> held_locks(TargetId target, const ChunkId& begin, const ChunkId& end) const {
    auto keys = std::make_shared<std::vector<LockKey>>();
    for (auto it = locks.lower_bound({target, begin});
         !bugs.unordered_removal && it != locks.end() && it->first.first == target && it->first.second < end; ++it) {
      keys->push_back(it->first);
    }
    return keys;
  }

  void handle_remove(const ServerContext& /*context*/, RemoveChunksReq req, Reply reply) {
    TargetId head = head_target(req.chain);
    auto chain_or = check_target(req.chain, req.chain_version, head);
    if (!chain_or.is_ok()) return reply(chain_or.status());
    auto write_chain = (*chain_or)->write_chain();
    if (write_chain.empty() || write_chain.front() != head) {
      return reply(fs_error(FsError::kNotHead, fmt::format("node {} is not the head of chain {}", config.node, req.chain)));
    }
    if (!(req.begin < req.end)) return reply(fs_error(FsError::kMalformed, "remove range is empty or reversed"));
    // Block new writes in the range (they run after the removal, in order), then remove under the chunk
    // locks held in it. As a write, the head drives the removal down the chain until every successor has
    // it, past the client's deadline: a removal abandoned half-way would leave serving replicas
    // different (a target that leaves the chain instead is put right by its sync, which removes what its
    // predecessor lacks).
    auto removal = removals.insert(removals.end(), Removal{.target = head, .begin = req.begin, .end = req.end, .blocked = {}});
    remove_locked(req.chain, head, req.begin, req.end, req.request_id, INT64_MAX,
                  [this, removal, reply](Result<uint64_t> removed) {
                    auto blocked = std::move(removal->blocked);
                    removals.erase(removal);
                    for (auto& write : blocked) executor.post(std::move(write));
                    if (!removed.is_ok()) return reply(removed.status());
                    reply(Response{RemoveChunksRsp{*removed}});
                  });
  }

  // Takes the locks keys[*held..] one after another (each granted in turn), then runs `then`; if a lock
  // has too many waiters, `failed` gets [busy] (with *held counting the locks taken so far).
  void acquire_in_order(std::shared_ptr<std::vector<LockKey>> keys, std::shared_ptr<size_t> held, std::function<void()> then,
                        std::function<void(Result<uint64_t>)> failed) {
    if (*held == keys->size()) return then();
    const LockKey key = (*keys)[*held];
    bool queued = lock(key, [this, keys, held, then, failed] {
      ++*held;
      acquire_in_order(keys, held, then, failed);
    });
    if (!queued) {
      ++stats.busy;
      failed(fs_error(FsError::kBusy, fmt::format("chunk {} has too many waiting writes", key.second.to_string())));
    }
  }

  // ------------------------------------------------------------------ reads
  // A local read (local_read.h): the caller runs on this host and reads the bytes from the store's
  // file itself; the store's locate() says where they lie (a store that cannot, or any error there,
  // reads as usual: the read reports and repairs corruption).
  static bool wants_local_read(const ReadReq& req) {
    return !req.local_host.empty() && req.local_host == this_host_id();
  }
  // Where the bytes of a local read lie: the range's, or the whole committed version's (ReadReq::whole_chunk).
  static Result<LocalChunkRead> locate(ChunkStore& store, const ReadReq& req) {
    if (req.whole_chunk) return store.locate(req.chunk, 0, std::numeric_limits<uint64_t>::max(), req.mode);
    return store.locate(req.chunk, req.offset, req.length, req.mode);
  }

  // The answer to a local read: where the bytes lie, or [chunk_dirty] for a strict read of a chunk with
  // a pending version (the caller counts it, on its own counter).
  Result<ReadRsp> local_answer(const ReadReq& req, LocalChunkRead located) {
    if (located.dirty && req.mode == ReadMode::kStrict) {
      return fs_error(FsError::kChunkDirty, fmt::format("chunk {} on target {} has pending v{}", req.chunk.to_string(),
                                                        req.target, located.meta.pending_version));
    }
    local_reads.fetch_add(1, std::memory_order_relaxed);
    ReadRsp rsp{.meta = located.meta, .data = {}, .dirty = located.dirty};
    rsp.local = std::move(located.extent);  // none when there is nothing to read (past the end)
    return rsp;
  }

  // Whether the chunk's pending version `version` is one the target held when this process opened it (or the
  // target's scan for those has not finished). Such a version may be acknowledged already: a crash undoes the lazy
  // commits no synced batch covered (docs/fs.md, "Lazy commits"), and the marks of versions acknowledged but not yet
  // committed here (acked_version) die with the process; its tail may have left the chain since. So the committed
  // version here may be older than one a client was told is written, and a relaxed read of it would be stale (the
  // simulation's seed 26510 under unlimited faults: v1 read at the only serving target, whose lazy commit of the
  // acknowledged v2 a crash had undone). Such reads answer [chunk_dirty] until the version changes (the head's
  // orphan scan after a chain change rolls it forward or drops it; the chunk's next write resolves it). A pending
  // version written by this process is acknowledged to no client before it is committed or marked here.
  bool inherited(TargetId target, const ChunkId& chunk, uint32_t version) {
    if (inherited_scans.contains(target)) return true;
    auto found = inherited_pending.find(LockKey{target, chunk});
    if (found == inherited_pending.end()) return false;
    if (found->second == version) return true;
    inherited_pending.erase(found);  // settled since (committed or dropped), then written again
    return false;
  }
  static Status unsettled(const ReadReq& req, const ChunkMeta& meta) {
    return fs_error(FsError::kChunkDirty,
                    fmt::format("chunk {} on target {}: pending v{} predates this process and is not settled yet",
                                req.chunk.to_string(), req.target, meta.pending_version));
  }

  void read_one(ReadReq req, std::function<void(Result<ReadRsp>)> done, bool repaired = false, ReadAnswer answer = {}) {
    ++stats.reads;
    if (req.any_state) {
      // A repair fetch: the caller checks version and CRC, so neither the chain version nor the
      // target's public state matters; the target must only be ours.
      const TargetInfo* info = routing.target(req.target);
      if (!running || info == nullptr || info->node != config.node || targets.count(req.target) == 0) {
        return done(fs_error(FsError::kUnknownTarget, fmt::format("target {} is not on node {}", req.target, config.node)));
      }
      req.mode = ReadMode::kRelaxed;
      repaired = true;
    } else {
      auto chain_or = check_target(req.chain, req.chain_version, req.target);
      if (!chain_or.is_ok()) return done(chain_or.status());
      if (state_of(**chain_or, req.target) != PublicTargetState::kServing) {
        return done(fs_error(FsError::kNotServing, fmt::format("target {} is {}", req.target, state_of(**chain_or, req.target))));
      }
      if (auto acked = acked_version(req.target, req.chunk)) {
        ++stats.dirty_reads;
        return done(fs_error(FsError::kChunkDirty, fmt::format("chunk {} on target {}: v{} is acknowledged, its commit here is in progress",
                                                               req.chunk.to_string(), req.target, *acked)));
      }
    }
    auto store_ptr = targets.at(req.target).store;
    struct Outcome {
      Result<ChunkRead> plain = Status(StatusCode::kInternal, "unset");
      Result<SharedChunkRead> shared = Status(StatusCode::kInternal, "unset");
      std::optional<LocalChunkRead> local;  // a local read the store could answer (wants_local_read)
      bool answered = false;  // answered from the worker (ReadAnswer::fast)
      std::optional<ChunkMeta> pending_only;  // not found: a pending version with nothing committed below it
    };
    auto outcome = std::make_shared<Outcome>();
    bool shared = answer.shared;
    const bool local = wants_local_read(req) && !repaired;
    executor.offload(
        [store_ptr, outcome, req, shared, local, fast = std::move(answer.fast)] {
          if (local) {
            Result<LocalChunkRead> located = locate(*store_ptr, req);
            if (located.is_ok()) {
              outcome->local = std::move(*located);
              return;
            }
          }
          if (!shared) {
            outcome->plain = store_ptr->read(req.chunk, req.offset, req.length, req.mode);
            outcome->pending_only = pending_without_commit(*store_ptr, req.chunk, outcome->plain.status());
            return;
          }
          outcome->shared = store_ptr->read_shared(req.chunk, req.offset, req.length, req.mode);
          outcome->pending_only = pending_without_commit(*store_ptr, req.chunk, outcome->shared.status());
          // A dirty read is decided on the executor (read_one's completion: strict ones are dirty, relaxed ones too
          // while the pending version predates this process: inherited()).
          if (fast && outcome->shared.is_ok() && !outcome->shared->dirty) {
            outcome->answered = true;
            SharedChunkRead& read = *outcome->shared;
            fast(ReadRsp{.meta = read.meta, .data = {}, .dirty = read.dirty, .shared_data = std::move(read.data)});
          }
        },
        [this, req, outcome, done, repaired, shared] {
          if (outcome->answered) return;
          if (outcome->local && outcome->local->dirty && req.mode == ReadMode::kRelaxed && !req.any_state &&
              inherited(req.target, req.chunk, outcome->local->meta.pending_version)) {
            ++stats.dirty_reads;
            return done(unsettled(req, outcome->local->meta));
          }
          if (outcome->local) {
            Result<ReadRsp> rsp = local_answer(req, std::move(*outcome->local));
            if (!rsp.is_ok()) ++stats.dirty_reads;
            return done(std::move(rsp));
          }
          const Status& status = shared ? outcome->shared.status() : outcome->plain.status();
          if (!status.is_ok()) {
            if (status.code() == StatusCode::kDataLoss && !repaired) return repair(req, done);
            // The first version of the chunk is pending and predates this process: it may be acknowledged (its lazy
            // commit undone by a crash), so "not found" would be stale (the simulation's seed 20444).
            if (outcome->pending_only && !req.any_state &&
                inherited(req.target, req.chunk, outcome->pending_only->pending_version)) {
              ++stats.dirty_reads;
              return done(unsettled(req, *outcome->pending_only));
            }
            return done(status);
          }
          const ChunkMeta& meta = shared ? outcome->shared->meta : outcome->plain->meta;
          bool dirty = shared ? outcome->shared->dirty : outcome->plain->dirty;
          if (dirty && req.mode == ReadMode::kStrict) {
            ++stats.dirty_reads;
            return done(fs_error(FsError::kChunkDirty, fmt::format("chunk {} on target {} has pending v{}",
                                                                   req.chunk.to_string(), req.target, meta.pending_version)));
          }
          if (dirty && !req.any_state && inherited(req.target, req.chunk, meta.pending_version)) {
            ++stats.dirty_reads;
            return done(unsettled(req, meta));
          }
          if (shared)
            return done(
                ReadRsp{.meta = meta, .data = {}, .dirty = dirty, .shared_data = std::move(outcome->shared->data)});
          done(ReadRsp{.meta = meta, .data = std::move(outcome->plain->data), .dirty = dirty});
        });
  }

  // A read found corruption: under the chunk lock, fetch the same committed version from another
  // replica of the chain and install it, then read again.
  void repair(ReadReq req, std::function<void(Result<ReadRsp>)> done) {
    repair_under_lock(req.chain, req.target, req.chunk, [this, req, done](Status status) {
      if (!status.is_ok()) return done(status);
      read_one(req, done, true);
    });
  }

  // repair_locked with the chunk's lock taken first and released before done (busy when its queue is full).
  void repair_under_lock(ChainId chain_id, TargetId mine, ChunkId chunk, std::function<void(Status)> done) {
    LockKey key{mine, chunk};
    bool queued = lock(key, [this, chain_id, mine, chunk, done, key] {
      repair_locked(chain_id, mine, chunk, [this, done, key](Status status) {
        unlock(key);
        done(std::move(status));
      });
    });
    if (!queued) done(fs_error(FsError::kBusy, "chunk lock queue full during repair"));
  }

  // Repairs a corrupted chunk of `mine` (the caller holds its lock): any other target of the chain, in
  // any state, that holds the same committed version with bytes matching its CRC32C is a source.
  void repair_locked(ChainId chain_id, TargetId mine, ChunkId chunk, std::function<void(Status)> done) {
    const ChainInfo* chain = routing.chain(chain_id);
    if (chain == nullptr) return done(fs_error(FsError::kUnknownChain, fmt::format("chain {} unknown", chain_id)));
    auto sources = std::make_shared<std::vector<TargetId>>();
    for (const ChainTarget& entry : chain->targets) {
      if (entry.target != mine) sources->push_back(entry.target);
    }
    auto store_ptr = targets.at(mine).store;
    auto meta = std::make_shared<Result<ChunkMeta>>(ChunkMeta{});
    executor.offload([store_ptr, meta, chunk] { *meta = store_ptr->stat(chunk); },
                     [this, chain_id, mine, chunk, sources, meta, done] {
                       if (!meta->is_ok()) return done(meta->status());
                       repair_from(chain_id, mine, chunk, **meta, sources, 0, done);
                     });
  }

  void repair_from(ChainId chain_id, TargetId mine, ChunkId chunk, ChunkMeta meta, std::shared_ptr<std::vector<TargetId>> sources,
                   size_t index, std::function<void(Status)> done) {
    if (index >= sources->size()) {
      return done(data_loss("chunk {} v{} on target {} is corrupt and no replica holding that version answered", chunk.to_string(),
                            meta.committed_version, mine));
    }
    TargetId source = (*sources)[index];
    const ChainInfo* chain = routing.chain(chain_id);
    ReadReq fetch{.chain = chain_id, .chain_version = chain == nullptr ? 0 : chain->version, .target = source, .chunk = chunk,
                  .offset = 0, .length = UINT64_MAX, .mode = ReadMode::kRelaxed, .any_state = true};
    rpc.call(routing.address_of(source).value_or(""), Request{fetch}, config.rpc_timeout_ns,
             [this, chain_id, mine, chunk, meta, sources, index, done, source](Result<Response> response) {
               Result<ReadRsp> rsp = response_as<ReadRsp>(std::move(response));
               if (!rsp.is_ok() || rsp->meta.committed_version != meta.committed_version || crc32c(rsp->payload()) != meta.committed_crc32c) {
                 FF_LOG_DEBUG("target {}: repair of chunk {} v{}: target {} is no source ({})", mine, chunk.to_string(),
                              meta.committed_version, source, rsp.is_ok() ? fmt::format("has v{}", rsp->meta.committed_version) : rsp.status().to_string());
                 return repair_from(chain_id, mine, chunk, meta, sources, index + 1, done);
               }
               auto store_ptr = targets.at(mine).store;
               auto result = std::make_shared<Status>();
               executor.offload(
                   [store_ptr, result, chunk, meta, fetched = std::move(*rsp)] {
                     std::span<const std::byte> data = fetched.payload();
                     Result<ChunkMeta> now_meta = store_ptr->stat(chunk);
                     if (now_meta.is_ok() && (now_meta->committed_version != meta.committed_version || now_meta->pending_version != 0)) {
                       *result = data_loss("chunk {} changed during its repair (v{} -> v{})", chunk.to_string(), meta.committed_version,
                                           now_meta->committed_version);
                       return;
                     }
                     *result = store_ptr->put_full_replacement(chunk, meta.committed_version, meta.chain_version, data);
                   },
                   [this, mine, chunk, result, done, source] {
                     if (!result->is_ok()) return done(*result);
                     ++stats.repairs;
                     FF_LOG_INFO("target {}: repaired chunk {} from target {}", mine, chunk.to_string(), source);
                     done(Status::ok());
                   });
             });
  }

  // The store a fast-lane read of req may use, after the checks of handle() against the published snapshot;
  // null when req must go through handle() (which answers a failed check with its error).
  std::shared_ptr<ChunkStore> fast_store(const ReadView& snap, const ReadReq& req) const {
    if (req.any_state) return nullptr;
    const ChainInfo* chain = snap.routing.chain(req.chain);
    if (chain == nullptr || (chain->version != req.chain_version && !bugs.ignore_chain_version)) return nullptr;
    const TargetInfo* info = snap.routing.target(req.target);
    if (info == nullptr || info->node != config.node || !serving_in(chain, req.target)) return nullptr;
    auto store_it = snap.stores.find(req.target);
    if (store_it == snap.stores.end() || store_it->second == nullptr) return nullptr;
    if (acked_version(req.target, req.chunk)) return nullptr;  // handle() answers [chunk_dirty]
    return store_it->second;
  }
  std::shared_ptr<const ReadView> fast_snapshot() const {
    std::shared_ptr<const ReadView> snap = snapshot();
    if (!snap->up || now() - view_mgmtd_ok_ns.load() >= config.heartbeat_timeout_ns / 2) return nullptr;
    return snap;
  }

  // A fast-lane read on an offload worker: the answer, or nullopt when the executor's read path must decide
  // (read_one): corruption, which it repairs, or a relaxed read of a pending version, which it refuses while that
  // version predates this process (inherited()).
  std::optional<Result<ReadRsp>> fast_read(ChunkStore& store, const ReadReq& req, bool shared) {
    if (wants_local_read(req)) {
      // Where the committed bytes lie (wants_local_read); the reader checks them.
      Result<LocalChunkRead> located = locate(store, req);
      if (located.is_ok()) {
        if (located->dirty && req.mode == ReadMode::kRelaxed) return std::nullopt;
        Result<ReadRsp> rsp = local_answer(req, std::move(*located));
        if (!rsp.is_ok()) fast_dirty_reads.fetch_add(1, std::memory_order_relaxed);
        return rsp;
      }
    }
    Result<SharedChunkRead> read = store.read_shared(req.chunk, req.offset, req.length, req.mode);
    if (!read.is_ok()) {
      // Corruption, or nothing committed over a pending version (which may be an acknowledged one): the executor's
      // read path decides (read_one).
      if (read.status().code() == StatusCode::kDataLoss) return std::nullopt;
      if (pending_without_commit(store, req.chunk, read.status())) return std::nullopt;
      return read.status();
    }
    if (read->dirty && req.mode == ReadMode::kRelaxed) return std::nullopt;
    if (read->dirty && req.mode == ReadMode::kStrict) {
      fast_dirty_reads.fetch_add(1, std::memory_order_relaxed);
      return fs_error(FsError::kChunkDirty, fmt::format("chunk {} on target {} has pending v{}", req.chunk.to_string(),
                                                        req.target, read->meta.pending_version));
    }
    ReadRsp rsp{.meta = read->meta, .data = {}, .dirty = read->dirty, .shared_data = std::move(read->data)};
    if (!shared) {
      rsp.data = rsp.shared_data.to_vector();
      rsp.shared_data = {};
    }
    return rsp;
  }

  bool try_read(const ServerContext& context, ReadReq& req, Reply& reply) {
    if (!context.reply_from_any_thread) return false;
    std::shared_ptr<const ReadView> snap = fast_snapshot();
    if (snap == nullptr) return false;
    std::shared_ptr<ChunkStore> store = fast_store(*snap, req);
    if (store == nullptr) return false;
    fast_reads.fetch_add(1, std::memory_order_relaxed);
    bool shared = context.shared_payloads;
    auto work = [this, store = std::move(store), req, reply = std::move(reply), shared]() mutable {
      std::optional<Result<ReadRsp>> rsp = fast_read(*store, req, shared);
      if (rsp && rsp->is_ok()) return reply(Response{std::move(**rsp)});
      if (rsp) return reply(rsp->status());
      // The executor's read path decides (corruption: it repairs the chunk from a replica and reads again).
      executor.post([this, req, reply = std::move(reply)]() mutable {
        read_one(req, [reply](Result<ReadRsp> rsp) {
          if (!rsp.is_ok()) return reply(rsp.status());
          reply(Response{std::move(*rsp)});
        });
      });
    };
    read_here_or_on_worker(context.receiver_idle && req.length <= kInlineReadMaxBytes && !wants_local_read(req), 1,
                           std::move(work));
    return true;
  }

  // Runs a fast-lane read (or batch of `reads`) on the calling thread when `here` (a small one with nothing else
  // waiting on its connection: waking a worker for it cost about as much as the read; docs/fs.md, "Small reads on
  // the receiving thread"), else on an offload worker.
  void read_here_or_on_worker(bool here, size_t reads, Executor::Task work) {
    if (!here) return executor.offload(std::move(work), {});
    inline_reads.fetch_add(reads, std::memory_order_relaxed);
    work();
  }

  // Reads reads[i] for every i in `which` (non-empty) through read_one into answer->results[i], and replies with the
  // answer once the last is in. Executor thread.
  void read_into_batch(const std::vector<ReadReq>& reads, const std::vector<size_t>& which,
                       std::shared_ptr<BatchReadRsp> answer, Reply reply) {
    auto left = std::make_shared<size_t>(which.size());
    for (size_t i : which) {
      read_one(reads[i], [answer, left, i, reply](Result<ReadRsp> rsp) {
        if (rsp.is_ok()) {
          answer->results[i].rsp = std::move(*rsp);
        } else {
          answer->results[i].status = rsp.status();
        }
        if (--*left == 0) reply(Response{std::move(*answer)});
      });
    }
  }

  // A BatchReadReq in the fast lane when every read passes its checks: the reads one after another on one offload
  // worker (batches carry small reads: a client coalesces reads of at most ClientConfig::coalesce_read_max_bytes),
  // those fast_read leaves undecided (corrupted chunks, relaxed reads of pending versions) then through the
  // executor's read path.
  bool try_batch_read(const ServerContext& context, BatchReadReq& batch, Reply& reply) {
    if (!context.reply_from_any_thread || batch.reads.empty()) return false;
    std::shared_ptr<const ReadView> snap = fast_snapshot();
    if (snap == nullptr) return false;
    std::vector<std::shared_ptr<ChunkStore>> stores;
    stores.reserve(batch.reads.size());
    for (const ReadReq& req : batch.reads) {
      stores.push_back(fast_store(*snap, req));
      if (stores.back() == nullptr) return false;
    }
    fast_reads.fetch_add(batch.reads.size(), std::memory_order_relaxed);
    const size_t reads_in_batch = batch.reads.size();
    const bool shared = context.shared_payloads;
    // At most kInlineReadMaxBytes in all (each length checked first, so the sum cannot overflow).
    uint64_t batch_bytes = 0;
    bool small = context.receiver_idle;
    for (size_t i = 0; small && i < batch.reads.size(); ++i) {
      const ReadReq& req = batch.reads[i];
      small = req.length <= kInlineReadMaxBytes - batch_bytes && !wants_local_read(req);
      batch_bytes += small ? req.length : 0;
    }
    auto work =
        [this, stores = std::move(stores), reads = std::move(batch.reads), reply = std::move(reply), shared]() mutable {
          auto answer = std::make_shared<BatchReadRsp>();
          answer->results.resize(reads.size());
          std::vector<size_t> undecided;  // for the executor's read path (fast_read)
          for (size_t i = 0; i < reads.size(); ++i) {
            std::optional<Result<ReadRsp>> rsp = fast_read(*stores[i], reads[i], shared);
            if (!rsp) {
              undecided.push_back(i);
            } else if (rsp->is_ok()) {
              answer->results[i].rsp = std::move(**rsp);
            } else {
              answer->results[i].status = rsp->status();
            }
          }
          if (undecided.empty()) return reply(Response{std::move(*answer)});
          executor.post([this, answer, undecided, reads = std::move(reads), reply = std::move(reply)]() mutable {
            read_into_batch(reads, undecided, answer, std::move(reply));
          });
        };
    read_here_or_on_worker(small, reads_in_batch, std::move(work));
    return true;
  }

  void handle_query_last(QueryLastChunkReq req, Reply reply) {
    auto chain_or = check_target(req.chain, req.chain_version, req.target);
    if (!chain_or.is_ok()) return reply(chain_or.status());
    if (state_of(**chain_or, req.target) != PublicTargetState::kServing) {
      return reply(fs_error(FsError::kNotServing, fmt::format("target {} is not serving", req.target)));
    }
    auto store_ptr = targets.at(req.target).store;
    auto result = std::make_shared<Result<QueryLastChunkRsp>>(QueryLastChunkRsp{});
    executor.offload(
        [this, store_ptr, result, req] {
          QueryLastChunkRsp rsp;
          ChunkId begin{req.inode, req.begin_index};
          ChunkId end = req.end_index == UINT64_MAX ? ChunkId{req.inode + 1, 0} : ChunkId{req.inode, req.end_index};
          // Versions acknowledged but not yet committed here (ack_then_commit) are committed in the
          // chain: their pending length is the length. Taken before listing: a mark that is gone by
          // then belongs to a commit that the listing shows.
          std::map<ChunkId, uint32_t> acked;
          {
            std::lock_guard lock(marks_mutex);
            for (auto it = acked_pending.lower_bound({req.target, begin}); it != acked_pending.end() && it->first.first == req.target &&
                                                                            it->first.second < end;
                 ++it) {
              acked[it->first.second] = it->second;
            }
          }
          constexpr uint64_t kBatch = 1024;
          for (int round = 0; round < 1 << 20; ++round) {  // bounded: 1G chunks
            Result<std::vector<ChunkMeta>> metas = store_ptr->list(begin, end, kBatch);
            if (!metas.is_ok()) {
              *result = metas.status();
              return;
            }
            for (const ChunkMeta& meta : *metas) {
              auto mark = acked.find(meta.id);
              bool acked_pending_version = mark != acked.end() && meta.pending_version == mark->second;
              if (meta.committed_version == 0 && !acked_pending_version) continue;
              rsp.found = true;
              rsp.last = meta.id;
              rsp.last_length = acked_pending_version ? meta.pending_length : meta.committed_length;
              ++rsp.chunk_count;
            }
            if (metas->size() < kBatch) break;
            begin = metas->back().id;
            ++begin.index;
          }
          *result = rsp;
        },
        [result, reply] {
          if (!result->is_ok()) return reply(result->status());
          reply(Response{**result});
        });
  }

  // ------------------------------------------------------------------ recovery (syncing target side)
  void handle_sync_dump(SyncDumpMetaReq req, Reply reply) {
    auto chain_or = check_target(req.chain, req.chain_version, req.target);
    if (!chain_or.is_ok()) return reply(chain_or.status());
    if (!receives_writes(state_of(**chain_or, req.target))) {
      return reply(fs_error(FsError::kNotServing, fmt::format("target {} is {}: neither syncing nor serving",
                                                              req.target, state_of(**chain_or, req.target))));
    }
    auto store_ptr = targets.at(req.target).store;
    const uint32_t page = std::max<uint32_t>(1, config.sync_dump_page);
    const uint32_t limit = req.limit == 0 ? page : std::min(req.limit, page);
    auto result = std::make_shared<Result<std::vector<ChunkMeta>>>(std::vector<ChunkMeta>{});
    executor.offload(
        [store_ptr, result, from = req.from, limit] {
          *result = store_ptr->list(from, ChunkId{UINT64_MAX, UINT64_MAX}, limit);
        },
        [result, reply, limit] {
          if (!result->is_ok()) return reply(result->status());
          const bool more = (*result)->size() >= limit;
          reply(Response{SyncDumpMetaRsp{.chunks = std::move(**result), .more = more}});
        });
  }

  void handle_sync_replace(const ServerContext& context, SyncReplaceReq req, Reply reply) {
    auto chain_or = check_target(req.chain, req.chain_version, req.target);
    if (!chain_or.is_ok()) return reply(chain_or.status());
    if (!receives_writes(state_of(**chain_or, req.target))) {
      return reply(fs_error(FsError::kNotServing, fmt::format("target {} does not take replacements", req.target)));
    }
    LockKey key{req.target, req.chunk};
    auto request = std::make_shared<SyncReplaceReq>(std::move(req));
    int64_t deadline = context.deadline_ns;
    bool queued = lock(key, [this, request, reply, key, deadline] {
      if (now() >= deadline) {
        unlock(key);
        return reply(deadline_exceeded("sync replace arrived late"));
      }
      auto store_ptr = targets.at(request->target).store;
      auto result = std::make_shared<Status>();
      executor.offload(
          [store_ptr, result, request] {
            if (request->remove) {
              ChunkId end = request->chunk;
              ++end.index;
              Result<uint64_t> removed = store_ptr->remove_range(request->chunk, end);
              *result = removed.is_ok() ? Status::ok() : removed.status();
            } else {
              *result = store_ptr->put_full_replacement(request->chunk, request->version, request->chunk_chain_version, request->data);
            }
          },
          [this, request, result, reply, key] {
            unlock(key);
            FF_LOG_DEBUG("target {}: sync replace of chunk {} v{} remove={}: {}", request->target, request->chunk.to_string(), request->version,
                         request->remove, *result);
            if (!result->is_ok()) return reply(*result);
            if (!request->remove) {
              Result<ChunkMeta> meta = targets.at(request->target).store->stat(request->chunk);
              if (meta.is_ok()) observe(request->target, request->chunk, meta->committed_version, meta->committed_crc32c);
            }
            ++stats.chunks_synced;
            reply(Response{SyncReplaceRsp{}});
          });
    });
    if (!queued) reply(fs_error(FsError::kBusy, "chunk lock queue full"));
  }

  void handle_sync_done(SyncDoneReq req, Reply reply) {
    auto chain_or = check_target(req.chain, req.chain_version, req.target);
    if (!chain_or.is_ok()) return reply(chain_or.status());
    if (state_of(**chain_or, req.target) != PublicTargetState::kSyncing) {
      return reply(fs_error(FsError::kNotServing, fmt::format("target {} is not syncing", req.target)));
    }
    targets.at(req.target).up_to_date = true;
    targets.at(req.target).synced_chain_version = req.chain_version;
    ++stats.syncs_done;
    FF_LOG_DEBUG("target {}: sync done (chain {} v{})", req.target, req.chain, req.chain_version);
    heartbeat_soon();
    reply(Response{SyncDoneRsp{}});
  }

  // ------------------------------------------------------------------ recovery (predecessor side)
  // All of `target`'s chunk metadata, a page (SyncDumpMetaReq) per call: then(the chunks in id order, or the first
  // page's error). Pages are listed at different moments; the callers compare them with their own chunks as they
  // would one listing taken a little earlier (a chunk written or removed since is sent again or found missing, both
  // harmless: writes during a sync reach the syncing target as full replacements).
  void dump_meta(ChainId chain_id, ChainVersion version, TargetId target,
                 std::function<void(Result<std::vector<ChunkMeta>>)> then,
                 std::shared_ptr<std::vector<ChunkMeta>> got = nullptr, ChunkId from = {}) {
    if (got == nullptr) got = std::make_shared<std::vector<ChunkMeta>>();
    rpc.call(routing.address_of(target).value_or(""),
             Request{SyncDumpMetaReq{.chain = chain_id, .chain_version = version, .target = target, .from = from}},
             config.rpc_timeout_ns,
             [this, chain_id, version, target, then = std::move(then), got,
              gen = generation](Result<Response> response) mutable {
               if (gen != generation) return;
               Result<SyncDumpMetaRsp> page = response_as<SyncDumpMetaRsp>(std::move(response));
               if (!page.is_ok()) return then(page.status());
               if (!page->chunks.empty() && !got->empty() && !(got->back().id < page->chunks.front().id)) {
                 return then(fs_error(FsError::kMalformed,
                                      fmt::format("target {}: a metadata page starts at chunk {}, not after {}", target,
                                                  page->chunks.front().id.to_string(), got->back().id.to_string())));
               }
               got->insert(got->end(), std::make_move_iterator(page->chunks.begin()),
                           std::make_move_iterator(page->chunks.end()));
               std::optional<ChunkId> next = got->empty() ? std::nullopt : chunk_after(got->back().id);
               if (!page->more || page->chunks.empty() || !next) return then(std::move(*got));
               dump_meta(chain_id, version, target, std::move(then), got, *next);
             });
  }

  void maybe_start_syncs() {
    for (const auto& [chain_id, chain] : routing.chains) {
      auto write_chain = chain.write_chain();
      for (size_t i = 0; i + 1 < write_chain.size(); ++i) {
        const TargetInfo* info = routing.target(write_chain[i]);
        if (info == nullptr || info->node != config.node || targets.count(write_chain[i]) == 0) continue;
        if (state_of(chain, write_chain[i + 1]) != PublicTargetState::kSyncing) continue;
        auto job = sync_jobs.find(chain_id);
        if (job != sync_jobs.end() && job->second == chain.version) continue;
        sync_jobs[chain_id] = chain.version;
        run_sync(chain_id, chain.version, write_chain[i], write_chain[i + 1]);
      }
    }
  }

  bool sync_current(ChainId chain_id, ChainVersion version) const {
    auto job = sync_jobs.find(chain_id);
    const ChainInfo* chain = routing.chain(chain_id);
    return running && job != sync_jobs.end() && job->second == version && chain != nullptr && chain->version == version;
  }

  void sync_failed(ChainId chain_id, ChainVersion version, TargetId mine, TargetId peer, const Status& status) {
    FF_LOG_DEBUG("target {}: sync of target {} (chain {} v{}) failed: {}; retrying", mine, peer, chain_id, version, status);
    executor.post_after(config.retry_backoff_ns * 4, [this, chain_id, version, mine, peer, gen = generation] {
      if (gen != generation || !sync_current(chain_id, version)) return;
      run_sync(chain_id, version, mine, peer);
    });
  }

  void run_sync(ChainId chain_id, ChainVersion version, TargetId mine, TargetId peer) {
    dump_meta(chain_id, version, peer, [this, chain_id, version, mine, peer](Result<std::vector<ChunkMeta>> remote) {
      if (!sync_current(chain_id, version)) return;
      if (!remote.is_ok()) return sync_failed(chain_id, version, mine, peer, remote.status());
      auto store_ptr = targets.at(mine).store;
      auto local = std::make_shared<Result<std::vector<ChunkMeta>>>(std::vector<ChunkMeta>{});
      executor.offload(
          [store_ptr, local] { *local = list_all(*store_ptr); },
          [this, chain_id, version, mine, peer, local, remote = std::move(*remote)] {
            if (!sync_current(chain_id, version)) return;
            if (!local->is_ok()) return sync_failed(chain_id, version, mine, peer, local->status());
            std::map<ChunkId, ChunkMeta> theirs;
            for (const ChunkMeta& meta : remote) theirs[meta.id] = meta;
            std::vector<ChunkId> todo;
            if (!bugs.skip_sync) {
              for (const ChunkMeta& meta : **local) {
                auto it = theirs.find(meta.id);
                bool same = it != theirs.end() && it->second.committed_version == meta.committed_version &&
                            it->second.committed_crc32c == meta.committed_crc32c && it->second.pending_version == 0 &&
                            meta.pending_version == 0;
                if (!same) todo.push_back(meta.id);
                if (it != theirs.end()) theirs.erase(it);
              }
              for (const auto& [id, meta] : theirs) todo.push_back(id);  // only there: remove
            }
            start_sync_job(chain_id, version, mine, peer, std::move(todo));
          });
    });
  }

  // Fills a full replacement from a read of the chunk here: its committed version, or a removal where it is gone.
  // False for any other outcome of the read (the caller's to handle).
  static bool as_replacement(Result<ChunkRead>& read, SyncReplaceReq& req) {
    if (read.is_ok()) {
      req.version = read->meta.committed_version;
      req.chunk_chain_version = read->meta.chain_version;
      req.data = std::move(read->data);
      return true;
    }
    if (fs_error_of(read.status()) == FsError::kChunkNotFound) {
      req.remove = true;
      return true;
    }
    return false;
  }

  // One recovery's chunk replacements, up to StorageConfig::sync_batch in flight (each under its chunk's lock here;
  // different chunks are independent). The first failure stops new replacements; when the last one in flight is
  // back, the sync is retried whole (sync_failed), once.
  struct SyncJob {
    ChainId chain = 0;
    ChainVersion version = 0;
    TargetId mine = 0, peer = 0;
    std::vector<ChunkId> todo;
    size_t next = 0;  // the next chunk of todo to start
    size_t in_flight = 0;
    std::optional<Status> failure;
    bool finished = false;  // SyncDone sent or sync_failed called
  };

  void start_sync_job(ChainId chain_id, ChainVersion version, TargetId mine, TargetId peer, std::vector<ChunkId> todo) {
    auto job = std::make_shared<SyncJob>();
    job->chain = chain_id;
    job->version = version;
    job->mine = mine;
    job->peer = peer;
    job->todo = std::move(todo);
    sync_fill(job);
  }

  void sync_fill(const std::shared_ptr<SyncJob>& job) {
    if (job->finished || !sync_current(job->chain, job->version)) return;  // superseded: the rest finish alone
    const size_t window = std::max<uint32_t>(1, config.sync_batch);
    while (!job->failure && job->in_flight < window && job->next < job->todo.size()) {
      ++job->in_flight;
      sync_chunk(job, job->todo[job->next++]);
      if (job->finished) return;  // a replacement that failed at once reported the job
    }
    if (job->in_flight > 0) return;
    job->finished = true;
    if (job->failure) return sync_failed(job->chain, job->version, job->mine, job->peer, *job->failure);
    SyncDoneReq req{.chain = job->chain, .chain_version = job->version, .target = job->peer};
    rpc.call(routing.address_of(job->peer).value_or(""), Request{req}, config.rpc_timeout_ns,
             [this, job](Result<Response> response) {
               if (!response.is_ok())
                 return sync_failed(job->chain, job->version, job->mine, job->peer, response.status());
               FF_LOG_DEBUG("target {}: synced target {} (chain {} v{}, {} chunks replaced or removed)", job->mine,
                            job->peer, job->chain, job->version, job->todo.size());
             });
  }

  void sync_chunk_done(const std::shared_ptr<SyncJob>& job, Status status) {
    --job->in_flight;
    if (!status.is_ok() && !job->failure) job->failure = std::move(status);
    sync_fill(job);
  }

  // Sends `chunk` as it is here (a full replacement, or a removal where it is gone) to the syncing peer.
  void sync_chunk(const std::shared_ptr<SyncJob>& job, ChunkId chunk) {
    const TargetId mine = job->mine;
    LockKey key{mine, chunk};
    bool queued = lock(key, [this, job, mine, chunk, key] {
      auto store_ptr = targets.at(mine).store;
      auto read = std::make_shared<Result<ChunkRead>>(Status(StatusCode::kInternal, "unset"));
      auto rolled = std::make_shared<ChunkMeta>();
      executor.offload(
          [store_ptr, read, chunk, rolled] {
            // The lock is ours: a pending version here is orphaned. This is the last serving
            // target, so it commits it (an earlier tail may have) before sending the chunk.
            Result<ChunkMeta> meta = store_ptr->stat(chunk);
            if (meta.is_ok() && meta->pending_version != 0) {
              Status committed = store_ptr->commit(chunk, meta->pending_version);
              if (!committed.is_ok()) {
                *read = committed;
                return;
              }
              *rolled = *meta;
            }
            *read = store_ptr->read(chunk, 0, UINT64_MAX, ReadMode::kRelaxed);
          },
          [this, job, mine, chunk, key, read, rolled] {
            if (rolled->pending_version != 0) {
              FF_LOG_DEBUG("target {}: sync commits orphaned pending chunk {} v{}", mine, chunk.to_string(),
                           rolled->pending_version);
              observe(mine, chunk, rolled->pending_version, rolled->pending_crc32c);
            }
            if (!sync_current(job->chain, job->version)) {
              unlock(key);
              return sync_chunk_done(job, Status::ok());
            }
            SyncReplaceReq req{.chain = job->chain, .chain_version = job->version, .target = job->peer, .chunk = chunk};
            if (!as_replacement(*read, req)) {
              if (read->status().code() == StatusCode::kDataLoss) {
                // Our copy is corrupt: repair it from any replica holding that version (the
                // syncing peer included), then send it.
                return repair_locked(job->chain, mine, chunk, [this, job, chunk, key](Status status) {
                  unlock(key);
                  if (!status.is_ok()) return sync_chunk_done(job, std::move(status));
                  sync_chunk(job, chunk);
                });
              }
              unlock(key);
              return sync_chunk_done(job, read->status());
            }
            rpc.call(routing.address_of(job->peer).value_or(""), Request{std::move(req)}, config.rpc_timeout_ns,
                     [this, job, key](Result<Response> response) {
                       unlock(key);
                       sync_chunk_done(job, response.is_ok() ? Status::ok() : response.status());
                     });
          });
    });
    if (!queued) sync_chunk_done(job, fs_error(FsError::kBusy, "lock queue full"));
  }

  // Lists the pending versions a target just opened holds (inherited()).
  void scan_inherited(TargetId target) {
    inherited_scans.insert(target);
    auto store_ptr = targets.at(target).store;
    auto listed = std::make_shared<Result<std::vector<ChunkMeta>>>(std::vector<ChunkMeta>{});
    executor.offload(
        [store_ptr, listed] { *listed = list_all(*store_ptr); },
        [this, target, listed, gen = generation] {
          if (gen != generation) return;
          if (!listed->is_ok()) {
            FF_LOG_WARN("target {}: listing its pending versions failed ({}); scanning again", target,
                        listed->status());
            return executor.post_after(config.retry_backoff_ns, [this, target, gen] {
              if (gen == generation) scan_inherited(target);
            });
          }
          for (const ChunkMeta& meta : **listed) {
            if (meta.pending_version != 0) inherited_pending[LockKey{target, meta.id}] = meta.pending_version;
          }
          inherited_scans.erase(target);
        });
  }

  // ------------------------------------------------------------------ mgmtd: register, heartbeat, routing
  void apply_routing(RoutingInfo info) {
    if (info.version < routing.version) return;
    const bool changed = info.version > routing.version;
    routing = std::move(info);
    // A chain may have changed: local readers ask again (they check their own routing for the rest).
    if (changed) {
      for (auto& [id, target] : targets) {
        if (target.store) target.store->local_reads_changed();
      }
    }
    for (const auto& [id, target] : routing.targets) {
      if (target.node != config.node) continue;
      if (targets.count(id) == 0) {
        Result<std::shared_ptr<ChunkStore>> store_or = factory(id);
        if (!store_or.is_ok()) {
          FF_LOG_ERROR("node {}: cannot open target {}: {}", config.node, id, store_or.status());
          continue;
        }
        targets[id].store = *store_or;
        scan_inherited(id);
      }
      Target& mine = targets[id];
      switch (target.public_state) {
        case PublicTargetState::kServing:
          if (heartbeat_allowed) mine.up_to_date = true;
          break;
        case PublicTargetState::kSyncing: {
          const ChainInfo* chain = routing.chain(target.chain);
          if (chain == nullptr || chain->version != mine.synced_chain_version) mine.up_to_date = false;
          break;
        }
        default:
          mine.up_to_date = false;
          break;
      }
    }
    if (!heartbeat_allowed) {
      bool all_down = true;
      for (const auto& [id, target] : routing.targets) {
        if (target.node == config.node && receives_writes(target.public_state)) all_down = false;
      }
      if (all_down) {
        heartbeat_allowed = true;
        heartbeat_soon();
      }
    }
    publish();
    if (serving()) {
      maybe_start_syncs();
      maybe_resolve_orphans();
    }
  }

  void heartbeat_soon() {
    executor.post([this, gen = generation] {
      if (gen == generation) heartbeat();
    });
  }

  void heartbeat() {
    if (!running || heartbeat_in_flight) return;
    heartbeat_in_flight = true;
    auto complete = [this, gen = generation] {
      if (gen == generation) heartbeat_in_flight = false;
    };
    if (!registered) {
      RegisterNodeReq req{.node = config.node, .type = NodeType::kStorage, .address = config.address, .incarnation = incarnation};
      const std::string& address = mgmtd.current();
      rpc.call(address, Request{req}, config.rpc_timeout_ns, [this, complete, address, gen = generation](Result<Response> response) {
        if (gen != generation) return;
        complete();
        if (!response.is_ok()) mgmtd.failed(address, response.status());
        if (response.is_ok()) {
          registered = true;
          publish();
          heartbeat_soon();
        }
      });
      return;
    }
    if (!heartbeat_allowed) {
      const std::string& address = mgmtd.current();
      rpc.call(address, Request{GetRoutingReq{routing.version}}, config.rpc_timeout_ns,
               [this, complete, address, gen = generation](Result<Response> response) {
                 if (gen != generation) return;
                 complete();
                 Result<GetRoutingRsp> rsp = response_as<GetRoutingRsp>(std::move(response));
                 if (!rsp.is_ok()) mgmtd.failed(address, rsp.status());
                 if (rsp.is_ok() && rsp->routing) apply_routing(std::move(*rsp->routing));
               });
      return;
    }
    HeartbeatReq req{.node = config.node, .address = config.address, .known_routing_version = routing.version, .targets = {},
                     .incarnation = incarnation};
    for (const auto& [id, target] : targets) {
      TargetHeartbeat beat{id, local_state_of(target)};
      if (auto space = target.store->space()) {
        beat.capacity_bytes = space->capacity_bytes;
        beat.free_bytes = space->free_bytes;
        beat.filesystem = space->filesystem;
      }
      req.targets.push_back(beat);
    }
    const std::string& address = mgmtd.current();
    rpc.call(address, Request{std::move(req)}, config.rpc_timeout_ns,
             [this, complete, address, gen = generation, sent_ns = now()](Result<Response> response) {
               if (gen != generation) return;
               complete();
               Result<HeartbeatRsp> rsp = response_as<HeartbeatRsp>(std::move(response));
               if (!rsp.is_ok()) {
                 mgmtd.failed(address, rsp.status());
                 if (fs_error_of(rsp.status()) == FsError::kUnknownTarget) {
                   registered = false;
                   publish();
                 }
                 return;
               }
               // The lease counts from when the heartbeat was sent, not when the answer came.
               last_mgmtd_ok_ns = std::max(last_mgmtd_ok_ns, sent_ns);
               view_mgmtd_ok_ns.store(last_mgmtd_ok_ns);
               publish_read_leases();
               if (rsp->routing) {
                 apply_routing(std::move(*rsp->routing));
               } else if (serving()) {
                 maybe_start_syncs();
                 maybe_resolve_orphans();
               }
             });
  }

  // ------------------------------------------------------------------ orphaned pending versions
  TargetId head_of(const ChainInfo& chain) const {
    auto write_chain = chain.write_chain();
    return write_chain.empty() ? 0 : write_chain.front();
  }

  void maybe_resolve_orphans() {
    for (const auto& [chain_id, chain] : routing.chains) {
      TargetId head = head_of(chain);
      if (head == 0 || targets.count(head) == 0 || routing.target(head)->node != config.node) continue;
      auto scanned = orphan_scans.find(head);
      if (scanned != orphan_scans.end() && scanned->second == chain.version) continue;
      orphan_scans[head] = chain.version;
      list_successors(chain_id, head, chain.version, [this, chain_id, head](std::set<ChunkId> downstream) {
        auto store_ptr = targets.at(head).store;
        auto listed = std::make_shared<Result<std::vector<ChunkMeta>>>(std::vector<ChunkMeta>{});
        executor.offload(
            [store_ptr, listed] { *listed = list_all(*store_ptr); },
            [this, head, chain_id, listed, downstream = std::move(downstream), gen = generation]() mutable {
              if (gen != generation) return;
              if (!listed->is_ok()) {
                orphan_scans.erase(head);  // scan again with the next routing
                return;
              }
              for (const ChunkMeta& meta : **listed) {
                downstream.erase(meta.id);
                if (meta.pending_version != 0) resolve_in_background(chain_id, head, meta.id);
              }
              for (const ChunkId& chunk : downstream) finish_removal(chain_id, head, chunk);
            });
      });
    }
    // Chunks whose update ended in an error: resolved by the head they are on, left for later elsewhere.
    for (auto it = suspects.begin(); it != suspects.end();) {
      auto [target, chunk] = *it;
      const TargetInfo* info = routing.target(target);
      const ChainInfo* chain = info == nullptr ? nullptr : routing.chain(info->chain);
      if (chain == nullptr || targets.count(target) == 0) {
        it = suspects.erase(it);
        continue;
      }
      if (head_of(*chain) != target || locks.count(*it) != 0) {
        ++it;
        continue;
      }
      it = suspects.erase(it);
      resolve_in_background(chain->id, target, chunk);
    }
  }

  // Unfinished removals (the simulation's seed 21153 under unlimited faults): a removal is applied at once on each
  // target, head first, and the head drives it down the chain; a head that crashed half-way leaves the chunk on the
  // targets after the point it reached, with no pending state for the orphan scan to find. Since every chunk starts
  // at the head (a write stores it there first) and every removal too, a chunk that a serving successor holds and the
  // head lacks is one whose removal did not finish. So after a chain change the head lists its serving successors'
  // chunks first, then its own (list_successors, maybe_resolve_orphans), and finishes the removal of each chunk
  // only downstream (finish_removal): under the chunk's lock, and only while the head still lacks it (a write that
  // created it again since holds or held that lock, and then the head has it). Listing failures skip the check
  // until the next chain change.
  void list_successors(ChainId chain_id, TargetId head, ChainVersion version,
                       std::function<void(std::set<ChunkId>)> then) {
    const ChainInfo* chain = routing.chain(chain_id);
    std::vector<TargetId> successors;
    if (chain != nullptr) {
      for (TargetId target : chain->serving()) {
        if (target != head) successors.push_back(target);
      }
    }
    auto downstream = std::make_shared<std::set<ChunkId>>();
    auto left = std::make_shared<size_t>(successors.size());
    if (successors.empty()) return then({});
    for (TargetId target : successors) {
      dump_meta(chain_id, version, target, [downstream, left, then](Result<std::vector<ChunkMeta>> chunks) {
        if (chunks.is_ok()) {
          for (const ChunkMeta& meta : *chunks) downstream->insert(meta.id);
        }
        // A successor that did not answer is not compared this time (its chunks are not removed).
        if (--*left == 0) then(std::move(*downstream));
      });
    }
  }

  void finish_removal(ChainId chain_id, TargetId head, ChunkId chunk) {
    LockKey key{head, chunk};
    bool queued = lock(key, [this, chain_id, head, chunk, key] {
      auto store_ptr = targets.at(head).store;
      auto meta = std::make_shared<Result<ChunkMeta>>(Status(StatusCode::kInternal, "unset"));
      executor.offload(
          [store_ptr, meta, chunk] { *meta = store_ptr->stat(chunk); },
          [this, chain_id, head, chunk, key, meta] {
            if (meta->is_ok() || fs_error_of(meta->status()) != FsError::kChunkNotFound) return unlock(key);
            ChunkId end = chunk;
            ++end.index;
            FF_LOG_DEBUG("target {}: finishes the removal of chunk {} downstream", head, chunk.to_string());
            forward_remove(chain_id, head, chunk, end, ClientRequestId{}, now() + 10 * config.rpc_timeout_ns, 0,
                           [this, key](Result<uint64_t>) { unlock(key); });
          });
    });
    (void)queued;  // a full lock queue: the chunk's writes are busy; the next chain change checks again
  }

  // Takes the chunk lock (skipped when busy: the update holding it drives the chunk) and resolves a
  // pending version found under it, as a write would before storing.
  void resolve_in_background(ChainId chain_id, TargetId head, ChunkId chunk) {
    LockKey key{head, chunk};
    if (locks.count(key) != 0) return;
    auto update = std::make_shared<Update>();
    update->chain = chain_id;
    update->target = head;
    update->chunk = chunk;
    update->head = true;
    update->resolve_only = true;
    update->deadline_ns = now() + 10 * config.rpc_timeout_ns;
    update->done = [](Result<ForwardRsp>) {};
    lock(key, [this, update] { head_prepare(update); });
  }

  // ------------------------------------------------------------------ background scrub
  // One chunk per step, this node's targets in id order, each from its first chunk: the next committed chunk is read
  // back (the store checks its CRC32C); a corrupt one is repaired under its lock from a replica, as a read would do.
  // The next step waits as long as reading its bytes at scrub_bytes_per_s takes; after the last target, the pause.
  // Each target's place (its pass and next chunk) is saved in its store, at most every scrub_save_interval_ns and
  // when the target is done (then as the start of the next pass), so a restarted service goes on where it was: its
  // pass is the lowest one its targets' saved places name, a target already past it waits for the next pass, and a
  // target with nothing saved starts the current one.
  std::optional<uint64_t> scrub_pass;  // unknown until the targets' saved places are read
  TargetId scrub_target = 0;
  bool scrub_placed = false;  // scrub_from is scrub_target's place
  ChunkId scrub_from;
  int64_t scrub_saved_ns = 0;
  // The places find_scrub_pass read, kept for the pass's place_scrub of each target (read once, not twice).
  std::map<TargetId, std::optional<ChunkStore::ScrubCursor>> scrub_places;

  void reset_scrub() {
    scrub_pass.reset();
    restart_scrub_targets();
  }
  // The pass (re)starts at the first target, every place to be read again.
  void restart_scrub_targets() {
    scrub_target = 0;
    scrub_placed = false;
    scrub_from = {};
    scrub_places.clear();
  }

  void schedule_scrub(uint64_t gen, int64_t after_ns) {
    executor.post_after(after_ns, [this, gen] {
      if (gen == generation && running) scrub_step(gen);
    });
  }

  // Reads a saved place; an unreadable one counts as none (the target starts the pass over).
  static std::optional<ChunkStore::ScrubCursor> load_scrub_cursor(TargetId target, ChunkStore& store) {
    Result<std::optional<ChunkStore::ScrubCursor>> loaded = store.load_scrub_cursor();
    if (loaded.is_ok()) return *loaded;
    FF_LOG_WARN("target {}: cannot read the scrub's saved place ({}); scrubbing it from its first chunk", target,
                loaded.status());
    return std::nullopt;
  }

  // Saves `cursor` for `target`, then the next step after `after_ns`.
  void save_scrub_then(uint64_t gen, TargetId target, ChunkStore::ScrubCursor cursor, int64_t after_ns) {
    scrub_saved_ns = now();
    auto store_ptr = targets.at(target).store;
    executor.offload(
        [store_ptr, target, cursor] {
          Status saved = store_ptr->save_scrub_cursor(cursor);
          if (!saved.is_ok()) FF_LOG_WARN("target {}: cannot save the scrub's place: {}", target, saved);
        },
        [this, gen, after_ns] {
          if (gen == generation && running) schedule_scrub(gen, after_ns);
        });
  }

  // The pass a (re)started service is in: the lowest its targets saved.
  void find_scrub_pass(uint64_t gen) {
    if (targets.empty()) return schedule_scrub(gen, config.heartbeat_interval_ns);
    std::vector<std::pair<TargetId, std::shared_ptr<ChunkStore>>> stores;
    for (const auto& [id, target] : targets) stores.emplace_back(id, target.store);
    auto places = std::make_shared<std::map<TargetId, std::optional<ChunkStore::ScrubCursor>>>();
    executor.offload(
        [stores = std::move(stores), places] {
          for (const auto& [id, store] : stores) (*places)[id] = load_scrub_cursor(id, *store);
        },
        [this, gen, places] {
          if (gen != generation || !running) return;
          std::optional<uint64_t> lowest;
          for (const auto& [id, cursor] : *places) {
            if (cursor && (!lowest || cursor->pass < *lowest)) lowest = cursor->pass;
          }
          stats.scrub_places_read += places->size();
          scrub_places = std::move(*places);
          scrub_pass = lowest.value_or(0);
          scrub_target = 0;
          scrub_placed = false;
          schedule_scrub(gen, 0);
        });
  }

  // Starts `target`'s part of the pass from its saved place `cursor`.
  void start_scrub_at(uint64_t gen, TargetId target, const std::optional<ChunkStore::ScrubCursor>& cursor) {
    if (cursor && cursor->pass > *scrub_pass) {  // done with this pass before a restart
      scrub_target = target + 1;
      return schedule_scrub(gen, 0);
    }
    scrub_from = cursor && cursor->pass == *scrub_pass ? cursor->next : ChunkId{};
    scrub_placed = true;
    scrub_saved_ns = now();
    schedule_scrub(gen, 0);
  }

  // `target`'s saved place before its first step of the pass: the one find_scrub_pass read, else read now.
  void place_scrub(uint64_t gen, TargetId target) {
    scrub_target = target;
    if (auto kept = scrub_places.find(target); kept != scrub_places.end()) {
      const std::optional<ChunkStore::ScrubCursor> cursor = kept->second;
      scrub_places.erase(kept);
      return start_scrub_at(gen, target, cursor);
    }
    auto store_ptr = targets.at(target).store;
    auto cursor = std::make_shared<std::optional<ChunkStore::ScrubCursor>>();
    executor.offload([store_ptr, target, cursor] { *cursor = load_scrub_cursor(target, *store_ptr); },
                     [this, gen, target, cursor] {
                       if (gen != generation || !running || scrub_target != target) return;
                       ++stats.scrub_places_read;
                       start_scrub_at(gen, target, *cursor);
                     });
  }

  void scrub_step(uint64_t gen) {
    if (!scrub_pass) return find_scrub_pass(gen);
    auto it = targets.lower_bound(scrub_target);
    if (it == targets.end()) {  // a pass ended (or no targets yet)
      if (scrub_target != 0) {
        ++stats.scrub_passes;
        ++*scrub_pass;
      }
      restart_scrub_targets();
      return schedule_scrub(gen, targets.empty() ? config.heartbeat_interval_ns : config.scrub_pass_pause_ns);
    }
    if (it->first != scrub_target || !scrub_placed) return place_scrub(gen, it->first);
    auto store_ptr = it->second.store;
    struct Outcome {
      std::optional<ChunkId> chunk;  // none: the target's last chunk is behind
      Status status;
      uint64_t bytes = 0;
    };
    auto outcome = std::make_shared<Outcome>();
    executor.offload(
        [store_ptr, outcome, from = scrub_from] {
          Result<std::vector<ChunkMeta>> next = store_ptr->list(from, ChunkId{UINT64_MAX, UINT64_MAX}, 1);
          if (!next.is_ok()) {
            outcome->status = next.status();
            return;
          }
          if (next->empty()) return;
          outcome->chunk = next->front().id;
          if (next->front().committed_version == 0) return;  // nothing committed yet
          Result<ChunkRead> read = store_ptr->read(next->front().id, 0, UINT64_MAX, ReadMode::kRelaxed);
          outcome->status = read.is_ok() ? Status::ok() : read.status();
          if (read.is_ok()) outcome->bytes = read->data.size();
        },
        [this, gen, outcome] {
          if (gen != generation || !running) return;
          const TargetId target = scrub_target;
          // This target is done (its next pass starts from its first chunk): the next one.
          const auto target_done = [this, gen, target](int64_t after_ns) {
            scrub_target = target + 1;
            scrub_placed = false;
            scrub_from = {};
            if (targets.count(target) == 0) return schedule_scrub(gen, after_ns);
            save_scrub_then(gen, target, ChunkStore::ScrubCursor{*scrub_pass + 1, ChunkId{}}, after_ns);
          };
          if (!outcome->chunk) {
            if (!outcome->status.is_ok()) {
              FF_LOG_WARN("target {}: scrub cannot list chunks ({}); it goes on with the next target", target,
                          outcome->status);
            }
            return target_done(0);
          }
          const ChunkId chunk = *outcome->chunk;
          ++stats.chunks_scrubbed;
          const int64_t wait = std::max<int64_t>(
              1'000'000, static_cast<int64_t>(outcome->bytes * 1e9 / std::max<uint64_t>(1, config.scrub_bytes_per_s)));
          // What follows the repair (if any): the next step, after the target's place is saved when it is time.
          auto go_on = [this, gen, target, target_done, wait, next = chunk_after(chunk)] {
            if (gen != generation || !running) return;
            if (!next) return target_done(wait);  // the largest id there is
            scrub_from = *next;
            if (now() - scrub_saved_ns < config.scrub_save_interval_ns || targets.count(target) == 0) {
              return schedule_scrub(gen, wait);
            }
            save_scrub_then(gen, target, ChunkStore::ScrubCursor{*scrub_pass, *next}, wait);
          };
          const TargetInfo* info = routing.target(target);
          if (outcome->status.code() != StatusCode::kDataLoss || info == nullptr) return go_on();
          ++stats.scrub_corruptions;
          FF_LOG_WARN("target {}: scrub found chunk {} corrupt ({}); repairing it from a replica", target,
                      chunk.to_string(), outcome->status);
          // A full lock queue (busy writes) is a failed repair too: the next pass looks again.
          repair_under_lock(info->chain, target, chunk, [target, chunk, go_on](Status status) {
            if (!status.is_ok()) {
              FF_LOG_WARN("target {}: scrub could not repair chunk {}: {}", target, chunk.to_string(), status);
            }
            go_on();
          });
        });
  }

  void schedule_heartbeat(uint64_t gen) {
    executor.post_after(config.heartbeat_interval_ns, [this, gen] {
      if (gen != generation || !running) return;
      heartbeat();
      schedule_heartbeat(gen);
    });
  }
};

StorageService::StorageService(StorageConfig config, Executor& executor, RpcClient& rpc, ChunkStoreFactory stores)
    : state_(std::make_unique<State>(std::move(config), executor, rpc, std::move(stores))) {
  FF_ASSERT_NE(state_->config.node, 0u);
  FF_ASSERT_GT(state_->config.heartbeat_interval_ns, 0);
}

StorageService::~StorageService() = default;

Status StorageService::start() {
  State& s = *state_;
  if (s.config.mgmtd_address.empty()) return invalid_argument("storage node {}: mgmtd_address is empty", s.config.node);
  FF_RETURN_IF_ERROR(MgmtdAddresses::parse(s.config.mgmtd_address).status());
  s.running = true;
  ++s.generation;
  s.incarnation = static_cast<uint64_t>(s.now()) + 1;
  s.registered = false;
  s.heartbeat_allowed = false;
  s.publish();
  s.heartbeat();
  s.schedule_heartbeat(s.generation);
  if (s.config.scrub_bytes_per_s > 0) {
    s.reset_scrub();
    s.schedule_scrub(s.generation, s.config.heartbeat_interval_ns);
  }
  return Status::ok();
}

void StorageService::stop() {
  state_->running = false;
  ++state_->generation;
  state_->publish();
}

void StorageService::handle(const ServerContext& context, Request request, Reply reply) {
  State& s = *state_;
  if (!s.running) return reply(fs_error(FsError::kNotServing, fmt::format("storage node {} is stopped", s.config.node)));
  std::visit(
      [&](auto&& req) {
        using T = std::decay_t<decltype(req)>;
        if constexpr (std::is_same_v<T, WriteReq>) {
          s.handle_write(context, std::move(req), std::move(reply));
        } else if constexpr (std::is_same_v<T, ForwardReq>) {
          s.handle_forward(context, std::move(req), std::move(reply));
        } else if constexpr (std::is_same_v<T, ReadReq>) {
          ReadAnswer answer{.shared = context.shared_payloads, .fast = nullptr};
          if (context.reply_from_any_thread) answer.fast = [reply](ReadRsp rsp) { reply(Response{std::move(rsp)}); };
          s.read_one(
              std::move(req),
              [reply](Result<ReadRsp> rsp) {
                if (!rsp.is_ok()) return reply(rsp.status());
                reply(Response{std::move(*rsp)});
              },
              false, std::move(answer));
        } else if constexpr (std::is_same_v<T, BatchReadReq>) {
          if (req.reads.empty()) return reply(Response{BatchReadRsp{}});
          auto answer = std::make_shared<BatchReadRsp>();
          answer->results.resize(req.reads.size());
          std::vector<size_t> all(req.reads.size());
          for (size_t i = 0; i < all.size(); ++i) all[i] = i;
          s.read_into_batch(req.reads, all, std::move(answer), std::move(reply));
        } else if constexpr (std::is_same_v<T, BatchWriteReq>) {
          auto results = std::make_shared<BatchWriteRsp>();
          results->results.resize(req.writes.size());
          auto left = std::make_shared<size_t>(req.writes.size());
          if (req.writes.empty()) return reply(Response{BatchWriteRsp{}});
          for (size_t i = 0; i < req.writes.size(); ++i) {
            s.handle_write(context, std::move(req.writes[i]), [results, left, i, reply](Result<Response> rsp) {
              Result<WriteRsp> write = response_as<WriteRsp>(std::move(rsp));
              if (write.is_ok()) {
                results->results[i].rsp = *write;
              } else {
                results->results[i].status = write.status();
              }
              if (--*left == 0) reply(Response{std::move(*results)});
            });
          }
        } else if constexpr (std::is_same_v<T, QueryLastChunkReq>) {
          s.handle_query_last(std::move(req), std::move(reply));
        } else if constexpr (std::is_same_v<T, RemoveChunksReq>) {
          s.handle_remove(context, std::move(req), std::move(reply));
        } else if constexpr (std::is_same_v<T, SyncDumpMetaReq>) {
          s.handle_sync_dump(std::move(req), std::move(reply));
        } else if constexpr (std::is_same_v<T, SyncReplaceReq>) {
          s.handle_sync_replace(context, std::move(req), std::move(reply));
        } else if constexpr (std::is_same_v<T, SyncDoneReq>) {
          s.handle_sync_done(std::move(req), std::move(reply));
        } else {
          reply(fs_error(FsError::kMalformed, fmt::format("storage does not serve {}", request_name(Request{req}))));
        }
      },
      std::move(request));
}

bool StorageService::serving() const { return state_->serving(); }
RoutingVersion StorageService::routing_version() const { return state_->routing.version; }
LocalTargetState StorageService::local_state(TargetId target) const {
  auto it = state_->targets.find(target);
  if (it == state_->targets.end()) return LocalTargetState::kOffline;
  return State::local_state_of(it->second);
}
std::shared_ptr<ChunkStore> StorageService::store(TargetId target) const {
  auto it = state_->targets.find(target);
  return it == state_->targets.end() ? nullptr : it->second.store;
}
void StorageService::set_bugs(const StorageBugs& bugs) { state_->bugs = bugs; }
void StorageService::set_commit_observer(CommitObserver observer) { state_->observer = std::move(observer); }
StorageService::Stats StorageService::stats() const {
  Stats stats = state_->stats;
  stats.fast_reads = state_->fast_reads.load(std::memory_order_relaxed);
  stats.reads += stats.fast_reads;
  stats.dirty_reads += state_->fast_dirty_reads.load(std::memory_order_relaxed);
  stats.local_reads = state_->local_reads.load(std::memory_order_relaxed);
  stats.inline_reads = state_->inline_reads.load(std::memory_order_relaxed);
  return stats;
}

bool StorageService::try_handle_read(const ServerContext& context, Request& request, Reply& reply) {
  if (auto* read = std::get_if<ReadReq>(&request)) return state_->try_read(context, *read, reply);
  if (auto* batch = std::get_if<BatchReadReq>(&request)) return state_->try_batch_read(context, *batch, reply);
  return false;
}

}  // namespace ff::fs
