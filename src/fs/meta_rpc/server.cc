// MetaRpcServer: ff-meta's calls over gRPC's callback server API, or over our TCP transport for a tcp:// listen
// address (MetaCallReq frames, fs/rpc/tcp_transport.h); both run the same MetaCalls. Every MetaApi call blocks (a KV
// transaction, maybe a storage query), and the RocksDB engine's group commit only pays off with many commits in
// flight, so requests run on a pool of worker threads (max_threads), not on a serial executor like the storage
// services, and never on the transport's own threads, which must keep reading. Exception (inline_reads): reads
// that only touch a local store (lookup, getattr, readdir, ... on RocksDB) run right on the thread that received
// them. NOTE: that saves two thread hand-offs per read, which on this 2-core gVisor machine are a large part of a
// stat's cost.
#include <chrono>
#include <condition_variable>
#include <deque>
#include <thread>
#include <unordered_map>

#include <grpcpp/grpcpp.h>

#include "convert.h"
#include "ff/common/assert.h"
#include "ff/common/log.h"
#include "ff/fs/meta.grpc.pb.h"
#include "ff/fs/meta_rpc.h"
#include "ff/fs/rpc/grpc_status.h"
#include "ff/fs/rpc/tcp_transport.h"

namespace ff::fs::meta {

namespace {

void put_inode(const Result<Inode>& result, pb::MetaResponse* response) {
  wire::set_status(result.status(), response);
  if (result.is_ok()) wire::to_proto(*result, response->mutable_inode());
}

void put_status(const Status& status, pb::MetaResponse* response) {
  wire::set_status(status, response);
  if (status.is_ok()) response->mutable_empty();
}

void put_open(const Result<OpenFile>& opened, pb::MetaResponse* response) {
  wire::set_status(opened.status(), response);
  if (!opened.is_ok()) return;
  wire::to_proto(opened->inode, response->mutable_open()->mutable_inode());
  response->mutable_open()->set_session(opened->session);
  if (opened->parent) wire::to_proto(*opened->parent, response->mutable_open()->mutable_parent());
}

// Runs one request against `api`. Pure translation: no retries here (the service retries conflicts).
void execute(MetaApi& api, const pb::MetaRequest& request, pb::MetaResponse* response) {
  const Caller caller = wire::from_proto(request.caller());
  switch (request.op_case()) {
    case pb::MetaRequest::kLookup: {
      const auto& op = request.lookup();
      return put_inode(api.lookup(caller, op.parent(), op.name()), response);
    }
    case pb::MetaRequest::kGetattr: return put_inode(api.getattr(request.getattr().inode()), response);
    case pb::MetaRequest::kSetattr: {
      const auto& op = request.setattr();
      return put_inode(api.setattr(caller, op.inode(), wire::from_proto(op)), response);
    }
    case pb::MetaRequest::kResolve: {
      const auto& op = request.resolve();
      return put_inode(api.resolve(caller, op.path(), op.follow_last()), response);
    }
    case pb::MetaRequest::kCreate: {
      const auto& op = request.create();
      return put_inode(api.create(caller, op.parent(), op.name(), op.mode()), response);
    }
    case pb::MetaRequest::kMknod: {
      const auto& op = request.mknod();
      if (op.type() < 1 || op.type() > static_cast<uint32_t>(FileType::kSocket)) {
        return put_status(meta_error(EINVAL, fmt::format("mknod: file type {} is not one of 1..7", op.type())),
                          response);
      }
      return put_inode(
          api.mknod(caller, op.parent(), op.name(), static_cast<FileType>(op.type()), op.mode(), op.rdev()), response);
    }
    case pb::MetaRequest::kMkdir: {
      const auto& op = request.mkdir();
      return put_inode(api.mkdir(caller, op.parent(), op.name(), op.mode()), response);
    }
    case pb::MetaRequest::kSymlink: {
      const auto& op = request.symlink();
      return put_inode(api.symlink(caller, op.parent(), op.name(), op.target()), response);
    }
    case pb::MetaRequest::kLink: {
      const auto& op = request.link();
      return put_inode(api.link(caller, op.inode(), op.new_parent(), op.new_name()), response);
    }
    case pb::MetaRequest::kReadlink: {
      auto target = api.readlink(request.readlink().inode());
      wire::set_status(target.status(), response);
      if (target.is_ok()) response->set_text(*target);
      return;
    }
    case pb::MetaRequest::kUnlink: {
      const auto& op = request.unlink();
      std::optional<Inode> dir;
      Status removed = api.unlink(caller, op.parent(), op.name(), &dir);
      // The directory after the unlink travels as the reply's inode (clients that do not read it see success).
      if (removed.is_ok() && dir) return put_inode(*dir, response);
      return put_status(removed, response);
    }
    case pb::MetaRequest::kRmdir: {
      const auto& op = request.rmdir();
      return put_status(api.rmdir(caller, op.parent(), op.name()), response);
    }
    case pb::MetaRequest::kRename: {
      const auto& op = request.rename();
      return put_status(api.rename(caller, op.parent(), op.name(), op.new_parent(), op.new_name(), op.no_replace()),
                        response);
    }
    case pb::MetaRequest::kReaddir: {
      const auto& op = request.readdir();
      auto page = api.readdir(caller, op.dir(), op.after(), static_cast<size_t>(op.limit()));
      wire::set_status(page.status(), response);
      if (page.is_ok()) {
        pb::ReaddirRsp* out = response->mutable_page();
        out->set_more(page->more);
        for (const auto& entry : page->entries) {
          pb::DirEntry* item = out->add_entries();
          item->set_name(entry.name);
          item->set_inode(entry.inode);
          item->set_type(static_cast<uint32_t>(entry.type));
        }
      }
      return;
    }
    case pb::MetaRequest::kStatfs: {
      auto stat = api.statfs();
      wire::set_status(stat.status(), response);
      if (stat.is_ok()) {
        pb::StatfsRsp* out = response->mutable_statfs();
        out->set_block_size(stat->block_size);
        out->set_total_bytes(stat->total_bytes);
        out->set_free_bytes(stat->free_bytes);
        out->set_inodes_allocated(stat->inodes_allocated);
        out->set_max_name_bytes(stat->max_name_bytes);
      }
      return;
    }
    case pb::MetaRequest::kOpen: {
      const auto& op = request.open();
      return put_open(api.open(caller, op.inode(), op.flags(), op.client()), response);
    }
    case pb::MetaRequest::kCreateOpen: {
      const auto& op = request.create_open();
      return put_open(api.create_open(caller, op.parent(), op.name(), op.mode(), op.flags(), op.client()), response);
    }
    case pb::MetaRequest::kClose: {
      const auto& op = request.close();
      return put_status(api.close(op.inode(), op.session(), op.length_hint()), response);
    }
    case pb::MetaRequest::kCloseBatch: {
      const auto& ops = request.close_batch().closes();
      std::vector<CloseRequest> closes;
      closes.reserve(ops.size());
      for (const auto& op : ops) closes.push_back({op.inode(), op.session(), op.length_hint()});
      std::vector<Status> results = api.close_batch(closes);
      wire::set_status(Status::ok(), response);
      pb::StatusesRsp* out = response->mutable_statuses();
      for (const Status& result : results) {
        out->add_codes(static_cast<int32_t>(result.code()));
        out->add_messages(result.is_ok() ? std::string() : std::string(result.message()));
      }
      return;
    }
    case pb::MetaRequest::kSync: {
      const auto& op = request.sync();
      return put_inode(api.sync(op.inode(), op.length_hint()), response);
    }
    case pb::MetaRequest::kReportLength: {
      const auto& op = request.report_length();
      return put_status(api.report_length(op.inode(), op.length()), response);
    }
    case pb::MetaRequest::kRenewClient: return put_status(api.renew_client(request.renew_client().client()), response);
    case pb::MetaRequest::kExchange: {
      const auto& op = request.exchange();
      return put_status(api.exchange(caller, op.parent(), op.name(), op.new_parent(), op.new_name()), response);
    }
    case pb::MetaRequest::kSetxattr: {
      const auto& op = request.setxattr();
      return put_status(api.setxattr(caller, op.inode(), op.name(), op.value(), op.flags()), response);
    }
    case pb::MetaRequest::kGetxattr: {
      const auto& op = request.getxattr();
      auto value = api.getxattr(caller, op.inode(), op.name());
      wire::set_status(value.status(), response);
      if (value.is_ok()) response->set_text(std::move(*value));
      return;
    }
    case pb::MetaRequest::kListxattr: {
      auto names = api.listxattr(caller, request.listxattr().inode());
      wire::set_status(names.status(), response);
      if (names.is_ok()) {
        pb::NamesRsp* out = response->mutable_names();
        for (auto& name : *names) out->add_names(std::move(name));
      }
      return;
    }
    case pb::MetaRequest::kRemovexattr: {
      const auto& op = request.removexattr();
      return put_status(api.removexattr(caller, op.inode(), op.name()), response);
    }
    case pb::MetaRequest::OP_NOT_SET: break;
  }
  put_status(invalid_argument("[malformed] meta request without an operation (a newer client?)"), response);
}

// A fixed pool of threads running blocking requests, with a bounded queue.
class WorkerPool {
 public:
  WorkerPool(int threads, size_t max_queued) : max_queued_(max_queued) {
    for (int i = 0; i < threads; ++i) threads_.emplace_back([this] { work(); });
  }
  ~WorkerPool() { stop(); }
  // False when the queue is full or the pool stopped (the caller answers "busy").
  bool submit(std::function<void()> task) {
    {
      std::lock_guard lock(mutex_);
      if (stopping_ || queue_.size() >= max_queued_) return false;
      queue_.push_back(std::move(task));
    }
    wake_.notify_one();
    return true;
  }
  // All of `tasks` or none (false: the queue has no room for all of them, or the pool stopped).
  bool submit_all(std::vector<std::function<void()>> tasks) {
    {
      std::lock_guard lock(mutex_);
      if (stopping_ || queue_.size() + tasks.size() > max_queued_) return false;
      for (auto& task : tasks) queue_.push_back(std::move(task));
    }
    // NOTE: one wake per task, not notify_all: waking every idle worker for each batch made them
    // thrash on the queue's mutex (3x the server's CPU per create, measured).
    for (size_t i = 0; i < tasks.size(); ++i) wake_.notify_one();
    return true;
  }
  // Runs what is queued, then joins. Idempotent.
  void stop() {
    {
      std::lock_guard lock(mutex_);
      stopping_ = true;
    }
    wake_.notify_all();
    for (auto& thread : threads_) {
      if (thread.joinable()) thread.join();
    }
  }

 private:
  void work() {
    std::unique_lock lock(mutex_);
    while (true) {
      wake_.wait(lock, [&] { return stopping_ || !queue_.empty(); });
      if (queue_.empty()) return;  // stopping and drained
      std::function<void()> task = std::move(queue_.front());
      queue_.pop_front();
      lock.unlock();
      task();
      lock.lock();
    }
  }
  const size_t max_queued_;
  std::mutex mutex_;  // guards queue_, stopping_
  std::condition_variable wake_;
  std::deque<std::function<void()>> queue_;
  bool stopping_ = false;
  std::vector<std::thread> threads_;
};

// The outcomes of recent non-idempotent requests by request id (MetaServerOptions::dedupe_requests):
// a retry of a request whose reply was lost gets the first outcome, or, while the first attempt still
// runs, waits for it. Bounded: entries expire after ttl_ms, and when max_entries are held the oldest
// finished one is dropped; a request that finds the table full of running ones is not recorded.
class RecentRequests {
 public:
  RecentRequests(int64_t ttl_ms, size_t max_entries) : ttl_ms_(ttl_ms), max_entries_(max_entries) {}

  enum class Begin {
    kRun,       // not seen: run it, then finish() (or abandon())
    kAnswered,  // seen and finished: *response holds the first outcome; finish the call
    kWaiting,   // the first attempt still runs: its finish() completes this call too
  };
  // Hears a request's outcome: the first attempt's response, or (response null) the status it was abandoned with.
  using Waiter = std::function<void(const grpc::Status& status, const pb::MetaResponse* response)>;

  Begin begin(uint64_t id, Waiter waiter, pb::MetaResponse* response) {
    const int64_t now = steady_ms();
    std::lock_guard lock(mutex_);
    drop_front(now, /*make_room=*/false);
    auto it = entries_.find(id);
    if (it != entries_.end()) {
      if (it->second.done) {
        *response = it->second.response;
        return Begin::kAnswered;
      }
      it->second.waiters.push_back(std::move(waiter));
      return Begin::kWaiting;
    }
    drop_front(now, /*make_room=*/true);
    if (entries_.size() >= max_entries_) return Begin::kRun;  // full of running requests: not recorded
    entries_.emplace(id, Entry{});
    order_.emplace_back(now + ttl_ms_, id);
    return Begin::kRun;
  }

  // The first attempt's outcome: recorded, and sent to the retries waiting for it.
  void finish(uint64_t id, const pb::MetaResponse& response) {
    std::vector<Waiter> waiters;
    {
      std::lock_guard lock(mutex_);
      auto it = entries_.find(id);
      if (it == entries_.end()) return;  // not recorded (the table was full)
      it->second.done = true;
      it->second.response = response;
      waiters.swap(it->second.waiters);
    }
    for (const Waiter& waiter : waiters) waiter(grpc::Status::OK, &response);
  }

  // The first attempt did not run (the worker queue was full): forget it; waiting retries get `status`.
  void abandon(uint64_t id, const grpc::Status& status) {
    std::vector<Waiter> waiters;
    {
      std::lock_guard lock(mutex_);
      auto it = entries_.find(id);
      if (it == entries_.end() || it->second.done) return;
      waiters.swap(it->second.waiters);
      entries_.erase(it);  // its order_ record is skipped when it comes up
    }
    for (const Waiter& waiter : waiters) waiter(status, nullptr);
  }

 private:
  struct Entry {
    bool done = false;
    pb::MetaResponse response;
    std::vector<Waiter> waiters;
  };
  static int64_t steady_ms() {
    return std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::steady_clock::now().time_since_epoch())
        .count();
  }
  // Drops expired finished entries, and with make_room the oldest finished ones while the table is
  // full. Entries are in order_ by expiry (constant ttl). A running entry at the front stops the sweep
  // (it finishes soon: a worker runs it).
  void drop_front(int64_t now, bool make_room) {
    while (!order_.empty()) {
      auto [expires, id] = order_.front();
      auto it = entries_.find(id);
      if (it == entries_.end()) {  // abandoned
        order_.pop_front();
        continue;
      }
      if (expires > now && !(make_room && entries_.size() >= max_entries_)) return;
      if (!it->second.done) return;
      entries_.erase(it);
      order_.pop_front();
    }
  }
  const int64_t ttl_ms_;
  const size_t max_entries_;
  std::mutex mutex_;  // guards entries_, order_ (a leaf: waiters are called outside it)
  std::unordered_map<uint64_t, Entry> entries_;
  std::deque<std::pair<int64_t, uint64_t>> order_;  // (expiry, id), oldest first
};

// What ends a call at the transport level: OK (the response holds the operation's outcome, error or not) or the
// transport's own refusal (deadline passed, queue full, malformed batch).
using Finish = std::function<void(const grpc::Status&)>;

// The calls of MetaRpcServer, whatever carries them (gRPC's callback service or our TCP transport, below): each
// request runs on the pool (or inline), deduplicated by request id; `finish` runs exactly once, on any thread, after
// which the request and the response may go.
class MetaCalls {
 public:
  MetaCalls(std::shared_ptr<MetaApi> api, const MetaServerOptions& options)
      : api_(std::move(api)), inline_reads_(options.inline_reads), pool_(options.max_threads, options.max_queued) {
    if (options.dedupe_requests) {
      recent_ = std::make_unique<RecentRequests>(options.dedupe_ttl_ms, options.dedupe_max_entries);
    }
    if (options.metrics != nullptr) {
      requests_ = &options.metrics->counter("ff_meta_requests_total", "Meta requests received.");
      errors_ =
          &options.metrics->counter("ff_meta_errors_total", "Meta operations that returned an error (any errno).");
      latency_ = &options.metrics->histogram("ff_meta_server_seconds", "Time to execute one meta request.");
      // One counter per operation of the request's oneof, labelled with its field name (op="create_open").
      const google::protobuf::OneofDescriptor* ops = pb::MetaRequest::descriptor()->FindOneofByName("op");
      for (int i = 0; ops != nullptr && i < ops->field_count(); ++i) {
        const google::protobuf::FieldDescriptor* field = ops->field(i);
        operations_[field->number()] = &options.metrics->counter(
            "ff_meta_operations_total", "Meta requests received, by operation.", "op=\"" + field->name() + "\"");
      }
    }
  }

  // `deadline`: the caller's, on the system clock.
  void call(const pb::MetaRequest* request, pb::MetaResponse* response, std::chrono::system_clock::time_point deadline,
            Finish finish) {
    count_received(*request);
    // A request whose caller already gave up is not executed: the caller will retry it elsewhere, and
    // running it now would only add an outcome nobody hears about.
    if (expired(deadline, finish)) return;
    std::shared_ptr<MetaApi> api = current_api();
    // A retry of a request this server ran or is running: the first outcome, not a second execution.
    const uint64_t request_id =
        recent_ != nullptr && wire::deduplicated(request->op_case()) ? request->request_id() : 0;
    if (request_id != 0) {
      auto waiter = [finish, response](const grpc::Status& status, const pb::MetaResponse* first) {
        if (first != nullptr) *response = *first;
        finish(status);
      };
      RecentRequests::Begin begin = recent_->begin(request_id, std::move(waiter), response);
      if (begin != RecentRequests::Begin::kRun) {
        deduplicated_total.fetch_add(1, std::memory_order_relaxed);
        if (begin == RecentRequests::Begin::kAnswered) finish(grpc::Status::OK);
        return;
      }
    }
    // The request and response stay valid until finish.
    auto run = [this, api = std::move(api), request, response, finish, request_id] {
      execute_counted(*api, *request, response);
      if (request_id != 0) recent_->finish(request_id, *response);
      finish(grpc::Status::OK);
    };
    if (inline_reads_ && wire::is_read(request->op_case())) {
      run();
    } else if (!pool_.submit(run)) {
      grpc::Status busy(grpc::StatusCode::RESOURCE_EXHAUSTED, "meta server queue is full");
      if (request_id != 0) recent_->abandon(request_id, busy);
      finish(busy);
    }
  }

  // Each request as Call would run it, answered in request order once all are done. Reads alone (with
  // inline_reads) run one after the other right here; otherwise every request is a task of the pool, so
  // a batch's changes commit together (the KV store's group commit). A request id seen before gets the
  // first outcome, as in Call.
  void call_batch(const pb::MetaBatchRequest* request, pb::MetaBatchResponse* response,
                  std::chrono::system_clock::time_point deadline, Finish finish) {
    batches_total.fetch_add(1, std::memory_order_relaxed);
    for (const pb::MetaRequest& item : request->requests()) count_received(item);
    const size_t size = static_cast<size_t>(request->requests_size());
    if (size > kMaxCallBatch) {
      finish(grpc::Status(
          grpc::StatusCode::INVALID_ARGUMENT,
          fmt::format("[malformed] meta batch of {} requests, at most {}", request->requests_size(), kMaxCallBatch)));
      return;
    }
    if (expired(deadline, finish)) return;
    std::shared_ptr<MetaApi> api = current_api();
    for (size_t i = 0; i < size; ++i) response->add_responses();
    const bool reads_only = std::all_of(request->requests().begin(), request->requests().end(),
                                        [](const pb::MetaRequest& item) { return wire::is_read(item.op_case()); });
    if (inline_reads_ && reads_only) {
      for (size_t i = 0; i < size; ++i)
        execute_counted(*api, request->requests(static_cast<int>(i)), response->mutable_responses(static_cast<int>(i)));
      finish(grpc::Status::OK);
      return;
    }
    // The last request to finish finishes the call.
    auto left = std::make_shared<std::atomic<size_t>>(size);
    auto one_done = [left, finish] {
      if (left->fetch_sub(1) == 1) finish(grpc::Status::OK);
    };
    std::vector<std::function<void()>> tasks;
    std::vector<size_t> task_index;     // the request of each task
    std::vector<uint64_t> started_ids;  // request ids this batch runs first (abandoned if the pool refuses)
    for (size_t i = 0; i < size; ++i) {
      const pb::MetaRequest* item = &request->requests(static_cast<int>(i));
      pb::MetaResponse* out = response->mutable_responses(static_cast<int>(i));
      const uint64_t request_id = recent_ != nullptr && wire::deduplicated(item->op_case()) ? item->request_id() : 0;
      if (request_id != 0) {
        auto waiter = [out, one_done](const grpc::Status& status, const pb::MetaResponse* first) {
          if (first != nullptr) {
            *out = *first;
          } else {
            // Tagged as the pool's own refusal below: the client sends it again alone.
            put_status(unavailable("{} meta request not run: {}", wire::kBusyTag, status.error_message()), out);
          }
          one_done();
        };
        RecentRequests::Begin begin = recent_->begin(request_id, std::move(waiter), out);
        if (begin != RecentRequests::Begin::kRun) {
          deduplicated_total.fetch_add(1, std::memory_order_relaxed);
          if (begin == RecentRequests::Begin::kAnswered) one_done();
          continue;
        }
        started_ids.push_back(request_id);
      }
      task_index.push_back(i);
      tasks.push_back([this, api, item, out, request_id, one_done] {
        execute_counted(*api, *item, out);
        if (request_id != 0) recent_->finish(request_id, *out);
        one_done();
      });
    }
    if (tasks.empty()) return;  // every request answered from (or waiting on) earlier attempts
    const size_t queued = tasks.size();
    if (!pool_.submit_all(std::move(tasks))) {
      // Nothing of it runs. NOTE: requests waiting on an earlier attempt still finish (one_done) on
      // their own, so the call is finished only by the last of them, with the pool's refusal for the
      // ones it could not queue.
      grpc::Status busy(grpc::StatusCode::RESOURCE_EXHAUSTED, "meta server queue is full");
      for (uint64_t id : started_ids) recent_->abandon(id, busy);
      for (size_t i : task_index) {
        put_status(unavailable("{} meta server queue is full", wire::kBusyTag),
                   response->mutable_responses(static_cast<int>(i)));
      }
      for (size_t i = 0; i < queued; ++i) one_done();
    }
  }

  void replace_api(std::shared_ptr<MetaApi> api) {
    std::lock_guard lock(api_mutex_);
    api_ = std::move(api);
  }
  void stop_workers() { pool_.stop(); }

  std::atomic<uint64_t> requests_total{0};
  std::atomic<uint64_t> errors_total{0};
  std::atomic<uint64_t> expired_total{0};
  std::atomic<uint64_t> deduplicated_total{0};
  std::atomic<uint64_t> batches_total{0};

 private:
  void count_received(const pb::MetaRequest& request) {
    requests_total.fetch_add(1, std::memory_order_relaxed);
    if (requests_ != nullptr) requests_->add();
    if (auto op = operations_.find(static_cast<int>(request.op_case())); op != operations_.end()) op->second->add();
  }
  void count_error() {
    errors_total.fetch_add(1, std::memory_order_relaxed);
    if (errors_ != nullptr) errors_->add();
  }
  // Finishes the call with DEADLINE_EXCEEDED when its caller has already given up.
  bool expired(std::chrono::system_clock::time_point deadline, const Finish& finish) {
    if (deadline >= std::chrono::system_clock::now()) return false;
    expired_total.fetch_add(1, std::memory_order_relaxed);
    finish(grpc::Status(grpc::StatusCode::DEADLINE_EXCEEDED, "meta request arrived after its deadline"));
    return true;
  }
  std::shared_ptr<MetaApi> current_api() {
    std::lock_guard lock(api_mutex_);
    return api_;
  }
  void execute_counted(MetaApi& api, const pb::MetaRequest& request, pb::MetaResponse* response) {
    auto start = std::chrono::steady_clock::now();
    execute(api, request, response);
    if (latency_ != nullptr) {
      latency_->record_us(static_cast<uint64_t>(
          std::chrono::duration_cast<std::chrono::microseconds>(std::chrono::steady_clock::now() - start).count()));
    }
    if (response->code() != 0) count_error();
  }

  std::mutex api_mutex_;  // guards api_ (held only to copy the pointer)
  std::shared_ptr<MetaApi> api_;
  const bool inline_reads_;
  std::unique_ptr<RecentRequests> recent_;  // null when dedupe_requests is off
  WorkerPool pool_;
  rpc::Counter* requests_ = nullptr;
  rpc::Counter* errors_ = nullptr;
  rpc::Histogram* latency_ = nullptr;
  std::unordered_map<int, rpc::Counter*> operations_;  // oneof field number -> counter; filled before serving
};

// gRPC's callback service over MetaCalls: the reactor finishes each call.
class MetaGrpcService final : public pb::Meta::CallbackService {
 public:
  explicit MetaGrpcService(MetaCalls& calls) : calls_(calls) {}

  grpc::ServerUnaryReactor* Call(grpc::CallbackServerContext* context, const pb::MetaRequest* request,
                                 pb::MetaResponse* response) override {
    grpc::ServerUnaryReactor* reactor = context->DefaultReactor();
    calls_.call(request, response, context->deadline(),
                [reactor](const grpc::Status& status) { reactor->Finish(status); });
    return reactor;
  }
  // Each request as Call would run it, answered in request order once all are done (MetaCalls::call_batch).
  grpc::ServerUnaryReactor* CallBatch(grpc::CallbackServerContext* context, const pb::MetaBatchRequest* request,
                                      pb::MetaBatchResponse* response) override {
    grpc::ServerUnaryReactor* reactor = context->DefaultReactor();
    calls_.call_batch(request, response, context->deadline(),
                      [reactor](const grpc::Status& status) { reactor->Finish(status); });
    return reactor;
  }

 private:
  MetaCalls& calls_;
};

// One call over our TCP transport: the decoded request and its response live until the call is finished.
struct TcpMetaCall {
  pb::MetaRequest request;
  pb::MetaResponse response;
  pb::MetaBatchRequest batch_request;
  pb::MetaBatchResponse batch_response;
};

// A MetaCallReq on our TCP transport (a tcp:// listen address), on the connection's receiving thread as gRPC's
// callbacks run on its threads: decoded, run by MetaCalls, answered with the serialized response (or the transport
// status MetaCalls finished it with, e.g. resource_exhausted, which RemoteMeta retries).
void serve_tcp(MetaCalls& calls, const ServerContext& context, Request& request, const Reply& reply) {
  auto* meta_call = std::get_if<MetaCallReq>(&request);
  if (meta_call == nullptr) {
    return reply(fs_error(FsError::kMalformed, fmt::format("ff-meta does not serve {}", request_name(request))));
  }
  const int64_t remaining_ns = std::max<int64_t>(context.deadline_ns - system_clock().now_ns(), 0);
  const auto deadline = std::chrono::system_clock::now() + std::chrono::nanoseconds(remaining_ns);
  auto call = std::make_shared<TcpMetaCall>();
  const bool batch = meta_call->batch;
  const bool parsed =
      batch ? call->batch_request.ParseFromString(meta_call->body) : call->request.ParseFromString(meta_call->body);
  if (!parsed) {
    return reply(
        fs_error(FsError::kMalformed, fmt::format("a {} of {} bytes that is no ff.fs.meta.pb.{}", request_name(request),
                                                  meta_call->body.size(), batch ? "MetaBatchRequest" : "MetaRequest")));
  }
  auto finish = [call, reply, batch](const grpc::Status& status) {
    if (!status.ok()) return reply(rpc::from_grpc_status(status, "ff-meta"));
    MetaCallRsp answer;
    const bool serialized =
        batch ? call->batch_response.SerializeToString(&answer.body) : call->response.SerializeToString(&answer.body);
    if (!serialized) return reply(internal_error("ff-meta could not serialize a response"));
    reply(Response{std::move(answer)});
  };
  if (batch) {
    calls.call_batch(&call->batch_request, &call->batch_response, deadline, std::move(finish));
  } else {
    calls.call(&call->request, &call->response, deadline, std::move(finish));
  }
}

}  // namespace

struct MetaRpcServer::Impl {
  std::unique_ptr<MetaCalls> calls;
  // gRPC (a host:port or unix: listen address) ...
  std::unique_ptr<MetaGrpcService> service;
  std::unique_ptr<grpc::Server> server;
  // ... or our TCP transport (tcp://), whose fallback handler needs an executor (every call takes the fast path).
  std::unique_ptr<rpc::ThreadExecutor> executor;
  std::unique_ptr<rpc::TcpServer> tcp;
  std::string address;
  uint16_t port = 0;
  std::mutex shutdown_mutex;  // guards shut_down
  bool shut_down = false;
};

MetaRpcServer::MetaRpcServer(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}

Result<std::unique_ptr<MetaRpcServer>> MetaRpcServer::start(std::shared_ptr<MetaApi> api, MetaServerOptions options) {
  FF_ASSERT(api != nullptr, "MetaRpcServer::start needs an api");
  const bool unix_socket = options.listen.starts_with("unix:");
  size_t colon = options.listen.rfind(':');
  if (colon == std::string::npos) return invalid_argument("meta listen address '{}' is not host:port", options.listen);
  if (options.max_threads < 2)
    return invalid_argument("meta server max_threads = {}, expected >= 2", options.max_threads);
  if (options.max_queued < 1) return invalid_argument("meta server max_queued = 0, expected >= 1");
  auto impl = std::make_unique<Impl>();
  impl->calls = std::make_unique<MetaCalls>(std::move(api), options);
  if (options.listen.starts_with(rpc::kTcpScheme)) {
    MetaCalls& calls = *impl->calls;
    impl->executor = std::make_unique<rpc::ThreadExecutor>("ff-meta-tcp", 1);
    auto handler = [&calls](const ServerContext& context, Request request, Reply reply) {
      serve_tcp(calls, context, request, reply);
    };
    auto fast = [&calls](const ServerContext& context, Request& request, Reply& reply) {
      serve_tcp(calls, context, request, reply);
      return true;
    };
    auto server = rpc::TcpServer::start(options.listen, *impl->executor, std::move(handler), options.metrics, 64 << 20,
                                        std::move(fast));
    if (!server.is_ok()) {
      impl->executor->stop();
      return unavailable("meta TCP server could not listen on {}: {}", options.listen, server.status().message());
    }
    impl->tcp = std::move(*server);
    impl->port = impl->tcp->port();
    impl->address = impl->tcp->address();
    return std::unique_ptr<MetaRpcServer>(new MetaRpcServer(std::move(impl)));
  }
  impl->service = std::make_unique<MetaGrpcService>(*impl->calls);
  grpc::ServerBuilder builder;
  int port = 0;
  builder.AddListeningPort(options.listen, grpc::InsecureServerCredentials(), unix_socket ? nullptr : &port);
  builder.SetMaxReceiveMessageSize(64 << 20);
  builder.SetMaxSendMessageSize(64 << 20);
  builder.RegisterService(impl->service.get());
  impl->server = builder.BuildAndStart();
  if (impl->server == nullptr || (!unix_socket && port == 0)) {
    return unavailable("meta gRPC server could not listen on {} (address in use or not local?)", options.listen);
  }
  impl->port = static_cast<uint16_t>(port);
  impl->address = unix_socket ? options.listen : options.listen.substr(0, colon) + ":" + std::to_string(port);
  return std::unique_ptr<MetaRpcServer>(new MetaRpcServer(std::move(impl)));
}

MetaRpcServer::~MetaRpcServer() { shutdown(1000); }

const std::string& MetaRpcServer::address() const { return impl_->address; }
uint16_t MetaRpcServer::port() const { return impl_->port; }

void MetaRpcServer::replace_api(std::shared_ptr<MetaApi> api) {
  FF_ASSERT(api != nullptr, "replace_api needs an api");
  impl_->calls->replace_api(std::move(api));
}

void MetaRpcServer::shutdown(int64_t timeout_ms) {
  {
    std::lock_guard lock(impl_->shutdown_mutex);
    if (impl_->shut_down) return;
    impl_->shut_down = true;
  }
  // Shutdown waits for running calls (their workers finish them), then the pool stops.
  if (impl_->tcp != nullptr) {
    impl_->tcp->shutdown(timeout_ms);
  } else {
    impl_->server->Shutdown(std::chrono::system_clock::now() + std::chrono::milliseconds(timeout_ms));
    impl_->server->Wait();
  }
  impl_->calls->stop_workers();
  if (impl_->executor != nullptr) impl_->executor->stop();
}

MetaRpcServer::Stats MetaRpcServer::stats() const {
  const MetaCalls& calls = *impl_->calls;
  return Stats{calls.requests_total.load(), calls.errors_total.load(), calls.expired_total.load(),
               calls.deduplicated_total.load(), calls.batches_total.load()};
}

}  // namespace ff::fs::meta
