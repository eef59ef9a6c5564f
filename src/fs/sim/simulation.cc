#include "ff/fs/sim.h"

#include <algorithm>
#include <functional>
#include <memory>
#include <queue>
#include <random>
#include <set>

#include "ff/common/assert.h"
#include "ff/common/clock.h"
#include "ff/common/log.h"
#include "ff/fs/client.h"
#include "ff/fs/crc32c.h"
#include "ff/fs/map_store.h"
#include "ff/fs/mem_chunk_store.h"
#include "ff/fs/mgmtd.h"
#include "ff/fs/transport.h"

namespace ff::fs {

std::string SimResult::summary() const {
  std::string counts = fmt::format(
      "writes={} (failed {}; {} in bursts, {} coalesced) reads={} (failed {}; {} sent in batches) removals={} (failed "
      "{}) truncates={} (failed {}) "
      "crashes={} mgmtd_crashes={} partitions={} corruptions={} repairs={} syncs={} scrubbed={} (corrupt {}) "
      "fast_lane_reads={} tail_commits_in_worker={} (left to the executor {}) lazy_commits_lost={} events={} "
      "virtual={:.1f}s",
      writes_acked, writes_failed, burst_writes, coalesced_writes, reads_ok, reads_failed, reads_batched,
      removals_acked, removals_failed, truncates_acked, truncates_failed, crashes, mgmtd_crashes, partitions,
      corruptions, repairs, syncs, chunks_scrubbed, scrub_corruptions, fast_lane_reads, tail_commits_in_worker,
      tail_commits_left_to_executor, lazy_commits_lost, events, virtual_ns / 1e9);
  if (ok) return fmt::format("seed={} ok {}", seed, counts);
  return fmt::format("seed={} FAILED: {} ({} violations; {}) reproduce with seed={}", seed, violations.front(), violations.size(),
                     counts, seed);
}

namespace {

constexpr int64_t kMs = 1'000'000;
constexpr uint64_t kMaxEvents = 20'000'000;  // a run that needs more is a livelock: reported

// ---------------------------------------------------------------- world: clock, RNG, event queue
class World {
 public:
  explicit World(uint64_t seed) : rng_(seed), clock_(0, false) {}

  using Token = std::shared_ptr<bool>;  // an event runs only while *token is true (its node is up)
  void schedule(int64_t at_ns, Token token, std::function<void()> fn) {
    queue_.push(Event{std::max(at_ns, now()), seq_++, std::move(token), std::move(fn)});
  }
  // Runs events up to `until_ns`; false when the event budget ran out.
  bool run_until(int64_t until_ns) {
    while (!queue_.empty() && queue_.top().at_ns <= until_ns) {
      Event event = queue_.top();
      queue_.pop();
      if (event.at_ns > now()) clock_.set_ns(event.at_ns);
      if (event.token && !*event.token) continue;
      if (++events_ > kMaxEvents) return false;
      event.fn();
    }
    if (until_ns > now()) clock_.set_ns(until_ns);
    return true;
  }
  int64_t now() const { return clock_.now_ns(); }
  const Clock& clock() const { return clock_; }
  double uniform() { return std::uniform_real_distribution<double>(0.0, 1.0)(rng_); }
  int64_t between(int64_t low, int64_t high) { return std::uniform_int_distribution<int64_t>(low, high)(rng_); }
  std::mt19937_64& rng() { return rng_; }
  uint64_t events() const { return events_; }

 private:
  struct Event {
    int64_t at_ns;
    uint64_t seq;
    Token token;
    std::function<void()> fn;
    bool operator>(const Event& other) const { return at_ns != other.at_ns ? at_ns > other.at_ns : seq > other.seq; }
  };
  std::mt19937_64 rng_;
  ManualClock clock_;
  std::priority_queue<Event, std::vector<Event>, std::greater<>> queue_;
  uint64_t seq_ = 0;
  uint64_t events_ = 0;
};

class SimExecutor final : public Executor {
 public:
  SimExecutor(World& world, World::Token token, int64_t late_work_ns)
      : world_(world), token_(std::move(token)), late_work_ns_(late_work_ns) {}
  const Clock& clock() const override { return world_.clock(); }
  void post(Task task) override { world_.schedule(world_.now(), token_, std::move(task)); }
  void post_after(int64_t delay_ns, Task task) override { world_.schedule(world_.now() + delay_ns, token_, std::move(task)); }
  void offload(Task work, Task done) override {
    // The disk does the work at once (durable when it returns); the service hears back after a
    // simulated latency, or never if the node crashes first. With late_work_ns (SimOptions::late_work_ns) the
    // work itself starts up to that much later, as on a busy worker pool, so the executor's state (routing, syncs)
    // may move on before it runs; it never runs if the node crashes first.
    auto run = [this, work = std::move(work), done = std::move(done)]() mutable {
      work();
      if (done) world_.schedule(world_.now() + world_.between(5'000, 200'000), token_, std::move(done));
    };
    if (late_work_ns_ > 0)
      return world_.schedule(world_.now() + world_.between(0, late_work_ns_), token_, std::move(run));
    run();
  }
  const World::Token& token() const { return token_; }

 private:
  World& world_;
  World::Token token_;
  int64_t late_work_ns_ = 0;
};

// ---------------------------------------------------------------- network
// What the wire does to payloads a service answered in shared bytes (ServerContext::shared_payloads): the receiver
// gets them as `data`, as over fs/rpc.
void carry_shared_payloads(Response& response) {
  const auto carry = [](ReadRsp& rsp) {
    if (!rsp.shared_data.is_set()) return;
    rsp.data = rsp.shared_data.to_vector();
    rsp.shared_data = {};
  };
  if (auto* read = std::get_if<ReadRsp>(&response)) carry(*read);
  if (auto* batch = std::get_if<BatchReadRsp>(&response)) {
    for (ReadResult& result : batch->results) carry(result.rsp);
  }
}

class Network {
 public:
  explicit Network(World& world) : world_(world) {}
  struct Endpoint {
    SimExecutor* executor = nullptr;
    Handler handler;
  };
  void listen(const std::string& address, SimExecutor* executor, Handler handler) {
    endpoints_[address] = Endpoint{executor, std::move(handler)};
  }
  void unlisten(const std::string& address) { endpoints_.erase(address); }
  void isolate(const std::string& address, bool isolated) {
    if (isolated) {
      isolated_.insert(address);
    } else {
      isolated_.erase(address);
    }
  }
  void heal() { isolated_.clear(); }
  bool blocked(const std::string& a, const std::string& b) const { return isolated_.count(a) != 0 || isolated_.count(b) != 0; }
  double loss = 0.0;

  int64_t delay() {
    // Mostly 50-500 us; sometimes 5-30 ms, which reorders messages.
    return world_.uniform() < 0.05 ? world_.between(5 * kMs, 30 * kMs) : world_.between(50'000, 500'000);
  }
  bool drop(const std::string& a, const std::string& b) { return blocked(a, b) || (loss > 0 && world_.uniform() < loss); }
  // The share of requests delivered as the gRPC transport delivers them (SimOptions::fast_lane).
  double fast_lane = 0.0;

  void call(const std::string& from, SimExecutor* owner, const std::string& to, Request request, int64_t timeout_ns,
            RpcClient::Done done) {
    struct CallState {
      bool completed = false;
      RpcClient::Done done;
    };
    auto call_state = std::make_shared<CallState>();
    call_state->done = std::move(done);
    int64_t deadline = world_.now() + std::max<int64_t>(timeout_ns, 0);
    world_.schedule(deadline, owner->token(), [call_state, to] {
      if (call_state->completed) return;
      call_state->completed = true;
      call_state->done(deadline_exceeded("no answer from {}", to));
    });
    if (drop(from, to)) return;
    auto shared_request = std::make_shared<Request>(std::move(request));
    world_.schedule(world_.now() + delay(), nullptr, [this, from, owner, to, shared_request, deadline, call_state] {
      auto endpoint = endpoints_.find(to);
      if (endpoint == endpoints_.end() || world_.now() > deadline) return;  // nobody listening: caller times out
      if (!*endpoint->second.executor->token()) return;
      ServerContext context{deadline, from};
      // As fs/rpc's Frame calls (every call of ff-storage's clients): replies from any thread and shared payloads,
      // both or neither.
      context.reply_from_any_thread = fast_lane > 0 && world_.uniform() < fast_lane;
      context.shared_payloads = context.reply_from_any_thread;
      auto reply_once = std::make_shared<bool>(false);
      Reply reply = [this, from, owner, to, call_state, reply_once](Result<Response> response) {
        FF_ASSERT(!*reply_once, "reply called twice for a request to {}", to);
        *reply_once = true;
        if (drop(to, from)) return;
        if (response.is_ok()) carry_shared_payloads(*response);
        auto shared_response = std::make_shared<Result<Response>>(std::move(response));
        world_.schedule(world_.now() + delay(), owner->token(), [call_state, shared_response] {
          if (call_state->completed) return;
          call_state->completed = true;
          call_state->done(std::move(*shared_response));
        });
      };
      endpoint->second.handler(context, std::move(*shared_request), std::move(reply));
    });
  }

 private:
  World& world_;
  std::map<std::string, Endpoint> endpoints_;
  std::set<std::string> isolated_;
};

class SimRpcClient final : public RpcClient {
 public:
  SimRpcClient(Network& network, SimExecutor* owner, std::string from) : network_(network), owner_(owner), from_(std::move(from)) {}
  void call(const std::string& address, Request request, int64_t timeout_ns, Done done) override {
    network_.call(from_, owner_, address, std::move(request), timeout_ns, std::move(done));
  }

 private:
  Network& network_;
  SimExecutor* owner_;
  std::string from_;
};

// ---------------------------------------------------------------- the cluster and its checkers
struct ChunkKey {
  ChainId chain;
  ChunkId chunk;
  friend auto operator<=>(const ChunkKey&, const ChunkKey&) = default;
};

class Simulation {
 public:
  Simulation(uint64_t seed, const SimOptions& options) : options_(options), world_(seed), network_(world_) {
    result_.seed = seed;
  }

  SimResult run();

 private:
  struct Node {
    std::string address;
    World::Token token;
    SimExecutor* executor = nullptr;
    SimRpcClient* rpc = nullptr;
    bool up = false;
  };

  void violation(std::string text) {
    if (result_.violations.size() < 20) result_.violations.push_back(fmt::format("t={:.3f}s {}", world_.now() / 1e9, text));
    result_.ok = false;
  }

  // A fresh executor/rpc for a node; old ones stay allocated (their closures may still be queued).
  void boot(Node& node) {
    node.token = std::make_shared<bool>(true);
    executors_.push_back(std::make_unique<SimExecutor>(world_, node.token, options_.late_work_ns));
    node.executor = executors_.back().get();
    rpcs_.push_back(std::make_unique<SimRpcClient>(network_, node.executor, node.address));
    node.rpc = rpcs_.back().get();
    node.up = true;
  }
  void kill(Node& node) {
    *node.token = false;
    node.up = false;
    network_.unlisten(node.address);
  }

  void start_mgmtd() {
    boot(mgmtd_node_);
    MgmtdConfig config{.heartbeat_timeout_ns = options_.heartbeat_timeout_ns, .scan_interval_ns = 50 * kMs, .grace_after_start = true};
    graveyard_mgmtd_.push_back(std::make_unique<Mgmtd>(config, *mgmtd_node_.executor, map_store_));
    mgmtd_ = graveyard_mgmtd_.back().get();
    Status status = mgmtd_->start();
    FF_ASSERT(status.is_ok(), "{}", status);
    Mgmtd* mgmtd = mgmtd_;
    network_.listen(mgmtd_node_.address, mgmtd_node_.executor,
                    [mgmtd](const ServerContext& context, Request request, Reply reply) { mgmtd->handle(context, std::move(request), std::move(reply)); });
  }

  void start_storage(size_t index) {
    Node& node = storage_nodes_[index];
    boot(node);
    NodeId id = static_cast<NodeId>(index + 1);
    StorageConfig config{.node = id,
                         .address = node.address,
                         .mgmtd_address = mgmtd_node_.address,
                         .heartbeat_interval_ns = 100 * kMs,
                         .heartbeat_timeout_ns = options_.heartbeat_timeout_ns,
                         .rpc_timeout_ns = 200 * kMs,
                         .retry_backoff_ns = 20 * kMs,
                         // Small metadata pages and replacement window: recoveries list several pages and refill
                         // their window under the faults.
                         .sync_batch = 4,
                         .sync_dump_page = 3};
    if (options_.scrub) {  // a chunk per ~2 ms, a pass over a node's targets every few hundred ms
      config.scrub_bytes_per_s = 8 << 20;
      config.scrub_pass_pause_ns = 100 * kMs;
      config.scrub_save_interval_ns = 20 * kMs;
    }
    auto factory = [this](TargetId target) -> Result<std::shared_ptr<ChunkStore>> {
      auto& store = stores_[target];
      if (!store) {
        store = std::make_shared<MemChunkStore>(options_.chunk_bytes);
        store->set_faults(MemChunkStoreFaults{0, 0, [this] { return world_.uniform(); }});
        // History is recorded when a store commits, not when its service hears back: a reader can
        // see the commit in between.
        store->set_commit_hook([this, target](const ChunkId& chunk, uint32_t version, uint32_t crc) {
          on_commit(target, chunk, version, crc);
        });
      }
      return std::shared_ptr<ChunkStore>(store);
    };
    graveyard_storage_.push_back(std::make_unique<StorageService>(config, *node.executor, *node.rpc, factory));
    StorageService* service = graveyard_storage_.back().get();
    storage_[index] = service;
    service->set_bugs(options_.bugs);
    service->set_commit_observer([this](TargetId target, const ChunkId& chunk, uint32_t version, uint32_t crc) {
      on_commit(target, chunk, version, crc);
    });
    // As ff-storage's gRPC server: a request the transport delivers with reply_from_any_thread is offered to the
    // read fast lane first (SimOptions::fast_lane).
    network_.listen(node.address, node.executor, [service](const ServerContext& context, Request request, Reply reply) {
      if (context.reply_from_any_thread && service->try_handle_read(context, request, reply)) return;
      service->handle(context, std::move(request), std::move(reply));
    });
    Status status = service->start();
    FF_ASSERT(status.is_ok(), "{}", status);
  }

  void on_commit(TargetId target, const ChunkId& chunk, uint32_t version, uint32_t crc) {
    auto chain = target_chain_.find(target);
    if (chain == target_chain_.end()) return;
    if (options_.verbose) FF_LOG_INFO("sim t={:.3f}s: target {} commits chunk {} v{} CRC {:#x}", world_.now() / 1e9, target, chunk.to_string(), version, crc);
    if (is_scratch(chunk)) return;  // versions restart after a removal
    auto& versions = history_[ChunkKey{chain->second, chunk}];
    auto [it, inserted] = versions.emplace(version, crc);
    if (!inserted && it->second != crc) {
      violation(fmt::format("chunk {} of chain {}: version {} committed with CRC {:#x} on target {} but {:#x} before",
                            chunk.to_string(), chain->second, version, crc, target, it->second));
    }
  }

  // ------------------------------------------------------------- workload
  void client_step(size_t index) {
    if (world_.now() >= workload_end_ns_) return;
    StorageClient* client = clients_[index].get();
    auto next = [this, index] {
      clients_nodes_[index].executor->post_after(world_.between(1 * kMs, 20 * kMs), [this, index] { client_step(index); });
    };
    if (!scratch_keys_.empty() && world_.uniform() < 0.2) {
      // A scratch chunk: written, or removed together with the next one, by any client at any time.
      const ChunkKey& key =
          scratch_keys_[static_cast<size_t>(world_.between(0, static_cast<int64_t>(scratch_keys_.size()) - 1))];
      if (world_.uniform() < 0.3) {
        ChunkId end{key.chunk.inode, key.chunk.index + 2};
        client->remove_range(key.chain, key.chunk, end, [this, next](Result<RemoveChunksRsp> rsp) {
          ++(rsp.is_ok() ? result_.removals_acked : result_.removals_failed);
          next();
        });
        return;
      }
      uint64_t length = static_cast<uint64_t>(world_.between(1, 4096));
      Bytes data(length);
      for (auto& byte : data) byte = static_cast<std::byte>(world_.rng()());
      client->write(key.chain, key.chunk, 0, std::move(data), [next](Result<WriteRsp>) { next(); });
      return;
    }
    const ChunkKey& key = keys_[static_cast<size_t>(world_.between(0, static_cast<int64_t>(keys_.size()) - 1))];
    if (world_.uniform() < 0.06) {
      // A truncate: the chunk cut or zero-extended to a length, as one replicated version (or left as it is, its
      // version answered, when it already has that length).
      const uint64_t length = static_cast<uint64_t>(world_.between(0, static_cast<int64_t>(options_.chunk_bytes)));
      const uint32_t acked_at_start = acked_[key];  // later acknowledgements may be of writes ordered after this one
      client->truncate(key.chain, key.chunk, length, [this, key, next, length, acked_at_start](Result<WriteRsp> rsp) {
        if (!rsp.is_ok()) {
          ++result_.truncates_failed;
          return next();
        }
        ++result_.truncates_acked;
        if (rsp->length != length) {
          violation(fmt::format("acknowledged truncate of chunk {} to {} bytes reports length {}",
                                key.chunk.to_string(), length, rsp->length));
        }
        auto& acked = acked_[key];
        if (rsp->version == 0) {  // no chunk, and 0 bytes asked for: nothing written
          if (length != 0 || acked_at_start != 0) {
            violation(fmt::format("truncate of chunk {} to {} bytes answered no version after v{} was acknowledged",
                                  key.chunk.to_string(), length, acked_at_start));
          }
          return next();
        }
        auto& versions = history_[key];
        auto it = versions.find(rsp->version);
        if (it == versions.end() || it->second != rsp->crc32c) {
          violation(fmt::format("acknowledged truncate of chunk {} v{} (CRC {:#x}) was never committed as such",
                                key.chunk.to_string(), rsp->version, rsp->crc32c));
        }
        if (rsp->version < acked_at_start) {
          violation(fmt::format("truncate of chunk {} answered v{} after v{} was acknowledged", key.chunk.to_string(),
                                rsp->version, acked_at_start));
        }
        if (rsp->version > acked) acked = rsp->version;
        next();
      });
      return;
    }
    if (world_.uniform() < 0.6) {
      if (options_.write_bursts > 0 && world_.uniform() < options_.write_bursts) return write_burst(client, key, next);
      uint64_t length = static_cast<uint64_t>(world_.between(1, 4096));
      uint64_t offset = static_cast<uint64_t>(world_.between(0, static_cast<int64_t>(options_.chunk_bytes - length)));
      Bytes data(length);
      for (auto& byte : data) byte = static_cast<std::byte>(world_.rng()());
      client->write(key.chain, key.chunk, offset, std::move(data),
                    [this, key, next, offset, length](Result<WriteRsp> rsp) {
                      check_write(key, offset, length, rsp);
                      next();
                    });
    } else {
      // Mostly one read; sometimes a burst of reads issued together, which the client coalesces into batches per
      // node (ClientConfig::read_rpcs_per_node), each read checked on its own.
      const int64_t reads = world_.uniform() < 0.3 ? world_.between(4, 10) : 1;
      auto left = std::make_shared<int64_t>(reads);
      for (int64_t r = 0; r < reads; ++r) {
        const ChunkKey& read_key =
            r == 0 ? key : keys_[static_cast<size_t>(world_.between(0, static_cast<int64_t>(keys_.size()) - 1))];
        uint32_t acked_at_start = acked_[read_key];
        ReadMode mode = world_.uniform() < 0.8 ? ReadMode::kStrict : ReadMode::kRelaxed;
        client->read(read_key.chain, read_key.chunk, 0, UINT64_MAX, mode,
                     [this, read_key, next, acked_at_start, left](Result<ReadRsp> rsp) {
                       check_read(read_key, acked_at_start, rsp);
                       if (--*left == 0) next();
                     });
      }
    }
  }

  // An answered write: its version was committed with the CRC it names, and the chunk is at least as long as it.
  void check_write(const ChunkKey& key, uint64_t offset, uint64_t length, const Result<WriteRsp>& rsp) {
    if (!rsp.is_ok()) {
      ++result_.writes_failed;
      return;
    }
    ++result_.writes_acked;
    auto& versions = history_[key];
    auto it = versions.find(rsp->version);
    if (it == versions.end() || it->second != rsp->crc32c) {
      violation(fmt::format("acknowledged write of chunk {} v{} (CRC {:#x}) was never committed as such",
                            key.chunk.to_string(), rsp->version, rsp->crc32c));
    }
    if (rsp->length < offset + length) {
      violation(fmt::format("acknowledged write of {} bytes at offset {} of chunk {} reports chunk length {}", length,
                            offset, key.chunk.to_string(), rsp->length));
    }
    auto& acked = acked_[key];
    if (rsp->version > acked) acked = rsp->version;
  }

  // SimOptions::write_bursts: 2-8 writes of one chunk made together (each after the last, over it, or anywhere), which
  // the client sends one at a time and partly as one coalesced write (ClientConfig::coalesce_write_max_bytes); each
  // answer is checked on its own.
  void write_burst(StorageClient* client, const ChunkKey& key, const std::function<void()>& next) {
    const int64_t writes = world_.between(2, 8);
    auto left = std::make_shared<int64_t>(writes);
    uint64_t end = static_cast<uint64_t>(world_.between(0, static_cast<int64_t>(options_.chunk_bytes) - 1));
    for (int64_t w = 0; w < writes; ++w) {
      uint64_t length = static_cast<uint64_t>(world_.between(1, 4096));
      const double shape = world_.uniform();
      uint64_t offset = shape < 0.6 ? end
                        : shape < 0.8
                            ? (end > length ? end - length / 2 : 0)
                            : static_cast<uint64_t>(world_.between(0, static_cast<int64_t>(options_.chunk_bytes) - 1));
      offset = std::min<uint64_t>(offset, options_.chunk_bytes - 1);
      length = std::min<uint64_t>(length, options_.chunk_bytes - offset);
      end = offset + length;
      Bytes data(length);
      for (auto& byte : data) byte = static_cast<std::byte>(world_.rng()());
      ++result_.burst_writes;
      client->write(key.chain, key.chunk, offset, std::move(data),
                    [this, key, next, offset, length, left](Result<WriteRsp> rsp) {
                      check_write(key, offset, length, rsp);
                      if (--*left == 0) next();
                    });
    }
  }

  void check_read(const ChunkKey& key, uint32_t acked_at_start, const Result<ReadRsp>& rsp) {
    if (!rsp.is_ok()) {
      if (fs_error_of(rsp.status()) == FsError::kChunkNotFound && acked_at_start != 0) {
        violation(fmt::format("read of chunk {} found nothing after v{} was acknowledged", key.chunk.to_string(), acked_at_start));
      }
      if (fs_error_of(rsp.status()) == FsError::kChunkNotFound) {
        ++result_.reads_ok;
      } else {
        ++result_.reads_failed;
      }
      return;
    }
    ++result_.reads_ok;
    uint32_t version = rsp->meta.committed_version;
    if (version < acked_at_start) {
      violation(fmt::format("stale read of chunk {}: v{} returned after v{} was acknowledged", key.chunk.to_string(), version,
                            acked_at_start));
    }
    uint32_t crc = crc32c(rsp->data);
    auto& versions = history_[key];
    auto it = versions.find(version);
    if (it == versions.end() || it->second != crc) {
      violation(fmt::format("read of chunk {} returned v{} with CRC {:#x}, which was never committed", key.chunk.to_string(),
                            version, crc));
    }
  }

  // ------------------------------------------------------------- faults
  void fault_step() {
    if (world_.now() >= faults_end_ns_) return;
    double pick = world_.uniform();
    size_t victim = static_cast<size_t>(world_.between(0, static_cast<int64_t>(storage_nodes_.size()) - 1));
    auto log = [this](const std::string& text) {
      if (options_.verbose) FF_LOG_INFO("sim t={:.3f}s: {}", world_.now() / 1e9, text);
    };
    size_t down = 0;
    for (const Node& node : storage_nodes_) down += node.up ? 0 : 1;
    if (options_.max_concurrent_faults != 0 && active_faults_ >= options_.max_concurrent_faults && pick < 0.7) {
      pick = 0.7 + 0.3 * world_.uniform();  // only disk faults until one heals
    }
    if (pick < 0.3 && options_.crashes && storage_nodes_[victim].up && down + 1 < options_.replication) {
      log(fmt::format("crash storage {}", victim + 1));
      ++result_.crashes;
      kill(storage_nodes_[victim]);
      // The crash also loses the node's lazy commits that no synced write has made durable yet (the
      // engine's unsynced commit batches): those versions are pending again when it restarts.
      for (auto& [target, store] : stores_) {
        if ((target - 1) / kTargetsPerNodeLimit != victim + 1) continue;
        const uint64_t lost = store->lose_unsynced();
        result_.lazy_commits_lost += lost;
        if (lost > 0) log(fmt::format("target {} loses {} lazy commits", target, lost));
      }
      ++active_faults_;
      world_.schedule(world_.now() + world_.between(100 * kMs, 2000 * kMs), nullptr, [this, victim, log] {
        log(fmt::format("restart storage {}", victim + 1));
        --active_faults_;
        start_storage(victim);
      });
    } else if (pick < 0.45 && options_.mgmtd_crashes && mgmtd_node_.up) {
      log("crash mgmtd");
      ++result_.mgmtd_crashes;
      mgmtd_->stop();
      kill(mgmtd_node_);
      ++active_faults_;
      world_.schedule(world_.now() + world_.between(50 * kMs, 1000 * kMs), nullptr, [this, log] {
        log("restart mgmtd");
        --active_faults_;
        start_mgmtd();
      });
    } else if (pick < 0.7 && options_.partitions) {
      std::string address = world_.uniform() < 0.8 ? storage_nodes_[victim].address
                                                  : (world_.uniform() < 0.5 ? mgmtd_node_.address : clients_nodes_[0].address);
      log(fmt::format("isolate {}", address));
      ++result_.partitions;
      network_.isolate(address, true);
      ++active_faults_;
      world_.schedule(world_.now() + world_.between(50 * kMs, 1500 * kMs), nullptr, [this, address] {
        --active_faults_;
        network_.isolate(address, false);
      });
    } else if (pick < 0.85 && options_.disk_errors && !stores_.empty()) {
      auto it = stores_.begin();
      std::advance(it, world_.between(0, static_cast<int64_t>(stores_.size()) - 1));
      log(fmt::format("disk errors on target {}", it->first));
      std::shared_ptr<MemChunkStore> store = it->second;
      store->set_faults(MemChunkStoreFaults{0.05, 0.05, [this] { return world_.uniform(); }});
      world_.schedule(world_.now() + world_.between(50 * kMs, 500 * kMs), nullptr, [this, store] {
        store->set_faults(MemChunkStoreFaults{0, 0, [this] { return world_.uniform(); }});
      });
    } else if (options_.corruption && !stores_.empty()) {
      // Corrupt one replica of a chunk whose chain has every target serving and whose committed
      // version another target holds intact: the fault model is one bad replica while a good copy of
      // the same version exists. (mgmtd's states alone are not enough: they lag behind a crash, and a
      // tail's freshly committed version may still be pending everywhere else.)
      const ChunkKey& key = keys_[static_cast<size_t>(world_.between(0, static_cast<int64_t>(keys_.size()) - 1))];
      RoutingInfo routing = mgmtd_node_.up ? mgmtd_->routing() : RoutingInfo{};
      const ChainInfo* chain = routing.chain(key.chain);
      if (chain != nullptr && chain->serving().size() == chain->targets.size()) {
        TargetId target = chain->targets[static_cast<size_t>(world_.between(0, static_cast<int64_t>(chain->targets.size()) - 1))].target;
        if (stores_.count(target) != 0 && has_good_copy_elsewhere(*chain, target, key.chunk) &&
            stores_[target]->corrupt(key.chunk)) {
          log(fmt::format("corrupt chunk {} on target {}", key.chunk.to_string(), target));
          ++result_.corruptions;
          corrupted_.push_back({target, key});
          // A scrubber reads the replica soon after, so the corruption is found (and repaired from a
          // good replica) while one exists.
          world_.schedule(world_.now() + world_.between(1 * kMs, 50 * kMs), nullptr, [this, target, key] { scrub(target, key); });
        }
      }
    }
    world_.schedule(world_.now() + world_.between(50 * kMs, 400 * kMs), nullptr, [this] { fault_step(); });
  }

  // Whether a target of `chain` other than `target` holds `target`'s committed version of `chunk`
  // with bytes that match its CRC (crashed nodes keep their stores, so the copy survives restarts).
  bool has_good_copy_elsewhere(const ChainInfo& chain, TargetId target, const ChunkId& chunk) {
    Result<ChunkMeta> mine = stores_[target]->stat(chunk);
    if (!mine.is_ok() || mine->committed_version == 0) return false;
    for (const auto& member : chain.targets) {
      if (member.target == target || stores_.count(member.target) == 0) continue;
      Result<ChunkMeta> theirs = stores_[member.target]->stat(chunk);
      if (!theirs.is_ok() || theirs->committed_version != mine->committed_version) continue;
      if (!stores_[member.target]->commit_is_durable(chunk)) continue;  // a crash could still lose it
      if (stores_[member.target]->read(chunk, 0, UINT64_MAX, ReadMode::kRelaxed).is_ok()) return true;
    }
    return false;
  }

  // Reads the replica (which repairs it from a good one) until its bytes match their CRC again.
  void scrub(TargetId target, const ChunkKey& key) {
    Result<ChunkRead> check = stores_[target]->read(key.chunk, 0, UINT64_MAX, ReadMode::kRelaxed);
    if (check.is_ok() || check.status().code() != StatusCode::kDataLoss) return;
    world_.schedule(world_.now() + 100 * kMs, nullptr, [this, target, key] { scrub(target, key); });
    if (!mgmtd_node_.up || !clients_nodes_[0].up) return;
    RoutingInfo routing = mgmtd_->routing();
    const ChainInfo* chain = routing.chain(key.chain);
    auto address = routing.address_of(target);
    if (chain == nullptr || !address) return;
    ReadReq req{.chain = key.chain, .chain_version = chain->version, .target = target, .chunk = key.chunk, .offset = 0,
                .length = UINT64_MAX, .mode = ReadMode::kRelaxed};
    network_.call(clients_nodes_[0].address, clients_nodes_[0].executor, *address, Request{req}, 500 * kMs,
                  [](Result<Response>) {});
  }

  bool all_serving() {
    if (!mgmtd_node_.up) return false;
    RoutingInfo routing = mgmtd_->routing();
    for (const auto& [id, chain] : routing.chains) {
      if (chain.serving().size() != chain.targets.size()) return false;
    }
    for (size_t i = 0; i < storage_.size(); ++i) {
      if (!storage_nodes_[i].up || !storage_[i]->serving()) return false;
    }
    return true;
  }

  void final_checks();

  SimOptions options_;
  World world_;
  Network network_;
  SimResult result_;
  MemMapStore map_store_;
  Node mgmtd_node_{"mgmtd", nullptr, nullptr, nullptr, false};
  Mgmtd* mgmtd_ = nullptr;
  std::vector<Node> storage_nodes_;
  std::vector<StorageService*> storage_;
  std::vector<Node> clients_nodes_;
  std::vector<std::unique_ptr<StorageClient>> clients_;
  std::map<TargetId, std::shared_ptr<MemChunkStore>> stores_;
  std::map<TargetId, ChainId> target_chain_;
  std::vector<ChunkKey> keys_;
  std::vector<ChunkKey> scratch_keys_;  // written and removed (SimOptions::removals)
  // Scratch chunks are the indexes from kScratchIndex on; the checked ones are below chunks_per_chain.
  static constexpr uint64_t kScratchIndex = 1000;
  static bool is_scratch(const ChunkId& chunk) { return chunk.index >= kScratchIndex; }
  std::map<ChunkKey, std::map<uint32_t, uint32_t>> history_;  // committed version -> CRC32C
  std::map<ChunkKey, uint32_t> acked_;                        // highest acknowledged version
  std::vector<std::pair<TargetId, ChunkKey>> corrupted_;
  uint32_t active_faults_ = 0;
  int64_t workload_end_ns_ = 0;
  int64_t faults_end_ns_ = 0;
  // Services and executors are never freed during a run: queued closures of crashed nodes refer to them.
  std::vector<std::unique_ptr<SimExecutor>> executors_;
  std::vector<std::unique_ptr<SimRpcClient>> rpcs_;
  std::vector<std::unique_ptr<Mgmtd>> graveyard_mgmtd_;
  std::vector<std::unique_ptr<StorageService>> graveyard_storage_;
};

SimResult Simulation::run() {
  network_.fast_lane = options_.fast_lane;
  start_mgmtd();
  CreateChainTableReq table{.table = 1, .replication = options_.replication, .targets_per_node = options_.targets_per_node, .nodes = {}};
  for (uint32_t i = 0; i < options_.storage_nodes; ++i) table.nodes.push_back(i + 1);
  Result<CreateChainTableRsp> created = mgmtd_->create_chain_table(table);
  if (!created.is_ok()) {
    violation(fmt::format("create chain table: {}", created.status()));
    return result_;
  }
  if (options_.chunks_per_chain > kScratchIndex) {
    violation(fmt::format("chunks_per_chain = {} must be at most {}", options_.chunks_per_chain, kScratchIndex));
    return result_;
  }
  for (const auto& [id, target] : mgmtd_->routing().targets) target_chain_[id] = target.chain;
  for (ChainId chain : created->chains) {
    for (uint32_t c = 0; c < options_.chunks_per_chain; ++c) keys_.push_back(ChunkKey{chain, ChunkId{chain, c}});
    for (uint32_t c = 0; options_.removals && c < 2; ++c) {
      scratch_keys_.push_back(ChunkKey{chain, ChunkId{chain, kScratchIndex + c}});
    }
  }
  storage_nodes_.resize(options_.storage_nodes);
  storage_.resize(options_.storage_nodes);
  for (size_t i = 0; i < storage_nodes_.size(); ++i) {
    storage_nodes_[i].address = fmt::format("storage-{}", i + 1);
    start_storage(i);
  }
  // Wait for the cluster to come up before the workload starts.
  int64_t boot_limit = world_.now() + 20'000'000'000;
  while (!all_serving() && world_.now() < boot_limit) {
    if (!world_.run_until(world_.now() + 50 * kMs)) break;
  }
  if (!all_serving()) {
    violation("cluster did not reach all-serving at start");
    return result_;
  }
  int64_t start = world_.now();
  workload_end_ns_ = start + options_.workload_ns;
  faults_end_ns_ = start + options_.faults_ns;
  network_.loss = options_.loss;
  clients_nodes_.resize(options_.clients);
  for (size_t i = 0; i < clients_nodes_.size(); ++i) {
    clients_nodes_[i].address = fmt::format("client-{}", i + 1);
    boot(clients_nodes_[i]);
    ClientConfig config{.client_id = i + 1,
                        .mgmtd_address = mgmtd_node_.address,
                        .rpc_timeout_ns = 500 * kMs,
                        .op_timeout_ns = 5'000'000'000,
                        .retry_backoff_ns = 20 * kMs,
                        .max_attempts = 16,
                        .dirty_retries_before_tail = 3,
                        // Whole-chunk reads of the small chunks here coalesce too.
                        .coalesce_read_max_bytes = UINT64_MAX};
    clients_.push_back(std::make_unique<StorageClient>(config, *clients_nodes_[i].executor, *clients_nodes_[i].rpc));
    clients_nodes_[i].executor->post([this, i] { client_step(i); });
  }
  world_.schedule(world_.now() + 10 * kMs, nullptr, [this] { fault_step(); });
  bool within_budget = world_.run_until(faults_end_ns_);
  // Faults stop: heal the network, stop disk errors, bring every node back.
  network_.heal();
  network_.loss = 0;
  for (auto& [id, store] : stores_) store->set_faults(MemChunkStoreFaults{0, 0, [this] { return world_.uniform(); }});
  within_budget = within_budget && world_.run_until(world_.now() + 2'000'000'000);  // pending restarts fire
  if (!mgmtd_node_.up) start_mgmtd();
  for (size_t i = 0; i < storage_nodes_.size(); ++i) {
    if (!storage_nodes_[i].up) start_storage(i);
  }
  within_budget = within_budget && world_.run_until(workload_end_ns_);
  // Let in-flight client operations finish (op timeout), then wait for all chains to serve.
  within_budget = within_budget && world_.run_until(world_.now() + 6'000'000'000);
  int64_t heal_limit = world_.now() + options_.heal_limit_ns;
  while (within_budget && !all_serving() && world_.now() < heal_limit) {
    within_budget = world_.run_until(world_.now() + 100 * kMs);
  }
  if (!within_budget) violation(fmt::format("event budget of {} exhausted (livelock?)", kMaxEvents));
  if (!all_serving()) {
    std::string states;
    if (mgmtd_node_.up) {
      for (const auto& [id, chain] : mgmtd_->routing().chains) {
        if (chain.serving().size() == chain.targets.size()) continue;
        states += fmt::format(" chain {} v{}:", id, chain.version);
        for (const ChainTarget& entry : chain.targets) states += fmt::format(" {}={}", entry.target, entry.state);
      }
    }
    violation(fmt::format("chains not all serving {:.1f}s after faults stopped:{}", options_.heal_limit_ns / 1e9, states));
  } else {
    world_.run_until(world_.now() + 500 * kMs);
    final_checks();
  }
  result_.events = world_.events();
  result_.virtual_ns = world_.now();
  for (const auto& client : clients_) {
    result_.reads_batched += client->coalesced_read_counts().batched_reads;
    result_.coalesced_writes += client->stats().coalesced_writes;
  }
  for (auto& service : graveyard_storage_) {
    result_.repairs += service->stats().repairs;
    result_.syncs += service->stats().syncs_done;
    result_.chunks_scrubbed += service->stats().chunks_scrubbed;
    result_.scrub_corruptions += service->stats().scrub_corruptions;
    result_.fast_lane_reads += service->stats().fast_reads;
    result_.tail_commits_in_worker += service->stats().tail_commits_in_worker;
    result_.tail_commits_left_to_executor += service->stats().tail_commits_left_to_executor;
  }
  return result_;
}

void Simulation::final_checks() {
  RoutingInfo routing = mgmtd_->routing();
  std::vector<ChunkKey> checked = keys_;
  checked.insert(checked.end(), scratch_keys_.begin(), scratch_keys_.end());
  for (const ChunkKey& key : checked) {
    const ChainInfo* chain = routing.chain(key.chain);
    std::optional<ChunkMeta> first;
    TargetId first_target = 0;
    for (const ChainTarget& entry : chain->targets) {
      std::shared_ptr<MemChunkStore> store = stores_[entry.target];
      Result<ChunkMeta> meta = store->stat(key.chunk);
      ChunkMeta value = meta.is_ok() ? *meta : ChunkMeta{};
      if (!first) {
        first = value;
        first_target = entry.target;
      } else if (value.committed_version != first->committed_version || value.committed_crc32c != first->committed_crc32c) {
        violation(fmt::format("replicas of chunk {} differ: target {} has v{} CRC {:#x}, target {} has v{} CRC {:#x}",
                              key.chunk.to_string(), first_target, first->committed_version, first->committed_crc32c,
                              entry.target, value.committed_version, value.committed_crc32c));
      }
      if (is_scratch(key.chunk)) continue;  // only replica identity: a removal restarts versions
      uint32_t acked = acked_[key];
      if (value.committed_version < acked) {
        violation(fmt::format("acknowledged write lost: chunk {} v{} acknowledged, target {} has v{}", key.chunk.to_string(), acked,
                              entry.target, value.committed_version));
      }
      if (value.committed_version != 0) {
        auto& versions = history_[key];
        auto it = versions.find(value.committed_version);
        if (it == versions.end() || it->second != value.committed_crc32c) {
          violation(fmt::format("chunk {} on target {} holds v{} CRC {:#x}, never committed as such", key.chunk.to_string(),
                                entry.target, value.committed_version, value.committed_crc32c));
        }
      }
    }
  }
}

}  // namespace

SimResult run_simulation(uint64_t seed, const SimOptions& options) {
  Simulation simulation(seed, options);
  return simulation.run();
}

}  // namespace ff::fs
