// The real-world side of ff/fs/transport.h: a thread-backed Executor, and the gRPC RpcClient and server
// that carry ff/fs/messages.h as protobuf (proto/ff/fs/fs.proto, one method Fs.Call).
//
//   ThreadExecutor executor("storage");
//   GrpcRpcClient rpc(executor);
//   StorageService service(config, executor, rpc, stores);
//   auto server = GrpcServer::start("127.0.0.1:0", executor,
//                                   [&](auto& ctx, Request r, Reply reply) { service.handle(ctx, std::move(r), std::move(reply)); });
//
// Deadlines: every client call carries its timeout as a gRPC deadline; the server hands the remaining
// time to the handler as ServerContext::deadline_ns on the executor's (steady) clock. Errors: a handler's
// Status travels with its exact code and message (grpc_status.h); an unreachable peer is unavailable, a
// missed deadline deadline_exceeded, a request the server cannot decode [malformed].
// Request ids (ClientRequestId in WriteReq/ForwardReq/RemoveChunksReq) travel unchanged, so the storage
// service dedupes a retried write.
#pragma once

#include <condition_variable>
#include <cstdint>
#include <deque>
#include <functional>
#include <memory>
#include <mutex>
#include <queue>
#include <string>
#include <thread>
#include <vector>

#include "ff/common/clock.h"
#include "ff/common/result.h"
#include "ff/fs/transport.h"
#include "ff/fs/rpc/metrics.h"

namespace ff::fs::rpc {

// A serial executor on its own thread (timers on the steady clock) plus a pool of worker threads for
// offload(). Tasks still queued at stop() are dropped (destroyed without running).
//
// Thread-safety: every method may be called from any thread.
class ThreadExecutor final : public Executor {
 public:
  explicit ThreadExecutor(std::string name, uint32_t offload_threads = 8);
  ~ThreadExecutor() override;
  ThreadExecutor(const ThreadExecutor&) = delete;
  ThreadExecutor& operator=(const ThreadExecutor&) = delete;

  const Clock& clock() const override { return system_clock(); }
  void post(Task task) override;
  void post_after(int64_t delay_ns, Task task) override;
  void offload(Task work, Task done) override;

  // Runs task on the executor and waits until it ran; deadline_exceeded after timeout_ms.
  Status run_sync(const std::function<void()>& task, int64_t timeout_ms);
  // Stops both the executor thread and the workers; idempotent. Must not be called from them.
  void stop();
  bool on_executor_thread() const { return std::this_thread::get_id() == loop_.get_id(); }

 private:
  struct Timer {
    int64_t due_ns;
    uint64_t seq;
    Task task;
    bool operator>(const Timer& other) const { return due_ns != other.due_ns ? due_ns > other.due_ns : seq > other.seq; }
  };
  void loop();
  void work();
  std::string name_;
  std::mutex mutex_;  // guards timers_, seq_, stopping_, work_queue_
  std::condition_variable wake_;
  std::condition_variable work_wake_;
  std::priority_queue<Timer, std::vector<Timer>, std::greater<>> timers_;
  std::deque<std::pair<Task, Task>> work_queue_;
  uint64_t seq_ = 0;
  bool stopping_ = false;
  std::thread loop_;
  std::vector<std::thread> workers_;
};

struct GrpcClientOptions {
  // Largest message accepted or sent (a batch of 4 MiB chunks needs more than gRPC's 4 MiB default).
  int max_message_bytes = 256 << 20;
  // Channels (TCP connections) per address. A call takes the one with the fewest calls in flight (the first
  // on a tie, so a lone caller stays on one warm connection); several calls in flight to one peer then do not
  // queue on one HTTP/2 connection (1 MiB calls at depth 8 on 127.0.0.1: 4x the calls per second with 4 than
  // with 1 on 16 cores, 1.8-2x on 2; docs/fs-operations.md). FF_RPC_CHANNELS overrides it (A/B runs).
  int channels_per_peer = 4;
};

// RpcClient over gRPC: channels_per_peer channels per address (created on first use, re-created after the
// peer was unreachable so a restarted server is found again quickly). Completions are posted to `executor`.
class GrpcRpcClient final : public RpcClient {
 public:
  explicit GrpcRpcClient(Executor& executor, GrpcClientOptions options = {}, MetricsRegistry* metrics = nullptr);
  ~GrpcRpcClient() override;
  void call(const std::string& address, Request request, int64_t timeout_ns, Done done) override;

  // Calls in flight now (not yet completed). For shutdown: wait for zero before destroying the executor.
  int64_t in_flight() const;

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

// Called on gRPC's thread with a decoded request before it is posted to the executor; returns true
// when it took the request (and will call reply), false to leave both untouched (then `handler` runs on
// the executor as usual). E.g. StorageService::try_handle_read.
using FastHandler = std::function<bool(const ServerContext&, Request&, Reply&)>;

// A running RPC server of either transport (GrpcServer, TcpServer in tcp_transport.h).
class RpcServer {
 public:
  virtual ~RpcServer() = default;
  virtual uint16_t port() const = 0;
  // The address clients call it at: "host:port" (gRPC) or "tcp://host:port".
  virtual const std::string& address() const = 0;
  // Stops accepting calls; calls still running are ended after timeout_ms.
  virtual void shutdown(int64_t timeout_ms) = 0;
};

// The gRPC server: decodes each request and runs `handler` on `executor`.
class GrpcServer final : public RpcServer {
 public:
  // listen: "host:port" (port 0: the OS picks one, see port()).
  static Result<std::unique_ptr<GrpcServer>> start(const std::string& listen, Executor& executor, Handler handler,
                                                   MetricsRegistry* metrics = nullptr,
                                                   int max_message_bytes = 256 << 20, FastHandler fast = nullptr);
  ~GrpcServer() override;
  uint16_t port() const override { return port_; }
  // host:port with the bound port.
  const std::string& address() const override { return address_; }
  // Stops accepting calls; calls still running are cancelled after timeout_ms.
  void shutdown(int64_t timeout_ms) override;

 private:
  struct Impl;
  GrpcServer() = default;
  std::unique_ptr<Impl> impl_;
  uint16_t port_ = 0;
  std::string address_;
};

// One blocking call, for tools and tests: waits (with timeout_ns plus a margin) for the completion.
Result<Response> call_blocking(RpcClient& client, const std::string& address, Request request, int64_t timeout_ns);

}  // namespace ff::fs::rpc
