#include "ff/fs/rpc/grpc_transport.h"

#include <pthread.h>

#include <algorithm>
#include <atomic>
#include <condition_variable>
#include <cstdlib>
#include <cstring>
#include <future>
#include <list>
#include <map>
#include <stdexcept>

#include <absl/synchronization/mutex.h>
#include <grpcpp/generic/generic_stub.h>
#include <grpcpp/grpcpp.h>

#include "../chunk/read_buffer_pool.h"
#include "convert.h"
#include "ff/common/assert.h"
#include "ff/common/log.h"
#include "ff/fs/fs.grpc.pb.h"
#include "ff/fs/rpc/grpc_status.h"
#include "least_busy.h"

namespace ff::fs::rpc {

// ---------------------------------------------------------------- ThreadExecutor

ThreadExecutor::ThreadExecutor(std::string name, uint32_t offload_threads) : name_(std::move(name)) {
  FF_ASSERT(offload_threads > 0, "executor {} needs at least one offload thread", name_);
  // Named threads (ff-exec: the serial loop; ff-work: offload workers) so per-thread context switches
  // and profiles can tell them apart (docs/fs-operations.md, "Threads a request passes through").
  loop_ = std::thread([this] {
    pthread_setname_np(pthread_self(), "ff-exec");
    loop();
  });
  for (uint32_t i = 0; i < offload_threads; ++i) {
    workers_.emplace_back([this] {
      pthread_setname_np(pthread_self(), "ff-work");
      work();
    });
  }
}

ThreadExecutor::~ThreadExecutor() { stop(); }

void ThreadExecutor::stop() {
  {
    std::lock_guard lock(mutex_);
    if (stopping_ && !loop_.joinable()) return;
    stopping_ = true;
  }
  wake_.notify_all();
  work_wake_.notify_all();
  if (loop_.joinable()) loop_.join();
  for (auto& worker : workers_) {
    if (worker.joinable()) worker.join();
  }
  // Drop what never ran outside the lock: destroying a task may destroy captured objects.
  std::priority_queue<Timer, std::vector<Timer>, std::greater<>> timers;
  std::deque<std::pair<Task, Task>> work_queue;
  {
    std::lock_guard lock(mutex_);
    timers.swap(timers_);
    work_queue.swap(work_queue_);
  }
}

void ThreadExecutor::post(Task task) { post_after(0, std::move(task)); }

void ThreadExecutor::post_after(int64_t delay_ns, Task task) {
  int64_t due = clock().now_ns() + std::max<int64_t>(delay_ns, 0);
  {
    std::lock_guard lock(mutex_);
    if (stopping_) return;
    timers_.push(Timer{due, seq_++, std::move(task)});
  }
  wake_.notify_one();
}

void ThreadExecutor::offload(Task work, Task done) {
  {
    std::lock_guard lock(mutex_);
    if (stopping_) return;
    work_queue_.emplace_back(std::move(work), std::move(done));
  }
  work_wake_.notify_one();
}

void ThreadExecutor::loop() {
  std::unique_lock lock(mutex_);
  while (!stopping_) {
    if (timers_.empty()) {
      wake_.wait(lock);
      continue;
    }
    int64_t now = clock().now_ns();
    if (timers_.top().due_ns > now) {
      wake_.wait_for(lock, std::chrono::nanoseconds(timers_.top().due_ns - now));
      continue;
    }
    // NOTE: const_cast to move the task out of the heap top before pop (priority_queue has no
    // extract); the element is popped right after.
    Task task = std::move(const_cast<Timer&>(timers_.top()).task);
    timers_.pop();
    lock.unlock();
    task();
    task = nullptr;  // captured objects die on this thread, outside the lock
    lock.lock();
  }
}

void ThreadExecutor::work() {
  std::unique_lock lock(mutex_);
  while (!stopping_) {
    if (work_queue_.empty()) {
      work_wake_.wait(lock);
      continue;
    }
    auto [task, done] = std::move(work_queue_.front());
    work_queue_.pop_front();
    lock.unlock();
    task();
    task = nullptr;
    if (done) post(std::move(done));
    lock.lock();
  }
}

Status ThreadExecutor::run_sync(const std::function<void()>& task, int64_t timeout_ms) {
  FF_ASSERT(!on_executor_thread(), "run_sync on executor {} from its own thread would deadlock", name_);
  auto promise = std::make_shared<std::promise<void>>();
  auto future = promise->get_future();
  post([promise, &task] {
    task();
    promise->set_value();
  });
  if (future.wait_for(std::chrono::milliseconds(timeout_ms)) != std::future_status::ready) {
    // NOTE: the posted lambda references `task`; a timed-out run_sync must not return while it may
    // still run, so stop waiting only when the executor is stopping (it then never runs).
    {
      std::lock_guard lock(mutex_);
      if (!stopping_) {
        future.wait();
        return deadline_exceeded("executor {}: task took longer than {} ms", name_, timeout_ms);
      }
    }
    return deadline_exceeded("executor {} stopped before the task ran", name_);
  }
  return Status::ok();
}

// ---------------------------------------------------------------- frames (fs.proto, Fs.Frame)

namespace {

constexpr const char* kFrameMethod = "/ff.fs.pb.Fs/Frame";

// [fixed32 LE header length][header][payload]: the header is copied once (small); the payload becomes
// its own slice over the message's buffer, which the slice keeps alive (no copy).
grpc::ByteBuffer encode_frame(const pb::Envelope& header, SharedBytes payload) {
  std::string head(4, '\0');
  header.AppendToString(&head);
  auto length = static_cast<uint32_t>(head.size() - 4);
  for (int i = 0; i < 4; ++i) head[static_cast<size_t>(i)] = static_cast<char>((length >> (8 * i)) & 0xff);
  grpc::Slice slices[2] = {grpc::Slice(head), grpc::Slice()};
  size_t count = 1;
  if (payload.size() > 0) {
    auto* holder = new SharedBytes(std::move(payload));
    // NOTE: gRPC's slice API takes a mutable pointer; it never writes through it.
    slices[1] = grpc::Slice(const_cast<std::byte*>(holder->bytes.data()), holder->bytes.size(),
                            [](void* user) { delete static_cast<SharedBytes*>(user); }, holder);
    count = 2;
  }
  return grpc::ByteBuffer(slices, count);
}

struct DecodedFrame {
  pb::Envelope header;
  Bytes payload;
  PayloadPieces pieces;  // instead of payload when asked for
  SharedBytes aligned;   // instead of payload for a WriteReq or ForwardReq
};

// Where a received payload goes: copied into the message's Bytes; left in the received slices; or, for a
// WriteReq or ForwardReq, copied into a 4 KiB-aligned buffer (recycled: chunk_internal::process_io_buffers),
// which the chunk engine writes with O_DIRECT as it is (one copy per replica instead of two: slices -> Bytes
// -> the engine's buffer).
enum class PayloadInto { kBytes, kPieces, kAlignedForWrites };

// Copies the payload out of the received slices once (see PayloadInto), or leaves it in the slices (their
// references keep the bytes alive; no copy).
Result<DecodedFrame> decode_frame(const grpc::ByteBuffer& buffer, PayloadInto into = PayloadInto::kBytes) {
  std::vector<grpc::Slice> slices;
  if (!buffer.Dump(&slices).ok()) return fs_error(FsError::kMalformed, "frame: unreadable gRPC buffer");
  size_t total = 0;
  for (const auto& slice : slices) total += slice.size();
  size_t slice_index = 0, slice_offset = 0;
  auto read = [&](std::byte* out, size_t n) {  // caller checked that n bytes are left
    while (n > 0) {
      const grpc::Slice& slice = slices[slice_index];
      size_t take = std::min(n, slice.size() - slice_offset);
      std::memcpy(out, slice.begin() + slice_offset, take);
      out += take;
      n -= take;
      slice_offset += take;
      if (slice_offset == slice.size()) {
        ++slice_index;
        slice_offset = 0;
      }
    }
  };
  if (total < 4) return fs_error(FsError::kMalformed, fmt::format("frame of {} bytes has no header length", total));
  std::byte raw[4];
  read(raw, 4);
  uint32_t length = 0;
  for (int i = 0; i < 4; ++i) length |= static_cast<uint32_t>(raw[i]) << (8 * i);
  if (length > total - 4) {
    return fs_error(FsError::kMalformed, fmt::format("frame header of {} bytes, but only {} bytes follow", length, total - 4));
  }
  std::string header(length, '\0');
  read(reinterpret_cast<std::byte*>(header.data()), length);
  DecodedFrame frame;
  if (!frame.header.ParseFromString(header)) return fs_error(FsError::kMalformed, "frame header is not an Envelope");
  size_t rest = total - 4 - length;
  if (into == PayloadInto::kAlignedForWrites && rest > 0 &&
      (frame.header.has_write_req() || frame.header.has_forward_req())) {
    std::shared_ptr<std::byte> buffer = chunk_internal::process_io_buffers().acquire(rest);
    if (buffer == nullptr) {
      return resource_exhausted("frame: no memory for a {}-byte write payload", rest);
    }
    read(buffer.get(), rest);
    frame.aligned = SharedBytes{buffer, std::span<const std::byte>(buffer.get(), rest)};
    return frame;
  }
  if (into == PayloadInto::kPieces) {
    if (rest == 0) return frame;
    auto held = std::make_shared<std::vector<grpc::Slice>>(std::move(slices));
    frame.pieces.size = rest;
    for (size_t i = slice_index; i < held->size(); ++i) {
      const grpc::Slice& slice = (*held)[i];
      size_t skip = i == slice_index ? slice_offset : 0;
      if (slice.size() > skip) {
        frame.pieces.pieces.emplace_back(reinterpret_cast<const std::byte*>(slice.begin()) + skip, slice.size() - skip);
      }
    }
    frame.pieces.owner = std::move(held);
    return frame;
  }
  frame.payload.reserve(rest);
  while (slice_index < slices.size()) {
    const grpc::Slice& slice = slices[slice_index];
    const auto* begin = reinterpret_cast<const std::byte*>(slice.begin()) + slice_offset;
    frame.payload.insert(frame.payload.end(), begin, reinterpret_cast<const std::byte*>(slice.end()));
    ++slice_index;
    slice_offset = 0;
  }
  return frame;
}

grpc::ByteBuffer encode_request_frame(Request&& request) {
  SharedBytes payload = take_request_payload(request);
  pb::Envelope header;
  request_to_proto(std::move(request), &header);
  return encode_frame(header, std::move(payload));
}

grpc::ByteBuffer encode_response_frame(Response&& response) {
  SharedBytes payload = take_response_payload(response);
  pb::Envelope header;
  response_to_proto(std::move(response), &header);
  return encode_frame(header, std::move(payload));
}

Result<Request> decode_request_frame(const grpc::ByteBuffer& buffer) {
  FF_ASSIGN_OR_RETURN(DecodedFrame frame, decode_frame(buffer, PayloadInto::kAlignedForWrites));
  FF_ASSIGN_OR_RETURN(Request request, request_from_proto(std::move(frame.header)));
  if (frame.aligned.is_set()) {
    FF_RETURN_IF_ERROR(put_request_shared_payload(request, std::move(frame.aligned)));
  } else {
    FF_RETURN_IF_ERROR(put_request_payload(request, std::move(frame.payload)));
  }
  return request;
}

// pieces: the request was a ReadReq with accept_pieces; a ReadRsp's payload then stays in the
// received slices (ReadRsp::pieces).
Result<Response> decode_response_frame(const grpc::ByteBuffer& buffer, bool pieces = false) {
  FF_ASSIGN_OR_RETURN(DecodedFrame frame, decode_frame(buffer, pieces ? PayloadInto::kPieces : PayloadInto::kBytes));
  FF_ASSIGN_OR_RETURN(Response response, response_from_proto(std::move(frame.header)));
  if (frame.pieces.is_set()) {
    auto* read = std::get_if<ReadRsp>(&response);
    if (read == nullptr) {
      return fs_error(FsError::kMalformed, fmt::format("frame carries {} payload bytes for response alternative {}, "
                                                       "which is not a ReadRsp",
                                                       frame.pieces.size, response.index()));
    }
    read->pieces = std::move(frame.pieces);
    return response;
  }
  FF_RETURN_IF_ERROR(put_response_payload(response, std::move(frame.payload)));
  return response;
}

}  // namespace

// ---------------------------------------------------------------- client

namespace {

grpc::ChannelArguments channel_arguments(int max_message_bytes) {
  grpc::ChannelArguments args;
  args.SetMaxReceiveMessageSize(max_message_bytes);
  args.SetMaxSendMessageSize(max_message_bytes);
  // Each channel owns its subchannels, so re-creating a channel really reconnects.
  args.SetInt(GRPC_ARG_USE_LOCAL_SUBCHANNEL_POOL, 1);
  args.SetInt(GRPC_ARG_INITIAL_RECONNECT_BACKOFF_MS, 100);
  args.SetInt(GRPC_ARG_MIN_RECONNECT_BACKOFF_MS, 1000);
  args.SetInt(GRPC_ARG_MAX_RECONNECT_BACKOFF_MS, 2000);
  return args;
}

}  // namespace

struct GrpcRpcClient::Impl {
  Executor& executor;
  GrpcClientOptions options;
  Counter* calls = nullptr;
  Counter* failures = nullptr;
  Histogram* latency = nullptr;
  std::atomic<int64_t> in_flight{0};

  struct Lane {
    std::shared_ptr<grpc::Channel> channel;
    std::unique_ptr<grpc::GenericStub> stub;  // calls Fs.Frame
    std::atomic<int> busy{0};                 // calls in flight on this channel
  };
  struct Peer {
    std::vector<std::unique_ptr<Lane>> lanes;  // options.channels_per_peer, each its own connection
    int64_t created_ns = 0;
    Lane& take_lane() { return take_least_busy(lanes); }
  };
  std::mutex mutex;  // guards peers, retired
  std::map<std::string, std::shared_ptr<Peer>> peers;
  // Peers replaced by reset_peer, kept until no call uses them: a channel must never be destroyed on
  // a gRPC callback thread (the completion of its own last call), which can tear down the callback
  // queue from inside itself (seen as an abort in grpc_cq_internal_unref). Pruned on callers' threads.
  std::vector<std::shared_ptr<Peer>> retired;

  Impl(Executor& e, GrpcClientOptions o) : executor(e), options(o) {}

  std::shared_ptr<Peer> peer(const std::string& address) {
    std::vector<std::shared_ptr<Peer>> unused;  // destroyed after the lock, on this thread
    std::lock_guard lock(mutex);
    for (auto it = retired.begin(); it != retired.end();) {
      if (it->use_count() == 1) {
        unused.push_back(std::move(*it));
        it = retired.erase(it);
      } else {
        ++it;
      }
    }
    auto& slot = peers[address];
    if (!slot) slot = make_peer(address);
    return slot;
  }
  std::shared_ptr<Peer> make_peer(const std::string& address) {
    auto peer = std::make_shared<Peer>();
    for (int i = 0; i < std::max(1, options.channels_per_peer); ++i) {
      auto lane = std::make_unique<Lane>();
      lane->channel = grpc::CreateCustomChannel(address, grpc::InsecureChannelCredentials(),
                                                channel_arguments(options.max_message_bytes));
      lane->stub = std::make_unique<grpc::GenericStub>(lane->channel);
      peer->lanes.push_back(std::move(lane));
    }
    peer->created_ns = system_clock().now_ns();
    return peer;
  }
  // A peer that was unreachable gets a fresh channel (at most every 200 ms): gRPC's own reconnect of
  // an old channel was seen to stall for seconds after the peer restarted on the same port.
  void reset_peer(const std::string& address, const std::shared_ptr<Peer>& used) {
    std::lock_guard lock(mutex);
    auto it = peers.find(address);
    if (it == peers.end() || it->second != used) return;
    if (system_clock().now_ns() - used->created_ns < 200'000'000) return;
    retired.push_back(std::move(it->second));
    it->second = make_peer(address);
  }
};

namespace {

// NOTE: the distribution's absl tracks every absl::Mutex acquisition in a lock-order graph (deadlock
// detection, on in its build); gRPC locks absl mutexes several times per call, and
// GraphCycles::GetId/InsertEdge were ~1.6 % of all CPU samples under 4 KiB reads. Our own code uses
// std::mutex; turning the tracking off changes no behaviour, only drops the bookkeeping.
void disable_absl_deadlock_detection() {
  static std::once_flag once;
  std::call_once(once, [] { absl::SetMutexDeadlockDetectionMode(absl::OnDeadlockCycle::kIgnore); });
}

}  // namespace

GrpcRpcClient::GrpcRpcClient(Executor& executor, GrpcClientOptions options, MetricsRegistry* metrics)
    : impl_(std::make_unique<Impl>(executor, options)) {
  disable_absl_deadlock_detection();
  // FF_RPC_CHANNELS overrides channels_per_peer in every process (A/B runs of the benchmarks).
  if (const char* channels = std::getenv("FF_RPC_CHANNELS"); channels != nullptr && *channels != '\0') {
    char* end = nullptr;
    const long parsed = std::strtol(channels, &end, 10);
    if (*end != '\0' || parsed < 1 || parsed > 64) {
      throw std::invalid_argument(
          fmt::format("FF_RPC_CHANNELS={}: expected a number of channels from 1 to 64", channels));
    }
    impl_->options.channels_per_peer = static_cast<int>(parsed);
  }
  if (metrics != nullptr) {
    impl_->calls = &metrics->counter("ff_rpc_client_calls_total", "RPC calls sent.");
    impl_->failures = &metrics->counter("ff_rpc_client_failures_total", "RPC calls that failed.");
    impl_->latency = &metrics->histogram("ff_rpc_client_seconds", "RPC call latency.");
  }
}

GrpcRpcClient::~GrpcRpcClient() {
  // Calls still in flight hold a pointer to impl_: wait for them (each has a deadline).
  for (int i = 0; i < 60000 && impl_->in_flight.load() > 0; ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(1));
  }
}

int64_t GrpcRpcClient::in_flight() const { return impl_->in_flight.load(); }

void GrpcRpcClient::call(const std::string& address, Request request, int64_t timeout_ns, Done done) {
  struct Call {
    grpc::ClientContext context;
    grpc::ByteBuffer request;
    grpc::ByteBuffer response;
    Done done;
    std::string address;
    std::string_view name;
    std::shared_ptr<Impl::Peer> peer;
    Impl::Lane* lane = nullptr;  // of peer
    int64_t start_ns;
    bool pieces = false;  // a ReadReq with accept_pieces: the answer's payload stays in gRPC's slices
  };
  auto* call = new Call();
  call->name = request_name(request);
  if (const auto* read = std::get_if<ReadReq>(&request)) call->pieces = read->accept_pieces;
  call->done = std::move(done);
  call->address = address;
  call->start_ns = system_clock().now_ns();
  call->context.set_deadline(std::chrono::system_clock::now() + std::chrono::nanoseconds(std::max<int64_t>(timeout_ns, 1)));
  call->request = encode_request_frame(std::move(request));
  call->peer = impl_->peer(address);
  call->lane = &call->peer->take_lane();
  impl_->in_flight.fetch_add(1);
  if (impl_->calls != nullptr) impl_->calls->add();
  Impl* impl = impl_.get();
  call->lane->stub->UnaryCall(
      &call->context, kFrameMethod, grpc::StubOptions(), &call->request, &call->response,
      [impl, call](grpc::Status status) {
        call->lane->busy.fetch_sub(1, std::memory_order_relaxed);
        Result<Response> result = internal_error("unset");
        if (status.ok()) {
          result = decode_response_frame(call->response, call->pieces);
        } else {
          result = from_grpc_status(status, fmt::format("{} to {}", call->name, call->address));
          if (status.error_code() == grpc::StatusCode::UNAVAILABLE) impl->reset_peer(call->address, call->peer);
        }
        if (impl->latency != nullptr)
          impl->latency->record_us(static_cast<uint64_t>((system_clock().now_ns() - call->start_ns) / 1000));
        if (!result.is_ok() && impl->failures != nullptr) impl->failures->add();
        if (call->pieces && result.is_ok() && std::holds_alternative<ReadRsp>(*result)) {
          // ReadReq::accept_pieces: the caller takes a successful read's completion on this thread (one
          // thread hand-off fewer per read).
          call->done(std::move(result));
        } else {
          impl->executor.post(
              [done = std::move(call->done), result = std::move(result)]() mutable { done(std::move(result)); });
        }
        delete call;
        impl->in_flight.fetch_sub(1);
      });
}

// ---------------------------------------------------------------- server

namespace {

class LiveCalls;

// Finishes a call exactly once; if the handler drops every copy of its Reply without calling it (a
// stopped service drops in-flight requests), the call ends [not_serving] instead of hanging.
struct ReplyState {
  std::shared_ptr<LiveCalls> live;  // unregisters the call when it goes away (may outlive the server)
  std::list<std::weak_ptr<ReplyState>>::iterator entry;
  grpc::ServerUnaryReactor* reactor = nullptr;
  pb::Envelope* response = nullptr;       // Fs.Call
  grpc::ByteBuffer* frame = nullptr;      // Fs.Frame
  std::atomic<bool> finished{false};
  Histogram* latency = nullptr;
  int64_t start_ns = 0;
  void finish(Result<Response> result) {
    if (finished.exchange(true)) return;
    if (latency != nullptr) latency->record_us(static_cast<uint64_t>((system_clock().now_ns() - start_ns) / 1000));
    if (result.is_ok()) {
      if (frame != nullptr) {
        *frame = encode_response_frame(std::move(*result));
      } else {
        response_to_proto(std::move(*result), response);
      }
      reactor->Finish(grpc::Status::OK);
    } else {
      reactor->Finish(to_grpc_status(result.status()));
    }
  }
  ~ReplyState();
};

// The calls a server has accepted and not yet finished. A stopped service can keep a call's Reply
// alive (a task queued on an executor that no longer runs, a reply waiting for a downstream ack that
// never comes); gRPC's Shutdown waits for every call to finish, so at shutdown the server finishes
// those itself, [not_serving], once its deadline has passed.
class LiveCalls {
 public:
  static void add(const std::shared_ptr<LiveCalls>& live, const std::shared_ptr<ReplyState>& state) {
    std::lock_guard lock(live->mutex_);
    state->live = live;
    state->entry = live->calls_.insert(live->calls_.end(), state);
  }
  void remove(ReplyState& state) {
    std::lock_guard lock(mutex_);
    calls_.erase(state.entry);
  }
  void finish_all() {
    std::vector<std::shared_ptr<ReplyState>> open;
    {
      std::lock_guard lock(mutex_);
      for (const auto& call : calls_) {
        if (auto state = call.lock()) open.push_back(std::move(state));
      }
    }
    // NOTE: outside the lock: the last owner of a state here runs its destructor, which takes it.
    for (const auto& state : open) state->finish(fs_error(FsError::kNotServing, "the server is shutting down"));
  }

 private:
  std::mutex mutex_;
  std::list<std::weak_ptr<ReplyState>> calls_;
};

ReplyState::~ReplyState() {
  if (!finished.load()) finish(fs_error(FsError::kNotServing, "the server dropped the request"));
  if (live != nullptr) live->remove(*this);
}

class FsService final : public pb::Fs::WithRawCallbackMethod_Frame<pb::Fs::CallbackService> {
 public:
  FsService(Executor& executor, Handler handler, MetricsRegistry* metrics, FastHandler fast)
      : executor_(executor), handler_(std::move(handler)), fast_(std::move(fast)) {
    if (metrics != nullptr) {
      requests_ = &metrics->counter("ff_rpc_server_requests_total", "RPC requests received.");
      malformed_ = &metrics->counter("ff_rpc_server_malformed_total", "Requests that could not be decoded.");
      latency_ = &metrics->histogram("ff_rpc_server_seconds", "Time from receiving a request to its reply.");
    }
  }

  // Ends every call still open (GrpcServer::shutdown, after its deadline).
  void finish_open_calls() { live_->finish_all(); }

  grpc::ServerUnaryReactor* Call(grpc::CallbackServerContext* context, const pb::Envelope* request,
                                 pb::Envelope* response) override {
    auto* reactor = context->DefaultReactor();
    if (requests_ != nullptr) requests_->add();
    // NOTE: the request message belongs to this call and is read by no one else: moving its payload
    // out saves a copy of the bytes.
    auto decoded = request_from_proto(std::move(*const_cast<pb::Envelope*>(request)));
    auto state = std::make_shared<ReplyState>();
    state->response = response;
    return dispatch(context, reactor, std::move(decoded), std::move(state), false);
  }

  grpc::ServerUnaryReactor* Frame(grpc::CallbackServerContext* context, const grpc::ByteBuffer* request,
                                  grpc::ByteBuffer* response) override {
    auto* reactor = context->DefaultReactor();
    if (requests_ != nullptr) requests_->add();
    auto decoded = decode_request_frame(*request);
    auto state = std::make_shared<ReplyState>();
    state->frame = response;
    return dispatch(context, reactor, std::move(decoded), std::move(state), true);
  }

 private:
  grpc::ServerUnaryReactor* dispatch(grpc::CallbackServerContext* context, grpc::ServerUnaryReactor* reactor,
                                     Result<Request> decoded, std::shared_ptr<ReplyState> state, bool frame) {
    if (!decoded.is_ok()) {
      if (malformed_ != nullptr) malformed_->add();
      state->finished = true;
      reactor->Finish(to_grpc_status(decoded.status()));
      return reactor;
    }
    ServerContext server_context;
    auto deadline = context->deadline();
    auto remaining = deadline - std::chrono::system_clock::now();
    if (deadline != std::chrono::system_clock::time_point::max() && remaining < std::chrono::hours(24 * 365)) {
      server_context.deadline_ns =
          executor_.clock().now_ns() + std::chrono::duration_cast<std::chrono::nanoseconds>(remaining).count();
    }
    server_context.peer = context->peer();
    // ReplyState::finish is thread-safe and Frame carries shared payloads without copying them.
    server_context.reply_from_any_thread = true;
    server_context.shared_payloads = frame;
    state->reactor = reactor;
    state->latency = latency_;
    state->start_ns = system_clock().now_ns();
    LiveCalls::add(live_, state);
    if (fast_) {
      Reply reply = [state](Result<Response> result) { state->finish(std::move(result)); };
      if (fast_(server_context, *decoded, reply)) return reactor;
    }
    executor_.post([this, server_context = std::move(server_context), request = std::move(*decoded), state]() mutable {
      Reply reply = [state](Result<Response> result) { state->finish(std::move(result)); };
      state.reset();
      handler_(server_context, std::move(request), std::move(reply));
    });
    return reactor;
  }

 private:
  Executor& executor_;
  Handler handler_;
  FastHandler fast_;
  Counter* requests_ = nullptr;
  Counter* malformed_ = nullptr;
  Histogram* latency_ = nullptr;
  std::shared_ptr<LiveCalls> live_ = std::make_shared<LiveCalls>();
};

}  // namespace

struct GrpcServer::Impl {
  std::unique_ptr<FsService> service;
  std::unique_ptr<grpc::Server> server;
  bool shut_down = false;
};

Result<std::unique_ptr<GrpcServer>> GrpcServer::start(const std::string& listen, Executor& executor, Handler handler,
                                                      MetricsRegistry* metrics, int max_message_bytes, FastHandler fast) {
  disable_absl_deadlock_detection();
  size_t colon = listen.rfind(':');
  if (colon == std::string::npos) return invalid_argument("listen address '{}' is not host:port", listen);
  std::unique_ptr<GrpcServer> server(new GrpcServer());
  server->impl_ = std::make_unique<Impl>();
  server->impl_->service = std::make_unique<FsService>(executor, std::move(handler), metrics, std::move(fast));
  grpc::ServerBuilder builder;
  int port = 0;
  builder.AddListeningPort(listen, grpc::InsecureServerCredentials(), &port);
  builder.SetMaxReceiveMessageSize(max_message_bytes);
  builder.SetMaxSendMessageSize(max_message_bytes);
  builder.RegisterService(server->impl_->service.get());
  server->impl_->server = builder.BuildAndStart();
  if (server->impl_->server == nullptr || port == 0) {
    return unavailable("gRPC server could not listen on {} (address in use or not local?)", listen);
  }
  server->port_ = static_cast<uint16_t>(port);
  server->address_ = listen.substr(0, colon) + ":" + std::to_string(port);
  return server;
}

GrpcServer::~GrpcServer() { shutdown(1000); }

void GrpcServer::shutdown(int64_t timeout_ms) {
  if (impl_ == nullptr || impl_->shut_down) return;
  impl_->shut_down = true;
  // Shutdown returns only when every call has finished: calls the service still holds after the
  // deadline are finished here (LiveCalls), so a stopped service cannot hang it.
  const auto deadline = std::chrono::system_clock::now() + std::chrono::milliseconds(timeout_ms);
  std::mutex mutex;
  std::condition_variable done_cv;
  bool done = false;
  std::thread finisher([&] {
    std::unique_lock lock(mutex);
    if (done_cv.wait_until(lock, deadline, [&] { return done; })) return;
    lock.unlock();
    impl_->service->finish_open_calls();
  });
  impl_->server->Shutdown(deadline);
  impl_->server->Wait();
  {
    std::lock_guard lock(mutex);
    done = true;
  }
  done_cv.notify_all();
  finisher.join();
}

// ---------------------------------------------------------------- blocking helper

Result<Response> call_blocking(RpcClient& client, const std::string& address, Request request, int64_t timeout_ns) {
  auto promise = std::make_shared<std::promise<Result<Response>>>();
  auto future = promise->get_future();
  client.call(address, std::move(request), timeout_ns,
              [promise](Result<Response> result) { promise->set_value(std::move(result)); });
  // The client's deadline ends the call; the margin covers posting the completion.
  if (future.wait_for(std::chrono::nanoseconds(timeout_ns) + std::chrono::seconds(5)) != std::future_status::ready) {
    return deadline_exceeded("call to {} did not complete within its deadline", address);
  }
  return future.get();
}

}  // namespace ff::fs::rpc
