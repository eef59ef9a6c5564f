// The seams the fs services run on, so the same service code runs in a real process (fs/rpc: gRPC,
// threads, steady clock) and in the deterministic simulation (fs/sim: one thread, virtual clock,
// simulated network and disk):
//   - Executor: a serial event loop with timers and a way to run blocking work (chunk I/O) elsewhere;
//   - RpcClient: asynchronous calls to another node's RPC server with a deadline;
//   - RpcServer handler: how requests reach a service.
//
// Threading model of every service (Mgmtd, StorageService, StorageClient): all of its state lives on
// ONE Executor. Its handle() is called on that executor, its timers and RPC completions run there, so
// services need no locks. Blocking work goes through Executor::offload.
#pragma once

#include <cstdint>
#include <functional>
#include <string>

#include "ff/common/clock.h"
#include "ff/common/result.h"
#include "ff/fs/messages.h"

namespace ff::fs {

// A serial executor: tasks posted to it run one at a time, in posting order for post() and in
// due-time order for post_after() (ties in posting order).
//
// Thread-safety: post/post_after/offload may be called from any thread.
class Executor {
 public:
  using Task = std::function<void()>;
  virtual ~Executor() = default;

  // The clock timers use; services read time only through it.
  virtual const Clock& clock() const = 0;
  // Runs task on the executor soon.
  virtual void post(Task task) = 0;
  // Runs task on the executor once clock().now_ns() >= now + delay_ns.
  virtual void post_after(int64_t delay_ns, Task task) = 0;
  // Runs `work` off the executor (a worker thread; may run concurrently with the executor and with
  // other work), then posts `done` to the executor. For blocking calls into a ChunkStore. `work` must
  // not touch the service's state; it communicates through what its lambda captures.
  // An empty `done` posts nothing (work that answers by itself, e.g. a read replying from the worker).
  // NOTE: the simulation runs work inline and delays done by a simulated disk latency.
  virtual void offload(Task work, Task done) = 0;
};

// Client side of the RPC transport. One RpcClient belongs to one executor: every completion runs there.
//
// Thread-safety: call() may be called from any thread; completions run on the owning executor.
class RpcClient {
 public:
  using Done = std::function<void(Result<Response>)>;
  virtual ~RpcClient() = default;

  // Sends request to the RPC server at `address` (as in NodeInfo::address). `done` runs exactly once,
  // on the owning executor, with the response, or: deadline_exceeded when no response came within
  // timeout_ns; unavailable when the address cannot be reached; the handler's error status.
  virtual void call(const std::string& address, Request request, int64_t timeout_ns, Done done) = 0;
};

// What a handler learns about a request besides its body.
struct ServerContext {
  // The caller's deadline on the server executor's clock; a handler may drop work after it passes,
  // and forwards it (as remaining time) to the calls it makes on the request's behalf.
  int64_t deadline_ns = INT64_MAX;
  std::string peer;  // for logs
  // Set by transports that carry SharedBytes payloads themselves (fs/rpc): a service may answer with
  // ReadRsp::shared_data instead of copying into ReadRsp::data.
  bool shared_payloads = false;
  // Set by transports whose Reply may be called from any thread (fs/rpc): a service may then answer
  // from an offload worker instead of posting back to its executor first.
  bool reply_from_any_thread = false;
  // Set by a transport whose receiving thread has nothing else to read on this connection when it hands the
  // request over (fs/rpc's TCP server, for a ReadReq or BatchReadReq offered to its fast handler): the fast handler may
  // then do a short blocking task there itself (a small read) instead of waking a worker for it; the
  // connection's next request waits for it.
  bool receiver_idle = false;
};

// Sends a response. Must be called exactly once per request, on the service's executor (or on any
// thread when ServerContext::reply_from_any_thread is set). May be called after the handler returned
// (asynchronous handlers, e.g. a write waiting for the chain's ack).
using Reply = std::function<void(Result<Response>)>;

// The server side: a transport delivers each request to a handler on the service's executor. Services
// expose `void handle(const ServerContext&, Request, Reply)` for this; the transport (fs/rpc server,
// or the simulated network) calls it. Requests a service does not serve get [malformed].
using Handler = std::function<void(const ServerContext&, Request, Reply)>;

}  // namespace ff::fs
