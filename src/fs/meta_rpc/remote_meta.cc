// RemoteMeta: MetaApi over gRPC (or our TCP transport, for tcp:// addresses) to stateless ff-meta servers, with
// failover and the interpretation of repeated non-idempotent calls described in include/ff/fs/meta_rpc.h.
#include <chrono>
#include <condition_variable>
#include <deque>
#include <random>
#include <thread>

#include <grpcpp/grpcpp.h>

#include "convert.h"
#include "ff/common/assert.h"
#include "ff/common/log.h"
#include "ff/fs/meta.grpc.pb.h"
#include "ff/fs/meta_rpc.h"
#include "ff/fs/rpc/grpc_status.h"
#include "ff/fs/rpc/tcp_transport.h"
#include "ff/fs/rpc/toml_config.h"

namespace ff::fs::meta {

namespace {

int64_t steady_now_ms() {
  return std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::steady_clock::now().time_since_epoch())
      .count();
}

int64_t wall_now_ns() {
  return std::chrono::duration_cast<std::chrono::nanoseconds>(std::chrono::system_clock::now().time_since_epoch())
      .count();
}

// The transport outcomes after which the request may or may not have run on the server.
bool is_retryable_transport(grpc::StatusCode code) {
  return code == grpc::StatusCode::UNAVAILABLE || code == grpc::StatusCode::DEADLINE_EXCEEDED ||
         code == grpc::StatusCode::CANCELLED || code == grpc::StatusCode::RESOURCE_EXHAUSTED;
}

}  // namespace

// Runs every task at once on the posting thread: TcpRpcClient's completions then run on its connection's reader
// thread, where they only hand the answer to the caller waiting for it.
class InlineExecutor final : public Executor {
 public:
  const Clock& clock() const override { return system_clock(); }
  void post(Task task) override { task(); }
  void post_after(int64_t delay_ns, Task task) override {
    system_clock().sleep_for_ns(delay_ns);
    task();
  }
  void offload(Task work, Task done) override {
    work();
    if (done) done();
  }
};

struct RemoteMeta::Impl {
  RemoteMetaOptions options;

  // One ff-meta address: a gRPC channel, or (a tcp:// address) the calls go through `tcp` below.
  struct Peer {
    std::string address;
    std::shared_ptr<grpc::Channel> channel;
    std::unique_ptr<pb::Meta::Stub> stub;
  };
  // Our TCP transport for tcp:// addresses (created when the list has one).
  InlineExecutor inline_executor;
  std::unique_ptr<rpc::TcpRpcClient> tcp;

  // One attempt of a call (batch: a MetaBatchRequest) on `peer` within `timeout_ms`; the transport's status
  // (OK: *response holds the answer), gRPC's codes for either transport.
  template <typename Req, typename Rsp>
  grpc::Status invoke(const Peer& peer, const Req& request, Rsp* response, int64_t timeout_ms) {
    constexpr bool kBatch = std::is_same_v<Req, pb::MetaBatchRequest>;
    if (peer.stub == nullptr) return invoke_tcp(peer.address, kBatch, request, response, timeout_ms);
    grpc::ClientContext context;
    context.set_deadline(std::chrono::system_clock::now() + std::chrono::milliseconds(timeout_ms));
    if constexpr (kBatch) {
      return peer.stub->CallBatch(&context, request, response);
    } else {
      return peer.stub->Call(&context, request, response);
    }
  }

  grpc::Status invoke_tcp(const std::string& address, bool batch, const google::protobuf::Message& request,
                          google::protobuf::Message* response, int64_t timeout_ms) {
    MetaCallReq call{batch, {}};
    if (!request.SerializeToString(&call.body)) return {grpc::StatusCode::INTERNAL, "cannot serialize a meta request"};
    struct Outcome {
      std::mutex mutex;
      std::condition_variable done;
      std::optional<Result<Response>> result;
    };
    auto outcome = std::make_shared<Outcome>();
    tcp->call(address, Request{std::move(call)}, timeout_ms * 1'000'000, [outcome](Result<Response> result) {
      std::lock_guard lock(outcome->mutex);
      outcome->result = std::move(result);
      outcome->done.notify_one();
    });
    std::unique_lock lock(outcome->mutex);
    // Bounded: the transport ends the call deadline_exceeded at timeout_ms; the second past it only guards that.
    if (!outcome->done.wait_for(lock, std::chrono::milliseconds(timeout_ms + 1000),
                                [&] { return outcome->result.has_value(); })) {
      return {grpc::StatusCode::DEADLINE_EXCEEDED, fmt::format("no answer from {} within {} ms", address, timeout_ms)};
    }
    Result<MetaCallRsp> answer = response_as<MetaCallRsp>(std::move(*outcome->result));
    if (!answer.is_ok()) return rpc::to_grpc_status(answer.status());
    if (!response->ParseFromString(answer->body)) {
      return {grpc::StatusCode::INTERNAL, fmt::format("{} answered a meta call with {} bytes that are no {}", address,
                                                      answer->body.size(), response->GetTypeName())};
    }
    return grpc::Status::OK;
  }
  std::mutex mutex;  // guards peers and current
  std::vector<std::shared_ptr<Peer>> peers;
  size_t current = 0;

  std::atomic<uint64_t> calls{0}, attempts{0}, failovers{0}, recovered{0}, batches{0}, batched_calls{0};
  // Request ids of non-idempotent calls: a random start per client, then consecutive (unique across
  // clients with overwhelming probability; the server keys its table of recent outcomes by them).
  std::atomic<uint64_t> next_request_id{0};

  uint64_t new_request_id() {
    uint64_t id = next_request_id.fetch_add(1, std::memory_order_relaxed);
    return id != 0 ? id : next_request_id.fetch_add(1, std::memory_order_relaxed);
  }

  // `request`, or (a non-idempotent operation without a request id yet) a copy of it in *storage with a new one.
  const pb::MetaRequest& identified(const pb::MetaRequest& request, pb::MetaRequest* storage) {
    if (request.request_id() != 0 || !wire::deduplicated(request.op_case())) return request;
    *storage = request;
    storage->set_request_id(new_request_id());
    return *storage;
  }

  std::shared_ptr<Peer> make_peer(const std::string& address) const {
    grpc::ChannelArguments args;
    args.SetMaxReceiveMessageSize(options.max_message_bytes);
    args.SetMaxSendMessageSize(options.max_message_bytes);
    // Own subchannels, so re-creating a channel really reconnects (see GrpcRpcClient).
    args.SetInt(GRPC_ARG_USE_LOCAL_SUBCHANNEL_POOL, 1);
    args.SetInt(GRPC_ARG_INITIAL_RECONNECT_BACKOFF_MS, 100);
    args.SetInt(GRPC_ARG_MIN_RECONNECT_BACKOFF_MS, 200);
    args.SetInt(GRPC_ARG_MAX_RECONNECT_BACKOFF_MS, 1000);
    auto peer = std::make_shared<Peer>();
    peer->address = address;
    if (address.starts_with(rpc::kTcpScheme)) return peer;  // our TCP transport: no channel
    peer->channel = grpc::CreateCustomChannel(address, grpc::InsecureChannelCredentials(), args);
    peer->stub = pb::Meta::NewStub(peer->channel);
    return peer;
  }

  std::pair<size_t, std::shared_ptr<Peer>> pick() {
    std::lock_guard lock(mutex);
    return {current, peers[current]};
  }

  // After a failed attempt on peers[index]: move on to the next address (unless another thread already
  // did), re-creating the failed channel when the server was unreachable: under gVisor a channel whose
  // connection was refused was seen to stall reconnecting for seconds after the server came back.
  void fail_over(size_t index, bool unreachable) {
    std::lock_guard lock(mutex);
    if (unreachable) peers[index] = make_peer(options.addresses[index]);
    if (current == index) current = (current + 1) % peers.size();
  }

  // Sends `request` until a server answers (OK at the gRPC level: the operation's own Status is inside),
  // unbatched (call() batches, and counts the operation),
  // or the attempts (max_attempts, 0: options.max_attempts) or the time run out. *ambiguous: some
  // attempt may have run on a server without its reply reaching us.
  Result<pb::MetaResponse> call_direct(const pb::MetaRequest& request_in, bool* ambiguous, uint32_t max_attempts = 0) {
    const uint32_t attempts_allowed = max_attempts != 0 ? max_attempts : options.max_attempts;
    // Every attempt of a non-idempotent call carries the same request id (a caller that sends one
    // request in several calls, like exchange, sets it itself).
    pb::MetaRequest with_id;
    const pb::MetaRequest& request = identified(request_in, &with_id);
    *ambiguous = false;
    const int64_t start_ms = steady_now_ms();
    const int64_t end_ms = start_ms + options.op_timeout_ms;
    int64_t backoff_ms = options.retry_backoff_ms;
    grpc::Status last;
    std::string last_address;
    uint32_t attempt = 0;
    for (; attempt < attempts_allowed; ++attempt) {
      int64_t now_ms = steady_now_ms();
      if (now_ms >= end_ms) break;
      if (attempt > 0 && attempt % options.addresses.size() == 0) {
        // Every address failed once in this round: pause before the next round.
        int64_t pause_ms = std::min(backoff_ms, end_ms - now_ms);
        std::this_thread::sleep_for(std::chrono::milliseconds(pause_ms));
        backoff_ms = std::min<int64_t>(backoff_ms * 2, 1000);
        now_ms = steady_now_ms();
        if (now_ms >= end_ms) break;
      }
      auto [index, peer] = pick();
      attempts.fetch_add(1, std::memory_order_relaxed);
      pb::MetaResponse response;
      grpc::Status status = invoke(*peer, request, &response, std::min(options.rpc_timeout_ms, end_ms - now_ms));
      if (status.ok()) return response;
      last = status;
      last_address = options.addresses[index];
      if (!is_retryable_transport(status.error_code())) break;
      // UNAVAILABLE before the connection existed is harmless, but gRPC does not say whether the
      // request left: treat every retryable failure as possibly executed.
      *ambiguous = true;
      failovers.fetch_add(1, std::memory_order_relaxed);
      fail_over(index, status.error_code() == grpc::StatusCode::UNAVAILABLE);
    }
    StatusCode code = last.error_code() == grpc::StatusCode::DEADLINE_EXCEEDED || last.ok()
                          ? StatusCode::kDeadlineExceeded
                          : StatusCode::kUnavailable;
    return Status(
        code, fmt::format("meta {}: no ff-meta server answered within {} ms and {} attempts over {} "
                          "address(es) (last: {} from {})",
                          wire::op_name(request.op_case()), options.op_timeout_ms, attempt, options.addresses.size(),
                          last.ok() ? "timeout" : last.error_message(), last_address.empty() ? "-" : last_address));
  }

  // The operation's outcome: the response's Status, and the response itself when OK.
  Result<pb::MetaResponse> run(const pb::MetaRequest& request, bool* ambiguous) {
    FF_ASSIGN_OR_RETURN(pb::MetaResponse response, call(request, ambiguous));
    FF_RETURN_IF_ERROR(wire::status_of(response));
    return response;
  }

  // The same for a call that needs no lost-reply interpretation (idempotent operations).
  Result<pb::MetaResponse> run(const pb::MetaRequest& request) {
    bool ambiguous = false;
    return run(request, &ambiguous);
  }

  Result<Inode> inode_of(const pb::MetaRequest& request, bool* ambiguous) {
    FF_ASSIGN_OR_RETURN(pb::MetaResponse response, run(request, ambiguous));
    if (!response.has_inode())
      return internal_error("meta {}: reply without an inode", wire::op_name(request.op_case()));
    return wire::from_proto(response.inode());
  }
  Result<Inode> inode_of(const pb::MetaRequest& request) {
    bool ambiguous = false;
    return inode_of(request, &ambiguous);
  }

  void note_recovered() { recovered.fetch_add(1, std::memory_order_relaxed); }

  // A removal-like call (unlink, rmdir: ENOENT; close: EBADF): once a first attempt ran, the repeat
  // answers `gone_errno`, so that answer after an ambiguous attempt is success (see meta_rpc.h).
  Status removal_outcome(Status status, bool ambiguous, int gone_errno) {
    if (status.is_ok() || !ambiguous || errno_of(status) != gone_errno) return status;
    note_recovered();
    return Status::ok();
  }
  // Runs a removal; `response` (optional) receives the reply when there was one.
  Status run_removal(const pb::MetaRequest& request, int gone_errno, pb::MetaResponse* response = nullptr) {
    bool ambiguous = false;
    Result<pb::MetaResponse> reply = run(request, &ambiguous);
    if (reply.is_ok() && response != nullptr) *response = std::move(*reply);
    return removal_outcome(reply.status(), ambiguous, gone_errno);
  }

  // ---- batching (RemoteMetaOptions::batches_in_flight)
  // A call waiting for its batch. Its outcome is set under the lane's mutex by the thread that sent the
  // batch; `alone` instead when the batch failed as a whole or the server could not queue the call (then
  // its owner sends it again as a single call).
  struct Queued {
    const pb::MetaRequest* request = nullptr;
    std::optional<Result<pb::MetaResponse>> outcome;
    bool ambiguous = false;  // an attempt may have run on a server without its reply reaching us
    bool alone = false;
    bool taken = false;
    // Its owner waits here: for its outcome once taken, else for a free slot while it is first in the queue.
    // NOTE: one per call, not one per lane: waking every waiting caller at each batch's end (notify_all) cost
    // more wake-ups than the batch saved RPCs when calls are cheap (our TCP transport).
    std::condition_variable wake;
  };
  // Reads and changes batch apart: a read need not wait for the commit of a change batched with it.
  struct Lane {
    std::mutex mutex;  // guards queue, in_flight and every Queued in the queue or in flight
    std::deque<Queued*> queue;
    int in_flight = 0;
  };
  Lane read_lane, change_lane;
  std::atomic<bool> batch_unsupported{false};  // the server answered UNIMPLEMENTED (an older ff-meta)

  // Sends `request_in` until a server answers (see call_direct), in a batch with other threads' calls of
  // its lane when batches_in_flight batches of that lane are in flight already.
  // NOTE: the thread whose call is still queued when a slot frees sends the whole queue, so no call waits
  // for a thread that is not its own, and a call alone goes at once (no added latency without load).
  Result<pb::MetaResponse> call(const pb::MetaRequest& request_in, bool* ambiguous, uint32_t max_attempts = 0) {
    calls.fetch_add(1, std::memory_order_relaxed);  // once per operation, however many times it is sent
    if (max_attempts != 0 || options.batches_in_flight <= 0 || batch_unsupported.load(std::memory_order_relaxed)) {
      return call_direct(request_in, ambiguous, max_attempts);
    }
    // The request id first: a batch and the single calls after it carry the same one.
    pb::MetaRequest with_id;
    const pb::MetaRequest* request = &identified(request_in, &with_id);
    Lane& lane = wire::is_read(request->op_case()) ? read_lane : change_lane;
    Queued mine;
    mine.request = request;
    std::unique_lock lock(lane.mutex);
    lane.queue.push_back(&mine);
    while (!mine.outcome && !mine.alone) {
      if (!mine.taken && lane.in_flight < options.batches_in_flight) {
        std::vector<Queued*> batch;
        while (!lane.queue.empty() && batch.size() < kMaxCallBatch) {
          batch.push_back(lane.queue.front());
          lane.queue.front()->taken = true;
          lane.queue.pop_front();
        }
        ++lane.in_flight;
        lock.unlock();
        std::optional<Result<pb::MetaResponse>> single;
        bool single_ambiguous = false;
        std::optional<pb::MetaBatchResponse> answers;
        bool batch_ambiguous = false;
        if (batch.size() == 1) {
          single = call_direct(*batch[0]->request, &single_ambiguous);  // no CallBatch for one call
        } else {
          answers = send_batch(batch, &batch_ambiguous);
        }
        lock.lock();
        --lane.in_flight;
        for (size_t i = 0; i < batch.size(); ++i) {
          if (single) {
            batch[i]->outcome = std::move(*single);
            batch[i]->ambiguous = single_ambiguous;
            continue;
          }
          batch[i]->ambiguous = batch_ambiguous;
          pb::MetaResponse* answer = answers ? answers->mutable_responses(static_cast<int>(i)) : nullptr;
          if (answer == nullptr || (answer->code() == static_cast<int>(StatusCode::kUnavailable) &&
                                    answer->message().starts_with(wire::kBusyTag))) {
            batch[i]->alone = true;
          } else {
            batch[i]->outcome = std::move(*answer);
          }
        }
        // Under the mutex: a waiting owner cannot leave (and take its Queued with it) before it is notified.
        for (Queued* queued : batch) {
          if (queued != &mine) queued->wake.notify_one();
        }
        // The slot is free: the first queued call sends the next batch (it takes the whole queue).
        if (!lane.queue.empty()) lane.queue.front()->wake.notify_one();
        continue;
      }
      // Bounded: the batch holding this call (or the one freeing a slot) ends within its RPC deadline.
      mine.wake.wait_for(lock, std::chrono::milliseconds(options.rpc_timeout_ms + 1000));
    }
    lock.unlock();
    if (mine.outcome) {
      *ambiguous = mine.ambiguous;
      return std::move(*mine.outcome);
    }
    Result<pb::MetaResponse> again = call_direct(*request, ambiguous);
    *ambiguous = *ambiguous || mine.ambiguous;
    return again;
  }

  // One attempt at a batch of several calls: the responses in order, or nullopt when the batch did not
  // come back whole (its calls are then sent again one by one, with failover). *ambiguous: it may have run.
  std::optional<pb::MetaBatchResponse> send_batch(const std::vector<Queued*>& batch, bool* ambiguous) {
    pb::MetaBatchRequest request;
    for (const Queued* queued : batch) *request.add_requests() = *queued->request;
    attempts.fetch_add(batch.size(), std::memory_order_relaxed);
    batches.fetch_add(1, std::memory_order_relaxed);
    batched_calls.fetch_add(batch.size(), std::memory_order_relaxed);
    auto [index, peer] = pick();
    pb::MetaBatchResponse answers;
    grpc::Status status = invoke(*peer, request, &answers, std::min(options.rpc_timeout_ms, options.op_timeout_ms));
    if (status.ok() && answers.responses_size() == request.requests_size()) return answers;
    if (status.error_code() == grpc::StatusCode::UNIMPLEMENTED) {
      FF_LOG_WARN("ff-meta at {} does not batch calls ({}); sending them one by one", options.addresses[index],
                  status.error_message());
      batch_unsupported.store(true, std::memory_order_relaxed);
    } else if (status.ok()) {
      FF_LOG_WARN("ff-meta at {} answered a batch of {} calls with {} responses; sending them again one by one",
                  options.addresses[index], request.requests_size(), answers.responses_size());
      *ambiguous = true;
    } else if (is_retryable_transport(status.error_code())) {
      // Each call is sent again (alone, by its caller), as a single call's failed attempt would be.
      *ambiguous = true;
      failovers.fetch_add(batch.size(), std::memory_order_relaxed);
      fail_over(index, status.error_code() == grpc::StatusCode::UNAVAILABLE);
    }
    return std::nullopt;
  }

  Result<Inode> lookup(const Caller& caller, InodeId parent, std::string_view name) {
    pb::MetaRequest request;
    wire::to_proto(caller, request.mutable_caller());
    request.mutable_lookup()->set_parent(parent);
    request.mutable_lookup()->set_name(std::string(name));
    return inode_of(request);
  }

  // A new directory in a setgid directory gets S_ISGID added to the asked mode.
  static bool same_mode(const Inode& inode, uint32_t mode) {
    uint32_t ignored = inode.type == FileType::kDirectory ? 02000u : 0u;
    return (inode.mode & ~ignored) == (mode & 07777 & ~ignored);
  }

  // Whether `existing` is what a create-like call of `caller` that began at began_ns asked for.
  bool made_by(const Caller& caller, const Inode& existing, FileType type, uint32_t mode, std::string_view target,
               int64_t began_ns) const {
    return existing.type == type && existing.uid == caller.uid &&
           (type == FileType::kSymlink ? existing.symlink_target == target : same_mode(existing, mode)) &&
           existing.ctime_ns >= began_ns - options.recovery_clock_skew_ms * 1'000'000;
  }

  // A create-like call (create, mknod, mkdir, symlink): after an ambiguous attempt, EEXIST is success
  // when the name holds what we asked for, made since we began (see meta_rpc.h).
  Result<Inode> create_like(const Caller& caller, const pb::MetaRequest& request, InodeId parent, std::string_view name,
                            FileType type, uint32_t mode, std::string_view target) {
    int64_t began_ns = wall_now_ns();
    bool ambiguous = false;
    Result<Inode> result = inode_of(request, &ambiguous);
    if (result.is_ok() || !ambiguous || errno_of(result.status()) != EEXIST) return result;
    auto existing = lookup(caller, parent, name);
    if (!existing.is_ok() || !made_by(caller, *existing, type, mode, target, began_ns)) return result;
    note_recovered();
    FF_LOG_INFO(
        "meta {} '{}' in {}: a lost reply; the name holds inode {} made since the first attempt, taken "
        "as ours",
        wire::op_name(request.op_case()), name, parent, existing->id);
    return existing;
  }
};

RemoteMeta::RemoteMeta(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
RemoteMeta::~RemoteMeta() = default;

Result<std::unique_ptr<RemoteMeta>> RemoteMeta::connect(RemoteMetaOptions options) {
  if (options.addresses.empty()) return invalid_argument("RemoteMeta needs at least one ff-meta address");
  for (const auto& address : options.addresses) {
    if (address.starts_with("unix:")) continue;  // a Unix-domain socket (a client on the meta host)
    std::string_view host_port = address;
    if (host_port.starts_with(rpc::kTcpScheme)) host_port.remove_prefix(rpc::kTcpScheme.size());
    auto parsed = rpc::parse_host_port(host_port);
    if (!parsed.is_ok()) return invalid_argument("ff-meta address: {}", parsed.status().message());
    if (parsed->port == 0) return invalid_argument("ff-meta address '{}' needs a port", address);
  }
  if (options.rpc_timeout_ms <= 0 || options.op_timeout_ms <= 0 || options.max_attempts == 0) {
    return invalid_argument(
        "RemoteMeta: rpc_timeout_ms = {}, op_timeout_ms = {}, max_attempts = {}: all must be "
        "positive",
        options.rpc_timeout_ms, options.op_timeout_ms, options.max_attempts);
  }
  if (options.batches_in_flight < 0 || options.batches_in_flight > 1024) {
    return invalid_argument("RemoteMeta: batches_in_flight = {} must be in [0, 1024] (0: no batching)",
                            options.batches_in_flight);
  }
  auto impl = std::make_unique<Impl>();
  impl->options = std::move(options);
  const bool any_tcp = std::any_of(impl->options.addresses.begin(), impl->options.addresses.end(),
                                   [](const std::string& address) { return address.starts_with(rpc::kTcpScheme); });
  if (any_tcp) {
    rpc::TcpClientOptions tcp_options;
    tcp_options.max_message_bytes = static_cast<uint64_t>(impl->options.max_message_bytes);
    impl->tcp = std::make_unique<rpc::TcpRpcClient>(impl->inline_executor, tcp_options);
  }
  for (const auto& address : impl->options.addresses) impl->peers.push_back(impl->make_peer(address));
  // Spread clients over the servers: start at a random address.
  impl->current = std::random_device{}() % impl->peers.size();
  std::random_device random;
  impl->next_request_id = static_cast<uint64_t>(random()) << 32 | random();
  return std::unique_ptr<RemoteMeta>(new RemoteMeta(std::move(impl)));
}

RemoteMeta::Stats RemoteMeta::stats() const {
  return Stats{impl_->calls.load(),     impl_->attempts.load(), impl_->failovers.load(),
               impl_->recovered.load(), impl_->batches.load(),  impl_->batched_calls.load()};
}

namespace {
pb::MetaRequest request_for(const Caller& caller) {
  pb::MetaRequest request;
  wire::to_proto(caller, request.mutable_caller());
  return request;
}
const Caller kNobodyInParticular{};  // operations without a caller (getattr, close, ...)
}  // namespace

Result<Inode> RemoteMeta::lookup(const Caller& caller, InodeId parent, std::string_view name) {
  return impl_->lookup(caller, parent, name);
}

Result<Inode> RemoteMeta::getattr(InodeId inode) {
  pb::MetaRequest request = request_for(kNobodyInParticular);
  request.mutable_getattr()->set_inode(inode);
  return impl_->inode_of(request);
}

Result<Inode> RemoteMeta::setattr(const Caller& caller, InodeId inode, const SetAttr& attr) {
  // Idempotent: every field is an absolute value (the "now" times just take a later now).
  pb::MetaRequest request = request_for(caller);
  request.mutable_setattr()->set_inode(inode);
  wire::to_proto(attr, request.mutable_setattr());
  return impl_->inode_of(request);
}

Result<Inode> RemoteMeta::resolve(const Caller& caller, std::string_view path, bool follow_last) {
  pb::MetaRequest request = request_for(caller);
  request.mutable_resolve()->set_path(std::string(path));
  request.mutable_resolve()->set_follow_last(follow_last);
  return impl_->inode_of(request);
}

Result<Inode> RemoteMeta::create(const Caller& caller, InodeId parent, std::string_view name, uint32_t mode) {
  pb::MetaRequest request = request_for(caller);
  auto* op = request.mutable_create();
  op->set_parent(parent);
  op->set_name(std::string(name));
  op->set_mode(mode);
  return impl_->create_like(caller, request, parent, name, FileType::kRegular, mode, "");
}

Result<Inode> RemoteMeta::mknod(const Caller& caller, InodeId parent, std::string_view name, FileType type,
                                uint32_t mode, uint32_t rdev) {
  pb::MetaRequest request = request_for(caller);
  auto* op = request.mutable_mknod();
  op->set_parent(parent);
  op->set_name(std::string(name));
  op->set_type(static_cast<uint32_t>(type));
  op->set_mode(mode);
  op->set_rdev(rdev);
  return impl_->create_like(caller, request, parent, name, type, mode, "");
}

Result<Inode> RemoteMeta::mkdir(const Caller& caller, InodeId parent, std::string_view name, uint32_t mode) {
  pb::MetaRequest request = request_for(caller);
  auto* op = request.mutable_mkdir();
  op->set_parent(parent);
  op->set_name(std::string(name));
  op->set_mode(mode);
  return impl_->create_like(caller, request, parent, name, FileType::kDirectory, mode, "");
}

Result<Inode> RemoteMeta::symlink(const Caller& caller, InodeId parent, std::string_view name,
                                  std::string_view target) {
  pb::MetaRequest request = request_for(caller);
  auto* op = request.mutable_symlink();
  op->set_parent(parent);
  op->set_name(std::string(name));
  op->set_target(std::string(target));
  return impl_->create_like(caller, request, parent, name, FileType::kSymlink, 0777, target);
}

Result<Inode> RemoteMeta::link(const Caller& caller, InodeId inode, InodeId new_parent, std::string_view new_name) {
  pb::MetaRequest request = request_for(caller);
  auto* op = request.mutable_link();
  op->set_inode(inode);
  op->set_new_parent(new_parent);
  op->set_new_name(std::string(new_name));
  bool ambiguous = false;
  Result<Inode> result = impl_->inode_of(request, &ambiguous);
  if (result.is_ok() || !ambiguous || errno_of(result.status()) != EEXIST) return result;
  auto existing = impl_->lookup(caller, new_parent, new_name);
  if (existing.is_ok() && existing->id == inode) {
    impl_->note_recovered();
    return existing;
  }
  return result;
}

Result<std::string> RemoteMeta::readlink(InodeId inode) {
  pb::MetaRequest request = request_for(kNobodyInParticular);
  request.mutable_readlink()->set_inode(inode);
  FF_ASSIGN_OR_RETURN(pb::MetaResponse response, impl_->run(request));
  return response.text();
}

Status RemoteMeta::unlink(const Caller& caller, InodeId parent, std::string_view name,
                          std::optional<Inode>* parent_after) {
  if (parent_after != nullptr) parent_after->reset();
  pb::MetaRequest request = request_for(caller);
  request.mutable_unlink()->set_parent(parent);
  request.mutable_unlink()->set_name(std::string(name));
  pb::MetaResponse response;
  FF_RETURN_IF_ERROR(impl_->run_removal(request, ENOENT, &response));
  if (parent_after != nullptr && response.has_inode()) *parent_after = wire::from_proto(response.inode());
  return Status::ok();
}

Status RemoteMeta::rmdir(const Caller& caller, InodeId parent, std::string_view name) {
  pb::MetaRequest request = request_for(caller);
  request.mutable_rmdir()->set_parent(parent);
  request.mutable_rmdir()->set_name(std::string(name));
  return impl_->run_removal(request, ENOENT);
}

Status RemoteMeta::rename(const Caller& caller, InodeId parent, std::string_view name, InodeId new_parent,
                          std::string_view new_name, bool no_replace) {
  pb::MetaRequest request = request_for(caller);
  auto* op = request.mutable_rename();
  op->set_parent(parent);
  op->set_name(std::string(name));
  op->set_new_parent(new_parent);
  op->set_new_name(std::string(new_name));
  op->set_no_replace(no_replace);
  bool ambiguous = false;
  Status status = impl_->run(request, &ambiguous).status();
  if (status.is_ok() || !ambiguous) return status;
  // A lost reply: the first attempt may have moved the name; the repeat then finds the source gone
  // (ENOENT), or, with no_replace, the destination taken (EEXIST).
  int error = errno_of(status);
  if (error == ENOENT || (no_replace && error == EEXIST)) {
    bool source_gone = errno_of(impl_->lookup(caller, parent, name).status()) == ENOENT;
    bool destination_there = impl_->lookup(caller, new_parent, new_name).is_ok();
    if (source_gone && destination_there) {
      impl_->note_recovered();
      return Status::ok();
    }
  }
  return status;
}

// An exchange is its own inverse: sent twice, it undoes itself. So it is never simply sent again after
// a lost reply: the two names' inodes are noted first, each send is a single attempt, and after a
// transport failure the names are looked up again. Swapped: the attempt ran (success). Unchanged: it
// did not run (a server drops a request whose deadline passed before it ran), so it is sent again
// after a pause. Anything else (someone else changed the names meanwhile): the transport error.
Status RemoteMeta::exchange(const Caller& caller, InodeId parent, std::string_view name, InodeId new_parent,
                            std::string_view new_name) {
  pb::MetaRequest request = request_for(caller);
  auto* op = request.mutable_exchange();
  op->set_parent(parent);
  op->set_name(std::string(name));
  op->set_new_parent(new_parent);
  op->set_new_name(std::string(new_name));
  // One id for every send: a server that already ran it answers with that outcome.
  request.set_request_id(impl_->new_request_id());
  FF_ASSIGN_OR_RETURN(Inode first, impl_->lookup(caller, parent, name));
  FF_ASSIGN_OR_RETURN(Inode second, impl_->lookup(caller, new_parent, new_name));
  const int64_t end_ms = steady_now_ms() + impl_->options.op_timeout_ms;
  int64_t backoff_ms = impl_->options.retry_backoff_ms;
  for (uint32_t attempt = 1;; ++attempt) {
    bool ambiguous = false;
    Result<pb::MetaResponse> response = impl_->call(request, &ambiguous, /*max_attempts=*/1);
    if (response.is_ok()) return wire::status_of(*response);
    if (!ambiguous) return response.status();
    auto first_now = impl_->lookup(caller, parent, name);
    auto second_now = impl_->lookup(caller, new_parent, new_name);
    if (!first_now.is_ok() || !second_now.is_ok()) return response.status();
    if (first_now->id == second.id && second_now->id == first.id && first.id != second.id) {
      impl_->note_recovered();
      return Status::ok();
    }
    if (first_now->id != first.id || second_now->id != second.id) return response.status();
    const int64_t now_ms = steady_now_ms();
    if (now_ms >= end_ms || attempt >= impl_->options.max_attempts) return response.status();
    std::this_thread::sleep_for(std::chrono::milliseconds(std::min(backoff_ms, end_ms - now_ms)));
    backoff_ms = std::min<int64_t>(backoff_ms * 2, 1000);
  }
}

// XATTR_CREATE after a lost reply answers EEXIST: success when the attribute holds our value. A plain
// or XATTR_REPLACE set is idempotent.
Status RemoteMeta::setxattr(const Caller& caller, InodeId inode, std::string_view name, std::string_view value,
                            uint32_t flags) {
  pb::MetaRequest request = request_for(caller);
  auto* op = request.mutable_setxattr();
  op->set_inode(inode);
  op->set_name(std::string(name));
  op->set_value(std::string(value));
  op->set_flags(flags);
  bool ambiguous = false;
  Status status = impl_->run(request, &ambiguous).status();
  if (status.is_ok() || !ambiguous || errno_of(status) != EEXIST || !(flags & kXattrCreate)) return status;
  auto stored = getxattr(caller, inode, name);
  if (stored.is_ok() && *stored == value) {
    impl_->note_recovered();
    return Status::ok();
  }
  return status;
}

Result<std::string> RemoteMeta::getxattr(const Caller& caller, InodeId inode, std::string_view name) {
  pb::MetaRequest request = request_for(caller);
  request.mutable_getxattr()->set_inode(inode);
  request.mutable_getxattr()->set_name(std::string(name));
  FF_ASSIGN_OR_RETURN(pb::MetaResponse response, impl_->run(request));
  return std::move(*response.mutable_text());
}

Result<std::vector<std::string>> RemoteMeta::listxattr(const Caller& caller, InodeId inode) {
  pb::MetaRequest request = request_for(caller);
  request.mutable_listxattr()->set_inode(inode);
  FF_ASSIGN_OR_RETURN(pb::MetaResponse response, impl_->run(request));
  return std::vector<std::string>(response.names().names().begin(), response.names().names().end());
}

Status RemoteMeta::removexattr(const Caller& caller, InodeId inode, std::string_view name) {
  pb::MetaRequest request = request_for(caller);
  request.mutable_removexattr()->set_inode(inode);
  request.mutable_removexattr()->set_name(std::string(name));
  return impl_->run_removal(request, ENODATA);
}

Result<ReadDirPage> RemoteMeta::readdir(const Caller& caller, InodeId dir, std::string_view after, size_t limit) {
  pb::MetaRequest request = request_for(caller);
  request.mutable_readdir()->set_dir(dir);
  request.mutable_readdir()->set_after(std::string(after));
  request.mutable_readdir()->set_limit(limit);
  FF_ASSIGN_OR_RETURN(pb::MetaResponse response, impl_->run(request));
  ReadDirPage page;
  page.more = response.page().more();
  page.entries.reserve(static_cast<size_t>(response.page().entries_size()));
  for (const auto& entry : response.page().entries()) {
    page.entries.push_back(DirEntry{entry.name(), entry.inode(), static_cast<FileType>(entry.type())});
  }
  return page;
}

Result<StatFs> RemoteMeta::statfs() {
  pb::MetaRequest request = request_for(kNobodyInParticular);
  request.mutable_statfs();
  FF_ASSIGN_OR_RETURN(pb::MetaResponse response, impl_->run(request));
  const auto& stat = response.statfs();
  return StatFs{stat.block_size(), stat.total_bytes(), stat.free_bytes(), stat.inodes_allocated(),
                stat.max_name_bytes()};
}

Result<OpenFile> RemoteMeta::open(const Caller& caller, InodeId inode, uint32_t flags, uint64_t client) {
  pb::MetaRequest request = request_for(caller);
  request.mutable_open()->set_inode(inode);
  request.mutable_open()->set_flags(flags);
  request.mutable_open()->set_client(client);
  FF_ASSIGN_OR_RETURN(pb::MetaResponse response, impl_->run(request));
  if (!response.has_open()) return internal_error("meta open: reply without a session");
  return OpenFile{wire::from_proto(response.open().inode()), response.open().session()};
}

// After a lost reply, EEXIST means the first attempt may have made the file (and a session that its
// lease will reclaim): when the name holds our new file (create's rule), it is opened with a plain open.
Result<OpenFile> RemoteMeta::create_open(const Caller& caller, InodeId parent, std::string_view name, uint32_t mode,
                                         uint32_t flags, uint64_t client) {
  pb::MetaRequest request = request_for(caller);
  auto* op = request.mutable_create_open();
  op->set_parent(parent);
  op->set_name(std::string(name));
  op->set_mode(mode);
  op->set_flags(flags);
  op->set_client(client);
  const int64_t began_ns = wall_now_ns();
  bool ambiguous = false;
  Result<pb::MetaResponse> response = impl_->run(request, &ambiguous);
  if (response.is_ok()) {
    if (!response->has_open()) return internal_error("meta create_open: reply without a session");
    OpenFile opened{wire::from_proto(response->open().inode()), response->open().session()};
    if (response->open().has_parent()) opened.parent = wire::from_proto(response->open().parent());
    return opened;
  }
  if (!ambiguous || errno_of(response.status()) != EEXIST) return response.status();
  auto existing = lookup(caller, parent, name);
  if (!existing.is_ok() || !impl_->made_by(caller, *existing, FileType::kRegular, mode, "", began_ns)) {
    return response.status();
  }
  impl_->note_recovered();
  FF_LOG_INFO("meta create_open '{}' in {}: a lost reply; inode {} made since the first attempt, opened again", name,
              parent, existing->id);
  return open(caller, existing->id, flags, client);
}

Status RemoteMeta::close(InodeId inode, uint64_t session, uint64_t length_hint) {
  pb::MetaRequest request = request_for(kNobodyInParticular);
  request.mutable_close()->set_inode(inode);
  request.mutable_close()->set_session(session);
  request.mutable_close()->set_length_hint(length_hint);
  return impl_->run_removal(request, EBADF);
}

std::vector<Status> RemoteMeta::close_batch(std::span<const CloseRequest> closes) {
  if (closes.empty()) return {};
  pb::MetaRequest request = request_for(kNobodyInParticular);
  for (const CloseRequest& close : closes) {
    pb::CloseReq* op = request.mutable_close_batch()->add_closes();
    op->set_inode(close.inode);
    op->set_session(close.session);
    op->set_length_hint(close.length_hint);
  }
  bool ambiguous = false;
  Result<pb::MetaResponse> reply = impl_->run(request, &ambiguous);
  if (!reply.is_ok()) return std::vector<Status>(closes.size(), reply.status());
  const pb::StatusesRsp& statuses = reply->statuses();
  if (static_cast<size_t>(statuses.codes_size()) != closes.size() ||
      statuses.messages_size() != statuses.codes_size()) {
    return std::vector<Status>(
        closes.size(), internal_error("meta close_batch: {} closes sent, {} outcomes ({} messages) back", closes.size(),
                                      statuses.codes_size(), statuses.messages_size()));
  }
  std::vector<Status> results;
  results.reserve(closes.size());
  for (int i = 0; i < statuses.codes_size(); ++i) {
    results.push_back(impl_->removal_outcome(wire::status_from(statuses.codes(i), statuses.messages(i)), ambiguous,
                                             EBADF));
  }
  return results;
}

Result<Inode> RemoteMeta::sync(InodeId inode, uint64_t length_hint) {
  pb::MetaRequest request = request_for(kNobodyInParticular);
  request.mutable_sync()->set_inode(inode);
  request.mutable_sync()->set_length_hint(length_hint);
  return impl_->inode_of(request);
}

Status RemoteMeta::report_length(InodeId inode, uint64_t length) {
  pb::MetaRequest request = request_for(kNobodyInParticular);
  request.mutable_report_length()->set_inode(inode);
  request.mutable_report_length()->set_length(length);
  return impl_->run(request).status();
}

Status RemoteMeta::renew_client(uint64_t client) {
  pb::MetaRequest request = request_for(kNobodyInParticular);
  request.mutable_renew_client()->set_client(client);
  return impl_->run(request).status();
}

}  // namespace ff::fs::meta
