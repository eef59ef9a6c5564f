#include "ff/fs/client.h"

#include <sys/stat.h>

#include <algorithm>
#include <atomic>
#include <cstring>
#include <deque>
#include <list>
#include <map>
#include <mutex>
#include <optional>
#include <set>
#include <tuple>
#include <unordered_map>
#include <utility>

#include "ff/common/assert.h"
#include "ff/common/log.h"
#include "ff/fs/local_read.h"
#include "ff/fs/mgmtd_addresses.h"
#include "ff/fs/read_stamps.h"

namespace ff::fs {

namespace {

// Errors worth another attempt (after a routing refresh): the cluster is changing under us.
bool retryable(const Status& status) {
  switch (fs_error_of(status)) {
    case FsError::kOversize:
    case FsError::kMisaligned:
    case FsError::kMalformed:
    case FsError::kChunkNotFound:
      return false;
    default:
      break;
  }
  switch (status.code()) {
    case StatusCode::kInvalidArgument:
    case StatusCode::kOutOfRange:
    case StatusCode::kPermissionDenied:
    case StatusCode::kUnimplemented:
    case StatusCode::kAlreadyExists:
      return false;
    default:
      return true;
  }
}

}  // namespace

struct StorageClient::State : std::enable_shared_from_this<StorageClient::State> {
  ClientConfig config;
  Executor& executor;
  RpcClient& rpc;
  RoutingInfo routing;
  std::vector<TargetSpace> space;  // from the last routing answer
  Stats stats;
  uint64_t spread = 0;
  std::map<uint32_t, uint64_t> next_seq;
  bool refreshing = false;
  std::vector<std::function<void()>> after_refresh;

  MgmtdAddresses mgmtd;  // config.mgmtd_address: a primary and its standbys
  // Local reads (written on offload threads): served, read over RPC after all, and switched off after
  // a file could not be used.
  std::atomic<uint64_t> local_reads{0}, local_read_fallbacks{0};
  std::atomic<bool> local_reads_off{false};

  // Where the last answers said the bytes of a (target, chunk, offset, length) read lie, for reading
  // before the answer (bounded: cleared when full).
  using ExtentKey = std::tuple<TargetId, ChunkId, uint64_t, uint64_t>;
  using RangeKey = std::tuple<ChunkId, uint64_t, uint64_t>;  // an ExtentKey without its target
  static RangeKey range_of(const ExtentKey& key) {
    const auto& [target, chunk, offset, length] = key;
    return RangeKey{chunk, offset, length};
  }
  static constexpr size_t kMaxRememberedExtents = 4096;
  std::mutex extents_mutex;
  std::map<ExtentKey, LocalExtent> last_extents;  // guarded by extents_mutex
  std::map<RangeKey, TargetId> last_place;        // guarded by extents_mutex: the last target to name a range's place
  std::set<TargetId> local_targets;               // guarded by extents_mutex: targets that answered locally
  std::atomic<uint64_t> early_reads{0}, read_ahead_used{0}, read_aheads_started{0}, read_aheads_dropped{0};
  struct EarlyRead;
  // Bytes read_ahead() read for an expected read of a range, from `target`'s file (at most kMaxReadAheads, the
  // oldest dropped first); the read takes its entry.
  struct ReadAhead {
    TargetId target = 0;
    std::shared_ptr<EarlyRead> early;
    std::list<RangeKey>::iterator age;  // its place in read_ahead_ages
  };
  std::map<RangeKey, ReadAhead> read_aheads;  // guarded by extents_mutex
  std::list<RangeKey> read_ahead_ages;        // guarded by extents_mutex: oldest first, dropped first when full
  std::set<RangeKey> locating;                // guarded by extents_mutex: ranges read_ahead() asked a target about
  // The bytes read ahead for key's range, when they were read from key's target.
  std::shared_ptr<EarlyRead> take_read_ahead(const ExtentKey& key);
  // Reads extent's bytes on an offload thread for the read that will have `key` (any thread).
  void start_read_ahead(const ExtentKey& key, const LocalExtent& extent);
  std::optional<LocalExtent> last_extent(const ExtentKey& key);
  void remember_extent(const ExtentKey& key, const LocalExtent& extent);
  // The last target to name the range's place, and the place (extents_mutex held; the pointer is valid while it is:
  // copy what is used after).
  std::optional<std::pair<ExtentKey, const LocalExtent*>> last_place_locked(const RangeKey& range) const;
  // The target this range was read ahead from (any thread).
  std::optional<TargetId> read_ahead_target(const RangeKey& range);
  // Whether target serves the chain (executor thread).
  bool serves(ChainId chain_id, TargetId target) const;
  bool wants_local(uint64_t length, bool accept_pieces) const {
    return accept_pieces && config.local_reads && length >= config.local_read_min_bytes &&
           !local_reads_off.load(std::memory_order_relaxed);
  }

  // Sends one read attempt to `address`; a local answer (ReadRsp::local) is read from the file here.
  // `early`: a local read the caller runs for this attempt (claim_local_read), used instead of a read-ahead or guess.
  void send_read(const std::string& address, ReadReq req, std::shared_ptr<uint32_t> dirty_seen,
                 std::function<void(Result<ReadRsp>)> attempt_done, std::shared_ptr<EarlyRead> early = nullptr);
  // Reads a local answer's bytes on an offload thread; over RPC when they do not check out.
  void read_local(const std::string& address, ReadReq req, ReadRsp rsp, std::shared_ptr<uint32_t> dirty_seen,
                  std::function<void(Result<ReadRsp>)> attempt_done);
  void complete_local(ReadRsp rsp, SharedBytes bytes, const std::function<void(Result<ReadRsp>)>& attempt_done);

  // Cached local reads (ClientConfig::cached_local_read_chunks): a target's answer for a chunk's whole committed
  // version, kept with the read stamp it held at (read_stamps.h).
  struct CachedChunk {
    ChunkId chunk;
    ChainId chain = 0;
    ChainVersion chain_version = 0;
    uint64_t routing_generation = 0;  // of the routing the request was sent with
    TargetId target = 0;
    ChunkMeta meta;
    LocalExtent whole;
    std::shared_ptr<ReadStampsView> stamps;
    ReadStampsView::Stamp stamp;
  };
  std::mutex cache_mutex;
  std::map<ChunkId, std::shared_ptr<const CachedChunk>> cached_chunks;  // guarded by cache_mutex
  uint64_t cached_crcs = 0;  // guarded by cache_mutex: segment CRCs the kept answers hold (bounded: kMaxCachedCrcs)
  static constexpr uint64_t kMaxCachedCrcs = 1 << 20;                 // 4 MiB of CRCs, 4 GiB of data in 4 KiB segments
  std::map<TargetId, std::shared_ptr<ReadStampsView>> target_stamps;  // guarded by cache_mutex
  std::set<TargetId> remote_targets;  // guarded by cache_mutex: targets that answered a local read with bytes
  std::atomic<uint64_t> cached_reads{0}, cache_misses{0}, cache_changed{0}, queued_reads{0};
  // Counts the routing changes (any thread reads it: a kept answer serves read_cached_now only under the routing its
  // request was sent with).
  std::atomic<uint64_t> routing_generation{0};
  // Serves a read from a kept answer on this thread: the range's bytes from the file, every CRC checked, then the
  // stamps; nullopt (the answer dropped) when they do not check out.
  std::optional<ReadRsp> serve_cached(const std::shared_ptr<const CachedChunk>& cached, uint64_t offset,
                                      uint64_t length);
  // The answer of a read served from a kept answer once its bytes are in (checked: `bytes` is an error where a CRC
  // differed or the read failed; has_range false: nothing to read, past the version's end): when the stamps show no
  // change begun since the answer was kept, else nullopt (the kept answer dropped). Any thread.
  std::optional<ReadRsp> answer_cached(const std::shared_ptr<const CachedChunk>& cached,
                                       const Result<SharedBytes>& bytes, bool has_range);
  // The kept answer for chunk when read_cached_now may use it (any thread): kept under the current routing, no change
  // of the chunk or its target begun since. One whose stamp moved is dropped.
  std::shared_ptr<const CachedChunk> kept_now(ChainId chain, const ChunkId& chunk);
  bool caches_reads(bool accept_pieces) const {
    return accept_pieces && config.local_reads && config.cached_local_read_chunks > 0 &&
           !local_reads_off.load(std::memory_order_relaxed);
  }
  // The kept answer for chunk when it may be used now: the chain's version and the target's serving as when it was
  // kept, and no change of the chunk or the target begun since (executor thread). A stale one is dropped.
  std::shared_ptr<const CachedChunk> cached_for(ChainId chain, const ChunkId& chunk);
  void drop_cached(const std::shared_ptr<const CachedChunk>& cached);
  // Reads [offset, offset + length) where `cached` says, on an offload thread, and answers when the stamps show no
  // change begun meanwhile and every CRC matches; else `fallback` runs on the executor.
  void read_cached(std::shared_ptr<const CachedChunk> cached, uint64_t offset, uint64_t length,
                   std::function<void(Result<ReadRsp>)> attempt_done, std::function<void()> fallback);
  // A read that found nothing cached, sent as a whole-version local read (ReadReq::whole_chunk) to a target that may
  // be on this host; the answer is kept when the stamps allow, and this read is served from it.
  void send_whole_chunk_read(const std::string& address, ReadReq req, std::shared_ptr<uint32_t> dirty_seen,
                             std::function<void(Result<ReadRsp>)> attempt_done, uint64_t generation);
  // A read RPC's answer; a [chunk_dirty] one is counted (dirty_seen: the read's count, which sends it to the tail).
  Result<ReadRsp> read_answer(Result<Response> response, uint32_t& dirty_seen) {
    Result<ReadRsp> rsp = response_as<ReadRsp>(std::move(response));
    if (!rsp.is_ok() && fs_error_of(rsp.status()) == FsError::kChunkDirty) {
      ++dirty_seen;
      ++stats.dirty;
    }
    return rsp;
  }
  // One attempt of StorageClient::read (executor thread); use_cache: a kept answer may serve it.
  void read_attempt(ChainId chain, const ChunkId& chunk, uint64_t offset, uint64_t length, ReadMode mode,
                    bool accept_pieces, std::shared_ptr<uint32_t> dirty_seen, std::shared_ptr<CallerLocalRead> mine,
                    std::function<void(Result<ReadRsp>)> attempt_done, bool use_cache);

  // Read coalescing (ClientConfig::read_rpcs_per_node): per node address, the read RPCs in flight and the
  // reads waiting for one of them to complete. Any thread (a read's completion may run on gRPC's).
  struct WaitingRead {
    ReadReq req;
    std::function<void(Result<Response>)> done;
  };
  struct ReadLane {
    uint32_t in_flight = 0;
    std::deque<WaitingRead> waiting;
  };
  std::mutex lanes_mutex;
  std::unordered_map<std::string, ReadLane> lanes;  // guarded by lanes_mutex
  std::atomic<uint64_t> read_rpcs{0}, batched_reads{0};
  bool coalesces(const ReadReq& req) const {
    return config.read_rpcs_per_node > 0 && req.local_host.empty() && !req.any_state &&
           req.length <= config.coalesce_read_max_bytes;
  }
  // Sends req now when the node has a free slot, else queues it for the next batch to that node.
  void send_coalesced(const std::string& address, ReadReq req, std::function<void(Result<Response>)> done);
  // Sends reads (one: a ReadReq; more: one BatchReadReq) in a slot already counted in the lane's in_flight.
  void send_lane(const std::string& address, std::vector<WaitingRead> reads);
  // A lane's RPC completed: its slot goes to the reads waiting there (as one batch), or is freed.
  void lane_done(const std::string& address);

  // Write coalescing (ClientConfig::coalesce_write_max_bytes; executor thread): per chunk, whether a write is on its
  // way to the head and the writes waiting for it, in the order they were made.
  struct WaitingWrite {
    uint64_t offset = 0;
    SharedBytes data;
    Callback<WriteRsp> done;
    uint32_t channel = 0;
    uint64_t chunk_size = 0;
    bool truncate = false;
    int64_t deadline_ns = 0;  // op_timeout_ns after it was made
    bool alone = false;       // sent again on its own after a coalesced write's bad-input error
  };
  struct WriteLane {
    bool in_flight = false;
    std::deque<WaitingWrite> waiting;
  };
  using LaneKey = std::pair<ChainId, ChunkId>;
  std::map<LaneKey, WriteLane> write_lanes;
  // Sends one write now (its own request id and retries), bounded by deadline_ns.
  void send_write_now(ChainId chain, const ChunkId& chunk, uint64_t offset, SharedBytes data, Callback<WriteRsp> done,
                      uint32_t channel, uint64_t chunk_size, bool truncate, int64_t deadline_ns);
  // Sends what waits first in the chunk's lane: one write, or the writes after it that touch its range, as one.
  void dispatch_writes(const LaneKey& key);

  State(ClientConfig c, Executor& e, RpcClient& r)
      : config(std::move(c)), executor(e), rpc(r), mgmtd(MgmtdAddresses::unchecked(config.mgmtd_address)) {}
  int64_t now() const { return executor.clock().now_ns(); }

  void refresh(std::function<void()> then) {
    after_refresh.push_back(std::move(then));
    if (refreshing) return;
    refreshing = true;
    ++stats.routing_refreshes;
    auto self = shared_from_this();
    const std::string& address = mgmtd.current();
    rpc.call(address, Request{GetRoutingReq{routing.version}}, config.rpc_timeout_ns,
             [self, address](Result<Response> response) {
               Result<GetRoutingRsp> rsp = response_as<GetRoutingRsp>(std::move(response));
               if (!rsp.is_ok()) self->mgmtd.failed(address, rsp.status());
               if (rsp.is_ok() && rsp->routing && rsp->routing->version >= self->routing.version) {
                 if (rsp->routing->version != self->routing.version) {
                   self->routing_generation.fetch_add(1, std::memory_order_acq_rel);
                 }
                 self->routing = std::move(*rsp->routing);
               }
               if (rsp.is_ok()) self->space = std::move(rsp->space);
               self->refreshing = false;
               auto waiting = std::move(self->after_refresh);
               self->after_refresh.clear();
               for (auto& fn : waiting) fn();
             });
  }

  // A retried operation: attempt(done_attempt) is called until it succeeds, fails for good, or runs out
  // of attempts/time; between attempts routing is refreshed and the backoff doubles (capped at 1 s).
  template <typename T>
  struct Op {
    std::function<void(std::function<void(Result<T>)>)> attempt;
    Callback<T> done;
    uint32_t attempts = 0;
    int64_t deadline_ns = 0;
    int64_t backoff_ns = 0;
  };

  template <typename T>
  void run(std::shared_ptr<Op<T>> op) {
    ++stats.attempts;
    ++op->attempts;
    auto self = shared_from_this();
    op->attempt([self, op](Result<T> result) {
      if (result.is_ok() || !retryable(result.status()) || op->attempts >= self->config.max_attempts ||
          self->now() + op->backoff_ns >= op->deadline_ns) {
        return op->done(std::move(result));
      }
      ++self->stats.retries;
      int64_t delay = op->backoff_ns;
      op->backoff_ns = std::min<int64_t>(op->backoff_ns * 2, 1'000'000'000);
      self->executor.post_after(delay, [self, op] { self->refresh([self, op] { self->run(op); }); });
    });
  }

  // deadline_ns: when the operation gives up (0: op_timeout_ns from now).
  template <typename T>
  void start(std::function<void(std::function<void(Result<T>)>)> attempt, Callback<T> done, int64_t deadline_ns = 0) {
    auto op = std::make_shared<Op<T>>();
    op->attempt = std::move(attempt);
    op->done = std::move(done);
    op->deadline_ns = deadline_ns != 0 ? deadline_ns : now() + config.op_timeout_ns;
    op->backoff_ns = config.retry_backoff_ns;
    if (routing.version == 0) {
      auto self = shared_from_this();
      refresh([self, op] { self->run(op); });
    } else {
      run(op);
    }
  }

  int64_t attempt_timeout() const { return config.rpc_timeout_ns; }

  Result<std::string> address(TargetId target) const {
    auto address = routing.address_of(target);
    if (!address || address->empty()) return fs_error(FsError::kUnknownTarget, fmt::format("no address for target {}", target));
    return *address;
  }

  // A serving target of the chain, spread over calls; `tail` picks the last serving target.
  Result<TargetId> pick_reader(ChainId chain_id, bool tail) {
    const ChainInfo* chain = routing.chain(chain_id);
    if (chain == nullptr) return fs_error(FsError::kUnknownChain, fmt::format("chain {} unknown", chain_id));
    auto serving = chain->serving();
    if (serving.empty()) return fs_error(FsError::kNotServing, fmt::format("chain {} has no serving target", chain_id));
    if (tail) return serving.back();
    return serving[spread++ % serving.size()];
  }

  Result<TargetId> head(ChainId chain_id) {
    const ChainInfo* chain = routing.chain(chain_id);
    if (chain == nullptr) return fs_error(FsError::kUnknownChain, fmt::format("chain {} unknown", chain_id));
    auto write_chain = chain->write_chain();
    if (write_chain.empty()) return fs_error(FsError::kNotServing, fmt::format("chain {} has no writable target", chain_id));
    return write_chain.front();
  }
};

StorageClient::StorageClient(ClientConfig config, Executor& executor, RpcClient& rpc)
    : state_(std::make_shared<State>(std::move(config), executor, rpc)) {
  FF_ASSERT_GT(state_->config.max_attempts, 0u);
}

StorageClient::~StorageClient() = default;

void StorageClient::refresh_routing(Callback<RoutingVersion> done) {
  auto state = state_;
  state_->refresh([state, done] {
    if (state->routing.version == 0) return done(unavailable("no routing information from mgmtd at {}", state->mgmtd.names()));
    done(state->routing.version);
  });
}

const RoutingInfo& StorageClient::routing() const { return state_->routing; }
const std::vector<TargetSpace>& StorageClient::space() const { return state_->space; }

std::optional<ChainTableSpace> chain_table_space(const RoutingInfo& routing, const std::vector<TargetSpace>& space,
                                                 ChainTableId table) {
  auto found = routing.chain_tables.find(table);
  if (found == routing.chain_tables.end()) return std::nullopt;
  std::set<TargetId> targets;
  for (ChainId chain : found->second.chains) {
    if (const ChainInfo* info = routing.chain(chain)) {
      for (const ChainTarget& target : info->targets) targets.insert(target.target);
    }
  }
  ChainTableSpace result;
  std::set<std::pair<std::string, uint64_t>> counted;
  for (const TargetSpace& entry : space) {
    if (!targets.contains(entry.target) || !counted.emplace(entry.host, entry.filesystem).second) continue;
    result.capacity_bytes += entry.capacity_bytes;
    result.free_bytes += entry.free_bytes;
  }
  result.filesystems = counted.size();
  if (result.filesystems == 0) return std::nullopt;
  const uint64_t replication = std::max<uint32_t>(found->second.replication, 1);
  result.capacity_bytes /= replication;
  result.free_bytes /= replication;
  return result;
}

void StorageClient::write(ChainId chain, const ChunkId& chunk, uint64_t offset, Bytes data, Callback<WriteRsp> done, uint32_t channel) {
  write(chain, chunk, offset, SharedBytes::adopt(std::move(data)), std::move(done), channel, 0);
}

void StorageClient::write(ChainId chain, const ChunkId& chunk, uint64_t offset, SharedBytes data, Callback<WriteRsp> done,
                          uint32_t channel, uint64_t chunk_size) {
  send_write(chain, chunk, offset, std::move(data), std::move(done), channel, chunk_size, /*truncate=*/false);
}

void StorageClient::truncate(ChainId chain, const ChunkId& chunk, uint64_t length, Callback<WriteRsp> done,
                             uint32_t channel) {
  send_write(chain, chunk, length, SharedBytes{}, std::move(done), channel, 0, /*truncate=*/true);
}

void StorageClient::send_write(ChainId chain, const ChunkId& chunk, uint64_t offset, SharedBytes data,
                               Callback<WriteRsp> done, uint32_t channel, uint64_t chunk_size, bool truncate) {
  State& state = *state_;
  const int64_t deadline_ns = state.now() + state.config.op_timeout_ns;
  if (state.config.coalesce_write_max_bytes == 0) {
    return state.send_write_now(chain, chunk, offset, std::move(data), std::move(done), channel, chunk_size, truncate,
                                deadline_ns);
  }
  const State::LaneKey key{chain, chunk};
  State::WriteLane& lane = state.write_lanes[key];
  lane.waiting.push_back(State::WaitingWrite{.offset = offset,
                                             .data = std::move(data),
                                             .done = std::move(done),
                                             .channel = channel,
                                             .chunk_size = chunk_size,
                                             .truncate = truncate,
                                             .deadline_ns = deadline_ns});
  if (!lane.in_flight) state.dispatch_writes(key);
}

void StorageClient::State::send_write_now(ChainId chain, const ChunkId& chunk, uint64_t offset, SharedBytes data,
                                          Callback<WriteRsp> done, uint32_t channel, uint64_t chunk_size, bool truncate,
                                          int64_t deadline_ns) {
  auto state = shared_from_this();
  ClientRequestId id{config.client_id, channel, ++next_seq[channel]};
  start<WriteRsp>(
      [state, id, chain, chunk, offset, payload = std::move(data), chunk_size,
       truncate](std::function<void(Result<WriteRsp>)> attempt_done) {
        Result<TargetId> head = state->head(chain);
        if (!head.is_ok()) return attempt_done(head.status());
        Result<std::string> address = state->address(*head);
        if (!address.is_ok()) return attempt_done(address.status());
        // Every attempt shares the payload (no copy per attempt).
        WriteReq req{.request_id = id,
                     .chain = chain,
                     .chain_version = state->routing.chain(chain)->version,
                     .chunk = chunk,
                     .offset = offset,
                     .data = {},
                     .shared_data = payload,
                     .chunk_size = chunk_size,
                     .truncate = truncate};
        state->rpc.call(*address, Request{std::move(req)}, state->attempt_timeout(),
                        [attempt_done](Result<Response> response) { attempt_done(response_as<WriteRsp>(std::move(response))); });
      },
      std::move(done), deadline_ns);
}

void StorageClient::State::dispatch_writes(const LaneKey& key) {
  // Writes that waited past their deadline behind earlier ones fail here (as they would have in their own retries);
  // their callbacks may make writes of this chunk, so the lane is looked up again after each.
  auto lane_it = write_lanes.find(key);
  for (;;) {
    if (lane_it == write_lanes.end() || lane_it->second.in_flight) return;
    if (lane_it->second.waiting.empty()) {
      write_lanes.erase(lane_it);
      return;
    }
    if (lane_it->second.waiting.front().deadline_ns > now()) break;
    WaitingWrite expired = std::move(lane_it->second.waiting.front());
    lane_it->second.waiting.pop_front();
    expired.done(deadline_exceeded(
        "write of chunk {} [{}, +{}) on chain {} waited {} ms behind earlier writes of the "
        "chunk and was not sent",
        key.second.to_string(), expired.offset, expired.data.size(), key.first, config.op_timeout_ns / 1'000'000));
    lane_it = write_lanes.find(key);
  }
  WriteLane& current = lane_it->second;
  auto group = std::make_shared<std::vector<WaitingWrite>>();
  group->push_back(std::move(current.waiting.front()));
  current.waiting.pop_front();
  auto coalesces = [&](const WaitingWrite& write) {
    return !write.truncate && !write.alone && !write.data.bytes.empty() &&
           write.data.size() <= config.coalesce_write_max_bytes && write.offset <= UINT64_MAX - write.data.size();
  };
  uint64_t begin = group->front().offset;
  uint64_t end = begin + group->front().data.size();
  int64_t deadline_ns = group->front().deadline_ns;
  uint64_t chunk_size = group->front().chunk_size;
  if (coalesces(group->front())) {
    while (!current.waiting.empty()) {
      const WaitingWrite& next = current.waiting.front();
      const uint64_t next_end = next.offset + next.data.size();
      if (!coalesces(next) || next.offset > end || next_end < begin) break;  // a gap: it goes in order, on its own
      const uint64_t merged_begin = std::min(begin, next.offset);
      const uint64_t merged_end = std::max(end, next_end);
      if (merged_end - merged_begin > config.max_coalesced_write_bytes) break;
      begin = merged_begin;
      end = merged_end;
      deadline_ns = std::min(deadline_ns, next.deadline_ns);
      chunk_size = std::max(chunk_size, next.chunk_size);
      group->push_back(std::move(current.waiting.front()));
      current.waiting.pop_front();
    }
  }
  SharedBytes payload;
  if (group->size() == 1) {
    payload = group->front().data;
  } else {
    // The union, each write's bytes over those of the writes made before it.
    std::vector<std::byte> merged(end - begin);
    for (const WaitingWrite& write : *group) {
      std::memcpy(merged.data() + (write.offset - begin), write.data.bytes.data(), write.data.size());
    }
    payload = SharedBytes::adopt(std::move(merged));
    ++stats.coalesced_write_requests;
    stats.coalesced_writes += group->size();
  }
  current.in_flight = true;
  const WaitingWrite& first = group->front();
  auto state = shared_from_this();
  send_write_now(
      key.first, key.second, begin, std::move(payload),
      [state, key, group](Result<WriteRsp> rsp) {
        auto lane = state->write_lanes.find(key);
        FF_ASSERT(lane != state->write_lanes.end() && lane->second.in_flight, "write lane of chunk {} lost its write",
                  key.second.to_string());
        if (!rsp.is_ok() && group->size() > 1 && !retryable(rsp.status())) {
          // Bad input in one of them spoils the union for all: each goes again on its own, first in the lane.
          for (auto write = group->rbegin(); write != group->rend(); ++write) {
            write->alone = true;
            lane->second.waiting.push_front(std::move(*write));
          }
          lane->second.in_flight = false;
          return state->dispatch_writes(key);
        }
        // The answers run with the lane still busy: writes they make wait and join the next request.
        for (WaitingWrite& write : *group) write.done(rsp);
        lane = state->write_lanes.find(key);
        lane->second.in_flight = false;
        state->dispatch_writes(key);
      },
      first.channel, chunk_size, first.truncate, deadline_ns);
}

// A local read started before the target's answer (ClientConfig::read_before_answer): the bytes where
// the last answer for the same range said they lie. Whichever of it and the answer comes second runs
// `then` (on its own thread).
struct StorageClient::State::EarlyRead {
  std::mutex mutex;
  std::optional<Result<LocalBytes>> bytes;        // guarded by mutex
  std::function<void(Result<LocalBytes>&)> then;  // guarded by mutex

  void finish(Result<LocalBytes> read) {
    std::unique_lock lock(mutex);
    if (!then) {
      bytes = std::move(read);
      return;
    }
    auto next = std::move(then);
    lock.unlock();
    next(read);
  }
  void when_done(std::function<void(Result<LocalBytes>&)> next) {
    std::unique_lock lock(mutex);
    if (!bytes) {
      then = std::move(next);
      return;
    }
    lock.unlock();
    next(*bytes);
  }
};

// What claim_local_read hands the caller: the target and place of the range, and the read's result for the attempt
// that takes it.
struct StorageClient::CallerLocalRead {
  TargetId target = 0;
  LocalExtent extent;
  std::span<std::byte> into;
  uint64_t piece_bytes = 0;  // ClientConfig::local_read_piece_bytes
  std::shared_ptr<State::EarlyRead> early = std::make_shared<State::EarlyRead>();
};

std::shared_ptr<StorageClient::CallerLocalRead> StorageClient::claim_local_read(const ChunkId& chunk, uint64_t offset,
                                                                                uint64_t length,
                                                                                std::span<std::byte> into) {
  State& state = *state_;
  if (!state.config.read_before_answer || !state.wants_local(length, /*accept_pieces=*/true)) return nullptr;
  const State::RangeKey range{chunk, offset, length};
  std::lock_guard lock(state.extents_mutex);
  if (state.read_aheads.contains(range)) return nullptr;  // read ahead already: the read takes those bytes
  auto place = state.last_place_locked(range);
  if (!place) return nullptr;
  auto claimed = std::make_shared<CallerLocalRead>();
  claimed->target = std::get<0>(place->first);
  claimed->extent = *place->second;
  claimed->into = into;
  claimed->piece_bytes = state.config.local_read_piece_bytes;
  return claimed;
}

void StorageClient::run_local_read(const std::shared_ptr<CallerLocalRead>& caller_read) {
  if (caller_read)
    caller_read->early->finish(read_local_bytes(caller_read->extent, caller_read->into, caller_read->piece_bytes));
}

void StorageClient::read(ChainId chain, const ChunkId& chunk, uint64_t offset, uint64_t length, ReadMode mode, Callback<ReadRsp> done,
                         bool accept_pieces) {
  read(chain, chunk, offset, length, mode, std::move(done), accept_pieces, nullptr);
}

void StorageClient::read(ChainId chain, const ChunkId& chunk, uint64_t offset, uint64_t length, ReadMode mode,
                         Callback<ReadRsp> done, bool accept_pieces, std::shared_ptr<CallerLocalRead> caller_read) {
  auto state = state_;
  auto dirty_seen = std::make_shared<uint32_t>(0);
  state->start<ReadRsp>(
      [state, chain, chunk, offset, length, mode, dirty_seen, accept_pieces,
       caller_read = std::move(caller_read)](std::function<void(Result<ReadRsp>)> attempt_done) mutable {
        state->read_attempt(chain, chunk, offset, length, mode, accept_pieces, dirty_seen,
                            std::exchange(caller_read, nullptr), std::move(attempt_done), /*use_cache=*/true);
      },
      std::move(done));
}

void StorageClient::State::read_attempt(ChainId chain, const ChunkId& chunk, uint64_t offset, uint64_t length,
                                        ReadMode mode, bool accept_pieces, std::shared_ptr<uint32_t> dirty_seen,
                                        std::shared_ptr<CallerLocalRead> mine,
                                        std::function<void(Result<ReadRsp>)> attempt_done, bool use_cache) {
  // After repeated dirty answers, ask the tail: in CRAQ it commits first, so its committed
  // version is the latest committed one (relaxed there returns exactly that).
  const bool tail = *dirty_seen >= config.dirty_retries_before_tail;
  const bool caching = !tail && caches_reads(accept_pieces);
  if (caching && use_cache && !mine) {
    if (auto cached = cached_for(chain, chunk)) {
      auto self = shared_from_this();
      return read_cached(std::move(cached), offset, length, std::move(attempt_done),
                         [self, chain, chunk, offset, length, mode, accept_pieces, dirty_seen, attempt_done] {
                           self->read_attempt(chain, chunk, offset, length, mode, accept_pieces, dirty_seen, nullptr,
                                              attempt_done, /*use_cache=*/false);
                         });
    }
  }
  // The caller's own local read serves the first attempt, at its target; else a range read ahead asks the
  // target whose file the bytes were read from (another's lie elsewhere); else a range with a remembered
  // place asks the target that named it, so that its bytes can be read while the answer is on its way
  // (another target's place is not known). Each only while that target serves the chain.
  std::shared_ptr<EarlyRead> early;
  std::optional<TargetId> known;
  if (!tail && config.read_before_answer && wants_local(length, accept_pieces)) {
    const RangeKey range{chunk, offset, length};
    if (mine) {
      known = mine->target;
      early = mine->early;
    } else {
      known = read_ahead_target(range);
      if (!known) {
        std::lock_guard lock(extents_mutex);
        if (auto place = last_place_locked(range)) known = std::get<0>(place->first);
      }
    }
    if (known && !serves(chain, *known)) {
      known.reset();
      early.reset();
    }
  }
  Result<TargetId> target = known ? Result<TargetId>(*known) : pick_reader(chain, tail);
  if (!target.is_ok()) return attempt_done(target.status());
  Result<std::string> address = this->address(*target);
  if (!address.is_ok()) return attempt_done(address.status());
  if (tail) ++stats.tail_fallbacks;
  ReadReq req{.chain = chain,
              .chain_version = routing.chain(chain)->version,
              .target = *target,
              .chunk = chunk,
              .offset = offset,
              .length = length,
              .mode = tail ? ReadMode::kRelaxed : mode,
              .accept_pieces = accept_pieces};
  if (wants_local(length, accept_pieces)) req.local_host = this_host_id();
  if (caching && req.local_host.empty() && !this_host_id().empty()) {
    bool remote;
    {
      std::lock_guard lock(cache_mutex);
      remote = remote_targets.contains(*target);
    }
    if (!remote) {
      cache_misses.fetch_add(1, std::memory_order_relaxed);
      req.local_host = this_host_id();
      req.whole_chunk = true;
      return send_whole_chunk_read(*address, std::move(req), std::move(dirty_seen), std::move(attempt_done),
                                   routing_generation.load(std::memory_order_acquire));
    }
  }
  send_read(*address, std::move(req), std::move(dirty_seen), std::move(attempt_done), std::move(early));
}

std::shared_ptr<const StorageClient::State::CachedChunk> StorageClient::State::cached_for(ChainId chain_id,
                                                                                          const ChunkId& chunk) {
  std::shared_ptr<const CachedChunk> cached;
  {
    std::lock_guard lock(cache_mutex);
    auto found = cached_chunks.find(chunk);
    if (found == cached_chunks.end()) return nullptr;
    cached = found->second;
  }
  const ChainInfo* chain = routing.chain(chain_id);
  if (cached->chain != chain_id || chain == nullptr || chain->version != cached->chain_version ||
      !serves(chain_id, cached->target) ||
      cached->stamps->stamp(chunk, monotonic_now_ns()) != std::optional(cached->stamp)) {
    drop_cached(cached);
    return nullptr;
  }
  return cached;
}

void StorageClient::State::drop_cached(const std::shared_ptr<const CachedChunk>& cached) {
  std::lock_guard lock(cache_mutex);
  auto found = cached_chunks.find(cached->chunk);
  if (found != cached_chunks.end() && found->second == cached) {
    cached_crcs -= cached->whole.segment_crcs.size();
    cached_chunks.erase(found);
  }
}

void StorageClient::State::read_cached(std::shared_ptr<const CachedChunk> cached, uint64_t offset, uint64_t length,
                                       std::function<void(Result<ReadRsp>)> attempt_done,
                                       std::function<void()> fallback) {
  auto self = shared_from_this();
  executor.offload(
      [self, cached = std::move(cached), offset, length, attempt_done = std::move(attempt_done),
       fallback = std::move(fallback)]() mutable {
        if (std::optional<ReadRsp> rsp = self->serve_cached(cached, offset, length))
          return attempt_done(std::move(*rsp));
        self->executor.post(std::move(fallback));
      },
      {});
}

std::optional<ReadRsp> StorageClient::State::serve_cached(const std::shared_ptr<const CachedChunk>& cached,
                                                          uint64_t offset, uint64_t length) {
  Result<std::optional<LocalExtent>> range = range_of_whole(cached->whole, offset, length);
  Result<SharedBytes> bytes = SharedBytes{};
  if (!range.is_ok()) {
    bytes = range.status();
  } else if (*range) {
    bytes = read_local_extent(**range, config.local_read_piece_bytes);
  }
  return answer_cached(cached, bytes, !range.is_ok() || range->has_value());
}

std::optional<ReadRsp> StorageClient::State::answer_cached(const std::shared_ptr<const CachedChunk>& cached,
                                                           const Result<SharedBytes>& bytes, bool has_range) {
  // The stamps after the bytes: no change of the chunk or the target began since the answer was kept, so the bytes
  // are the version that was committed all along (and the CRCs say they are whole).
  if (bytes.is_ok() && cached->stamps->unchanged(cached->chunk, cached->stamp, monotonic_now_ns())) {
    cached_reads.fetch_add(1, std::memory_order_relaxed);
    ReadRsp rsp{.meta = cached->meta, .data = {}, .dirty = false};
    if (has_range) {
      local_reads.fetch_add(1, std::memory_order_relaxed);
      rsp.pieces = PayloadPieces{.owner = bytes->owner, .pieces = {bytes->bytes}, .size = bytes->size()};
    }
    return rsp;  // an empty answer past the end
  }
  cache_changed.fetch_add(1, std::memory_order_relaxed);
  if (!bytes.is_ok()) FF_LOG_DEBUG("chunk {}: cached local read: {}", cached->chunk.to_string(), bytes.status());
  drop_cached(cached);
  return std::nullopt;
}

std::shared_ptr<const StorageClient::State::CachedChunk> StorageClient::State::kept_now(ChainId chain,
                                                                                        const ChunkId& chunk) {
  if (!caches_reads(/*accept_pieces=*/true)) return nullptr;
  std::shared_ptr<const CachedChunk> cached;
  {
    std::lock_guard lock(cache_mutex);
    auto found = cached_chunks.find(chunk);
    if (found == cached_chunks.end()) return nullptr;
    cached = found->second;
  }
  if (cached->chain != chain || cached->routing_generation != routing_generation.load(std::memory_order_acquire)) {
    return nullptr;  // read() checks it against the routing
  }
  if (cached->stamps->stamp(chunk, monotonic_now_ns()) != std::optional(cached->stamp)) {
    drop_cached(cached);
    return nullptr;
  }
  return cached;
}

std::optional<Result<ReadRsp>> StorageClient::read_cached_now(ChainId chain, const ChunkId& chunk, uint64_t offset,
                                                              uint64_t length) {
  std::shared_ptr<const State::CachedChunk> cached = state_->kept_now(chain, chunk);
  if (cached == nullptr) return std::nullopt;
  std::optional<ReadRsp> rsp = state_->serve_cached(cached, offset, length);
  if (!rsp) return std::nullopt;
  return Result<ReadRsp>(std::move(*rsp));
}

// Disk queues of this thread that ended with nothing in flight, for its next CachedReadQueue (a ring's set-up is a few
// system calls and mappings, and FileClient takes a queue per batch read).
namespace {
std::vector<std::unique_ptr<LocalReadQueue>>& spare_local_read_queues() {
  thread_local std::vector<std::unique_ptr<LocalReadQueue>> spare;
  return spare;
}
constexpr size_t kMaxSpareLocalReadQueues = 2;
}  // namespace

struct StorageClient::CachedReadQueue::Impl {
  struct Reading {
    uint64_t tag = 0;
    std::shared_ptr<const State::CachedChunk> cached;
  };
  std::shared_ptr<State> state;
  std::unique_ptr<LocalReadQueue> disk;
  std::unordered_map<uint64_t, Reading> reading;  // by the disk read's own tag
  uint64_t next_read = 0;
  std::vector<Done> ready;  // answered without a disk read (past the version's end)
  std::vector<LocalReadQueue::Done> landed;
};

StorageClient::CachedReadQueue::CachedReadQueue(StorageClient& client, uint32_t depth)
    : impl_(std::make_unique<Impl>()) {
  impl_->state = client.state_;
  depth = std::max<uint32_t>(depth, 1);
  auto& spare = spare_local_read_queues();
  auto found = std::find_if(spare.begin(), spare.end(), [&](const auto& queue) { return queue->depth() == depth; });
  if (found != spare.end()) {
    impl_->disk = std::move(*found);
    spare.erase(found);
  } else {
    impl_->disk = std::make_unique<LocalReadQueue>(depth);
  }
}

StorageClient::CachedReadQueue::~CachedReadQueue() {
  std::vector<Done> left;
  if (in_flight() > 0) reap(in_flight(), left);
  auto& spare = spare_local_read_queues();
  if (impl_->disk->in_flight() == 0 && impl_->disk->uses_io_uring() && spare.size() < kMaxSpareLocalReadQueues) {
    spare.push_back(std::move(impl_->disk));
  }
}

size_t StorageClient::CachedReadQueue::in_flight() const { return impl_->disk->in_flight() + impl_->ready.size(); }
uint32_t StorageClient::CachedReadQueue::depth() const { return impl_->disk->depth(); }

bool StorageClient::CachedReadQueue::submit(ChainId chain, const ChunkId& chunk, uint64_t offset, uint64_t length,
                                            uint64_t tag) {
  if (in_flight() >= depth()) return false;
  State& state = *impl_->state;
  std::shared_ptr<const State::CachedChunk> cached = state.kept_now(chain, chunk);
  if (cached == nullptr) return false;
  Result<std::optional<LocalExtent>> range = range_of_whole(cached->whole, offset, length);
  if (!range.is_ok() || !range->has_value()) {
    std::optional<ReadRsp> rsp =
        state.answer_cached(cached, range.is_ok() ? Result<SharedBytes>(SharedBytes{}) : range.status(), false);
    if (!rsp) return false;
    impl_->ready.push_back(Done{tag, std::move(rsp)});
    return true;
  }
  const uint64_t id = impl_->next_read++;
  Status started = impl_->disk->submit(std::move(**range), id);
  if (!started.is_ok()) {
    if (started.code() != StatusCode::kResourceExhausted) (void)state.answer_cached(cached, started, true);
    return false;
  }
  impl_->reading.emplace(id, Impl::Reading{tag, std::move(cached)});
  return true;
}

void StorageClient::CachedReadQueue::reap(size_t min, std::vector<Done>& out, size_t max) {
  Impl& q = *impl_;
  min = std::min({min, in_flight(), max});
  size_t from_ready = std::min(max, q.ready.size());
  for (size_t i = 0; i < from_ready; ++i) out.push_back(std::move(q.ready[i]));
  q.ready.erase(q.ready.begin(), q.ready.begin() + static_cast<ptrdiff_t>(from_ready));
  if (max == from_ready) return;
  q.landed.clear();
  q.disk->reap(min > from_ready ? min - from_ready : 0, q.landed, max - from_ready);
  for (LocalReadQueue::Done& done : q.landed) {
    auto found = q.reading.find(done.tag);
    FF_ASSERT(found != q.reading.end(), "cached read queue: a disk read {} nobody asked for", done.tag);
    Impl::Reading reading = std::move(found->second);
    q.reading.erase(found);
    Result<SharedBytes> bytes = done.bytes.is_ok() ? done.bytes->answer(done.bytes->extent) : done.bytes.status();
    out.push_back(Done{reading.tag, q.state->answer_cached(reading.cached, bytes, true)});
    if (out.back().rsp) q.state->queued_reads.fetch_add(1, std::memory_order_relaxed);
  }
}

void StorageClient::State::send_whole_chunk_read(const std::string& address, ReadReq req,
                                                 std::shared_ptr<uint32_t> dirty_seen,
                                                 std::function<void(Result<ReadRsp>)> attempt_done,
                                                 uint64_t generation) {
  // The stamp before the request: the answer is kept only if it still holds after the answer came (then the
  // answer held for the whole interval).
  std::shared_ptr<ReadStampsView> view;
  {
    std::lock_guard lock(cache_mutex);
    if (auto found = target_stamps.find(req.target); found != target_stamps.end()) view = found->second;
  }
  std::optional<ReadStampsView::Stamp> before = view ? view->stamp(req.chunk, monotonic_now_ns()) : std::nullopt;
  auto self = shared_from_this();
  auto on_response = [self, address, req, dirty_seen, attempt_done, view, before,
                      generation](Result<Response> response) mutable {
    Result<ReadRsp> rsp = self->read_answer(std::move(response), *dirty_seen);
    if (!rsp.is_ok()) return attempt_done(std::move(rsp));
    if (!rsp->local) {
      // Bytes: the target is not on this host (or nothing was there to read; then nothing is learned).
      if (!rsp->payload().empty() || !rsp->pieces.pieces.empty()) {
        std::lock_guard lock(self->cache_mutex);
        self->remote_targets.insert(req.target);
      }
      return attempt_done(std::move(rsp));
    }
    const LocalExtent whole = *rsp->local;
    if (!whole.stamps.empty()) {
      // Another file at the path than the one watched (the target's directory was made anew): watch that one.
      if (view && view->path() == whole.stamps && !before) {
        struct stat info {};
        if (::stat(whole.stamps.c_str(), &info) != 0 || static_cast<uint64_t>(info.st_dev) != view->device() ||
            static_cast<uint64_t>(info.st_ino) != view->inode()) {
          view.reset();
        }
      }
      if (!view || view->path() != whole.stamps) {
        Result<std::shared_ptr<ReadStampsView>> mapped = ReadStampsView::map(whole.stamps);
        if (mapped.is_ok()) {
          std::lock_guard lock(self->cache_mutex);
          self->target_stamps[req.target] = *mapped;
        } else {
          FF_LOG_DEBUG("target {}: {}", req.target, mapped.status());
        }
        before.reset();  // taken on another file (or none): nothing to compare with
      } else if (before && !rsp->dirty && view->unchanged(req.chunk, *before, monotonic_now_ns())) {
        auto cached = std::make_shared<CachedChunk>(CachedChunk{.chunk = req.chunk,
                                                                .chain = req.chain,
                                                                .chain_version = req.chain_version,
                                                                .routing_generation = generation,
                                                                .target = req.target,
                                                                .meta = rsp->meta,
                                                                .whole = whole,
                                                                .stamps = view,
                                                                .stamp = *before});
        std::lock_guard lock(self->cache_mutex);
        const uint64_t crcs = whole.segment_crcs.size();
        if (self->cached_chunks.size() >= self->config.cached_local_read_chunks ||
            self->cached_crcs + crcs > kMaxCachedCrcs) {
          self->cached_chunks.clear();
          self->cached_crcs = 0;
        }
        auto [slot, added] = self->cached_chunks.try_emplace(req.chunk, cached);
        if (!added) {
          self->cached_crcs -= slot->second->whole.segment_crcs.size();
          slot->second = std::move(cached);
        }
        self->cached_crcs += crcs;
      }
    }
    // This read's own range of the whole version.
    Result<std::optional<LocalExtent>> range = range_of_whole(whole, req.offset, req.length);
    if (!range.is_ok()) return attempt_done(range.status());
    rsp->local = std::move(*range);
    if (!rsp->local) return attempt_done(std::move(rsp));
    req.whole_chunk = false;
    self->read_local(address, std::move(req), std::move(*rsp), dirty_seen, std::move(attempt_done));
  };
  rpc.call(address, Request{std::move(req)}, attempt_timeout(), std::move(on_response));
}

bool StorageClient::read_ahead_known(const ChunkId& chunk, uint64_t offset, uint64_t length) {
  State& state = *state_;
  if (!state.config.read_before_answer || !state.wants_local(length, /*accept_pieces=*/true)) return false;
  const State::RangeKey range{chunk, offset, length};
  std::optional<std::pair<State::ExtentKey, LocalExtent>> known;
  {
    std::lock_guard lock(state.extents_mutex);
    if (state.read_aheads.contains(range) || state.locating.contains(range)) return true;
    if (auto place = state.last_place_locked(range)) known.emplace(place->first, *place->second);
  }
  if (!known) return false;
  state.start_read_ahead(known->first, known->second);
  return true;
}

void StorageClient::read_ahead(ChainId chain_id, const ChunkId& chunk, uint64_t offset, uint64_t length) {
  auto state = state_;
  if (!state->config.read_before_answer || !state->wants_local(length, /*accept_pieces=*/true)) return;
  const ChainInfo* chain = state->routing.chain(chain_id);
  if (chain == nullptr) return;
  // A range already read ahead, or being located for that, is left alone (a sequential reader asks for each
  // range of its window once per read until it reaches it); one whose place the last answer for it named is read
  // there (no request now; the read checks).
  if (read_ahead_known(chunk, offset, length)) return;
  const State::RangeKey range{chunk, offset, length};
  // Else ask a target that answered locally before (another would answer with the bytes themselves).
  std::vector<TargetId> candidates;
  {
    std::lock_guard lock(state->extents_mutex);
    for (TargetId target : chain->serving()) {
      if (state->local_targets.contains(target)) candidates.push_back(target);
    }
    if (!candidates.empty()) state->locating.insert(range);
  }
  if (candidates.empty()) return;
  const TargetId target = candidates[state->spread++ % candidates.size()];
  Result<std::string> address = state->address(target);
  if (!address.is_ok()) {
    std::lock_guard lock(state->extents_mutex);
    state->locating.erase(range);
    return;
  }
  ReadReq req{.chain = chain_id,
              .chain_version = chain->version,
              .target = target,
              .chunk = chunk,
              .offset = offset,
              .length = length,
              .mode = ReadMode::kStrict,
              .local_host = this_host_id(),
              .accept_pieces = true};
  const State::ExtentKey key{target, chunk, offset, length};
  state->rpc.call(*address, Request{std::move(req)}, state->attempt_timeout(), [state, key](Result<Response> response) {
    {
      std::lock_guard lock(state->extents_mutex);
      state->locating.erase(State::range_of(key));
    }
    Result<ReadRsp> rsp = response_as<ReadRsp>(std::move(response));
    // Anything but a local answer (an error, dirty, bytes after all) is simply dropped.
    if (!rsp.is_ok() || !rsp->local) return;
    state->remember_extent(key, *rsp->local);
    state->start_read_ahead(key, *rsp->local);
  });
}

void StorageClient::State::start_read_ahead(const ExtentKey& key, const LocalExtent& extent) {
  auto early = std::make_shared<EarlyRead>();
  {
    std::lock_guard lock(extents_mutex);
    const RangeKey range = range_of(key);
    auto found = read_aheads.find(range);
    if (found != read_aheads.end()) {
      read_ahead_ages.erase(found->second.age);
      read_aheads.erase(found);
      read_aheads_dropped.fetch_add(1, std::memory_order_relaxed);
    }
    if (read_aheads.size() >= kMaxReadAheads) {  // the oldest is the least likely to be read still
      read_aheads.erase(read_ahead_ages.front());
      read_ahead_ages.pop_front();
      read_aheads_dropped.fetch_add(1, std::memory_order_relaxed);
    }
    read_aheads_started.fetch_add(1, std::memory_order_relaxed);
    const TargetId target = std::get<0>(key);
    read_aheads.emplace(range, ReadAhead{target, early, read_ahead_ages.insert(read_ahead_ages.end(), range)});
  }
  executor.offload(
      [early, extent, piece_bytes = config.local_read_piece_bytes] {
        early->finish(read_local_bytes(extent, piece_bytes));
      },
      {});
}

std::optional<LocalExtent> StorageClient::State::last_extent(const ExtentKey& key) {
  std::lock_guard lock(extents_mutex);
  auto found = last_extents.find(key);
  if (found == last_extents.end()) return std::nullopt;
  return found->second;
}

void StorageClient::State::remember_extent(const ExtentKey& key, const LocalExtent& extent) {
  std::lock_guard lock(extents_mutex);
  // A bound: forget everything at once when full (the next answers refill it).
  if (last_extents.size() >= kMaxRememberedExtents && !last_extents.contains(key)) {
    last_extents.clear();
    last_place.clear();
  }
  last_extents[key] = extent;
  last_place[range_of(key)] = std::get<0>(key);
  local_targets.insert(std::get<0>(key));
}

std::shared_ptr<StorageClient::State::EarlyRead> StorageClient::State::take_read_ahead(const ExtentKey& key) {
  std::lock_guard lock(extents_mutex);
  auto found = read_aheads.find(range_of(key));
  if (found == read_aheads.end() || found->second.target != std::get<0>(key)) return nullptr;
  std::shared_ptr<EarlyRead> early = std::move(found->second.early);
  read_ahead_ages.erase(found->second.age);
  read_aheads.erase(found);
  return early;
}

std::optional<std::pair<StorageClient::State::ExtentKey, const LocalExtent*>> StorageClient::State::last_place_locked(
    const RangeKey& range) const {
  auto place = last_place.find(range);
  if (place == last_place.end()) return std::nullopt;
  const auto& [chunk, offset, length] = range;
  const ExtentKey key{place->second, chunk, offset, length};
  auto extent = last_extents.find(key);
  if (extent == last_extents.end()) return std::nullopt;
  return std::pair{key, &extent->second};
}

bool StorageClient::State::serves(ChainId chain_id, TargetId target) const {
  const ChainInfo* chain = routing.chain(chain_id);
  if (chain == nullptr) return false;
  for (TargetId serving : chain->serving()) {
    if (serving == target) return true;
  }
  return false;
}

std::optional<TargetId> StorageClient::State::read_ahead_target(const RangeKey& range) {
  std::lock_guard lock(extents_mutex);
  auto found = read_aheads.find(range);
  if (found == read_aheads.end()) return std::nullopt;
  return found->second.target;
}

void StorageClient::State::send_read(const std::string& address, ReadReq req, std::shared_ptr<uint32_t> dirty_seen,
                                     std::function<void(Result<ReadRsp>)> attempt_done,
                                     std::shared_ptr<EarlyRead> early) {
  auto self = shared_from_this();
  const ExtentKey key{req.target, req.chunk, req.offset, req.length};
  bool read_ahead = false;
  if (!early && !req.local_host.empty() && config.read_before_answer) {
    early = take_read_ahead(key);
    read_ahead = early != nullptr;
    if (!early) {
      if (std::optional<LocalExtent> guess = last_extent(key)) {
        early = std::make_shared<EarlyRead>();
        executor.offload(
            [early, guess = std::move(*guess), piece_bytes = config.local_read_piece_bytes] {
              early->finish(read_local_bytes(guess, piece_bytes));
            },
            {});
      }
    }
  }
  // Completes on the executor, or for a successful read with accept_pieces on gRPC's thread.
  auto on_response = [self, address, req, key, early, read_ahead, attempt_done,
                      dirty_seen](Result<Response> response) mutable {
    Result<ReadRsp> rsp = self->read_answer(std::move(response), *dirty_seen);
    if (!rsp.is_ok()) return attempt_done(std::move(rsp));
    if (!rsp->local) return attempt_done(std::move(rsp));
    self->remember_extent(key, *rsp->local);
    if (early) {
      // Keep the early bytes if the answer names the place they were read from and every CRC matches.
      early->when_done([self, address, req = std::move(req), rsp = std::move(*rsp), attempt_done, dirty_seen,
                        read_ahead](Result<LocalBytes>& bytes) mutable {
        Result<SharedBytes> answer = bytes.is_ok() ? bytes->answer(*rsp.local) : Result<SharedBytes>(bytes.status());
        if (answer.is_ok()) {
          self->early_reads.fetch_add(1, std::memory_order_relaxed);
          if (read_ahead) self->read_ahead_used.fetch_add(1, std::memory_order_relaxed);
          return self->complete_local(std::move(rsp), std::move(*answer), attempt_done);
        }
        self->read_local(address, std::move(req), std::move(rsp), dirty_seen, std::move(attempt_done));
      });
      return;
    }
    self->read_local(address, std::move(req), std::move(*rsp), dirty_seen, std::move(attempt_done));
  };
  if (coalesces(req)) return send_coalesced(address, std::move(req), std::move(on_response));
  rpc.call(address, Request{std::move(req)}, attempt_timeout(), std::move(on_response));
}

void StorageClient::State::send_coalesced(const std::string& address, ReadReq req,
                                          std::function<void(Result<Response>)> done) {
  {
    std::lock_guard lock(lanes_mutex);
    ReadLane& lane = lanes[address];
    if (lane.in_flight >= config.read_rpcs_per_node) {
      lane.waiting.push_back(WaitingRead{std::move(req), std::move(done)});
      return;
    }
    ++lane.in_flight;
  }
  std::vector<WaitingRead> one;
  one.push_back(WaitingRead{std::move(req), std::move(done)});
  send_lane(address, std::move(one));
}

void StorageClient::State::send_lane(const std::string& address, std::vector<WaitingRead> reads) {
  auto self = shared_from_this();
  read_rpcs.fetch_add(1, std::memory_order_relaxed);
  if (reads.size() == 1) {
    rpc.call(address, Request{std::move(reads[0].req)}, attempt_timeout(),
             [self, address, done = std::move(reads[0].done)](Result<Response> response) mutable {
               // The slot first: a read the callback issues (a reader at depth 1) then goes out at once.
               self->lane_done(address);
               done(std::move(response));
             });
    return;
  }
  batched_reads.fetch_add(reads.size(), std::memory_order_relaxed);
  BatchReadReq batch;
  auto dones = std::make_shared<std::vector<std::function<void(Result<Response>)>>>();
  batch.reads.reserve(reads.size());
  dones->reserve(reads.size());
  for (WaitingRead& read : reads) {
    batch.reads.push_back(std::move(read.req));
    dones->push_back(std::move(read.done));
  }
  rpc.call(address, Request{std::move(batch)}, attempt_timeout(), [self, address, dones](Result<Response> response) {
    self->lane_done(address);
    Result<BatchReadRsp> rsp = response_as<BatchReadRsp>(std::move(response));
    if (rsp.is_ok() && rsp->results.size() != dones->size()) {
      rsp = fs_error(FsError::kMalformed, fmt::format("a batch of {} reads was answered with {} results", dones->size(),
                                                      rsp->results.size()));
    }
    for (size_t i = 0; i < dones->size(); ++i) {
      if (!rsp.is_ok()) {
        (*dones)[i](rsp.status());
      } else if (!rsp->results[i].status.is_ok()) {
        (*dones)[i](std::move(rsp->results[i].status));
      } else {
        (*dones)[i](Response{std::move(rsp->results[i].rsp)});
      }
    }
  });
}

void StorageClient::State::lane_done(const std::string& address) {
  std::vector<WaitingRead> next;
  {
    std::lock_guard lock(lanes_mutex);
    ReadLane& lane = lanes[address];
    if (lane.waiting.empty()) {
      --lane.in_flight;
      return;
    }
    const size_t n = std::min<size_t>(lane.waiting.size(), std::max<uint32_t>(config.max_reads_per_batch, 1));
    next.reserve(n);
    for (size_t i = 0; i < n; ++i) {
      next.push_back(std::move(lane.waiting.front()));
      lane.waiting.pop_front();
    }
  }
  // Sent from the executor: this may be gRPC's thread, where the transport must not drop a channel.
  auto self = shared_from_this();
  executor.post([self, address, next = std::move(next)]() mutable { self->send_lane(address, std::move(next)); });
}

void StorageClient::State::complete_local(ReadRsp rsp, SharedBytes bytes,
                                          const std::function<void(Result<ReadRsp>)>& attempt_done) {
  local_reads.fetch_add(1, std::memory_order_relaxed);
  rsp.local.reset();
  rsp.pieces = PayloadPieces{.owner = bytes.owner, .pieces = {bytes.bytes}, .size = bytes.size()};
  attempt_done(std::move(rsp));
}

void StorageClient::State::read_local(const std::string& address, ReadReq req, ReadRsp rsp,
                                      std::shared_ptr<uint32_t> dirty_seen,
                                      std::function<void(Result<ReadRsp>)> attempt_done) {
  // The bytes are in the target's file on this host. Read them off the executor and off gRPC's thread;
  // success completes there (accept_pieces allows it), a failure reads over RPC.
  auto self = shared_from_this();
  executor.offload(
      [self, address, req = std::move(req), rsp = std::move(rsp), attempt_done, dirty_seen]() mutable {
        Result<SharedBytes> bytes = read_local_extent(*rsp.local, self->config.local_read_piece_bytes);
        if (bytes.is_ok()) return self->complete_local(std::move(rsp), std::move(*bytes), attempt_done);
        self->local_read_fallbacks.fetch_add(1, std::memory_order_relaxed);
        if (bytes.status().code() == StatusCode::kDataLoss) {
          FF_LOG_DEBUG("chunk {}: {}; reading over RPC", req.chunk.to_string(), bytes.status());
        } else if (!self->local_reads_off.exchange(true)) {
          // The file cannot be used from here (permissions, another mount namespace): stop asking.
          FF_LOG_INFO("local reads off for this client: {}", bytes.status());
        }
        req.local_host.clear();
        self->executor.post(
            [self, address, req = std::move(req), attempt_done = std::move(attempt_done), dirty_seen]() mutable {
              self->send_read(address, std::move(req), dirty_seen, std::move(attempt_done));
            });
      },
      {});
}

void StorageClient::batch_write(std::vector<WriteReq> writes, Callback<std::vector<WriteResult>> done) {
  auto results = std::make_shared<std::vector<WriteResult>>(writes.size());
  auto left = std::make_shared<size_t>(writes.size());
  if (writes.empty()) return done(std::vector<WriteResult>{});
  for (size_t i = 0; i < writes.size(); ++i) {
    write(writes[i].chain, writes[i].chunk, writes[i].offset, std::move(writes[i].data),
          [results, left, i, done](Result<WriteRsp> rsp) {
            if (rsp.is_ok()) {
              (*results)[i].rsp = *rsp;
            } else {
              (*results)[i].status = rsp.status();
            }
            if (--*left == 0) done(std::move(*results));
          },
          writes[i].request_id.channel);
  }
}

void StorageClient::batch_read(std::vector<ReadReq> reads, Callback<std::vector<ReadResult>> done) {
  auto results = std::make_shared<std::vector<ReadResult>>(reads.size());
  auto left = std::make_shared<size_t>(reads.size());
  if (reads.empty()) return done(std::vector<ReadResult>{});
  for (size_t i = 0; i < reads.size(); ++i) {
    read(reads[i].chain, reads[i].chunk, reads[i].offset, reads[i].length, reads[i].mode, [results, left, i, done](Result<ReadRsp> rsp) {
      if (rsp.is_ok()) {
        (*results)[i].rsp = std::move(*rsp);
      } else {
        (*results)[i].status = rsp.status();
      }
      if (--*left == 0) done(std::move(*results));
    });
  }
}

void StorageClient::query_last_chunk(ChainId chain, uint64_t inode, uint64_t begin_index, uint64_t end_index,
                                     Callback<QueryLastChunkRsp> done) {
  auto state = state_;
  state->start<QueryLastChunkRsp>(
      [state, chain, inode, begin_index, end_index](std::function<void(Result<QueryLastChunkRsp>)> attempt_done) {
        Result<TargetId> target = state->pick_reader(chain, false);
        if (!target.is_ok()) return attempt_done(target.status());
        Result<std::string> address = state->address(*target);
        if (!address.is_ok()) return attempt_done(address.status());
        QueryLastChunkReq req{.chain = chain, .chain_version = state->routing.chain(chain)->version, .target = *target,
                              .inode = inode, .begin_index = begin_index, .end_index = end_index};
        state->rpc.call(*address, Request{req}, state->attempt_timeout(),
                        [attempt_done](Result<Response> response) { attempt_done(response_as<QueryLastChunkRsp>(std::move(response))); });
      },
      std::move(done));
}

void StorageClient::remove_range(ChainId chain, const ChunkId& begin, const ChunkId& end, Callback<RemoveChunksRsp> done) {
  auto state = state_;
  ClientRequestId id{state->config.client_id, UINT32_MAX, ++state->next_seq[UINT32_MAX]};
  state->start<RemoveChunksRsp>(
      [state, chain, begin, end, id](std::function<void(Result<RemoveChunksRsp>)> attempt_done) {
        Result<TargetId> head = state->head(chain);
        if (!head.is_ok()) return attempt_done(head.status());
        Result<std::string> address = state->address(*head);
        if (!address.is_ok()) return attempt_done(address.status());
        RemoveChunksReq req{.request_id = id, .chain = chain, .chain_version = state->routing.chain(chain)->version,
                            .begin = begin, .end = end};
        state->rpc.call(*address, Request{req}, state->attempt_timeout(),
                        [attempt_done](Result<Response> response) { attempt_done(response_as<RemoveChunksRsp>(std::move(response))); });
      },
      std::move(done));
}

StorageClient::Stats StorageClient::stats() const { return state_->stats; }

StorageClient::CoalescedReadCounts StorageClient::coalesced_read_counts() const {
  return CoalescedReadCounts{.rpcs = state_->read_rpcs.load(std::memory_order_relaxed),
                             .batched_reads = state_->batched_reads.load(std::memory_order_relaxed)};
}

StorageClient::LocalReadCounts StorageClient::local_read_counts() const {
  return LocalReadCounts{.served = state_->local_reads.load(std::memory_order_relaxed),
                         .fallbacks = state_->local_read_fallbacks.load(std::memory_order_relaxed),
                         .read_before_answer = state_->early_reads.load(std::memory_order_relaxed),
                         .read_ahead = state_->read_ahead_used.load(std::memory_order_relaxed),
                         .read_aheads_started = state_->read_aheads_started.load(std::memory_order_relaxed),
                         .read_aheads_dropped = state_->read_aheads_dropped.load(std::memory_order_relaxed),
                         .cached = state_->cached_reads.load(std::memory_order_relaxed),
                         .cache_misses = state_->cache_misses.load(std::memory_order_relaxed),
                         .cache_changed = state_->cache_changed.load(std::memory_order_relaxed),
                         .queued = state_->queued_reads.load(std::memory_order_relaxed)};
}

}  // namespace ff::fs
